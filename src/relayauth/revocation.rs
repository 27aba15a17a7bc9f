//! The relayauth client for revocation checks (DESIGN section 10).
//!
//! The daemon asks relayauth, in the background and never on a filesystem call, whether each
//! session is still alive. Strategies:
//!
//! - `list`: `GET /v1/tokens/revocation?jti=` answers `{"revoked": bool}` (needs the API key, or
//!   a token allowed to read tokens);
//! - `introspect`: `GET /v1/tokens/introspect?token=` with the API key; the JSON literal `null`
//!   means inactive;
//! - `probe`: the session's own token against introspect: `401` means revoked, `403` (not
//!   allowed to introspect) means alive;
//! - `auto`: the first of these that gives a definite answer, remembered.
//!
//! Anything else (a timeout, a 5xx, an unexpected body) is not an answer: the session's
//! confirmation simply gets older, and the fail-closed limits take over.

use std::time::Duration;

use parking_lot::Mutex;
use reqwest::StatusCode;
use serde_json::Value;

/// How to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    Auto,
    List,
    Introspect,
    Probe,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::List => "list",
            Strategy::Introspect => "introspect",
            Strategy::Probe => "probe",
        }
    }
}

/// relayauth's answer about one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Alive,
    Revoked(String),
}

/// No answer this time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoAnswer(pub String);

/// A revocation checker for one relayauth.
#[derive(Debug)]
pub struct RevocationClient {
    base: reqwest::Url,
    client: reqwest::Client,
    api_key: Option<String>,
    strategy: Strategy,
    resolved: Mutex<Option<Strategy>>,
}

impl RevocationClient {
    pub fn new(
        base: &str,
        api_key: Option<String>,
        strategy: Strategy,
        timeout: Duration,
    ) -> Result<RevocationClient, String> {
        let mut base =
            reqwest::Url::parse(base).map_err(|e| format!("relayauth URL {base:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!("relayauth URL {base} must be http:// or https://"));
        }
        if base.scheme() == "http" && !super::http::is_loopback(&base) {
            return Err(format!(
                "relayauth URL {base} is plain http to a non-loopback host; use https"
            ));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let client = super::http::secret_client(timeout)?;
        if strategy == Strategy::Introspect && api_key.is_none() {
            return Err("--revocation introspect needs an API key (--relayauth-api-key or RELAYAUTH_API_KEY)".to_owned());
        }
        Ok(RevocationClient {
            base,
            client,
            api_key,
            strategy,
            resolved: Mutex::new(None),
        })
    }

    /// The strategy in use (for `auto`, the one that answered first).
    pub fn strategy(&self) -> Strategy {
        self.resolved.lock().unwrap_or(self.strategy)
    }

    fn url(&self, path: &str, query: (&str, &str)) -> Result<reqwest::Url, NoAnswer> {
        let mut url = self
            .base
            .join(path)
            .map_err(|e| NoAnswer(format!("bad relayauth URL: {e}")))?;
        url.query_pairs_mut().append_pair(query.0, query.1);
        Ok(url)
    }

    /// Ask about the session holding `token` (raw, as relayauth issued it) with id `jti`.
    pub async fn check(&self, token: &str, jti: &str) -> Result<Status, NoAnswer> {
        let order: Vec<Strategy> = match (self.strategy, *self.resolved.lock()) {
            (Strategy::Auto, Some(s)) => vec![s],
            (Strategy::Auto, None) => {
                let mut v = vec![Strategy::List];
                if self.api_key.is_some() {
                    v.push(Strategy::Introspect);
                }
                v.push(Strategy::Probe);
                v
            }
            (s, _) => vec![s],
        };
        let mut reasons = Vec::new();
        for s in order {
            match self.ask(s, token, jti).await {
                Ok(status) => {
                    if self.strategy == Strategy::Auto {
                        *self.resolved.lock() = Some(s);
                    }
                    return Ok(status);
                }
                Err(NoAnswer(why)) => reasons.push(format!("{}: {why}", s.name())),
            }
        }
        Err(NoAnswer(reasons.join("; ")))
    }

    async fn ask(&self, strategy: Strategy, token: &str, jti: &str) -> Result<Status, NoAnswer> {
        let transport = |e: reqwest::Error| {
            NoAnswer(super::http::describe_http_error(&e, Duration::from_secs(5)))
        };
        match strategy {
            Strategy::List => {
                let mut req = self
                    .client
                    .get(self.url("v1/tokens/revocation", ("jti", jti))?);
                req = match &self.api_key {
                    Some(k) => req.header("x-api-key", k),
                    None => req.bearer_auth(token),
                };
                let resp = req.send().await.map_err(transport)?;
                let status = resp.status();
                if status == StatusCode::UNAUTHORIZED && self.api_key.is_none() {
                    return Ok(Status::Revoked(own_token_refused(resp).await));
                }
                if status != StatusCode::OK {
                    return Err(NoAnswer(format!("HTTP {status}")));
                }
                let body: Value = resp.json().await.map_err(transport)?;
                match body.get("revoked").and_then(Value::as_bool) {
                    Some(true) => Ok(Status::Revoked(format!(
                        "token {jti} is on relayauth's revocation list"
                    ))),
                    Some(false) => Ok(Status::Alive),
                    None => Err(NoAnswer("answer without a boolean \"revoked\"".to_owned())),
                }
            }
            Strategy::Introspect | Strategy::Probe => {
                let mut req = self
                    .client
                    .get(self.url("v1/tokens/introspect", ("token", token))?);
                let own = strategy == Strategy::Probe || self.api_key.is_none();
                req = match (&self.api_key, own) {
                    (Some(k), false) => req.header("x-api-key", k),
                    _ => req.bearer_auth(token),
                };
                let resp = req.send().await.map_err(transport)?;
                let status = resp.status();
                match status {
                    StatusCode::UNAUTHORIZED if own => {
                        Ok(Status::Revoked(own_token_refused(resp).await))
                    }
                    StatusCode::FORBIDDEN if own => Ok(Status::Alive),
                    StatusCode::OK => {
                        let body: Value = resp.json().await.map_err(transport)?;
                        if body.is_null() || body.get("active") == Some(&Value::Bool(false)) {
                            Ok(Status::Revoked(
                                "relayauth reports the token inactive".to_owned(),
                            ))
                        } else {
                            Ok(Status::Alive)
                        }
                    }
                    other => Err(NoAnswer(format!("HTTP {other}"))),
                }
            }
            Strategy::Auto => Err(NoAnswer("auto is not a strategy of its own".to_owned())),
        }
    }
}

/// The most of a refusal's body that is read for its reason.
const MAX_REFUSAL_BODY: usize = 4096;

/// Why relayauth refused the session's own token (401), from its answer's body.
async fn own_token_refused(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_REFUSAL_BODY {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    body.truncate(MAX_REFUSAL_BODY);
    own_token_refusal(&body)
}

/// The reason in words: relayauth's own where its body gives one (`{"error": ...}`), and a
/// token relayauth has no record of told apart from a revoked one (a development issuer
/// restarted without `--state` forgets every token it issued).
fn own_token_refusal(body: &[u8]) -> String {
    let said = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.get("error").and_then(Value::as_str).map(|m| {
            m.chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect::<String>()
        })
    });
    match said {
        Some(m) if m.contains("no record of") => format!(
            "relayauth has no record of the session's own token (401: {m}); it was not revoked \
             there: a development issuer restarted without --state forgets every token it \
             issued (start it with --state DIR and mint a new token)"
        ),
        Some(m) => format!("relayauth refused the session's own token (401: {m})"),
        None => "relayauth refused the session's own token (401)".to_owned(),
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::own_token_refusal;

    #[test]
    fn a_refusal_says_relayauths_reason_and_tells_unknown_from_revoked() {
        let unknown = own_token_refusal(
            br#"{"error":"the bearer token is not accepted: invalid_token: this issuer has no record of token tok_1","code":"unauthorized"}"#,
        );
        assert!(
            unknown.contains("no record") && unknown.contains("--state"),
            "{unknown}"
        );
        assert!(unknown.contains("was not revoked"), "{unknown}");
        let revoked = own_token_refusal(
            br#"{"error":"the bearer token is not accepted: revoked: by its sponsor","code":"unauthorized"}"#,
        );
        assert!(revoked.contains("revoked: by its sponsor"), "{revoked}");
        assert!(!revoked.contains("--state"), "{revoked}");
        assert_eq!(
            own_token_refusal(b"<html>"),
            "relayauth refused the session's own token (401)"
        );
        let control = own_token_refusal(b"{\"error\":\"a\\u001b[31mb\"}");
        assert!(!control.contains('\u{1b}'), "{control}");
    }
}
