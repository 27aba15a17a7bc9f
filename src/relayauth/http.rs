//! HTTP clients for talking to relayauth and key endpoints: rustls only, timeouts on connect
//! and on the whole request, and a redirect policy that fits what the request carries.

use std::time::Duration;

/// Whether a URL names this machine (plain `http` is accepted only there).
pub fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An HTTP client for key endpoints: rustls, a timeout, and no redirect that would leave
/// https. A JWKS carries no secret, so following a redirect is harmless.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.previous().iter().any(|u| u.scheme() == "https")
            && attempt.url().scheme() != "https";
        if downgrade {
            attempt.error("refusing a redirect from https to plain http")
        } else if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    });
    build_client(timeout, policy)
}

/// An HTTP client for requests that carry a secret (a refresh token, an API key, a bearer
/// token): redirects are not followed, so the secret only ever goes to the configured host.
pub fn secret_client(timeout: Duration) -> Result<reqwest::Client, String> {
    build_client(timeout, reqwest::redirect::Policy::none())
}

fn build_client(
    timeout: Duration,
    policy: reqwest::redirect::Policy,
) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(policy)
        .user_agent(concat!("relayauth-mount/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot set up an HTTP client: {e}"))
}

/// Describe a reqwest failure in words (timeouts say how long).
pub fn describe_http_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {} ms (timed out)", timeout.as_millis())
    } else if e.is_connect() {
        format!("cannot connect: {}", root_cause(e))
    } else {
        root_cause(e)
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cur = s.source();
    }
    msg
}
