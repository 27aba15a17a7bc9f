//! Keys, claims and verifiers for the token tests. Every key is generated when a test binary
//! starts; none is stored.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use relayauth_mount::token::keys::jwks_document;
use relayauth_mount::token::{JwksCache, Signer, SigningKey, Verifier, VerifierConfig};
use serde_json::{Value, json};

pub const WORKSPACE: &str = "ws_acme";
pub const ORG: &str = "org_acme";
pub const SPONSOR: &str = "user_alice";
pub const AGENT: &str = "agent_coder";

/// One Ed25519 and one RSA signer, shared by the tests of a binary.
pub struct Keys {
    pub ed: Signer,
    pub rsa: Signer,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        ed: Signer::new(SigningKey::generate_ed25519().expect("generate Ed25519")),
        rsa: Signer::new(SigningKey::generate_rsa().expect("generate RSA")),
    })
}

/// A JWKS document with the public halves of `signers`.
pub fn jwks_json(signers: &[&Signer]) -> String {
    jwks_document(signers.iter().map(|s| s.key())).to_string()
}

/// Whole seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The instant `secs` seconds after the epoch.
pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Valid access-token claims issued at `iat` for one hour.
pub fn claims_at(iat: u64) -> Value {
    json!({
        "sub": AGENT,
        "org": ORG,
        "wks": WORKSPACE,
        "scopes": ["relayfile:fs:read:/github/**", "relayfile:fs:write:/github/repos/acme/*"],
        "sponsorId": SPONSOR,
        "sponsorChain": [SPONSOR, AGENT],
        "aud": ["relayfile"],
        "iss": "https://relayauth.dev",
        "exp": iat + 3600,
        "iat": iat,
        "jti": "tok_0001",
        "sid": "sess_0001",
        "token_type": "access",
        "meta": {"agentName": "coder"}
    })
}

/// Valid claims issued a minute ago.
pub fn claims() -> Value {
    claims_at(now_secs() - 60)
}

/// The mount configuration the tests verify against.
pub fn config() -> VerifierConfig {
    VerifierConfig {
        org: Some(ORG.into()),
        ..VerifierConfig::new(WORKSPACE)
    }
}

/// A verifier trusting `signers`, with [`config`].
pub fn verifier_for(signers: &[&Signer]) -> Verifier {
    verifier_with(signers, config())
}

pub fn verifier_with(signers: &[&Signer], config: VerifierConfig) -> Verifier {
    let cache = JwksCache::from_json(&jwks_json(signers)).expect("test JWKS loads");
    Verifier::new(config, Arc::new(cache))
}

/// A verifier trusting both test keys.
pub fn verifier() -> Verifier {
    let k = keys();
    verifier_for(&[&k.ed, &k.rsa])
}

/// Base64url without padding.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode base64url without padding.
pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .expect("base64url")
}
