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
//!
//! - [`startup`]: everything that must hold before the mount is announced.
//! - [`serving`]: the live mount until something stops it, and the one teardown.
//! - [`tasks`]: the background tasks (revocation, refresh, watched files, control socket).
//! - [`control`]: the control socket and its closed set of requests.
//! - [`process`]: the daemon as a process (forking, limits, the mount table, its log).
//! - [`status`]: the start-up summary and `status`.

pub mod control;
pub mod ending;
mod process;
mod register;
mod serving;
mod startup;
mod status;
mod tasks;

pub use process::is_mount_point;
use process::{Reporter, daemon_log, daemonize, init_logging};
use startup::{absolutize, check_paths};
pub(crate) use status::status_json;

pub use crate::failure::{Exit, Failure};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::audit::AuditLog;
use crate::credentials::CredentialSource;
use crate::fs::GuardFs;
use crate::relayauth::{RevocationClient, Strategy};
use crate::session::Callers;
use crate::token::verify::Verifier;

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
    /// A process whose own environment holds `RELAYAUTH_TOKEN` acts under that token.
    pub token_from_env: bool,
    /// Unregistered callers of every uid act under the mount's session.
    pub allow_other_users: bool,
    /// What happens to a registered session's processes when it ends.
    pub on_revoke: ending::OnRevoke,
    /// Kernel passthrough I/O was asked for and this machine offers it (`--io passthrough`).
    pub passthrough: bool,
    pub threads: usize,
    pub foreground: bool,
}

fn fail<T>(exit: Exit, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        exit,
        message: message.into(),
    })
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
    let _log = init_logging();
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
    let result = runtime.block_on(async {
        let started = startup::start(spec, source, mountpoint).await?;
        Ok(serving::serve(started, &mut reporter).await)
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(code) => Ok(code),
        Err(f) => {
            reporter.failed(&f);
            Err(f)
        }
    }
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
    /// Tells the kernel to drop cached entries (when a second session registers).
    pub notifier: fuser::Notifier,
    /// The backing ids of open passthrough files.
    pub backings: Arc<crate::passthrough::Backings>,
}

/// Why the daemon stops.
#[derive(Clone, Debug)]
pub(crate) enum Stop {
    Signal(&'static str),
    Requested,
    SessionEnded(String),
    Unmounted,
}
