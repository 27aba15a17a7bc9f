//! Token options shared by `check` and `token inspect`, and the `token inspect` command: read a
//! token from a file, an environment variable or a credentials bundle, load the JWKS and verify
//! the token exactly as the mount would.
//!
//! Exit codes: a token that is refused is an answer (exit 1, with its stable code); a token or
//! key set that cannot be read at all, or a missing `--jwks`/`--workspace`, is bad input
//! (exit 2, with a message naming the fix).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;

use super::{CliError, Outcome, print_json};
use crate::token::time::{expiry_words, format_rfc3339, unix_seconds};
use crate::token::{
    CredentialSource, JwksCache, JwksSource, TokenError, VerifiedToken, Verifier, VerifierConfig,
};

/// Where the token comes from and what it must match.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// A file holding the access token (a JWT, optionally relay_ag_-prefixed).
    #[arg(long = "token-file", value_name = "F")]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the access token (`--token-env` alone: RELAYAUTH_TOKEN).
    #[arg(long = "token-env", value_name = "VAR", num_args = 0..=1,
          default_missing_value = crate::token::credentials::DEFAULT_TOKEN_ENV)]
    pub token_env: Option<String>,
    /// relayfile's delegated credentials bundle (JSON with accessToken).
    #[arg(long = "credentials", value_name = "BUNDLE")]
    pub credentials: Option<PathBuf>,
    /// The JWKS: an https:// URL (relayauth's /.well-known/jwks.json), a file or a data: URL.
    #[arg(long, value_name = "J")]
    pub jwks: Option<String>,
    /// The workspace the token must belong to (its wks claim).
    #[arg(long, value_name = "WS")]
    pub workspace: Option<String>,
    /// The org the token must belong to.
    #[arg(long, value_name = "O")]
    pub org: Option<String>,
    /// The accepted issuer [default: https://relayauth.dev].
    #[arg(long, value_name = "I")]
    pub issuer: Option<String>,
    /// Clock-skew allowance for exp/nbf/iat, in seconds [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub leeway: Option<u64>,
}

impl TokenArgs {
    /// The token source given, if any.
    pub fn source(&self) -> Option<CredentialSource> {
        if let Some(f) = &self.token_file {
            Some(CredentialSource::JwtFile(f.clone()))
        } else if let Some(v) = &self.token_env {
            Some(CredentialSource::Env(v.clone()))
        } else {
            self.credentials.clone().map(CredentialSource::Bundle)
        }
    }

    /// Whether an option that only makes sense with a token was given.
    pub fn has_verification_options(&self) -> bool {
        self.jwks.is_some()
            || self.workspace.is_some()
            || self.org.is_some()
            || self.issuer.is_some()
            || self.leeway.is_some()
    }

    /// Read the token, load the keys and verify. The outer error is bad input (exit 2); the
    /// inner one is the token's refusal.
    pub fn verify(&self) -> Result<Result<VerifiedToken, TokenError>, CliError> {
        let Some(source) = self.source() else {
            return Err(CliError::input(
                "give the token with --token-file F, --token-env VAR or --credentials BUNDLE",
            ));
        };
        let Some(jwks) = &self.jwks else {
            return Err(CliError::input(
                "--jwks is required with a token: give relayauth's JWKS URL (https://.../.well-known/jwks.json), a JWKS file or a data: URL",
            ));
        };
        let workspace = match self.workspace.as_deref().map(str::trim) {
            Some(w) if !w.is_empty() => w.to_owned(),
            _ => {
                return Err(CliError::input(
                    "--workspace is required with a token: give the workspace the token must belong to (its wks claim)",
                ));
            }
        };
        let credentials = source.read().map_err(|e| CliError::input(e.to_string()))?;
        let jwks_source =
            JwksSource::parse(jwks).map_err(|e| CliError::input(format!("--jwks: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::input(format!("cannot start the async runtime: {e}")))?;
        let cache = runtime
            .block_on(JwksCache::load(jwks_source))
            .map_err(|e| CliError::input(format!("--jwks: {e}")))?;
        let mut config = VerifierConfig::new(workspace);
        config.org = self.org.clone().filter(|o| !o.trim().is_empty());
        if let Some(issuer) = &self.issuer {
            config.issuer = issuer.clone();
        }
        if let Some(leeway) = self.leeway {
            config.leeway = Duration::from_secs(leeway);
        }
        let verifier = Verifier::new(config, Arc::new(cache));
        Ok(verifier.verify(&credentials.access_token, SystemTime::now()))
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Verify a token and show its claims, scopes and expiry.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("token_source").required(true).args(["token_file", "token_env", "credentials"])))]
pub struct InspectArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: TokenCommand) -> Outcome {
    match cmd {
        TokenCommand::Inspect(args) => inspect(args),
    }
}

fn inspect(args: InspectArgs) -> Outcome {
    let token = match args.token.verify()? {
        Ok(t) => t,
        Err(e) => {
            if args.json {
                print_json(&json!({
                    "valid": false,
                    "error_code": e.code.as_str(),
                    "message": e.message,
                }));
            } else {
                println!("token refused ({}): {}", e.code, e.message);
            }
            return Ok(1);
        }
    };
    let now = SystemTime::now();
    let expiry = expiry_words(token.expires_at(), now);
    let scopes: Vec<serde_json::Value> = token
        .scopes()
        .scopes()
        .iter()
        .map(|s| {
            json!({
                "scope": &*s.raw,
                "valid": s.is_valid(),
                "mounts_at": s.mounts_at(),
                "problem": s.problem().map(|p| p.reason().to_owned()),
            })
        })
        .collect();
    if args.json {
        print_json(&json!({
            "valid": true,
            "subject": token.subject(),
            "sponsor_id": token.sponsor_id(),
            "sponsor_chain": token.sponsor_chain(),
            "org": token.org(),
            "workspace": token.workspace(),
            "token_id": token.token_id(),
            "session_id": token.session_id(),
            "parent_token_id": token.parent_token_id(),
            "issuer": token.claims().iss,
            "audience": token.claims().aud,
            "key_id": token.key_id(),
            "algorithm": token.algorithm().as_str(),
            "issued_at": format_rfc3339(token.issued_at()),
            "expires_at": format_rfc3339(token.expires_at()),
            "expires_in_seconds": unix_seconds(token.expires_at()) - unix_seconds(now),
            "expired": token.is_expired(now),
            "expiry": expiry,
            "scopes": scopes,
            "claims": token.claims(),
        }));
        return Ok(0);
    }
    let c = token.claims();
    let row = |label: &str, value: &str| println!("{label:<15} {value}");
    println!("token: valid ({})", expiry);
    row("subject", token.subject());
    row("sponsor", token.sponsor_id());
    row("sponsor chain", &token.sponsor_chain().join(" > "));
    row("org", token.org());
    row("workspace", token.workspace());
    row("token id", token.token_id());
    row("session id", token.session_id());
    row("parent token", token.parent_token_id().unwrap_or("(none)"));
    row("issuer", &c.iss);
    row("audience", &c.aud.to_string());
    row(
        "signing key",
        &format!("{} ({})", token.key_id(), token.algorithm()),
    );
    row("issued", &format_rfc3339(token.issued_at()));
    row(
        "expires",
        &format!("{} ({expiry})", format_rfc3339(token.expires_at())),
    );
    println!("scopes ({}):", token.scopes().scopes().len());
    for s in token.scopes().scopes() {
        match (s.problem(), s.mounts_at()) {
            (Some(p), _) if p.is_invalid() => {
                println!("  {}  invalid: {}; it grants nothing", s.raw, p.reason())
            }
            (Some(p), _) => println!("  {}  grants nothing: {}", s.raw, p.reason()),
            (None, Some(at)) => println!("  {}  valid, mounts at {at}", s.raw),
            (None, None) => println!("  {}  valid", s.raw),
        }
    }
    Ok(0)
}
