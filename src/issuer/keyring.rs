//! The issuer's two signing keys, an RSA-2048 (RS256) and an Ed25519 (EdDSA) key, both always
//! published in the JWKS so a verifier can be tested against either, and one chosen to sign.
//!
//! With a state directory the keys are kept as PKCS#8 PEM (mode 0600) and reused at the next
//! start, so tokens minted before a restart still verify and the `kid`s (RFC 7638 thumbprints)
//! do not change. Without one they are generated at every start.

use std::sync::Arc;

use serde_json::Value;

use super::error::StartError;
use super::persist::{KEYS_DIR, StateDir};
use crate::token::keys::jwks_document;
use crate::token::{JwksCache, KeyAlgorithm, Signer, SigningKey};

/// Both keys and the signer of the chosen one.
#[derive(Debug)]
pub(crate) struct Keyring {
    rsa: Arc<SigningKey>,
    ed25519: Arc<SigningKey>,
    signer: Signer,
    jwks: Value,
    jwks_cache: Arc<JwksCache>,
}

fn key_file(algorithm: KeyAlgorithm) -> String {
    match algorithm {
        KeyAlgorithm::Rs256 => format!("{KEYS_DIR}/rs256.pem"),
        KeyAlgorithm::EdDsa => format!("{KEYS_DIR}/ed25519.pem"),
    }
}

fn generate(algorithm: KeyAlgorithm) -> Result<SigningKey, StartError> {
    match algorithm {
        KeyAlgorithm::Rs256 => SigningKey::generate_rsa(),
        KeyAlgorithm::EdDsa => SigningKey::generate_ed25519(),
    }
    .map_err(|e| StartError::Keys(e.to_string()))
}

/// The key for `algorithm` from `dir`, or a new one (written to `dir` when there is one).
fn load_or_generate(
    dir: Option<&StateDir>,
    algorithm: KeyAlgorithm,
) -> Result<SigningKey, StartError> {
    let Some(dir) = dir else {
        return generate(algorithm);
    };
    let name = key_file(algorithm);
    if let Some(pem) = dir.read_optional(&name)? {
        let key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| StartError::Keys(format!("{}: {e}", dir.path(&name).display())))?;
        if key.algorithm() != algorithm {
            return Err(StartError::Keys(format!(
                "{} holds a {} key, expected {algorithm}",
                dir.path(&name).display(),
                key.algorithm()
            )));
        }
        return Ok(key);
    }
    let key = generate(algorithm)?;
    let pem = format!(
        "# relayauth-mount dev-issuer {algorithm} signing key (development only, kid {})\n{}",
        key.kid(),
        key.to_pkcs8_pem()
    );
    dir.write_atomic(&name, pem.as_bytes()).map_err(|e| {
        StartError::Keys(format!("cannot write {}: {e}", dir.path(&name).display()))
    })?;
    Ok(key)
}

impl Keyring {
    pub fn open(dir: Option<&StateDir>, algorithm: KeyAlgorithm) -> Result<Keyring, StartError> {
        let rsa = Arc::new(load_or_generate(dir, KeyAlgorithm::Rs256)?);
        let ed25519 = Arc::new(load_or_generate(dir, KeyAlgorithm::EdDsa)?);
        let signing = match algorithm {
            KeyAlgorithm::Rs256 => rsa.clone(),
            KeyAlgorithm::EdDsa => ed25519.clone(),
        };
        let jwks = jwks_document([&*rsa, &*ed25519]);
        let jwks_cache = Arc::new(
            JwksCache::from_json(&jwks.to_string())
                .map_err(|e| StartError::Keys(format!("own JWKS refused: {e}")))?,
        );
        Ok(Keyring {
            rsa,
            ed25519,
            signer: Signer::from_arc(signing),
            jwks,
            jwks_cache,
        })
    }

    /// The signer of the chosen key.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// `{"keys": [RSA, Ed25519]}`.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The same keys as a verifier's key set.
    pub fn jwks_cache(&self) -> &Arc<JwksCache> {
        &self.jwks_cache
    }

    /// The `kid` of each key: (RSA, Ed25519).
    pub fn kids(&self) -> (&str, &str) {
        (self.rsa.kid(), self.ed25519.kid())
    }
}
