//! The issuer's audit trail, in relayauth's audit entry shape (`id`, `action`, `identityId`,
//! `orgId`, `workspaceId`, `plane`, `resource`, `result`, `timestamp`, `metadata`), read back
//! newest first through `GET /v1/audit` with an opaque cursor.
//!
//! `metadata` values are strings, as in relayauth; lists of scopes are space-separated (a scope
//! never contains whitespace).

use std::io;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ids::new_id;
use super::model::{Identity, rfc3339};
use crate::token::{b64url_decode, b64url_encode};

/// Actions this issuer records, plus the rest of relayauth's vocabulary, so that filtering on any
/// of them is accepted.
pub const ACTIONS: &[&str] = &[
    "identity.created",
    "identity.updated",
    "identity.suspended",
    "identity.retired",
    "token.issued",
    "token.refreshed",
    "token.revoked",
    "token.validated",
    "token.reuse_detected",
    "scope.checked",
    "scope.denied",
    "scope.escalation_denied",
    "role.assigned",
    "role.removed",
    "policy.created",
    "policy.updated",
    "policy.deleted",
    "key.rotated",
];

/// Page size of `GET /v1/audit` when no `limit` is given, and the largest accepted.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 200;

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: String,
    pub action: String,
    pub identity_id: String,
    pub org_id: String,
    pub workspace_id: String,
    pub plane: String,
    pub resource: String,
    /// `allowed` or `denied`.
    pub result: String,
    pub timestamp: String,
    pub metadata: Map<String, Value>,
}

impl AuditEntry {
    /// An entry about `identity`.
    pub fn about(
        identity: &Identity,
        action: &str,
        resource: &str,
        allowed: bool,
        now: u64,
    ) -> AuditEntry {
        AuditEntry::new(
            action,
            (&identity.id, &identity.org_id, &identity.workspace_id),
            resource,
            allowed,
            now,
        )
    }

    /// An entry about the identity `(id, org, workspace)`.
    pub fn new(
        action: &str,
        (identity_id, org_id, workspace_id): (&str, &str, &str),
        resource: &str,
        allowed: bool,
        now: u64,
    ) -> AuditEntry {
        AuditEntry {
            id: new_id("aud_").unwrap_or_default(),
            action: action.to_owned(),
            identity_id: identity_id.to_owned(),
            org_id: org_id.to_owned(),
            workspace_id: workspace_id.to_owned(),
            plane: "relayauth".to_owned(),
            resource: resource.to_owned(),
            result: if allowed { "allowed" } else { "denied" }.to_owned(),
            timestamp: rfc3339(now),
            metadata: Map::new(),
        }
    }

    /// The entry with one more metadata member.
    pub fn meta(mut self, key: &str, value: impl Into<String>) -> AuditEntry {
        self.metadata
            .insert(key.to_owned(), Value::String(value.into()));
        self
    }
}

/// What `GET /v1/audit` asks for.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub identity_id: Option<String>,
    pub limit: usize,
    /// Entries strictly older than this position (from a previous page's `nextCursor`).
    pub before: Option<usize>,
}

/// The trail, oldest first; an entry's position is its place in the order.
#[derive(Debug, Default)]
pub struct AuditLog {
    entries: Vec<AuditEntry>,
}

/// A cursor: the position of the last entry of a page, opaque to clients.
pub fn encode_cursor(position: usize) -> String {
    b64url_encode(format!("audit:{position}").as_bytes())
}

/// The position a cursor names, or `None` when it is not one of ours.
pub fn decode_cursor(cursor: &str) -> Option<usize> {
    let bytes = b64url_decode(cursor)?;
    let text = std::str::from_utf8(&bytes).ok()?;
    text.strip_prefix("audit:")?.parse().ok()
}

impl AuditLog {
    pub fn record(&mut self, mut entry: AuditEntry) {
        if entry.id.is_empty() {
            entry.id = format!("aud_{:08}", self.entries.len() + 1);
        }
        self.entries.push(entry);
    }

    /// Put back an entry read from the state directory.
    pub fn restore(&mut self, entry: AuditEntry) {
        self.entries.push(entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entries from position `from` on, as JSON lines.
    pub fn lines_from(&self, from: usize) -> io::Result<String> {
        let mut out = String::new();
        for e in self.entries.iter().skip(from) {
            out.push_str(&serde_json::to_string(e).map_err(io::Error::other)?);
            out.push('\n');
        }
        Ok(out)
    }

    /// One page, newest first, and the cursor of the next page when there is one.
    pub fn query(&self, q: &AuditQuery) -> (Vec<&AuditEntry>, Option<String>) {
        let end = q
            .before
            .unwrap_or(self.entries.len())
            .min(self.entries.len());
        let mut page = Vec::new();
        let mut last = None;
        let mut more = false;
        for (i, e) in self.entries[..end].iter().enumerate().rev() {
            if q.action.as_deref().is_some_and(|a| a != e.action)
                || q.identity_id
                    .as_deref()
                    .is_some_and(|id| id != e.identity_id)
            {
                continue;
            }
            if page.len() == q.limit {
                more = true;
                break;
            }
            page.push(e);
            last = Some(i);
        }
        let next = if more { last.map(encode_cursor) } else { None };
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(actions: &[&str]) -> AuditLog {
        let mut log = AuditLog::default();
        for a in actions {
            log.record(AuditEntry::new(
                a,
                ("agent_1", "org", "ws"),
                "tokens",
                true,
                0,
            ));
        }
        log
    }

    #[test]
    fn cursors_round_trip_and_refuse_foreign_text() {
        assert_eq!(decode_cursor(&encode_cursor(17)), Some(17));
        assert_eq!(decode_cursor("zzz"), None);
        assert_eq!(decode_cursor(&b64url_encode(b"other:1")), None);
        assert_eq!(decode_cursor(""), None);
    }

    #[test]
    fn pages_go_newest_first_and_end() {
        let log = log(&["a", "b", "a", "c", "a"]);
        let q = |action: Option<&str>, limit, before| AuditQuery {
            action: action.map(str::to_owned),
            identity_id: None,
            limit,
            before,
        };
        let (page, next) = log.query(&q(Some("a"), 2, None));
        assert_eq!(page.len(), 2);
        assert!(std::ptr::eq(page[0], &log.entries[4]));
        let cursor = next.expect("a next page");
        let (page, next) = log.query(&q(Some("a"), 2, decode_cursor(&cursor)));
        assert_eq!(page.len(), 1);
        assert!(std::ptr::eq(page[0], &log.entries[0]));
        assert_eq!(next, None);
        let (all, next) = log.query(&q(None, 10, None));
        assert_eq!((all.len(), next), (5, None));
        let (exact, next) = log.query(&q(None, 5, None));
        assert_eq!((exact.len(), next), (5, None), "no empty last page");
        let (none, _) = log.query(&q(None, 5, Some(usize::MAX)));
        assert_eq!(none.len(), 5);
    }
}
