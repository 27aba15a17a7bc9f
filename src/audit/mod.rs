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
//!
//! A log that cannot be written (disk full, I/O error, a path that can no longer be opened)
//! loses nothing either: [`AuditLog::fault`] says so, the gate refuses every audited operation
//! until the writer has written the held records, and the writer follows the log when it is
//! rotated (see [`writer`]).

mod writer;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use writer::Fault;
use writer::{Health, Msg, Writer};

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

/// The append-only audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    tx: Mutex<Option<SyncSender<Msg>>>,
    writer: Mutex<Option<JoinHandle<io::Result<()>>>>,
    /// The writer thread, to wake it before its tick.
    thread: Thread,
    health: Arc<Health>,
}

impl AuditLog {
    /// Open (append, mode 0600) the log at `path`, creating its directory.
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        let file = writer::open(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let health = Arc::new(Health::default());
        let w = Writer::new(path.to_owned(), file, health.clone())?;
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))?;
        Ok(AuditLog {
            path: path.to_owned(),
            tx: Mutex::new(Some(tx)),
            thread: writer.thread().clone(),
            writer: Mutex::new(Some(writer)),
            health,
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
                if self.health.pending.fetch_add(1, Ordering::Relaxed) + 1 == QUEUE / 2 {
                    self.thread.unpark();
                }
                if let Err(e) = tx.send(Msg::Event(Box::new(event))) {
                    self.health.pending.fetch_sub(1, Ordering::Relaxed);
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
                self.health.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::error!("audit log {}: cannot append: {e}", self.path.display()),
        }
    }

    /// Wait until everything queued so far is written to the file (an error while the log
    /// cannot be written).
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

    /// Open the file at the log's path again (after logrotate moved it; SIGHUP asks this).
    /// The writer also notices a moved or removed log by itself within
    /// [`writer::IDENTITY_CHECK`].
    pub fn reopen(&self) {
        let tx = self.tx.lock().clone();
        if let Some(tx) = tx
            && tx.send(Msg::Reopen).is_ok()
        {
            self.thread.unpark();
        }
    }

    /// Why the log cannot be written, while it cannot: the gate refuses every audited
    /// operation meanwhile rather than let one happen unaudited.
    pub fn fault(&self) -> Option<Fault> {
        self.health.fault()
    }

    /// Events written so far.
    pub fn written(&self) -> u64 {
        self.health.written.load(Ordering::Relaxed)
    }

    /// Records waiting in memory for the file, and records lost since the mount started
    /// (the log was down past [`writer::MAX_HELD`]).
    pub fn backlog(&self) -> (usize, u64) {
        (
            self.health.held.load(Ordering::Relaxed),
            self.health.lost.load(Ordering::Relaxed),
        )
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

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is a whole record"))
            .collect()
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        // Bounds a broken writer; the writer acts within a tick or an identity check.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn read_event(i: usize) -> Event {
        Event::new("file.read", Outcome::Allowed, &actor(), "open").path(format!("/f{i}"))
    }

    #[test]
    fn a_moved_log_is_followed_and_no_record_is_lost_or_doubled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..100 {
            log.record(read_event(i));
        }
        log.flush().unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        // Written around the move: in one file or the other, never in both.
        for i in 100..200 {
            log.record(read_event(i));
        }
        // No reopen asked: the writer notices the move by itself.
        wait_for("a new file at the path", || path.exists());
        for i in 200..300 {
            log.record(read_event(i));
        }
        log.close().unwrap();
        let mut seen: Vec<String> = lines(&rotated)
            .into_iter()
            .chain(lines(&path))
            .map(|l| l["path"].as_str().unwrap().to_owned())
            .collect();
        assert!(lines(&path).iter().any(|l| l["path"] == "/f299"));
        assert!(lines(&rotated).iter().any(|l| l["path"] == "/f0"));
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            300,
            "every record exactly once across both files"
        );
        assert_eq!(log.written(), 300);
    }

    #[test]
    fn a_log_that_cannot_be_written_holds_its_records_and_says_so_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.record(read_event(0));
        log.flush().unwrap();
        assert!(log.fault().is_none());
        // The log is moved away and its path can no longer be opened as a file.
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        std::fs::create_dir(&path).unwrap();
        log.reopen();
        wait_for("a fault", || log.fault().is_some());
        let fault = log.fault().unwrap();
        assert!(fault.error.contains("directory"), "{fault:?}");
        for i in 1..=50 {
            log.record(read_event(i));
        }
        assert!(
            log.flush().is_err(),
            "a flush reports that nothing could be written"
        );
        assert_eq!(log.backlog().0, 50);
        // Space (here: the path) comes back: the held records land, then the recovery.
        std::fs::remove_dir(&path).unwrap();
        wait_for("recovery", || log.fault().is_none());
        log.flush().unwrap();
        let got = lines(&path);
        assert_eq!(got.len(), 51);
        let paths: Vec<&str> = got[..50]
            .iter()
            .map(|l| l["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            (1..=50).map(|i| format!("/f{i}")).collect::<Vec<_>>()
        );
        assert_eq!(got[50]["action"], "audit.recovered");
        assert_eq!(got[50]["metadata"]["heldRecords"], 50);
        assert_eq!(got[50]["metadata"]["lostRecords"], 0);
        assert_eq!(log.backlog(), (0, 0));
    }
}
