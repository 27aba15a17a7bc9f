//! Registration of a session on the control socket (DESIGN section 6): `relayauth-mount run`
//! asks the daemon to make its own process, and so every descendant, act under a token.
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

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::Shared;
use crate::audit::{Event, Outcome};
use crate::relayauth::Status;
use crate::session::Session;
use crate::session::callers::ProcessKey;

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

/// Whether the process behind `pidfd` is still running (a pidfd turns readable when it exits).
fn still_running(pidfd: &OwnedFd) -> bool {
    let mut fds = [libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd, no timeout.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    rc == 0
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

/// Register the peer process under `raw` (see the module documentation).
pub(crate) async fn register(shared: &Arc<Shared>, peer: Peer, raw: &str, claimed: u32) -> Value {
    let Some(pid) = peer.pid else {
        return refuse(
            shared,
            None,
            "session.registered",
            "the kernel did not name the process on the control socket".to_owned(),
        );
    };
    if claimed != pid {
        return refuse(
            shared,
            Some(pid),
            "session.registered",
            format!(
                "a process may register only itself: the request names pid {claimed} but comes \
                 from pid {pid}; run the agent through `relayauth-mount run`"
            ),
        );
    }
    let Some(key) = ProcessKey::of(pid) else {
        return refuse(
            shared,
            Some(pid),
            "session.registered",
            format!("process {pid} exited while registering"),
        );
    };
    // The start time just read is the connecting process's only if it is still running now
    // (a pid is not reused while its process lives).
    let pidfd = match peer.pidfd {
        Some(fd) => Some(fd),
        None => rustix::process::Pid::from_raw(pid as i32).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        }),
    };
    if !pidfd.as_ref().is_some_and(still_running) {
        return refuse(
            shared,
            Some(pid),
            "session.registered",
            format!("process {pid} exited while registering"),
        );
    }
    let token = match shared.verifier.verify_fresh(raw.trim()).await {
        Ok(t) => t,
        Err(e) => {
            return refuse(
                shared,
                Some(pid),
                "token.validated",
                format!("the token was refused: {e}"),
            );
        }
    };
    let mount = shared.callers.mount_session().grants();
    let m = mount.actor();
    if token.org() != m.org_id || token.workspace() != m.workspace_id {
        return refuse(
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
        );
    }
    // Never wider than what the registering process acts under now, nor than the parent the
    // token claims, when that parent is a session of this mount.
    let sessions = shared.callers.sessions();
    let current = shared.callers.resolve(pid, peer.uid);
    let mut bounds: Vec<(String, Arc<Session>)> = Vec::new();
    if let Some(c) = current.filter(|c| !Arc::ptr_eq(c, shared.callers.mount_session())) {
        bounds.push(("the session this process acts under".to_owned(), c));
    }
    if let Some(parent) = token.parent_token_id()
        && let Some(p) = sessions
            .iter()
            .find(|s| s.grants().actor().token_id == parent)
    {
        bounds.push((format!("its parent token {parent}"), p.clone()));
    }
    for (what, bound) in &bounds {
        let g = bound.grants();
        let check = crate::scope::within(token.scopes().raw(), g.scopes().raw());
        let refused = check.refused();
        if !refused.is_empty() {
            let why = format!(
                "the token holds {} beyond {what}; a sub-agent's token may only narrow its \
                 parent's scopes",
                refused.join(", ")
            );
            tracing::warn!("registration refused: {why}");
            shared.audit.record(
                Event::new(
                    "scope.escalation_denied",
                    Outcome::Denied,
                    g.actor(),
                    "register",
                )
                .pid(pid)
                .reason(why.clone())
                .meta("offending", refused.join(" "))
                .meta("refusedTokenId", token.token_id())
                .meta("refusedSubject", token.subject()),
            );
            return super::control::error(why);
        }
    }
    let confirmed = match &shared.revocation {
        None => false,
        Some(client) => match client.check(token.raw(), token.token_id()).await {
            Ok(Status::Alive) => true,
            Ok(Status::Revoked(r)) => {
                return refuse(
                    shared,
                    Some(pid),
                    "token.validated",
                    format!("relayauth says the token is revoked ({r}); get a new token"),
                );
            }
            Err(e) => {
                return refuse(
                    shared,
                    Some(pid),
                    "token.validated",
                    format!(
                        "relayauth could not confirm the token is not revoked ({e}); try again \
                         when relayauth answers"
                    ),
                );
            }
        },
    };
    let session = Arc::new(Session::from_token(&token));
    if confirmed {
        session.confirm();
    }
    if !ProcessKey::of(pid).is_some_and(|now| now == key) {
        return refuse(
            shared,
            Some(pid),
            "session.registered",
            format!("process {pid} exited while registering"),
        );
    }
    shared.callers.register(key, session.clone());
    let g = session.grants();
    shared.audit.record(
        Event::new(
            "session.registered",
            Outcome::Allowed,
            g.actor(),
            "register",
        )
        .pid(pid)
        .reason(format!(
            "process {pid} and its descendants act under this token"
        ))
        .meta("rootPid", pid)
        .meta("scopes", g.scopes().raw().collect::<Vec<_>>().join(" ")),
    );
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
        tracing::info!(pid, agent = %g.actor().identity_id, invalidated = n, "registered a session");
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(fs.options().attr_ttl + Duration::from_millis(50));
            crate::fuse::forget_cached(&notifier, &fs);
        });
    }
    json!({
        "ok": true,
        "session_id": g.actor().session_id,
        "agent": g.actor().identity_id,
        "sponsor_chain": g.actor().sponsor_chain,
        "expires_at": crate::token::time::format_rfc3339(g.expires_at()),
        "expires_in_secs": g.expires_at().duration_since(SystemTime::now()).map(|d| d.as_secs()).unwrap_or(0),
        "scopes": g.scopes().raw().collect::<Vec<_>>(),
    })
}
