//! `POST /v1/tokens/delegate`: a token holder hands a narrower token to a sub-agent.
//!
//! The parent presents its own access token (verified and checked for revocation before this
//! runs). The child gets only the requested scopes, which must be within the parent's by the
//! scope engine's containment ([`crate::scope::within`]; a scope invalid under the path
//! contract is never within anything); otherwise the request is refused with 403
//! `scope_escalation` naming the offending scopes, and audited as `scope.escalation_denied`.
//!
//! On success the child is an identity under the parent (reused when the parent already
//! delegated to that agent name, else created), with the parent's sponsor chain extended by the
//! child's id; its tokens carry `parentTokenId` (the parent's `jti`), a new `sid` linked to the
//! parent's session (revoking the parent session revokes the child's), the parent's audience,
//! and expire no later than the parent token.

use serde_json::Map;

use super::audit::AuditEntry;
use super::error::{ApiError, ApiResult};
use super::identities::{NewIdentity, check_scopes, check_text};
use super::model::Identity;
use super::store::Store;
use super::tokens::{
    Minter, Pair, SessionSpec, access_ttl, recorded_refresh_ttl, refresh_ttl, suspended,
};
use crate::scope::within;
use crate::token::VerifiedToken;
use crate::token::verify::MAX_SPONSOR_CHAIN;
use axum::http::StatusCode;

/// `POST /v1/tokens/delegate`'s body, typed.
#[derive(Clone, Debug, Default)]
pub struct DelegateRequest {
    pub agent_name: String,
    pub requested_scopes: Vec<String>,
    pub ttl_seconds: Option<u64>,
    pub refresh_ttl: Option<u64>,
}

/// A delegation's result: the child's pair and identity, and the scopes granted.
pub struct Delegated {
    pub pair: Pair,
    pub child: Identity,
    pub scopes: Vec<String>,
}

impl Store {
    /// Delegate from the verified, live `parent` token.
    pub fn delegate(
        &mut self,
        m: &Minter<'_>,
        parent: &VerifiedToken,
        req: DelegateRequest,
        now: u64,
    ) -> ApiResult<Delegated> {
        let agent_name = check_text("agentName", &req.agent_name)?;
        let scopes = check_scopes("requestedScopes", &req.requested_scopes)?;
        if scopes.is_empty() {
            return Err(ApiError::invalid(
                "requestedScopes must list at least one scope",
            ));
        }
        let ttl = access_ttl("ttlSeconds", req.ttl_seconds)?;
        let claims = parent.claims();
        let parent_identity = self
            .identities
            .get(&claims.sub)
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("the parent token's identity is unknown"))?;

        let check = within(&scopes, &claims.scopes);
        let refused = check.refused();
        if !refused.is_empty() {
            let mut entry = AuditEntry::about(
                &parent_identity,
                "scope.escalation_denied",
                "scopes",
                false,
                now,
            )
            .meta("offending", refused.join(" "))
            .meta("requestedScopes", scopes.join(" "))
            .meta("agentName", agent_name.clone())
            .meta("parentTokenId", claims.jti.clone());
            if !check.invalid.is_empty() {
                entry = entry.meta("invalid", check.invalid.join(" "));
            }
            self.audit.record(entry);
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "scope_escalation",
                format!(
                    "the parent token does not hold {}; a delegated token gets only scopes within its parent's",
                    refused.join(", ")
                ),
            )
            .with("offending", refused));
        }

        let chain_head = claims.sponsor_chain.clone();
        if chain_head.len() + 1 > MAX_SPONSOR_CHAIN {
            return Err(ApiError::invalid(format!(
                "delegation chain exceeds maximum depth: the child's sponsor chain would have {} elements (limit {MAX_SPONSOR_CHAIN})",
                chain_head.len() + 1
            )));
        }
        let refresh = match req.refresh_ttl {
            Some(_) => refresh_ttl("refreshTokenTtlSeconds", req.refresh_ttl)?,
            None => claims
                .meta
                .as_ref()
                .and_then(|m| m.as_object())
                .map(recorded_refresh_ttl)
                .unwrap_or_else(|| recorded_refresh_ttl(&Map::new())),
        };

        let existing = self
            .identities
            .values()
            .filter(|i| {
                i.name == agent_name
                    && i.org_id == parent_identity.org_id
                    && i.workspace_id == parent_identity.workspace_id
                    && i.parent_identity_id.as_deref() == Some(parent_identity.id.as_str())
                    && i.sponsor_chain.split_last().map(|(_, head)| head) == Some(&chain_head[..])
            })
            .min_by_key(|i| (i.created_at, i.id.clone()))
            .cloned();
        let child = match existing {
            Some(child) if !child.is_active() => return Err(suspended(&child)),
            Some(child) => child,
            None => self.create_child_identity(
                NewIdentity {
                    name: agent_name.clone(),
                    org_id: parent_identity.org_id.clone(),
                    workspace_id: parent_identity.workspace_id.clone(),
                    sponsor_id: parent_identity.sponsor_id.clone(),
                    scopes: scopes.clone(),
                    sponsor_chain: None,
                    metadata: Map::new(),
                },
                chain_head,
                &parent_identity.id,
                now,
            )?,
        };

        let spec = SessionSpec {
            identity_id: child.id.clone(),
            scopes: scopes.clone(),
            audience: claims.aud.0.clone(),
            access_ttl: ttl,
            refresh_ttl: refresh,
            parent_token_id: Some(claims.jti.clone()),
            parent_session_id: Some(parent.session_id().to_owned()),
            not_after: Some(claims.exp),
        };
        let sid = self.open_session(spec, now)?;
        let pair = self.mint_pair(m, &sid, now)?;
        let entry = AuditEntry::about(&child, "token.issued", "tokens", true, now)
            .meta("tokenId", pair.access_jti.clone())
            .meta("sessionId", sid)
            .meta("scopes", scopes.join(" "))
            .meta("parentTokenId", claims.jti.clone())
            .meta("parentSessionId", parent.session_id().to_owned())
            .meta("delegatedBy", parent_identity.id.clone());
        self.audit.record(entry);
        Ok(Delegated {
            pair,
            child,
            scopes,
        })
    }
}
