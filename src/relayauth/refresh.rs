//! Refreshing a credentials bundle's token pair (DESIGN section 5, "Refresh").
//!
//! relayauth's refresh tokens are single-use, and presenting one twice makes relayauth revoke the
//! whole session. Everything here serves that one rule:
//!
//! - Single flight: within a process one refresh runs at a time per [`Refresher`]; across
//!   processes (and across `Refresher`s) an exclusive `flock` on a sidecar lock file next to the
//!   bundle (`<bundle>.lock`) serializes them.
//! - After taking the lock the bundle is read again. If its access token verifies and is not yet
//!   due for refresh, someone else already rotated the pair: that pair is used, with no network
//!   call.
//! - The new pair is written before it is used: a temporary file in the bundle's directory
//!   (mode 0600), fsync, rename over the bundle, fsync of the directory. Every other member of
//!   the bundle is kept.
//! - An ambiguous failure (a timeout or a connection lost after the request was sent, a 5xx, a
//!   2xx without a usable pair) may have rotated the pair at relayauth, so its refresh token is
//!   remembered as spent, in memory and (as a SHA-256, never the token) in the lock file for
//!   other processes, and is never sent again: [`RefreshError::Spent`].
//! - Rejections that end the session (401, 404 `identity_not_found`, and the codes
//!   `workspace_token_revoked`, `delegation_expired`, `invalid_grant` or a reuse code with any
//!   status) are [`RefreshError::Terminal`].
//! - The new access token is verified with the [`Verifier`], so its scopes are re-read from it.
//!
//! [`should_refresh`] says when to call: once 80% of the token's lifetime has passed.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::http::{describe_http_error, is_loopback, secret_client};
use crate::credentials::{Bundle, CredentialError, CredentialSource, Credentials, TokenPair};
use crate::token::b64url_encode;
use crate::token::error::TokenError;
use crate::token::verify::{VerifiedToken, Verifier};

/// Whether a token is due for refresh at `now`: 80% of its lifetime (`iat` to `exp`) has passed.
pub fn should_refresh(token: &VerifiedToken, now: SystemTime) -> bool {
    refresh_due(token.issued_at(), token.expires_at(), now)
}

/// [`should_refresh`] for a token known by its issue and expiry times.
pub fn refresh_due(iat: SystemTime, exp: SystemTime, now: SystemTime) -> bool {
    refresh_due_at(iat, exp).is_some_and(|due| now >= due)
}

/// When a token issued at `iat` and expiring at `exp` is due for refresh (80% of its
/// lifetime); `None` when that moment cannot be named (it would overflow: never due).
pub fn refresh_due_at(iat: SystemTime, exp: SystemTime) -> Option<SystemTime> {
    match exp.duration_since(iat) {
        // Issued after it expires: due at once.
        Err(_) => Some(iat.min(exp)),
        Ok(lifetime) => iat.checked_add(lifetime.mul_f64(0.8)),
    }
}

/// How a [`Refresher`] talks to relayauth.
#[derive(Clone, Debug)]
pub struct RefreshOptions {
    /// Timeout of the refresh request (connect, send and answer).
    pub timeout: Duration,
    /// relayauth's base URL (`--relayauth-url`); when set it wins over the bundle's
    /// `refreshUrl` and `relayauthUrl`.
    pub relayauth_url: Option<String>,
    /// How long to wait for another process's lock on the bundle.
    pub lock_timeout: Duration,
}

impl Default for RefreshOptions {
    fn default() -> RefreshOptions {
        RefreshOptions {
            timeout: Duration::from_secs(10),
            relayauth_url: None,
            lock_timeout: Duration::from_secs(60),
        }
    }
}

/// A refreshed (or adopted) token, verified, with the bundle it came from.
#[derive(Clone, Debug)]
pub struct Refreshed {
    pub token: VerifiedToken,
    pub credentials: Credentials,
    /// Whether this call rotated the pair at relayauth (false: the bundle already held a
    /// fresh pair, rotated by another refresher).
    pub network: bool,
}

/// Why a refresh did not produce a usable token.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(
        "{path} has no refresh token (refreshToken), so it cannot be refreshed; get a new delegated credential"
    )]
    NoRefreshToken { path: String },
    #[error(
        "{path} names no refresh endpoint (refreshUrl or relayauthUrl); add one or pass --relayauth-url"
    )]
    NoEndpoint { path: String },
    #[error("{0}")]
    BadEndpoint(String),
    #[error("cannot lock {path}: {message}")]
    Lock { path: String, message: String },
    #[error(
        "the refresh token in {path} was already sent to relayauth in an attempt whose outcome is unknown; sending it again would make relayauth revoke the whole session, so it is not retried: get a new delegated credential"
    )]
    Spent { path: String },
    #[error(
        "the refresh request may have reached relayauth ({message}); its refresh token is now treated as spent and will not be sent again"
    )]
    Ambiguous { message: String },
    #[error("relayauth ended the session: HTTP {status} {code}: {message}")]
    Terminal {
        status: u16,
        code: String,
        message: String,
    },
    #[error("relayauth refused the refresh: HTTP {status} {code}: {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach relayauth ({message}); the refresh token was not sent")]
    Transport { message: String },
    #[error(
        "relayauth issued a new token pair but it could not be written to {path} ({message}); the previous refresh token is spent"
    )]
    Persist { path: String, message: String },
    #[error("the refreshed access token was refused: {0}")]
    Verify(TokenError),
}

impl RefreshError {
    /// Whether the session is over (relayauth said so, or its refresh token can never be
    /// used again).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RefreshError::Terminal { .. } | RefreshError::Spent { .. }
        )
    }

    /// relayauth's error code, for rejections.
    pub fn code(&self) -> Option<&str> {
        match self {
            RefreshError::Terminal { code, .. } | RefreshError::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The error codes that end a session whatever the HTTP status.
const TERMINAL_CODES: [&str; 6] = [
    "identity_not_found",
    "workspace_token_revoked",
    "delegation_expired",
    "invalid_grant",
    "refresh_token_reused",
    "token_reuse_detected",
];

/// A rotated (or adopted) pair, not verified here: [`Refresher::rotate`].
#[derive(Clone, Debug)]
pub struct Rotated {
    pub credentials: Credentials,
    /// Whether this call rotated the pair at relayauth.
    pub network: bool,
}

/// Refreshes one bundle. Cheap to share (`Arc`); one refresh runs at a time.
#[derive(Debug)]
pub struct Refresher {
    bundle: PathBuf,
    /// What verifies tokens; `None` for a refresher whose tokens another party verifies
    /// before they grant anything ([`Refresher::for_another_verifier`]).
    verifier: Option<Arc<Verifier>>,
    options: RefreshOptions,
    client: reqwest::Client,
    flight: tokio::sync::Mutex<()>,
    spent: parking_lot::Mutex<HashSet<String>>,
}

impl Refresher {
    pub fn new(
        bundle: impl Into<PathBuf>,
        verifier: Arc<Verifier>,
        options: RefreshOptions,
    ) -> Result<Refresher, RefreshError> {
        Refresher::build(bundle.into(), Some(verifier), options)
    }

    /// A refresher for a bundle whose access tokens are verified by someone else (the mount's
    /// daemon, for `run`): [`Refresher::rotate`] judges when a token is due from its claimed
    /// lifetime alone and hands the pair on unverified.
    pub fn for_another_verifier(
        bundle: impl Into<PathBuf>,
        options: RefreshOptions,
    ) -> Result<Refresher, RefreshError> {
        Refresher::build(bundle.into(), None, options)
    }

    fn build(
        bundle: PathBuf,
        verifier: Option<Arc<Verifier>>,
        options: RefreshOptions,
    ) -> Result<Refresher, RefreshError> {
        let client = secret_client(options.timeout).map_err(RefreshError::BadEndpoint)?;
        Ok(Refresher {
            bundle,
            verifier,
            options,
            client,
            flight: tokio::sync::Mutex::new(()),
            spent: parking_lot::Mutex::new(HashSet::new()),
        })
    }

    /// The bundle this refresher rotates.
    pub fn bundle_path(&self) -> &Path {
        &self.bundle
    }

    /// The sidecar lock file: `<bundle>.lock`, next to the bundle's real path.
    pub fn lock_path(&self) -> PathBuf {
        let real = self.real_bundle_path();
        let mut name = real.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        real.with_file_name(name)
    }

    /// The bundle with symlinks resolved, so that every path to one bundle shares one lock and
    /// the rename replaces the real file.
    fn real_bundle_path(&self) -> PathBuf {
        std::fs::canonicalize(&self.bundle).unwrap_or_else(|_| self.bundle.clone())
    }

    /// Make sure the bundle holds a fresh, verified token pair, rotating it at relayauth when
    /// the current access token is due (or refused) and no other refresher has rotated it yet.
    pub async fn refresh(&self) -> Result<Refreshed, RefreshError> {
        let Some(verifier) = &self.verifier else {
            return Err(RefreshError::BadEndpoint(
                "this refresher verifies nothing; use rotate".to_owned(),
            ));
        };
        let Rotated {
            credentials,
            network,
        } = self.rotate().await?;
        let token = verifier
            .verify_fresh(&credentials.access_token)
            .await
            .map_err(RefreshError::Verify)?;
        Ok(Refreshed {
            token,
            credentials,
            network,
        })
    }

    /// Whether the access token `raw` can be used as it is: it verifies (with a verifier; its
    /// claimed lifetime, without) and is not yet due for refresh.
    async fn still_fresh(&self, raw: &str) -> bool {
        let now = SystemTime::now();
        match &self.verifier {
            Some(v) => v
                .verify_fresh(raw)
                .await
                .is_ok_and(|t| !should_refresh(&t, now)),
            None => crate::token::unverified_lifetime(raw)
                .is_some_and(|(iat, exp)| now < exp && !refresh_due(iat, exp, now)),
        }
    }

    /// Make sure the bundle holds a pair that is not due for refresh, rotating it at relayauth
    /// when it is (see the module documentation); the pair is not verified here.
    pub async fn rotate(&self) -> Result<Rotated, RefreshError> {
        let _flight = self.flight.lock().await;
        let real = self.real_bundle_path();
        let shown = self.bundle.display().to_string();
        let mut lock = BundleLock::acquire(&self.lock_path(), self.options.lock_timeout).await?;

        let credentials = CredentialSource::Bundle(self.bundle.clone())
            .read_async()
            .await?;
        let Some(bundle) = credentials.bundle.clone() else {
            return Err(RefreshError::NoRefreshToken { path: shown });
        };
        if self.still_fresh(&credentials.access_token).await {
            return Ok(Rotated {
                credentials,
                network: false,
            });
        }

        let Some(refresh_token) = bundle.refresh_token().map(str::to_owned) else {
            return Err(RefreshError::NoRefreshToken { path: shown });
        };
        let fingerprint = fingerprint(&refresh_token);
        if self.spent.lock().contains(&fingerprint) || lock.spent()?.contains(&fingerprint) {
            return Err(RefreshError::Spent { path: shown });
        }
        let endpoint = self.endpoint(&bundle, &shown)?;

        let pair = match self.post(&endpoint, &refresh_token).await {
            Ok(pair) => pair,
            Err(e) => {
                if matches!(
                    e,
                    RefreshError::Ambiguous { .. } | RefreshError::Terminal { .. }
                ) {
                    self.spent.lock().insert(fingerprint.clone());
                    if let Err(le) = lock.record_spent(&fingerprint) {
                        tracing::warn!("cannot record the spent refresh token: {le}");
                    }
                }
                return Err(e);
            }
        };
        // From here on the old refresh token is spent, whatever happens next.
        self.spent.lock().insert(fingerprint.clone());
        let rotated = bundle.with_pair(&pair, SystemTime::now());
        let text = rotated.to_json();
        let target = real.clone();
        let written = tokio::task::spawn_blocking(move || write_atomic(&target, text.as_bytes()))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(message) = written {
            // The bundle still holds the refresh token relayauth just consumed.
            if let Err(le) = lock.record_spent(&fingerprint) {
                tracing::warn!("cannot record the spent refresh token: {le}");
            }
            return Err(RefreshError::Persist {
                path: shown,
                message,
            });
        }
        drop(lock);
        Ok(Rotated {
            credentials: Credentials {
                access_token: pair.access_token,
                bundle: Some(rotated),
            },
            network: true,
        })
    }

    fn endpoint(&self, bundle: &Bundle, shown: &str) -> Result<String, RefreshError> {
        let url = match &self.options.relayauth_url {
            Some(base) => format!("{}/v1/tokens/refresh", base.trim_end_matches('/')),
            None => bundle
                .refresh_endpoint()
                .ok_or_else(|| RefreshError::NoEndpoint {
                    path: shown.to_owned(),
                })?,
        };
        let parsed = reqwest::Url::parse(&url).map_err(|e| {
            RefreshError::BadEndpoint(format!(
                "the refresh endpoint {url} is not a valid URL: {e}"
            ))
        })?;
        match parsed.scheme() {
            "https" => Ok(url),
            "http" if is_loopback(&parsed) => Ok(url),
            "http" => Err(RefreshError::BadEndpoint(format!(
                "refusing to send a refresh token over plain http to {url}; use https (plain http is accepted only for loopback addresses)"
            ))),
            other => Err(RefreshError::BadEndpoint(format!(
                "the refresh endpoint {url} has the unsupported scheme {other}"
            ))),
        }
    }

    async fn post(&self, endpoint: &str, refresh_token: &str) -> Result<TokenPair, RefreshError> {
        let timeout = self.options.timeout;
        let sent = self
            .client
            .post(endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&json!({ "refreshToken": refresh_token }))
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return Err(RefreshError::Transport {
                    message: describe_http_error(&e, timeout),
                });
            }
            Err(e) => {
                return Err(RefreshError::Ambiguous {
                    message: describe_http_error(&e, timeout),
                });
            }
        };
        let status = resp.status().as_u16();
        let body = read_body(resp, MAX_REFRESH_ANSWER).await.map_err(|e| {
            if (200..300).contains(&status) || status >= 500 {
                RefreshError::Ambiguous {
                    message: format!("HTTP {status}, then {}", describe_http_error(&e, timeout)),
                }
            } else {
                // A 4xx was decided before anything rotated, even if its body was lost.
                classify_rejection(status, &[])
            }
        })?;
        if (200..300).contains(&status) {
            return TokenPair::from_response(&body).map_err(|e| RefreshError::Ambiguous {
                message: format!("HTTP {status} without a usable token pair: {e}"),
            });
        }
        if status >= 500 {
            let (code, message) = error_body(&body);
            return Err(RefreshError::Ambiguous {
                message: format!("HTTP {status} {code}: {message}"),
            });
        }
        Err(classify_rejection(status, &body))
    }
}

async fn read_body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// relayauth's error body: `{"error", "code", "message"}` in some combination.
fn error_body(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let looks_like_code =
        |t: &String| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let code = s("code")
        .or_else(|| s("error").filter(looks_like_code))
        .unwrap_or_default();
    let message = s("message")
        .or_else(|| s("error_description"))
        .or_else(|| s("error"))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    (code, message)
}

fn classify_rejection(status: u16, body: &[u8]) -> RefreshError {
    let (code, message) = error_body(body);
    let terminal =
        status == 401 || TERMINAL_CODES.contains(&code.as_str()) || code.contains("reuse");
    let code = if code.is_empty() {
        "(no code)".to_owned()
    } else {
        code
    };
    if terminal {
        RefreshError::Terminal {
            status,
            code,
            message,
        }
    } else {
        RefreshError::Rejected {
            status,
            code,
            message,
        }
    }
}

/// A refresh token's fingerprint: SHA-256, base64url. The token itself is never stored.
fn fingerprint(refresh_token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, refresh_token.as_bytes());
    b64url_encode(digest.as_ref())
}

/// Replace `path` with `contents` atomically: a temporary file in the same directory (mode
/// 0600), fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// An exclusive `flock` on the sidecar lock file; released when dropped. The file also records
/// the fingerprints of refresh tokens spent in ambiguous attempts.
struct BundleLock {
    file: File,
    path: PathBuf,
}

/// The largest refresh answer read (a token pair is a few kilobytes).
const MAX_REFRESH_ANSWER: usize = 1 << 20;

/// How many spent refresh-token fingerprints the lock file keeps (the newest): a bundle is
/// refreshed a few times a day, so these cover weeks, and the file stays small.
const MAX_SPENT_RECORDS: usize = 64;

impl BundleLock {
    async fn acquire(path: &Path, timeout: Duration) -> Result<BundleLock, RefreshError> {
        let fail = |message: String| RefreshError::Lock {
            path: path.display().to_string(),
            message,
        };
        // Non-blocking and regular files only: a FIFO planted at the lock path must not hang
        // the refresher.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        if !file.metadata().map_err(|e| fail(e.to_string()))?.is_file() {
            return Err(fail("it is not a regular file; remove it".to_owned()));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let err = match rustix::fs::flock(
                &file,
                rustix::fs::FlockOperation::NonBlockingLockExclusive,
            ) {
                Ok(()) => {
                    return Ok(BundleLock {
                        file,
                        path: path.to_path_buf(),
                    });
                }
                Err(e) => std::io::Error::from(e),
            };
            let busy = matches!(
                err.raw_os_error(),
                Some(libc::EWOULDBLOCK) | Some(libc::EINTR)
            );
            if !busy {
                return Err(fail(err.to_string()));
            }
            if Instant::now() >= deadline {
                return Err(fail(format!(
                    "another process has held it for more than {} s",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn records(&mut self) -> std::io::Result<Vec<String>> {
        let mut text = String::new();
        self.file.seek(SeekFrom::Start(0))?;
        (&self.file).take(1 << 16).read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("spent "))
            .map(str::to_owned)
            .collect())
    }

    fn spent(&mut self) -> Result<HashSet<String>, RefreshError> {
        self.records()
            .map(|r| r.into_iter().collect())
            .map_err(|e| RefreshError::Lock {
                path: self.path.display().to_string(),
                message: e.to_string(),
            })
    }

    fn record_spent(&mut self, fingerprint: &str) -> std::io::Result<()> {
        let mut records = self.records().unwrap_or_default();
        records.push(fingerprint.to_owned());
        let skip = records.len().saturating_sub(MAX_SPENT_RECORDS);
        let mut text = String::from(
            "# relayauth-mount refresh lock; refresh tokens (SHA-256) never to be sent again\n",
        );
        for r in &records[skip..] {
            text.push_str("spent ");
            text.push_str(r);
            text.push('\n');
        }
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_all()
    }
}

impl Drop for BundleLock {
    fn drop(&mut self) {
        // Closing the descriptor would release the lock too.
        let _ = rustix::fs::flock(&self.file, rustix::fs::FlockOperation::Unlock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_classified() {
        let t = |status, body: &str| classify_rejection(status, body.as_bytes());
        assert!(
            t(
                401,
                r#"{"error":"Invalid access token","code":"invalid_token"}"#
            )
            .is_terminal()
        );
        assert!(t(404, r#"{"code":"identity_not_found"}"#).is_terminal());
        assert!(t(403, r#"{"code":"delegation_expired"}"#).is_terminal());
        assert!(t(400, r#"{"error":"invalid_grant"}"#).is_terminal());
        assert!(!t(404, "not found").is_terminal());
        assert!(!t(429, r#"{"code":"rate_limited"}"#).is_terminal());
        assert!(!t(400, r#"{"error":"refreshToken is required"}"#).is_terminal());
        assert_eq!(
            t(401, r#"{"code":"workspace_token_revoked","error":"x"}"#).code(),
            Some("workspace_token_revoked")
        );
    }

    #[test]
    fn atomic_write_replaces_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
    }
}
