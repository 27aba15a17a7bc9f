//! The rules for `/.relay`, relayfile's runtime area (DESIGN sections 3 and 7).
//!
//! fs grants do not reach `/.relay`: a token with `relayfile:fs:read:*` does not see the outbox.
//! Instead `/.relay` is visible to a session with any `ops` or `sync` grant; `state.json` needs
//! `sync:read` (its content is filtered per caller by the filesystem); outbox, dead-letter,
//! conflict and pending-delete records need `ops:read` on the path the record is about, and are
//! listed only when that holds; `permissions-denied.log` is filtered to visible paths. Nothing
//! under `/.relay` is writable, and the guard's own staging and quarantine folders are never
//! shown. Anything not named here is hidden: new kinds of runtime files stay private until a
//! rule says otherwise.

use super::{Decision, Op, Reason, Verdict};
use crate::scope::{Family, Requirement, ScopeSet};

/// The runtime area's root.
pub const RELAY_ROOT: &[u8] = b"/.relay";
/// Where the guard keeps staged writes and quarantined payloads (never shown).
pub const GUARD_DIR: &str = ".relayauth-mount";

/// Directories whose files are records about a relayfile path.
const RECORD_DIRS: [&str; 8] = [
    "outbox",
    "outbox/pending",
    "outbox/acked",
    "outbox/failed",
    "outbox/attention",
    "dead-letter",
    "conflicts",
    "pending-deletes",
];

/// A path under `/.relay`, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayItem {
    /// `/.relay` itself.
    Root,
    /// `state.json`.
    State,
    /// One of the record directories (`outbox/pending`, `dead-letter`, ...).
    RecordDir,
    /// A record file (or a folder of conflict copies); `target` is the relayfile path it is
    /// about, when it could be read.
    Record { target: Option<Vec<u8>> },
    /// `permissions-denied.log`.
    DeniedLog,
    /// `integrations/`.
    IntegrationsDir,
    /// `integrations/<provider>.json`.
    Integration { provider: String },
    /// `writeback-policies.json`, `schemas/` and the schemas in it.
    Policies,
    /// The guard's own folders.
    Guard,
    /// Anything else.
    Other,
}

impl RelayItem {
    /// Whether the filesystem must read the record to learn its target path.
    pub fn needs_target(&self) -> bool {
        matches!(self, RelayItem::Record { target: None })
    }
}

/// Classify `path` if it is `/.relay` or below it.
pub fn classify_relay(path: &[u8]) -> Option<RelayItem> {
    let rest = path.strip_prefix(RELAY_ROOT)?;
    if rest.is_empty() {
        return Some(RelayItem::Root);
    }
    let rest = rest.strip_prefix(b"/")?;
    let rest = std::str::from_utf8(rest).ok();
    let Some(rest) = rest else {
        return Some(RelayItem::Other);
    };
    let (dir, name) = match rest.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", rest),
    };
    if rest
        .strip_prefix(GUARD_DIR)
        .is_some_and(|r| r.is_empty() || r.starts_with('/'))
    {
        return Some(RelayItem::Guard);
    }
    let item = match (dir, name) {
        ("", "state.json") => RelayItem::State,
        ("", "permissions-denied.log") => RelayItem::DeniedLog,
        ("", "writeback-policies.json") | ("", "schemas") | ("schemas", _) => RelayItem::Policies,
        ("", "integrations") => RelayItem::IntegrationsDir,
        ("integrations", file) => match file.strip_suffix(".json") {
            Some(p) if !p.is_empty() => RelayItem::Integration {
                provider: p.to_owned(),
            },
            _ => RelayItem::Other,
        },
        _ if RECORD_DIRS.contains(&rest) => RelayItem::RecordDir,
        _ if rest.starts_with("conflicts/") => RelayItem::Record { target: None },
        (d, _) if RECORD_DIRS.contains(&d) => RelayItem::Record { target: None },
        _ => RelayItem::Other,
    };
    Some(item)
}

fn visible(why: &'static str) -> Result<Reason, Reason> {
    Ok(Reason::RelayVisible(why))
}

fn hidden(why: &'static str) -> Result<Reason, Reason> {
    Err(Reason::RelayHidden(why))
}

/// Decide `op` on a `/.relay` item.
pub fn decide_relay(scopes: &ScopeSet, item: &RelayItem, op: Op) -> Decision {
    let any_ops_or_sync = scopes.grants_family(Family::Ops) || scopes.grants_family(Family::Sync);
    if op == Op::Create {
        // A new name has no record to judge; the folder it would go in is what the caller sees.
        let (verdict, reason) = if any_ops_or_sync {
            (Verdict::Deny, Reason::RelayReadOnly)
        } else {
            (
                Verdict::Hidden,
                Reason::RelayHidden("/.relay is visible only with an ops or sync grant"),
            )
        };
        return Decision {
            verdict,
            op,
            requirement: None,
            reason,
        };
    }
    let mut requirement = None;
    let seen: Result<Reason, Reason> = match item {
        RelayItem::Root | RelayItem::Policies | RelayItem::DeniedLog if any_ops_or_sync => {
            visible("visible with any ops or sync grant")
        }
        RelayItem::Root | RelayItem::Policies | RelayItem::DeniedLog => {
            hidden("/.relay is visible only with an ops or sync grant")
        }
        RelayItem::State => {
            requirement = Some(Requirement::known(Requirement::SYNC_READ));
            if scopes.grants_anywhere(Requirement::SYNC_READ) {
                visible("state.json is shown (filtered) with a sync:read grant")
            } else {
                hidden("state.json needs sync:read")
            }
        }
        RelayItem::RecordDir => {
            requirement = Some(Requirement::known(Requirement::OPS_READ));
            if scopes.grants_anywhere(Requirement::OPS_READ) {
                visible("record folders are shown with an ops:read grant")
            } else {
                hidden("record folders need ops:read")
            }
        }
        RelayItem::Record { target } => {
            requirement = Some(Requirement::known(Requirement::OPS_READ));
            match target {
                Some(t) => match scopes.check_known(Requirement::OPS_READ, t) {
                    Some(m) => Ok(Reason::Granted {
                        scope: m.scope,
                        via: m.via,
                    }),
                    // A folder of conflict copies leads to records the caller may read.
                    None if scopes.reaches(Requirement::OPS_READ, t) => {
                        visible("leads to records the caller has ops:read on")
                    }
                    None => hidden("this record is about a path the caller has no ops:read on"),
                },
                None => hidden("this record names no readable path"),
            }
        }
        RelayItem::IntegrationsDir => {
            requirement = Some(Requirement::known(Requirement::INTEGRATION_READ));
            if scopes.grants_anywhere(Requirement::INTEGRATION_READ) {
                visible("integrations are shown with an integration:read grant")
            } else {
                hidden("integrations need integration:read")
            }
        }
        RelayItem::Integration { provider } => {
            requirement = Some(Requirement::known(Requirement::INTEGRATION_READ));
            let path = format!("/{provider}");
            match scopes.check_known(Requirement::INTEGRATION_READ, path.as_bytes()) {
                Some(m) => Ok(Reason::Granted {
                    scope: m.scope,
                    via: m.via,
                }),
                None => hidden("this integration needs integration:read on its provider"),
            }
        }
        RelayItem::Guard => hidden("the guard's own folders are private"),
        RelayItem::Other => hidden("not a runtime file the guard shows"),
    };
    let verdict_reason = match (seen, op) {
        (Err(reason), _) => (Verdict::Hidden, reason),
        (Ok(reason), Op::See | Op::Read) => (Verdict::Allow, reason),
        (Ok(_), Op::Forbidden(f)) => (Verdict::Forbidden, Reason::Forbidden(f)),
        (Ok(_), Op::Write | Op::Create | Op::Delete) => (Verdict::Deny, Reason::RelayReadOnly),
    };
    let (verdict, reason) = verdict_reason;
    let requirement = match op {
        Op::See | Op::Read => requirement,
        _ => None,
    };
    Decision {
        verdict,
        op,
        requirement,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(scopes: &[&str], path: &str, target: Option<&str>, op: Op) -> Verdict {
        let mut item = classify_relay(path.as_bytes()).unwrap();
        if let RelayItem::Record { target: t } = &mut item {
            *t = target.map(|s| s.as_bytes().to_vec());
        }
        decide_relay(&ScopeSet::new(scopes), &item, op).verdict
    }

    #[test]
    fn classification() {
        assert_eq!(classify_relay(b"/.relay"), Some(RelayItem::Root));
        assert_eq!(classify_relay(b"/.relayx"), None);
        assert_eq!(
            classify_relay(b"/.relay/state.json"),
            Some(RelayItem::State)
        );
        assert_eq!(
            classify_relay(b"/.relay/outbox/pending"),
            Some(RelayItem::RecordDir)
        );
        assert_eq!(
            classify_relay(b"/.relay/outbox/pending/c1.json"),
            Some(RelayItem::Record { target: None })
        );
        assert_eq!(
            classify_relay(b"/.relay/.relayauth-mount/staging/x"),
            Some(RelayItem::Guard)
        );
        assert_eq!(
            classify_relay(b"/.relay/secret.key"),
            Some(RelayItem::Other)
        );
        assert_eq!(
            classify_relay(b"/.relay/integrations/github.json"),
            Some(RelayItem::Integration {
                provider: "github".into()
            })
        );
    }

    #[test]
    fn fs_grants_do_not_reach_relay() {
        let fs_all = ["relayfile:fs:*:*"];
        assert_eq!(v(&fs_all, "/.relay", None, Op::See), Verdict::Hidden);
        assert_eq!(
            v(&fs_all, "/.relay/outbox/pending", None, Op::See),
            Verdict::Hidden
        );
        assert_eq!(
            v(&fs_all, "/.relay/state.json", None, Op::Read),
            Verdict::Hidden
        );
    }

    #[test]
    fn records_follow_ops_read_on_their_path() {
        let s = ["relayfile:ops:read:/github/**"];
        assert_eq!(v(&s, "/.relay", None, Op::See), Verdict::Allow);
        assert_eq!(
            v(&s, "/.relay/outbox/pending", None, Op::See),
            Verdict::Allow
        );
        let rec = "/.relay/outbox/pending/c1.json";
        assert_eq!(v(&s, rec, Some("/github/x"), Op::Read), Verdict::Allow);
        assert_eq!(v(&s, rec, Some("/slack/x"), Op::Read), Verdict::Hidden);
        assert_eq!(v(&s, rec, None, Op::Read), Verdict::Hidden);
        assert_eq!(v(&s, rec, Some("/github/x"), Op::Write), Verdict::Deny);
        assert_eq!(v(&s, rec, Some("/github/x"), Op::Delete), Verdict::Deny);
        assert_eq!(
            v(&s, "/.relay/outbox/pending/new.json", None, Op::Create),
            Verdict::Deny
        );
        assert_eq!(
            v(&["relayfile:fs:*:*"], "/.relay/x", None, Op::Create),
            Verdict::Hidden
        );
        assert_eq!(v(&s, "/.relay/state.json", None, Op::Read), Verdict::Hidden);
        assert_eq!(
            v(&s, "/.relay/.relayauth-mount", None, Op::See),
            Verdict::Hidden
        );
    }

    #[test]
    fn state_needs_sync_read() {
        let s = ["relayfile:sync:read:*"];
        assert_eq!(v(&s, "/.relay/state.json", None, Op::Read), Verdict::Allow);
        assert_eq!(v(&s, "/.relay/state.json", None, Op::Write), Verdict::Deny);
        assert_eq!(v(&s, "/.relay/outbox", None, Op::See), Verdict::Hidden);
        assert_eq!(
            v(&s, "/.relay/permissions-denied.log", None, Op::Read),
            Verdict::Allow
        );
    }
}
