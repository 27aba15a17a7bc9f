//! The daemon's background tasks and its teardown.
//!
//! None of these run on a filesystem thread, and none holds a lock the filesystem needs while
//! it waits on the network: they compute an answer, then publish it in one short write
//! (confirm, revoke, replace the token, replace the policies).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;

use super::register::{self, PeerStanding};
use super::{Shared, Stop, control, status_json};
use crate::audit::{Event, Outcome};
use crate::credentials::CredentialSource;
use crate::relayauth::Status;
use crate::relayauth::refresh::{RefreshOptions, Refresher, refresh_due_at};
use crate::writeback::PolicySet;

/// The FUSE connection number of the mount at `mountpoint` (for aborting it).
pub(crate) fn connection_of(mountpoint: &Path) -> Option<u64> {
    let st = rustix::fs::stat(mountpoint).ok()?;
    let dev = st.st_dev;
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    (major == 0).then_some(u64::from(minor))
}

/// Take the mount down: lazy unmount, then abort the connection if processes still hold it,
/// then join the filesystem threads.
pub(crate) async fn teardown(
    bg: fuser::BackgroundSession,
    mut ended: crate::fuse::Ended,
    mountpoint: &Path,
    conn: Option<u64>,
) {
    if super::is_mount_point(mountpoint) {
        let _ = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH)
            .map_err(std::io::Error::from)
            .or_else(|_| crate::fuse::unmount(mountpoint));
    }
    if !wait_finished(&mut ended, Duration::from_secs(2)).await
        && let Some(conn) = conn
    {
        let abort = PathBuf::from(format!("/sys/fs/fuse/connections/{conn}/abort"));
        if let Err(e) = std::fs::write(&abort, b"1") {
            tracing::warn!(
                "cannot abort the FUSE connection ({}): {e}",
                abort.display()
            );
        }
    }
    if wait_finished(&mut ended, Duration::from_secs(5)).await {
        let _ = tokio::task::spawn_blocking(move || bg.join()).await;
    } else {
        tracing::warn!("the filesystem threads did not stop; exiting anyway");
    }
}

/// Whether the kernel session ended within `limit`.
async fn wait_finished(ended: &mut crate::fuse::Ended, limit: Duration) -> bool {
    tokio::time::timeout(limit, ended.wait()).await.is_ok()
}

/// Bind the control socket (replacing a stale one nobody answers on).
pub(crate) fn bind_control(mountpoint: &Path) -> std::io::Result<UnixListener> {
    let path = control::socket_path(mountpoint);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::other(format!(
                "{} is in use by another daemon for this mountpoint",
                path.display()
            )));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Start every background task; the handles are aborted at teardown.
pub(crate) fn spawn_all(
    shared: Arc<Shared>,
    listener: UnixListener,
    watch: Option<FileWatch>,
    stop: Sender<Stop>,
) -> Vec<JoinHandle<()>> {
    let mut v = vec![
        tokio::spawn(signals(stop.clone())),
        tokio::spawn(reopen_audit_on_hangup(shared.clone())),
        tokio::spawn(serve_control(shared.clone(), listener, stop.clone())),
        tokio::spawn(watch_session(shared.clone(), stop.clone())),
        tokio::spawn(poll_revocation(shared.clone())),
        tokio::spawn(tend_sessions(shared.clone())),
        tokio::spawn(refresh_jwks(shared.clone())),
    ];
    if let CredentialSource::Bundle(path) = &shared.spec.credentials {
        v.push(tokio::spawn(refresh_bundle(shared.clone(), path.clone())));
    }
    if let Some(watch) = watch {
        v.push(tokio::spawn(watch_files(shared, watch)));
    }
    v
}

async fn signals(stop: Sender<Stop>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot listen for SIGINT/SIGTERM");
        return;
    };
    let name = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    let _ = stop.send(Stop::Signal(name)).await;
}

/// SIGHUP reopens the audit log (logrotate's `postrotate`); it never ends the mount.
async fn reopen_audit_on_hangup(shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; the audit log is still followed when moved");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reopening the audit log");
        shared.audit.reopen();
    }
}

async fn serve_control(shared: Arc<Shared>, listener: UnixListener, stop: Sender<Stop>) {
    let me = rustix::process::getuid().as_raw();
    // A bounded number of connections at a time, each with a deadline for its request: idle
    // or slow connections cannot take the daemon's descriptors (which the mount itself needs)
    // or hold up a revocation.
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    let mut refused_at: Option<std::time::Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: do not spin, try again shortly.
                tracing::warn!("control socket: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if refused_at.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(
                    "control socket: {MAX_CONTROL_CONNECTIONS} connections are open already; \
                     refusing more until they finish"
                );
                refused_at = Some(std::time::Instant::now());
            }
            drop(stream);
            continue;
        };
        let cred = stream.peer_cred().ok();
        let allowed = cred.is_some_and(|c| c.uid() == me || c.uid() == 0);
        let uid = cred.map_or(u32::MAX, |c| c.uid());
        let pid = cred
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok());
        let raw = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            // One request line, bounded in size and time.
            let mut reader = BufReader::new(read).take(MAX_CONTROL_LINE);
            match tokio::time::timeout(CONTROL_READ_TIMEOUT, reader.read_line(&mut line)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            // Taken only for a request that registers (the socket's halves keep `raw` open).
            let peer = || register::Peer {
                uid,
                pid,
                pidfd: register::peer_pidfd(raw),
            };
            let answer = if !allowed {
                control::error("only the user running the mount may control it")
            } else {
                match control::Request::parse(&line) {
                    Ok(control::Request::Status) => {
                        match register::peer_standing(&shared, &peer()) {
                            PeerStanding::Controller => status_json(&shared),
                            PeerStanding::SubAgent(s) => own_status(&shared, &s),
                            PeerStanding::Unknown => control::error(NOT_THE_MOUNTS),
                        }
                    }
                    Ok(control::Request::Unmount) => {
                        let why = match register::peer_standing(&shared, &peer()) {
                            PeerStanding::Controller => None,
                            PeerStanding::SubAgent(s) => Some(format!(
                                "a sub-agent ({}) may not unmount the mount it shares; the user \
                                 who mounted it can (relayauth-mount unmount)",
                                s.grants().actor().identity_id
                            )),
                            PeerStanding::Unknown => Some(NOT_THE_MOUNTS.to_owned()),
                        };
                        match why {
                            None => {
                                let _ = stop.send(Stop::Requested).await;
                                json!({"ok": true})
                            }
                            Some(why) => {
                                let mount = shared.callers.mount_session().grants();
                                let mut ev = Event::new(
                                    "mount.unmounted",
                                    Outcome::Denied,
                                    mount.actor(),
                                    "unmount",
                                )
                                .reason(why.clone());
                                if let Some(pid) = pid {
                                    ev = ev.pid(pid);
                                }
                                shared.audit.record(ev);
                                control::error(why)
                            }
                        }
                    }
                    Ok(control::Request::Register { token, pid }) => {
                        register::register(&shared, peer(), &token, pid).await
                    }
                    Ok(control::Request::Renew { token, pid }) => {
                        register::renew(&shared, peer(), &token, pid).await
                    }
                    Ok(control::Request::Delegate {
                        agent,
                        scopes,
                        ttl_secs,
                        pid,
                    }) => {
                        let want = register::Delegation {
                            agent: &agent,
                            scopes: &scopes,
                            ttl: ttl_secs.map(Duration::from_secs),
                        };
                        register::delegate(&shared, peer(), want, pid).await
                    }
                    Err(e) => control::error(e),
                }
            };
            let mut text = answer.to_string();
            text.push('\n');
            let _ =
                tokio::time::timeout(CONTROL_READ_TIMEOUT, write.write_all(text.as_bytes())).await;
        });
    }
}

/// Why a control request that only the mount's own session may make was refused to a peer
/// that acts under no session (or is gone).
const NOT_THE_MOUNTS: &str = "only the user's own processes, outside every run and delegate, may \
     do this (the process that connected is gone, or its place could not be told); run \
     relayauth-mount as the user who mounted it, outside any run or delegate";

/// `status` for a sub-agent: its own session only (the mirror's path, other sessions and their
/// processes are not a sub-agent's business).
fn own_status(shared: &Shared, s: &crate::session::Session) -> serde_json::Value {
    let g = s.grants();
    let now = SystemTime::now();
    let state = s.state(now);
    json!({
        "ok": true,
        "mountpoint": shared.mountpoint.display().to_string(),
        "session": {
            "agent": g.actor().identity_id,
            "sponsor_chain": g.actor().sponsor_chain,
            "state": state.name(),
            "state_detail": state.describe(),
            "expires_at": crate::token::time::format_rfc3339(g.expires_at()),
            "scopes": g.scopes().raw().collect::<Vec<_>>(),
        },
    })
}

/// How many control connections may be open at once.
const MAX_CONTROL_CONNECTIONS: usize = 64;

/// How long a control connection has to send its request (and to take the answer).
const CONTROL_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest control request read (a request is a few dozen bytes).
const MAX_CONTROL_LINE: u64 = 64 * 1024;

/// Wall-clock moments (a token's expiry, its refresh) are waited for in slices of at most this
/// long, then looked at again: a sleep counts monotonic time, which stands still while a laptop
/// is suspended, and the wall clock can be set. Changes of the session itself wake the waiter at
/// once.
const WALL_CLOCK_SLICE: Duration = Duration::from_secs(5);

/// Stop when the mount's own session is no longer active (revoked, refresh rejected, expired).
async fn watch_session(shared: Arc<Shared>, stop: Sender<Stop>) {
    let session = shared.callers.mount_session().clone();
    let mut changes = session.changes();
    loop {
        let now = SystemTime::now();
        let state = session.state(now);
        if state != crate::session::State::Active {
            let g = session.grants();
            shared.audit.record(
                Event::new("session.revoked", Outcome::Denied, g.actor(), "session")
                    .reason(state.describe())
                    .meta("state", state.name()),
            );
            let _ = stop.send(Stop::SessionEnded(state.describe())).await;
            return;
        }
        // Until the token expires, or something changes (a revocation, a new token).
        let until_expiry = session
            .grants()
            .expires_at()
            .duration_since(now)
            .unwrap_or_default()
            .min(WALL_CLOCK_SLICE);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(until_expiry + Duration::from_millis(1)) => {}
        }
    }
}

/// Ask relayauth about every active session once per poll interval (jittered by up to a
/// tenth either way, so many mounts do not ask in step), all sessions at once: one slow answer
/// delays no other session's check, and each request is bounded by the client's timeout.
async fn poll_revocation(shared: Arc<Shared>) {
    let Some(client) = shared.revocation.clone() else {
        return;
    };
    let warned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        tokio::time::sleep(jittered(shared.spec.poll_interval)).await;
        let mut checks = tokio::task::JoinSet::new();
        for s in shared.callers.sessions() {
            if !s.is_active(SystemTime::now()) {
                continue;
            }
            let (shared, client, warned) = (shared.clone(), client.clone(), warned.clone());
            checks.spawn(async move {
                let g = s.grants();
                match client.check(g.raw(), &g.actor().token_id).await {
                    Ok(Status::Alive) => {
                        s.confirm();
                        warned.store(false, Ordering::Relaxed);
                    }
                    // A token that expired while relayauth was being asked is refused there
                    // for that reason: expiry, not revocation, ends such a session.
                    Ok(Status::Revoked(_)) if now_past(g.expires_at()) => {}
                    Ok(Status::Revoked(why)) => {
                        if s.revoke(&why) {
                            shared.audit.record(
                                Event::new(
                                    "token.revoked",
                                    Outcome::Denied,
                                    g.actor(),
                                    "revocation-check",
                                )
                                .reason(why.clone())
                                .meta("strategy", client.strategy().name()),
                            );
                            super::ending::end_children(&shared, &s);
                        }
                    }
                    Err(e) => {
                        if !warned.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                "revocation check failed ({e}); the session's confirmation is getting older"
                            );
                        }
                    }
                }
            });
        }
        while checks.join_next().await.is_some() {}
    }
}

/// `interval`, moved by up to a tenth either way (from the clock's nanoseconds: spreading
/// mounts apart needs no better randomness).
fn jittered(interval: Duration) -> Duration {
    let spread = interval.as_nanos() as u64 / 5;
    if spread == 0 {
        return interval;
    }
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    interval - Duration::from_nanos(spread / 2) + Duration::from_nanos(nanos % spread)
}

/// How often registered sessions are looked after (ended ones stopped in kill mode, those
/// whose root process is gone forgotten). Only memory and `/proc` are read.
const TEND_INTERVAL: Duration = Duration::from_millis(100);

/// Look after registered sessions: a session that ended (revoked, expired, its parent ended)
/// has its processes stopped in kill mode, once; a registration whose root process is gone is
/// forgotten.
async fn tend_sessions(shared: Arc<Shared>) {
    let mut handled: std::collections::HashSet<u64> = std::collections::HashSet::new();
    loop {
        tokio::time::sleep(TEND_INTERVAL).await;
        let now = SystemTime::now();
        for s in shared.callers.sessions().into_iter().skip(1) {
            if s.is_active(now) || !handled.insert(s.serial()) {
                continue;
            }
            super::ending::end_children(&shared, &s);
            if shared.spec.on_revoke == super::ending::OnRevoke::Kill {
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || {
                    super::ending::stop_processes(&shared, &s, super::ending::KILL_GRACE)
                });
            }
        }
        shared.callers.prune();
    }
}

fn now_past(t: SystemTime) -> bool {
    SystemTime::now() >= t
}

async fn refresh_jwks(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        if let Err(e) = shared.verifier.keys().refresh_if_stale().await {
            tracing::warn!("JWKS refresh failed (keeping the keys we have): {e}");
        }
    }
}

/// Refresh the bundle's pair when 80% of the access token's life has passed.
/// Refresh the mount's bundle once 80% of the current token's lifetime has passed. The
/// current token is the session's (a rewritten bundle picked up by the file watch counts).
async fn refresh_bundle(shared: Arc<Shared>, bundle: PathBuf) {
    let session = shared.callers.mount_session().clone();
    let options = RefreshOptions {
        relayauth_url: shared.spec.relayauth_url.clone(),
        ..RefreshOptions::default()
    };
    let refresher = match Refresher::new(&bundle, shared.verifier.clone(), options) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(
                "token refresh is not possible ({e}); the session ends when the token expires"
            );
            return;
        }
    };
    let mut changes = session.changes();
    loop {
        if !session.is_active(SystemTime::now()) {
            return;
        }
        let current = session.grants();
        let due = refresh_due_at(current.issued_at(), current.expires_at());
        if due.is_none_or(|due| SystemTime::now() < due) {
            // Until the refresh is due, or the token is replaced (another process refreshed,
            // the file was rewritten) or the session ends.
            let wait = due.map_or(WALL_CLOCK_SLICE, |due| {
                due.duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(WALL_CLOCK_SLICE)
            });
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        match refresher.refresh().await {
            Ok(r) => {
                // A pair rotated at relayauth just now is relayauth's answer; a pair found in
                // the bundle (another process rotated it, or someone rewrote the file) is
                // checked like any rewritten token.
                let (origin, why) = if r.network {
                    (Origin::Relayauth, "rotated at relayauth")
                } else {
                    (Origin::File, "adopted a pair another process rotated")
                };
                adopt(&shared, &r.token, origin, "refresh", why).await;
            }
            Err(e) if e.is_terminal() => {
                let why = format!("refresh rejected: {e}");
                if session.revoke(&why) {
                    shared.audit.record(
                        Event::new(
                            "session.revoked",
                            Outcome::Denied,
                            session.grants().actor(),
                            "refresh",
                        )
                        .reason(why),
                    );
                }
                return;
            }
            Err(e) => {
                tracing::warn!("token refresh failed ({e}); will try again");
                tokio::time::sleep(Duration::from_secs(15)).await;
            }
        }
    }
}

/// The file watches, set up before the mount goes live so no rewrite is missed.
pub(crate) struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    rx: tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
    creds_path: Option<PathBuf>,
    policy_path: Option<PathBuf>,
    /// The SHA-256 of the policy bytes in force.
    policy_digest: Option<Vec<u8>>,
}

/// Watch the credentials file and the policy file (their directories: an atomic rewrite
/// replaces the file's inode).
pub(crate) fn watch_setup(
    creds_path: Option<PathBuf>,
    policy_path: Option<PathBuf>,
    policy_digest: Option<Vec<u8>>,
) -> Option<FileWatch> {
    use notify::{RecursiveMode, Watcher};
    let watched: Vec<PathBuf> = creds_path
        .iter()
        .chain(policy_path.iter())
        .cloned()
        .collect();
    if watched.is_empty() {
        return None;
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    // The watches are on whole directories; only events for the watched files' names go on
    // (an audit log or daemon log next to the token would otherwise wake the task per write).
    let names: Vec<std::ffi::OsString> = watched
        .iter()
        .filter_map(|p| p.file_name().map(ToOwned::to_owned))
        .collect();
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && changes_content(&ev.kind)
            {
                for p in ev.paths {
                    if p.file_name().is_some_and(|n| names.iter().any(|w| w == n)) {
                        let _ = tx.send(p);
                    }
                }
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot watch files for changes: {e}");
                return None;
            }
        };
    for p in &watched {
        if let Some(dir) = p.parent()
            && let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive)
        {
            tracing::warn!("cannot watch {}: {e}", dir.display());
        }
    }
    Some(FileWatch {
        _watcher: watcher,
        rx,
        creds_path,
        policy_path,
        policy_digest,
    })
}

/// Whether an inotify event can mean new content: a file created, renamed into place, removed,
/// or closed after writing. Opening, reading and closing a file read-only (which the daemon's
/// own reload does) are not changes, so reading a watched file never triggers a reload.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Pick up a rewritten credentials file and a changed policy file without a restart.
async fn watch_files(shared: Arc<Shared>, watch: FileWatch) {
    let FileWatch {
        _watcher,
        mut rx,
        creds_path,
        policy_path,
        mut policy_digest,
    } = watch;
    let same = |a: &Path, b: &Path| {
        a.file_name() == b.file_name()
            && a.parent().map(|p| p.canonicalize().ok())
                == b.parent().map(|p| p.canonicalize().ok())
    };
    // A rewritten token relayauth could not be asked about yet is tried again.
    let mut creds_retry = false;
    loop {
        let changed = if creds_retry {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(p)) => vec![p],
                Ok(None) => return,
                Err(_) => Vec::new(),
            }
        } else {
            match rx.recv().await {
                Some(p) => vec![p],
                None => return,
            }
        };
        // Let a burst of events settle.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut paths = changed;
        while let Ok(p) = rx.try_recv() {
            paths.push(p);
        }
        if let Some(cp) = &creds_path
            && (creds_retry || paths.iter().any(|p| same(p, cp)))
        {
            creds_retry = !reload_credentials(&shared).await;
        }
        if let Some(pp) = &policy_path
            && paths.iter().any(|p| same(p, pp))
        {
            let path = pp.clone();
            let loaded = crate::files::blocking(crate::files::READ_TIMEOUT, move || {
                PolicySet::load_versioned(&path)
            })
            .await;
            match loaded {
                // The bytes in force were rewritten unchanged, or the file flipped back to them.
                Ok(Ok((_, d))) | Ok(Err((_, Some(d)))) if policy_digest.as_ref() == Some(&d) => {}
                Ok(Ok((set, d))) => {
                    shared.fs.set_policies(set);
                    policy_digest = Some(d);
                    tracing::warn!("writeback policies reloaded from {}", pp.display());
                }
                Ok(Err((e, _))) => {
                    tracing::warn!("{e}; keeping the last good writeback policies")
                }
                Err(e) => tracing::warn!(
                    "writeback policies {}: cannot read: {e}; keeping the last good writeback policies",
                    pp.display()
                ),
            }
        }
    }
}

/// Pick up a rewritten token or bundle file. Returns `false` when it should be tried again
/// later (relayauth could not be asked).
async fn reload_credentials(shared: &Shared) -> bool {
    let session = shared.callers.mount_session().clone();
    if !session.is_active(SystemTime::now()) {
        return true;
    }
    let creds = match shared.spec.credentials.read_async().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                "the credentials changed but cannot be read ({e}); keeping the current token"
            );
            return true;
        }
    };
    if *creds.access_token == **session.grants().raw() {
        return true;
    }
    match shared.verifier.verify_fresh(&creds.access_token).await {
        Ok(token) if token.token_id() != session.grants().actor().token_id => {
            adopt(
                shared,
                &token,
                Origin::File,
                "reload",
                "picked up a rewritten credentials file",
            )
            .await
        }
        Ok(_) => true,
        Err(e) => {
            let why = format!(
                "the rewritten credentials hold a token that does not verify ({}: {}); keeping the current one",
                e.code.as_str(),
                e.message
            );
            refuse_token(shared, None, "reload", &why);
            true
        }
    }
}

/// Where a new token for the mount's session came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// relayauth's refresh endpoint issued it in answer to this daemon's refresh token.
    Relayauth,
    /// It was read from a file someone rewrote.
    File,
}

/// Make `token` the mount session's token, or refuse it (audited and logged, the current
/// token kept). Only a token of the same identity, org and workspace that has not expired is
/// adopted, and one read from a file only after relayauth confirms it is not revoked: whoever
/// can write the token file must not be able to swap in another agent's broader token, a
/// revoked one, or one that expires the session. Returns `false` when relayauth could not be
/// asked, so the caller may try again.
pub(crate) async fn adopt(
    shared: &Shared,
    token: &crate::token::VerifiedToken,
    origin: Origin,
    operation: &str,
    why: &str,
) -> bool {
    let session = shared.callers.mount_session().clone();
    let current = session.grants();
    let a = &current.actor();
    let refusal = if token.subject() != a.identity_id {
        Some(format!(
            "the new token is for {}, not for {} (the mount's agent)",
            token.subject(),
            a.identity_id
        ))
    } else if token.org() != a.org_id || token.workspace() != a.workspace_id {
        Some(format!(
            "the new token is for org {} workspace {}, not the mount's org {} workspace {}",
            token.org(),
            token.workspace(),
            a.org_id,
            a.workspace_id
        ))
    } else if token.is_expired(SystemTime::now()) {
        Some("the new token has already expired".to_owned())
    } else {
        None
    };
    if let Some(refusal) = refusal {
        refuse_token(
            shared,
            Some(token),
            operation,
            &format!("{refusal}; keeping the current token"),
        );
        return true;
    }
    if origin == Origin::File {
        let Some(client) = &shared.revocation else {
            refuse_token(
                shared,
                Some(token),
                operation,
                "revocation cannot be checked without a relayauth URL, so a rewritten token is not \
                 adopted; restart the mount with the new token",
            );
            return true;
        };
        match client.check(token.raw(), token.token_id()).await {
            Ok(Status::Alive) => {}
            Ok(Status::Revoked(r)) => {
                refuse_token(
                    shared,
                    Some(token),
                    operation,
                    &format!(
                        "relayauth says the new token is revoked ({r}); keeping the current token"
                    ),
                );
                return true;
            }
            Err(e) => {
                tracing::warn!(
                    "relayauth could not confirm the rewritten token ({e}); keeping the current token and trying again"
                );
                return false;
            }
        }
    }
    if !session.replace_token(token) {
        // The session ended meanwhile; a new token does not bring it back.
        return true;
    }
    if origin == Origin::File {
        session.confirm();
    }
    shared.audit.record(
        Event::new(
            "token.refreshed",
            Outcome::Allowed,
            session.grants().actor(),
            operation,
        )
        .reason(why)
        .meta("previousTokenId", a.token_id.clone()),
    );
    true
}

/// Audit and log a token the daemon would not adopt.
fn refuse_token(
    shared: &Shared,
    token: Option<&crate::token::VerifiedToken>,
    operation: &str,
    why: &str,
) {
    tracing::warn!("{why}");
    let session = shared.callers.mount_session();
    let mut ev = Event::new(
        "token.validated",
        Outcome::Denied,
        session.grants().actor(),
        operation,
    )
    .reason(why);
    if let Some(t) = token {
        ev = ev
            .meta("refusedTokenId", t.token_id())
            .meta("refusedSubject", t.subject());
    }
    shared.audit.record(ev);
}
