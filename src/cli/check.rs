//! `relayauth-mount check`: one decision, for scripts and for people debugging a token.
//!
//! The scopes come from `--scope`/`--scopes-json`, or from a token (`--token-file`,
//! `--token-env`, `--credentials`) verified against `--jwks` for `--workspace` first; a refused
//! token is a denial with the token's rejection code.

use clap::{ArgGroup, Args};
use serde_json::json;

use super::token::TokenArgs;
use super::{CliResult, Exit, Failure, print_json};
use crate::scope::{Requirement, ScopeSet};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["scope", "scopes_json", "token_file", "token_env", "credentials"])))]
#[command(group(ArgGroup::new("what").required(true).args(["require", "op"])))]
pub struct CheckArgs {
    /// A scope of the set (repeat for more), e.g. relayfile:fs:read:/github/**.
    #[arg(long = "scope", value_name = "S", action = clap::ArgAction::Append)]
    scope: Vec<String>,
    /// The scope set as a JSON array of strings (may be empty), used byte for byte.
    #[arg(long = "scopes-json", value_name = "JSON_ARRAY")]
    scopes_json: Option<String>,
    /// The requirement, RESOURCE:ACTION (fs:read, ops:replay, search:read, ...).
    #[arg(long, value_name = "RESOURCE:ACTION")]
    require: Option<String>,
    /// A filesystem operation (read, write, create, delete, manage): means fs:<op>.
    #[arg(long, value_name = "OP")]
    op: Option<String>,
    /// The relayfile path asked about ('' is the empty, workspace-level path).
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    path: String,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
    /// Decide against a verified token's scopes instead of --scope/--scopes-json.
    #[command(flatten)]
    token: TokenArgs,
}

pub fn run(args: CheckArgs) -> CliResult {
    let requirement = match (&args.require, &args.op) {
        (Some(r), _) => Requirement::parse(r),
        (None, Some(op)) => Requirement::fs(op),
        (None, None) => return Err(Failure::input("give --require RESOURCE:ACTION or --op OP")),
    }
    .map_err(|e| Failure::input(format!("{e}")))?;
    let token = if args.token.source().is_some() {
        match args.token.verify()? {
            Ok(token) => Some(token),
            Err(e) => {
                if args.json {
                    print_json(&json!({
                        "allowed": false,
                        "requirement": requirement.to_string(),
                        "matched_scope": null,
                        "reason": format!("the token was refused: {}", e.message),
                        "error_code": e.code.as_str(),
                    }));
                } else {
                    println!("denied: the token was refused ({}): {}", e.code, e.message);
                }
                return Ok(Exit::No);
            }
        }
    } else if args.token.has_verification_options() {
        return Err(Failure::input(
            "--jwks, --workspace, --org, --issuer and --leeway apply only to a token: add --token-file F, --token-env VAR or --credentials BUNDLE, or drop them",
        ));
    } else {
        None
    };
    let owned;
    let set = match &token {
        Some(t) => t.scopes().as_ref(),
        None => {
            let scopes = match &args.scopes_json {
                Some(text) => parse_scopes_json(text)?,
                None => args.scope.clone(),
            };
            owned = ScopeSet::new(&scopes);
            &owned
        }
    };
    let explained = set.explain(&requirement, &args.path);
    let allowed = explained.matched.is_some();
    if args.json {
        print_json(&json!({
            "allowed": allowed,
            "requirement": requirement.to_string(),
            "matched_scope": explained.matched_scope,
            "reason": explained.reason,
            "error_code": if allowed { None } else { Some("insufficient_scope") },
        }));
    } else {
        let verdict = if allowed { "allowed" } else { "denied" };
        println!("{verdict}: {}", explained.reason);
    }
    Ok(Exit::answer(allowed))
}

/// `--scopes-json`: a JSON array of strings, nothing else.
pub(crate) fn parse_scopes_json(text: &str) -> Result<Vec<String>, Failure> {
    serde_json::from_str::<Vec<String>>(text).map_err(|e| {
        Failure::input(format!(
            "--scopes-json must be a JSON array of strings, e.g. '[\"relayfile:fs:read:/github/**\"]': {e}"
        ))
    })
}
