//! `relayauth-mount mount`, `status` and `unmount`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args};

use super::token::{TokenArgs, duration};
use super::{CliResult, Exit, Failure, print_json};
use crate::daemon::{self, MountSpec, control};
use crate::relayauth::Strategy;

/// How reads and writes reach the mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoMode {
    /// Every read and write goes through the daemon and is checked, so revocation cuts off
    /// open files too.
    Strict,
    /// Opens are checked; then the kernel reads and writes plain mirror files directly (Linux
    /// 6.9+, root). Open files keep working after revocation unless their processes are
    /// stopped, so `--on-revoke kill` is the default.
    Passthrough,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("credentials_source").required(true).args(["token_file", "credentials", "token_env"])))]
pub struct MountArgs {
    /// The relayfile mirror directory.
    source: PathBuf,
    /// An empty directory where the guarded view appears.
    mountpoint: PathBuf,
    /// The token and what it must match (workspace required).
    #[command(flatten)]
    token: TokenArgs,
    /// relayauth's base URL (revocation checks, refresh, default JWKS).
    #[arg(long, value_name = "URL", env = "RELAYAUTH_URL")]
    relayauth_url: Option<String>,
    /// An API key for relayauth's revocation list and introspection.
    #[arg(
        long,
        value_name = "KEY",
        env = "RELAYAUTH_API_KEY",
        hide_env_values = true
    )]
    relayauth_api_key: Option<String>,
    /// How reads and writes reach the mirror.
    #[arg(long, value_enum, default_value = "strict")]
    io: IoMode,
    /// How often relayauth is asked whether each session is revoked.
    #[arg(long, value_name = "D", default_value = "2s", value_parser = duration)]
    poll_interval: Duration,
    /// How revocation is checked.
    #[arg(long, value_enum, default_value = "auto")]
    revocation: Strategy,
    /// Writebacks are refused when relayauth has not confirmed the session for this long.
    #[arg(long, value_name = "D", default_value = "30s", value_parser = duration)]
    fail_closed_after: Duration,
    /// Everything is refused when relayauth has not confirmed the session for this long.
    #[arg(long, value_name = "D", default_value = "5m", value_parser = duration)]
    max_staleness: Duration,
    /// The audit log (JSON lines; default $XDG_STATE_HOME/relayauth-mount/audit.jsonl).
    #[arg(long, value_name = "F")]
    audit_log: Option<PathBuf>,
    /// The writeback policies (default SOURCE/.relay/writeback-policies.json).
    #[arg(long, value_name = "F")]
    writeback_policies: Option<PathBuf>,
    /// Top-level directories that are local, not provider-backed (comma-separated).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    local_roots: Vec<String>,
    /// Callers that are not registered with the mount see nothing.
    #[arg(long)]
    require_registration: bool,
    /// A process whose own environment holds RELAYAUTH_TOKEN acts under that token (admitted
    /// as `run` would register it: verified, never wider than what the process acts under).
    /// Turns the kernel's caches off for the whole mount.
    #[arg(long)]
    token_from_env: bool,
    /// What happens to a session's processes when it is revoked or expires: `deny` refuses
    /// everything they ask; `kill` also stops them (SIGTERM, then SIGKILL). Default: `deny`
    /// with `--io strict`, `kill` with `--io passthrough`.
    #[arg(long, value_enum)]
    on_revoke: Option<crate::daemon::ending::OnRevoke>,
    /// Let every local user act under the mount's token (by default only the user running the
    /// mount, and root, may use it). The kernel then also applies the mirror's permission bits.
    #[arg(long)]
    allow_other_users: bool,
    /// FUSE worker threads.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Stay in the foreground (logs to stderr) instead of becoming a daemon once mounted.
    #[arg(long)]
    foreground: bool,
}

pub fn run_mount(args: MountArgs) -> CliResult {
    use crate::daemon::ending::OnRevoke;
    let passthrough = args.io == IoMode::Passthrough
        && match crate::passthrough::unavailable() {
            None => true,
            Some(why) => {
                eprintln!(
                    "relayauth-mount: warning: --io passthrough is not available here: {why}; \
                     mounting with --io strict (every read and write checked by the daemon)"
                );
                false
            }
        };
    if passthrough && (args.token_from_env || args.require_registration) {
        let flag = if args.token_from_env {
            "--token-from-env"
        } else {
            "--require-registration"
        };
        return Err(Failure::input(format!(
            "{flag} needs sub-agent sessions, and --io passthrough serves only the mount's own \
             session (a sub-agent's open files could not be cut off when it is revoked); use \
             --io strict with {flag}"
        )));
    }
    let on_revoke = match args.on_revoke {
        Some(o) => o,
        None if passthrough => OnRevoke::Kill,
        None => OnRevoke::Deny,
    };
    if passthrough && on_revoke == OnRevoke::Deny {
        eprintln!(
            "relayauth-mount: warning: --io passthrough with --on-revoke deny: files a session \
             has open when it is revoked keep reading and writing until they are closed; \
             drop --on-revoke deny to have their processes stopped"
        );
    }
    let config = args.token.verifier_config()?;
    let Some(credentials) = args.token.source() else {
        return Err(Failure::input(
            "give --token-file F, --credentials BUNDLE or --token-env VAR",
        ));
    };
    let spec = MountSpec {
        source: args.source,
        mountpoint: args.mountpoint,
        workspace: config.workspace,
        org: config.org,
        credentials,
        relayauth_url: args.relayauth_url,
        api_key: args.relayauth_api_key,
        jwks: args.token.jwks,
        issuer: config.issuer,
        leeway: config.leeway,
        poll_interval: args.poll_interval.max(Duration::from_millis(100)),
        revocation: args.revocation,
        fail_closed_after: args.fail_closed_after,
        max_staleness: args.max_staleness,
        audit_log: args.audit_log,
        writeback_policies: args.writeback_policies,
        local_roots: args
            .local_roots
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect(),
        require_registration: args.require_registration,
        token_from_env: args.token_from_env,
        allow_other_users: args.allow_other_users,
        on_revoke,
        passthrough,
        threads: args.threads.unwrap_or_else(crate::fuse::default_threads),
        foreground: args.foreground,
    };
    daemon::run(spec)
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The mountpoint (without one: every relayauth-mount mount here, one line each).
    mountpoint: Option<PathBuf>,
    /// Print the daemon's JSON.
    #[arg(long)]
    json: bool,
}

/// A duration in words, to the second (`59m 52s`).
fn in_words(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// `status` without a mountpoint: each relayauth-mount mount here, in one line.
fn list_mounts(json: bool) -> CliResult {
    let mounts = control::mounts();
    let answers: Vec<serde_json::Value> = mounts
        .iter()
        .map(|m| match control::request(m, &control::Request::Status) {
            Ok(v) => v,
            Err(e) => serde_json::json!({"ok": false, "mountpoint": m, "error": e}),
        })
        .collect();
    if json {
        print_json(&serde_json::json!({ "mounts": answers }));
        return Ok(Exit::Ok);
    }
    if answers.is_empty() {
        println!(
            "no relayauth-mount mount here (start one with `relayauth-mount mount SOURCE \
             MOUNTPOINT ...`)"
        );
    }
    for (m, v) in mounts.iter().zip(&answers) {
        if v["ok"] != true {
            println!(
                "{}: {}",
                m.display(),
                v["error"].as_str().unwrap_or("no answer")
            );
            continue;
        }
        let s = &v["session"];
        let subs = v["sessions"]
            .as_array()
            .map_or(0, |a| a.len().saturating_sub(1));
        println!(
            "{}: agent {}, {}, {} I/O, {} sub-agent session(s), token expires in {}",
            m.display(),
            s["agent"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            v["io"].as_str().unwrap_or("?"),
            subs,
            in_words(s["expires_in_secs"].as_u64().unwrap_or(0))
        );
    }
    Ok(Exit::Ok)
}

pub fn run_status(args: StatusArgs) -> CliResult {
    let Some(mountpoint) = args.mountpoint else {
        return list_mounts(args.json);
    };
    let v = control::request(&mountpoint, &control::Request::Status).map_err(Failure::failed)?;
    if v["ok"] != true {
        return Err(Failure::failed(
            v["error"]
                .as_str()
                .unwrap_or("the daemon refused")
                .to_owned(),
        ));
    }
    if args.json {
        print_json(&v);
        return Ok(Exit::Ok);
    }
    let s = &v["session"];
    println!(
        "{} (source {}), daemon pid {}",
        v["mountpoint"].as_str().unwrap_or("?"),
        v["source"].as_str().unwrap_or("?"),
        v["pid"]
    );
    println!(
        "  session {} of agent {} (sponsor {}): {}",
        s["session_id"].as_str().unwrap_or("?"),
        s["agent"].as_str().unwrap_or("?"),
        s["sponsor"].as_str().unwrap_or("?"),
        s["state_detail"].as_str().unwrap_or("?")
    );
    println!(
        "  token expires {} (in {})",
        s["expires_at"].as_str().unwrap_or("?"),
        in_words(s["expires_in_secs"].as_u64().unwrap_or(0))
    );
    println!(
        "  I/O: {}; ended sessions' processes: {}",
        v["io"].as_str().unwrap_or("?"),
        v["on_revoke"].as_str().unwrap_or("?")
    );
    match s["confirmed_secs_ago"].as_u64() {
        Some(n) => println!(
            "  relayauth last confirmed the session {} ago ({})",
            in_words(n),
            v["revocation"].as_str().unwrap_or("?")
        ),
        None => println!("  relayauth has not confirmed the session"),
    }
    if let Some(why) = s["writebacks_refused"].as_str() {
        println!("  WRITEBACKS REFUSED: {why}");
    }
    let subs = v["sessions"].as_array().map_or(&[][..], |a| a.as_slice());
    for sub in subs.iter().skip(1) {
        let pids: Vec<String> = sub["root_pids"]
            .as_array()
            .map(|a| a.iter().map(|p| p.to_string()).collect())
            .unwrap_or_default();
        println!(
            "  sub-agent {} (chain {}), pid {}: {}; {} allowed, {} denied",
            sub["agent"].as_str().unwrap_or("?"),
            sub["sponsor_chain"]
                .as_array()
                .map(|c| c
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" -> "))
                .unwrap_or_default(),
            if pids.is_empty() {
                "(gone)".to_owned()
            } else {
                pids.join(", ")
            },
            sub["state_detail"].as_str().unwrap_or("?"),
            sub["allowed"],
            sub["denied"]
        );
    }
    println!(
        "  decisions: {} allowed, {} denied",
        v["allowed"], v["denied"]
    );
    let audit = &v["audit"];
    if audit["state"] == "failing" {
        println!(
            "  audit log: {} CANNOT BE WRITTEN since {} ({}): every audited operation is refused \
             until it can; {} records held in memory",
            v["audit_log"].as_str().unwrap_or("?"),
            audit["since"].as_str().unwrap_or("?"),
            audit["error"].as_str().unwrap_or("?"),
            audit["held_records"]
        );
    } else {
        println!(
            "  audit log: {} ({} records written)",
            v["audit_log"].as_str().unwrap_or("?"),
            v["audit_events_written"]
        );
    }
    if audit["lost_records"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  audit log: {} records were lost while it could not be written (held past the bound)",
            audit["lost_records"]
        );
    }
    Ok(Exit::Ok)
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// The mountpoint.
    mountpoint: PathBuf,
}

pub fn run_unmount(args: UnmountArgs) -> CliResult {
    let mp = control::canonical_mountpoint(&args.mountpoint);
    match control::request(&mp, &control::Request::Unmount) {
        Ok(v) if v["ok"] == true => {
            // The daemon unmounts after answering; wait until the mount is gone.
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while daemon::is_mount_point(&mp) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if daemon::is_mount_point(&mp) {
                return Err(Failure::failed(format!(
                    "{} is still mounted after 15 s; see the daemon's log",
                    mp.display()
                )));
            }
            println!("unmounted {}", mp.display());
            Ok(Exit::Ok)
        }
        Ok(v) => Err(Failure::failed(
            v["error"]
                .as_str()
                .unwrap_or("the daemon refused")
                .to_owned(),
        )),
        Err(e) if daemon::is_mount_point(&mp) => {
            // No daemon answers (it died): take the stale mount down.
            crate::fuse::unmount(&mp).map_err(|err| {
                Failure::failed(format!(
                    "{e}; and unmounting {} failed: {err}",
                    mp.display()
                ))
            })?;
            println!("unmounted {} (no daemon answered)", mp.display());
            Ok(Exit::Ok)
        }
        Err(e) => Err(Failure::failed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations() {
        assert_eq!(duration("1.5").unwrap().as_millis(), 1500);
        assert_eq!(duration("500ms").unwrap().as_millis(), 500);
        assert!(duration("1e20").unwrap_err().contains("too long"));
        assert!(duration("soon").unwrap_err().contains("not a duration"));
    }
}
