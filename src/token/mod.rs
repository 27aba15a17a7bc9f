//! Tokens: the only way anything in relayauth-mount obtains a verified identity (DESIGN
//! section 5).
//!
//! A relayauth access token is a JWT signed with RS256 or EdDSA by a key published in
//! relayauth's JWKS. Everything that grants access starts from a [`VerifiedToken`], and the only
//! way to get one is [`Verifier::verify`] (or [`Verifier::verify_fresh`]): the type proves the
//! checks ran. The pieces, one concern each:
//!
//! - [`error`]: the stable rejection codes and their messages.
//! - [`claims`]: the claim set, typed strictly (a string `exp` is refused).
//! - [`jwks`]: key sets from a URL, a file or a `data:` URL, RFC 7638 thumbprints.
//! - [`verify`]: the verifier and [`VerifiedToken`].
//! - [`keys`] and [`sign`]: signing keys and token signing, for the development issuer and
//!   the tests.
//!
//! Where a token comes from is `crate::credentials`; rotating a bundle's token pair is
//! `crate::relayauth::refresh`.

pub mod claims;
pub mod error;
pub mod jwks;
pub mod keys;
pub mod sign;
pub(crate) mod time;
pub mod verify;

pub use claims::{Audience, Claims};
pub use error::{TokenError, TokenErrorCode};
pub use jwks::{JwksCache, JwksError, JwksOptions, JwksSource, PublicJwk, thumbprint};
pub use keys::{KeyAlgorithm, KeyError, SigningKey};
pub use sign::Signer;
pub use verify::{
    DEFAULT_ISSUER, MAX_TOKEN_BYTES, RELAYFILE_AUDIENCE, VerifiedToken, Verifier, VerifierConfig,
};

/// Base64url without padding, the JOSE encoding (RFC 7515 section 2).
pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict base64url decoding: no padding, no whitespace, only the URL-safe alphabet.
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.as_bytes())
        .ok()
}

/// A token's `iat` and `exp` as it claims them, **unverified**: only for deciding *when* to
/// refresh a token that someone else verifies before it grants anything (`run` rotating its
/// bundle for the daemon). Nothing may be granted or refused from these times.
pub fn unverified_lifetime(raw: &str) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    if raw.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let payload = raw.trim().split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(&b64url_decode(payload)?).ok()?;
    let at = |k: &str| claims.get(k)?.as_u64().map(time::from_unix);
    Some((at("iat")?, at("exp")?))
}
