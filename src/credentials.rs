//! Where a token comes from (DESIGN section 5): a file holding the raw JWT, relayfile's delegated
//! credentials bundle, or an environment variable (`RELAYAUTH_TOKEN` by default).
//!
//! The bundle is relayfile's file, so it is read the way relayfile reads it: the access token is
//! the first non-empty of `accessToken`, `token`, `relayfileToken`; the refresh token of
//! `refreshToken`, `relayfileRefreshToken`; the workspace of `relayfileWorkspaceId`,
//! `workspaceId`; the refresh endpoint is `refreshUrl`, else `relayauthUrl` +
//! `/v1/tokens/refresh`. Every member is kept, known or not, so rewriting the bundle after a
//! refresh ([`Bundle::with_pair`]) changes only the token pair and loses nothing relayfile or
//! another tool stored there.
//!
//! Reading fails with an error that names the file (or variable), what is wrong with it and what
//! to do; nothing here panics on what a file contains.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::token::time::format_rfc3339;

/// The environment variable a token is read from by default.
pub const DEFAULT_TOKEN_ENV: &str = "RELAYAUTH_TOKEN";
/// Credential files larger than this are refused.
pub const MAX_CREDENTIAL_BYTES: u64 = 1 << 20;

/// Where to read a token from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// A file holding the JWT alone (surrounding whitespace ignored).
    JwtFile(PathBuf),
    /// relayfile's delegated credentials bundle (JSON).
    Bundle(PathBuf),
    /// An environment variable holding the JWT.
    Env(String),
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::JwtFile(p) => write!(f, "token file {}", p.display()),
            CredentialSource::Bundle(p) => write!(f, "credentials bundle {}", p.display()),
            CredentialSource::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// A token as read from its source, not yet verified.
#[derive(Clone)]
pub struct Credentials {
    /// The access token, exactly as stored (any `relay_ag_` prefix included).
    pub access_token: String,
    /// The whole bundle, when the source is one.
    pub bundle: Option<Bundle>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_token", &"[redacted]")
            .field("bundle", &self.bundle)
            .finish()
    }
}

/// A token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{what} does not exist; {fix}")]
    NotFound { what: String, fix: &'static str },
    #[error("cannot read {what}: {message}")]
    Unreadable { what: String, message: String },
    #[error(
        "{what} is {size} bytes, more than the {MAX_CREDENTIAL_BYTES}-byte limit for credentials"
    )]
    TooLarge { what: String, size: u64 },
    #[error("{what} is empty; {fix}")]
    Empty { what: String, fix: &'static str },
    #[error("{what} is not valid: {message}")]
    Invalid { what: String, message: String },
    #[error(
        "{what} has no access token: none of accessToken, token, relayfileToken is a non-empty string"
    )]
    NoToken { what: String },
    #[error(
        "environment variable {var} is not set; export it with the access token, or use --token-file"
    )]
    EnvUnset { var: String },
}

const FILE_FIX: &str = "pass a file that holds the access token (a JWT), or use --token-env VAR";
const BUNDLE_FIX: &str = "pass relayfile's delegated credentials file (JSON with accessToken)";

impl CredentialSource {
    /// Read the token (and the bundle, for a bundle source).
    pub fn read(&self) -> Result<Credentials, CredentialError> {
        match self {
            CredentialSource::JwtFile(path) => {
                let what = self.to_string();
                let text = read_text(path, &what, FILE_FIX)?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(CredentialError::Empty {
                        what,
                        fix: FILE_FIX,
                    });
                }
                if token.starts_with('{') {
                    return Err(CredentialError::Invalid {
                        what,
                        message: "it holds JSON, not a raw JWT; if it is relayfile's delegated credentials bundle, pass it with --credentials".into(),
                    });
                }
                check_single_token(token, &what)?;
                Ok(Credentials {
                    access_token: token.to_owned(),
                    bundle: None,
                })
            }
            CredentialSource::Bundle(path) => {
                let what = self.to_string();
                let text = read_text(path, &what, BUNDLE_FIX)?;
                if text.trim().is_empty() {
                    return Err(CredentialError::Empty {
                        what,
                        fix: BUNDLE_FIX,
                    });
                }
                let bundle = Bundle::parse(&text).map_err(|message| CredentialError::Invalid {
                    what: what.clone(),
                    message,
                })?;
                let Some(token) = bundle.access_token() else {
                    return Err(CredentialError::NoToken { what });
                };
                check_single_token(token, &what)?;
                Ok(Credentials {
                    access_token: token.to_owned(),
                    bundle: Some(bundle),
                })
            }
            CredentialSource::Env(var) => {
                let what = self.to_string();
                let value = match std::env::var(var) {
                    Ok(v) => v,
                    Err(std::env::VarError::NotPresent) => {
                        return Err(CredentialError::EnvUnset { var: var.clone() });
                    }
                    Err(std::env::VarError::NotUnicode(_)) => {
                        return Err(CredentialError::Invalid {
                            what,
                            message: "it is not valid UTF-8".into(),
                        });
                    }
                };
                let token = value.trim();
                if token.is_empty() {
                    return Err(CredentialError::Empty {
                        what,
                        fix: "set it to the access token (a JWT)",
                    });
                }
                check_single_token(token, &what)?;
                Ok(Credentials {
                    access_token: token.to_owned(),
                    bundle: None,
                })
            }
        }
    }

    /// [`CredentialSource::read`] off the async runtime, given up after a few seconds: a file
    /// on a stalled filesystem must not hold up the tasks that revoke and unmount.
    pub async fn read_async(&self) -> Result<Credentials, CredentialError> {
        let source = self.clone();
        crate::files::blocking(crate::files::READ_TIMEOUT, move || source.read())
            .await
            .unwrap_or_else(|e| {
                Err(CredentialError::Unreadable {
                    what: self.to_string(),
                    message: e.to_string(),
                })
            })
    }

    /// The file behind the source, if there is one (what a watcher watches).
    pub fn path(&self) -> Option<&Path> {
        match self {
            CredentialSource::JwtFile(p) | CredentialSource::Bundle(p) => Some(p),
            CredentialSource::Env(_) => None,
        }
    }
}

fn check_single_token(token: &str, what: &str) -> Result<(), CredentialError> {
    if let Some(scheme) = token
        .split_whitespace()
        .next()
        .filter(|w| w.eq_ignore_ascii_case("bearer"))
    {
        return Err(CredentialError::Invalid {
            what: what.to_owned(),
            message: format!(
                "it starts with \"{scheme} \" (the HTTP header's scheme); write the token alone, \
                 without \"{scheme} \""
            ),
        });
    }
    if token.chars().any(char::is_whitespace) {
        return Err(CredentialError::Invalid {
            what: what.to_owned(),
            message: "it must hold the token alone (one line, no spaces), but it contains \
                      whitespace inside; write just the token"
                .into(),
        });
    }
    Ok(())
}

fn read_text(path: &Path, what: &str, fix: &'static str) -> Result<String, CredentialError> {
    let unreadable = |message: String| CredentialError::Unreadable {
        what: what.to_owned(),
        message,
    };
    // Regular files only, opened without blocking: a FIFO at the token path must not wedge
    // whoever reads it (the daemon reads it again whenever it changes).
    let bytes = crate::files::read_regular(path, MAX_CREDENTIAL_BYTES).map_err(|e| match e {
        crate::files::ReadError::NotFound => CredentialError::NotFound {
            what: what.to_owned(),
            fix,
        },
        crate::files::ReadError::TooLarge { .. } => CredentialError::TooLarge {
            what: what.to_owned(),
            size: std::fs::metadata(path).map_or(MAX_CREDENTIAL_BYTES + 1, |m| m.len()),
        },
        other => unreadable(other.to_string()),
    })?;
    String::from_utf8(bytes).map_err(|_| unreadable("it is not UTF-8 text".into()))
}

/// A token pair as relayauth's refresh endpoint returns it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub access_token_expires_at: Option<String>,
    pub refresh_token_expires_at: Option<String>,
    pub delegation_not_after: Option<String>,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("access_token_expires_at", &self.access_token_expires_at)
            .field("refresh_token_expires_at", &self.refresh_token_expires_at)
            .finish_non_exhaustive()
    }
}

impl TokenPair {
    /// Read a refresh response body: both tokens must be non-empty strings; the dates are kept
    /// when they are strings.
    pub(crate) fn from_response(body: &[u8]) -> Result<TokenPair, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let token = |name: &str| -> Result<String, String> {
            match v.get(name).and_then(Value::as_str).map(str::trim) {
                Some(t) if !t.is_empty() => Ok(t.to_owned()),
                _ => Err(format!("{name} is missing or not a non-empty string")),
            }
        };
        let date = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(TokenPair {
            access_token: token("accessToken")?,
            refresh_token: token("refreshToken")?,
            access_token_expires_at: date("accessTokenExpiresAt"),
            refresh_token_expires_at: date("refreshTokenExpiresAt"),
            delegation_not_after: date("delegationNotAfter"),
        })
    }
}

/// relayfile's delegated credentials bundle: every member kept, the known ones read through
/// their aliases.
#[derive(Clone, PartialEq)]
pub struct Bundle {
    fields: Map<String, Value>,
}

impl fmt::Debug for Bundle {
    // The bundle holds bearer and refresh tokens: show only which members it has.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("members", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Members that must be strings (or null) when present.
const STRING_MEMBERS: [&str; 15] = [
    "accessToken",
    "token",
    "relayfileToken",
    "refreshToken",
    "relayfileRefreshToken",
    "accessTokenExpiresAt",
    "relayfileTokenExpiresAt",
    "refreshTokenExpiresAt",
    "relayfileRefreshTokenExpiresAt",
    "relayauthUrl",
    "refreshUrl",
    "relayfileWorkspaceId",
    "workspaceId",
    "agentName",
    "delegationNotAfter",
];

/// Aliases replaced by the canonical member when the pair is rewritten.
const TOKEN_ALIASES: [&str; 5] = [
    "token",
    "relayfileToken",
    "relayfileRefreshToken",
    "relayfileTokenExpiresAt",
    "relayfileRefreshTokenExpiresAt",
];

impl Bundle {
    /// Parse a bundle: a JSON object whose known members have the right types.
    pub fn parse(text: &str) -> Result<Bundle, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("it is not valid JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("it is not a JSON object".into());
        };
        for name in STRING_MEMBERS {
            match fields.get(name) {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(_) => return Err(format!("member {name} must be a string")),
            }
        }
        for name in ["scopes", "relayfileScopes"] {
            match fields.get(name) {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
                Some(_) => {
                    return Err(format!(
                        "member {name} must be an array of strings or a space-separated string"
                    ));
                }
            }
        }
        Ok(Bundle { fields })
    }

    /// Every member, as stored.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    fn first(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| {
            self.fields
                .get(*n)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        })
    }

    /// `accessToken`, `token` or `relayfileToken`.
    pub fn access_token(&self) -> Option<&str> {
        self.first(&["accessToken", "token", "relayfileToken"])
    }

    /// `refreshToken` or `relayfileRefreshToken`.
    pub fn refresh_token(&self) -> Option<&str> {
        self.first(&["refreshToken", "relayfileRefreshToken"])
    }

    pub fn access_token_expires_at(&self) -> Option<&str> {
        self.first(&["accessTokenExpiresAt", "relayfileTokenExpiresAt"])
    }

    pub fn refresh_token_expires_at(&self) -> Option<&str> {
        self.first(&["refreshTokenExpiresAt", "relayfileRefreshTokenExpiresAt"])
    }

    pub fn relayauth_url(&self) -> Option<&str> {
        self.first(&["relayauthUrl"])
    }

    pub fn refresh_url(&self) -> Option<&str> {
        self.first(&["refreshUrl"])
    }

    /// `relayfileWorkspaceId` or `workspaceId`.
    pub fn workspace_id(&self) -> Option<&str> {
        self.first(&["relayfileWorkspaceId", "workspaceId"])
    }

    pub fn agent_name(&self) -> Option<&str> {
        self.first(&["agentName"])
    }

    pub fn delegation_not_after(&self) -> Option<&str> {
        self.first(&["delegationNotAfter"])
    }

    /// `scopes` (or `relayfileScopes`): as relayfile recorded them, not necessarily the token's.
    pub fn scopes(&self) -> Vec<String> {
        for name in ["scopes", "relayfileScopes"] {
            match self.fields.get(name) {
                Some(Value::Array(a)) => {
                    return a
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect();
                }
                Some(Value::String(s)) => {
                    return s.split_ascii_whitespace().map(str::to_owned).collect();
                }
                _ => {}
            }
        }
        Vec::new()
    }

    /// The refresh endpoint: `refreshUrl`, else `relayauthUrl` + `/v1/tokens/refresh`.
    pub fn refresh_endpoint(&self) -> Option<String> {
        if let Some(url) = self.refresh_url() {
            return Some(url.to_owned());
        }
        self.relayauth_url()
            .map(|base| format!("{}/v1/tokens/refresh", base.trim_end_matches('/')))
    }

    /// The bundle with a rotated token pair: the canonical members (`accessToken`,
    /// `refreshToken`, `accessTokenExpiresAt`, `refreshTokenExpiresAt`) set, their aliases
    /// removed, `delegationNotAfter` updated when relayauth sent one, `updatedAt` set to `now`,
    /// and every other member kept as it was.
    pub fn with_pair(&self, pair: &TokenPair, now: SystemTime) -> Bundle {
        let mut fields = self.fields.clone();
        for alias in TOKEN_ALIASES {
            fields.remove(alias);
        }
        let mut set = |name: &str, value: Option<&str>| match value {
            Some(v) => {
                fields.insert(name.to_owned(), Value::String(v.to_owned()));
            }
            None => {
                fields.remove(name);
            }
        };
        set("accessToken", Some(&pair.access_token));
        set("refreshToken", Some(&pair.refresh_token));
        set(
            "accessTokenExpiresAt",
            pair.access_token_expires_at.as_deref(),
        );
        set(
            "refreshTokenExpiresAt",
            pair.refresh_token_expires_at.as_deref(),
        );
        if let Some(d) = &pair.delegation_not_after {
            fields.insert("delegationNotAfter".into(), Value::String(d.clone()));
        }
        fields.insert("updatedAt".into(), Value::String(format_rfc3339(now)));
        Bundle { fields }
    }

    /// The bundle as pretty JSON with a final newline, as relayfile writes it.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&Value::Object(self.fields.clone()))
            .unwrap_or_else(|_| "{}".into());
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_endpoint() {
        let b = Bundle::parse(
            r#"{"relayfileToken":"a.b.c","token":null,"relayfileRefreshToken":"r1",
                "relayauthUrl":"https://relayauth.test/","workspaceId":"ws",
                "relayfileScopes":"relayfile:fs:read:* relayfile:fs:write:/x/**","extra":{"k":1}}"#,
        )
        .unwrap();
        assert_eq!(b.access_token(), Some("a.b.c"));
        assert_eq!(b.refresh_token(), Some("r1"));
        assert_eq!(b.workspace_id(), Some("ws"));
        assert_eq!(b.scopes().len(), 2);
        assert_eq!(
            b.refresh_endpoint().as_deref(),
            Some("https://relayauth.test/v1/tokens/refresh")
        );
        let pair = TokenPair {
            access_token: "n.e.w".into(),
            refresh_token: "r2".into(),
            access_token_expires_at: Some("2030-01-01T00:00:00Z".into()),
            refresh_token_expires_at: None,
            delegation_not_after: None,
        };
        let rotated = b.with_pair(&pair, SystemTime::UNIX_EPOCH);
        assert_eq!(rotated.access_token(), Some("n.e.w"));
        assert_eq!(rotated.refresh_token(), Some("r2"));
        assert!(rotated.fields().get("relayfileToken").is_none());
        assert_eq!(rotated.fields()["extra"], serde_json::json!({"k": 1}));
        assert_eq!(rotated.fields()["updatedAt"], "1970-01-01T00:00:00Z");
        let again = Bundle::parse(&rotated.to_json()).unwrap();
        assert_eq!(again, rotated);
    }

    #[test]
    fn a_token_with_the_http_scheme_or_spaces_says_what_to_remove() {
        for raw in ["Bearer eyJ.a.b", "bearer eyJ.a.b", "BEARER\teyJ.a.b"] {
            let e = check_single_token(raw, "the token file")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("HTTP header's scheme") && e.contains("without"),
                "{e}"
            );
        }
        let e = check_single_token("eyJ.a .b", "the token file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("whitespace inside; write just the token"), "{e}");
        assert!(check_single_token("eyJ.a.b", "the token file").is_ok());
    }

    #[test]
    fn wrong_types_are_reported() {
        assert!(Bundle::parse(r#"{"accessToken": 7}"#).is_err());
        assert!(Bundle::parse(r#"{"scopes": [1]}"#).is_err());
        assert!(Bundle::parse("[]").is_err());
        assert!(Bundle::parse("{").is_err());
    }
}
