//! Registration of a session on the control socket (DESIGN section 6): `relayauth-mount run`
//! asks the daemon to make its own process, and so every descendant, act under a token;
//! `relayauth-mount delegate` asks it to obtain a child token of the session the caller acts
//! under (never wider: an escalation is refused before relayauth is asked) and do the same.
//!
//! The daemon, not the client, decides: it verifies the token with the mount's verifier, asks
//! relayauth that it is not revoked, and refuses a token of another org or workspace, one that
//! claims a parent it is not within, and one wider than the session the registering process
//! already acts under (a sub-agent may narrow itself, never widen). The process registered is
//! always the socket's peer, named by the kernel (`SO_PEERCRED`), pinned by a pidfd taken
//! when it connected (`SO_PEERPIDFD`) so that a pid reused between the connect and the
//! registration can never be given the session. Every registration and refusal is audited
//! with the sponsor chain. Once a second session exists, the kernel's caches are emptied so
//! nothing one session looked up answers for another.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::Shared;
use crate::audit::{Event, Outcome};
use crate::relayauth::Status;
use crate::session::Session;
use crate::session::callers::ProcessKey;
use crate::session::known::alive;

/// Who is on the other end of a control connection, as the kernel says.
#[derive(Debug)]
pub(crate) struct Peer {
    pub uid: u32,
    pub pid: Option<u32>,
    /// A pidfd for the peer process taken by the kernel at connect time, when it can.
    pub pidfd: Option<OwnedFd>,
}

/// `SO_PEERPIDFD` (Linux 6.5): not in every libc yet.
const SO_PEERPIDFD: libc::c_int = 77;

/// The peer's pidfd, from the socket `fd`; `None` on kernels without `SO_PEERPIDFD`.
pub(crate) fn peer_pidfd(fd: RawFd) -> Option<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a socket descriptor the caller holds open for the duration of the call;
    // the output buffer is a c_int with its length given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel created a new descriptor that nothing else owns.
    (rc == 0 && pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// Where the process on the other end of a control connection stands.
pub(crate) enum PeerStanding {
    /// Outside every registered tree: the user's own process (or root's), which controls the
    /// mount.
    Controller,
    /// Inside a registered session's tree (ended or not).
    SubAgent(Arc<Session>),
    /// Not named by the kernel, no longer running (a socket another process connected names
    /// that process, whose pid may be someone else's by now), refused a token, or its
    /// ancestry could not be read.
    Unknown,
}

/// Where the peer stands (see [`PeerStanding`]).
pub(crate) fn peer_standing(shared: &Shared, peer: &Peer) -> PeerStanding {
    let Some(pid) = peer.pid else {
        return PeerStanding::Unknown;
    };
    let pidfd = match &peer.pidfd {
        Some(fd) => fd.try_clone().ok(),
        None => rustix::process::Pid::from_raw(pid as i32).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        }),
    };
    let Some(pidfd) = pidfd else {
        return PeerStanding::Unknown;
    };
    let standing = if shared.callers.outside_every_session(pid) {
        PeerStanding::Controller
    } else {
        match shared.callers.resolve_known(pid, peer.uid) {
            Some(s) if !Arc::ptr_eq(&s, shared.callers.mount_session()) => {
                PeerStanding::SubAgent(s)
            }
            _ => PeerStanding::Unknown,
        }
    };
    // Still the process that connected after looking: its pid was not reused meanwhile.
    if alive(&pidfd) {
        standing
    } else {
        PeerStanding::Unknown
    }
}

/// A refusal: audited, logged and answered with the reason (which names the fix).
fn refuse(shared: &Shared, pid: Option<u32>, action: &str, why: String) -> Value {
    tracing::warn!("registration refused: {why}");
    let mount = shared.callers.mount_session().grants();
    let mut ev = Event::new(action, Outcome::Denied, mount.actor(), "register").reason(why.clone());
    if let Some(pid) = pid {
        ev = ev.pid(pid);
    }
    shared.audit.record(ev);
    super::control::error(why)
}

/// Why a passthrough mount registers no sub-agent. The kernel reads and writes a passthrough
/// file without asking the daemon, so nothing could cut off a sub-agent's open files when it is
/// revoked, narrowed or its file moved; and while one passthrough open of a file lasts, the
/// kernel refuses (EIO) every open of it that is not passthrough, as a sub-agent's would be.
pub(crate) const PASSTHROUGH_SERVES_ONE_SESSION: &str = "this mount uses --io passthrough, which \
    serves only the mount's own session: a sub-agent's open files could not be cut off when it \
    is revoked; mount with --io strict to run sub-agents";

/// The registering process, checked: the peer itself, still running, with its start time.
struct Registrant {
    pid: u32,
    uid: u32,
    key: ProcessKey,
}

/// Check that the peer is the process the request names and pin its identity.
fn registrant(shared: &Shared, peer: Peer, claimed: u32) -> Result<Registrant, Value> {
    if shared.fs.passthrough() {
        return Err(refuse(
            shared,
            peer.pid,
            "session.registered",
            PASSTHROUGH_SERVES_ONE_SESSION.to_owned(),
        ));
    }
    let Some(pid) = peer.pid else {
        return Err(refuse(
            shared,
            None,
            "session.registered",
            "the kernel did not name the process on the control socket".to_owned(),
        ));
    };
    if claimed != pid && !crate::session::callers::namespace_pids(pid).contains(&claimed) {
        return Err(refuse(
            shared,
            Some(pid),
            "session.registered",
            format!(
                "a process may register only itself: the request names pid {claimed} but comes \
                 from pid {pid}; run the agent through `relayauth-mount run`"
            ),
        ));
    }
    let gone = || {
        refuse(
            shared,
            Some(pid),
            "session.registered",
            format!("process {pid} exited while registering"),
        )
    };
    let key = ProcessKey::of(pid).ok_or_else(gone)?;
    // The start time just read is the connecting process's only if it is still running now
    // (a pid is not reused while its process lives).
    let pidfd = match peer.pidfd {
        Some(fd) => Some(fd),
        None => rustix::process::Pid::from_raw(pid as i32).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        }),
    };
    if !pidfd.as_ref().is_some_and(alive) {
        return Err(gone());
    }
    Ok(Registrant {
        pid,
        uid: peer.uid,
        key,
    })
}

/// Register the peer process under `raw` (see the module documentation).
pub(crate) async fn register(shared: &Arc<Shared>, peer: Peer, raw: &str, claimed: u32) -> Value {
    let who = match registrant(shared, peer, claimed) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    match verified(shared, who.pid, raw.trim(), "the token").await {
        Ok(token) => answer(shared, admit(shared, &who, token, "run").await),
        Err(answer) => answer,
    }
}

/// Replace the token of the session the peer registered with a refreshed token of the same
/// relayauth session (`run --credentials` rotates its bundle and sends the new access token).
/// Only the session's root process may, and only while the session is active; the new token
/// must verify, be of the same identity, org, workspace, relayauth session and parent, hold
/// nothing beyond the current token's scopes, and not be revoked.
pub(crate) async fn renew(shared: &Arc<Shared>, peer: Peer, raw: &str, claimed: u32) -> Value {
    let who = match registrant(shared, peer, claimed) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let Some(session) = shared.callers.registered_at(who.key) else {
        return refuse(
            shared,
            Some(who.pid),
            "token.refreshed",
            format!(
                "process {} registered no session of this mount: only the process that \
                 registered a session (its relayauth-mount run) may renew its token",
                who.pid
            ),
        );
    };
    let current = session.grants();
    let refused = |why: String| {
        tracing::warn!("renewal refused: {why}");
        shared.audit.record(
            Event::new("token.refreshed", Outcome::Denied, current.actor(), "renew")
                .pid(who.pid)
                .reason(why.clone()),
        );
        super::control::error(why)
    };
    let now = SystemTime::now();
    if !session.is_active(now) {
        return refused(format!(
            "the session is {}; a new token does not bring it back",
            session.state(now).describe()
        ));
    }
    // The token being replaced must still be alive: a revocation of it that the poller has not
    // seen yet must not be carried past by its successor.
    if let Some(client) = &shared.revocation {
        match client.check(current.raw(), &current.actor().token_id).await {
            Ok(Status::Alive) => {}
            Ok(Status::Revoked(r)) => {
                if session.revoke(&r) {
                    shared.audit.record(
                        Event::new("token.revoked", Outcome::Denied, current.actor(), "renew")
                            .pid(who.pid)
                            .reason(r.clone()),
                    );
                    super::ending::end_children(shared, &session);
                }
                return refused(format!(
                    "relayauth says the session's current token is revoked ({r}); a revoked \
                     session is not renewed"
                ));
            }
            Err(e) => {
                return refused(format!(
                    "relayauth could not confirm the session's current token is not revoked \
                     ({e}); try again when relayauth answers"
                ));
            }
        }
    }
    let token = match verified(shared, who.pid, raw.trim(), "the refreshed token").await {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    let a = current.actor();
    let differs = |checks: &[(&str, &str, &str)]| {
        checks.iter().find(|(_, new, old)| new != old).map(|(what, new, old)| {
            format!(
                "the refreshed token's {what} is {new}, not the session's {old}; a renewal only \
                 replaces a token by a refreshed one of the same session (start another run for \
                 another token)"
            )
        })
    };
    if let Some(why) = differs(&[
        ("identity", token.subject(), &a.identity_id),
        ("org", token.org(), &a.org_id),
        ("workspace", token.workspace(), &a.workspace_id),
    ]) {
        return refused(why);
    }
    let wider = crate::scope::within(token.scopes().raw(), current.scopes().raw()).refused();
    if !wider.is_empty() {
        let why = format!(
            "the refreshed token holds {} beyond the session's scopes; a renewal never widens a \
             session",
            wider.join(", ")
        );
        escalation(
            shared,
            who.pid,
            &current,
            &why,
            &wider,
            token.subject(),
            "renew",
        );
        return super::control::error(why);
    }
    if let Some(why) = differs(&[
        ("relayauth session", token.session_id(), &a.session_id),
        (
            "parent token",
            token.parent_token_id().unwrap_or("none"),
            current.parent_token_id().unwrap_or("none"),
        ),
    ]) {
        return refused(why);
    }
    let confirmed = match &shared.revocation {
        None => false,
        Some(client) => match client.check(token.raw(), token.token_id()).await {
            Ok(Status::Alive) => true,
            Ok(Status::Revoked(r)) => {
                return refused(format!(
                    "relayauth says the refreshed token is revoked ({r})"
                ));
            }
            Err(e) => {
                return refused(format!(
                    "relayauth could not confirm the refreshed token is not revoked ({e}); the \
                     current token stays until it expires; try again when relayauth answers"
                ));
            }
        },
    };
    if !session.replace_token(&token) {
        return refused("the session ended while the token was checked".to_owned());
    }
    if confirmed {
        session.confirm();
    }
    let g = session.grants();
    shared.audit.record(
        Event::new("token.refreshed", Outcome::Allowed, g.actor(), "renew")
            .pid(who.pid)
            .reason("the session's root process renewed its token")
            .meta("previousTokenId", a.token_id.clone())
            .meta("via", "run"),
    );
    tracing::info!(pid = who.pid, agent = %g.actor().identity_id, "renewed a session's token");
    answer(shared, Ok(session))
}

/// How long a FUSE request waits for the admission of the token in its process's environment
/// (verification, relayauth's revocation answer) before the process is refused.
const ENV_ADMISSION_TIMEOUT: Duration = Duration::from_secs(10);

/// `--token-from-env`: what admits the `RELAYAUTH_TOKEN` found in a caller's environment, as
/// if the process had registered itself with `run` (the same checks, audited). It is called
/// from a FUSE worker thread (never from the daemon's runtime, where it refuses) and waits for
/// the admission on `runtime`.
pub(crate) fn env_admission(
    shared: std::sync::Weak<Shared>,
    runtime: tokio::runtime::Handle,
) -> Arc<crate::session::callers::EnvAdmission> {
    Arc::new(move |key: ProcessKey, uid: u32, raw: &str| {
        let shared = shared.upgrade()?;
        if tokio::runtime::Handle::try_current().is_ok() {
            tracing::error!(
                pid = key.pid,
                "an environment token cannot be admitted from the daemon's own tasks"
            );
            return None;
        }
        let who = Registrant {
            pid: key.pid,
            uid,
            key,
        };
        let what = format!("the token in {}", crate::session::callers::TOKEN_VARIABLE);
        // A token already admitted for another process: this one joins that session (after
        // the same containment checks, none of which needs the network).
        let raw_trimmed = raw.trim();
        if let Some(existing) = shared
            .callers
            .sessions()
            .into_iter()
            .skip(1)
            .find(|s| &**s.grants().raw() == raw_trimmed && s.is_active(SystemTime::now()))
        {
            return join(&shared, &who, existing).ok();
        }
        runtime.block_on(async {
            let admitted = async {
                let token = verified(&shared, key.pid, raw.trim(), &what).await.ok()?;
                admit(&shared, &who, token, "environment").await.ok()
            };
            match tokio::time::timeout(ENV_ADMISSION_TIMEOUT, admitted).await {
                Ok(s) => s,
                Err(_) => {
                    refuse(
                        &shared,
                        Some(key.pid),
                        "session.registered",
                        format!(
                            "{what} could not be admitted within {}s (is relayauth answering?)",
                            ENV_ADMISSION_TIMEOUT.as_secs()
                        ),
                    );
                    None
                }
            }
        })
    })
}

/// `raw` verified with the mount's verifier, or the refusal (audited) naming `what` was refused.
async fn verified(
    shared: &Shared,
    pid: u32,
    raw: &str,
    what: &str,
) -> Result<crate::token::VerifiedToken, Value> {
    shared.verifier.verify_fresh(raw).await.map_err(|e| {
        refuse(
            shared,
            Some(pid),
            "token.validated",
            format!("{what} was refused: {e}"),
        )
    })
}

/// What a `delegate` request asks for.
pub(crate) struct Delegation<'a> {
    pub agent: &'a str,
    pub scopes: &'a [String],
    pub ttl: Option<Duration>,
}

/// Obtain a child token of the session the peer acts under and register the peer under it.
pub(crate) async fn delegate(
    shared: &Arc<Shared>,
    peer: Peer,
    want: Delegation<'_>,
    claimed: u32,
) -> Value {
    let who = match registrant(shared, peer, claimed) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let Some(parent) = shared.callers.resolve_known(who.pid, who.uid) else {
        return refuse(
            shared,
            Some(who.pid),
            "session.registered",
            format!(
                "process {} acts under no session of this mount, so it has nothing to delegate",
                who.pid
            ),
        );
    };
    let g = parent.grants();
    if !parent.is_active(SystemTime::now()) {
        return refuse(
            shared,
            Some(who.pid),
            "session.registered",
            format!(
                "the session this process acts under is {}; it cannot delegate",
                parent.state(SystemTime::now()).describe()
            ),
        );
    }
    // Containment first: an escalation fails at once, named, audited.
    let check = crate::scope::within(want.scopes, g.scopes().raw());
    let refused = check.refused();
    if want.scopes.is_empty() || !refused.is_empty() {
        let why = if want.scopes.is_empty() {
            "no scope was asked for; name the scopes the sub-agent needs with --scope".to_owned()
        } else {
            format!(
                "{} not within the delegating session's scopes ({}); a sub-agent gets only \
                 scopes within its parent's",
                refused.join(", "),
                g.scopes().raw().collect::<Vec<_>>().join(" ")
            )
        };
        escalation(shared, who.pid, &g, &why, &refused, want.agent, "delegate");
        return super::control::error(why);
    }
    let Some(url) = shared.spec.relayauth_url.as_deref() else {
        return refuse(
            shared,
            Some(who.pid),
            "session.registered",
            "delegation needs relayauth: mount with --relayauth-url".to_owned(),
        );
    };
    use crate::relayauth::delegate::{DelegateError, delegate};
    let raw = match delegate(url, g.raw(), want.agent, want.scopes, want.ttl).await {
        Ok(raw) => raw,
        Err(DelegateError::Escalation { message, offending }) => {
            let why = format!("relayauth refused the scopes: {message}");
            escalation(
                shared, who.pid, &g, &why, &offending, want.agent, "delegate",
            );
            return super::control::error(why);
        }
        Err(e) => return refuse(shared, Some(who.pid), "session.registered", e.to_string()),
    };
    let token = match verified(shared, who.pid, &raw, "the child token relayauth issued").await {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    if token.expires_at() > g.expires_at() || token.parent_token_id() != Some(&g.actor().token_id) {
        return refuse(
            shared,
            Some(who.pid),
            "token.validated",
            "the child token relayauth issued outlives its parent or names another parent"
                .to_owned(),
        );
    }
    answer(shared, admit(shared, &who, token, "delegate").await)
}

/// Audit a refused widening (`operation`: `register` or `delegate`), under the session that
/// would have been widened.
fn escalation(
    shared: &Shared,
    pid: u32,
    parent: &crate::session::Grants,
    why: &str,
    offending: &[String],
    agent: &str,
    operation: &str,
) {
    tracing::warn!("{operation} refused: {why}");
    shared.audit.record(
        Event::new(
            "scope.escalation_denied",
            Outcome::Denied,
            parent.actor(),
            operation,
        )
        .pid(pid)
        .reason(why)
        .meta("offending", offending.join(" "))
        .meta("agentName", agent),
    );
}

/// Register `who` under `session`, which another process of the mount already holds with the
/// same token, when it is not wider than what `who` acts under now.
fn join(
    shared: &Arc<Shared>,
    who: &Registrant,
    session: Arc<Session>,
) -> Result<Arc<Session>, Value> {
    let g = session.grants();
    within_bounds(
        shared,
        who,
        g.scopes(),
        g.parent_token_id(),
        &g.actor().identity_id,
    )?;
    register_root(
        shared,
        who,
        &session,
        ("environment", true),
        format!(
            "process {} and its descendants act under this token (a session another process \
             holds with the same token)",
            who.pid
        ),
    )?;
    Ok(session)
}

/// Refuse to register `who` under scopes `scopes` (of a token for `subject` claiming the
/// parent `parent`) when its current session has ended (it lost everything: it cannot start
/// over under another token), or when they are wider than that session or than the claimed
/// parent, when that parent is a session of this mount.
fn within_bounds(
    shared: &Shared,
    who: &Registrant,
    scopes: &crate::scope::ScopeSet,
    parent: Option<&str>,
    subject: &str,
) -> Result<(), Value> {
    let pid = who.pid;
    let current = shared.callers.resolve_known(pid, who.uid);
    if let Some(c) = &current
        && !c.is_active(SystemTime::now())
    {
        return Err(refuse(
            shared,
            Some(pid),
            "session.registered",
            format!(
                "process {pid} acts under a session that is {}; it cannot register another token",
                c.state(SystemTime::now()).describe()
            ),
        ));
    }
    let mut bounds: Vec<(String, Arc<Session>)> = Vec::new();
    if let Some(c) = current.filter(|c| !Arc::ptr_eq(c, shared.callers.mount_session())) {
        bounds.push(("the session this process acts under".to_owned(), c));
    }
    if let Some(parent) = parent
        && let Some(p) = shared
            .callers
            .sessions()
            .into_iter()
            .find(|s| s.holds_token(parent))
    {
        bounds.push((format!("its parent token {parent}"), p));
    }
    for (what, bound) in &bounds {
        let g = bound.grants();
        let refused = crate::scope::within(scopes.raw(), g.scopes().raw()).refused();
        if !refused.is_empty() {
            let why = format!(
                "the token holds {} beyond {what}; a sub-agent's token may only narrow its \
                 parent's scopes",
                refused.join(", ")
            );
            escalation(shared, pid, &g, &why, &refused, subject, "register");
            return Err(super::control::error(why));
        }
    }
    Ok(())
}

/// Make `who` the root of `session` (unless it exited meanwhile) and audit it; `via` says how
/// the token came, `joined` whether the session existed already, `reason` what happened.
fn register_root(
    shared: &Shared,
    who: &Registrant,
    session: &Arc<Session>,
    (via, joined): (&str, bool),
    reason: String,
) -> Result<(), Value> {
    let pid = who.pid;
    if !ProcessKey::of(pid).is_some_and(|now| now == who.key) {
        return Err(refuse(
            shared,
            Some(pid),
            "session.registered",
            format!("process {pid} exited while registering"),
        ));
    }
    shared.callers.register(who.key, session.clone());
    let g = session.grants();
    shared.audit.record(
        Event::new(
            "session.registered",
            Outcome::Allowed,
            g.actor(),
            "register",
        )
        .pid(pid)
        .reason(reason)
        .meta("rootPid", pid)
        .meta("via", via)
        .meta("joined", joined)
        .meta("scopes", g.scopes().raw().collect::<Vec<_>>().join(" ")),
    );
    tracing::info!(pid, agent = %g.actor().identity_id, via, "registered a session");
    Ok(())
}

/// Register `who` under the verified `token`: same org and workspace, never wider than the
/// session it acts under now nor than the parent the token claims, confirmed by relayauth.
/// `via` says how the token came (`run`, `delegate`, `environment`); the refusal is the
/// answer to give.
async fn admit(
    shared: &Arc<Shared>,
    who: &Registrant,
    token: crate::token::VerifiedToken,
    via: &str,
) -> Result<Arc<Session>, Value> {
    let pid = who.pid;
    let mount = shared.callers.mount_session().grants();
    let m = mount.actor();
    if token.org() != m.org_id || token.workspace() != m.workspace_id {
        return Err(refuse(
            shared,
            Some(pid),
            "token.validated",
            format!(
                "the token is for org {} workspace {}, but this mount serves org {} workspace {}; \
                 use a token of the mount's workspace",
                token.org(),
                token.workspace(),
                m.org_id,
                m.workspace_id
            ),
        ));
    }
    within_bounds(
        shared,
        who,
        token.scopes(),
        token.parent_token_id(),
        token.subject(),
    )?;
    let confirmed = match &shared.revocation {
        None => false,
        Some(client) => match client.check(token.raw(), token.token_id()).await {
            Ok(Status::Alive) => true,
            Ok(Status::Revoked(r)) => {
                return Err(refuse(
                    shared,
                    Some(pid),
                    "token.validated",
                    format!("relayauth says the token is revoked ({r}); get a new token"),
                ));
            }
            Err(e) => {
                return Err(refuse(
                    shared,
                    Some(pid),
                    "token.validated",
                    format!(
                        "relayauth could not confirm the token is not revoked ({e}); try again \
                         when relayauth answers"
                    ),
                ));
            }
        },
    };
    let session = Arc::new(Session::from_token(&token));
    if confirmed {
        session.confirm();
    }
    register_root(
        shared,
        who,
        &session,
        (via, false),
        format!("process {pid} and its descendants act under this token"),
    )?;
    if shared.callers.reads_environment() {
        // Nothing was cached (any request could open a session) and nothing may be invalidated
        // from here: this may run for a FUSE request whose kernel locks the invalidation needs.
        return Ok(session);
    }
    // From now on every reply carries no cache time; what the kernel already caches goes
    // before the agent starts. A reply computed just before the registration may reach the
    // kernel after that pass, so the pass runs again once such a reply's cache time is over.
    let (notifier, fs) = (shared.notifier.clone(), shared.fs.clone());
    let first = tokio::task::spawn_blocking(move || {
        let n = crate::fuse::forget_cached(&notifier, &fs);
        (n, notifier, fs)
    })
    .await;
    if let Ok((n, notifier, fs)) = first {
        tracing::debug!(pid, invalidated = n, "emptied the kernel's caches");
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(fs.options().attr_ttl + Duration::from_millis(50));
            crate::fuse::forget_cached(&notifier, &fs);
        });
    }
    Ok(session)
}

/// The control socket's answer to a registration: the session (and the relayauth the mount
/// trusts, where `run` refreshes a bundle), or the refusal.
fn answer(shared: &Shared, admitted: Result<Arc<Session>, Value>) -> Value {
    let session = match admitted {
        Ok(s) => s,
        Err(refusal) => return refusal,
    };
    let g = session.grants();
    json!({
        "ok": true,
        "session_id": g.actor().session_id,
        "agent": g.actor().identity_id,
        "sponsor_chain": g.actor().sponsor_chain,
        "expires_at": crate::token::time::format_rfc3339(g.expires_at()),
        "expires_in_secs": g.expires_at().duration_since(SystemTime::now()).map(|d| d.as_secs()).unwrap_or(0),
        "scopes": g.scopes().raw().collect::<Vec<_>>(),
        "relayauth_url": shared.spec.relayauth_url,
    })
}
