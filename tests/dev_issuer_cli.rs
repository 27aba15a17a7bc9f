//! `relayauth-mount dev-issuer` as a process: the READY line, the banner, the admin key (given,
//! from the environment, or generated), seeding, a state directory across restarts, clean stops
//! on SIGTERM and SIGINT, refusals of bad flags, and the curl walkthrough script run against
//! it. Every process started here is stopped, also when a test fails.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{bin, run, run_json};
use serde_json::{Value, json};

/// How long a start or a stop may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A running `dev-issuer` process, killed on drop.
struct Proc {
    child: Child,
    banner: Vec<String>,
    ready: Value,
    stderr: Option<JoinHandle<String>>,
    stdout: Receiver<String>,
}

impl Proc {
    /// Start with `args` and `env`, and wait for the READY line.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = bin();
        cmd.arg("dev-issuer")
            .args(args)
            .env_remove("RELAYAUTH_DEV_ADMIN_KEY")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn relayauth-mount dev-issuer");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr_pipe.read_to_string(&mut s);
            s
        });
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proc = Proc {
            child,
            banner: Vec::new(),
            ready: Value::Null,
            stderr: Some(stderr),
            stdout: rx,
        };
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match proc.stdout.recv_timeout(left) {
                Ok(line) => match line.strip_prefix("READY ") {
                    Some(json) => {
                        proc.ready = serde_json::from_str(json).expect("READY carries JSON");
                        return proc;
                    }
                    None => proc.banner.push(line),
                },
                Err(RecvTimeoutError::Timeout) => panic!("no READY line within {DEADLINE:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = proc.child.wait().expect("wait");
                    let err = proc.stderr.take().map(|t| t.join().unwrap_or_default());
                    panic!("dev-issuer exited ({status}) before READY: {err:?}");
                }
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.ready["url"].as_str().unwrap())
    }

    fn key(&self) -> String {
        self.ready["admin_key"].as_str().unwrap().to_owned()
    }

    /// Send `signal` and wait for the exit; returns the status and everything on stderr.
    fn stop(mut self, signal: libc::c_int) -> (ExitStatus, String) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the pid of a child this test spawned and has not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "dev-issuer did not stop within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (status, err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn walkthrough_script_passes_against_the_binary() {
    let proc = Proc::start(&["--listen", "127.0.0.1:0", "--admin-key", "walk-key"], &[]);
    let url = proc.ready["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(
        proc.ready["jwks"],
        json!(format!("{url}/.well-known/jwks.json"))
    );
    assert_eq!(proc.ready["iss"], "relayauth:dev");
    assert_eq!(proc.ready["admin_key"], "walk-key");
    assert_eq!(proc.ready["alg"], "RS256");
    assert_eq!(proc.ready["identities"], json!({}));
    let banner = proc.banner.join("\n");
    for words in [
        "DEVELOPMENT",
        "not relayauth",
        "not for production",
        &url,
        "relayauth:dev",
    ] {
        assert!(banner.contains(words), "banner lacks {words:?}:\n{banner}");
    }
    assert!(
        !banner.contains("walk-key"),
        "a given admin key is not echoed in the banner"
    );

    let out = Command::new("bash")
        .arg(repo("scripts/dev-issuer-walkthrough.sh"))
        .env("ISSUER_URL", &url)
        .env("ADMIN_KEY", "walk-key")
        .output()
        .expect("bash runs the walkthrough");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walkthrough failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("walkthrough passed"), "{stdout}");

    // The script fails loudly against a wrong key.
    let out = Command::new("bash")
        .arg(repo("scripts/dev-issuer-walkthrough.sh"))
        .env("ISSUER_URL", &url)
        .env("ADMIN_KEY", "wrong-key")
        .output()
        .expect("bash runs the walkthrough");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("FAIL"));

    let (status, err) = proc.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("stopping"), "{err}");
}

#[test]
fn write_token_leaves_a_token_file_the_mount_accepts_without_curl() {
    let seed = repo("mount-fixtures/identities/acme.json");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lead.jwt");
    let target = format!("acme-lead={}", file.display());
    let proc = Proc::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--seed",
            seed.to_str().unwrap(),
            "--write-token",
            &target,
            "--token-ttl",
            "10m",
        ],
        &[],
    );
    // Written before READY, private, one line.
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&file).unwrap();
    assert_eq!(token.trim().lines().count(), 1, "{token}");
    let banner = proc.banner.join("\n");
    assert!(
        banner.contains(&format!("acme-lead -> {}", file.display())),
        "{banner}"
    );
    // A token of the seeded identity, living as long as asked.
    let v = common::mount::claims_of(token.trim());
    let lead = proc.ready["identities"]["acme-lead"].as_str().unwrap();
    assert_eq!(v["sub"], lead, "{v}");
    let life = v["exp"].as_u64().unwrap() - v["iat"].as_u64().unwrap();
    assert_eq!(life, 600, "{v}");
}

#[test]
fn generated_key_seed_eddsa_and_tokens_the_mount_cli_accepts() {
    let seed = repo("mount-fixtures/identities/acme.json");
    let proc = Proc::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--alg",
            "EdDSA",
            "--seed",
            seed.to_str().unwrap(),
        ],
        &[],
    );
    let key = proc.key();
    assert!(key.len() >= 32, "{key}");
    let banner = proc.banner.join("\n");
    assert!(
        banner.contains(&key) && banner.contains("generated"),
        "{banner}"
    );
    assert_eq!(proc.ready["alg"], "EdDSA");
    let ids = proc.ready["identities"].as_object().unwrap().clone();
    assert_eq!(
        ids.keys().collect::<Vec<_>>(),
        ["acme-lead", "review-bot", "slack-reader"]
    );
    let lead = ids["acme-lead"].as_str().unwrap();
    assert!(banner.contains(&format!("acme-lead -> {lead}")), "{banner}");

    let (status, body) = curl(&[
        "-X",
        "POST",
        &proc.url("/v1/tokens"),
        "-H",
        &format!("x-api-key: {key}"),
        "-d",
        &json!({"identityId": lead}).to_string(),
    ]);
    assert_eq!(status, 201, "{body}");
    let pair: Value = serde_json::from_str(&body).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("lead.jwt");
    std::fs::write(&token_file, pair["accessToken"].as_str().unwrap()).unwrap();

    // The mount's own `check` verifies the token against the issuer's JWKS URL.
    let jwks = proc.ready["jwks"].as_str().unwrap().to_owned();
    let check = |path: &str, require: &str| {
        run_json(&[
            "check",
            "--token-file",
            token_file.to_str().unwrap(),
            "--jwks",
            &jwks,
            "--workspace",
            "ws_acme",
            "--org",
            "org_acme",
            "--issuer",
            "relayauth:dev",
            "--require",
            require,
            "--path",
            path,
            "--json",
        ])
    };
    let (code, v) = check("/github/repos/acme/api/pulls/42/metadata.json", "fs:read");
    assert_eq!((code, &v["allowed"]), (0, &json!(true)), "{v}");
    let (code, v) = check("/github/repos/other/README.md", "fs:write");
    assert_eq!((code, &v["allowed"]), (1, &json!(false)), "{v}");
    let (code, out, err) = run(&[
        "check",
        "--token-file",
        token_file.to_str().unwrap(),
        "--jwks",
        &jwks,
        "--workspace",
        "ws_acme",
        "--require",
        "fs:read",
        "--path",
        "/github",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    assert_eq!(
        (code, &v["error_code"]),
        (1, &json!("wrong_issuer")),
        "the default issuer is not the development one: {out}{err}"
    );

    let (status, err) = proc.stop(libc::SIGINT);
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
fn state_directory_and_seed_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let seed = repo("mount-fixtures/identities/acme.json");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin-key",
        "k-state",
        "--state",
        state.to_str().unwrap(),
        "--seed",
        seed.to_str().unwrap(),
    ];
    let first = Proc::start(&args, &[]);
    let ids = first.ready["identities"].clone();
    let lead = ids["acme-lead"].as_str().unwrap().to_owned();
    let (status, body) = curl(&[
        "-X",
        "POST",
        &first.url("/v1/tokens"),
        "-H",
        "x-api-key: k-state",
        "-d",
        &json!({"identityId": lead}).to_string(),
    ]);
    assert_eq!(status, 201, "{body}");
    let pair: Value = serde_json::from_str(&body).unwrap();
    let jwks_before = curl(&[first.ready["jwks"].as_str().unwrap()]).1;
    // A second issuer on the same directory is refused while the first runs.
    let (code, _, err) = run(&[
        "dev-issuer",
        "--listen",
        "127.0.0.1:0",
        "--admin-key",
        "x",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another dev-issuer"), "{err}");
    let (status, err) = first.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{err}");

    let second = Proc::start(&args, &[]);
    assert_eq!(second.ready["identities"], ids, "same identities, same ids");
    assert_eq!(
        curl(&[second.ready["jwks"].as_str().unwrap()]).1,
        jwks_before
    );
    let (status, body) = curl(&[
        "-X",
        "POST",
        &second.url("/v1/tokens/refresh"),
        "-d",
        &json!({"refreshToken": pair["refreshToken"]}).to_string(),
    ]);
    assert_eq!(
        status, 200,
        "the refresh token minted before the restart rotates: {body}"
    );
    let (status, err) = second.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
fn admin_key_from_the_environment_and_a_warning_off_loopback() {
    let proc = Proc::start(
        &["--listen", "0.0.0.0:0"],
        &[("RELAYAUTH_DEV_ADMIN_KEY", "env-key")],
    );
    assert_eq!(proc.key(), "env-key");
    assert!(!proc.banner.join("\n").contains("env-key"));
    let url = proc.ready["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "a wildcard address is advertised as loopback: {url}"
    );
    let (status, _) = curl(&["-H", "x-api-key: env-key", &proc.url("/v1/audit")]);
    assert_eq!(status, 200);
    let (status, err) = proc.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    assert!(
        err.contains("warning") && err.contains("not a loopback address"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_refused_with_exit_2() {
    let missing = repo("mount-fixtures/identities/no-such-file.json");
    let dir = tempfile::tempdir().unwrap();
    let bad_seed = dir.path().join("seed.json");
    std::fs::write(&bad_seed, r#"{"identities": [{"name": "x"}]}"#).unwrap();
    let not_dir = dir.path().join("file");
    std::fs::write(&not_dir, "").unwrap();
    for (args, says) in [
        (vec!["--listen", "not-an-address"], "--listen"),
        (vec!["--alg", "HS256"], "HS256"),
        (vec!["--admin-key", ""], "admin key"),
        (vec!["--admin-key", "has space"], "admin key"),
        (vec!["--iss", " "], "issuer"),
        (vec!["--seed", missing.to_str().unwrap()], "no-such-file"),
        (vec!["--seed", bad_seed.to_str().unwrap()], "orgId"),
        (
            vec!["--state", not_dir.to_str().unwrap()],
            "not a directory",
        ),
        (vec!["--write-token", "no-equals-sign"], "NAME=FILE"),
        (
            vec!["--write-token", "nobody=/tmp/x.jwt"],
            "none was seeded",
        ),
    ] {
        let mut full = vec!["dev-issuer", "--listen", "127.0.0.1:0"];
        full.extend(args.iter().copied());
        let (code, out, err) = run(&full);
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.contains("READY"), "{out}");
    }
}

#[test]
fn a_port_in_use_is_an_error_not_a_panic() {
    let proc = Proc::start(&["--listen", "127.0.0.1:0", "--admin-key", "k"], &[]);
    let addr = proc.ready["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let (code, out, err) = run(&["dev-issuer", "--listen", &addr, "--admin-key", "k"]);
    assert_eq!(code, 1, "{out} {err}");
    assert!(err.contains("cannot listen"), "{err}");
    let (status, _) = proc.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
}
