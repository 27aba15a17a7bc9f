//! Minting token pairs, in sessions: `POST /v1/tokens` (a new session for an identity) and
//! `POST /v1/tokens/refresh` (single-use rotation within a session).
//!
//! Every pair is an access token and a refresh token, both JWTs signed by the chosen key, with
//! the same `sid`, `parentTokenId` and `meta`. The access token carries exactly the claims of
//! DESIGN section 5; the refresh token carries `token_type: refresh`, the audience `relayauth`
//! and the single scope `relayauth:token:refresh`, so no relayfile verifier accepts it.
//!
//! Lifetimes: an access token lives `expiresIn` seconds (default 1 h, at most 90 days); a
//! refresh token `refreshTokenTtlSeconds` (default 24 h, capped at 90 days), recorded as
//! `meta.refreshTokenTtl` (seconds, as a string: relayauth's `meta` is string-valued) and
//! re-applied at every rotation, as is the access lifetime. A session delegated from another
//! token never mints a token that outlives that parent token (`delegationNotAfter`).
//!
//! Rotation is single-use: the presented refresh token is marked used, and presenting it again
//! is a reuse, which revokes the whole session (and what was delegated from it) and is audited
//! as `token.reuse_detected`. The issuer keeps only SHA-256 digests of refresh tokens.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::audit::AuditEntry;
use super::error::{ApiError, ApiResult};
use super::identities::check_scopes;
use super::ids::{new_id, sha256_hex};
use super::model::{Identity, Session, TokenKind, TokenRecord, rfc3339};
use super::store::Store;
use crate::scope::within;
use crate::token::{MAX_TOKEN_BYTES, RELAYFILE_AUDIENCE, Signer};

/// Access token lifetime when `expiresIn` is not given.
pub const DEFAULT_ACCESS_TTL: u64 = 3600;
/// Longest access token lifetime accepted.
pub const MAX_ACCESS_TTL: u64 = 90 * 86_400;
/// Refresh token lifetime when `refreshTokenTtlSeconds` is not given.
pub const DEFAULT_REFRESH_TTL: u64 = 86_400;
/// Refresh token lifetimes above this are capped to it.
pub const MAX_REFRESH_TTL: u64 = 90 * 86_400;
/// The scope and audience of refresh tokens.
pub const REFRESH_SCOPE: &str = "relayauth:token:refresh";
pub const REFRESH_AUDIENCE: &str = "relayauth";

/// What signs, and the `iss` it puts in tokens.
pub struct Minter<'a> {
    pub signer: &'a Signer,
    pub iss: &'a str,
}

/// A minted pair.
#[derive(Clone, Debug)]
pub struct Pair {
    pub access_token: String,
    pub refresh_token: String,
    pub access_expires_at: u64,
    pub refresh_expires_at: u64,
    pub access_jti: String,
    pub session_id: String,
    pub identity_id: String,
    pub not_after: Option<u64>,
}

impl Pair {
    /// relayauth's token pair shape, plus `delegationNotAfter` for a delegated session.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "accessToken": self.access_token,
            "refreshToken": self.refresh_token,
            "accessTokenExpiresAt": rfc3339(self.access_expires_at),
            "refreshTokenExpiresAt": rfc3339(self.refresh_expires_at),
            "tokenType": "Bearer",
        });
        if let (Some(t), Value::Object(m)) = (self.not_after, &mut v) {
            m.insert("delegationNotAfter".into(), json!(rfc3339(t)));
        }
        v
    }
}

/// A new session's settings.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    pub identity_id: String,
    pub scopes: Vec<String>,
    pub audience: Vec<String>,
    pub access_ttl: u64,
    pub refresh_ttl: u64,
    pub parent_token_id: Option<String>,
    pub parent_session_id: Option<String>,
    pub not_after: Option<u64>,
}

/// `POST /v1/tokens`, validated types but not yet checked against the identity.
#[derive(Clone, Debug, Default)]
pub struct IssueRequest {
    pub identity_id: String,
    pub scopes: Option<Vec<String>>,
    pub audience: Option<Vec<String>>,
    pub expires_in: Option<u64>,
    pub refresh_ttl: Option<u64>,
}

/// The access lifetime asked for: 1 s to [`MAX_ACCESS_TTL`]; `field` names it in errors.
pub fn access_ttl(field: &str, asked: Option<u64>) -> ApiResult<u64> {
    match asked {
        None => Ok(DEFAULT_ACCESS_TTL),
        Some(0) => Err(ApiError::invalid(format!(
            "{field} must be at least 1 second"
        ))),
        Some(t) if t > MAX_ACCESS_TTL => Err(ApiError::invalid(format!(
            "{field} is {t} seconds, over the limit of {MAX_ACCESS_TTL} (90 days)"
        ))),
        Some(t) => Ok(t),
    }
}

/// The refresh lifetime asked for: at least 1 s, capped at [`MAX_REFRESH_TTL`].
pub fn refresh_ttl(field: &str, asked: Option<u64>) -> ApiResult<u64> {
    match asked {
        None => Ok(DEFAULT_REFRESH_TTL),
        Some(0) => Err(ApiError::invalid(format!(
            "{field} must be at least 1 second"
        ))),
        Some(t) => Ok(t.min(MAX_REFRESH_TTL)),
    }
}

/// The refresh lifetime recorded in a session's `meta.refreshTokenTtl` (a string or a number
/// of seconds), capped; the default when it is missing or unreadable.
pub fn recorded_refresh_ttl(meta: &Map<String, Value>) -> u64 {
    let ttl = match meta.get("refreshTokenTtl") {
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    ttl.filter(|t| *t > 0)
        .unwrap_or(DEFAULT_REFRESH_TTL)
        .min(MAX_REFRESH_TTL)
}

/// An audience list that names `relayfile`: this issuer mints for relayfile mounts only.
pub fn check_audience(audience: Option<Vec<String>>) -> ApiResult<Vec<String>> {
    let Some(audience) = audience else {
        return Ok(vec![RELAYFILE_AUDIENCE.to_owned()]);
    };
    let audience = check_scopes("audience", &audience)?;
    if !audience.iter().any(|a| a == RELAYFILE_AUDIENCE) {
        return Err(ApiError::invalid(format!(
            "audience must include {RELAYFILE_AUDIENCE:?}: this development issuer mints tokens for relayfile mounts (its own endpoints accept no others)"
        )));
    }
    Ok(audience)
}

/// 403 `identity_suspended`.
pub fn suspended(identity: &Identity) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "identity_suspended",
        format!(
            "identity {} is suspended ({}); a suspended identity gets no tokens",
            identity.id,
            identity
                .suspend_reason
                .as_deref()
                .unwrap_or("no reason given")
        ),
    )
}

fn refresh_error(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

#[allow(clippy::too_many_arguments)]
fn claims(
    identity: &Identity,
    session: &Session,
    kind: TokenKind,
    jti: &str,
    iat: u64,
    exp: u64,
    iss: &str,
) -> Value {
    let (scopes, aud) = match kind {
        TokenKind::Access => (session.scopes.clone(), session.audience.clone()),
        TokenKind::Refresh => (
            vec![REFRESH_SCOPE.to_owned()],
            vec![REFRESH_AUDIENCE.to_owned()],
        ),
    };
    let mut c = Map::new();
    c.insert("sub".into(), json!(identity.id));
    c.insert("org".into(), json!(identity.org_id));
    c.insert("wks".into(), json!(identity.workspace_id));
    c.insert("scopes".into(), json!(scopes));
    c.insert("sponsorId".into(), json!(identity.sponsor_id));
    c.insert("sponsorChain".into(), json!(identity.sponsor_chain));
    c.insert("aud".into(), json!(aud));
    c.insert("exp".into(), json!(exp));
    c.insert("iat".into(), json!(iat));
    c.insert("nbf".into(), json!(iat));
    c.insert("jti".into(), json!(jti));
    c.insert("sid".into(), json!(session.id));
    if let Some(p) = &session.parent_token_id {
        c.insert("parentTokenId".into(), json!(p));
    }
    c.insert("token_type".into(), json!(kind.as_str()));
    c.insert("meta".into(), Value::Object(session.meta.clone()));
    c.insert("iss".into(), json!(iss));
    Value::Object(c)
}

impl Store {
    /// Open a session for `spec.identity_id`; returns its id.
    pub fn open_session(&mut self, spec: SessionSpec, now: u64) -> ApiResult<String> {
        let id = new_id("sess_").ok_or_else(|| ApiError::internal("no randomness for an id"))?;
        let mut meta = Map::new();
        meta.insert(
            "refreshTokenTtl".into(),
            Value::String(spec.refresh_ttl.min(MAX_REFRESH_TTL).to_string()),
        );
        self.sessions.insert(
            id.clone(),
            Session {
                id: id.clone(),
                identity_id: spec.identity_id,
                scopes: spec.scopes,
                audience: spec.audience,
                access_ttl: spec.access_ttl,
                meta,
                parent_token_id: spec.parent_token_id,
                parent_session_id: spec.parent_session_id,
                not_after: spec.not_after,
                created_at: now,
                revoked: None,
            },
        );
        Ok(id)
    }

    /// Mint and record a pair in the session `sid`.
    pub fn mint_pair(&mut self, m: &Minter<'_>, sid: &str, now: u64) -> ApiResult<Pair> {
        let session = self
            .sessions
            .get(sid)
            .ok_or_else(|| ApiError::internal(format!("session {sid} vanished")))?;
        let identity = self
            .identities
            .get(&session.identity_id)
            .ok_or_else(|| ApiError::identity_not_found(&session.identity_id))?;
        let cap = session.not_after.unwrap_or(u64::MAX);
        if now >= cap {
            return Err(refresh_error(
                "delegation_expired",
                format!(
                    "the token this session was delegated from expired at {}; ask the parent for a new delegation",
                    rfc3339(cap)
                ),
            ));
        }
        let access_exp = now.saturating_add(session.access_ttl).min(cap);
        let refresh_exp = now
            .saturating_add(recorded_refresh_ttl(&session.meta))
            .min(cap);
        let no_id = || ApiError::internal("no randomness for a token id");
        let access_jti = new_id("tok_").ok_or_else(no_id)?;
        let refresh_jti = new_id("tok_").ok_or_else(no_id)?;
        let sign = |kind, jti: &str, exp| {
            m.signer
                .sign(&claims(identity, session, kind, jti, now, exp, m.iss))
                .map_err(|e| ApiError::internal(format!("cannot sign a token: {e}")))
        };
        let access_token = sign(TokenKind::Access, &access_jti, access_exp)?;
        let refresh_token = sign(TokenKind::Refresh, &refresh_jti, refresh_exp)?;
        let pair = Pair {
            access_token,
            refresh_token,
            access_expires_at: access_exp,
            refresh_expires_at: refresh_exp,
            access_jti: access_jti.clone(),
            session_id: sid.to_owned(),
            identity_id: identity.id.clone(),
            not_after: session.not_after,
        };
        let record = |jti: String, kind, exp, hash| TokenRecord {
            jti,
            kind,
            session_id: sid.to_owned(),
            identity_id: pair.identity_id.clone(),
            issued_at: now,
            expires_at: exp,
            refresh_hash: hash,
            used_at: None,
            revoked: None,
        };
        let access = record(access_jti, TokenKind::Access, access_exp, None);
        let refresh = record(
            refresh_jti,
            TokenKind::Refresh,
            refresh_exp,
            Some(sha256_hex(&pair.refresh_token)),
        );
        self.record_token(access);
        self.record_token(refresh);
        Ok(pair)
    }

    /// `POST /v1/tokens`: a new session and its first pair for an identity.
    pub fn issue(&mut self, m: &Minter<'_>, req: IssueRequest, now: u64) -> ApiResult<Pair> {
        let identity = self
            .identities
            .get(req.identity_id.trim())
            .ok_or_else(|| ApiError::identity_not_found(req.identity_id.trim()))?
            .clone();
        if !identity.is_active() {
            return Err(suspended(&identity));
        }
        let scopes = match req.scopes {
            None => identity.scopes.clone(),
            Some(asked) => {
                let asked = check_scopes("scopes", &asked)?;
                if asked.is_empty() {
                    return Err(ApiError::invalid(
                        "scopes is empty; omit it to get the identity's scopes",
                    ));
                }
                // A scope the identity holds word for word is always grantable (even one that
                // grants nothing under the path contract); any other must be within them.
                let others: Vec<&String> = asked
                    .iter()
                    .filter(|s| !identity.scopes.contains(s))
                    .collect();
                let refused = within(&others, &identity.scopes).refused();
                if !refused.is_empty() {
                    return Err(ApiError::insufficient_scope(format!(
                        "identity {} does not hold {}; a token gets only scopes within its identity's",
                        identity.id,
                        refused.join(", ")
                    ))
                    .with("offending", refused));
                }
                asked
            }
        };
        let scope_list = scopes.join(" ");
        let spec = SessionSpec {
            identity_id: identity.id.clone(),
            scopes,
            audience: check_audience(req.audience)?,
            access_ttl: access_ttl("expiresIn", req.expires_in)?,
            refresh_ttl: refresh_ttl("refreshTokenTtlSeconds", req.refresh_ttl)?,
            parent_token_id: None,
            parent_session_id: None,
            not_after: None,
        };
        let sid = self.open_session(spec, now)?;
        let pair = self.mint_pair(m, &sid, now)?;
        let entry = AuditEntry::about(&identity, "token.issued", "tokens", true, now)
            .meta("tokenId", pair.access_jti.clone())
            .meta("sessionId", sid.clone())
            .meta("scopes", scope_list);
        self.audit.record(entry);
        Ok(pair)
    }

    /// `POST /v1/tokens/refresh`: rotate the pair of the session the refresh token belongs to.
    pub fn refresh(&mut self, m: &Minter<'_>, presented: &str, now: u64) -> ApiResult<Pair> {
        let presented = presented.trim();
        if presented.is_empty() {
            return Err(ApiError::invalid("refreshToken must be a non-empty string"));
        }
        let unknown = || {
            refresh_error(
                "invalid_token",
                "not a refresh token issued by this issuer (or its state was not kept: start it with --state DIR)",
            )
        };
        if presented.len() > MAX_TOKEN_BYTES {
            return Err(unknown());
        }
        let jti = self
            .refresh_index
            .get(&sha256_hex(presented))
            .cloned()
            .ok_or_else(unknown)?;
        let record = self.tokens.get(&jti).cloned().ok_or_else(unknown)?;
        let sid = record.session_id.clone();

        if let Some(used) = record.used_at {
            let reason = format!("refresh token {jti} was presented again after rotation");
            self.revoke_session_tree(&sid, &reason, now);
            let mut entry = self
                .audit_entry_for(&record.identity_id, "token.reuse_detected", now)
                .meta("tokenId", jti.clone())
                .meta("sessionId", sid.clone())
                .meta("rotatedAt", rfc3339(used));
            entry.result = "denied".into();
            self.audit.record(entry);
            return Err(refresh_error(
                "refresh_token_reused",
                format!(
                    "refresh token reuse detected: it was already rotated at {}; every token of session {sid} is now revoked",
                    rfc3339(used)
                ),
            ));
        }
        match self.identities.get(&record.identity_id) {
            Some(i) if i.is_active() => {}
            _ => return Err(ApiError::identity_not_found(&record.identity_id)),
        }
        if let Some(r) = &record.revoked {
            return Err(refresh_error(
                "token_revoked",
                format!("this refresh token was revoked ({})", r.reason),
            ));
        }
        if let Some(why) = self.session_dead(&sid) {
            return Err(refresh_error("session_revoked", why));
        }
        if now >= record.expires_at {
            return Err(refresh_error(
                "token_expired",
                format!(
                    "this refresh token expired at {}; mint a new pair",
                    rfc3339(record.expires_at)
                ),
            ));
        }
        let pair = self.mint_pair(m, &sid, now)?;
        if let Some(r) = self.tokens.get_mut(&jti) {
            r.used_at = Some(now);
        }
        let entry = self
            .audit_entry_for(&record.identity_id, "token.refreshed", now)
            .meta("tokenId", pair.access_jti.clone())
            .meta("previousTokenId", jti)
            .meta("sessionId", sid);
        self.audit.record(entry);
        Ok(pair)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_default_cap_and_refuse_zero() {
        assert_eq!(access_ttl("x", None).unwrap(), DEFAULT_ACCESS_TTL);
        assert_eq!(access_ttl("x", Some(60)).unwrap(), 60);
        assert!(access_ttl("x", Some(0)).is_err());
        assert!(access_ttl("x", Some(MAX_ACCESS_TTL + 1)).is_err());
        assert_eq!(refresh_ttl("x", None).unwrap(), DEFAULT_REFRESH_TTL);
        assert_eq!(refresh_ttl("x", Some(u64::MAX)).unwrap(), MAX_REFRESH_TTL);
        assert!(refresh_ttl("x", Some(0)).is_err());
    }

    #[test]
    fn recorded_refresh_ttl_reads_strings_and_numbers() {
        let meta = |v: Value| {
            let mut m = Map::new();
            m.insert("refreshTokenTtl".into(), v);
            m
        };
        assert_eq!(recorded_refresh_ttl(&meta(json!("7200"))), 7200);
        assert_eq!(recorded_refresh_ttl(&meta(json!(7200))), 7200);
        assert_eq!(
            recorded_refresh_ttl(&meta(json!("999999999"))),
            MAX_REFRESH_TTL
        );
        for junk in [json!("soon"), json!(-1), json!(0), json!(null), json!(1.5)] {
            assert_eq!(recorded_refresh_ttl(&meta(junk)), DEFAULT_REFRESH_TTL);
        }
        assert_eq!(recorded_refresh_ttl(&Map::new()), DEFAULT_REFRESH_TTL);
    }

    #[test]
    fn audience_must_name_relayfile() {
        assert_eq!(check_audience(None).unwrap(), ["relayfile"]);
        assert!(check_audience(Some(vec!["relayauth".into()])).is_err());
        assert!(check_audience(Some(vec![])).is_err());
        assert_eq!(
            check_audience(Some(vec!["relayfile".into(), "x".into()])).unwrap(),
            ["relayfile", "x"]
        );
    }
}
