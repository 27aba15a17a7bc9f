//! The issuer's memory: identities, sessions, token records and the audit trail, behind one
//! lock, with the rules that decide whether a token is still good and what a revocation
//! reaches.
//!
//! A token is revoked when its own record is, when its session is, or when its identity is
//! suspended (suspension also revokes the sessions, so the answer does not depend on which is
//! asked). Revoking a session reaches every session delegated from it, transitively: a child's
//! authority is borrowed from its parent. The operations that create things live beside this
//! file (`identities.rs`, `tokens.rs`, `delegation.rs`); this one holds the data, the lookups,
//! revocation and the `state.json` snapshot.

use std::collections::{BTreeSet, HashMap};
use std::io;

use serde::{Deserialize, Serialize};

use super::audit::{AuditEntry, AuditLog};
use super::model::{Identity, Revoked, Session, TokenKind, TokenRecord};

/// The version written to `state.json`.
const SNAPSHOT_VERSION: u32 = 1;

/// Everything the issuer knows.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub identities: HashMap<String, Identity>,
    pub sessions: HashMap<String, Session>,
    pub tokens: HashMap<String, TokenRecord>,
    /// SHA-256 of a refresh token -> its `jti`.
    pub refresh_index: HashMap<String, String>,
    pub audit: AuditLog,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    identities: Vec<Identity>,
    sessions: Vec<Session>,
    tokens: Vec<TokenRecord>,
}

/// Whether a recorded token may still be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenState {
    Active,
    /// Revoked, with the reason (the token's, its session's or its identity's).
    Revoked(String),
    Expired,
    Unknown,
}

impl Store {
    /// The store described by a `state.json` text.
    pub fn from_snapshot(text: &str) -> Result<Store, String> {
        let snap: Snapshot = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(format!(
                "state version {} is not understood (expected {SNAPSHOT_VERSION})",
                snap.version
            ));
        }
        let mut store = Store::default();
        for i in snap.identities {
            store.identities.insert(i.id.clone(), i);
        }
        for s in snap.sessions {
            store.sessions.insert(s.id.clone(), s);
        }
        for t in snap.tokens {
            if let Some(h) = &t.refresh_hash {
                store.refresh_index.insert(h.clone(), t.jti.clone());
            }
            store.tokens.insert(t.jti.clone(), t);
        }
        Ok(store)
    }

    /// The `state.json` text, records in a stable order.
    pub fn snapshot_json(&self) -> io::Result<String> {
        let mut identities: Vec<Identity> = self.identities.values().cloned().collect();
        identities.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let mut sessions: Vec<Session> = self.sessions.values().cloned().collect();
        sessions.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let mut tokens: Vec<TokenRecord> = self.tokens.values().cloned().collect();
        tokens.sort_by(|a, b| (a.issued_at, &a.jti).cmp(&(b.issued_at, &b.jti)));
        let snap = Snapshot {
            version: SNAPSHOT_VERSION,
            identities,
            sessions,
            tokens,
        };
        serde_json::to_string_pretty(&snap).map_err(io::Error::other)
    }

    /// Why the session `sid` is dead, if it is: revoked, or its identity gone or suspended.
    pub fn session_dead(&self, sid: &str) -> Option<String> {
        let Some(session) = self.sessions.get(sid) else {
            return Some(format!("session {sid} is unknown"));
        };
        if let Some(r) = &session.revoked {
            return Some(format!("session {sid} was revoked ({})", r.reason));
        }
        match self.identities.get(&session.identity_id) {
            None => Some(format!("identity {} is unknown", session.identity_id)),
            Some(i) if !i.is_active() => Some(format!(
                "identity {} is suspended ({})",
                i.id,
                i.suspend_reason.as_deref().unwrap_or("no reason given")
            )),
            Some(_) => None,
        }
    }

    /// The state of the recorded token `jti` at `now`.
    pub fn token_state(&self, jti: &str, now: u64) -> TokenState {
        let Some(record) = self.tokens.get(jti) else {
            return TokenState::Unknown;
        };
        if let Some(r) = &record.revoked {
            return TokenState::Revoked(format!("token {jti} was revoked ({})", r.reason));
        }
        if let Some(why) = self.session_dead(&record.session_id) {
            return TokenState::Revoked(why);
        }
        if now >= record.expires_at {
            return TokenState::Expired;
        }
        TokenState::Active
    }

    /// The revocation list's answer: whether `jti` is revoked (`false` for an unknown id).
    pub fn is_revoked(&self, jti: &str) -> bool {
        matches!(self.token_state(jti, 0), TokenState::Revoked(_))
    }

    /// Revoke the session `sid` and every session delegated from it, transitively; one
    /// `token.revoked` audit entry per session newly revoked. Returns how many were.
    pub fn revoke_session_tree(&mut self, sid: &str, reason: &str, now: u64) -> usize {
        let mut seen = BTreeSet::new();
        let mut work = vec![(sid.to_owned(), None::<String>)];
        let mut revoked = 0;
        while let Some((id, via)) = work.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if self.revoke_one_session(&id, reason, via.as_deref(), now) {
                revoked += 1;
            }
            for child in self.children_of_session(&id) {
                work.push((child, Some(id.clone())));
            }
        }
        revoked
    }

    /// Revoke the token `jti` itself, and the sessions delegated from it (transitively).
    pub fn revoke_token(&mut self, jti: &str, reason: &str, now: u64) {
        let Some(record) = self.tokens.get_mut(jti) else {
            return;
        };
        if record.revoked.is_none() {
            record.revoked = Some(Revoked {
                at: now,
                reason: reason.to_owned(),
            });
            let (identity_id, session_id, kind) = (
                record.identity_id.clone(),
                record.session_id.clone(),
                record.kind,
            );
            let entry = self
                .audit_entry_for(&identity_id, "token.revoked", now)
                .meta("tokenId", jti)
                .meta("tokenType", kind.as_str())
                .meta("sessionId", session_id)
                .meta("reason", reason);
            self.audit.record(entry);
        }
        let children: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.parent_token_id.as_deref() == Some(jti))
            .map(|s| s.id.clone())
            .collect();
        for child in children {
            self.revoke_session_tree(&child, reason, now);
        }
    }

    /// The sessions whose parent is `sid` (or a token of it).
    fn children_of_session(&self, sid: &str) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| {
                s.parent_session_id.as_deref() == Some(sid)
                    || s.parent_token_id
                        .as_deref()
                        .and_then(|p| self.tokens.get(p))
                        .is_some_and(|t| t.session_id == sid)
            })
            .map(|s| s.id.clone())
            .collect()
    }

    fn revoke_one_session(&mut self, sid: &str, reason: &str, via: Option<&str>, now: u64) -> bool {
        let Some(session) = self.sessions.get_mut(sid) else {
            return false;
        };
        if session.revoked.is_some() {
            return false;
        }
        session.revoked = Some(Revoked {
            at: now,
            reason: match via {
                Some(parent) => format!("{reason} (delegated from session {parent})"),
                None => reason.to_owned(),
            },
        });
        let identity_id = session.identity_id.clone();
        let mut entry = self
            .audit_entry_for(&identity_id, "token.revoked", now)
            .meta("sessionId", sid)
            .meta("reason", reason);
        if let Some(parent) = via {
            entry = entry.meta("cascadedFrom", parent);
        }
        self.audit.record(entry);
        true
    }

    /// The sessions of the identity `id`.
    pub fn sessions_of(&self, id: &str) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| s.identity_id == id)
            .map(|s| s.id.clone())
            .collect()
    }

    /// An allowed audit entry about the identity `id` (known or not).
    pub fn audit_entry_for(&self, id: &str, action: &str, now: u64) -> AuditEntry {
        let resource = if action.starts_with("identity.") {
            "identities"
        } else {
            "tokens"
        };
        match self.identities.get(id) {
            Some(i) => AuditEntry::about(i, action, resource, true, now),
            None => AuditEntry::new(action, (id, "", ""), resource, true, now),
        }
    }

    /// Record a newly minted token.
    pub fn record_token(&mut self, record: TokenRecord) {
        if record.kind == TokenKind::Refresh
            && let Some(h) = &record.refresh_hash
        {
            self.refresh_index.insert(h.clone(), record.jti.clone());
        }
        self.tokens.insert(record.jti.clone(), record);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::issuer::identities::NewIdentity;
    use crate::issuer::tokens::SessionSpec;

    fn session(store: &mut Store, identity: &str, parent: Option<&str>) -> String {
        store
            .open_session(
                SessionSpec {
                    identity_id: identity.into(),
                    scopes: vec![],
                    audience: vec!["relayfile".into()],
                    access_ttl: 60,
                    refresh_ttl: 60,
                    parent_token_id: None,
                    parent_session_id: parent.map(str::to_owned),
                    not_after: None,
                },
                0,
            )
            .unwrap()
    }

    #[test]
    fn revocation_cascades_down_not_up_and_survives_a_snapshot() {
        let mut store = Store::default();
        let id = store
            .create_identity(
                NewIdentity {
                    name: "lead".into(),
                    org_id: "o".into(),
                    workspace_id: "w".into(),
                    sponsor_id: "s".into(),
                    metadata: Map::new(),
                    ..NewIdentity::default()
                },
                0,
            )
            .unwrap()
            .id;
        let root = session(&mut store, &id, None);
        let child = session(&mut store, &id, Some(&root));
        let grand = session(&mut store, &id, Some(&child));
        let other = session(&mut store, &id, None);
        assert_eq!(store.revoke_session_tree(&child, "test", 5), 2);
        assert!(store.session_dead(&child).is_some() && store.session_dead(&grand).is_some());
        assert!(store.session_dead(&root).is_none() && store.session_dead(&other).is_none());
        assert_eq!(
            store.revoke_session_tree(&child, "again", 6),
            0,
            "idempotent"
        );

        let again = Store::from_snapshot(&store.snapshot_json().unwrap()).unwrap();
        assert!(again.session_dead(&grand).is_some());
        assert!(again.session_dead(&root).is_none());
        assert_eq!(again.identities.len(), 1);
        assert!(
            Store::from_snapshot(
                r#"{"version": 9, "identities": [], "sessions": [], "tokens": []}"#
            )
            .is_err()
        );
    }
}
