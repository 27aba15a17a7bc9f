//! Identifiers and secrets: random, with relayauth's prefixes (`agent_`, `tok_`, `sess_`), so a
//! reader can tell what an id names, and unguessable, because token and session ids travel in
//! audit records and revocation calls.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::token::b64url_encode;

/// `n` random bytes from the system generator.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    // The system generator only fails when the OS has no entropy source at all; falling back to
    // a time-derived value would make ids guessable, so that case aborts the request instead.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        bytes.clear();
    }
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random id with `prefix`: 16 random bytes in hex (`agent_3f9c...`). `None` when the system
/// has no randomness to give.
pub fn new_id(prefix: &str) -> Option<String> {
    let bytes = random_bytes(16);
    (bytes.len() == 16).then(|| format!("{prefix}{}", hex(&bytes)))
}

/// A new admin API key: 32 random bytes, base64url.
pub(crate) fn new_admin_key() -> Option<String> {
    let bytes = random_bytes(32);
    (bytes.len() == 32).then(|| format!("dev_admin_{}", b64url_encode(&bytes)))
}

/// SHA-256 of `text`, hex: how refresh tokens are found without keeping them.
pub fn sha256_hex(text: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()).as_ref())
}

/// Constant-time equality for secrets (the admin key).
pub fn secret_eq(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id("tok_").unwrap();
        let b = new_id("tok_").unwrap();
        assert!(a.starts_with("tok_") && a.len() == 4 + 32);
        assert_ne!(a, b);
        assert!(new_admin_key().unwrap().len() > 40);
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "abcd"));
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
