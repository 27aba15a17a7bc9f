//! The gate: the one way from (caller's session, operation, path) to permission to touch the
//! mirror.
//!
//! The gate is its own value ([`Gate`], held by the core), so it depends on nothing of the
//! core's. A handler asks `Gate::permit`, which decides with [`crate::authz::decide_fresh`]
//! (scopes, session state and freshness together), audits once and hands back an [`Allowed`].
//! A change to a regular file then passes `Gate::change`, the writeback gate (policy, scope
//! and freshness for provider-backed paths), which turns the `Allowed` into a [`Change`]. Neither
//! type has a public constructor or public fields, and every [`Mirror`](super::mirror::Mirror)
//! method that changes or opens something takes one, so a handler that forgot the check does not
//! build. The mirror also checks that the proof is for the kind of change it makes (a `Read`
//! proof cannot unlink) and that a provider file is never opened for writing in place.
//!
//! A mirror change without a proof does not compile:
//!
//! ```compile_fail
//! use relayauth_mount::fs::mirror::Mirror;
//! fn remove(m: &Mirror) -> std::io::Result<()> {
//!     m.unlink(m.root(), "x".as_ref())
//! }
//! ```
//!
//! nor can a proof be made outside the gate:
//!
//! ```compile_fail
//! use relayauth_mount::fs::gate::Allowed;
//! let forged = Allowed { decision: todo!(), path: todo!() };
//! ```
//!
//! while the same call with a proof does:
//!
//! ```no_run
//! use relayauth_mount::fs::{gate::Change, mirror::Mirror};
//! fn remove(m: &Mirror, proof: &Change) -> std::io::Result<()> {
//!     m.unlink(proof, m.root(), "x".as_ref())
//! }
//! ```

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::RwLock;

use super::error::{Error, FsResult};
use super::kind::Kind;
use crate::audit::{AuditLog, Event, Outcome};
use crate::authz::{self, Decision, Freshness, Op, Place};
use crate::session::{Callers, Denial, Grants, Session, State};
use crate::writeback::{PolicySet, ProviderAreas};

/// Who is asking (from the FUSE request header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Counts for `status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
}

/// Proof that the gate allowed `op` on a path for a caller, and audited it.
#[derive(Clone, Debug)]
pub struct Allowed {
    decision: Decision,
    path: Arc<[u8]>,
}

impl Allowed {
    pub fn op(&self) -> Op {
        self.decision.op()
    }

    /// The relayfile path the decision was about.
    pub fn path(&self) -> &[u8] {
        &self.path
    }

    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// `EACCES` unless this proof is for one of `ops`: a proof for one kind of change is not
    /// one for another.
    pub(crate) fn require(&self, ops: &[Op]) -> io::Result<()> {
        if ops.contains(&self.op()) {
            Ok(())
        } else {
            tracing::error!(
                op = %self.op(),
                expected = ?ops,
                "a mirror call was given a proof for another operation; refused"
            );
            Err(io::Error::from_raw_os_error(libc::EACCES))
        }
    }
}

/// The policy a writeback was allowed by (`relayfile:sync` and the writeback policy file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritebackPermit {
    policy_id: String,
    provider_action: String,
}

impl WritebackPermit {
    pub fn policy_id(&self) -> &str {
        &self.policy_id
    }

    pub fn provider_action(&self) -> &str {
        &self.provider_action
    }
}

/// Proof that a change passed both the decision and the writeback gate: a local change, or a
/// writeback with its [`WritebackPermit`].
#[derive(Clone, Debug)]
pub struct Change {
    allowed: Allowed,
    writeback: Option<WritebackPermit>,
}

impl Change {
    pub fn allowed(&self) -> &Allowed {
        &self.allowed
    }

    pub fn writeback(&self) -> Option<&WritebackPermit> {
        self.writeback.as_ref()
    }

    /// `EACCES` unless this is a local change for one of `ops`: a provider file is written in
    /// staging and placed whole, never changed in place through a descriptor.
    pub(crate) fn require_local(&self, ops: &[Op]) -> io::Result<()> {
        self.allowed.require(ops)?;
        if self.writeback.is_some() {
            tracing::error!("a provider file was to be opened for writing in place; refused");
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        Ok(())
    }
}

/// A refusal of the writeback gate: the errno and the sentence that says why.
pub(crate) type Refusal = (Error, String);

/// The per-request view of the caller: its session, grants and state.
pub(crate) struct Ctx {
    pub session: Option<Arc<Session>>,
    pub grants: Option<Arc<Grants>>,
    pub state: Option<State>,
    pub pid: u32,
}

impl Ctx {
    /// The view of `session` (or of no session) for a request of process `pid`.
    pub fn of(session: Option<Arc<Session>>, pid: u32) -> Ctx {
        let (grants, state) = match &session {
            Some(s) => (Some(s.grants()), Some(s.state(SystemTime::now()))),
            None => (None, None),
        };
        Ctx {
            session,
            grants,
            state,
            pid,
        }
    }

    pub fn active(&self) -> bool {
        self.state == Some(State::Active)
    }
}

/// Everything a decision needs beyond the request: the sessions, the writeback policies, the
/// provider areas, the freshness limits, and where decisions are counted and audited.
#[derive(Debug)]
pub struct Gate {
    callers: Arc<Callers>,
    policies: RwLock<Arc<PolicySet>>,
    backing: ProviderAreas,
    audit: Option<Arc<AuditLog>>,
    stats: Stats,
    started: Instant,
    max_staleness: Duration,
    fail_closed_after: Duration,
}

/// The freshness limits of a mount (see [`Freshness`]).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_staleness: Duration,
    pub fail_closed_after: Duration,
}

impl Gate {
    pub fn new(
        callers: Arc<Callers>,
        policies: PolicySet,
        backing: ProviderAreas,
        audit: Option<Arc<AuditLog>>,
        limits: Limits,
    ) -> Gate {
        Gate {
            callers,
            policies: RwLock::new(Arc::new(policies)),
            backing,
            audit,
            stats: Stats::default(),
            started: Instant::now(),
            max_staleness: limits.max_staleness,
            fail_closed_after: limits.fail_closed_after,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn callers(&self) -> &Callers {
        &self.callers
    }

    pub fn backing(&self) -> &ProviderAreas {
        &self.backing
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.read().clone()
    }

    /// Replace the writeback policies (the file changed while mounted).
    pub fn set_policies(&self, policies: PolicySet) {
        *self.policies.write() = Arc::new(policies);
    }

    /// Whether some active session of this mount may write, replace or delete the ordinary
    /// content path `path`.
    pub(crate) fn changeable_by_any_session(&self, path: &[u8]) -> bool {
        let now = SystemTime::now();
        self.callers.sessions().iter().any(|s| {
            s.is_active(now) && {
                let grants = s.grants();
                [Op::Write, Op::Create, Op::Delete]
                    .into_iter()
                    .any(|op| authz::decide(grants.scopes(), path, &Place::Content, op).allowed())
            }
        })
    }

    pub(crate) fn ctx(&self, caller: &Caller) -> Ctx {
        Ctx::of(self.callers.resolve(caller.pid, caller.uid), caller.pid)
    }

    /// How recently relayauth confirmed `session`, against this mount's limits.
    pub(crate) fn freshness(&self, session: &Session) -> Freshness {
        Freshness {
            confirmed_ago: session.since_confirmed(),
            mounted_for: self.started.elapsed(),
            max_staleness: self.max_staleness,
            fail_closed_after: self.fail_closed_after,
        }
    }

    /// The decision for `op` on `path` at `place`, for this caller (no audit): what
    /// `_PERMISSIONS.md`, visibility and the gate all ask.
    pub(crate) fn decide(&self, ctx: &Ctx, path: &[u8], place: &Place, op: Op) -> Decision {
        let d = match (&ctx.grants, &ctx.state, &ctx.session) {
            (Some(g), Some(State::Active), Some(s)) => {
                authz::decide_fresh(g.scopes(), || self.freshness(s), path, place, op)
            }
            (_, Some(state), _) => authz::decide_inactive(path, place, op, state.name()),
            _ => authz::decide_inactive(path, place, op, "not registered with this mount"),
        };
        authz::hold_unaudited(d, place, || self.audit_fault())
    }

    /// Why nothing on content may happen now for `session`: the audit log cannot be written,
    /// or relayauth has not confirmed the session within `--max-staleness`.
    pub(crate) fn held(&self, session: &Session) -> Option<String> {
        self.audit_fault().or_else(|| {
            let f = self.freshness(session);
            f.stale().then(|| {
                format!(
                    "relayauth has not confirmed this session for {}s (limit {}s), and access \
                     is refused until it does",
                    f.quiet().as_secs(),
                    f.max_staleness.as_secs()
                )
            })
        })
    }

    /// Why nothing audited may happen now: the audit log cannot be written.
    pub(crate) fn audit_fault(&self) -> Option<String> {
        let audit = self.audit.as_ref()?;
        let fault = audit.fault()?;
        Some(format!(
            "the audit log {} cannot be written since {} ({}); every audited operation is \
             refused until it can (free space or fix the log; see relayauth-mount status)",
            audit.path().display(),
            crate::token::time::format_rfc3339(fault.since),
            fault.error
        ))
    }

    /// Decide without auditing: the proof, or the refusing decision. For checks whose audit
    /// the operation as a whole writes (a rename's several checks).
    pub(crate) fn check(
        &self,
        ctx: &Ctx,
        path: &[u8],
        place: &Place,
        op: Op,
    ) -> Result<Allowed, Decision> {
        let decision = self.decide(ctx, path, place, op);
        if decision.allowed() {
            Ok(Allowed {
                decision,
                path: path.into(),
            })
        } else {
            Err(decision)
        }
    }

    /// Decide and audit `op` on `path`: the proof, or the errno of the refusal.
    pub(crate) fn permit(
        &self,
        ctx: &Ctx,
        path: &[u8],
        place: &Place,
        op: Op,
        operation: &str,
    ) -> FsResult<Allowed> {
        match self.check(ctx, path, place, op) {
            Ok(allowed) => {
                self.note(ctx, path, operation, allowed.decision());
                Ok(allowed)
            }
            Err(d) => Err(self.refuse(ctx, path, &d, operation)),
        }
    }

    /// Audit a refusal and give its errno.
    pub(crate) fn refuse(&self, ctx: &Ctx, path: &[u8], d: &Decision, operation: &str) -> Error {
        self.note(ctx, path, operation, d);
        Error::of(d.errno().unwrap_or(libc::EACCES)).audited_refusal()
    }

    /// Audit a refusal by one of the guard's own rules (not a scope's): `error` is what the
    /// caller gets, `why` what the log says.
    pub(crate) fn refuse_by_rule(
        &self,
        ctx: &Ctx,
        path: &[u8],
        operation: &str,
        error: Error,
        why: &str,
    ) -> Error {
        let errno = error.errno();
        self.record(
            ctx,
            "file.write.denied",
            Outcome::Denied,
            operation,
            String::from_utf8_lossy(path).into_owned(),
            why.to_owned(),
            |ev| ev.meta("errno", errno),
        );
        error.audited_refusal()
    }

    /// Audit a writeback refusal (`writeback.rejected`) and give `error`.
    pub(crate) fn refuse_writeback(
        &self,
        ctx: &Ctx,
        path: &str,
        operation: &str,
        why: &str,
        permit: Option<&WritebackPermit>,
        error: Error,
    ) -> Error {
        self.note_writeback(ctx, path, operation, Outcome::Denied, why, permit);
        error.audited_refusal()
    }

    /// Audit an operation decided with [`Gate::check`] once its outcome is known: as allowed
    /// when it happened, not again when a later refusal audited itself, as failed otherwise.
    /// A move (`to`: what allowed its destination) names both ends.
    pub(crate) fn conclude<T>(
        &self,
        ctx: &Ctx,
        operation: &str,
        (from, to): (&Allowed, Option<&Allowed>),
        result: FsResult<T>,
    ) -> FsResult<T> {
        match &result {
            Ok(_) => self.note_moving(ctx, from.path(), operation, from.decision(), to),
            Err(e) if e.is_audited() => {}
            Err(e) => self.failed(ctx, from.path(), to.map(Allowed::path), operation, e),
        }
        result
    }

    /// Audit an operation that was allowed but failed (`file.write.failed`, result `error`):
    /// the record says what happened instead of claiming a change that did not take place.
    pub(crate) fn failed(
        &self,
        ctx: &Ctx,
        path: &[u8],
        new_path: Option<&[u8]>,
        operation: &str,
        error: &Error,
    ) {
        let errno = error.errno();
        let new_path = new_path.map(|p| String::from_utf8_lossy(p).into_owned());
        self.record(
            ctx,
            "file.write.failed",
            Outcome::Error,
            operation,
            String::from_utf8_lossy(path).into_owned(),
            error.to_string(),
            |ev| {
                let ev = ev.meta("errno", errno);
                match new_path {
                    Some(p) => ev.meta("newPath", p),
                    None => ev,
                }
            },
        );
    }

    /// The writeback gate for what `allowed` permits to an object of `kind`: a regular file at
    /// a provider-backed path needs a policy, the scope it names, and a recent confirmation
    /// from relayauth. A refusal is audited as `writeback.rejected`.
    pub(crate) fn change(
        &self,
        ctx: &Ctx,
        allowed: Allowed,
        kind: Kind,
        operation: &str,
    ) -> FsResult<Change> {
        let path = String::from_utf8_lossy(allowed.path()).into_owned();
        self.try_change(ctx, allowed, kind)
            .map_err(|(e, why)| self.refuse_writeback(ctx, &path, operation, &why, None, e))
    }

    /// `Gate::change` without the audit (a staged commit writes its own).
    pub(crate) fn try_change(
        &self,
        ctx: &Ctx,
        allowed: Allowed,
        kind: Kind,
    ) -> Result<Change, Refusal> {
        let writeback = if kind == Kind::File {
            self.writeback_check(ctx, &String::from_utf8_lossy(allowed.path()))?
        } else {
            None
        };
        Ok(Change { allowed, writeback })
    }

    /// Policy, scope and freshness for a writeback to the file `path`: `Ok(None)` for a local
    /// path, the permit for an allowed writeback.
    pub(crate) fn writeback_check(
        &self,
        ctx: &Ctx,
        path: &str,
    ) -> Result<Option<WritebackPermit>, Refusal> {
        if !self.backing.is_provider_backed(path) {
            return Ok(None);
        }
        let (Some(grants), Some(session)) = (&ctx.grants, &ctx.session) else {
            return Err((Error::EACCES, "no session".to_owned()));
        };
        if let Some(why) = self.audit_fault() {
            return Err((Error::EACCES, why));
        }
        let policies = self.policies();
        let policy = policies
            .authorize(grants.scopes(), path)
            .map_err(|r| (Error::of(r.errno()), r.message().to_owned()))?;
        self.freshness(session)
            .writeback()
            .map_err(|why| (Error::EACCES, why))?;
        Ok(Some(WritebackPermit {
            policy_id: policy.id.clone(),
            provider_action: policy.provider_action.clone(),
        }))
    }

    /// Why the writeback gate would refuse `op` on `path`, an object of `kind` at `place`: a
    /// write or delete of a provider-backed file without a policy that covers it, or while
    /// relayauth has not confirmed the session recently. `None` when the gate has nothing to
    /// say. A file's write bit and `_PERMISSIONS.md` ask this, so they show what a change
    /// would meet.
    pub(crate) fn writeback_refusal(
        &self,
        ctx: &Ctx,
        path: &[u8],
        place: &Place,
        kind: Kind,
        op: Op,
    ) -> Option<String> {
        if kind != Kind::File || *place != Place::Content || !matches!(op, Op::Write | Op::Delete) {
            return None;
        }
        self.writeback_check(ctx, &String::from_utf8_lossy(path))
            .err()
            .map(|(_, why)| why)
    }

    /// Count, remember and audit a decision on an audited operation.
    pub(crate) fn note(&self, ctx: &Ctx, path: &[u8], operation: &str, d: &Decision) {
        self.note_moving(ctx, path, operation, d, None);
    }

    /// [`Gate::note`] for a move: the record names the source (`path`, decided by `d`) and
    /// the destination (`newPath`, with what allowed it there).
    fn note_moving(
        &self,
        ctx: &Ctx,
        path: &[u8],
        operation: &str,
        d: &Decision,
        to: Option<&Allowed>,
    ) {
        let allowed = d.allowed();
        let path_str = String::from_utf8_lossy(path).into_owned();
        let describe = |d: &Decision, path: &str| match &ctx.grants {
            Some(g) => d.describe(g.scopes(), path),
            None => "the caller has no session in this mount".to_owned(),
        };
        let mut reason = describe(d, &path_str);
        let new_path = to.map(|to| String::from_utf8_lossy(to.path()).into_owned());
        if let (Some(to), Some(new_path)) = (to, &new_path) {
            reason = format!("{reason}; {}", describe(to.decision(), new_path));
        }
        let action = match (d.op(), allowed) {
            (Op::Read | Op::See, true) => "file.read",
            (Op::Read | Op::See, false) => "scope.denied",
            (_, true) => "file.write.accepted",
            (_, false) => "file.write.denied",
        };
        let outcome = if allowed {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        self.record(ctx, action, outcome, operation, path_str, reason, |ev| {
            let matched = ctx
                .grants
                .as_ref()
                .and_then(|g| d.matched_scope(g.scopes()).map(str::to_owned));
            let ev = ev
                .scopes(d.requirement().map(|r| format!("relayfile:{r}")), matched)
                .meta("errno", d.errno().unwrap_or(0));
            match new_path {
                Some(p) => ev.meta("newPath", p),
                None => ev,
            }
        });
    }

    /// Count, remember and audit a writeback decision (`writeback.queued` or
    /// `writeback.rejected`).
    pub(crate) fn note_writeback(
        &self,
        ctx: &Ctx,
        path: &str,
        operation: &str,
        outcome: Outcome,
        reason: &str,
        permit: Option<&WritebackPermit>,
    ) {
        let action = if outcome == Outcome::Allowed {
            "writeback.queued"
        } else {
            "writeback.rejected"
        };
        self.record(
            ctx,
            action,
            outcome,
            operation,
            path.to_owned(),
            reason.to_owned(),
            |mut ev| {
                if let Some(p) = permit {
                    ev.writeback_policy_id = Some(p.policy_id.clone());
                    ev.provider_action = Some(p.provider_action.clone());
                }
                ev
            },
        );
    }

    /// The one place a decision is counted, remembered for `_PERMISSIONS.md` when refused, and
    /// written to the audit log (`extra` adds what the kind of decision knows).
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        ctx: &Ctx,
        action: &str,
        outcome: Outcome,
        operation: &str,
        path: String,
        reason: String,
        extra: impl FnOnce(Event) -> Event,
    ) {
        if outcome == Outcome::Allowed {
            self.stats.allowed.fetch_add(1, Ordering::Relaxed);
            if let Some(s) = &ctx.session {
                s.count(true);
            }
        } else if outcome == Outcome::Denied {
            // An operation that failed (result `error`) was not refused: it is neither counted
            // nor shown among the refusals.
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            if let Some(s) = &ctx.session {
                s.count(false);
                s.remember_denial(Denial {
                    at: SystemTime::now(),
                    path: path.clone(),
                    operation: operation.to_owned(),
                    reason: reason.clone(),
                });
            }
        }
        let Some(audit) = &self.audit else {
            return;
        };
        let actor = ctx
            .grants
            .as_ref()
            .map(|g| g.actor().clone())
            .unwrap_or_default();
        let ev = Event::new(action, outcome, &actor, operation)
            .pid(ctx.pid)
            .path(path)
            .reason(reason);
        audit.record(extra(ev));
    }
}

#[cfg(test)]
impl Allowed {
    /// A proof for the mirror's own tests (never built outside `cfg(test)`).
    pub(crate) fn for_test(op: Op) -> Allowed {
        let scopes = crate::scope::ScopeSet::new(["relayfile:fs:manage:/**"]);
        let decision = authz::decide(&scopes, b"/x", &Place::Content, op);
        assert!(decision.allowed());
        Allowed {
            decision,
            path: Arc::from(&b"/x"[..]),
        }
    }
}

#[cfg(test)]
impl Change {
    pub(crate) fn for_test(op: Op) -> Change {
        Change {
            allowed: Allowed::for_test(op),
            writeback: None,
        }
    }
}
