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
//!
//! With `--token-from-env` a process may also register by what it *is*: at its first request
//! the daemon reads its own environment (`/proc/<pid>/environ`) once, and a `RELAYAUTH_TOKEN`
//! there is admitted exactly as `run` would have registered it (verified, same workspace, never
//! wider than the session the process acted under, audited). A token the process merely
//! inherited from the ancestor whose session it already acts under changes nothing; a token
//! that is refused leaves the process seeing nothing rather than falling back to another
//! session.

use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

use super::Session;

/// A process identity that survives pid reuse: pid plus start time (clock ticks since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessKey {
    pub pid: u32,
    pub start_time: u64,
}

/// What `/proc/<pid>/stat` says about a process.
struct Stat {
    ppid: u32,
    start_time: u64,
    /// Where its environment lies in its memory (`env_start`, `env_end`): new at every
    /// `execve`, which keeps the pid and start time but brings a new environment.
    env: EnvRange,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything, so parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3 of the file), so field N is fields[N - 3].
    let num = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        start_time: num(22)?,
        env: (num(50).unwrap_or(0), num(51).unwrap_or(0)),
    })
}

/// `(parent pid, start time)` of `pid`, from `/proc/<pid>/stat`.
pub fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    read_stat(pid).map(|s| (s.ppid, s.start_time))
}

/// The thread group (process) of the thread `tid`, from `/proc/<tid>/status`; `tid` itself when
/// it cannot be read (a process that is gone, or a single-threaded one, has tgid == tid).
pub fn thread_group(tid: u32) -> u32 {
    status_field(tid, "Tgid:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(tid)
}

/// The value of the line `key` (e.g. `"Uid:"`) of `/proc/<pid>/status`.
fn status_field(pid: u32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::to_owned)
}

/// The real uid of the process `pid`.
fn real_uid(pid: u32) -> Option<u32> {
    status_field(pid, "Uid:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The pids of `pid` in each PID namespace it is in, from the daemon's own to its innermost
/// (`NSpid` of `/proc/<pid>/status`): a process in an agent's namespace names itself by the
/// innermost.
pub fn namespace_pids(pid: u32) -> Vec<u32> {
    status_field(pid, "NSpid:")
        .map(|v| {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl ProcessKey {
    pub fn of(pid: u32) -> Option<ProcessKey> {
        proc_stat(pid).map(|(_, start_time)| ProcessKey { pid, start_time })
    }
}

/// The variable `--token-from-env` reads.
pub const TOKEN_VARIABLE: &str = "RELAYAUTH_TOKEN";

/// The value of `RELAYAUTH_TOKEN` in the environment the process `pid` was started with (as
/// it is now in its memory), if it has one.
pub fn environment_token(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{TOKEN_VARIABLE}=");
    env.split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Admits the process `key` (running as `uid`) under the token its environment holds, as a
/// registration would; `None` when the token is refused (the refusal is audited by it).
pub type EnvAdmission = dyn Fn(ProcessKey, u32, &str) -> Option<Arc<Session>> + Send + Sync;

/// Where a process's environment lies in its memory (`env_start`, `env_end` of
/// `/proc/<pid>/stat`); `(0, 0)` while an `execve` is placing a new one.
type EnvRange = (u64, u64);

/// `--token-from-env`: who decides, and which processes were looked at.
struct FromEnv {
    admit: OnceLock<Arc<EnvAdmission>>,
    /// Processes whose environment was read (and where that environment lay, so an `execve`
    /// with a new one is read again), and whether the token in it was refused (a process whose
    /// token was admitted is registered instead, and keeps that session across an `execve`,
    /// as under `run`).
    checked: RwLock<FxHashMap<ProcessKey, (EnvRange, EnvVerdict)>>,
    /// Held while one admission runs, so two threads of one process are never admitted twice.
    /// Only FUSE workers take it; the admission itself (and the daemon) only read `checked`.
    admitting: Mutex<()>,
}

impl std::fmt::Debug for FromEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FromEnv")
            .field("checked", &self.checked.read().len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EnvVerdict {
    /// No token of its own: the process acts under what its ancestry gives it.
    Inherits,
    /// Its token was refused: it sees nothing.
    Refused,
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
    /// Bumped by every registration made or forgotten: answers remembered before are stale.
    generation: std::sync::atomic::AtomicU64,
    /// Threads already resolved (see `super::known`).
    known: super::known::KnownThreads,
    from_env: Option<FromEnv>,
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
            generation: std::sync::atomic::AtomicU64::new(0),
            known: super::known::KnownThreads::default(),
            from_env: None,
        }
    }

    /// Let a process act under the `RELAYAUTH_TOKEN` of its own environment (`--token-from-env`);
    /// [`Callers::set_env_admission`] names who admits it.
    pub fn token_from_env(mut self, enabled: bool) -> Callers {
        self.from_env = enabled.then(|| FromEnv {
            admit: OnceLock::new(),
            checked: RwLock::new(FxHashMap::default()),
            admitting: Mutex::new(()),
        });
        self
    }

    /// Who admits a token found in a caller's environment. Until it is set (and without
    /// `--token-from-env`) such a token is refused.
    pub fn set_env_admission(&self, admit: Arc<EnvAdmission>) {
        if let Some(env) = &self.from_env {
            let _ = env.admit.set(admit);
        }
    }

    /// Whether processes may bring their token in their environment.
    pub fn reads_environment(&self) -> bool {
        self.from_env.is_some()
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

    /// Whether a caller running as `uid` may use this mount at all (as the control socket
    /// answers only the mount's user and root, unless every local user was let in).
    fn may_use_mount(&self, uid: u32) -> bool {
        uid == self.owner || uid == 0 || self.other_users
    }

    /// Whether an unregistered caller running as `uid` may act under the mount's session.
    fn may_use_mount_session(&self, uid: u32) -> bool {
        !self.require_registration && self.may_use_mount(uid)
    }

    /// The mount's own session.
    pub fn mount_session(&self) -> &Arc<Session> {
        &self.mount
    }

    /// Make `root` and its descendants act under `session`.
    pub fn register(&self, root: ProcessKey, session: Arc<Session>) {
        let mut reg = self.registered.write();
        reg.insert(root, session);
        // Under the write lock: a walk that read the old registrations also read the old
        // generation.
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The session registered with `root` as its root process, if any.
    pub fn registered_at(&self, root: ProcessKey) -> Option<Arc<Session>> {
        self.registered.read().get(&root).cloned()
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
    /// When processes may bring their own token, any request can be the first of a new
    /// session, so there are always several.
    pub fn session_count(&self) -> usize {
        let env = usize::from(self.from_env.is_some());
        1 + env + self.registered.read().len()
    }

    /// The session the process `pid` (a thread id), running as `uid`, acts under, or `None`
    /// when it may see nothing. With `--token-from-env`, a process seen for the first time has
    /// its environment read and a token there admitted (this may wait for relayauth): call it
    /// from a FUSE worker, never from the daemon's own tasks, which use
    /// [`Callers::resolve_known`].
    pub fn resolve(&self, pid: u32, uid: u32) -> Option<Arc<Session>> {
        let Some(env) = &self.from_env else {
            return self.resolve_remembered(pid, uid);
        };
        let tgid = thread_group(pid);
        let stat = read_stat(tgid)?;
        let key = ProcessKey {
            pid: tgid,
            start_time: stat.start_time,
        };
        // Ancestors first: a shell holding a token that never touched the mount itself is
        // judged before the child it started without the variable.
        let verdict = match self.verdict(env, key, stat.env) {
            Some(v) => v,
            None => {
                self.judge_ancestors(env, tgid);
                self.judge(env, key, stat.env, uid)
            }
        };
        match verdict {
            EnvVerdict::Inherits => self.walk(tgid, uid),
            EnvVerdict::Refused => None,
        }
    }

    /// The verdict already reached for the process `key` whose environment lies at `at`.
    fn verdict(&self, env: &FromEnv, key: ProcessKey, at: EnvRange) -> Option<EnvVerdict> {
        if self.registered.read().contains_key(&key) {
            return Some(EnvVerdict::Inherits);
        }
        // A refusal holds for the process's whole life (an `execve` without the variable does
        // not lift it); "no token" holds until it executes something else.
        env.checked
            .read()
            .get(&key)
            .filter(|(was, v)| *v == EnvVerdict::Refused || *was == at)
            .map(|(_, v)| *v)
    }

    /// Judge the process `key` (environment at `at`, running as `uid`) once: a token in its
    /// environment is admitted or refused; without one it inherits.
    fn judge(&self, env: &FromEnv, key: ProcessKey, at: EnvRange, uid: u32) -> EnvVerdict {
        if let Some(v) = self.verdict(env, key, at) {
            return v;
        }
        let Some(raw) = environment_token(key.pid) else {
            // No token of its own: nothing to admit, no need to wait for anyone.
            if at != (0, 0) {
                env.checked.write().insert(key, (at, EnvVerdict::Inherits));
            }
            return EnvVerdict::Inherits;
        };
        // One admission at a time; another thread of this process may have been admitted (or
        // judged) while this one waited.
        let _one = env.admitting.lock();
        if let Some(v) = self.verdict(env, key, at) {
            return v;
        }
        let v = self.judge_environment(env, key, uid, &raw);
        // No environment yet: the kernel is in the middle of an `execve` (the new one is placed
        // after the old memory is gone). Judged again later, unless refused.
        if at != (0, 0) || v == EnvVerdict::Refused {
            env.checked.write().insert(key, (at, v));
        }
        v
    }

    /// Judge every ancestor of `pid` up to the nearest registered one (or the top) that has not
    /// been judged yet, the highest first, each as the user it runs as.
    fn judge_ancestors(&self, env: &FromEnv, pid: u32) {
        let mut chain = Vec::new();
        let mut pid = pid;
        for _ in 0..MAX_DEPTH {
            let Some(st) = read_stat(pid) else { return };
            if st.ppid == 0 || st.ppid == pid {
                break;
            }
            let Some(parent) = read_stat(st.ppid) else {
                return;
            };
            let key = ProcessKey {
                pid: st.ppid,
                start_time: parent.start_time,
            };
            if self.registered.read().contains_key(&key) {
                break;
            }
            chain.push((key, parent.env));
            pid = st.ppid;
        }
        for (key, at) in chain.into_iter().rev() {
            if let Some(uid) = real_uid(key.pid) {
                self.judge(env, key, at, uid);
            }
        }
    }

    /// [`Callers::walk`], remembered per thread (see `super::known`) once sessions are
    /// registered (before, the answer needs no `/proc` read at all).
    fn resolve_remembered(&self, tid: u32, uid: u32) -> Option<Arc<Session>> {
        if self.registered.read().is_empty() {
            return self.walk(tid, uid);
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        if let Some(answer) = self.known.get(tid, uid, generation) {
            return answer;
        }
        // Opened before the walk: if the thread is still alive after it, both name it.
        let pidfd = super::known::thread_pidfd(tid);
        let answer = self.walk(tid, uid);
        if let Some(pidfd) = pidfd {
            self.known
                .remember(tid, pidfd, uid, generation, answer.clone());
        }
        answer
    }

    /// Admit the token `raw` found in the environment of the process `key`, unless it is the
    /// token the process already acts under: registered (and so `Inherits` from now on), or
    /// `Refused`.
    fn judge_environment(&self, env: &FromEnv, key: ProcessKey, uid: u32, raw: &str) -> EnvVerdict {
        let inherited = self.walk(key.pid, uid);
        if inherited
            .as_ref()
            .is_some_and(|s| &**s.grants().raw() == raw.trim())
        {
            return EnvVerdict::Inherits;
        }
        if !self.may_use_mount(uid) {
            return EnvVerdict::Refused;
        }
        match env.admit.get().and_then(|admit| admit(key, uid, raw)) {
            // The admission registered it: its session is found by the walk from now on.
            Some(_) if self.registered.read().contains_key(&key) => EnvVerdict::Inherits,
            _ => EnvVerdict::Refused,
        }
    }

    /// The session `pid` acts under by what is registered now (no environment is read and
    /// nothing is admitted); a process whose environment's token was refused acts under none.
    pub fn resolve_known(&self, pid: u32, uid: u32) -> Option<Arc<Session>> {
        if let Some(env) = &self.from_env {
            let tgid = thread_group(pid);
            let stat = read_stat(tgid)?;
            let key = ProcessKey {
                pid: tgid,
                start_time: stat.start_time,
            };
            if env.checked.read().get(&key) == Some(&(stat.env, EnvVerdict::Refused)) {
                return None;
            }
        }
        self.walk(pid, uid)
    }

    /// The nearest registered ancestor's session of `pid`, or the mount's when there is none
    /// and `uid` may use it.
    fn walk(&self, pid: u32, uid: u32) -> Option<Arc<Session>> {
        match self.nearest_registered(pid)? {
            Some(s) => Some(s),
            None => self.may_use_mount_session(uid).then(|| self.mount.clone()),
        }
    }

    /// The session of `pid`'s nearest registered ancestor (itself included): `Some(None)` when
    /// the walk reached the top of the tree without one, `None` when it could not finish.
    fn nearest_registered(&self, pid: u32) -> Option<Option<Arc<Session>>> {
        let reg = self.registered.read();
        let checked = self.from_env.as_ref().map(|env| env.checked.read());
        let refused = checked.as_deref().filter(|c| !c.is_empty());
        if reg.is_empty() && refused.is_none() {
            return Some(None);
        }
        // FUSE names the calling *thread*; registrations are of processes. A worker thread of a
        // registered process must act under its registration, not skip it (a thread's
        // `/proc/<tid>/stat` gives its own start time and the process's parent).
        let mut pid = thread_group(pid);
        for _ in 0..MAX_DEPTH {
            // An ancestor that cannot be read (it exited mid-walk, or /proc hides it) leaves
            // the question open: nothing, rather than the mount's session.
            let (ppid, start_time) = proc_stat(pid)?;
            let key = ProcessKey { pid, start_time };
            if let Some(s) = reg.get(&key) {
                return Some(Some(s.clone()));
            }
            // Below a process whose own token was refused there is nothing (its children
            // cannot shed the refusal by dropping the variable).
            if refused.is_some_and(|r| r.get(&key).is_some_and(|(_, v)| *v == EnvVerdict::Refused))
            {
                return None;
            }
            if ppid == 0 || ppid == pid {
                // The top of the tree, and no registered ancestor on the way.
                return Some(None);
            }
            pid = ppid;
        }
        None
    }

    /// Whether `pid` is outside every registered tree and was not refused a token of its own:
    /// the user's own processes, which may control the mount (status, unmount). Unknown
    /// (an unfinished walk) is not outside.
    pub fn outside_every_session(&self, pid: u32) -> bool {
        if let Some(env) = &self.from_env {
            let tgid = thread_group(pid);
            let Some(stat) = read_stat(tgid) else {
                return false;
            };
            let key = ProcessKey {
                pid: tgid,
                start_time: stat.start_time,
            };
            if env
                .checked
                .read()
                .get(&key)
                .is_some_and(|(_, v)| *v == EnvVerdict::Refused)
            {
                return false;
            }
        }
        matches!(self.nearest_registered(pid), Some(None))
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

    /// Forget registrations (and environments looked at) whose process is gone.
    pub fn prune(&self) {
        let alive = |k: &ProcessKey| ProcessKey::of(k.pid).is_some_and(|now| now == *k);
        {
            let mut reg = self.registered.write();
            let before = reg.len();
            reg.retain(|k, _| alive(k));
            if reg.len() != before {
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        self.known.prune();
        if let Some(env) = &self.from_env {
            env.checked.write().retain(|k, _| alive(k));
        }
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

    /// A child process started with `env` as its whole environment (it waits for stdin).
    fn child_with(env: &[(&str, &str)]) -> std::process::Child {
        let mut cmd = std::process::Command::new("/bin/cat");
        cmd.env_clear()
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped());
        let child = cmd.spawn().unwrap();
        // The spawn returns once the exec is past its point of no return, before the kernel
        // has placed the new environment.
        settled(child.id());
        child
    }

    fn settled(pid: u32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while read_stat(pid).is_some_and(|s| s.env == (0, 0)) {
            assert!(
                std::time::Instant::now() < deadline,
                "no environment for {pid}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn stop(mut c: std::process::Child) {
        drop(c.stdin.take());
        c.wait().unwrap();
    }

    #[test]
    fn the_token_is_read_from_the_processs_own_environment() {
        let with = child_with(&[("A", "1"), (TOKEN_VARIABLE, "eyJ.x.y"), ("B", "2")]);
        let without = child_with(&[("RELAYAUTH_TOKEN_FILE", "/t"), ("X_RELAYAUTH_TOKEN", "no")]);
        assert_eq!(environment_token(with.id()).as_deref(), Some("eyJ.x.y"));
        assert_eq!(environment_token(without.id()), None);
        stop(with);
        stop(without);
    }

    #[test]
    fn an_environment_token_is_admitted_once_inherited_tokens_change_nothing_and_refusals_stick() {
        let mount = session(&["relayfile:fs:read:*"]);
        let narrow = session(&["relayfile:fs:read:/a/**"]);
        let calls = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let callers = Arc::new(Callers::new(mount.clone(), false).token_from_env(true));
        // Several views from the start: any request may open a session.
        assert_eq!(callers.session_count(), 2);
        let (seen, admitted, weak) = (calls.clone(), narrow.clone(), Arc::downgrade(&callers));
        // Admission registers, as the daemon's does.
        callers.set_env_admission(Arc::new(move |key, _uid, raw: &str| {
            seen.lock().unwrap().push(raw.to_owned());
            let callers = weak.upgrade()?;
            (raw == "good").then(|| {
                callers.register(key, admitted.clone());
                admitted.clone()
            })
        }));
        let good = child_with(&[(TOKEN_VARIABLE, "good")]);
        let got = callers.resolve(good.id(), 0).unwrap();
        assert!(Arc::ptr_eq(&got, &narrow));
        assert!(Arc::ptr_eq(
            &callers.resolve(good.id(), 0).unwrap(),
            &narrow
        ));
        assert_eq!(callers.session_count(), 3);
        // A refused token leaves nothing, and is not tried again at every request.
        let bad = child_with(&[(TOKEN_VARIABLE, "forged")]);
        assert!(callers.resolve(bad.id(), 0).is_none());
        assert!(callers.resolve(bad.id(), 0).is_none());
        assert!(callers.resolve_known(bad.id(), 0).is_none());
        // The mount's own token in the environment is no new session; no token, the mount's.
        let same = child_with(&[(TOKEN_VARIABLE, "test")]);
        assert!(Arc::ptr_eq(&callers.resolve(same.id(), 0).unwrap(), &mount));
        let none = child_with(&[]);
        assert!(Arc::ptr_eq(&callers.resolve(none.id(), 0).unwrap(), &mount));
        // Another local user's token is refused without being looked at (as on the socket).
        let other = child_with(&[(TOKEN_VARIABLE, "good")]);
        assert!(callers.resolve(other.id(), 65534).is_none());
        assert_eq!(*calls.lock().unwrap(), ["good", "forged"]);
        // An execve brings a new environment under the same pid and start time: read again
        // (a shell forks, changes directory in the mount, then execs the agent).
        let mut late = std::process::Command::new("/bin/sh")
            .args(["-c", "read x; exec env RELAYAUTH_TOKEN=good /bin/cat"])
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        settled(late.id());
        assert!(Arc::ptr_eq(&callers.resolve(late.id(), 0).unwrap(), &mount));
        {
            use std::io::Write;
            late.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while environment_token(late.id()).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        settled(late.id());
        assert!(Arc::ptr_eq(
            &callers.resolve(late.id(), 0).unwrap(),
            &narrow
        ));
        stop(late);
        // A process that is gone is forgotten.
        let bad_key = ProcessKey::of(bad.id()).unwrap();
        for c in [good, bad, same, none, other] {
            stop(c);
        }
        callers.prune();
        assert!(
            !callers
                .from_env
                .as_ref()
                .unwrap()
                .checked
                .read()
                .contains_key(&bad_key)
        );
        assert_eq!(callers.session_count(), 2);
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
    fn a_remembered_answer_gives_way_to_a_later_registration() {
        let mount = session(&["relayfile:fs:read:*"]);
        let other = session(&["relayfile:fs:read:/b/**"]);
        let child = session(&["relayfile:fs:read:/a/**"]);
        let callers = Callers::new(mount.clone(), false);
        // Some registration exists, not ours: we are resolved (and remembered) as the mount.
        callers.register(
            ProcessKey {
                pid: 4_000_001,
                start_time: 1,
            },
            other,
        );
        let me = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        for _ in 0..3 {
            assert!(Arc::ptr_eq(&callers.resolve(me, 0).unwrap(), &mount));
        }
        // Our parent registers: the remembered answer is not given again.
        let (ppid, _) = proc_stat(std::process::id()).unwrap();
        callers.register(ProcessKey::of(ppid).unwrap(), child.clone());
        for _ in 0..3 {
            assert!(Arc::ptr_eq(&callers.resolve(me, 0).unwrap(), &child));
        }
        // Nor to another uid.
        assert!(
            callers
                .resolve(me, 4242)
                .is_some_and(|s| Arc::ptr_eq(&s, &child))
        );
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
