//! What the issuer remembers: identities, sessions and the tokens minted in them, with their
//! revocations. These are also the records of `state.json`, so their serialized form is a file
//! format: fields are only ever added, with defaults.
//!
//! Times are whole seconds since the epoch here; the API shows them as RFC 3339.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::token::time::format_rfc3339;
use crate::token::time::from_unix;

/// RFC 3339 (UTC, whole seconds) of a time in seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    format_rfc3339(from_unix(secs))
}

/// `active` or `suspended`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Suspended,
}

/// An agent identity.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub workspace_id: String,
    pub sponsor_id: String,
    /// From the sponsor to this identity's id.
    pub sponsor_chain: Vec<String>,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    pub status: Status,
    /// The identity whose delegation created this one (or, for a created identity, the one
    /// before it in its sponsor chain, when that is a known identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_identity_id: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_reason: Option<String>,
}

impl Identity {
    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }

    /// relayauth's identity shape (camelCase, RFC 3339 times).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "type": "agent",
            "orgId": self.org_id,
            "workspaceId": self.workspace_id,
            "sponsorId": self.sponsor_id,
            "sponsorChain": self.sponsor_chain,
            "status": self.status,
            "scopes": self.scopes,
            "roles": [],
            "metadata": self.metadata,
            "createdAt": rfc3339(self.created_at),
            "updatedAt": rfc3339(self.updated_at),
        });
        if let Value::Object(m) = &mut v {
            if let Some(p) = &self.parent_identity_id {
                m.insert("parentIdentityId".into(), json!(p));
            }
            if let Some(t) = self.suspended_at {
                m.insert("suspendedAt".into(), json!(rfc3339(t)));
            }
            if let Some(r) = &self.suspend_reason {
                m.insert("suspendReason".into(), json!(r));
            }
        }
        v
    }
}

/// When and why something was revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub at: u64,
    pub reason: String,
}

/// A session: one chain of token pairs linked by refresh rotation, under one `sid`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub id: String,
    pub identity_id: String,
    /// The scopes of every access token of the session (a refresh never widens them).
    pub scopes: Vec<String>,
    pub audience: Vec<String>,
    /// Lifetime of each access token, seconds.
    pub access_ttl: u64,
    /// `meta` of every token of the session; `meta.refreshTokenTtl` is the refresh lifetime.
    pub meta: Map<String, Value>,
    /// The token this session was delegated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_token_id: Option<String>,
    /// The session of that token: revoking it revokes this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_session_id: Option<String>,
    /// A delegated session never outlives its parent token: no token expires after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revoked>,
}

/// `access` or `refresh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::Refresh => "refresh",
        }
    }
}

/// One minted token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub jti: String,
    pub kind: TokenKind,
    pub session_id: String,
    pub identity_id: String,
    pub issued_at: u64,
    pub expires_at: u64,
    /// SHA-256 (hex) of a refresh token, by which it is found when presented. The token itself
    /// is never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_hash: Option<String>,
    /// When a refresh token was rotated: presenting it again is a reuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revoked>,
}
