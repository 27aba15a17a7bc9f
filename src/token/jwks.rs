//! Key sets: where the verifier's keys come from, and nowhere else.
//!
//! A token names its key with `kid`; the key itself must come from the JWKS the mount was
//! configured with, never from the token (`jwk`, `jku`, `x5u`, `x5c` headers are ignored by the
//! verifier). Sources are an `https://` URL (relayauth's `/.well-known/jwks.json`; plain `http://`
//! only for loopback addresses, since whoever serves the keys decides who may sign tokens), a
//! local file, or a `data:` URL (base64 or percent-encoded JSON).
//!
//! Only RSA (RS256, at least 2048 bits) and Ed25519 (EdDSA) signing keys are kept; any other key
//! in the same set (EC, symmetric, encryption keys, keys without a `kid`, unknown algorithms) is
//! skipped and listed, never fatal, because relayauth publishes several kinds side by side. A
//! `kid` that appears twice is dropped entirely: which of the two keys would be meant is
//! ambiguous.
//!
//! Lookups ([`JwksCache::key`]) are synchronous and read only memory, so they can run on a FUSE
//! thread. Network work happens in [`JwksCache::load`], [`JwksCache::refresh_if_stale`] (URL and
//! file sources are re-read after 5 minutes) and [`JwksCache::refetch_for_unknown_kid`] (at most
//! one refetch per 60 s, whatever the tokens ask for, so a stream of made-up `kid`s cannot make
//! the daemon hammer relayauth). A failed refetch keeps the keys already known.
//!
//! [`thumbprint`] is the RFC 7638 JWK thumbprint: SHA-256 over the required members in
//! lexicographic order without whitespace (`{"e":..,"kty":"RSA","n":..}` for RSA,
//! `{"crv":..,"kty":"OKP","x":..}` for Ed25519), base64url without padding. relayauth uses
//! exactly this as the `kid` of its keys.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;
use serde_json::Value;

use super::{b64url_decode, b64url_encode};
use crate::relayauth::http::{describe_http_error, http_client, is_loopback};

/// Where the keys come from, parsed from one command-line string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// An `https://` URL, or `http://` to a loopback address.
    Url(String),
    /// A local file holding the JWKS JSON.
    File(PathBuf),
    /// The JWKS JSON itself, decoded from a `data:` URL.
    Data(String),
}

impl JwksSource {
    /// Read one `--jwks` argument: an `https://`/`http://` URL, a `data:` URL (base64 or
    /// percent-encoded JSON), a `file://` URL, or else a file path.
    pub fn parse(text: &str) -> Result<JwksSource, JwksError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(JwksError::BadSource(
                "--jwks is empty: give an https:// URL, a file path or a data: URL".into(),
            ));
        }
        let lower = t.get(..8).unwrap_or(t).to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            check_url(t)?;
            return Ok(JwksSource::Url(t.to_owned()));
        }
        if lower.starts_with("data:") {
            return decode_data_url(t).map(JwksSource::Data);
        }
        if lower.starts_with("file://") {
            let url = reqwest::Url::parse(t).map_err(|e| {
                JwksError::BadSource(format!("{t} is not a valid file:// URL: {e}"))
            })?;
            let path = url
                .to_file_path()
                .map_err(|()| JwksError::BadSource(format!("{t} does not name a local file")))?;
            return Ok(JwksSource::File(path));
        }
        if lower.contains("://") {
            return Err(JwksError::BadSource(format!(
                "{t}: unsupported URL scheme; use https://, a file path or a data: URL"
            )));
        }
        Ok(JwksSource::File(PathBuf::from(t)))
    }
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Url(u) => f.write_str(u),
            JwksSource::File(p) => write!(f, "{}", p.display()),
            JwksSource::Data(_) => f.write_str("the data: URL"),
        }
    }
}

/// The URL must be absolute, and plain http only to a loopback address.
fn check_url(text: &str) -> Result<reqwest::Url, JwksError> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| JwksError::BadSource(format!("{text} is not a valid URL: {e}")))?;
    if url.host().is_none() {
        return Err(JwksError::BadSource(format!("{text} has no host")));
    }
    if url.scheme() == "http" && !is_loopback(&url) {
        return Err(JwksError::InsecureUrl(text.to_owned()));
    }
    Ok(url)
}

/// `data:[<mediatype>][;base64],<data>` to the text it carries.
fn decode_data_url(text: &str) -> Result<String, JwksError> {
    let rest = &text[5..];
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(JwksError::BadSource(
            "the data: URL has no ',' before its content (expected data:application/json,<json> or data:application/json;base64,<base64>)".into(),
        ));
    };
    let bytes = if meta.to_ascii_lowercase().ends_with(";base64") {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let unescaped = percent_decode(data)
            .ok_or_else(|| JwksError::BadSource("the data: URL has a malformed %-escape".into()))?;
        let compact: Vec<u8> = unescaped
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
            .collect();
        STANDARD_NO_PAD
            .decode(&compact)
            .or_else(|_| URL_SAFE_NO_PAD.decode(&compact))
            .map_err(|e| JwksError::BadSource(format!("the data: URL is not valid base64: {e}")))?
    } else {
        percent_decode(data)
            .ok_or_else(|| JwksError::BadSource("the data: URL has a malformed %-escape".into()))?
    };
    String::from_utf8(bytes)
        .map_err(|_| JwksError::BadSource("the data: URL does not hold UTF-8 text".into()))
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Limits and timings of a key set. The defaults are DESIGN section 5's.
#[derive(Clone, Debug)]
pub struct JwksOptions {
    /// Timeout of one fetch of a URL source (connect, request and body).
    pub timeout: Duration,
    /// How long fetched keys are used before [`JwksCache::refresh_if_stale`] refetches them.
    pub cache_ttl: Duration,
    /// At most one refetch per this interval on an unknown `kid` (and between failed attempts).
    pub refetch_interval: Duration,
    /// The largest JWKS document accepted.
    pub max_bytes: usize,
}

impl Default for JwksOptions {
    fn default() -> JwksOptions {
        JwksOptions {
            timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(300),
            refetch_interval: Duration::from_secs(60),
            max_bytes: 1 << 20,
        }
    }
}

/// Why a key set could not be had.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("{0}")]
    BadSource(String),
    #[error(
        "refusing to fetch keys over plain http from {0}: anyone on the path could substitute them; use https:// (plain http is accepted only for loopback addresses)"
    )]
    InsecureUrl(String),
    #[error("cannot read the JWKS file {path}: {message}")]
    Read { path: String, message: String },
    #[error("cannot fetch the JWKS from {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{source_name} is not a JWKS: {message}")]
    BadJson {
        source_name: String,
        message: String,
    },
    #[error("{source_name} has no usable key: only RSA (RS256) and Ed25519 (EdDSA) signing keys with a kid are accepted{}", skipped_list(.skipped))]
    NoUsableKeys {
        source_name: String,
        skipped: Vec<SkippedKey>,
    },
}

fn skipped_list(skipped: &[SkippedKey]) -> String {
    if skipped.is_empty() {
        return " (the set is empty)".into();
    }
    let items: Vec<String> = skipped.iter().map(|s| s.to_string()).collect();
    format!(" (skipped: {})", items.join("; "))
}

/// A key of the set that is not used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedKey {
    pub kid: Option<String>,
    pub reason: String,
}

impl fmt::Display for SkippedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "kid {kid:?}: {}", self.reason),
            None => write!(f, "a key without kid: {}", self.reason),
        }
    }
}

/// The public part of a JWK, as far as thumbprints and key export need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicJwk {
    /// `kty: RSA` with the base64url modulus and exponent.
    Rsa { n: String, e: String },
    /// `kty: OKP` (Ed25519 and friends) with the curve and base64url public key.
    Okp { crv: String, x: String },
    /// `kty: EC` with the curve and base64url coordinates.
    Ec { crv: String, x: String, y: String },
}

impl PublicJwk {
    /// The members RFC 7638 requires for the key's type, from a JWK object.
    pub fn from_value(jwk: &Value) -> Result<PublicJwk, String> {
        let field = |name: &str| -> Result<String, String> {
            match jwk.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(_) => Err(format!("{name} is not a non-empty string")),
                None => Err(format!("{name} is missing")),
            }
        };
        match jwk.get("kty").and_then(Value::as_str) {
            Some("RSA") => Ok(PublicJwk::Rsa {
                n: field("n")?,
                e: field("e")?,
            }),
            Some("OKP") => Ok(PublicJwk::Okp {
                crv: field("crv")?,
                x: field("x")?,
            }),
            Some("EC") => Ok(PublicJwk::Ec {
                crv: field("crv")?,
                x: field("x")?,
                y: field("y")?,
            }),
            Some(other) => Err(format!("key type {other:?} has no public-key thumbprint")),
            None => Err("kty is missing".into()),
        }
    }

    /// The JWK members as JSON (without `kid`, `alg` or `use`).
    pub fn to_value(&self) -> Value {
        match self {
            PublicJwk::Rsa { n, e } => serde_json::json!({"kty": "RSA", "n": n, "e": e}),
            PublicJwk::Okp { crv, x } => serde_json::json!({"kty": "OKP", "crv": crv, "x": x}),
            PublicJwk::Ec { crv, x, y } => {
                serde_json::json!({"kty": "EC", "crv": crv, "x": x, "y": y})
            }
        }
    }
}

/// The RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding. relayauth uses
/// it as the key's `kid`.
pub fn thumbprint(jwk: &PublicJwk) -> String {
    // JSON string encoding of each value; serializing a &str cannot fail.
    let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let canonical = match jwk {
        PublicJwk::Rsa { n, e } => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, s(e), s(n)),
        PublicJwk::Okp { crv, x } => format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, s(crv), s(x)),
        PublicJwk::Ec { crv, x, y } => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            s(crv),
            s(x),
            s(y)
        ),
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    b64url_encode(digest.as_ref())
}

/// What kind of key a JWKS entry is, which decides the one algorithm it verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA, for RS256; the modulus size in bits.
    Rsa { bits: usize },
    /// Ed25519, for EdDSA.
    Ed25519,
}

impl KeyKind {
    /// The only algorithm this key verifies.
    pub fn algorithm(self) -> Algorithm {
        match self {
            KeyKind::Rsa { .. } => Algorithm::RS256,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "an RSA-{bits} key (RS256)"),
            KeyKind::Ed25519 => f.write_str("an Ed25519 key (EdDSA)"),
        }
    }
}

/// One usable verification key.
#[derive(Clone)]
pub struct JwksKey {
    pub kid: String,
    pub kind: KeyKind,
    /// The RFC 7638 thumbprint of the key (relayauth's kids equal it).
    pub thumbprint: String,
    pub(crate) decoding: DecodingKey,
}

impl fmt::Debug for JwksKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("thumbprint", &self.thumbprint)
            .finish()
    }
}

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

fn parse_key(jwk: &Value) -> Result<JwksKey, SkippedKey> {
    let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
    let skip = |reason: String| SkippedKey {
        kid: kid.clone(),
        reason,
    };
    if !jwk.is_object() {
        return Err(skip("not a JSON object".into()));
    }
    let kid_str = match &kid {
        Some(k) if !k.is_empty() => k.clone(),
        _ => return Err(skip("no kid, so no token can name it".into())),
    };
    if let Some(u) = jwk.get("use")
        && u.as_str() != Some("sig")
    {
        return Err(skip(format!("use is {u}, not \"sig\"")));
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !verifies {
            return Err(skip("key_ops does not include \"verify\"".into()));
        }
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(a.as_str()),
        Some(other) => return Err(skip(format!("alg is {other}, not a string"))),
    };
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let public = PublicJwk::from_value(jwk).map_err(|e| skip(format!("kty {kty:?}: {e}")))?;
    let (kind, decoding) = match &public {
        PublicJwk::Rsa { n, e } => {
            if let Some(a) = alg
                && a != "RS256"
            {
                return Err(skip(format!(
                    "alg {a} is not accepted (RSA keys are used for RS256 only)"
                )));
            }
            let n = b64url_decode(n).ok_or_else(|| skip("n is not base64url".into()))?;
            let e = b64url_decode(e).ok_or_else(|| skip("e is not base64url".into()))?;
            let n = strip_leading_zeros(&n);
            let e = strip_leading_zeros(&e);
            let bits = n
                .first()
                .map(|b| n.len() * 8 - b.leading_zeros() as usize)
                .unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Err(skip(format!(
                    "an RSA key of {bits} bits is too weak (at least {MIN_RSA_BITS})"
                )));
            }
            if bits > MAX_RSA_BITS || e.is_empty() || e.len() > 8 {
                return Err(skip(format!(
                    "RSA parameters out of range ({bits}-bit modulus, {}-byte exponent)",
                    e.len()
                )));
            }
            (
                KeyKind::Rsa { bits },
                DecodingKey::from_rsa_raw_components(n, e),
            )
        }
        PublicJwk::Okp { crv, x } => {
            if crv != "Ed25519" {
                return Err(skip(format!(
                    "curve {crv} is not accepted (only Ed25519 for EdDSA)"
                )));
            }
            if let Some(a) = alg
                && a != "EdDSA"
                && a != "Ed25519"
            {
                return Err(skip(format!(
                    "alg {a} is not accepted (Ed25519 keys are used for EdDSA only)"
                )));
            }
            let x_bytes = b64url_decode(x).ok_or_else(|| skip("x is not base64url".into()))?;
            if x_bytes.len() != 32 {
                return Err(skip(format!(
                    "an Ed25519 public key is 32 bytes, this one is {}",
                    x_bytes.len()
                )));
            }
            // The EdDSA verifier takes the raw 32-byte public key.
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x_bytes))
        }
        PublicJwk::Ec { crv, .. } => {
            return Err(skip(format!(
                "EC ({crv}) keys are not accepted: relayauth tokens are RS256 or EdDSA"
            )));
        }
    };
    Ok(JwksKey {
        kid: kid_str,
        kind,
        thumbprint: thumbprint(&public),
        decoding,
    })
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
pub(crate) const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// The keys of one fetch.
#[derive(Debug, Default)]
struct KeySet {
    keys: HashMap<String, Arc<JwksKey>>,
    skipped: Vec<SkippedKey>,
}

fn parse_jwks(text: &str, source_name: &str) -> Result<KeySet, JwksError> {
    let bad = |message: String| JwksError::BadJson {
        source_name: source_name.to_owned(),
        message,
    };
    let doc: Value = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
        return Err(bad(
            "expected a JSON object with a \"keys\" array (RFC 7517 section 5)".into(),
        ));
    };
    let mut set = KeySet::default();
    let mut duplicates: Vec<String> = Vec::new();
    for entry in entries {
        match parse_key(entry) {
            Ok(key) => {
                if set.keys.contains_key(&key.kid) || duplicates.contains(&key.kid) {
                    duplicates.push(key.kid.clone());
                } else {
                    set.keys.insert(key.kid.clone(), Arc::new(key));
                }
            }
            Err(skipped) => set.skipped.push(skipped),
        }
    }
    duplicates.sort();
    duplicates.dedup();
    for kid in duplicates {
        set.keys.remove(&kid);
        set.skipped.push(SkippedKey {
            kid: Some(kid),
            reason: "the kid appears more than once, so it is ambiguous".into(),
        });
    }
    if set.keys.is_empty() {
        return Err(JwksError::NoUsableKeys {
            source_name: source_name.to_owned(),
            skipped: set.skipped,
        });
    }
    Ok(set)
}

#[derive(Debug, Default)]
struct RefetchState {
    /// The last time the source was (re)loaded successfully.
    loaded_at: Option<Instant>,
    /// The last attempt to reload a stale set, successful or not.
    last_attempt: Option<Instant>,
    /// The last refetch caused by an unknown `kid`, successful or not.
    last_unknown_kid: Option<Instant>,
}

/// The keys of a JWKS by `kid`, refreshed from their source as DESIGN section 5 says.
pub struct JwksCache {
    source: JwksSource,
    options: JwksOptions,
    client: Option<reqwest::Client>,
    keys: RwLock<Arc<KeySet>>,
    state: tokio::sync::Mutex<RefetchState>,
    loads: AtomicU64,
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksCache")
            .field("source", &self.source.to_string())
            .field("kids", &self.kids())
            .finish()
    }
}

impl JwksCache {
    /// Load the keys from `source` with the default options.
    pub async fn load(source: JwksSource) -> Result<JwksCache, JwksError> {
        JwksCache::load_with(source, JwksOptions::default()).await
    }

    /// Load the keys from `source`. Fails when the source cannot be read or holds no usable key.
    pub async fn load_with(
        source: JwksSource,
        options: JwksOptions,
    ) -> Result<JwksCache, JwksError> {
        let client = match &source {
            JwksSource::Url(url) => {
                Some(
                    http_client(options.timeout).map_err(|message| JwksError::Fetch {
                        url: url.clone(),
                        message,
                    })?,
                )
            }
            _ => None,
        };
        let cache = JwksCache {
            source,
            options,
            client,
            keys: RwLock::new(Arc::new(KeySet::default())),
            state: tokio::sync::Mutex::new(RefetchState::default()),
            loads: AtomicU64::new(0),
        };
        let set = cache.fetch().await?;
        *cache.keys.write() = Arc::new(set);
        let now = Instant::now();
        let mut state = cache.state.lock().await;
        state.loaded_at = Some(now);
        state.last_attempt = Some(now);
        drop(state);
        Ok(cache)
    }

    /// A key set from JWKS JSON held in memory (a [`JwksSource::Data`]); no I/O.
    pub fn from_json(text: &str) -> Result<JwksCache, JwksError> {
        let set = parse_jwks(text, "the JWKS")?;
        Ok(JwksCache {
            source: JwksSource::Data(text.to_owned()),
            options: JwksOptions::default(),
            client: None,
            keys: RwLock::new(Arc::new(set)),
            state: tokio::sync::Mutex::new(RefetchState {
                loaded_at: Some(Instant::now()),
                last_attempt: Some(Instant::now()),
                last_unknown_kid: None,
            }),
            loads: AtomicU64::new(1),
        })
    }

    /// Where the keys come from.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The key named `kid`, from memory only.
    pub fn key(&self, kid: &str) -> Option<Arc<JwksKey>> {
        self.keys.read().keys.get(kid).cloned()
    }

    /// The kids of the usable keys, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.keys.read().keys.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// The keys of the last load that are not used, and why.
    pub fn skipped(&self) -> Vec<SkippedKey> {
        self.keys.read().skipped.clone()
    }

    /// How many times the source was read or fetched (the first load included).
    pub fn load_count(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Refetch a URL or file source whose keys are older than the cache lifetime. Returns
    /// whether the keys were reloaded; on failure the keys already known stay in use and no new
    /// attempt is made for [`JwksOptions::refetch_interval`].
    pub async fn refresh_if_stale(&self) -> Result<bool, JwksError> {
        if matches!(self.source, JwksSource::Data(_)) {
            return Ok(false);
        }
        let mut state = self.state.lock().await;
        let now = Instant::now();
        let fresh = state
            .loaded_at
            .is_some_and(|t| now.duration_since(t) < self.options.cache_ttl);
        let recently_tried = state
            .last_attempt
            .is_some_and(|t| now.duration_since(t) < self.options.refetch_interval);
        if fresh || recently_tried {
            return Ok(false);
        }
        self.reload(&mut state).await.map(|()| true)
    }

    /// A token named a `kid` the set does not have: refetch the source, unless an unknown `kid`
    /// already caused a refetch within [`JwksOptions::refetch_interval`]. Returns whether `kid`
    /// is known afterwards.
    pub async fn refetch_for_unknown_kid(&self, kid: &str) -> bool {
        if self.key(kid).is_some() {
            return true;
        }
        if matches!(self.source, JwksSource::Data(_)) {
            return false;
        }
        let mut state = self.state.lock().await;
        // Another caller may have refetched while this one waited for the lock.
        if self.key(kid).is_some() {
            return true;
        }
        let now = Instant::now();
        if state
            .last_unknown_kid
            .is_some_and(|t| now.duration_since(t) < self.options.refetch_interval)
        {
            return false;
        }
        state.last_unknown_kid = Some(now);
        if let Err(e) = self.reload(&mut state).await {
            let shown: String = kid.chars().take(80).collect();
            tracing::warn!("refetching the JWKS for unknown kid {shown:?} failed: {e}");
            return false;
        }
        self.key(kid).is_some()
    }

    async fn reload(&self, state: &mut RefetchState) -> Result<(), JwksError> {
        state.last_attempt = Some(Instant::now());
        let set = self.fetch().await?;
        *self.keys.write() = Arc::new(set);
        state.loaded_at = Some(Instant::now());
        Ok(())
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        let name = self.source.to_string();
        let text = match &self.source {
            JwksSource::Data(text) => text.clone(),
            JwksSource::File(path) => read_file(path, self.options.max_bytes).await?,
            JwksSource::Url(url) => {
                let client = match &self.client {
                    Some(c) => c.clone(),
                    None => {
                        http_client(self.options.timeout).map_err(|message| JwksError::Fetch {
                            url: url.clone(),
                            message,
                        })?
                    }
                };
                fetch_url(&client, url, self.options.max_bytes, self.options.timeout).await?
            }
        };
        parse_jwks(&text, &name)
    }
}

async fn read_file(path: &std::path::Path, max: usize) -> Result<String, JwksError> {
    let err = |message: String| JwksError::Read {
        path: path.display().to_string(),
        message,
    };
    let bytes =
        crate::files::read_regular_async(path.to_owned(), max as u64, crate::files::READ_TIMEOUT)
            .await
            .map_err(|e| match e {
                crate::files::ReadError::NotFound => err(
                    "no such file; pass an https:// URL, an existing file or a data: URL to --jwks"
                        .into(),
                ),
                crate::files::ReadError::TooLarge { .. } => err(format!(
                    "the file is more than the {max}-byte limit for a JWKS"
                )),
                other => err(other.to_string()),
            })?;
    String::from_utf8(bytes).map_err(|_| err("the file is not UTF-8 text".into()))
}

async fn fetch_url(
    client: &reqwest::Client,
    url: &str,
    max: usize,
    timeout: Duration,
) -> Result<String, JwksError> {
    let err = |message: String| JwksError::Fetch {
        url: url.to_owned(),
        message,
    };
    let mut resp = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| err(describe_http_error(&e, timeout)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(err(format!("the server answered HTTP {status}")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| err(describe_http_error(&e, timeout)))?
    {
        if body.len() + chunk.len() > max {
            return Err(err(format!("the JWKS is larger than {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| err("the body is not UTF-8 text".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            JwksSource::parse("https://relayauth.dev/.well-known/jwks.json").unwrap(),
            JwksSource::Url("https://relayauth.dev/.well-known/jwks.json".into())
        );
        assert!(matches!(
            JwksSource::parse("http://127.0.0.1:8787/.well-known/jwks.json"),
            Ok(JwksSource::Url(_))
        ));
        assert!(matches!(
            JwksSource::parse("http://localhost/.well-known/jwks.json"),
            Ok(JwksSource::Url(_))
        ));
        assert!(matches!(
            JwksSource::parse("http://relayauth.dev/.well-known/jwks.json"),
            Err(JwksError::InsecureUrl(_))
        ));
        assert_eq!(
            JwksSource::parse("keys/jwks.json").unwrap(),
            JwksSource::File("keys/jwks.json".into())
        );
        assert_eq!(
            JwksSource::parse("file:///etc/jwks.json").unwrap(),
            JwksSource::File("/etc/jwks.json".into())
        );
        assert_eq!(
            JwksSource::parse("data:application/json,%7B%22keys%22%3A%5B%5D%7D").unwrap(),
            JwksSource::Data(r#"{"keys":[]}"#.into())
        );
        assert_eq!(
            JwksSource::parse("data:application/json;base64,eyJrZXlzIjpbXX0=").unwrap(),
            JwksSource::Data(r#"{"keys":[]}"#.into())
        );
        assert_eq!(
            JwksSource::parse("data:,{\"keys\":[]}").unwrap(),
            JwksSource::Data(r#"{"keys":[]}"#.into())
        );
        for bad in [
            "",
            "  ",
            "data:application/json",
            "data:,%zz",
            "ftp://x/y",
            "data:;base64,@@@",
        ] {
            assert!(JwksSource::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rfc7638_known_answer() {
        // RFC 7638 section 3.1.
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let public = PublicJwk::from_value(&jwk).unwrap();
        assert_eq!(
            thumbprint(&public),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // RFC 8037 appendix A.3 (Ed25519).
        let okp = PublicJwk::Okp {
            crv: "Ed25519".into(),
            x: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into(),
        };
        assert_eq!(
            thumbprint(&okp),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
