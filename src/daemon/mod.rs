//! The `mount` daemon: verify the token, mount the guarded view, keep the session honest, and
//! take the mount down cleanly.
//!
//! Start-up refuses, with a message that names the fix, anything that would leave a mount that
//! cannot enforce: an unusable source or mountpoint, unreadable credentials, a token that does
//! not verify (invalid, expired, another workspace or org), a malformed policy file. Without
//! `--foreground` the process forks before any thread exists, and the parent waits on a pipe
//! until the child reports the mount live (or why it is not), so a failed start is a failed
//! command, never a silent background death.
//!
//! While mounted, background tasks (never the filesystem threads) poll relayauth for
//! revocation, refresh a credentials bundle's token before it expires, pick up a rewritten
//! bundle or policy file, and refresh the JWKS. When the mount's own session ends (revoked,
//! refresh rejected, expired) the daemon unmounts and exits with a clear message. SIGINT,
//! SIGTERM, `relayauth-mount unmount` and an external `umount` all end in the same teardown:
//! lazy unmount, abort the FUSE connection if processes still hold it, flush the audit log.

pub mod control;
mod tasks;

pub use crate::failure::{Exit, Failure};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::audit::{AuditLog, Event, Outcome};
use crate::credentials::CredentialSource;
use crate::fs::mirror::Mirror;
use crate::fs::{GuardFs, Options};
use crate::relayauth::{RevocationClient, Status, Strategy};
use crate::session::{Callers, Session};
use crate::token::jwks::{JwksCache, JwksSource};
use crate::token::verify::{Verifier, VerifierConfig};
use crate::writeback::{Backing, PolicySet};

/// Everything `mount` was asked for.
#[derive(Clone, Debug)]
pub struct MountSpec {
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub workspace: String,
    pub org: Option<String>,
    pub credentials: CredentialSource,
    pub relayauth_url: Option<String>,
    pub api_key: Option<String>,
    pub jwks: Option<String>,
    pub issuer: String,
    pub leeway: Duration,
    pub poll_interval: Duration,
    pub revocation: Strategy,
    pub fail_closed_after: Duration,
    pub max_staleness: Duration,
    pub audit_log: Option<PathBuf>,
    pub writeback_policies: Option<PathBuf>,
    pub local_roots: Vec<String>,
    pub require_registration: bool,
    /// Unregistered callers of every uid act under the mount's session.
    pub allow_other_users: bool,
    pub threads: usize,
    pub foreground: bool,
}

fn fail<T>(exit: Exit, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        exit,
        message: message.into(),
    })
}

/// Raise the soft limit on open files to the hard limit (a mount serves many files at once),
/// and return the limit in force.
fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    let soft = now.current.unwrap_or(u64::MAX);
    // Some kernels cap RLIMIT_NOFILE below an "unlimited" hard limit (fs.nr_open).
    let target = hard.min(1 << 20);
    if soft < target
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: now.maximum,
            },
        )
        .is_ok()
    {
        return target;
    }
    soft
}

/// How many `O_PATH` descriptors the inode table may hold under an open-file limit: a quarter
/// of it, leaving the rest for open files, staging, sockets and the token, between 16 and 16384.
pub fn held_descriptor_budget(limit: u64) -> usize {
    (limit / 4).clamp(crate::fs::inode::MIN_HELD as u64, 16_384) as usize
}

/// Is `path` a mount point (per `/proc/self/mountinfo`)?
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.as_os_str().to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == target)
    })
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Check the source and mountpoint before anything else happens.
pub fn check_paths(spec: &MountSpec) -> Result<(PathBuf, PathBuf), Failure> {
    let source = spec.source.canonicalize().or_else(|e| {
        fail(
            Exit::Usage,
            format!(
                "SOURCE {} is not usable ({e}); give the relayfile mirror directory",
                spec.source.display()
            ),
        )
    })?;
    if !source.is_dir() {
        return fail(
            Exit::Usage,
            format!(
                "SOURCE {} is not a directory; give the relayfile mirror directory",
                source.display()
            ),
        );
    }
    // Resolve the mountpoint completely (it is not mounted yet), so a symlink into the mirror
    // is seen for what it is.
    let mountpoint = spec
        .mountpoint
        .canonicalize()
        .unwrap_or_else(|_| control::canonical_mountpoint(&spec.mountpoint));
    match std::fs::metadata(&mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return fail(
                Exit::Usage,
                format!(
                    "MOUNTPOINT {} is not a directory; create an empty directory to mount on",
                    mountpoint.display()
                ),
            );
        }
        Err(e) => {
            return fail(
                Exit::Usage,
                format!(
                    "MOUNTPOINT {} is not usable ({e}); create an empty directory to mount on",
                    mountpoint.display()
                ),
            );
        }
    }
    if mountpoint.starts_with(&source) {
        return fail(
            Exit::Usage,
            format!(
                "MOUNTPOINT {} is inside SOURCE {}: the guard would see itself; mount somewhere outside the mirror",
                mountpoint.display(),
                source.display()
            ),
        );
    }
    if is_mount_point(&mountpoint) {
        return fail(
            Exit::Usage,
            format!(
                "MOUNTPOINT {} is already a mount point; unmount it first (relayauth-mount unmount {})",
                mountpoint.display(),
                mountpoint.display()
            ),
        );
    }
    if std::fs::read_dir(&mountpoint)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        return fail(
            Exit::Usage,
            format!(
                "MOUNTPOINT {} is not empty; mount on an empty directory so nothing is hidden under the view",
                mountpoint.display()
            ),
        );
    }
    Ok((source, mountpoint))
}

/// Where the daemon tells the starting command how the start went.
struct Reporter {
    pipe: Option<File>,
}

impl Reporter {
    fn ready(&mut self, summary: &str) {
        match self.pipe.take() {
            Some(mut p) => {
                let _ = writeln!(p, "{}", json!({"ok": true, "summary": summary}));
            }
            None => {
                println!("{summary}");
                let _ = std::io::stdout().flush();
            }
        }
    }

    fn failed(&mut self, f: &Failure) {
        if let Some(mut p) = self.pipe.take() {
            let _ = writeln!(
                p,
                "{}",
                json!({"ok": false, "code": f.code(), "error": f.message})
            );
        }
    }
}

/// Fork into the background. In the parent: wait for the child's report, print it and give
/// `Ok(Err(exit code))`. In the child: `Ok(Ok(pipe))`, the pipe to report on.
fn daemonize(log: &Path) -> Result<Result<File, Exit>, Failure> {
    let (read_end, write_end) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(ends) => ends,
        Err(e) => return fail(Exit::No, format!("cannot create a pipe: {e}")),
    };
    // SAFETY: fork(2) before any thread of this process exists (the command line was parsed,
    // nothing else started); the child only continues single-threaded code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return fail(
            Exit::No,
            format!("cannot fork: {}", std::io::Error::last_os_error()),
        );
    }
    if pid > 0 {
        drop(write_end);
        let mut text = String::new();
        let _ = File::from(read_end).read_to_string(&mut text);
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(text.trim()) else {
            eprintln!(
                "relayauth-mount: the daemon stopped before reporting; see its log at {}",
                log.display()
            );
            return Ok(Err(Exit::No));
        };
        if msg["ok"] == true {
            println!("{}", msg["summary"].as_str().unwrap_or(""));
            println!("daemon pid {pid}; log {}", log.display());
            return Ok(Err(Exit::Ok));
        }
        eprintln!(
            "relayauth-mount: {}",
            msg["error"]
                .as_str()
                .unwrap_or("the daemon failed to start")
        );
        return Ok(Err(Exit::from_code(msg["code"].as_i64().unwrap_or(1))));
    }
    drop(read_end);
    // The child: its own session, no terminal, stdio to the log.
    let _ = rustix::process::setsid();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .or_else(|_| std::fs::OpenOptions::new().write(true).open("/dev/null"));
    let null = std::fs::File::open("/dev/null");
    if let (Ok(out), Ok(null)) = (out, null) {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&out);
        let _ = rustix::stdio::dup2_stderr(&out);
    }
    let _ = std::env::set_current_dir("/");
    Ok(Ok(File::from(write_end)))
}

/// The daemon's log file when it runs in the background.
fn daemon_log(mountpoint: &Path) -> PathBuf {
    let base = AuditLog::default_path()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_else(|| PathBuf::from("/tmp/relayauth-mount"));
    let name = control::socket_path(mountpoint);
    let stem = name
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    base.join(format!("daemon-{stem}.log"))
}

/// Run `mount`: returns the process exit code.
/// `p` relative to the current directory made absolute (the daemon changes to `/`).
fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

/// Every path the daemon reads later, made absolute before it forks and leaves the directory.
fn absolutize(mut spec: MountSpec) -> MountSpec {
    spec.credentials = match spec.credentials {
        CredentialSource::JwtFile(p) => CredentialSource::JwtFile(absolute(&p)),
        CredentialSource::Bundle(p) => CredentialSource::Bundle(absolute(&p)),
        other => other,
    };
    spec.audit_log = spec.audit_log.as_deref().map(absolute);
    spec.writeback_policies = spec.writeback_policies.as_deref().map(absolute);
    spec.jwks = spec.jwks.map(|j| match JwksSource::parse(&j) {
        Ok(JwksSource::File(p)) => absolute(&p).display().to_string(),
        _ => j,
    });
    spec
}

pub fn run(spec: MountSpec) -> Result<Exit, Failure> {
    let spec = absolutize(spec);
    let (source, mountpoint) = check_paths(&spec)?;
    let mut reporter = Reporter { pipe: None };
    if !spec.foreground {
        match daemonize(&daemon_log(&mountpoint))? {
            Err(code) => return Ok(code),
            Ok(pipe) => reporter.pipe = Some(pipe),
        }
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("relayauth-mount-bg")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let f = Failure::failed(format!("cannot start the background runtime: {e}"));
            reporter.failed(&f);
            return Err(f);
        }
    };
    let result = runtime.block_on(serve(spec, source, mountpoint, &mut reporter));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(code) => Ok(code),
        Err(f) => {
            reporter.failed(&f);
            Err(f)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAYAUTH_MOUNT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Everything the background tasks share.
pub(crate) struct Shared {
    pub fs: Arc<GuardFs>,
    pub callers: Arc<Callers>,
    pub verifier: Arc<Verifier>,
    pub audit: Arc<AuditLog>,
    pub revocation: Option<Arc<RevocationClient>>,
    pub spec: MountSpec,
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub policy_file: Option<PathBuf>,
    pub started: SystemTime,
}

/// Why the daemon stops.
#[derive(Clone, Debug)]
pub(crate) enum Stop {
    Signal(&'static str),
    Requested,
    SessionEnded(String),
    Unmounted,
}

fn jwks_source(spec: &MountSpec, relayauth: Option<&str>) -> Result<JwksSource, Failure> {
    let text = match (&spec.jwks, relayauth) {
        (Some(j), _) => j.clone(),
        (None, Some(url)) => format!("{}/.well-known/jwks.json", url.trim_end_matches('/')),
        (None, None) => {
            return fail(
                Exit::Usage,
                "no key set to verify the token: give --jwks (URL, file or data:) or --relayauth-url",
            );
        }
    };
    JwksSource::parse(&text).or_else(|e| fail(Exit::Usage, format!("--jwks {text:?}: {e}")))
}

fn summary(shared: &Shared, session: &Session, policies: &PolicySet, revocation: &str) -> String {
    let g = session.grants();
    let a = &g.actor();
    let mut s = format!(
        "relayauth-mount: {} is mounted at {} (strict I/O: every read and write is checked)\n",
        shared.source.display(),
        shared.mountpoint.display()
    );
    let left = g
        .expires_at()
        .duration_since(SystemTime::now())
        .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
        .unwrap_or_else(|_| "now".to_owned());
    s.push_str(&format!(
        "  agent {} for sponsor {} (chain {}), org {}, workspace {}\n",
        a.identity_id,
        a.sponsor_id,
        a.sponsor_chain.join(" -> "),
        a.org_id,
        a.workspace_id
    ));
    s.push_str(&format!(
        "  token {}, session {}, expires {} (in {left})\n",
        a.token_id,
        a.session_id,
        crate::token::time::format_rfc3339(g.expires_at())
    ));
    s.push_str("  scopes:\n");
    for scope in g.scopes().scopes() {
        match (scope.problem(), scope.mounts_at()) {
            (None, Some(at)) => s.push_str(&format!("    {}  (mounts at {at})\n", scope.raw)),
            (None, None) => s.push_str(&format!("    {}\n", scope.raw)),
            (Some(p), _) => {
                let kind = if p.is_invalid() {
                    "INVALID, grants nothing"
                } else {
                    "grants nothing"
                };
                s.push_str(&format!("    {}  ({kind}: {p})\n", scope.raw));
            }
        }
    }
    let bad: Vec<_> = g.scopes().problems().collect();
    if !bad.is_empty() {
        s.push_str(&format!(
            "  warning: {} scope(s) grant nothing (listed above, in every _PERMISSIONS.md and in the audit log)\n",
            bad.len()
        ));
    }
    let owner = shared.callers.owner();
    if shared.spec.allow_other_users {
        s.push_str(
            "  WARNING: --allow-other-users: every local user acts under this mount's token \
             (limited by the mirror's permission bits); only registered sessions should need it\n",
        );
    } else {
        s.push_str(&format!(
            "  local users: only uid {owner} (the user running the mount) may use it; other users see nothing\n"
        ));
    }
    s.push_str(&format!("  revocation: {revocation}\n"));
    s.push_str(&format!(
        "  writeback policies: {}{}\n",
        policies.policies().len(),
        shared
            .policy_file
            .as_ref()
            .map(|p| format!(" from {}", p.display()))
            .unwrap_or_else(|| " (none: writes to provider paths are refused)".to_owned())
    ));
    s.push_str(&format!("  audit log: {}", shared.audit.path().display()));
    s
}

async fn serve(
    spec: MountSpec,
    source: PathBuf,
    mountpoint: PathBuf,
    reporter: &mut Reporter,
) -> Result<Exit, Failure> {
    let open_files = raise_open_file_limit();
    let creds = spec
        .credentials
        .read()
        .or_else(|e| fail(Exit::Usage, format!("cannot read the token ({e})")))?;
    let relayauth_url = spec.relayauth_url.clone().or_else(|| {
        creds
            .bundle
            .as_ref()
            .and_then(|b| b.relayauth_url().map(str::to_owned))
    });
    let keys = JwksCache::load(jwks_source(&spec, relayauth_url.as_deref())?)
        .await
        .or_else(|e| fail(Exit::No, format!("cannot load the key set: {e}")))?;
    let verifier = Arc::new(Verifier::new(
        VerifierConfig {
            issuer: spec.issuer.clone(),
            workspace: spec.workspace.clone(),
            org: spec.org.clone(),
            leeway: spec.leeway,
        },
        Arc::new(keys),
    ));
    // The key set was fetched just now: verifying against it needs no second fetch.
    let token = verifier
        .verify(&creds.access_token, SystemTime::now())
        .or_else(|e| {
            fail(
                Exit::No,
                format!(
                    "the token was refused ({}): {}; the mount was not started",
                    e.code.as_str(),
                    e.message
                ),
            )
        })?;
    let session = Arc::new(Session::from_token(&token));

    let policy_file = match &spec.writeback_policies {
        Some(p) => Some(p.clone()),
        None => {
            let default = source.join(".relay/writeback-policies.json");
            default.is_file().then_some(default)
        }
    };
    let (policies, policy_digest) = match &policy_file {
        Some(p) => match PolicySet::load_versioned(p) {
            Ok((set, digest)) => (set, Some(digest)),
            Err((e, _)) => {
                return fail(
                    Exit::No,
                    format!("{e}; fix the file or point --writeback-policies at a good one"),
                );
            }
        },
        None => (PolicySet::default(), None),
    };

    let audit_path = match spec.audit_log.clone().or_else(AuditLog::default_path) {
        Some(p) => p,
        None => {
            return fail(
                Exit::Usage,
                "no place for the audit log: give --audit-log FILE (HOME is not set)",
            );
        }
    };
    let audit = Arc::new(AuditLog::open(&audit_path).or_else(|e| {
        fail(
            Exit::No,
            format!("cannot open the audit log {}: {e}", audit_path.display()),
        )
    })?);
    let g = session.grants();
    let invalid: Vec<serde_json::Value> = g
        .scopes()
        .problems()
        .map(|(s, p)| json!({"scope": &*s.raw, "code": p.code(), "reason": p.reason()}))
        .collect();
    audit.record(
        Event::new("token.validated", Outcome::Allowed, g.actor(), "mount")
            .reason("the mount's token verified")
            .meta("scopes", g.scopes().raw().collect::<Vec<_>>())
            .meta("invalidScopes", invalid)
            .meta("mountpoint", mountpoint.display().to_string()),
    );

    let revocation = match &relayauth_url {
        Some(url) => Some(Arc::new(
            RevocationClient::new(
                url,
                spec.api_key.clone(),
                spec.revocation,
                Duration::from_secs(5),
            )
            .or_else(|e| fail(Exit::Usage, e))?,
        )),
        None => None,
    };
    let revocation_note = match &revocation {
        Some(client) => match client.check(g.raw(), &g.actor().token_id).await {
            Ok(Status::Alive) => {
                session.confirm();
                format!(
                    "checked with {} every {}s ({})",
                    relayauth_url.as_deref().unwrap_or(""),
                    spec.poll_interval.as_secs_f32(),
                    client.strategy().name()
                )
            }
            Ok(Status::Revoked(why)) => {
                return fail(
                    Exit::No,
                    format!("the token is revoked at relayauth ({why}); the mount was not started"),
                );
            }
            Err(e) => format!(
                "relayauth did not answer yet ({e}); writebacks stay refused until it does, and everything after {}s",
                spec.max_staleness.as_secs()
            ),
        },
        None => format!(
            "no relayauth URL (give --relayauth-url): revocation cannot be checked, so writebacks are refused and \
             everything is refused after {}s",
            spec.max_staleness.as_secs()
        ),
    };

    let watch = tasks::watch_setup(
        spec.credentials.path().map(Path::to_owned),
        policy_file.clone(),
        policy_digest,
    );
    let callers = Arc::new(
        Callers::new(session.clone(), spec.require_registration)
            .allow_other_users(spec.allow_other_users),
    );
    let mirror = Mirror::open(&source).or_else(|e| {
        fail(
            Exit::No,
            format!("cannot open SOURCE {}: {e}", source.display()),
        )
    })?;
    let options = Options {
        backing: Backing {
            local_roots: spec.local_roots.clone(),
        },
        fail_closed_after: spec.fail_closed_after,
        max_staleness: spec.max_staleness,
        max_held_fds: held_descriptor_budget(open_files),
        ..Options::default()
    };
    let fs = Arc::new(
        GuardFs::new(
            mirror,
            callers.clone(),
            policies.clone(),
            Some(audit.clone()),
            options,
        )
        .or_else(|e| {
            fail(
                Exit::No,
                format!(
                    "cannot prepare the guarded view of {}: {e}",
                    source.display()
                ),
            )
        })?,
    );
    let cfg = crate::fuse::MountConfig {
        threads: spec.threads,
        source_name: source.display().to_string(),
        other_users: spec.allow_other_users,
    };
    let (bg, mut ended) = crate::fuse::mount(fs.clone(), &mountpoint, &cfg).or_else(|e| {
        fail(
            Exit::No,
            format!(
                "cannot mount at {}: {e} (is FUSE available: /dev/fuse and fusermount3 from the fuse3 package?)",
                mountpoint.display()
            ),
        )
    })?;
    let shared = Arc::new(Shared {
        fs,
        callers,
        verifier,
        audit: audit.clone(),
        revocation,
        spec: spec.clone(),
        source: source.clone(),
        mountpoint: mountpoint.clone(),
        policy_file,
        started: SystemTime::now(),
    });
    let conn = tasks::connection_of(&mountpoint);
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<Stop>(8);
    let listener = match tasks::bind_control(&mountpoint) {
        Ok(l) => l,
        Err(e) => {
            tasks::teardown(bg, ended, &mountpoint, conn).await;
            return fail(Exit::No, format!("cannot create the control socket: {e}"));
        }
    };
    reporter.ready(&summary(&shared, &session, &policies, &revocation_note));
    let handles = tasks::spawn_all(shared.clone(), listener, watch, stop_tx.clone());

    let stop = tokio::select! {
        Some(stop) = stop_rx.recv() => stop,
        () = ended.wait() => Stop::Unmounted,
    };
    for h in handles {
        h.abort();
    }
    let _ = std::fs::remove_file(control::socket_path(&mountpoint));
    tasks::teardown(bg, ended, &mountpoint, conn).await;
    let (code, reason) = match &stop {
        Stop::Signal(name) => (Exit::Ok, format!("stopped by {name}")),
        Stop::Requested => (Exit::Ok, "unmount requested".to_owned()),
        Stop::Unmounted => (Exit::Ok, "unmounted from outside".to_owned()),
        Stop::SessionEnded(why) => (
            Exit::SessionEnded,
            format!("the mount's session ended: {why}"),
        ),
    };
    let g = session.grants();
    audit.record(
        Event::new("mount.unmounted", Outcome::Allowed, g.actor(), "unmount")
            .reason(reason.clone())
            .meta("mountpoint", mountpoint.display().to_string())
            .meta(
                "allowed",
                shared
                    .fs
                    .stats()
                    .allowed
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
            .meta(
                "denied",
                shared
                    .fs
                    .stats()
                    .denied
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
    );
    if let Err(e) = audit.close() {
        eprintln!("relayauth-mount: the audit log could not be written completely: {e}");
    }
    if code != Exit::Ok {
        eprintln!(
            "relayauth-mount: {reason}; {} was unmounted",
            mountpoint.display()
        );
    }
    Ok(code)
}

/// The JSON of `status`.
pub(crate) fn status_json(shared: &Shared) -> serde_json::Value {
    let now = SystemTime::now();
    let sessions: Vec<serde_json::Value> = shared
        .callers
        .sessions()
        .iter()
        .map(|s| {
            let g = s.grants();
            let state = s.state(now);
            json!({
                "agent": g.actor().identity_id,
                "sponsor": g.actor().sponsor_id,
                "sponsor_chain": g.actor().sponsor_chain,
                "org": g.actor().org_id,
                "workspace": g.actor().workspace_id,
                "token_id": g.actor().token_id,
                "session_id": g.actor().session_id,
                "expires_at": crate::token::time::format_rfc3339(g.expires_at()),
                "expires_in_secs": g.expires_at().duration_since(now).map(|d| d.as_secs()).unwrap_or(0),
                "state": state.name(),
                "state_detail": state.describe(),
                "confirmed_secs_ago": s.since_confirmed().map(|d| d.as_secs()),
            })
        })
        .collect();
    let stats = shared.fs.stats();
    json!({
        "ok": true,
        "mountpoint": shared.mountpoint.display().to_string(),
        "source": shared.source.display().to_string(),
        "pid": std::process::id(),
        "io": "strict",
        "session": sessions.first(),
        "sessions": sessions,
        "allowed": stats.allowed.load(std::sync::atomic::Ordering::Relaxed),
        "denied": stats.denied.load(std::sync::atomic::Ordering::Relaxed),
        "audit_log": shared.audit.path().display().to_string(),
        "audit_events_written": shared.audit.written(),
        "revocation": shared.revocation.as_ref().map(|r| r.strategy().name()),
        "writeback_policies": shared.fs.policies().policies().len(),
        "mounted_secs": now.duration_since(shared.started).map(|d| d.as_secs()).unwrap_or(0),
    })
}
