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

use super::{CliResult, Exit, Failure, print_json};
use crate::credentials::CredentialSource;
use crate::token::time::{expiry_words, format_rfc3339, unix_seconds};
use crate::token::{JwksCache, JwksSource, TokenError, VerifiedToken, Verifier, VerifierConfig};

/// Where the token comes from: one of three sources, the same flags for every command that
/// takes a token (`check`, `token inspect`, `mount`).
#[derive(Debug, Args)]
pub struct TokenSourceArgs {
    /// A file holding the access token (a JWT, optionally relay_ag_-prefixed).
    #[arg(long = "token-file", value_name = "F")]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the access token (`--token-env` alone: RELAYAUTH_TOKEN).
    #[arg(long = "token-env", value_name = "VAR", num_args = 0..=1,
          default_missing_value = crate::credentials::DEFAULT_TOKEN_ENV)]
    pub token_env: Option<String>,
    /// relayfile's delegated credentials bundle (JSON with accessToken); `mount` refreshes it
    /// before expiry.
    #[arg(long = "credentials", value_name = "BUNDLE")]
    pub credentials: Option<PathBuf>,
}

impl TokenSourceArgs {
    /// The token source given, if any (the flags exclude each other; this order is the one
    /// precedence should a caller build the struct by hand).
    pub fn source(&self) -> Option<CredentialSource> {
        if let Some(f) = &self.token_file {
            Some(CredentialSource::JwtFile(f.clone()))
        } else if let Some(b) = &self.credentials {
            Some(CredentialSource::Bundle(b.clone()))
        } else {
            self.token_env.clone().map(CredentialSource::Env)
        }
    }
}

/// A duration flag: whole seconds (`30`, saturating, never a panic), fractional seconds
/// (`0.5`) or a duration with a unit (`2s`, `500ms`, `5m`). `--leeway` means the same in every
/// command.
pub fn duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    if let Ok(secs) = text.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("{text:?} is too long a duration: {e}"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration (e.g. 30, 2s, 500ms, 5m): {e}"))
}

/// Where the token comes from and what it must match.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub from: TokenSourceArgs,
    /// The JWKS: an https:// URL (relayauth's /.well-known/jwks.json), a file or a data: URL
    /// (`mount` defaults to relayauth's, from --relayauth-url).
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
    /// Clock-skew allowance for exp/nbf/iat: seconds or a duration [default: 30s].
    #[arg(long, value_name = "D", value_parser = duration)]
    pub leeway: Option<Duration>,
}

impl TokenArgs {
    /// The token source given, if any.
    pub fn source(&self) -> Option<CredentialSource> {
        self.from.source()
    }

    /// Whether an option that only makes sense with a token was given.
    pub fn has_verification_options(&self) -> bool {
        self.jwks.is_some()
            || self.workspace.is_some()
            || self.org.is_some()
            || self.issuer.is_some()
            || self.leeway.is_some()
    }

    /// What a token must match, from these flags: the workspace (required), the org when
    /// given, the issuer and the leeway (their defaults otherwise). The same for every command.
    pub fn verifier_config(&self) -> Result<VerifierConfig, Failure> {
        let workspace = match self.workspace.as_deref().map(str::trim) {
            Some(w) if !w.is_empty() => w.to_owned(),
            _ => {
                return Err(Failure::input(
                    "--workspace is required with a token: give the workspace the token must belong to (its wks claim)",
                ));
            }
        };
        let mut config = VerifierConfig::new(workspace);
        config.org = self.org.clone().filter(|o| !o.trim().is_empty());
        if let Some(issuer) = &self.issuer {
            config.issuer = issuer.clone();
        }
        if let Some(leeway) = self.leeway {
            config.leeway = leeway;
        }
        Ok(config)
    }

    /// Read the token, load the keys and verify. The outer error is bad input (exit 2); the
    /// inner one is the token's refusal.
    pub fn verify(&self) -> Result<Result<VerifiedToken, TokenError>, Failure> {
        let Some(source) = self.source() else {
            return Err(Failure::input(
                "give the token with --token-file F, --token-env VAR or --credentials BUNDLE",
            ));
        };
        let Some(jwks) = &self.jwks else {
            return Err(Failure::input(
                "--jwks is required with a token: give relayauth's JWKS URL (https://.../.well-known/jwks.json), a JWKS file or a data: URL",
            ));
        };
        let config = self.verifier_config()?;
        let credentials = source.read().map_err(|e| Failure::input(e.to_string()))?;
        let jwks_source =
            JwksSource::parse(jwks).map_err(|e| Failure::input(format!("--jwks: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::input(format!("cannot start the async runtime: {e}")))?;
        let cache = runtime
            .block_on(JwksCache::load(jwks_source))
            .map_err(|e| Failure::input(format!("--jwks: {e}")))?;
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

pub fn run(cmd: TokenCommand) -> CliResult {
    match cmd {
        TokenCommand::Inspect(args) => inspect(args),
    }
}

fn inspect(args: InspectArgs) -> CliResult {
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
            return Ok(Exit::No);
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
        return Ok(Exit::Ok);
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
    Ok(Exit::Ok)
}
