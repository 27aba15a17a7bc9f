//! What a mount says about itself: the start-up summary and `status`.

use std::time::{Duration, SystemTime};

use serde_json::json;

use super::Shared;
use crate::session::Session;
use crate::writeback::PolicySet;

pub(super) fn summary(
    shared: &Shared,
    session: &Session,
    policies: &PolicySet,
    revocation: &str,
) -> String {
    let g = session.grants();
    let a = &g.actor();
    let io = if shared.fs.passthrough() {
        "passthrough I/O: opens are checked, then the kernel reads and writes mirror files \
         directly"
    } else {
        "strict I/O: every read and write is checked"
    };
    let mut s = format!(
        "relayauth-mount: {} is mounted at {} ({io})\n",
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

/// Why writebacks are refused for `s` for lack of a confirmation from relayauth, if they are
/// (the session may still say `active`).
fn writebacks_refused(s: &Session, limit: Duration) -> Option<String> {
    match s.since_confirmed() {
        None => Some(
            "relayauth has not confirmed the session yet; writebacks are refused until it does"
                .to_owned(),
        ),
        Some(d) if d > limit => Some(format!(
            "relayauth last confirmed the session {} ago (--fail-closed-after {}); writebacks \
             are refused until it answers again",
            humantime::format_duration(Duration::from_secs(d.as_secs())),
            humantime::format_duration(limit)
        )),
        Some(_) => None,
    }
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
                "writebacks_refused": writebacks_refused(s, shared.spec.fail_closed_after),
                "parent_token_id": g.parent_token_id(),
                "root_pids": shared.callers.roots_of(s).iter().map(|k| k.pid).collect::<Vec<_>>(),
                "allowed": s.decisions().0,
                "denied": s.decisions().1,
            })
        })
        .collect();
    let stats = shared.fs.stats();
    let (held, lost) = shared.audit.backlog();
    let audit = match shared.audit.fault() {
        None => json!({"state": "ok", "held_records": held, "lost_records": lost}),
        Some(f) => json!({
            "state": "failing",
            "since": crate::token::time::format_rfc3339(f.since),
            "error": f.error,
            "detail": "every audited operation is refused until the log can be written",
            "held_records": held,
            "lost_records": lost,
        }),
    };
    json!({
        "ok": true,
        "mountpoint": shared.mountpoint.display().to_string(),
        "source": shared.source.display().to_string(),
        "pid": std::process::id(),
        "io": if shared.fs.passthrough() { "passthrough" } else { "strict" },
        "passthrough_backing_files": shared.backings.open_count(),
        "on_revoke": match shared.spec.on_revoke {
            super::ending::OnRevoke::Deny => "deny",
            super::ending::OnRevoke::Kill => "kill",
        },
        "session": sessions.first(),
        "sessions": sessions,
        "allowed": stats.allowed.load(std::sync::atomic::Ordering::Relaxed),
        "denied": stats.denied.load(std::sync::atomic::Ordering::Relaxed),
        "audit_log": shared.audit.path().display().to_string(),
        "audit_events_written": shared.audit.written(),
        "audit": audit,
        "revocation": shared.revocation.as_ref().map(|r| r.strategy().name()),
        "writeback_policies": shared.fs.policies().policies().len(),
        "mounted_secs": now.duration_since(shared.started).map(|d| d.as_secs()).unwrap_or(0),
    })
}
