//! Creating and suspending identities.
//!
//! An identity's sponsor chain starts with its human sponsor and ends with its own id. When a
//! chain is given (`sponsorChain`, as in the sample identities), it may name agents by name:
//! the last element may be the new identity's own name (it becomes its id), and an element that
//! names exactly one known identity of the same org and workspace becomes that identity's id, so
//! `["user_alice", "acme-lead", "review-bot"]` reads as what it says. The element before the
//! identity's own id, when it is a known identity, is its parent: that is the identity a later
//! delegation by that parent with the same agent name reuses.
//!
//! Names are unique per org, workspace and parent: creating a second `acme-lead` in `ws_acme`
//! is a conflict (409), while two leads may each delegate to their own `helper`.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::audit::AuditEntry;
use super::error::{ApiError, ApiResult};
use super::ids::new_id;
use super::model::{Identity, Status};
use super::store::Store;
use crate::token::verify::MAX_SPONSOR_CHAIN;

/// Longest accepted name, id or sponsor, in bytes.
pub const MAX_NAME: usize = 256;
/// Most scopes an identity or a token may carry, and the longest scope.
pub const MAX_SCOPES: usize = 256;
pub const MAX_SCOPE_LEN: usize = 1024;

/// A request to create an identity.
#[derive(Clone, Debug, Default)]
pub struct NewIdentity {
    pub name: String,
    pub org_id: String,
    pub workspace_id: String,
    pub sponsor_id: String,
    pub scopes: Vec<String>,
    pub sponsor_chain: Option<Vec<String>>,
    pub metadata: Map<String, Value>,
}

/// A required short text: trimmed, non-empty, no control characters, at most [`MAX_NAME`].
pub fn check_text(field: &str, value: &str) -> ApiResult<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::invalid(format!(
            "{field} must be a non-empty string"
        )));
    }
    if v.len() > MAX_NAME {
        return Err(ApiError::invalid(format!(
            "{field} is {} bytes, over the {MAX_NAME}-byte limit",
            v.len()
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(v.to_owned())
}

/// A scope list: at most [`MAX_SCOPES`] non-empty strings without whitespace, trimmed. Scopes
/// that are invalid under the path contract are accepted here (an identity may carry one, and
/// the mount reports it); whether they are granted is decided elsewhere.
pub fn check_scopes(field: &str, scopes: &[String]) -> ApiResult<Vec<String>> {
    if scopes.len() > MAX_SCOPES {
        return Err(ApiError::invalid(format!(
            "{field} has {} scopes, over the limit of {MAX_SCOPES}",
            scopes.len()
        )));
    }
    scopes
        .iter()
        .map(|s| {
            let t = s.trim();
            if t.is_empty() || t.len() > MAX_SCOPE_LEN || t.chars().any(char::is_whitespace) {
                Err(ApiError::invalid(format!(
                    "{field} holds {:?}: a scope is a non-empty string without whitespace of at most {MAX_SCOPE_LEN} bytes",
                    s.chars().take(80).collect::<String>()
                )))
            } else {
                Ok(t.to_owned())
            }
        })
        .collect()
}

/// A creation request, validated, with its chain resolved (without the new id yet).
struct Prepared {
    req: NewIdentity,
    /// The chain before the identity's own id.
    chain_head: Vec<String>,
    parent: Option<String>,
}

impl Store {
    fn prepare(&self, req: NewIdentity) -> ApiResult<Prepared> {
        let mut req = req;
        req.name = check_text("name", &req.name)?;
        req.org_id = check_text("orgId", &req.org_id)?;
        req.workspace_id = check_text("workspaceId", &req.workspace_id)?;
        req.sponsor_id = check_text("sponsorId", &req.sponsor_id)?;
        req.scopes = check_scopes("scopes", &req.scopes)?;
        let mut head = match &req.sponsor_chain {
            None => vec![req.sponsor_id.clone()],
            Some(chain) => {
                let mut chain = chain
                    .iter()
                    .map(|e| check_text("sponsorChain element", e))
                    .collect::<ApiResult<Vec<String>>>()?;
                if chain.first() != Some(&req.sponsor_id) {
                    return Err(ApiError::invalid(format!(
                        "sponsorChain must start with the sponsor {:?}",
                        req.sponsor_id
                    )));
                }
                if chain.len() > 1 && chain.last() == Some(&req.name) {
                    chain.pop();
                }
                chain
            }
        };
        if head.len() + 1 > MAX_SPONSOR_CHAIN {
            return Err(ApiError::invalid(format!(
                "sponsorChain would have {} elements; the limit is {MAX_SPONSOR_CHAIN}",
                head.len() + 1
            )));
        }
        for element in head.iter_mut().skip(1) {
            if self.identities.contains_key(element.as_str()) {
                continue;
            }
            let named: Vec<&Identity> = self
                .identities
                .values()
                .filter(|i| {
                    i.name == *element
                        && i.org_id == req.org_id
                        && i.workspace_id == req.workspace_id
                })
                .collect();
            if let [one] = named.as_slice() {
                *element = one.id.clone();
            }
        }
        let parent = head
            .last()
            .filter(|p| head.len() > 1 && self.identities.contains_key(p.as_str()))
            .cloned();
        Ok(Prepared {
            req,
            chain_head: head,
            parent,
        })
    }

    /// The identity named `name` under `parent` in `org`/`workspace`.
    pub fn find_identity(
        &self,
        org: &str,
        workspace: &str,
        parent: Option<&str>,
        name: &str,
    ) -> Option<&Identity> {
        let mut found: Vec<&Identity> = self
            .identities
            .values()
            .filter(|i| {
                i.name == name
                    && i.org_id == org
                    && i.workspace_id == workspace
                    && i.parent_identity_id.as_deref() == parent
            })
            .collect();
        found.sort_by_key(|i| (i.created_at, i.id.clone()));
        found.first().copied()
    }

    fn insert_identity(&mut self, p: Prepared, created_by: &str, now: u64) -> ApiResult<Identity> {
        let id = new_id("agent_").ok_or_else(|| ApiError::internal("no randomness for an id"))?;
        let mut chain = p.chain_head;
        chain.push(id.clone());
        let identity = Identity {
            id: id.clone(),
            name: p.req.name,
            org_id: p.req.org_id,
            workspace_id: p.req.workspace_id,
            sponsor_id: p.req.sponsor_id,
            sponsor_chain: chain,
            scopes: p.req.scopes,
            metadata: p.req.metadata,
            status: Status::Active,
            parent_identity_id: p.parent,
            created_at: now,
            updated_at: now,
            suspended_at: None,
            suspend_reason: None,
        };
        let entry = AuditEntry::about(&identity, "identity.created", "identities", true, now)
            .meta("name", identity.name.clone())
            .meta("sponsorId", identity.sponsor_id.clone())
            .meta("sponsorChain", identity.sponsor_chain.join(" "))
            .meta("scopes", identity.scopes.join(" "))
            .meta("createdBy", created_by);
        self.audit.record(entry);
        self.identities.insert(id, identity.clone());
        Ok(identity)
    }

    /// `POST /v1/identities`: a new identity; 409 when one with that name exists here.
    pub fn create_identity(&mut self, req: NewIdentity, now: u64) -> ApiResult<Identity> {
        let p = self.prepare(req)?;
        if let Some(existing) = self.find_identity(
            &p.req.org_id,
            &p.req.workspace_id,
            p.parent.as_deref(),
            &p.req.name,
        ) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "an identity named {:?} already exists in {}/{} ({}); names are unique per org, workspace and parent",
                    existing.name, existing.org_id, existing.workspace_id, existing.id
                ),
            )
            .with("id", existing.id.clone()));
        }
        self.insert_identity(p, "admin", now)
    }

    /// The identity of a seed entry: the existing one with that name and place, or a new one.
    pub fn ensure_identity(&mut self, req: NewIdentity, now: u64) -> ApiResult<Identity> {
        let p = self.prepare(req)?;
        if let Some(existing) = self.find_identity(
            &p.req.org_id,
            &p.req.workspace_id,
            p.parent.as_deref(),
            &p.req.name,
        ) {
            return Ok(existing.clone());
        }
        self.insert_identity(p, "seed", now)
    }

    /// A child identity created by a delegation: `chain_head` is the parent's chain.
    pub fn create_child_identity(
        &mut self,
        req: NewIdentity,
        chain_head: Vec<String>,
        parent: &str,
        now: u64,
    ) -> ApiResult<Identity> {
        let p = Prepared {
            req,
            chain_head,
            parent: Some(parent.to_owned()),
        };
        self.insert_identity(p, "delegation", now)
    }

    /// `POST /v1/identities/{id}/suspend`: suspend it and revoke all its sessions (and what
    /// was delegated from them).
    pub fn suspend_identity(&mut self, id: &str, reason: &str, now: u64) -> ApiResult<Identity> {
        let reason = check_text("reason", reason)?;
        let Some(identity) = self.identities.get_mut(id) else {
            return Err(ApiError::identity_not_found(id));
        };
        if identity.status == Status::Active {
            identity.status = Status::Suspended;
            identity.suspended_at = Some(now);
            identity.suspend_reason = Some(reason.clone());
            identity.updated_at = now;
            let entry = AuditEntry::about(identity, "identity.suspended", "identities", true, now)
                .meta("reason", reason.clone());
            self.audit.record(entry);
        }
        let why = format!("identity {id} suspended: {reason}");
        for sid in self.sessions_of(id) {
            self.revoke_session_tree(&sid, &why, now);
        }
        self.identities
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::identity_not_found(id))
    }
}
