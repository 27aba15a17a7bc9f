//! Start-up: everything that must hold before a mount is announced (paths, token, key set,
//! policies, audit log, relayauth's first answer, the kernel mount, the control socket), each
//! refusal naming the fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::net::UnixListener;
use tokio::sync::mpsc::{Receiver, Sender};

use super::process::{held_descriptor_budget, is_mount_point, raise_open_file_limit};
use super::tasks::{self, FileWatch};
use super::{Exit, Failure, MountSpec, Shared, Stop, control, fail};
use crate::audit::{AuditLog, Event, Outcome};
use crate::credentials::CredentialSource;
use crate::fs::mirror::Mirror;
use crate::fs::{GuardFs, Options};
use crate::relayauth::{RevocationClient, Status};
use crate::session::{Callers, Session};
use crate::token::jwks::{JwksCache, JwksSource};
use crate::token::verify::{Verifier, VerifierConfig};
use crate::writeback::{PolicySet, ProviderAreas};

/// A mount that is up and not yet announced.
pub(super) struct Started {
    pub shared: Arc<Shared>,
    pub session: Arc<Session>,
    pub policies: PolicySet,
    pub revocation_note: String,
    pub watch: Option<FileWatch>,
    pub bg: fuser::BackgroundSession,
    pub ended: crate::fuse::Ended,
    pub conn: Option<u64>,
    pub listener: UnixListener,
    pub stop_tx: Sender<Stop>,
    pub stop_rx: Receiver<Stop>,
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

/// Run `mount`: returns the process exit code.
/// `p` relative to the current directory made absolute (the daemon changes to `/`).
pub(super) fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

/// Every path the daemon reads later, made absolute before it forks and leaves the directory.
pub(super) fn absolutize(mut spec: MountSpec) -> MountSpec {
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

pub(super) fn jwks_source(
    spec: &MountSpec,
    relayauth: Option<&str>,
) -> Result<JwksSource, Failure> {
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

/// Verify the token, load the policies, open the audit log, ask relayauth, mount, and bind the
/// control socket: everything that must work before the mount is announced. A failure names
/// the fix; nothing is left mounted.
pub(super) async fn start(
    spec: MountSpec,
    source: PathBuf,
    mountpoint: PathBuf,
) -> Result<Started, Failure> {
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
                    format!(
                        "relayauth does not accept the token ({why}); the mount was not started. \
                         Mount with a new token (ask its sponsor, or mint one from the issuer)"
                    ),
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
            .allow_other_users(spec.allow_other_users)
            .token_from_env(spec.token_from_env),
    );
    let mirror = Mirror::open(&source).or_else(|e| {
        fail(
            Exit::No,
            format!("cannot open SOURCE {}: {e}", source.display()),
        )
    })?;
    let options = Options {
        backing: ProviderAreas {
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
        passthrough: spec.passthrough,
    };
    let crate::fuse::Mounted {
        bg,
        ended,
        notifier,
        backings,
    } = crate::fuse::mount(fs.clone(), &mountpoint, &cfg).or_else(|e| {
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
        notifier,
        backings,
    });
    shared
        .callers
        .set_env_admission(super::register::env_admission(
            Arc::downgrade(&shared),
            tokio::runtime::Handle::current(),
        ));
    let conn = tasks::connection_of(&mountpoint);
    let (stop_tx, stop_rx) = tokio::sync::mpsc::channel::<Stop>(8);
    let listener = match tasks::bind_control(&mountpoint) {
        Ok(l) => l,
        Err(e) => {
            tasks::teardown(bg, ended, &mountpoint, conn).await;
            return fail(Exit::No, format!("cannot create the control socket: {e}"));
        }
    };
    Ok(Started {
        shared,
        session,
        policies,
        revocation_note,
        watch,
        bg,
        ended,
        conn,
        listener,
        stop_tx,
        stop_rx,
    })
}
