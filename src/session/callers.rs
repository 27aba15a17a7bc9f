//! Caller resolution: which session does the process behind a FUSE request act under?
//!
//! FUSE gives the caller's pid. Registered sessions are rooted at a process (`run` registers
//! itself and then execs the agent); a caller acts under the nearest registered ancestor, found
//! by walking `/proc/<pid>/stat`. Entries are keyed by pid *and* process start time, so a reused
//! pid never inherits a session. A caller with no registered ancestor acts under the mount's own
//! session only when it runs as the mount's own user or as root (or every local user was let in
//! with `--allow-other-users`): the mount's token is its owner's, not every local user's. Any
//! other caller, and every unregistered caller when the mount requires registration, sees
//! nothing.

use std::sync::Arc;

use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use super::Session;

/// A process identity that survives pid reuse: pid plus start time (clock ticks since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessKey {
    pub pid: u32,
    pub start_time: u64,
}

/// `(parent pid, start time)` of `pid`, from `/proc/<pid>/stat`.
pub fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything, so parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3 of the file), so field N is fields[N - 3].
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// The thread group (process) of the thread `tid`, from `/proc/<tid>/status`; `tid` itself when
/// it cannot be read (a process that is gone, or a single-threaded one, has tgid == tid).
pub fn thread_group(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

impl ProcessKey {
    pub fn of(pid: u32) -> Option<ProcessKey> {
        proc_stat(pid).map(|(_, start_time)| ProcessKey { pid, start_time })
    }
}

/// The sessions of a mount and who acts under which.
#[derive(Debug)]
pub struct Callers {
    mount: Arc<Session>,
    require_registration: bool,
    /// The user the mount belongs to (the daemon's real uid).
    owner: u32,
    /// Whether unregistered callers of any uid act under the mount's session.
    other_users: bool,
    registered: RwLock<FxHashMap<ProcessKey, Arc<Session>>>,
}

/// How far up the process tree to look. A walk that has not reached the top by then (or that
/// cannot read an ancestor) resolves to no session at all: falling back to the mount's session
/// would let a sub-agent out of its tree by forking deep enough.
const MAX_DEPTH: usize = 4096;

impl Callers {
    /// The callers of a mount owned by the daemon's own user; other local users see nothing
    /// until [`Callers::allow_other_users`].
    pub fn new(mount: Arc<Session>, require_registration: bool) -> Callers {
        Callers {
            mount,
            require_registration,
            owner: rustix::process::getuid().as_raw(),
            other_users: false,
            registered: RwLock::new(FxHashMap::default()),
        }
    }

    /// Let unregistered callers of every uid act under the mount's session (the loudly
    /// announced `--allow-other-users`).
    pub fn allow_other_users(mut self, allow: bool) -> Callers {
        self.other_users = allow;
        self
    }

    /// The uid the mount belongs to.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Whether an unregistered caller running as `uid` may act under the mount's session.
    fn may_use_mount_session(&self, uid: u32) -> bool {
        !self.require_registration && (uid == self.owner || uid == 0 || self.other_users)
    }

    /// The mount's own session.
    pub fn mount_session(&self) -> &Arc<Session> {
        &self.mount
    }

    /// Make `root` and its descendants act under `session`.
    pub fn register(&self, root: ProcessKey, session: Arc<Session>) {
        self.registered.write().insert(root, session);
    }

    /// All distinct sessions (the mount's first).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        let mut out = vec![self.mount.clone()];
        for s in self.registered.read().values() {
            if !out.iter().any(|o| Arc::ptr_eq(o, s)) {
                out.push(s.clone());
            }
        }
        out
    }

    /// How many views of the mount callers may have (kernel caches are shared by all callers,
    /// so the filesystem turns them off when this exceeds one). Unregistered callers have one
    /// view besides the registered sessions: the mount session's, or, when registration is
    /// required, the empty one, which a cached entry of a registered session must not reach.
    pub fn session_count(&self) -> usize {
        1 + self.registered.read().len()
    }

    /// The session the process `pid`, running as `uid`, acts under, or `None` when it may see
    /// nothing.
    pub fn resolve(&self, pid: u32, uid: u32) -> Option<Arc<Session>> {
        let reg = self.registered.read();
        if reg.is_empty() {
            return self.may_use_mount_session(uid).then(|| self.mount.clone());
        }
        // FUSE names the calling *thread*; registrations are of processes. A worker thread of a
        // registered process must act under its registration, not skip it (a thread's
        // `/proc/<tid>/stat` gives its own start time and the process's parent).
        let mut pid = thread_group(pid);
        for _ in 0..MAX_DEPTH {
            // An ancestor that cannot be read (it exited mid-walk, or /proc hides it) leaves
            // the question open: nothing, rather than the mount's session.
            let (ppid, start_time) = proc_stat(pid)?;
            if let Some(s) = reg.get(&ProcessKey { pid, start_time }) {
                return Some(s.clone());
            }
            if ppid == 0 || ppid == pid {
                // The top of the tree, and no registered ancestor on the way.
                return self.may_use_mount_session(uid).then(|| self.mount.clone());
            }
            pid = ppid;
        }
        None
    }

    /// The registered roots of `session` (processes it was registered for, still running or
    /// not).
    pub fn roots_of(&self, session: &Arc<Session>) -> Vec<ProcessKey> {
        self.registered
            .read()
            .iter()
            .filter(|(_, s)| Arc::ptr_eq(s, session))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Forget registrations whose root process is gone.
    pub fn prune(&self) {
        self.registered
            .write()
            .retain(|k, _| ProcessKey::of(k.pid).is_some_and(|now| now == *k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testing::session;

    #[test]
    fn a_threads_group_is_its_process() {
        let me = std::process::id();
        assert_eq!(thread_group(me), me);
        let tid = std::thread::spawn(|| rustix::thread::gettid().as_raw_nonzero().get() as u32)
            .join()
            .unwrap();
        assert_ne!(tid, me);
        // The thread has exited: its id is its own group then.
        assert_eq!(thread_group(tid), tid);
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get() as u32)
                .unwrap();
            let _ = done_rx.recv();
        });
        let live = rx.recv().unwrap();
        assert_eq!(thread_group(live), me);
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn proc_stat_reads_self() {
        let me = std::process::id();
        let (ppid, start) = proc_stat(me).unwrap();
        assert!(ppid > 0 && start > 0);
    }

    #[test]
    fn descendants_inherit_and_reused_pids_do_not() {
        let mount = session(&["relayfile:fs:read:*"]);
        let child = session(&["relayfile:fs:read:/a/**"]);
        let callers = Callers::new(mount.clone(), false);
        let me = std::process::id();
        assert!(Arc::ptr_eq(&callers.resolve(me, 0).unwrap(), &mount));
        // Register our parent: we are its descendant.
        let (ppid, _) = proc_stat(me).unwrap();
        callers.register(ProcessKey::of(ppid).unwrap(), child.clone());
        assert!(Arc::ptr_eq(&callers.resolve(me, 0).unwrap(), &child));
        assert_eq!(callers.session_count(), 2);
        // A registration for the same pid with another start time is not us.
        let callers = Callers::new(mount.clone(), true);
        callers.register(
            ProcessKey {
                pid: me,
                start_time: 1,
            },
            child,
        );
        assert!(callers.resolve(me, 0).is_none());
        // One registered session plus the empty view of everyone else: two views, no caching.
        assert_eq!(callers.session_count(), 2);
    }

    #[test]
    fn a_thread_of_a_registered_process_acts_under_its_registration() {
        let mount = session(&["relayfile:fs:read:*"]);
        let child = session(&["relayfile:fs:read:/a/**"]);
        let callers = Callers::new(mount, false);
        callers.register(ProcessKey::of(std::process::id()).unwrap(), child.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get() as u32)
                .unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert_ne!(tid, std::process::id());
        let got = callers.resolve(tid, 0).unwrap();
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(
            Arc::ptr_eq(&got, &child),
            "a worker thread escaped its registration"
        );
    }

    /// A process deeper than the walk goes, or whose ancestry cannot be read, is in no
    /// session: never the mount's.
    #[test]
    fn an_unfinished_walk_resolves_to_nothing() {
        let mount = session(&["relayfile:fs:read:*"]);
        let child = session(&["relayfile:fs:read:/a/**"]);
        let callers = Callers::new(mount, false);
        callers.register(
            ProcessKey {
                pid: 4_000_001,
                start_time: 1,
            },
            child,
        );
        // A pid that is no process: its ancestry cannot be read.
        assert!(callers.resolve(4_000_002, 0).is_none());
        // This process (shallow, readable to the top) still gets the mount's session.
        assert!(callers.resolve(std::process::id(), 0).is_some());
    }

    #[test]
    fn other_local_users_get_nothing_unless_let_in() {
        let mount = session(&["relayfile:fs:read:*"]);
        let callers = Callers::new(mount.clone(), false);
        let me = std::process::id();
        let owner = callers.owner();
        assert!(callers.resolve(me, owner).is_some());
        assert!(callers.resolve(me, 0).is_some(), "root may use the mount");
        let stranger = if owner == 65534 { 65533 } else { 65534 };
        assert!(callers.resolve(me, stranger).is_none());
        let open = Callers::new(mount, false).allow_other_users(true);
        assert!(open.resolve(me, stranger).is_some());
    }
}
