//! The running issuer's shared state: configuration, keys, the store and its state directory,
//! and the credential checks every endpoint starts with.
//!
//! Credentials: admin calls need the admin key in `x-api-key` (compared in constant time).
//! Token holders present an access token as `Authorization: Bearer`; it counts only when the
//! project's [`Verifier`] accepts it (signature by one of this issuer's keys, `iss`, audience
//! `relayfile`, not expired) and the store says it is live (its token, session and identity are
//! neither revoked nor suspended, and the issuer minted it).

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use parking_lot::Mutex;
use serde_json::Value;

use super::config::IssuerConfig;
use super::error::{ApiError, ApiResult, StartError};
use super::ids::secret_eq;
use super::keyring::Keyring;
use super::model::TokenKind;
use super::persist::{Persister, StateDir};
use super::store::{Store, TokenState};
use super::tokens::Minter;
use crate::scope::within;
use crate::token::time::unix_seconds;
use crate::token::{KeyAlgorithm, VerifiedToken, Verifier, VerifierConfig, b64url_decode};

/// The scope that lets a token holder use introspection and the revocation list.
pub const TOKEN_READ_SCOPE: &str = "relayauth:token:read:*";

/// A development issuer's state, shared by all requests.
#[derive(Debug)]
pub struct Issuer {
    iss: String,
    admin_key: String,
    algorithm: KeyAlgorithm,
    state_dir: Option<PathBuf>,
    keys: Keyring,
    pub(crate) store: Mutex<Store>,
    persister: Option<Persister>,
    seeded: BTreeMap<String, String>,
}

/// Seconds since the epoch of `t` (0 before it).
pub(crate) fn secs(t: SystemTime) -> u64 {
    u64::try_from(unix_seconds(t)).unwrap_or(0)
}

/// The workspace a token names, read without verifying it: the verifier needs to be told
/// which workspace to expect, and this issuer serves all of them. The signature is checked
/// right after, so a forged value gains nothing.
fn peek_workspace(raw: &str) -> String {
    let payload = raw.split('.').nth(1).and_then(b64url_decode);
    let claims: Option<Value> = payload.and_then(|p| serde_json::from_slice(&p).ok());
    claims
        .as_ref()
        .and_then(|c| c.get("wks").or_else(|| c.get("workspace_id")))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn header_safe(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic())
}

impl Issuer {
    /// Open the state directory (if any), load or make the keys, load the store and apply the
    /// seed. Blocking: file I/O and key generation.
    pub fn open(config: &IssuerConfig) -> Result<Issuer, StartError> {
        if !header_safe(&config.admin_key) {
            return Err(StartError::Config(
                "the admin key must be non-empty printable ASCII without spaces (it travels in the x-api-key header)".into(),
            ));
        }
        if config.issuer.trim().is_empty() {
            return Err(StartError::Config(
                "the issuer string (--iss) is empty".into(),
            ));
        }
        let dir = config
            .state_dir
            .as_deref()
            .map(StateDir::open)
            .transpose()?;
        let keys = Keyring::open(dir.as_ref(), config.algorithm)?;
        let (persister, mut store) = match dir {
            Some(dir) => {
                let (p, s) = Persister::load(dir)?;
                (Some(p), s)
            }
            None => (None, Store::default()),
        };
        let seeded = match &config.seed {
            Some(seed) => store.apply_seed(seed, secs(SystemTime::now()))?,
            None => BTreeMap::new(),
        };
        let issuer = Issuer {
            iss: config.issuer.clone(),
            admin_key: config.admin_key.clone(),
            algorithm: config.algorithm,
            state_dir: config.state_dir.clone(),
            keys,
            store: Mutex::new(store),
            persister,
            seeded,
        };
        issuer.flush_blocking().map_err(|e| StartError::State {
            path: config
                .state_dir
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            message: e.to_string(),
        })?;
        Ok(issuer)
    }

    /// The `iss` of minted tokens.
    pub fn iss(&self) -> &str {
        &self.iss
    }

    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    pub fn state_dir(&self) -> Option<&std::path::Path> {
        self.state_dir.as_deref()
    }

    /// The JWKS document (both keys).
    pub fn jwks(&self) -> &Value {
        self.keys.jwks()
    }

    /// The kids: (RSA, Ed25519).
    pub fn kids(&self) -> (&str, &str) {
        self.keys.kids()
    }

    /// `name -> id` of the seeded identities.
    pub fn seeded(&self) -> &BTreeMap<String, String> {
        &self.seeded
    }

    pub(crate) fn minter(&self) -> Minter<'_> {
        Minter {
            signer: self.keys.signer(),
            iss: &self.iss,
        }
    }

    /// Write the state directory (no-op without one). Blocking.
    pub fn flush_blocking(&self) -> io::Result<()> {
        match &self.persister {
            Some(p) => p.flush(&self.store),
            None => Ok(()),
        }
    }

    /// Write the state directory off the async workers; a failure is a 500, since the change
    /// it would have kept across a restart is not kept.
    pub(crate) async fn flush(self: &Arc<Self>) -> ApiResult<()> {
        if self.persister.is_none() {
            return Ok(());
        }
        let me = self.clone();
        let failed = match tokio::task::spawn_blocking(move || me.flush_blocking()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        eprintln!("relayauth-mount dev-issuer: error: cannot write the state directory: {failed}");
        Err(ApiError::internal(format!(
            "the change was made in memory but the state directory could not be written ({failed}); it will not survive a restart"
        )))
    }

    /// Verify `raw` as a live access token of this issuer.
    pub(crate) fn check_access_token(
        &self,
        store: &Store,
        raw: &str,
        now: SystemTime,
    ) -> Result<VerifiedToken, String> {
        let raw = raw.trim();
        let config = VerifierConfig {
            issuer: self.iss.clone(),
            workspace: peek_workspace(raw),
            org: None,
            leeway: Duration::ZERO,
        };
        let token = Verifier::new(config, self.keys.jwks_cache().clone())
            .verify(raw, now)
            .map_err(|e| e.to_string())?;
        let jti = token.token_id();
        match store.token_state(jti, secs(now)) {
            TokenState::Active => {}
            TokenState::Revoked(why) => return Err(format!("revoked: {why}")),
            TokenState::Expired => return Err("token_expired: the token has expired".into()),
            TokenState::Unknown => {
                return Err(format!(
                    "invalid_token: this issuer has no record of token {jti}"
                ));
            }
        }
        match store.tokens.get(jti) {
            Some(r) if r.kind == TokenKind::Access && r.identity_id == token.subject() => Ok(token),
            _ => Err(format!(
                "invalid_token: token {jti} is not an access token of {}",
                token.subject()
            )),
        }
    }

    /// 401 unless `x-api-key` holds the admin key.
    pub(crate) fn require_admin(&self, headers: &HeaderMap) -> ApiResult<()> {
        match headers.get("x-api-key") {
            None => Err(ApiError::unauthorized(
                "this call needs the admin key in the x-api-key header (printed when the issuer started)",
            )),
            Some(v) => {
                let given = std::str::from_utf8(v.as_bytes()).unwrap_or_default();
                if secret_eq(given, &self.admin_key) {
                    Ok(())
                } else {
                    Err(ApiError::unauthorized(
                        "the x-api-key header does not hold the admin key",
                    ))
                }
            }
        }
    }

    /// The bearer token of `Authorization`, if the header is there (401 when it is malformed).
    pub(crate) fn bearer(headers: &HeaderMap) -> ApiResult<Option<&str>> {
        let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Ok(None);
        };
        let text = v
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
        match text.split_once(' ') {
            Some((scheme, token))
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
            {
                Ok(Some(token.trim()))
            }
            _ => Err(ApiError::unauthorized(
                "the Authorization header must be `Bearer <access token>`",
            )),
        }
    }

    /// The live access token presented as bearer (401 when missing, invalid or revoked).
    pub(crate) fn require_bearer(
        &self,
        store: &Store,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> ApiResult<VerifiedToken> {
        let raw = Issuer::bearer(headers)?.ok_or_else(|| {
            ApiError::unauthorized("this call needs an access token: Authorization: Bearer <token>")
        })?;
        self.check_access_token(store, raw, now).map_err(|why| {
            ApiError::unauthorized(format!("the bearer token is not accepted: {why}"))
        })
    }

    /// Introspection and the revocation list: the admin key, or a live bearer token with
    /// [`TOKEN_READ_SCOPE`] (401 for a bad or revoked credential, 403 for a live token without
    /// the scope: the `probe` revocation strategy reads exactly that difference).
    pub(crate) fn require_token_reader(
        &self,
        store: &Store,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> ApiResult<()> {
        if headers.contains_key("x-api-key") {
            return self.require_admin(headers);
        }
        if Issuer::bearer(headers)?.is_none() {
            return Err(ApiError::unauthorized(format!(
                "send the admin key (x-api-key) or a bearer access token with {TOKEN_READ_SCOPE}"
            )));
        }
        let token = self.require_bearer(store, headers, now)?;
        if within([TOKEN_READ_SCOPE], &token.claims().scopes).within {
            Ok(())
        } else {
            Err(ApiError::insufficient_scope(format!(
                "the bearer token is valid but lacks {TOKEN_READ_SCOPE}"
            ))
            .with("required", TOKEN_READ_SCOPE))
        }
    }
}
