//! What happens when a registered session ends (DESIGN section 10).
//!
//! A revoked or expired sub-agent loses everything at once: the gate refuses its every call
//! and its open files, since each decision asks the session's state. Its registration stays
//! (its processes must not fall back to the mount's session) until its root process is gone.
//! Revoking a parent ends its children in the same moment: the daemon does not wait for
//! relayauth's cascade to show up in the children's own checks. With `--on-revoke kill` the
//! session's processes are also stopped: SIGTERM, then SIGKILL after a grace period, and the
//! audit log says which.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Shared;
use crate::audit::{Event, Outcome};
use crate::session::Session;
use crate::session::callers::{ProcessKey, proc_stat};

/// What happens to a registered session's processes when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnRevoke {
    /// Refuse everything they ask of the mount; leave them running.
    #[default]
    Deny,
    /// Refuse, and stop the session's processes (SIGTERM, then SIGKILL).
    Kill,
}

/// How long processes get between SIGTERM and SIGKILL in kill mode.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// End every session whose token names `ended`'s token as its parent, and theirs in turn.
pub(crate) fn end_children(shared: &Shared, ended: &Arc<Session>) {
    let mut parents = vec![ended.grants().actor().token_id.clone()];
    parents.extend(ended.earlier_tokens().into_iter().map(|(id, _)| id));
    while let Some(parent) = parents.pop() {
        for s in shared.callers.sessions() {
            let g = s.grants();
            if g.parent_token_id() != Some(parent.as_str()) {
                continue;
            }
            let why = format!("its parent token {parent} ended");
            if s.revoke(&why) {
                shared.audit.record(
                    Event::new("session.revoked", Outcome::Denied, g.actor(), "revocation")
                        .reason(why)
                        .meta("parentTokenId", parent.clone()),
                );
                parents.push(g.actor().token_id.clone());
                // Children of the tokens a refreshed session held before are its children too.
                parents.extend(s.earlier_tokens().into_iter().map(|(id, _)| id));
            }
        }
    }
}

/// Every process below `root` (inclusive), from one scan of `/proc`; empty when `root` is not
/// that process any more (its pid was reused).
fn tree_of(root: ProcessKey) -> Vec<ProcessKey> {
    if ProcessKey::of(root.pid) != Some(root) {
        return Vec::new();
    }
    let mut children: HashMap<u32, Vec<ProcessKey>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            if let Some((ppid, start_time)) = proc_stat(pid) {
                children
                    .entry(ppid)
                    .or_default()
                    .push(ProcessKey { pid, start_time });
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i].pid) {
            out.extend(c.iter().copied());
        }
        i += 1;
    }
    out
}

/// Whether `pid` has exited and waits to be reaped (its state in `/proc/<pid>/stat` is `Z`).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|t| {
        t.rfind(')')
            .is_some_and(|i| t[i + 1..].trim_start().starts_with('Z'))
    })
}

/// Signal each process of `keys` that is still the process it was.
fn signal(keys: &[ProcessKey], sig: libc::c_int) -> Vec<u32> {
    let mut hit = Vec::new();
    for k in keys {
        if ProcessKey::of(k.pid) == Some(*k) {
            // SAFETY: kill(2) with a pid checked a moment ago to be that very process.
            if unsafe { libc::kill(k.pid as libc::pid_t, sig) } == 0 {
                hit.push(k.pid);
            }
        }
    }
    hit
}

/// Stop the processes of `session` (kill mode): SIGTERM to the whole tree; after the grace
/// period SIGKILL to what is left below the registered roots, again and again until nothing is
/// left there (a process forked meanwhile is in the next scan); only then the roots. A root
/// (`run`, a child subreaper) is what keeps the tree together: killed first, a process forked
/// after the last scan would be re-parented outside it and fall back to the mount's session.
/// Runs on a blocking thread.
pub(crate) fn stop_processes(shared: &Arc<Shared>, session: &Arc<Session>, grace: Duration) {
    let roots = shared.callers.roots_of(session);
    let below = || -> Vec<ProcessKey> {
        let mut v: Vec<ProcessKey> = shared
            .callers
            .roots_of(session)
            .into_iter()
            .flat_map(|r| tree_of(r).into_iter().skip(1))
            .collect();
        v.sort_by_key(|k| k.pid);
        v.dedup();
        v
    };
    let mut termed = signal(&roots, libc::SIGTERM);
    termed.extend(signal(&below(), libc::SIGTERM));
    if termed.is_empty() {
        return;
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && !below().is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut killed = Vec::new();
    let give_up = std::time::Instant::now() + KILL_ROUNDS_FOR;
    let left = loop {
        let left = below();
        if left.is_empty() || std::time::Instant::now() >= give_up {
            break left;
        }
        killed.extend(signal(&left, libc::SIGKILL));
        std::thread::sleep(Duration::from_millis(10));
    };
    let g = session.grants();
    if !left.is_empty() {
        // The roots stay, so what is left stays in the (ended) session and sees nothing.
        tracing::warn!(
            agent = %g.actor().identity_id,
            left = left.len(),
            "processes of an ended session could not all be stopped; its registration stays"
        );
    } else {
        // The roots pass SIGTERM on and exit with their command's status once their tree is
        // gone: they get the rest of the grace period to do so, then SIGKILL.
        let alive = |k: &ProcessKey| ProcessKey::of(k.pid) == Some(*k) && !zombie(k.pid);
        while std::time::Instant::now() < deadline && roots.iter().any(alive) {
            std::thread::sleep(Duration::from_millis(20));
        }
        killed.extend(signal(&roots, libc::SIGKILL));
    }
    killed.sort_unstable();
    killed.dedup();
    shared.audit.record(
        Event::new("session.killed", Outcome::Denied, g.actor(), "on-revoke")
            .reason(format!(
                "the session ended ({}); its processes were stopped (--on-revoke kill)",
                session.state(SystemTime::now()).describe()
            ))
            .meta("sigterm", termed)
            .meta("sigkill", killed)
            .meta("survivors", left.iter().map(|k| k.pid).collect::<Vec<_>>()),
    );
}

/// How long SIGKILL rounds go on against a tree that keeps forking.
const KILL_ROUNDS_FOR: Duration = Duration::from_secs(5);

/// Every process (but the daemon) holding a descriptor or a mapping of a file on the FUSE
/// connection `conn` (device `0:conn`), from one scan of `/proc`. Descriptors are looked at
/// with `AT_STATX_DONT_SYNC`, which asks the kernel's cached attributes, never the daemon.
fn holders_of(conn: u64) -> Vec<ProcessKey> {
    let me = std::process::id();
    let on_mount = |path: &std::path::Path| {
        rustix::fs::statx(
            rustix::fs::CWD,
            path,
            rustix::fs::AtFlags::STATX_DONT_SYNC,
            rustix::fs::StatxFlags::TYPE,
        )
        .is_ok_and(|st| st.stx_dev_major == 0 && u64::from(st.stx_dev_minor) == conn)
    };
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        if pid == me {
            continue;
        }
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.filter_map(Result::ok).any(|e| on_mount(&e.path())))
            .unwrap_or(false);
        let maps = || {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|m| maps_device(&m, conn))
        };
        if (fds || maps())
            && let Some(k) = ProcessKey::of(pid)
        {
            out.push(k);
        }
    }
    out
}

/// Whether a `/proc/<pid>/maps` text maps a file of device `0:conn`: its device column (the
/// fourth, `%02x:%02x`), never a match inside a path.
fn maps_device(maps: &str, conn: u64) -> bool {
    let dev = format!("00:{conn:02x}");
    maps.lines()
        .any(|l| l.split_ascii_whitespace().nth(3) == Some(dev.as_str()))
}

/// Passthrough I/O and `--on-revoke kill`: the mount's own session ended, and the kernel would
/// go on reading and writing the files its processes hold open (after the unmount too). Stop
/// every process that holds a descriptor or a mapping of a file in the mount: SIGTERM, then
/// SIGKILL after the grace period. Audited as `session.killed`. Runs on a blocking thread,
/// before the teardown.
pub(crate) fn stop_holders(shared: &Arc<Shared>, session: &Arc<Session>, conn: u64) {
    let termed = signal(&holders_of(conn), libc::SIGTERM);
    let mut killed = Vec::new();
    let mut left = Vec::new();
    if !termed.is_empty() {
        let deadline = std::time::Instant::now() + KILL_GRACE;
        while std::time::Instant::now() < deadline && !holders_of(conn).is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Again and again: a holder that forks hands its descriptors to a child the last scan
        // did not see.
        let give_up = std::time::Instant::now() + KILL_ROUNDS_FOR;
        left = loop {
            let now = holders_of(conn);
            if now.is_empty() || std::time::Instant::now() >= give_up {
                break now;
            }
            killed.extend(signal(&now, libc::SIGKILL));
            std::thread::sleep(Duration::from_millis(10));
        };
        killed.sort_unstable();
        killed.dedup();
    }
    if !left.is_empty() {
        tracing::warn!(
            left = left.len(),
            "processes holding passthrough files of the ended session could not all be stopped"
        );
    }
    let g = session.grants();
    shared.audit.record(
        Event::new("session.killed", Outcome::Denied, g.actor(), "on-revoke")
            .reason(format!(
                "the mount's session ended ({}); with passthrough I/O the processes holding its \
                 files open were stopped (--on-revoke kill)",
                session.state(SystemTime::now()).describe()
            ))
            .meta("sigterm", termed)
            .meta("sigkill", killed)
            .meta("survivors", left.iter().map(|k| k.pid).collect::<Vec<_>>()),
    );
}

#[cfg(test)]
mod tests {
    use super::maps_device;

    #[test]
    fn a_mapping_is_on_the_mount_by_its_device_column_not_by_a_path_that_names_it() {
        let on = "7f00-7f10 r--p 00000000 00:28 1234 /m/scratch/lib.so\n";
        let named = "7f00-7f10 r--p 00000000 fe:00 99 /tmp/lib 00:28 0 x\n";
        let wide = "7f00-7f10 r--p 00000000 00:12a 5 /x\n";
        assert!(maps_device(on, 0x28));
        assert!(!maps_device(named, 0x28));
        assert!(!maps_device(on, 0x2));
        assert!(maps_device(wide, 0x12a));
        assert!(!maps_device("7f00-7f10 rw-p 00000000 00:00 0 \n", 0x28));
    }
}
