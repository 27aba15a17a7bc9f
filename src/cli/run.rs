//! `relayauth-mount run` and `delegate`: start an agent under its own token in an existing
//! mount (`delegate` has the daemon obtain that token from relayauth as a child of the
//! caller's session).
//!
//! The daemon decides (it verifies the token, checks the workspace, the parent and revocation)
//! and registers this very process; the agent then runs as this process's child, so it and
//! every descendant act under the token. `run` makes itself a child subreaper first: a
//! descendant that double-forks is re-parented to `run`, not to init, and so stays inside the
//! registered tree. Nothing the agent started outlives `run`: when the command exits, what is
//! left of its tree is sent SIGTERM and, after a grace period, SIGKILL (left running, it would
//! act as the mount's user). Signals `run` receives are passed to the command; its exit status
//! is `run`'s (128 + N when it was killed by signal N).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use clap::{ArgGroup, Args};

use super::token::TokenSourceArgs;
use super::{Exit, Failure};
use crate::daemon::control;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("token_source").required(true).args(["token_file", "token_env", "credentials"])))]
#[command(
    after_help = "Example:\n  relayauth-mount run --mountpoint ~/relay --token-file reviewer.jwt -- \
                        python3 review.py\n\nThe command and everything it starts act under the \
                        token; what is left running when the command exits is stopped."
)]
pub struct RunArgs {
    #[command(flatten)]
    from: TokenSourceArgs,
    #[command(flatten)]
    launch: Launch,
}

/// Run the command; returns its exit code (or 1 when the registration was refused).
pub fn run(args: RunArgs) -> Result<i32, Failure> {
    let source = args.from.source().ok_or_else(|| {
        Failure::input(
            "give the agent's token with --token-file F, --token-env [VAR] or --credentials B",
        )
    })?;
    let token = source.read().map_err(|e| Failure::input(e.to_string()))?;
    let renewal = match (&source, &token.bundle) {
        (crate::credentials::CredentialSource::Bundle(path), Some(b))
            if b.refresh_token().is_some() =>
        {
            Some(path.clone())
        }
        (crate::credentials::CredentialSource::Bundle(_), _) => {
            eprintln!(
                "relayauth-mount: note: the bundle holds no refresh token, so the sub-agent's \
                 session ends when its access token expires"
            );
            None
        }
        _ => None,
    };
    let request = control::Request::Register {
        token: token.access_token.clone(),
        pid: std::process::id(),
    };
    let renew = renewal.map(|bundle| Renewal {
        bundle,
        current: token.access_token,
    });
    run_registered(&request, &args.launch, renew)
}

/// A bundle `run` keeps fresh for the session it registered.
struct Renewal {
    bundle: PathBuf,
    /// The access token the session holds.
    current: String,
}

/// How long `run` waits before trying a failed refresh or renewal again (less when the token
/// has less left).
const RENEW_RETRY: Duration = Duration::from_secs(15);

/// Keep the session `run` registered alive past its token's expiry: once 80% of the token's
/// life has passed, rotate the bundle's pair at relayauth (single flight, written back to the
/// bundle before it is used, as the mount does for its own bundle) and hand the new access
/// token to the daemon, which verifies it and replaces the session's token. Runs on a thread
/// of its own until `run` exits; a refusal for good is said once and ends the renewals (the
/// session then ends when its token expires).
fn keep_renewed(mountpoint: PathBuf, renewal: Renewal, relayauth_url: Option<String>, me: u32) {
    use crate::relayauth::refresh::{RefreshOptions, Refresher, refresh_due_at};
    let say = |what: &str| eprintln!("relayauth-mount: {what}");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return say(&format!(
                "cannot refresh the sub-agent's token ({e}); its session ends when the token expires"
            ));
        }
    };
    let options = RefreshOptions {
        relayauth_url,
        ..RefreshOptions::default()
    };
    let refresher = match Refresher::for_another_verifier(&renewal.bundle, options) {
        Ok(r) => r,
        Err(e) => {
            return say(&format!(
                "cannot refresh the sub-agent's token ({e}); its session ends when the token expires"
            ));
        }
    };
    let mut current = renewal.current;
    loop {
        let Some((iat, exp)) = crate::token::unverified_lifetime(&current) else {
            return say("the sub-agent's token names no lifetime; it is not refreshed");
        };
        let Some(due) = refresh_due_at(iat, exp) else {
            return;
        };
        // Wall-clock waits in slices (a suspended laptop stops monotonic time).
        while let Ok(left) = due.duration_since(SystemTime::now()) {
            std::thread::sleep(left.min(Duration::from_secs(5)));
        }
        let retry = || {
            let left = exp.duration_since(SystemTime::now()).unwrap_or_default();
            std::thread::sleep(RENEW_RETRY.min(left / 4).max(Duration::from_millis(200)));
        };
        let rotated = match runtime.block_on(refresher.rotate()) {
            Ok(r) => r.credentials.access_token,
            Err(e) if e.is_terminal() => {
                return say(&format!(
                    "relayauth will not refresh the sub-agent's token ({e}); its session ends \
                     when the token expires"
                ));
            }
            Err(e) => {
                say(&format!(
                    "refreshing the sub-agent's token failed ({e}); trying again"
                ));
                retry();
                continue;
            }
        };
        let request = control::Request::Renew {
            token: rotated.clone(),
            pid: me,
        };
        match control::request(&mountpoint, &request) {
            Ok(answer) if answer["ok"] == true => current = rotated,
            Ok(answer) => {
                let why = answer["error"].as_str().unwrap_or("no reason given");
                return say(&format!(
                    "the mount refused the sub-agent's refreshed token ({why}); its session \
                     ends when the current token expires"
                ));
            }
            Err(e) => {
                say(&format!(
                    "cannot hand the refreshed token to the mount ({e}); trying again"
                ));
                retry();
            }
        }
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  relayauth-mount delegate --mountpoint ~/relay --agent reviewer \\\n    \
                        --scope 'relayfile:fs:read:/github/repos/acme/api/pulls/*' --ttl 30m -- \
                        python3 review.py\n\nThe child token comes from relayauth, issued by the \
                        session the caller acts under: never wider, never outliving it."
)]
pub struct DelegateArgs {
    /// The sub-agent's name (relayauth reuses the identity of an earlier delegation to it).
    #[arg(long, value_name = "NAME")]
    agent: String,
    /// A scope for the sub-agent (repeat, or several after one flag); each must be within the
    /// caller's own session.
    #[arg(long = "scope", value_name = "S", required = true, num_args = 1..)]
    scopes: Vec<String>,
    /// How long the child token lives (never past the parent's expiry).
    #[arg(long, value_name = "D", value_parser = super::token::duration)]
    ttl: Option<Duration>,
    #[command(flatten)]
    launch: Launch,
}

/// `delegate`: a child token of the caller's session, then the command under it.
pub fn delegate(args: DelegateArgs) -> Result<i32, Failure> {
    let request = control::Request::Delegate {
        agent: args.agent.clone(),
        scopes: args.scopes.clone(),
        ttl_secs: args.ttl.map(|d| d.as_secs()),
        pid: std::process::id(),
    };
    run_registered(&request, &args.launch, None)
}

/// Where and how the command is started: the flags `run` and `delegate` share.
#[derive(Debug, Args)]
struct Launch {
    /// The guarded view to run in (a mountpoint of `relayauth-mount mount`).
    #[arg(long, value_name = "M")]
    mountpoint: PathBuf,
    /// How long what the command left running gets between SIGTERM and SIGKILL.
    #[arg(long, value_name = "D", default_value = "2s", value_parser = super::token::duration)]
    grace: Duration,
    /// Let the command inherit this process's open descriptors beyond stdin, stdout and stderr
    /// (by default they are closed: a descriptor opened under another session keeps that
    /// session's rights).
    #[arg(long)]
    keep_fds: bool,
    /// The command to run and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// How the agent's processes are held together.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tree {
    /// A PID namespace of their own, whose init is the registered process: an orphan comes
    /// back to it whatever else dies, nothing inside can signal it or anything outside, and
    /// when it exits the kernel kills everything inside.
    Namespace,
    /// This process as a child subreaper (no PID namespace could be made): an agent that kills
    /// this process leaves its session.
    Subreaper,
}

/// Register with `request`, then run the command under the session (keeping its token fresh
/// from `renewal`'s bundle, when given). The agent gets a PID namespace when the system allows
/// one: this process then only waits for the namespace's init, which registers itself and
/// runs the command.
fn run_registered(
    request: &control::Request,
    launch: &Launch,
    renewal: Option<Renewal>,
) -> Result<i32, Failure> {
    if launch.command.is_empty() {
        return Err(Failure::input("give the command to run after --"));
    }
    // SAFETY: prctl with an integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(Failure::failed(format!(
            "cannot keep the agent's processes together (PR_SET_CHILD_SUBREAPER: {}); nothing was started",
            std::io::Error::last_os_error()
        )));
    }
    let signals = Signals::block()?;
    // SAFETY: unshare with a flag; this process is single-threaded here.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        eprintln!(
            "relayauth-mount: warning: no PID namespace for the agent ({}; it needs root or \
             CAP_SYS_ADMIN): its processes are held together by this process alone, and one \
             that kills it leaves its session",
            std::io::Error::last_os_error()
        );
        return in_session(
            request,
            launch,
            renewal,
            &signals,
            Tree::Subreaper,
            std::process::id(),
        );
    }
    // SAFETY: fork in a single-threaded process; the child goes on with ordinary code.
    match unsafe { libc::fork() } {
        -1 => Err(Failure::failed(format!(
            "cannot start the agent's namespace: {}; nothing was started",
            std::io::Error::last_os_error()
        ))),
        0 => {
            // The namespace's init. Signals sent to an init without a handler are dropped;
            // with these (never run: the signals stay blocked and are taken by
            // `sigtimedwait`) they are kept for it.
            signals.catch();
            let me = std::process::id();
            if let Err(why) = private_proc() {
                return Err(Failure::failed(format!(
                    "cannot give the agent a /proc of its own ({why}); nothing was started"
                )));
            }
            in_session(request, launch, renewal, &signals, Tree::Namespace, me)
        }
        init => Ok(wait_for(init, &signals)),
    }
}

/// Wait for the namespace's init, passing it the signals this process gets; its exit status.
fn wait_for(init: libc::pid_t, signals: &Signals) -> i32 {
    loop {
        match signals.wait(None) {
            Some(libc::SIGCHLD) => {
                let mut st = 0;
                // SAFETY: reaping our own child without blocking.
                let rc = unsafe { libc::waitpid(init, &mut st, libc::WNOHANG) };
                if rc == init {
                    return if libc::WIFEXITED(st) {
                        libc::WEXITSTATUS(st)
                    } else {
                        128 + libc::WTERMSIG(st)
                    };
                }
                if rc < 0 {
                    return 1;
                }
            }
            Some(sig) => {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(init, sig) };
            }
            None => {}
        }
    }
}

/// Give the namespace's init (and so the agent) a mount namespace whose `/proc` shows only the
/// agent's PID namespace: the host's `/proc` would let the agent read and write the memory of
/// the lead's processes (`/proc/<pid>/mem` of a process of the same user), read their
/// environments and descriptors. Mounts made outside still reach the agent (a slave copy);
/// nothing mounted inside reaches out. The init is also made non-dumpable, so a process of the
/// agent cannot ptrace it (nor open its `/proc` files) to stop or steer it.
fn private_proc() -> Result<(), String> {
    use rustix::mount::{MountFlags, MountPropagationFlags, mount, mount_change};
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_DUMPABLE: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: unshare with a flag; this process is single-threaded here.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNS): {}",
            std::io::Error::last_os_error()
        ));
    }
    mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(|e| format!("making / a slave mount: {e}"))?;
    mount(
        "proc",
        "/proc",
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| format!("mounting /proc: {e}"))
}

/// Register this process (`me`, its pid in its own PID namespace, which the daemon accepts as
/// the name of its peer) with `request`, then run the command.
fn in_session(
    request: &control::Request,
    launch: &Launch,
    renewal: Option<Renewal>,
    signals: &Signals,
    tree: Tree,
    me: u32,
) -> Result<i32, Failure> {
    let Launch {
        mountpoint,
        grace,
        keep_fds,
        command,
    } = launch;
    let (grace, keep_fds) = (*grace, *keep_fds);
    let Some((program, program_args)) = command.split_first() else {
        return Err(Failure::input("give the command to run after --"));
    };
    let answer = control::request(mountpoint, &request.from(me)).map_err(Failure::failed)?;
    if answer["ok"] != true {
        let why = answer["error"]
            .as_str()
            .unwrap_or("the daemon gave no reason");
        return Err(Failure::failed(format!("the mount refused: {why}")));
    }
    let mut cmd = Command::new(program);
    cmd.args(program_args);
    let unblock = signals.0;
    // SAFETY: between fork and exec only async-signal-safe calls: sigprocmask, close_range.
    // The command must not inherit the mask `run` waits with (it would never see SIGTERM),
    // nor, unless asked, descriptors opened under another session (they keep its rights):
    // every descriptor past stderr is marked close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sigprocmask(libc::SIG_UNBLOCK, &unblock, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if !keep_fds
                && libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            Exit::CommandNotFound
        } else {
            Exit::CannotExecute
        };
        Failure {
            exit: code,
            message: format!("cannot start {}: {e}", program.to_string_lossy()),
        }
    })?;
    let cmd = child.id() as libc::pid_t;
    if let Some(renewal) = renewal {
        // After the fork: the thread inherits the blocked signals, and the command never
        // shares an address space with a running thread.
        let url = answer["relayauth_url"].as_str().map(str::to_owned);
        let mountpoint = mountpoint.clone();
        std::thread::spawn(move || keep_renewed(mountpoint, renewal, url, me));
    }
    let status = loop {
        match signals.wait(None) {
            Some(libc::SIGCHLD) => {
                reap_others(cmd);
                match child.try_wait() {
                    Ok(Some(status)) => break status,
                    Ok(None) => {}
                    Err(e) => {
                        return Err(Failure::failed(format!("cannot wait for the command: {e}")));
                    }
                }
            }
            Some(sig) => {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(cmd, sig) };
            }
            None => {}
        }
    };
    match tree {
        Tree::Subreaper => stop_the_rest(signals, grace, me),
        Tree::Namespace => stop_the_namespace(signals, grace),
    }
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// `close_range(2)`'s flag that marks descriptors close-on-exec instead of closing them
/// (Linux 5.11).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Reap exited descendants other than the command (orphans re-parented to us).
fn reap_others(cmd: libc::pid_t) {
    loop {
        let mut st = 0;
        // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a peek at any exited child: WNOWAIT leaves its status for `try_wait` when it
        // is the command.
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: reading the pid field the kernel filled in.
        let pid = unsafe { info.si_pid() };
        if rc != 0 || pid == 0 || pid == cmd {
            return;
        }
        // SAFETY: reaping a child that has exited.
        unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    }
}

/// The children of this process (orphans of the tree come back to it as a subreaper).
fn children(me: u32) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| crate::session::callers::proc_stat(pid).is_some_and(|(ppid, _)| ppid == me))
        .map(|pid| pid as libc::pid_t)
        .collect()
}

/// Stop what is left of the tree: SIGTERM, then SIGKILL after `grace`, until nothing is left.
fn stop_the_rest(signals: &Signals, grace: Duration, me: u32) {
    let reap = || {
        let mut st = 0;
        // SAFETY: reaping any exited child without blocking.
        while unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) } > 0 {}
    };
    reap();
    let mut left = children(me);
    if left.is_empty() {
        return;
    }
    eprintln!(
        "relayauth-mount: the command exited; stopping {} process(es) it left running",
        left.len()
    );
    let deadline = Instant::now() + grace;
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        for &pid in &left {
            // SAFETY: signalling a child of ours.
            unsafe { libc::kill(pid, sig) };
        }
        loop {
            reap();
            left = children(me);
            let now = Instant::now();
            if left.is_empty() || (sig == libc::SIGTERM && now >= deadline) {
                break;
            }
            if sig == libc::SIGKILL {
                // Killed children's own children come back to us: kill those too.
                for &pid in &left {
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = signals.wait(Some(
                deadline
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(20))
                    .min(Duration::from_millis(100)),
            ));
        }
        if left.is_empty() {
            return;
        }
    }
}

/// Stop what is left in the agent's PID namespace (this process is its init): SIGTERM to
/// everything in it, then, after `grace`, SIGKILL (which exiting does too: the kernel kills a
/// namespace whose init is gone). Every orphan in the namespace is this process's child, so
/// the namespace is empty when no child is left.
fn stop_the_namespace(signals: &Signals, grace: Duration) {
    let reap = || {
        let mut st = 0;
        loop {
            // SAFETY: reaping any exited child without blocking; it says whether any is left.
            match unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) } {
                0 => return true,
                n if n > 0 => {}
                _ => return false,
            }
        }
    };
    if !reap() {
        return;
    }
    let left = children(std::process::id()).len();
    eprintln!("relayauth-mount: the command exited; stopping {left} process(es) it left running");
    let deadline = Instant::now() + grace;
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        // SAFETY: -1 is every process this one may signal: in a PID namespace whose init it
        // is, every process of the namespace but itself.
        unsafe { libc::kill(-1, sig) };
        loop {
            if !reap() {
                return;
            }
            let now = Instant::now();
            if sig == libc::SIGTERM && now >= deadline {
                break;
            }
            if sig == libc::SIGKILL {
                // SAFETY: as above; children of killed processes come back to this one.
                unsafe { libc::kill(-1, libc::SIGKILL) };
            }
            let _ = signals.wait(Some(
                deadline
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(20))
                    .min(Duration::from_millis(100)),
            ));
        }
    }
}

/// The signals `run` handles itself, blocked so that they are taken with `sigtimedwait` (the
/// command gets them unblocked again before it is executed).
struct Signals(libc::sigset_t);

const HANDLED: [libc::c_int; 5] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
];

impl Signals {
    fn block() -> Result<Signals, Failure> {
        // SAFETY: building and installing a signal mask for this (single-threaded) process.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in HANDLED {
                libc::sigaddset(&mut set, s);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(Failure::failed(
                    "cannot block signals to pass them to the command",
                ));
            }
            Ok(Signals(set))
        }
    }

    /// Give every handled signal a handler (which never runs while they stay blocked), as the
    /// init of a PID namespace must for signals from outside to reach it at all.
    fn catch(&self) {
        extern "C" fn ignore(_: libc::c_int) {}
        for s in HANDLED {
            // SAFETY: installing a handler that does nothing (async-signal-safe).
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
                libc::sigemptyset(&mut act.sa_mask);
                act.sa_flags = libc::SA_RESTART;
                libc::sigaction(s, &act, std::ptr::null_mut());
            }
        }
    }

    /// The next handled signal, or `None` after `timeout` (or an interruption).
    fn wait(&self, timeout: Option<Duration>) -> Option<libc::c_int> {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        // SAFETY: the set was built in `block`; the timespec, if any, lives across the call.
        let sig = unsafe {
            libc::sigtimedwait(
                &self.0,
                std::ptr::null_mut(),
                ts.as_ref().map_or(std::ptr::null(), |t| t as *const _),
            )
        };
        (sig > 0).then_some(sig)
    }
}
