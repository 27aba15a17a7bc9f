//! The mount's session against a real development issuer: start-up refusals, revocation and
//! expiry cutting off a live mount, fail-closed without relayauth, refresh and a rewritten
//! token file picked up while mounted, `status`, `unmount` and the background mode.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mount::*;
use serde_json::{Value, json};

const READER: &[&str] = &[
    "relayfile:fs:read:/github/**",
    "relayfile:fs:manage:/scratch/**",
];

fn scratch(mirror: &Path) {
    std::fs::create_dir_all(mirror.join("scratch")).unwrap();
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relayauth-mount"))
}

/// Wait until the clock is past the Unix time `t`.
fn wait_past(t: u64) {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    assert!(
        eventually(Duration::from_secs(30), || now() > t),
        "the clock did not pass {t}"
    );
}

#[test]
fn revocation_cuts_off_open_files_and_unmounts() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let token = issuer.token(READER);
    let mut m = TestMount::start(&issuer, &token, MountOpts::default());
    // An agent holds a file open across the revocation.
    let mut agent = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import sys, errno
f = open('github/repos/acme/api/metadata.json')
f.read(10)
print('open', flush=True)
sys.stdin.readline()
f.seek(0)
try:
    f.read()
    print('read ok', flush=True)
except OSError as e:
    print('read', errno.errorcode.get(e.errno), flush=True)",
        )
        .current_dir(&m.mnt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "open");
    let sid = claims_of(&token)["sid"].as_str().unwrap().to_owned();
    issuer.revoke(json!({"sessionId": sid}));
    let (code, stderr) = m.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("revoked"), "{stderr}");
    assert!(!is_mounted(&m.mnt));
    writeln!(agent.stdin.as_mut().unwrap()).unwrap();
    let answer = lines.next().unwrap().unwrap();
    assert_ne!(
        answer, "read ok",
        "an open file kept working after revocation"
    );
    let _ = agent.wait();
    let events = m.audit_events();
    for action in [
        "token.validated",
        "token.revoked",
        "session.revoked",
        "mount.unmounted",
    ] {
        assert!(
            events.iter().any(|e| e["action"] == action),
            "missing {action}: {events:#?}"
        );
    }
}

#[test]
fn expiry_ends_the_mount() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let id = issuer.identity("short", READER);
    let pair = issuer.mint(&id, 4);
    let mut m = TestMount::start(
        &issuer,
        pair["accessToken"].as_str().unwrap(),
        MountOpts::default(),
    );
    assert!(
        m.sh("cat github/repos/acme/api/metadata.json")
            .status
            .success()
    );
    let (code, stderr) = m.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    assert!(!is_mounted(&m.mnt));
}

#[test]
fn status_and_unmount_commands() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let mut m = TestMount::start(&issuer, &issuer.token(READER), MountOpts::default());
    assert!(
        m.sh("cat github/repos/acme/api/metadata.json")
            .status
            .success()
    );
    assert!(
        !m.sh("echo x > github/repos/acme/api/metadata.json")
            .status
            .success()
    );
    let o = bin()
        .arg("status")
        .arg(&m.mnt)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["session"]["state"], "active");
    assert_eq!(v["session"]["workspace"], "ws_acme");
    assert!(
        v["allowed"].as_u64().unwrap() >= 1 && v["denied"].as_u64().unwrap() >= 1,
        "{v}"
    );
    assert!(
        v["session"]["confirmed_secs_ago"].is_u64(),
        "relayauth confirmed the session: {v}"
    );
    assert!(v["session"]["writebacks_refused"].is_null(), "{v}");
    let o = bin().arg("status").arg(&m.mnt).output().unwrap();
    assert!(out(&o).contains("active"));
    // Durations in words, not raw seconds.
    assert!(
        out(&o).contains("m ") && !out(&o).contains(" s)"),
        "{}",
        out(&o)
    );
    // A path inside the mount names the mount; without a path, every mount is listed.
    let o = bin()
        .arg("status")
        .arg(m.mnt.join("github"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let inside = format!("is inside the relayauth-mount mount at {}", m.mnt.display());
    assert!(err(&o).contains(&inside), "{}", err(&o));
    let o = bin().arg("status").output().unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let line = format!("{}: agent ", m.mnt.display());
    assert!(out(&o).lines().any(|l| l.starts_with(&line)), "{}", out(&o));
    let o = bin().arg("unmount").arg(&m.mnt).output().unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let (code, stderr) = m.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!is_mounted(&m.mnt));
    let o = bin().arg("status").arg(&m.mnt).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("is not a relayauth-mount mountpoint"),
        "{}",
        err(&o)
    );
}

#[test]
fn an_unmount_from_outside_ends_the_daemon() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let mut m = TestMount::start(&issuer, &issuer.token(READER), MountOpts::default());
    assert!(
        m.sh("cat github/repos/acme/api/metadata.json")
            .status
            .success()
    );
    let o = Command::new("fusermount3")
        .arg("-u")
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    // The daemon hears of it from the kernel session's end.
    let (code, stderr) = m.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!is_mounted(&m.mnt));
    let events = m.audit_events();
    let last = events.last().unwrap();
    assert_eq!(last["action"], "mount.unmounted", "{last}");
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unmounted from outside")),
        "{last}"
    );
}

#[test]
fn sigterm_unmounts_cleanly_and_flushes_the_audit_log() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let mut m = TestMount::start(&issuer, &issuer.token(READER), MountOpts::default());
    for _ in 0..20 {
        assert!(
            !m.sh("echo x > github/repos/acme/api/metadata.json")
                .status
                .success()
        );
    }
    let (code, stderr) = m.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!is_mounted(&m.mnt));
    let events = m.audit_events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e["action"] == "file.write.denied")
            .count(),
        20
    );
    assert_eq!(events.last().unwrap()["action"], "mount.unmounted");
}

#[test]
fn background_mode_reports_the_mount_and_detaches() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mirror).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(mirror.join("github/x")).unwrap();
    let token_file = dir.path().join("t.jwt");
    let scopes = [
        "relayfile:fs:read:/github/**",
        "relayfile:fs:write:/github/repos/acme/api/pulls/*/reviews/*",
    ];
    std::fs::write(&token_file, issuer.token(&scopes)).unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new(env!("CARGO_BIN_EXE_relayauth-mount"))
                .arg("unmount")
                .arg(self.0)
                .output();
            if is_mounted(self.0) {
                let _ = Command::new("fusermount3").arg("-uz").arg(self.0).status();
            }
        }
    }
    let _guard = Unmount(&mnt);
    let o = bin()
        .arg("mount")
        .arg(&mirror)
        .arg(&mnt)
        .args([
            "--workspace",
            "ws_acme",
            "--relayauth-url",
            &issuer.url,
            "--issuer",
            &issuer.iss,
        ])
        // Relative paths are resolved before the daemon leaves the directory.
        .args(["--token-file", "t.jwt", "--audit-log", "audit.jsonl"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    let text = out(&o);
    assert!(text.contains("is mounted at"), "{text}");
    assert!(
        text.contains("INVALID, grants nothing: mid-path glob"),
        "the seed scope is called out: {text}"
    );
    assert!(is_mounted(&mnt));
    assert!(mnt.join("github/x").is_dir());
    let o = bin().arg("unmount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert!(!is_mounted(&mnt));
}

/// A start-up refusal case: name, token, extra args, a tweak of (mirror, mountpoint), the
/// expected exit code and what stderr must say.
type Refusal<'a> = (
    &'a str,
    String,
    Vec<&'a str>,
    Box<dyn Fn(&Path, &Path)>,
    i32,
    &'a str,
);

/// `mount` with `token` and `extra` args on a fresh mirror; returns (exit code, stderr).
fn try_mount(
    issuer: &Issuer,
    token: &str,
    extra: &[&str],
    tweak: impl Fn(&Path, &Path),
) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(mirror.join(".relay")).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let token_file = dir.path().join("t.jwt");
    std::fs::write(&token_file, token).unwrap();
    tweak(&mirror, &mnt);
    let o = bin()
        .arg("mount")
        .arg(&mirror)
        .arg(&mnt)
        .args([
            "--workspace",
            "ws_acme",
            "--relayauth-url",
            &issuer.url,
            "--issuer",
            &issuer.iss,
            "--foreground",
        ])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .args(extra)
        .output()
        .unwrap();
    if is_mounted(&mnt) {
        let _ = Command::new("fusermount3").arg("-uz").arg(&mnt).status();
        panic!("mount should have been refused");
    }
    (o.status.code(), err(&o))
}

#[test]
fn mount_refuses_what_it_cannot_enforce() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let good = issuer.token(READER);
    let none = |_: &Path, _: &Path| {};
    let (status, v) = issuer.call(
        "POST",
        "/v1/identities",
        Some(json!({"name": "other", "orgId": "org_acme", "workspaceId": "ws_other", "sponsorId": "user_alice", "scopes": READER})),
        None,
    );
    assert_eq!(status, 201, "{v}");
    let other = issuer.mint(v["id"].as_str().unwrap(), 3600)["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = issuer.token(READER);
    issuer.revoke(json!({"tokenId": claims_of(&revoked)["jti"]}));
    let short_id = issuer.identity("short", READER);
    let short = issuer.mint(&short_id, 1)["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_past(claims_of(&short)["exp"].as_u64().unwrap());
    let cases: Vec<Refusal> = vec![
        (
            "other workspace",
            other,
            vec![],
            Box::new(none),
            1,
            "wrong_workspace",
        ),
        ("revoked", revoked, vec![], Box::new(none), 1, "revoked"),
        (
            "garbage",
            "not-a-token".to_owned(),
            vec![],
            Box::new(none),
            1,
            "invalid_token",
        ),
        (
            "expired (no leeway)",
            short,
            vec!["--leeway", "0"],
            Box::new(none),
            1,
            "token_expired",
        ),
        (
            "other org",
            good.clone(),
            vec!["--org", "org_other"],
            Box::new(none),
            1,
            "wrong_org",
        ),
        (
            "mountpoint inside source",
            good.clone(),
            vec![],
            Box::new(|mirror: &Path, mnt: &Path| {
                std::fs::remove_dir(mnt).unwrap();
                std::fs::create_dir(mirror.join("view")).unwrap();
                std::os::unix::fs::symlink(mirror.join("view"), mnt).unwrap();
            }),
            2,
            "inside SOURCE",
        ),
        (
            "mountpoint not empty",
            good.clone(),
            vec![],
            Box::new(|_: &Path, mnt: &Path| std::fs::write(mnt.join("x"), "x").unwrap()),
            2,
            "not empty",
        ),
        (
            "missing mountpoint",
            good.clone(),
            vec![],
            Box::new(|_: &Path, mnt: &Path| std::fs::remove_dir(mnt).unwrap()),
            2,
            "MOUNTPOINT",
        ),
        (
            "bad policies",
            good.clone(),
            vec![],
            Box::new(|mirror: &Path, _: &Path| {
                std::fs::write(
                    mirror.join(".relay/writeback-policies.json"),
                    "{\"version\": 1, \"policies\": [{\"id\": \"x\"}]}",
                )
                .unwrap()
            }),
            1,
            "writeback policies",
        ),
    ];
    for (name, token, extra, tweak, code, needle) in cases {
        let (got, stderr) = try_mount(&issuer, &token, &extra, tweak);
        assert_eq!(got, Some(code), "{name}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{name}: stderr does not say {needle:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn without_relayauth_writebacks_then_everything_fail_closed() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let token = issuer.token(&[
        "relayfile:fs:read:*",
        "relayfile:fs:create:/github/repos/acme/api/pulls/*",
        "relayfile:fs:manage:/scratch/**",
    ]);
    let jwks = format!("{}/.well-known/jwks.json", issuer.url);
    // relayauth itself is unreachable (a closed port); only the key set is known.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = format!("http://{closed}");
    let m = TestMount::start(
        &issuer,
        &token,
        MountOpts {
            args: vec![
                "--jwks",
                &jwks,
                "--max-staleness",
                "3s",
                "--local-roots",
                "scratch",
            ],
            prepare: Some(&scratch),
            relayauth_url: Some(&unreachable),
            ..MountOpts::default()
        },
    );
    let o = m.sh("printf '{\"event\": \"COMMENT\", \"body\": \"hello\"}' > github/repos/acme/api/pulls/42/reviews/new.json");
    assert!(
        err(&o).contains("Permission denied"),
        "writeback without a confirmation: {}",
        err(&o)
    );
    assert!(
        m.sh("echo local > scratch/ok.txt").status.success(),
        "local writes do not need relayauth"
    );
    assert!(eventually(Duration::from_secs(15), || !m
        .sh("cat github/repos/acme/api/metadata.json")
        .status
        .success()));
    let notice = std::fs::read_to_string(m.at("github/repos/acme/api/_PERMISSIONS.md")).unwrap();
    assert!(
        notice.contains("has not confirmed this session"),
        "{notice}"
    );
}

#[test]
fn a_bundle_is_refreshed_before_expiry_and_a_rewritten_token_is_picked_up() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let id = issuer.identity("refreshing", READER);
    let pair = issuer.mint(&id, 6);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("credentials.json");
    std::fs::write(
        &bundle,
        serde_json::to_string(&json!({
            "accessToken": pair["accessToken"], "refreshToken": pair["refreshToken"],
            "relayauthUrl": issuer.url, "workspaceId": "ws_acme", "agentName": "refreshing",
        }))
        .unwrap(),
    )
    .unwrap();
    let m = TestMount::start(
        &issuer,
        "",
        MountOpts {
            credentials: Some(&bundle),
            ..MountOpts::default()
        },
    );
    let first = claims_of(pair["accessToken"].as_str().unwrap())["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = || -> Value {
        let o = bin()
            .arg("status")
            .arg(&m.mnt)
            .arg("--json")
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    };
    assert!(
        eventually(Duration::from_secs(20), || status()["session"]["token_id"]
            .as_str()
            .is_some_and(|t| t != first)),
        "the token was not refreshed: {}\naudit: {:#?}",
        status(),
        m.audit_events()
    );
    // Past the first token's expiry the mount is still alive.
    wait_past(
        claims_of(pair["accessToken"].as_str().unwrap())["exp"]
            .as_u64()
            .unwrap()
            + 1,
    );
    assert!(
        m.sh("cat github/repos/acme/api/metadata.json")
            .status
            .success()
    );
    let mode = std::fs::metadata(&bundle).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    m.wait_audit(|e| e["action"] == "token.refreshed");
}

#[test]
fn a_rewritten_token_file_changes_the_scopes_without_a_restart() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let id = issuer.identity(
        "growing",
        &[
            "relayfile:fs:read:/github/**",
            "relayfile:fs:read:/slack/**",
        ],
    );
    let (status, narrow) = issuer.call(
        "POST",
        "/v1/tokens",
        Some(json!({"identityId": id, "scopes": ["relayfile:fs:read:/github/**"]})),
        None,
    );
    assert_eq!(status, 201, "{narrow}");
    let m = TestMount::start(
        &issuer,
        narrow["accessToken"].as_str().unwrap(),
        MountOpts::default(),
    );
    assert!(!m.at("slack").exists());
    let wide = issuer.mint(&id, 3600);
    let tmp = m.token_file.with_extension("new");
    std::fs::write(&tmp, wide["accessToken"].as_str().unwrap()).unwrap();
    std::fs::rename(&tmp, &m.token_file).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || m.at("slack/users").is_dir()),
        "the new scopes were not picked up"
    );
}
