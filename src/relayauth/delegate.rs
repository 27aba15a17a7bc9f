//! Asking relayauth for a child token (`POST /v1/tokens/delegate`, DESIGN section 12): the
//! parent presents its own token as the bearer; relayauth grants only scopes within the
//! parent's, with an expiry no later than the parent's, and sets `parentTokenId`.

use std::time::Duration;

use serde_json::{Value, json};

use super::http::{describe_http_error, secret_client};

/// How long a delegation may take before it is given up (it runs for a user waiting on
/// `delegate`, never on a filesystem call).
pub const DELEGATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why relayauth gave no child token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegateError {
    /// relayauth refused the scopes as wider than the parent's.
    #[error("relayauth refused the scopes as an escalation: {message}")]
    Escalation {
        message: String,
        offending: Vec<String>,
    },
    /// relayauth refused for another reason (status and its words).
    #[error("relayauth refused the delegation ({status}): {message}")]
    Refused { status: u16, message: String },
    /// No usable answer.
    #[error("relayauth could not be asked for a child token: {0}")]
    Unreachable(String),
}

/// A child token for `agent` with `scopes`, living at most `ttl` (relayauth caps it at the
/// parent's expiry), obtained with the parent's bearer token `parent`.
pub async fn delegate(
    base_url: &str,
    parent: &str,
    agent: &str,
    scopes: &[String],
    ttl: Option<Duration>,
) -> Result<String, DelegateError> {
    let client = secret_client(DELEGATE_TIMEOUT).map_err(DelegateError::Unreachable)?;
    let url = format!("{}/v1/tokens/delegate", base_url.trim_end_matches('/'));
    let mut body = json!({"agentName": agent, "requestedScopes": scopes});
    if let Some(t) = ttl {
        body["ttlSeconds"] = json!(t.as_secs().max(1));
    }
    let resp = client
        .post(&url)
        .bearer_auth(parent)
        .json(&body)
        .send()
        .await
        .map_err(|e| DelegateError::Unreachable(describe_http_error(&e, DELEGATE_TIMEOUT)))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| DelegateError::Unreachable(describe_http_error(&e, DELEGATE_TIMEOUT)))?;
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = v["error"]
        .as_str()
        .or(v["message"].as_str())
        .unwrap_or("no reason given")
        .to_owned();
    match status {
        200 | 201 => v["accessToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                DelegateError::Unreachable(format!("{url} answered {status} without accessToken"))
            }),
        403 if v["code"] == "scope_escalation" => Err(DelegateError::Escalation {
            message,
            offending: v["offending"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }),
        _ => Err(DelegateError::Refused { status, message }),
    }
}
