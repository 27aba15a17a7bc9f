//! The audit writer thread: batches events into the file, holds them when the file cannot be
//! written, and follows the log when it is rotated.
//!
//! A record is taken off the queue, serialized into one buffer and removed from it only once
//! `write(2)` has put it in the file, so a full disk (`ENOSPC`), an I/O error or a log that
//! cannot be reopened loses nothing: the records wait in memory (up to [`MAX_HELD`] bytes),
//! the log is marked as failing (the gate then refuses every audited operation, see
//! [`super::AuditLog::fault`]), and every tick the writer tries again. When a write succeeds the
//! fault clears and an `audit.recovered` record says for how long the log was down and how
//! many records it held (and, past the bound, lost).
//!
//! Rotation: the writer notices within [`IDENTITY_CHECK`] when the path no longer names the
//! file it writes (logrotate moved it away, or it was removed), and at once on
//! [`super::AuditLog::reopen`] (SIGHUP); it then opens a new file at the path. Records written
//! before that are in the moved file, later ones in the new file; none is written to both or
//! to neither. A record cut by a failed write is written again whole to the new file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::{Actor, Event, Outcome, TICK};

/// How many bytes of records the writer holds in memory while the log cannot be written;
/// records past this are counted as lost (and the count is written once the log recovers).
pub const MAX_HELD: usize = 32 * 1024 * 1024;

/// How often the writer checks that the path still names the file it writes.
pub const IDENTITY_CHECK: Duration = Duration::from_secs(1);

pub(super) enum Msg {
    Event(Box<Event>),
    Flush(SyncSender<io::Result<()>>),
    Reopen,
}

/// Why the log cannot be written, and since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub since: SystemTime,
    pub error: String,
}

/// What the writer tells the rest of the daemon.
#[derive(Debug, Default)]
pub(super) struct Health {
    failing: AtomicBool,
    fault: Mutex<Option<Fault>>,
    /// Records waiting in memory for the file.
    pub held: AtomicUsize,
    /// Records dropped since the mount started because the log was down too long.
    pub lost: AtomicU64,
    /// Records in the file.
    pub written: AtomicU64,
    /// Events queued and not yet taken by the writer.
    pub pending: AtomicUsize,
}

impl Health {
    pub fn fault(&self) -> Option<Fault> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.fault.lock().clone()
    }

    fn set_fault(&self, error: &io::Error, path: &Path) -> bool {
        let mut f = self.fault.lock();
        let first = f.is_none();
        if first {
            tracing::error!(
                "audit log {}: cannot write ({error}); every audited operation is refused until \
                 it can be written again (records are held in memory meanwhile)",
                path.display()
            );
            *f = Some(Fault {
                since: SystemTime::now(),
                error: error.to_string(),
            });
        }
        self.failing.store(true, Ordering::Release);
        first
    }

    fn clear(&self) -> Option<Fault> {
        let f = self.fault.lock().take();
        self.failing.store(false, Ordering::Release);
        f
    }
}

/// The file the writer appends to, with what identifies it on disk.
struct Target {
    file: File,
    id: (u64, u64),
}

fn open_target(path: &Path) -> io::Result<Target> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(Target {
        id: (md.dev(), md.ino()),
        file,
    })
}

pub(super) fn open(path: &Path) -> io::Result<File> {
    open_target(path).map(|t| t.file)
}

pub(super) struct Writer {
    path: PathBuf,
    target: Option<Target>,
    /// Serialized records from the start of the first one not wholly in the file.
    buf: Vec<u8>,
    /// Bytes at the start of `buf` already in the current file (part of a cut record).
    done: usize,
    health: Arc<Health>,
    checked: Instant,
    reopen: bool,
    /// Lost records already reported by an `audit.recovered` record.
    lost_reported: u64,
}

impl Writer {
    pub fn new(path: PathBuf, file: File, health: Arc<Health>) -> io::Result<Writer> {
        let md = file.metadata()?;
        Ok(Writer {
            path,
            target: Some(Target {
                id: (md.dev(), md.ino()),
                file,
            }),
            buf: Vec::with_capacity(64 * 1024),
            done: 0,
            health,
            checked: Instant::now(),
            reopen: false,
            lost_reported: 0,
        })
    }

    /// The thread's loop: until every sender is gone, then a last write and a sync.
    pub fn run(mut self, rx: Receiver<Msg>) -> io::Result<()> {
        loop {
            // Senders never wake this thread (no blocking receive is waiting), so a burst of
            // events costs no wake-ups; flush, close, reopen and a half-full queue unpark it.
            std::thread::park_timeout(TICK);
            let mut acks = Vec::new();
            let stopped = loop {
                match rx.try_recv() {
                    Ok(Msg::Event(ev)) => {
                        self.health.pending.fetch_sub(1, Ordering::Relaxed);
                        self.hold(&ev);
                    }
                    Ok(Msg::Flush(ack)) => acks.push(ack),
                    Ok(Msg::Reopen) => self.reopen = true,
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            let result = self.write_out();
            for ack in acks {
                let _ = ack.send(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                });
            }
            if stopped {
                break;
            }
        }
        self.finish()
    }

    /// Serialize `ev` into the buffer, unless the buffer is at its bound.
    fn hold(&mut self, ev: &Event) {
        if self.buf.len() >= MAX_HELD {
            self.health.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let start = self.buf.len();
        match serde_json::to_writer(&mut self.buf, ev) {
            Ok(()) => {
                self.buf.push(b'\n');
                self.health.held.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.buf.truncate(start);
                tracing::error!("audit log: cannot serialize a record: {e}");
                self.health.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Follow a rotation, write what is held, and clear or set the fault.
    fn write_out(&mut self) -> io::Result<()> {
        let failing = self.health.fault().is_some();
        if self.reopen || failing || self.checked.elapsed() >= IDENTITY_CHECK {
            self.follow_path();
        }
        let held = self.health.held.load(Ordering::Relaxed);
        let result = self.write_held();
        match &result {
            Ok(()) if self.target.is_some() => {
                if let Some(fault) = self.health.clear() {
                    self.recovered(fault, held);
                    // The recovery record itself, now rather than a tick later.
                    return self.write_held();
                }
            }
            Ok(()) => {}
            Err(e) => {
                let e = io::Error::new(e.kind(), e.to_string());
                self.health.set_fault(&e, &self.path);
            }
        }
        result
    }

    /// Open the file at the path again if the path no longer names the one being written
    /// (moved or removed), or if a reopen was asked for or the current file failed.
    fn follow_path(&mut self) {
        self.checked = Instant::now();
        let asked = std::mem::take(&mut self.reopen);
        let current = self.target.as_ref().map(|t| t.id);
        let same = match std::fs::metadata(&self.path) {
            Ok(md) => current == Some((md.dev(), md.ino())),
            Err(_) => false,
        };
        if same && !asked {
            return;
        }
        match open_target(&self.path) {
            Ok(t) => {
                if current != Some(t.id) {
                    // A cut record is written again, whole, to the new file.
                    self.done = 0;
                    tracing::info!("audit log {}: reopened", self.path.display());
                }
                self.target = Some(t);
            }
            Err(e) => {
                self.target = None;
                self.done = 0;
                self.health.set_fault(&e, &self.path);
            }
        }
    }

    /// Write the held records; on success the buffer is empty.
    fn write_held(&mut self) -> io::Result<()> {
        let Some(target) = &mut self.target else {
            if self.buf.is_empty() {
                return Ok(());
            }
            return Err(self
                .health
                .fault()
                .map(|f| io::Error::other(f.error))
                .unwrap_or_else(|| io::Error::other("the audit log is not open")));
        };
        let mut result = Ok(());
        while self.done < self.buf.len() {
            match target.file.write(&self.buf[self.done..]) {
                Ok(0) => {
                    result = Err(io::Error::from(io::ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => self.done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Drop the records now wholly in the file, keep a cut one from its start.
        let whole = self.buf[..self.done]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if whole > 0 {
            let records = self.buf[..whole].iter().filter(|&&b| b == b'\n').count();
            self.buf.drain(..whole);
            self.done -= whole;
            self.health.held.fetch_sub(records, Ordering::Relaxed);
            self.health
                .written
                .fetch_add(records as u64, Ordering::Relaxed);
        }
        if self.buf.capacity() > 1024 * 1024 && self.buf.len() < 64 * 1024 {
            self.buf.shrink_to(64 * 1024);
        }
        result
    }

    /// Log the recovery and hold its record (`held`: the records written on recovery).
    fn recovered(&mut self, fault: Fault, held: usize) {
        let down = SystemTime::now()
            .duration_since(fault.since)
            .unwrap_or_default();
        let total_lost = self.health.lost.load(Ordering::Relaxed);
        let lost = total_lost - self.lost_reported;
        self.lost_reported = total_lost;
        tracing::warn!(
            "audit log {}: writable again after {} s ({held} held records written, {lost} lost); \
             audited operations are allowed again",
            self.path.display(),
            down.as_secs()
        );
        let ev = Event::new(
            "audit.recovered",
            Outcome::Allowed,
            &Actor::default(),
            "audit",
        )
        .reason(format!(
            "the audit log could not be written for {} s ({}); audited operations were refused meanwhile",
            down.as_secs(),
            fault.error
        ))
        .meta(
            "since",
            humantime::format_rfc3339_millis(fault.since).to_string(),
        )
        .meta("heldRecords", held as u64)
        .meta("lostRecords", lost);
        self.hold(&ev);
    }

    /// The last write and a sync, at close.
    fn finish(mut self) -> io::Result<()> {
        if let Err(e) = self.write_out() {
            let held = self.health.held.load(Ordering::Relaxed);
            return Err(io::Error::new(
                e.kind(),
                format!("{held} audit records could not be written: {e}"),
            ));
        }
        match &self.target {
            Some(t) => t.file.sync_all(),
            None => Ok(()),
        }
    }
}
