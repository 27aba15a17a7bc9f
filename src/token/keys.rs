//! Signing keys: generation, PKCS#8 import and export, and the public JWK.
//!
//! The development issuer (DESIGN section 12) signs tokens with these keys and publishes their
//! public halves in its JWKS; the tests mint tokens with them. Two kinds exist, matching what the
//! verifier accepts: Ed25519 (EdDSA) and RSA (RS256, 2048 bits when generated, at least 2048 on
//! import). Each key's `kid` is its RFC 7638 thumbprint, as relayauth's are, so a key keeps the
//! same `kid` across restarts and a verifier can recompute it from the JWKS alone.
//!
//! Private keys are stored as unencrypted PKCS#8 (`-----BEGIN PRIVATE KEY-----`), the format
//! `openssl genpkey` writes. Text before the PEM block (a comment saying what the key is for) is
//! allowed and ignored.

use std::fmt;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::b64url_encode;
use super::jwks::{ED25519_SPKI_PREFIX, PublicJwk, thumbprint};

/// The signature algorithm of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// Ed25519.
    EdDsa,
}

impl KeyAlgorithm {
    /// The JOSE `alg` name: `RS256` or `EdDSA`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Rs256 => "RS256",
            KeyAlgorithm::EdDsa => "EdDSA",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate a {0} key")]
    Generate(&'static str),
    #[error("{0}")]
    Pem(String),
    #[error("{0}")]
    Der(String),
    #[error("signing failed")]
    Sign,
}

enum Inner {
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A private signing key with its public JWK and `kid`.
pub struct SigningKey {
    inner: Inner,
    pkcs8: Vec<u8>,
    public: PublicJwk,
    kid: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

const MIN_RSA_BITS: usize = 2048;
const PRIVATE_KEY_LABEL: &str = "PRIVATE KEY";

impl SigningKey {
    /// A new random Ed25519 key.
    pub fn generate_ed25519() -> Result<SigningKey, KeyError> {
        let pair = Ed25519KeyPair::generate().map_err(|_| KeyError::Generate("Ed25519"))?;
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| KeyError::Generate("Ed25519"))?
            .as_ref()
            .to_vec();
        Ok(SigningKey::from_ed25519(pair, pkcs8))
    }

    /// A new random RSA-2048 key.
    pub fn generate_rsa() -> Result<SigningKey, KeyError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate("RSA"))?;
        let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&pair)
            .map_err(|_| KeyError::Generate("RSA"))?
            .as_ref()
            .to_vec();
        SigningKey::from_rsa(pair, pkcs8)
    }

    fn from_ed25519(pair: Ed25519KeyPair, pkcs8: Vec<u8>) -> SigningKey {
        let public = PublicJwk::Okp {
            crv: "Ed25519".into(),
            x: b64url_encode(pair.public_key().as_ref()),
        };
        let kid = thumbprint(&public);
        SigningKey {
            inner: Inner::Ed25519(pair),
            pkcs8,
            public,
            kid,
        }
    }

    fn from_rsa(pair: RsaKeyPair, pkcs8: Vec<u8>) -> Result<SigningKey, KeyError> {
        let bits = pair.public_modulus_len() * 8;
        if bits < MIN_RSA_BITS {
            return Err(KeyError::Der(format!(
                "an RSA key of {bits} bits is too weak for signing tokens (at least {MIN_RSA_BITS})"
            )));
        }
        let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let public = PublicJwk::Rsa {
            n: b64url_encode(&components.n),
            e: b64url_encode(&components.e),
        };
        let kid = thumbprint(&public);
        Ok(SigningKey {
            inner: Inner::Rsa(pair),
            pkcs8,
            public,
            kid,
        })
    }

    /// A key from unencrypted PKCS#8 DER (Ed25519 or RSA).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyError> {
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8(der) {
            return Ok(SigningKey::from_ed25519(pair, der.to_vec()));
        }
        match RsaKeyPair::from_pkcs8(der) {
            Ok(pair) => SigningKey::from_rsa(pair, der.to_vec()),
            Err(_) => Err(KeyError::Der(
                "not an unencrypted PKCS#8 Ed25519 or RSA private key".into(),
            )),
        }
    }

    /// A key from a PKCS#8 PEM file's text (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(text: &str) -> Result<SigningKey, KeyError> {
        SigningKey::from_pkcs8_der(&pem_decode(text, PRIVATE_KEY_LABEL)?)
    }

    /// The private key as PKCS#8 DER.
    pub fn to_pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pkcs8_pem(&self) -> String {
        pem_encode(PRIVATE_KEY_LABEL, &self.pkcs8)
    }

    /// The public key as SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_key_pem(&self) -> Result<String, KeyError> {
        let der = match &self.inner {
            Inner::Ed25519(pair) => {
                let mut der = ED25519_SPKI_PREFIX.to_vec();
                der.extend_from_slice(pair.public_key().as_ref());
                der
            }
            Inner::Rsa(pair) => AsDer::<PublicKeyX509Der>::as_der(pair.public_key())
                .map_err(|_| KeyError::Der("cannot encode the RSA public key".into()))?
                .as_ref()
                .to_vec(),
        };
        Ok(pem_encode("PUBLIC KEY", &der))
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.inner {
            Inner::Ed25519(_) => KeyAlgorithm::EdDsa,
            Inner::Rsa(_) => KeyAlgorithm::Rs256,
        }
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key's JWK members.
    pub fn public(&self) -> &PublicJwk {
        &self.public
    }

    /// The public JWK as published in a JWKS: the key members plus `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = self.public.to_value();
        if let Value::Object(map) = &mut jwk {
            map.insert("kid".into(), json!(self.kid));
            map.insert("alg".into(), json!(self.algorithm().as_str()));
            map.insert("use".into(), json!("sig"));
        }
        jwk
    }

    /// Sign `message` (the JWS signing input) and return the raw signature.
    pub fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.inner {
            Inner::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Inner::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
                    .map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
        }
    }
}

/// A JWKS document (`{"keys": [...]}`) publishing the public halves of `keys`.
pub fn jwks_document<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Value {
    json!({"keys": keys.into_iter().map(SigningKey::public_jwk).collect::<Vec<_>>()})
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(text: &str, label: &str) -> Result<Vec<u8>, KeyError> {
    let mut lines = text.lines().map(str::trim);
    let found = lines.by_ref().find_map(|l| {
        l.strip_prefix("-----BEGIN ")
            .and_then(|r| r.strip_suffix("-----"))
    });
    let Some(found) = found else {
        return Err(KeyError::Pem(format!(
            "no -----BEGIN {label}----- block found"
        )));
    };
    if found != label {
        let hint = match found {
            "RSA PRIVATE KEY" => {
                "; it is PKCS#1: convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8`"
            }
            "ENCRYPTED PRIVATE KEY" => {
                "; it is encrypted: decrypt it with `openssl pkcs8 -nocrypt -in KEY -out KEY.p8`"
            }
            _ => "",
        };
        return Err(KeyError::Pem(format!(
            "expected a -----BEGIN {label}----- block, found {found}{hint}"
        )));
    }
    let end = format!("-----END {label}-----");
    let mut b64 = String::new();
    let mut closed = false;
    for line in lines {
        if line == end {
            closed = true;
            break;
        }
        b64.push_str(line);
    }
    if !closed {
        return Err(KeyError::Pem(format!("the {label} block has no END line")));
    }
    STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| KeyError::Pem(format!("the {label} block is not valid base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_round_trip() {
        let key = SigningKey::generate_ed25519().unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::EdDsa);
        let pem = format!("# TEST ONLY\n{}", key.to_pkcs8_pem());
        let again = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert_eq!(again.public(), key.public());
        let jwk = key.public_jwk();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["alg"], "EdDSA");
        assert!(jwk.get("d").is_none());
        assert_eq!(key.sign_bytes(b"m").unwrap().len(), 64);
        assert!(
            key.public_key_pem()
                .unwrap()
                .starts_with("-----BEGIN PUBLIC KEY-----\n")
        );
    }

    #[test]
    fn rsa_round_trip() {
        let key = SigningKey::generate_rsa().unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Rs256);
        let again = SigningKey::from_pkcs8_der(key.to_pkcs8_der()).unwrap();
        assert_eq!(again.kid(), key.kid());
        let jwk = key.public_jwk();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(key.sign_bytes(b"m").unwrap().len(), 256);
        // The kid is the thumbprint recomputed from the published members.
        let public = PublicJwk::from_value(&jwk).unwrap();
        assert_eq!(thumbprint(&public), key.kid());
    }

    #[test]
    fn pem_errors_name_the_fix() {
        let pkcs1 = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let e = SigningKey::from_pkcs8_pem(pkcs1).unwrap_err().to_string();
        assert!(e.contains("openssl pkcs8 -topk8"), "{e}");
        assert!(SigningKey::from_pkcs8_pem("nothing here").is_err());
        let unterminated = "-----BEGIN PRIVATE KEY-----\nAAAA\n";
        assert!(SigningKey::from_pkcs8_pem(unterminated).is_err());
        assert!(SigningKey::from_pkcs8_der(b"\x30\x03\x02\x01\x00").is_err());
    }
}
