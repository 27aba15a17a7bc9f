//! Verifying relayauth access tokens (DESIGN section 5), and [`VerifiedToken`], the proof that
//! it happened.
//!
//! The order of the checks is part of the contract, because it decides which code a token with
//! several faults gets:
//!
//! 1. Size: over [`MAX_TOKEN_BYTES`] is refused before anything is parsed.
//! 2. Shape: an optional `relay_ag_`/`relay_pa_`/`relay_id_` prefix is stripped (the original
//!    string is kept for anything sent back to relayauth); exactly three base64url segments.
//! 3. Header: `alg` is `RS256` or `EdDSA` exactly (`none` in any spelling and every HMAC are
//!    refused), `kid` is required, `typ` is `JWT` when present, `crit` is refused (no extension is
//!    understood). Key-carrying headers (`jwk`, `jku`, `x5u`, `x5c`) are never read.
//! 4. Key: `kid` is looked up in the configured JWKS only (`unknown_key` when absent); the key's
//!    type must fit `alg` (an RSA key never verifies an EdDSA token and the reverse).
//! 5. Signature, before any claim is read.
//! 6. Claims, typed strictly; then `sub`/`jti`/`sponsorChain` well-formed (`invalid_token`),
//!    `token_type` is `access` (`wrong_token_type`), `iss` (`wrong_issuer`), `aud` contains
//!    `relayfile` (`wrong_audience`), `exp` (`token_expired`), `nbf` and `iat`
//!    (`token_not_yet_valid`), workspace (`wrong_workspace`), org (`wrong_org`).
//!
//! `exp`, `nbf` and `iat` allow the configured leeway (default 30 s) for clock skew, but local
//! enforcement ends at `exp` itself: see [`VerifiedToken::is_expired`].
//!
//! [`Verifier::verify`] reads only memory and is synchronous, so a FUSE thread can call it;
//! [`Verifier::verify_fresh`] may refetch the JWKS first (stale cache, or an unknown `kid`,
//! rate-limited by the cache).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use super::b64url_decode;
use super::claims::Claims;
use super::error::{TokenError, TokenErrorCode};
use super::jwks::{JwksCache, KeyKind};
use super::keys::KeyAlgorithm;
use super::time::{expiry_words, format_rfc3339, from_unix, words};
use crate::scope::ScopeSet;

/// The issuer accepted unless configured otherwise.
pub const DEFAULT_ISSUER: &str = "https://relayauth.dev";
/// The audience an access token must name to be used on relayfile paths.
pub const RELAYFILE_AUDIENCE: &str = "relayfile";
/// Tokens longer than this are refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// The longest sponsor chain accepted.
pub const MAX_SPONSOR_CHAIN: usize = 10;
/// The last second of the year 9999 (UTC): the latest time a claim may name.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;
/// Prefixes relayauth puts on JWT access tokens.
const JWT_PREFIXES: [&str; 3] = ["relay_ag_", "relay_pa_", "relay_id_"];

/// What a token must match on this mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierConfig {
    /// The accepted `iss` (default [`DEFAULT_ISSUER`]).
    pub issuer: String,
    /// The mount's workspace: `wks` (or `workspace_id`) must equal it.
    pub workspace: String,
    /// The mount's org, when configured: `org` must equal it.
    pub org: Option<String>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat` (default 30 s).
    pub leeway: Duration,
}

impl Default for VerifierConfig {
    /// Issuer [`DEFAULT_ISSUER`], no org, 30 s leeway, and no workspace: set one, since a
    /// configuration without a workspace refuses every token (`wrong_workspace`).
    fn default() -> VerifierConfig {
        VerifierConfig::new("")
    }
}

impl VerifierConfig {
    /// The defaults for a workspace: issuer [`DEFAULT_ISSUER`], no org, 30 s leeway.
    pub fn new(workspace: impl Into<String>) -> VerifierConfig {
        VerifierConfig {
            issuer: DEFAULT_ISSUER.to_owned(),
            workspace: workspace.into(),
            org: None,
            leeway: Duration::from_secs(30),
        }
    }
}

/// Checks tokens against one key set and one configuration.
#[derive(Debug)]
pub struct Verifier {
    config: VerifierConfig,
    keys: Arc<JwksCache>,
}

/// A token that passed every check of [`Verifier::verify`]. It can only be made there: the
/// fields are private, and there is no constructor, `Default` or `Deserialize`.
#[derive(Clone)]
pub struct VerifiedToken {
    raw: String,
    claims: Claims,
    scopes: Arc<ScopeSet>,
    kid: String,
    algorithm: KeyAlgorithm,
}

impl fmt::Debug for VerifiedToken {
    // The raw token is a bearer credential: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("sub", &self.claims.sub)
            .field("jti", &self.claims.jti)
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("exp", &self.claims.exp)
            .finish_non_exhaustive()
    }
}

impl VerifiedToken {
    /// The token exactly as presented, including any `relay_ag_`-style prefix.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The token's scopes, compiled.
    pub fn scopes(&self) -> &Arc<ScopeSet> {
        &self.scopes
    }

    /// The agent (`sub`).
    pub fn subject(&self) -> &str {
        &self.claims.sub
    }

    pub fn org(&self) -> &str {
        &self.claims.org
    }

    /// The workspace (`wks`, or `workspace_id`); verification guarantees there is one.
    pub fn workspace(&self) -> &str {
        self.claims.workspace().unwrap_or_default()
    }

    pub fn sponsor_id(&self) -> &str {
        &self.claims.sponsor_id
    }

    /// From the sponsor to the agent.
    pub fn sponsor_chain(&self) -> &[String] {
        &self.claims.sponsor_chain
    }

    /// The token id (`jti`).
    pub fn token_id(&self) -> &str {
        &self.claims.jti
    }

    /// The session id (`sid`), or the token id when the token has none.
    pub fn session_id(&self) -> &str {
        self.claims.sid.as_deref().unwrap_or(&self.claims.jti)
    }

    pub fn parent_token_id(&self) -> Option<&str> {
        self.claims.parent_token_id.as_deref()
    }

    pub fn expires_at(&self) -> SystemTime {
        from_unix(self.claims.exp)
    }

    pub fn issued_at(&self) -> SystemTime {
        from_unix(self.claims.iat)
    }

    /// Whether the token has expired at `now`, without leeway: local enforcement ends at `exp`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at()
    }

    /// The `kid` of the key that signed the token.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
}

/// The JOSE header, as far as the verifier reads it. Duplicate members are refused.
#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<Value>,
}

/// A refusal, with the `kid` when the refusal was `unknown_key` (so a caller can refetch).
struct Refusal {
    error: TokenError,
    unknown_kid: Option<String>,
}

impl From<TokenError> for Refusal {
    fn from(error: TokenError) -> Refusal {
        Refusal {
            error,
            unknown_kid: None,
        }
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    TokenError::invalid(message).into()
}

fn refuse(code: TokenErrorCode, message: impl Into<String>) -> Refusal {
    TokenError::new(code, message).into()
}

impl Verifier {
    pub fn new(config: VerifierConfig, keys: Arc<JwksCache>) -> Verifier {
        Verifier { config, keys }
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    pub fn keys(&self) -> &Arc<JwksCache> {
        &self.keys
    }

    /// Verify `token` at `now` with the keys in memory. Never touches the network.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<VerifiedToken, TokenError> {
        self.check(token, now).map_err(|r| r.error)
    }

    /// Verify `token` now, first refetching the JWKS when it is stale, and once more (rate
    /// limited by the cache) when the token names a `kid` the set does not have.
    pub async fn verify_fresh(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        if let Err(e) = self.keys.refresh_if_stale().await {
            tracing::warn!("keeping the JWKS keys already known: {e}");
        }
        match self.check(token, SystemTime::now()) {
            Ok(t) => Ok(t),
            Err(Refusal {
                unknown_kid: Some(kid),
                error,
            }) => {
                if self.keys.refetch_for_unknown_kid(&kid).await {
                    self.verify(token, SystemTime::now())
                } else {
                    Err(error)
                }
            }
            Err(r) => Err(r.error),
        }
    }

    fn check(&self, token: &str, now: SystemTime) -> Result<VerifiedToken, Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid(format!(
                "the token is {} bytes, over the {MAX_TOKEN_BYTES}-byte limit; it was refused without being parsed",
                token.len()
            )));
        }
        let jwt = strip_prefix(token)?;
        let segments: Vec<&str> = jwt.split('.').collect();
        match segments.len() {
            3 => {}
            5 => {
                return Err(invalid(
                    "the token has 5 segments, the shape of an encrypted JWE; relayauth access tokens are signed JWS tokens with 3 segments",
                ));
            }
            n => {
                return Err(invalid(format!(
                    "a JWT has 3 dot-separated segments (header.payload.signature), this token has {n}"
                )));
            }
        }
        let (h64, p64, s64) = (segments[0], segments[1], segments[2]);
        if h64.is_empty() {
            return Err(invalid("the header segment is empty"));
        }
        let header_bytes = b64url_decode(h64)
            .ok_or_else(|| invalid("the header segment is not base64url (without padding)"))?;
        let header: Header = serde_json::from_slice(&header_bytes)
            .map_err(|e| invalid(format!("the header is not a valid JOSE header: {e}")))?;

        let algorithm = match header.alg.as_deref() {
            Some("RS256") => KeyAlgorithm::Rs256,
            Some("EdDSA") => KeyAlgorithm::EdDsa,
            Some(a) if a.eq_ignore_ascii_case("none") => {
                return Err(invalid(format!(
                    "alg {a:?} means an unsigned token, which is never accepted; relayauth tokens are RS256 or EdDSA"
                )));
            }
            Some(a) if a.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) => {
                return Err(invalid(format!(
                    "alg {a} is an HMAC (shared-secret) algorithm, which is never accepted; relayauth tokens are RS256 or EdDSA"
                )));
            }
            Some(a) => {
                return Err(invalid(format!(
                    "alg {a:?} is not accepted; relayauth tokens are RS256 or EdDSA"
                )));
            }
            None => return Err(invalid("the header has no alg")),
        };
        if let Some(typ) = &header.typ
            && !typ.eq_ignore_ascii_case("JWT")
            && !typ.eq_ignore_ascii_case("application/jwt")
        {
            return Err(invalid(format!(
                "the header's typ is {typ:?}; an access token's typ is \"JWT\""
            )));
        }
        if header.crit.is_some() {
            return Err(invalid(
                "the header has a crit member; no JWS extension is understood here, so the token is refused",
            ));
        }
        let kid = match header.kid {
            Some(k) if !k.is_empty() => k,
            _ => {
                return Err(invalid(
                    "the header has no kid; relayauth tokens name their signing key with kid",
                ));
            }
        };
        let Some(key) = self.keys.key(&kid) else {
            let shown: String = kid.chars().take(80).collect();
            return Err(Refusal {
                error: TokenError::new(
                    TokenErrorCode::UnknownKey,
                    format!(
                        "no key with kid {shown:?} in the JWKS ({}); the token was signed by a key this mount does not trust, or relayauth rotated its keys and the JWKS should be refetched",
                        self.keys.source()
                    ),
                ),
                unknown_kid: Some(kid),
            });
        };
        let fits = matches!(
            (algorithm, key.kind),
            (KeyAlgorithm::Rs256, KeyKind::Rsa { .. }) | (KeyAlgorithm::EdDsa, KeyKind::Ed25519)
        );
        if !fits {
            return Err(invalid(format!(
                "the header says {algorithm} but kid {kid:?} is {}; the token is refused",
                key.kind
            )));
        }
        if s64.is_empty() {
            return Err(invalid("the signature segment is empty"));
        }
        if b64url_decode(s64).is_none() {
            return Err(invalid(
                "the signature segment is not base64url (without padding)",
            ));
        }
        let message_len = h64.len() + 1 + p64.len();
        let message = &jwt.as_bytes()[..message_len];
        let good = jsonwebtoken::crypto::verify(s64, message, &key.decoding, key.kind.algorithm())
            .unwrap_or(false);
        if !good {
            return Err(invalid(format!(
                "the signature does not verify with key {kid:?}: the token was altered or not signed by that key"
            )));
        }

        let payload = b64url_decode(p64)
            .ok_or_else(|| invalid("the payload segment is not base64url (without padding)"))?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|e| invalid(describe_claims_error(&payload, &e)))?;
        self.check_claims(&claims, now)?;

        let scopes = Arc::new(ScopeSet::new(&claims.scopes));
        Ok(VerifiedToken {
            raw: token.to_owned(),
            claims,
            scopes,
            kid,
            algorithm,
        })
    }

    fn check_claims(&self, c: &Claims, now: SystemTime) -> Result<(), Refusal> {
        let cfg = &self.config;
        if c.sub.is_empty() {
            return Err(invalid("claim sub is empty"));
        }
        if c.jti.is_empty() {
            return Err(invalid("claim jti is empty"));
        }
        if c.sponsor_id.is_empty() {
            return Err(invalid("claim sponsorId is empty"));
        }
        check_sponsor_chain(c)?;

        if c.token_type != "access" {
            let what = if c.token_type.is_empty() {
                "the token has no token_type claim".to_owned()
            } else {
                format!("token_type is {:?}", c.token_type)
            };
            return Err(refuse(
                TokenErrorCode::WrongTokenType,
                format!(
                    "{what}; only access tokens are accepted (a refresh token is only ever sent to relayauth's refresh endpoint)"
                ),
            ));
        }
        if c.iss != cfg.issuer {
            let what = if c.iss.is_empty() {
                "the token has no iss claim".to_owned()
            } else {
                format!("the token was issued by {:?}", c.iss)
            };
            return Err(refuse(
                TokenErrorCode::WrongIssuer,
                format!(
                    "{what}, not by the configured issuer {:?} (set --issuer if this issuer is the right one)",
                    cfg.issuer
                ),
            ));
        }
        if !c.aud.contains(RELAYFILE_AUDIENCE) {
            let what = if c.aud.is_empty() {
                "the token has no aud claim".to_owned()
            } else {
                format!("the token's audience is [{}]", c.aud)
            };
            return Err(refuse(
                TokenErrorCode::WrongAudience,
                format!(
                    "{what}; a token used on relayfile paths must name the audience {RELAYFILE_AUDIENCE:?}"
                ),
            ));
        }

        // Times past the year 9999 are not dates anyone means (often milliseconds where seconds
        // belong), and no RFC 3339 rendering downstream could show them.
        for (name, value) in [("exp", Some(c.exp)), ("iat", Some(c.iat)), ("nbf", c.nbf)] {
            if value.is_some_and(|v| v > MAX_NUMERIC_DATE) {
                return Err(refuse(
                    TokenErrorCode::InvalidToken,
                    format!(
                        "the token's {name} ({}) lies after the year 9999; NumericDate claims are seconds since 1970, not milliseconds",
                        value.unwrap_or_default()
                    ),
                ));
            }
        }
        let leeway = cfg.leeway;
        let exp = from_unix(c.exp);
        let expired = exp.checked_add(leeway).is_none_or(|limit| now >= limit);
        if expired {
            return Err(refuse(
                TokenErrorCode::TokenExpired,
                format!(
                    "the token {} (at {}, leeway {}); get a new one (refresh it or ask the issuer)",
                    expiry_words(exp, now),
                    format_rfc3339(exp),
                    words(leeway)
                ),
            ));
        }
        let horizon = now.checked_add(leeway);
        if let Some(nbf) = c.nbf {
            let nbf = from_unix(nbf);
            if horizon.is_none_or(|h| nbf > h) {
                return Err(refuse(
                    TokenErrorCode::TokenNotYetValid,
                    format!(
                        "the token is not valid before {} ({} from now, beyond the {} leeway); check this machine's clock",
                        format_rfc3339(nbf),
                        words(nbf.duration_since(now).unwrap_or_default()),
                        words(leeway)
                    ),
                ));
            }
        }
        let iat = from_unix(c.iat);
        if horizon.is_none_or(|h| iat > h) {
            return Err(refuse(
                TokenErrorCode::TokenNotYetValid,
                format!(
                    "the token claims to be issued at {}, {} in the future (beyond the {} leeway); check this machine's clock",
                    format_rfc3339(iat),
                    words(iat.duration_since(now).unwrap_or_default()),
                    words(leeway)
                ),
            ));
        }

        if let (Some(w), Some(id)) = (&c.wks, &c.workspace_id)
            && w != id
        {
            return Err(invalid(format!(
                "claims wks ({w:?}) and workspace_id ({id:?}) disagree"
            )));
        }
        match c.workspace() {
            None | Some("") => {
                return Err(refuse(
                    TokenErrorCode::WrongWorkspace,
                    format!(
                        "the token names no workspace (wks); this mount serves workspace {:?}",
                        cfg.workspace
                    ),
                ));
            }
            Some(w) if w != cfg.workspace => {
                return Err(refuse(
                    TokenErrorCode::WrongWorkspace,
                    format!(
                        "the token is for workspace {w:?}, this mount serves workspace {:?}; use a token issued for this workspace",
                        cfg.workspace
                    ),
                ));
            }
            Some(_) => {}
        }
        match &cfg.org {
            Some(org) if &c.org != org => {
                let what = if c.org.is_empty() {
                    "the token names no org".to_owned()
                } else {
                    format!("the token belongs to org {:?}", c.org)
                };
                return Err(refuse(
                    TokenErrorCode::WrongOrg,
                    format!("{what}, this mount's org is {org:?}"),
                ));
            }
            None if c.org.is_empty() => return Err(invalid("claim org is missing or empty")),
            _ => {}
        }
        Ok(())
    }
}

fn strip_prefix(token: &str) -> Result<&str, Refusal> {
    if token.starts_with("relay_ws_") {
        return Err(invalid(
            "relay_ws_ tokens are opaque workspace API keys, not JWT access tokens; use an access token (relay_ag_..., relay_pa_... or a JWT)",
        ));
    }
    if token
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
    {
        return Err(invalid(
            "the token starts with \"Bearer \"; give the token alone, without the HTTP scheme",
        ));
    }
    Ok(JWT_PREFIXES
        .iter()
        .find_map(|p| token.strip_prefix(p))
        .unwrap_or(token))
}

fn check_sponsor_chain(c: &Claims) -> Result<(), Refusal> {
    let chain = &c.sponsor_chain;
    let (Some(first), Some(last)) = (chain.first(), chain.last()) else {
        return Err(invalid(
            "sponsorChain is empty; it must run from the sponsor (sponsorId) to the agent (sub)",
        ));
    };
    if chain.len() > MAX_SPONSOR_CHAIN {
        return Err(invalid(format!(
            "sponsorChain has {} entries, more than the {MAX_SPONSOR_CHAIN} allowed",
            chain.len()
        )));
    }
    if first != &c.sponsor_id {
        return Err(invalid(format!(
            "sponsorChain starts with {first:?}, not with the sponsor {:?} (sponsorId)",
            c.sponsor_id
        )));
    }
    if last != &c.sub {
        return Err(invalid(format!(
            "sponsorChain ends with {last:?}, not with the agent {:?} (sub)",
            c.sub
        )));
    }
    Ok(())
}

/// Say which claim is malformed, in words, when the typed parse fails.
fn describe_claims_error(payload: &[u8], err: &serde_json::Error) -> String {
    let Ok(value) = serde_json::from_slice::<Value>(payload) else {
        return format!("the payload is not valid JSON: {err}");
    };
    let Some(obj) = value.as_object() else {
        return "the payload is not a JSON object of claims".into();
    };
    for name in [
        "sub",
        "sponsorId",
        "sponsorChain",
        "scopes",
        "exp",
        "iat",
        "jti",
    ] {
        if !obj.contains_key(name) {
            return format!("required claim {name} is missing");
        }
    }
    let is_time = |v: &Value| v.as_u64().is_some();
    let is_str_list = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    for (name, v) in obj {
        let problem = match name.as_str() {
            "exp" | "iat" | "nbf" if !(is_time(v) || (name == "nbf" && v.is_null())) => {
                Some("a whole, non-negative number of seconds since the epoch")
            }
            "sub" | "jti" | "sponsorId" | "iss" | "token_type" | "org" if !v.is_string() => {
                Some("a string")
            }
            "wks" | "workspace_id" | "sid" | "parentTokenId" if !v.is_string() && !v.is_null() => {
                Some("a string")
            }
            "sponsorChain" if !is_str_list(v) => Some("an array of strings"),
            "aud" if !v.is_string() && !is_str_list(v) => Some("a string or an array of strings"),
            "scopes" if !v.is_string() && !is_str_list(v) => {
                Some("an array of strings or one space-separated string")
            }
            _ => None,
        };
        if let Some(expected) = problem {
            return format!("claim {name} must be {expected}, not {}", json_kind(v));
        }
    }
    format!("the claims are malformed: {err}")
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(n) if n.is_i64() && n.as_i64().is_some_and(|i| i < 0) => "a negative number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
