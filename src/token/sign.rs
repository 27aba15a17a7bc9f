//! Signing tokens: the compact JWS form relayauth issues (`header.payload.signature`,
//! base64url without padding), RS256 or EdDSA by the key's type, with the key's `kid` and
//! `typ: JWT` in the header.
//!
//! The development issuer mints with this; the tests use it to make valid tokens and, through
//! [`Signer::sign_with_header`] and [`Signer::sign_segments`], correctly signed tokens whose
//! header or payload is hostile, so the verifier's checks after the signature are exercised.

use std::sync::Arc;

use serde_json::{Value, json};

use super::b64url_encode;
use super::keys::{KeyError, SigningKey};

/// Signs claim sets with one key.
#[derive(Clone, Debug)]
pub struct Signer {
    key: Arc<SigningKey>,
}

impl Signer {
    pub fn new(key: SigningKey) -> Signer {
        Signer { key: Arc::new(key) }
    }

    pub fn from_arc(key: Arc<SigningKey>) -> Signer {
        Signer { key }
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The header this signer puts on tokens: `{"alg", "typ": "JWT", "kid"}`.
    pub fn header(&self) -> Value {
        json!({"alg": self.key.algorithm().as_str(), "typ": "JWT", "kid": self.key.kid()})
    }

    /// A signed token carrying `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, KeyError> {
        self.sign_with_header(&self.header(), claims)
    }

    /// A token with this exact header (whatever it says) signed by this key.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, KeyError> {
        self.sign_segments(
            &b64url_encode(header.to_string().as_bytes()),
            &b64url_encode(claims.to_string().as_bytes()),
        )
    }

    /// Sign already-encoded segments: returns `header.payload.signature`.
    pub fn sign_segments(&self, header_b64: &str, payload_b64: &str) -> Result<String, KeyError> {
        let input = format!("{header_b64}.{payload_b64}");
        let sig = self.key.sign_bytes(input.as_bytes())?;
        Ok(format!("{input}.{}", b64url_encode(&sig)))
    }
}
