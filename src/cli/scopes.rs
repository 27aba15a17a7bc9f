//! `relayauth-mount scopes validate|within`: report on scopes and answer the delegation question.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliResult, Exit, print_json};
use crate::scope::{Scope, path, within};

#[derive(Debug, Subcommand)]
pub enum ScopesCommand {
    /// Say for each scope whether it is valid, where it mounts, and what is wrong with it.
    Validate(ValidateArgs),
    /// Decide whether a child scope set is within a parent set.
    Within(WithinArgs),
    /// Normalize relayfile paths as the path contract does.
    Normalize(NormalizeArgs),
    /// Decide whether a path is a directory or below it (both normalized first).
    Contains(ContainsArgs),
}

#[derive(Debug, Args)]
pub struct NormalizeArgs {
    /// The paths ('' is allowed).
    #[arg(value_name = "P", required = true)]
    paths: Vec<String>,
    /// Print a JSON array of {path, normalized}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ContainsArgs {
    /// The directory.
    #[arg(long, value_name = "DIR", allow_hyphen_values = true)]
    base: String,
    /// The path that may be inside it.
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    candidate: String,
    /// Print {contains, base, candidate} as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The scopes to validate.
    #[arg(value_name = "S", required = true)]
    scopes: Vec<String>,
    /// Print a JSON array of {scope, valid, mounts_at, error, warning}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct WithinArgs {
    /// The child (delegated) scopes.
    #[arg(long, value_name = "S", num_args = 1.., required = true, action = clap::ArgAction::Append)]
    child: Vec<String>,
    /// The parent scopes.
    #[arg(long, value_name = "S", num_args = 1.., required = true, action = clap::ArgAction::Append)]
    parent: Vec<String>,
    /// Print {within, offending, invalid} as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: ScopesCommand) -> CliResult {
    match cmd {
        ScopesCommand::Validate(args) => validate(args),
        ScopesCommand::Within(args) => run_within(args),
        ScopesCommand::Normalize(args) => {
            let rows: Vec<(String, String)> = args
                .paths
                .iter()
                .map(|p| (p.clone(), path::normalize(p)))
                .collect();
            if args.json {
                let rows: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(p, n)| json!({"path": p, "normalized": n}))
                    .collect();
                print_json(&serde_json::Value::Array(rows));
            } else {
                for (_, n) in rows {
                    println!("{n}");
                }
            }
            Ok(Exit::Ok)
        }
        ScopesCommand::Contains(args) => {
            let contains = path::contains(&args.base, &args.candidate);
            if args.json {
                print_json(&json!({
                    "contains": contains,
                    "base": path::normalize(&args.base),
                    "candidate": path::normalize(&args.candidate),
                }));
            } else {
                let verb = if contains {
                    "contains"
                } else {
                    "does not contain"
                };
                println!(
                    "{} {verb} {}",
                    path::normalize(&args.base),
                    path::normalize(&args.candidate)
                );
            }
            Ok(Exit::answer(contains))
        }
    }
}

fn validate(args: ValidateArgs) -> CliResult {
    let parsed: Vec<Scope> = args.scopes.iter().map(|s| Scope::parse(s)).collect();
    let all_valid = parsed.iter().all(Scope::is_valid);
    if args.json {
        let rows: Vec<serde_json::Value> = parsed
            .iter()
            .map(|s| {
                let problem = s.problem();
                json!({
                    "scope": &*s.raw,
                    "valid": s.is_valid(),
                    "mounts_at": s.mounts_at(),
                    "error": problem.as_ref().filter(|p| p.is_invalid()).map(|p| p.reason()),
                    "warning": problem.as_ref().filter(|p| !p.is_invalid()).map(|p| p.reason()),
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(rows));
    } else {
        for s in &parsed {
            match (s.problem(), s.mounts_at()) {
                (Some(p), _) if p.is_invalid() => {
                    println!("invalid        {}: {p}; it grants nothing", s.raw)
                }
                (Some(p), _) => println!("grants nothing {}: {p}", s.raw),
                (None, Some(at)) => println!("valid          {} (mounts at {at})", s.raw),
                (None, None) => println!("valid          {}", s.raw),
            }
        }
    }
    Ok(Exit::answer(all_valid))
}

fn run_within(args: WithinArgs) -> CliResult {
    let answer = within(&args.child, &args.parent);
    if args.json {
        print_json(&json!(answer));
    } else if answer.within {
        println!("within: every child scope is covered by a parent scope");
    } else {
        let mut parts = Vec::new();
        if !answer.offending.is_empty() {
            parts.push(format!(
                "not covered by any parent scope: {}",
                answer.offending.join(", ")
            ));
        }
        if !answer.invalid.is_empty() {
            parts.push(format!("invalid: {}", answer.invalid.join(", ")));
        }
        println!("not within: {}", parts.join("; "));
    }
    Ok(Exit::answer(answer.within))
}
