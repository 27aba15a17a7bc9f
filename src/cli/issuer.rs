//! `relayauth-mount dev-issuer`: run the development issuer (DESIGN section 12) until SIGINT or
//! SIGTERM.
//!
//! Scripts wait for the one machine-readable line it prints on stdout once it is listening,
//! `READY {"url", "jwks", "iss", "admin_key", "alg", "identities"}`; everything before it is
//! for people. A stop writes the state directory (when there is one) and exits 0.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

use super::{CliResult, Exit, Failure};
use crate::issuer::ids::new_admin_key;
use crate::issuer::{DEFAULT_ISS, IssuerConfig, RunningIssuer, Seed, StartError, serve};
use crate::token::KeyAlgorithm;

#[derive(Debug, Args)]
pub struct DevIssuerArgs {
    /// Address to listen on; loopback unless told otherwise (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    listen: String,
    /// The admin API key (x-api-key header); without it a random key is generated and printed.
    #[arg(
        long,
        value_name = "KEY",
        env = "RELAYAUTH_DEV_ADMIN_KEY",
        hide_env_values = true
    )]
    admin_key: Option<String>,
    /// The issuer string put in `iss`; verifiers must be configured with it (--issuer).
    #[arg(long, value_name = "ISS", default_value = DEFAULT_ISS)]
    iss: String,
    /// Keep keys, identities, sessions, revocations and the audit trail in DIR across restarts.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Which key signs (both are published in the JWKS).
    #[arg(long, value_enum, default_value = "RS256", ignore_case = true)]
    alg: Alg,
    /// Create the identities of this file at start (e.g. mount-fixtures/identities/acme.json).
    #[arg(long, value_name = "FILE")]
    seed: Option<PathBuf>,
    /// Once listening, mint an access token for the seeded identity NAME and write it to FILE
    /// (mode 0600), ready for `mount --token-file FILE` or `run --token-file FILE`; repeatable.
    #[arg(long, value_name = "NAME=FILE", value_parser = token_target)]
    write_token: Vec<(String, PathBuf)>,
    /// How long the tokens of --write-token live.
    #[arg(long, value_name = "D", default_value = "1h", value_parser = super::token::duration)]
    token_ttl: std::time::Duration,
}

fn token_target(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(file)))
        }
        _ => Err(format!(
            "{text:?}: give NAME=FILE, a seeded identity's name and the file to write its token \
             to (e.g. acme-lead=/tmp/lead.jwt)"
        )),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Alg {
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "EdDSA")]
    EdDsa,
}

fn parse_listen(text: &str) -> Result<SocketAddr, Failure> {
    let bad = |why: String| {
        Failure::input(format!(
            "--listen {text:?}: {why}; give HOST:PORT, e.g. 127.0.0.1:8787 (port 0 picks a free port)"
        ))
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let mut addrs = text.to_socket_addrs().map_err(|e| bad(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| bad("it resolves to no address".into()))
}

fn start_error(e: StartError) -> Failure {
    let exit = match e {
        StartError::Bind { .. } | StartError::Keys(_) => Exit::No,
        _ => Exit::Usage,
    };
    Failure {
        exit,
        message: format!("dev-issuer: {e}"),
    }
}

pub fn run(args: DevIssuerArgs) -> CliResult {
    let listen = parse_listen(&args.listen)?;
    let generated = args.admin_key.is_none();
    let admin_key = match args.admin_key {
        Some(k) => k,
        None => new_admin_key().ok_or_else(|| {
            Failure::failed("the system gave no randomness for an admin key; pass --admin-key")
        })?,
    };
    let seed = args
        .seed
        .as_deref()
        .map(Seed::from_file)
        .transpose()
        .map_err(start_error)?;
    let config = IssuerConfig {
        listen,
        admin_key,
        issuer: args.iss,
        state_dir: args.state,
        algorithm: match args.alg {
            Alg::Rs256 => KeyAlgorithm::Rs256,
            Alg::EdDsa => KeyAlgorithm::EdDsa,
        },
        seed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("cannot start the async runtime: {e}")))?;
    let tokens = Tokens {
        targets: args.write_token,
        ttl: args.token_ttl,
    };
    runtime.block_on(serve_until_signal(config, generated, tokens))
}

/// What `--write-token` asks for.
struct Tokens {
    targets: Vec<(String, PathBuf)>,
    ttl: std::time::Duration,
}

/// Mint a token for each `--write-token NAME=FILE` through the issuer's own API and write it.
async fn write_tokens(running: &RunningIssuer, tokens: &Tokens) -> Result<(), Failure> {
    if tokens.targets.is_empty() {
        return Ok(());
    }
    let client = crate::relayauth::http::secret_client(std::time::Duration::from_secs(10))
        .map_err(Failure::failed)?;
    for (name, file) in &tokens.targets {
        let Some(id) = running.identities().get(name) else {
            let known: Vec<&str> = running.identities().keys().map(String::as_str).collect();
            return Err(Failure::input(format!(
                "--write-token {name}=...: no seeded identity is named {name:?} ({}); seed it \
                 with --seed FILE",
                if known.is_empty() {
                    "none was seeded".to_owned()
                } else {
                    format!("seeded: {}", known.join(", "))
                }
            )));
        };
        let answer = client
            .post(format!("{}/v1/tokens", running.url()))
            .header("x-api-key", running.admin_key())
            .json(&serde_json::json!({"identityId": id, "expiresIn": tokens.ttl.as_secs()}))
            .send()
            .await
            .map_err(|e| Failure::failed(format!("--write-token {name}: cannot mint: {e}")))?;
        let status = answer.status();
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        let Some(token) = body["accessToken"].as_str().filter(|_| status.is_success()) else {
            return Err(Failure::input(format!(
                "--write-token {name}: the issuer refused ({status}: {}); check --token-ttl",
                body["error"].as_str().unwrap_or("no reason given")
            )));
        };
        write_private(file, token).map_err(|e| {
            Failure::input(format!(
                "--write-token {name}: cannot write {}: {e}",
                file.display()
            ))
        })?;
    }
    Ok(())
}

/// Write `text` to `path` readable by its owner only (replacing what was there).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

async fn serve_until_signal(config: IssuerConfig, generated: bool, tokens: Tokens) -> CliResult {
    // Handlers first, so a signal sent as soon as READY is read is handled, not fatal.
    let signals =
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    let (mut term, mut int) =
        signals.map_err(|e| Failure::failed(format!("cannot install signal handlers: {e}")))?;
    let running = serve(config).await.map_err(start_error)?;
    if !running.addr().ip().is_loopback() {
        eprintln!(
            "relayauth-mount dev-issuer: warning: listening on {}, which is not a loopback address: anyone who can reach it can ask for tokens with the admin key, and it has no rate limits; use 127.0.0.1 unless you mean it",
            running.addr()
        );
    }
    if let Err(f) = write_tokens(&running, &tokens).await {
        let _ = running.shutdown().await;
        return Err(f);
    }
    print_banner(&running, generated, &tokens);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("relayauth-mount dev-issuer: stopping");
    running.shutdown().await.map_err(start_error)?;
    Ok(Exit::Ok)
}

fn print_banner(running: &RunningIssuer, generated: bool, tokens: &Tokens) {
    let issuer = running.issuer();
    let (rsa_kid, ed_kid) = issuer.kids();
    let (signing, other) = match issuer.algorithm() {
        KeyAlgorithm::Rs256 => (
            format!("RS256 (kid {rsa_kid})"),
            format!("EdDSA kid {ed_kid}"),
        ),
        KeyAlgorithm::EdDsa => (
            format!("EdDSA (kid {ed_kid})"),
            format!("RS256 kid {rsa_kid}"),
        ),
    };
    println!(
        "relayauth-mount dev-issuer: a DEVELOPMENT token issuer for laptops, demos and tests."
    );
    println!(
        "  It is not relayauth and not for production: one admin key, local state, no rate limits."
    );
    println!("  url:        {}", running.url());
    println!("  jwks:       {}", running.jwks_url());
    println!(
        "  issuer:     {}   (verifiers need --issuer {})",
        running.iss(),
        running.iss()
    );
    println!("  signing:    {signing}; also published: {other}");
    match issuer.state_dir() {
        Some(dir) => println!("  state:      {}", dir.display()),
        None => println!(
            "  state:      memory only (keys, identities and revocations are lost on exit; --state DIR keeps them)"
        ),
    }
    if generated {
        println!(
            "  admin key:  {}   (generated; send it as the x-api-key header, or fix one with --admin-key / RELAYAUTH_DEV_ADMIN_KEY)",
            running.admin_key()
        );
    }
    for (name, id) in running.identities() {
        println!("  identity:   {name} -> {id}");
    }
    for (name, file) in &tokens.targets {
        println!(
            "  token:      {name} -> {} (expires in {}; `mount --token-file {}`)",
            file.display(),
            humantime::format_duration(tokens.ttl),
            file.display()
        );
    }
    println!("READY {}", running.ready_json());
}
