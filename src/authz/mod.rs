//! Authorization: a filesystem operation on a path, for a scope set, becomes a [`Decision`].
//!
//! This is the one place that maps DESIGN section 7's table to requirements and errnos, so the
//! filesystem, `_PERMISSIONS.md` and the audit log cannot disagree: they all call [`decide`].
//! It is pure (no I/O); facts that need the mirror (the path inside a `/.relay` record) are
//! looked up by the caller and passed in as a [`Place`].
//!
//! The errno policy: a path the caller cannot see is `ENOENT` (its existence is not revealed); a
//! visible path whose operation is refused is `EACCES`; operations refused for everyone (hard
//! links, chown, device nodes, setuid/setgid bits) are `EPERM`.

pub mod relay;

use std::fmt;
use std::time::Duration;

use crate::scope::{Requirement, ScopeSet, Via};

pub use relay::{RelayItem, classify_relay};

/// The name of the generated permissions file in every directory.
pub const PERMISSIONS_FILE: &str = "_PERMISSIONS.md";

/// What the caller wants to do, as far as authorization cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// lookup, getattr, readlink, access(F_OK), opendir, readdir.
    See,
    /// open for reading, getxattr, listxattr.
    Read,
    /// open for writing, `O_TRUNC`, truncate, write, fallocate, setattr of times or mode,
    /// setxattr, removexattr.
    Write,
    /// create a file, mkdir, symlink: on the new path.
    Create,
    /// unlink, rmdir.
    Delete,
    /// Refused for everyone: the operation's name.
    Forbidden(Forbidden),
}

/// The operations that are refused structurally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Forbidden {
    HardLink,
    Chown,
    DeviceNode,
    SetId,
}

impl Forbidden {
    pub fn describe(self) -> &'static str {
        match self {
            Forbidden::HardLink => {
                "hard links are refused: a hard link would let one path reach another path's content"
            }
            Forbidden::Chown => "changing owners is refused in the guarded view",
            Forbidden::DeviceNode => {
                "device nodes cannot be created in the guarded view: a device would reach past \
                 the mirror"
            }
            Forbidden::SetId => "setuid and setgid bits are refused",
        }
    }
}

impl Op {
    /// The filesystem requirement this operation needs on an ordinary path.
    pub fn requirement_index(self) -> Option<usize> {
        match self {
            Op::Read => Some(Requirement::FS_READ),
            Op::Write => Some(Requirement::FS_WRITE),
            Op::Create => Some(Requirement::FS_CREATE),
            Op::Delete => Some(Requirement::FS_DELETE),
            Op::See | Op::Forbidden(_) => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::See => "see",
            Op::Read => "read",
            Op::Write => "write",
            Op::Create => "create",
            Op::Delete => "delete",
            Op::Forbidden(Forbidden::HardLink) => "link",
            Op::Forbidden(Forbidden::Chown) => "chown",
            Op::Forbidden(Forbidden::DeviceNode) => "mknod",
            Op::Forbidden(Forbidden::SetId) => "setid",
        }
    }
}

/// Where a path is, as far as the rules go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// An ordinary path of the workspace: fs scopes decide.
    Content,
    /// The generated `_PERMISSIONS.md` of a visible directory: readable, never writable.
    PermissionsFile,
    /// Something under `/.relay`: ops/sync rules decide.
    Relay(RelayItem),
}

/// The outcome, and the errno it maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// `ENOENT`: the caller may not know the path exists.
    Hidden,
    /// `EACCES`: visible, but this operation is refused.
    Deny,
    /// `EPERM`: refused for everyone.
    Forbidden,
}

impl Verdict {
    pub fn errno(self) -> Option<i32> {
        match self {
            Verdict::Allow => None,
            Verdict::Hidden => Some(libc::ENOENT),
            Verdict::Deny => Some(libc::EACCES),
            Verdict::Forbidden => Some(libc::EPERM),
        }
    }
}

/// Why a decision came out as it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A scope grants it (index into the scope set).
    Granted {
        scope: usize,
        via: Via,
    },
    /// Visible: a grant matches the path or mounts below it.
    Visible,
    /// Nothing grants the requirement here.
    NoGrant,
    /// No fs grant matches the path or mounts below it.
    NotVisible,
    /// The session is not active (revoked, expired, unknown).
    SessionInactive(String),
    /// The directory holds entries the caller cannot see or remove.
    HoldsHidden,
    /// A change to the generated `_PERMISSIONS.md` was accepted and discarded.
    NoticeDiscarded,
    /// relayauth has not confirmed the session recently enough (fail closed).
    StatusUnknown(String),
    /// The audit log cannot be written, so nothing that would be audited is allowed.
    AuditUnavailable(String),
    /// `_PERMISSIONS.md` is generated and read-only.
    PermissionsReadOnly,
    /// Nothing under `/.relay` is writable.
    RelayReadOnly,
    /// A `/.relay` rule hides it.
    RelayHidden(&'static str),
    /// A `/.relay` rule allows it.
    RelayVisible(&'static str),
    Forbidden(Forbidden),
}

/// A decision: the verdict, what was required and why. Only this module makes one, so a
/// decision is always the rules' answer (the fields are read through accessors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    verdict: Verdict,
    op: Op,
    /// The requirement asked (`fs:write`, `ops:read`, ...), when one applies.
    requirement: Option<Requirement>,
    reason: Reason,
}

impl Decision {
    /// The refusal of a structurally forbidden operation (EPERM for everyone).
    pub fn forbidden(f: Forbidden) -> Decision {
        Decision::new(
            Verdict::Forbidden,
            Op::Forbidden(f),
            None,
            Reason::Forbidden(f),
        )
    }

    /// A directory the caller may not empty: it holds entries the caller cannot see or remove
    /// (`EACCES`, which says nothing about what is there).
    pub fn holds_hidden(op: Op) -> Decision {
        Decision::new(Verdict::Deny, op, None, Reason::HoldsHidden)
    }

    /// A change to the generated `_PERMISSIONS.md` accepted and discarded.
    pub fn notice_discarded(op: Op) -> Decision {
        Decision::new(Verdict::Allow, op, None, Reason::NoticeDiscarded)
    }

    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    pub fn op(&self) -> Op {
        self.op
    }

    pub fn requirement(&self) -> Option<&Requirement> {
        self.requirement.as_ref()
    }

    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// The errno a refusal answers with; `None` when it allows.
    pub fn errno(&self) -> Option<i32> {
        self.verdict.errno()
    }

    fn new(verdict: Verdict, op: Op, requirement: Option<Requirement>, reason: Reason) -> Decision {
        Decision {
            verdict,
            op,
            requirement,
            reason,
        }
    }

    /// The raw scope that granted this, if any.
    pub fn matched_scope<'a>(&self, scopes: &'a ScopeSet) -> Option<&'a str> {
        match self.reason {
            Reason::Granted { scope, .. } => scopes.scopes().get(scope).map(|s| &*s.raw),
            _ => None,
        }
    }

    /// A sentence for people and agents.
    pub fn describe(&self, scopes: &ScopeSet, path: &str) -> String {
        let req = self
            .requirement
            .as_ref()
            .map_or_else(|| self.op.name().to_owned(), |r| r.to_string());
        match &self.reason {
            Reason::Granted {
                via: Via::Literal, ..
            } => format!(
                "{req} on {path} is granted by the bare literal {}",
                self.matched_scope(scopes).unwrap_or("?")
            ),
            Reason::Granted { .. } => format!(
                "{req} on {path} is granted by {}",
                self.matched_scope(scopes).unwrap_or("?")
            ),
            Reason::Visible => format!("{path} is visible: a scope covers it or a path below it"),
            Reason::NoGrant => format!("no scope grants {req} on {path}"),
            Reason::NotVisible => format!("no scope covers {path} or anything below it"),
            Reason::SessionInactive(state) => format!("the session is {state}; nothing is allowed"),
            Reason::StatusUnknown(why) | Reason::AuditUnavailable(why) => why.clone(),
            Reason::NoticeDiscarded => format!(
                "{PERMISSIONS_FILE} is generated: the change to {path} was accepted and discarded"
            ),
            Reason::HoldsHidden => {
                format!("{path} holds entries this session cannot see or remove")
            }
            Reason::PermissionsReadOnly => {
                format!("{PERMISSIONS_FILE} is generated by relayauth-mount and cannot be changed")
            }
            Reason::RelayReadOnly => {
                "nothing under /.relay is writable: it belongs to relayfile's syncer".to_owned()
            }
            Reason::RelayHidden(why) | Reason::RelayVisible(why) => (*why).to_owned(),
            Reason::Forbidden(f) => f.describe().to_owned(),
        }
    }
}

/// Decide `op` on `path` (a canonical relayfile path, exact bytes) at `place` for `scopes`.
pub fn decide(scopes: &ScopeSet, path: &[u8], place: &Place, op: Op) -> Decision {
    match place {
        Place::Content => decide_content(scopes, path, op),
        Place::PermissionsFile => match op {
            Op::See | Op::Read => Decision::new(Verdict::Allow, op, None, Reason::Visible),
            Op::Forbidden(f) => Decision::new(Verdict::Forbidden, op, None, Reason::Forbidden(f)),
            _ => Decision::new(Verdict::Deny, op, None, Reason::PermissionsReadOnly),
        },
        Place::Relay(item) => relay::decide_relay(scopes, item, op),
    }
}

fn decide_content(scopes: &ScopeSet, path: &[u8], op: Op) -> Decision {
    // The root is where every session starts (an ops- or sync-only token reaches `/.relay`
    // through it); seeing it reveals nothing.
    if op == Op::See && path == b"/" {
        return Decision::new(Verdict::Allow, op, None, Reason::Visible);
    }
    let Some(index) = op.requirement_index() else {
        // `See` and the structurally refused operations: visibility first.
        if !scopes.visible(path) {
            return Decision::new(Verdict::Hidden, op, None, Reason::NotVisible);
        }
        return match op {
            Op::Forbidden(f) => Decision::new(Verdict::Forbidden, op, None, Reason::Forbidden(f)),
            _ => Decision::new(Verdict::Allow, op, None, Reason::Visible),
        };
    };
    let requirement = Requirement::known(index);
    // A grant for the requirement makes the path visible too (the visibility index holds every
    // fs grant), so an allowed decision needs one index walk.
    match scopes.check_known(index, path) {
        Some(m) => Decision::new(
            Verdict::Allow,
            op,
            Some(requirement),
            Reason::Granted {
                scope: m.scope,
                via: m.via,
            },
        ),
        // A new path does not exist yet, so it need not be visible; everything else must be.
        None if op != Op::Create && !scopes.visible(path) => {
            Decision::new(Verdict::Hidden, op, None, Reason::NotVisible)
        }
        None => Decision::new(Verdict::Deny, op, Some(requirement), Reason::NoGrant),
    }
}

/// How recently relayauth confirmed a session, against the mount's limits. Freshness is part
/// of every decision (fail closed): past `max_staleness` without a confirmation nothing but the
/// notice is allowed, and a writeback needs a confirmation within `fail_closed_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// Since relayauth last confirmed the session; `None` when it never has.
    pub confirmed_ago: Option<Duration>,
    /// Since the mount started (what counts as unconfirmed time before a first confirmation).
    pub mounted_for: Duration,
    pub max_staleness: Duration,
    pub fail_closed_after: Duration,
}

impl Freshness {
    /// How long the session has gone without a confirmation.
    pub fn quiet(&self) -> Duration {
        self.confirmed_ago.unwrap_or(self.mounted_for)
    }

    /// Whether open files and new operations are cut off for want of a confirmation.
    pub fn stale(&self) -> bool {
        self.quiet() > self.max_staleness
    }

    /// Whether a writeback may proceed: `Err` with the sentence that says why not.
    pub fn writeback(&self) -> Result<(), String> {
        match self.confirmed_ago {
            None => Err(
                "relayauth has not confirmed this session yet (writebacks need a confirmation); \
                 the write is refused until it does"
                    .to_owned(),
            ),
            Some(quiet) if quiet > self.fail_closed_after => Err(format!(
                "relayauth has not confirmed this session for {}s (writebacks need a confirmation within {}s); \
                 the write is refused until it does",
                quiet.as_secs(),
                self.fail_closed_after.as_secs()
            )),
            Some(_) => Ok(()),
        }
    }
}

/// [`decide`] for an active session whose confirmation `fresh` tells: a content operation the
/// scopes allow is refused (`EACCES`) once the session is stale. `fresh` is only asked for
/// when it matters (an allowed content operation), so a lookup reads no clock.
pub fn decide_fresh(
    scopes: &ScopeSet,
    fresh: impl FnOnce() -> Freshness,
    path: &[u8],
    place: &Place,
    op: Op,
) -> Decision {
    let d = decide(scopes, path, place, op);
    if !audited_content(&d, place) {
        return d;
    }
    let fresh = fresh();
    if fresh.stale() {
        return Decision::new(
            Verdict::Deny,
            op,
            d.requirement,
            Reason::StatusUnknown(format!(
                "relayauth has not confirmed this session for {}s (limit {}s); access is refused until it does",
                fresh.quiet().as_secs(),
                fresh.max_staleness.as_secs()
            )),
        );
    }
    d
}

/// Whether `d` allows an operation on content that the audit log records (open, create,
/// write, delete; not a lookup or a listing, and not reading `_PERMISSIONS.md`).
fn audited_content(d: &Decision, place: &Place) -> bool {
    let content_op = matches!(d.op, Op::Read | Op::Write | Op::Create | Op::Delete);
    d.allowed() && content_op && *place != Place::PermissionsFile
}

/// `d`, unless the audit log cannot be written (`fault` says why): then what `d` allows on
/// content is refused (`EACCES`), as nothing may happen unaudited. Lookups, listings and
/// `_PERMISSIONS.md` stay, so an agent can read what is wrong. `fault` is only asked for a
/// decision it could change.
pub fn hold_unaudited(
    d: Decision,
    place: &Place,
    fault: impl FnOnce() -> Option<String>,
) -> Decision {
    if !audited_content(&d, place) {
        return d;
    }
    match fault() {
        Some(why) => Decision::new(
            Verdict::Deny,
            d.op,
            d.requirement,
            Reason::AuditUnavailable(why),
        ),
        None => d,
    }
}

/// The decision for a session that is not active: only the root and its `_PERMISSIONS.md`
/// stay visible (read-only), so the agent can read what happened.
pub fn decide_inactive(path: &[u8], place: &Place, op: Op, state: &str) -> Decision {
    let reason = Reason::SessionInactive(state.to_owned());
    let root_or_notice =
        path == b"/" || matches!(place, Place::PermissionsFile) && is_root_file(path);
    let verdict = match op {
        Op::See | Op::Read if root_or_notice => Verdict::Allow,
        _ if root_or_notice => Verdict::Deny,
        _ => Verdict::Hidden,
    };
    Decision::new(verdict, op, None, reason)
}

fn is_root_file(path: &[u8]) -> bool {
    path.len() > 1 && !path[1..].contains(&b'/')
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(scopes: &[&str], path: &str, op: Op) -> Verdict {
        decide(&ScopeSet::new(scopes), path.as_bytes(), &Place::Content, op).verdict
    }

    #[test]
    fn staleness_refuses_content_but_not_the_notice() {
        let s = ScopeSet::new(["relayfile:fs:write:/a/**"]);
        let minute = Duration::from_secs(60);
        let fresh = |ago: Option<u64>| Freshness {
            confirmed_ago: ago.map(Duration::from_secs),
            mounted_for: Duration::from_secs(1000),
            max_staleness: 5 * minute,
            fail_closed_after: minute / 2,
        };
        let p = b"/a/x";
        let ok = fresh(Some(10));
        assert!(decide_fresh(&s, || ok, p, &Place::Content, Op::Write).allowed());
        let stale = fresh(Some(301));
        let d = decide_fresh(&s, || stale, p, &Place::Content, Op::Write);
        assert_eq!(d.verdict(), Verdict::Deny);
        assert!(matches!(d.reason(), Reason::StatusUnknown(_)));
        // Never confirmed: counts from the mount's start.
        assert!(!decide_fresh(&s, || fresh(None), p, &Place::Content, Op::Read).allowed());
        let notice = b"/a/_PERMISSIONS.md";
        assert!(decide_fresh(&s, || stale, notice, &Place::PermissionsFile, Op::Read).allowed());
        assert!(decide_fresh(&s, || stale, b"/a", &Place::Content, Op::See).allowed());
        assert!(ok.writeback().is_ok());
        assert!(fresh(Some(31)).writeback().is_err());
        assert!(fresh(None).writeback().is_err());
    }

    #[test]
    fn errno_policy() {
        let s = [
            "relayfile:fs:read:/github/**",
            "relayfile:fs:write:/github/repos/acme/api/**",
        ];
        assert_eq!(d(&s, "/slack/x", Op::See), Verdict::Hidden);
        assert_eq!(d(&s, "/slack/x", Op::Read), Verdict::Hidden);
        assert_eq!(d(&s, "/slack/x", Op::Delete), Verdict::Hidden);
        assert_eq!(d(&s, "/slack/x", Op::Create), Verdict::Deny);
        assert_eq!(d(&s, "/github/x", Op::Read), Verdict::Allow);
        assert_eq!(d(&s, "/github/x", Op::Write), Verdict::Deny);
        assert_eq!(d(&s, "/github/repos/acme/api/x", Op::Write), Verdict::Allow);
        assert_eq!(
            d(&s, "/github/repos/acme/api/x", Op::Create),
            Verdict::Allow
        );
        assert_eq!(
            d(&s, "/github/repos/acme/api/x", Op::Delete),
            Verdict::Allow
        );
        assert_eq!(
            d(&s, "/github/x", Op::Forbidden(Forbidden::HardLink)),
            Verdict::Forbidden
        );
        assert_eq!(
            d(&s, "/slack", Op::Forbidden(Forbidden::HardLink)),
            Verdict::Hidden
        );
        assert_eq!(d(&s, "/", Op::See), Verdict::Allow);
    }

    #[test]
    fn inactive_sessions_see_only_the_root_notice() {
        let st = "revoked";
        assert_eq!(
            decide_inactive(b"/", &Place::Content, Op::See, st).verdict,
            Verdict::Allow
        );
        assert_eq!(
            decide_inactive(b"/_PERMISSIONS.md", &Place::PermissionsFile, Op::Read, st).verdict,
            Verdict::Allow
        );
        assert_eq!(
            decide_inactive(b"/a/_PERMISSIONS.md", &Place::PermissionsFile, Op::Read, st).verdict,
            Verdict::Hidden
        );
        assert_eq!(
            decide_inactive(b"/github", &Place::Content, Op::See, st).verdict,
            Verdict::Hidden
        );
        assert_eq!(
            decide_inactive(b"/", &Place::Content, Op::Create, st).verdict,
            Verdict::Deny
        );
    }
}
