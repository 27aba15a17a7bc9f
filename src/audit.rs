//! The audit log: one JSON line per decision, tied to the human sponsor (DESIGN section 11).
//!
//! Events follow relayauth's audit entry shape (`id`, `action`, `identityId`, `orgId`,
//! `workspaceId`, `plane`, `resource`, `result`, `timestamp`, `metadata`) and carry the
//! governance context (`sponsorId`, `sponsorChain`, `tokenId`, `sessionId`, `pid`, `operation`,
//! `path`, `requestedScope`, `matchedScope`, `reason`, ...).
//!
//! Nothing is dropped: callers hand events to a bounded queue and block when it is full (a slow
//! disk slows the agents, it does not lose records). One writer thread appends them. It wakes on
//! a short tick (or at once when the queue is half full, or for a flush or close) rather than
//! for every event, so a busy mount writes one batch per tick instead of paying a wake-up and a
//! `write(2)` per file opened; every event is on disk within [`TICK`] of being recorded, and the
//! file is synced to disk on [`AuditLog::close`].

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Map, Value};

/// How many events may wait for the writer before callers block.
const QUEUE: usize = 16 * 1024;

/// How long an event may wait in the queue before the writer writes it out.
pub const TICK: Duration = Duration::from_millis(100);

/// `allowed`, `denied` or `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allowed,
    Denied,
    Error,
}

/// Who an event is about: the session's identity, as the token stated it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    pub identity_id: String,
    pub org_id: String,
    pub workspace_id: String,
    pub sponsor_id: String,
    pub sponsor_chain: Vec<String>,
    pub token_id: String,
    pub session_id: String,
}

/// One audit entry.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: String,
    pub action: String,
    pub identity_id: String,
    pub org_id: String,
    pub workspace_id: String,
    pub plane: &'static str,
    pub resource: String,
    pub result: Outcome,
    pub timestamp: String,
    pub request_id: String,
    pub correlation_id: String,
    pub agent_id: String,
    pub sponsor_id: String,
    pub sponsor_chain: Vec<String>,
    pub token_id: String,
    pub session_id: String,
    pub pid: Option<u32>,
    pub operation: String,
    pub path: Option<String>,
    pub requested_scope: Option<String>,
    pub matched_scope: Option<String>,
    pub writeback_policy_id: Option<String>,
    pub provider_action: Option<String>,
    pub reason: String,
    pub metadata: Map<String, Value>,
}

/// The longest path an event records (a guarded path is at most `PATH_MAX`; this is a bound
/// for anything else that reaches the log).
const MAX_PATH_FIELD: usize = 4096;
/// The longest reason an event records: reasons quote paths, and a log must not grow by the
/// depth of a tree an agent made.
const MAX_REASON_FIELD: usize = 2048;

/// `text` cut to at most `max` bytes (at a character boundary), marked when cut.
fn bounded(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub(3);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str("...");
    text
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn next_id(prefix: &str) -> String {
    let start = START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    format!(
        "{prefix}_{start:x}{:06x}",
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

impl Event {
    /// A new event for `actor`; fill in the rest with the builder methods.
    pub fn new(action: &str, result: Outcome, actor: &Actor, operation: &str) -> Event {
        Event {
            id: next_id("aud"),
            action: action.to_owned(),
            identity_id: actor.identity_id.clone(),
            org_id: actor.org_id.clone(),
            workspace_id: actor.workspace_id.clone(),
            plane: "relayfile",
            resource: "fs".to_owned(),
            result,
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            request_id: next_id("req"),
            correlation_id: actor.session_id.clone(),
            agent_id: actor.identity_id.clone(),
            sponsor_id: actor.sponsor_id.clone(),
            sponsor_chain: actor.sponsor_chain.clone(),
            token_id: actor.token_id.clone(),
            session_id: actor.session_id.clone(),
            pid: None,
            operation: operation.to_owned(),
            path: None,
            requested_scope: None,
            matched_scope: None,
            writeback_policy_id: None,
            provider_action: None,
            reason: String::new(),
            metadata: Map::new(),
        }
    }

    pub fn resource(mut self, resource: &str) -> Event {
        self.resource = resource.to_owned();
        self
    }

    pub fn pid(mut self, pid: u32) -> Event {
        self.pid = Some(pid);
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Event {
        self.path = Some(bounded(path.into(), MAX_PATH_FIELD));
        self
    }

    pub fn scopes(mut self, requested: Option<String>, matched: Option<String>) -> Event {
        self.requested_scope = requested;
        self.matched_scope = matched;
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Event {
        self.reason = bounded(reason.into(), MAX_REASON_FIELD);
        self
    }

    pub fn meta(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }
}

enum Msg {
    Event(Box<Event>),
    Flush(SyncSender<io::Result<()>>),
}

/// The append-only audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    tx: Mutex<Option<SyncSender<Msg>>>,
    writer: Mutex<Option<JoinHandle<io::Result<()>>>>,
    /// The writer thread, to wake it before its tick.
    thread: Thread,
    /// Events queued and not yet taken by the writer.
    pending: Arc<AtomicUsize>,
    written: Arc<AtomicU64>,
}

impl AuditLog {
    /// Open (append, mode 0600) the log at `path`, creating its directory.
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(AtomicUsize::new(0));
        let (count, taken) = (written.clone(), pending.clone());
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(file, rx, count, taken))?;
        Ok(AuditLog {
            path: path.to_owned(),
            tx: Mutex::new(Some(tx)),
            thread: writer.thread().clone(),
            writer: Mutex::new(Some(writer)),
            pending,
            written,
        })
    }

    /// The default location: `$XDG_STATE_HOME/relayauth-mount/audit.jsonl`, else
    /// `~/.local/state/relayauth-mount/audit.jsonl`.
    pub fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
        Some(base.join("relayauth-mount").join("audit.jsonl"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queue an event; blocks while the queue is full. After [`AuditLog::close`] events are
    /// written synchronously so that late events (unmount) are not lost.
    pub fn record(&self, event: Event) {
        let tx = self.tx.lock().clone();
        match tx {
            Some(tx) => {
                // Wake the writer early when the queue fills up, so callers rarely block.
                if self.pending.fetch_add(1, Ordering::Relaxed) + 1 == QUEUE / 2 {
                    self.thread.unpark();
                }
                if let Err(e) = tx.send(Msg::Event(Box::new(event))) {
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    if let Msg::Event(ev) = e.0 {
                        self.append_directly(&ev);
                    }
                }
            }
            None => self.append_directly(&event),
        }
    }

    fn append_directly(&self, event: &Event) {
        let result = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .and_then(|mut f| write_event(&mut f, event));
        match result {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::error!("audit log {}: cannot append: {e}", self.path.display()),
        }
    }

    /// Wait until everything queued so far is written to the file.
    pub fn flush(&self) -> io::Result<()> {
        let tx = self.tx.lock().clone();
        let Some(tx) = tx else {
            return Ok(());
        };
        let (ack_tx, ack_rx) = sync_channel(1);
        tx.send(Msg::Flush(ack_tx))
            .map_err(|_| io::Error::other("audit writer stopped"))?;
        self.thread.unpark();
        ack_rx
            .recv()
            .map_err(|_| io::Error::other("audit writer stopped"))?
    }

    /// Events written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Write out and sync everything, and stop the writer.
    pub fn close(&self) -> io::Result<()> {
        drop(self.tx.lock().take());
        self.thread.unpark();
        match self.writer.lock().take() {
            Some(handle) => handle
                .join()
                .map_err(|_| io::Error::other("audit writer panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!("audit log {}: {e}", self.path.display());
        }
    }
}

fn write_event(out: &mut impl Write, event: &Event) -> io::Result<()> {
    serde_json::to_writer(&mut *out, event)?;
    out.write_all(b"\n")
}

fn write_loop(
    file: File,
    rx: Receiver<Msg>,
    written: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut failure: Option<io::Error> = None;
    let mut note = |r: io::Result<()>| {
        if let Err(e) = r {
            tracing::error!("audit log: cannot write: {e}");
            failure = Some(e);
        }
    };
    loop {
        // Senders never wake this thread (no blocking receive is waiting), so a burst of
        // events costs no wake-ups; flush, close and a half-full queue unpark it.
        std::thread::park_timeout(TICK);
        let stopped = loop {
            match rx.try_recv() {
                Ok(Msg::Event(ev)) => {
                    pending.fetch_sub(1, Ordering::Relaxed);
                    let r = write_event(&mut out, &ev);
                    if r.is_ok() {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    note(r);
                }
                Ok(Msg::Flush(ack)) => {
                    let _ = ack.send(out.flush());
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        note(out.flush());
        if stopped {
            break;
        }
    }
    out.get_ref().sync_all()?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> Actor {
        Actor {
            identity_id: "agent_1".into(),
            org_id: "org_acme".into(),
            workspace_id: "ws_acme".into(),
            sponsor_id: "user_alice".into(),
            sponsor_chain: vec!["user_alice".into(), "agent_1".into()],
            token_id: "tok_1".into(),
            session_id: "sess_1".into(),
        }
    }

    #[test]
    fn many_writers_nothing_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let log = Arc::new(AuditLog::open(&path).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        log.record(
                            Event::new("file.read", Outcome::Allowed, &actor(), "open")
                                .path(format!("/t{t}/{i}")),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.close().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 40_000);
        let ids: std::collections::HashSet<&str> =
            lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 40_000);
        let first = &lines[0];
        for key in [
            "id",
            "action",
            "identityId",
            "orgId",
            "workspaceId",
            "plane",
            "resource",
            "result",
            "timestamp",
            "metadata",
            "sponsorId",
            "sponsorChain",
            "tokenId",
            "sessionId",
        ] {
            assert!(first.get(key).is_some(), "missing {key}");
        }
        assert_eq!(first["sponsorChain"][0], "user_alice");
        let mode = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn events_reach_the_file_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.record(Event::new("file.read", Outcome::Allowed, &actor(), "open"));
        // The writer's own tick writes it out; the deadline only bounds a broken writer.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap().lines().count() < 1 {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(log.written(), 1);
    }

    #[test]
    fn flush_makes_events_visible_and_late_events_still_land() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.record(Event::new(
            "scope.checked",
            Outcome::Denied,
            &actor(),
            "open",
        ));
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        log.close().unwrap();
        log.record(Event::new(
            "mount.unmounted",
            Outcome::Allowed,
            &actor(),
            "unmount",
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }
}
