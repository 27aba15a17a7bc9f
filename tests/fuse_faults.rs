//! Faults, each against a real mount: the audit log's disk full and the log rotated; the
//! daemon killed with SIGKILL; relayauth stalled, answering garbage, gone and back; the JWKS
//! rotated with the old key withdrawn; the token path turned into a directory, a huge file or
//! a symlink loop; the mirror changed underneath (replaced by rename, moved aside). In each
//! the guard must fail closed, lose nothing and recover.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::http::{Reply, Server};
use common::mount::*;
use common::tokens;
use parking_lot::Mutex;
use serde_json::{Value, json};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relayauth-mount"))
}

fn status_json(m: &TestMount) -> Value {
    let o = bin()
        .arg("status")
        .arg(&m.mnt)
        .arg("--json")
        .env("XDG_RUNTIME_DIR", m.dir.path())
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

fn status_text(m: &TestMount) -> String {
    let o = bin()
        .arg("status")
        .arg(&m.mnt)
        .env("XDG_RUNTIME_DIR", m.dir.path())
        .output()
        .unwrap();
    out(&o)
}

fn scratch(mirror: &Path) {
    std::fs::create_dir_all(mirror.join("scratch")).unwrap();
}

/// Every line of an audit log, each of which must be one whole record.
fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a torn record ({e}): {l}")))
        .collect()
}

const READ: &str = "cat github/repos/acme/api/metadata.json";
const REVIEW: &str =
    "printf '{\"event\": \"COMMENT\", \"body\": \"hi\"}' > github/repos/acme/api/pulls/42/reviews/";

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs (the tests run as root)");
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_audit_disk_refuses_audited_operations_until_space_returns() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let token = issuer.token(&["relayfile:fs:read:*", "relayfile:fs:manage:/scratch/**"]);
    let disk = Tmpfs::new("256k");
    let log = disk.path().join("audit.jsonl");
    let mut m = TestMount::start(
        &issuer,
        &token,
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&scratch),
            audit_log: Some(&log),
            ..MountOpts::default()
        },
    );
    assert!(m.sh(READ).status.success());
    let fill = disk.path().join("fill");
    // dd stops with ENOSPC once the disk is full; that is the point.
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", fill.display()))
        .arg("bs=4k")
        .output()
        .unwrap();
    // The writer notices at its next write; from then on nothing audited is allowed.
    assert!(
        eventually(Duration::from_secs(15), || err(&m.sh(READ))
            .contains("Permission denied")),
        "reads go on while the audit log cannot be written"
    );
    let st = status_json(&m);
    assert_eq!(st["audit"]["state"], "failing", "{st}");
    assert!(
        st["audit"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("No space"),
        "{st}"
    );
    assert!(
        status_text(&m).contains("CANNOT BE WRITTEN"),
        "{}",
        status_text(&m)
    );
    assert!(!m.sh("echo x > scratch/new.txt").status.success());
    assert!(!m.sh("mkdir scratch/d").status.success());
    // Listing and the notice still work, and the notice says what is wrong.
    assert!(m.sh("ls github/repos/acme/api").status.success());
    let notice = std::fs::read_to_string(m.at("_PERMISSIONS.md")).unwrap();
    assert!(
        notice.contains("Nothing may be opened") && notice.contains("No space"),
        "{notice}"
    );

    std::fs::remove_file(&fill).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || m.sh(READ).status.success()),
        "the guard recovers when space returns"
    );
    assert!(m.sh("echo x > scratch/new.txt").status.success());
    assert_eq!(status_json(&m)["audit"]["state"], "ok");
    let (code, stderr) = m.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("cannot write") && stderr.contains("writable again"),
        "{stderr}"
    );
    let all = records(&log);
    let recovered = all
        .iter()
        .position(|r| r["action"] == "audit.recovered")
        .expect("a recovery record");
    assert!(all[recovered]["metadata"]["heldRecords"].as_u64().unwrap() >= 1);
    assert_eq!(all[recovered]["metadata"]["lostRecords"], 0);
    // The refusals made while the disk was full were held and written, not dropped.
    assert!(
        all[..recovered]
            .iter()
            .any(|r| r["action"] == "scope.denied"
                && r["reason"].as_str().unwrap_or("").contains("audit log")),
        "the refusals are in the log"
    );
    assert!(
        all[recovered..]
            .iter()
            .any(|r| r["action"] == "file.write.accepted")
    );
    assert_eq!(all.last().unwrap()["action"], "mount.unmounted");
}

#[test]
fn the_audit_log_is_reopened_on_sighup_and_no_record_is_lost_or_doubled() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let mut m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:read:*"]),
        MountOpts::default(),
    );
    let opens = |m: &TestMount, n: usize| {
        for _ in 0..n {
            assert!(m.sh(READ).status.success());
        }
    };
    opens(&m, 5);
    let rotated = m.audit.with_extension("jsonl.1");
    std::fs::rename(&m.audit, &rotated).unwrap();
    // As logrotate's postrotate does.
    let pid = m.daemon_pid().unwrap() as i32;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    assert!(eventually(Duration::from_secs(10), || m.audit.exists()));
    opens(&m, 5);
    assert_eq!(status_json(&m)["ok"], true, "SIGHUP does not end the mount");
    let (code, stderr) = m.stop();
    assert_eq!(code, Some(0), "{stderr}");
    let (old, new) = (records(&rotated), records(&m.audit));
    let reads = |rs: &[Value]| {
        rs.iter()
            .filter(|r| {
                r["action"] == "file.read" && r["path"] == "/github/repos/acme/api/metadata.json"
            })
            .count()
    };
    assert_eq!(
        reads(&old) + reads(&new),
        10,
        "every open once across both files"
    );
    assert!(
        reads(&new) >= 5,
        "the opens after the reopen are in the new file"
    );
    let mut ids: Vec<&str> = old
        .iter()
        .chain(&new)
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "no record in both files");
}

#[test]
fn a_killed_daemon_leaves_nothing_half_written_and_keeps_the_open_writeback() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let token = issuer.token(&[
        "relayfile:fs:read:*",
        "relayfile:fs:write:/github/repos/acme/api/**",
    ]);
    let mut m = TestMount::start(&issuer, &token, MountOpts::default());
    assert!(m.sh(&format!("{REVIEW}done.json")).status.success());
    let before = snapshot(&m.mirror.join("github"));
    // A writer holds a writeback open with half a payload in it.
    let mut agent = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import os, sys, time\n\
             f = open('github/repos/acme/api/pulls/42/reviews/half.json', 'w')\n\
             f.write('{\"event\": \"COMM'); f.flush()\n\
             print('ready', flush=True)\n\
             sys.stdin.readline()\n\
             try:\n    f.write('ENT\", \"body\": \"x\"}'); f.flush(); f.close(); print('closed')\n\
             except OSError as e:\n    print('errno', e.errno)\n",
        )
        .current_dir(&m.mnt)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(agent.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");

    m.kill();
    {
        use std::io::Write;
        let mut stdin = agent.stdin.take().unwrap();
        writeln!(stdin).unwrap();
    }
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(
        line.trim(),
        format!("errno {}", libc::ENOTCONN),
        "the writer learns the mount is gone"
    );
    agent.wait().unwrap();
    let o = Command::new("ls").arg(&m.mnt).output().unwrap();
    assert!(err(&o).contains("not connected"), "{}", err(&o));
    // Nothing reached the mirror but what was committed before.
    assert_eq!(snapshot(&m.mirror.join("github")), before);
    assert!(
        !m.mirror_at("github/repos/acme/api/pulls/42/reviews/half.json")
            .exists()
    );

    // `unmount` takes the dead mount down, and a new daemon mounts at the same place.
    let o = bin()
        .arg("unmount")
        .arg(&m.mnt)
        .env("XDG_RUNTIME_DIR", m.dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert!(!is_mounted(&m.mnt));
    m.restart(&issuer, MountOpts::default());
    assert!(m.sh(READ).status.success());
    let (code, stderr) = m.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("were still open when the previous run"),
        "{stderr}"
    );
    // The half payload was kept, not dropped: in quarantine, under an interrupted-* name.
    let q = m.mirror_at(".relay/.relayauth-mount/quarantine");
    let kept: Vec<Vec<u8>> = std::fs::read_dir(&q)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("interrupted-"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert_eq!(kept, vec![b"{\"event\": \"COMM".to_vec()]);
    assert!(
        std::fs::read_dir(m.mirror_at(".relay/.relayauth-mount/staging"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// A relayauth stand-in whose answers the test switches: the revocation list and the JWKS.
struct FakeRelayauth {
    _rt: tokio::runtime::Runtime,
    server: Server,
    mode: Arc<AtomicU8>,
    jwks: Arc<Mutex<String>>,
}

const OK: u8 = 0;
const STALL: u8 = 1;
const GARBAGE: u8 = 2;
const GONE: u8 = 3;
const REVOKED: u8 = 4;

impl FakeRelayauth {
    fn start(jwks: String) -> FakeRelayauth {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mode = Arc::new(AtomicU8::new(OK));
        let jwks = Arc::new(Mutex::new(jwks));
        let (m, j) = (mode.clone(), jwks.clone());
        let server = rt.block_on(Server::start(move |req| {
            if req.path.starts_with("/.well-known/jwks.json") {
                return Reply::Json(200, j.lock().clone());
            }
            let alive = || Reply::Json(200, r#"{"revoked": false}"#.to_owned());
            match m.load(Ordering::SeqCst) {
                OK => alive(),
                STALL => Reply::After(Duration::from_secs(10), Box::new(alive())),
                GARBAGE => Reply::Json(200, "<html>gateway says hello</html>".to_owned()),
                GONE => Reply::Drop,
                _ => Reply::Json(200, r#"{"revoked": true}"#.to_owned()),
            }
        }));
        FakeRelayauth {
            _rt: rt,
            server,
            mode,
            jwks,
        }
    }

    fn url(&self) -> String {
        self.server.url("")
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

/// An access token for the fixture's workspace signed by `key`, issued as `iss`.
fn signed(key: &relayauth_mount::token::Signer, iss: &str, jti: &str, scopes: &[&str]) -> String {
    let mut c = tokens::claims();
    c["iss"] = json!(iss);
    c["jti"] = json!(jti);
    c["scopes"] = json!(scopes);
    key.sign(&c).unwrap()
}

const WRITER: &[&str] = &[
    "relayfile:fs:read:*",
    "relayfile:fs:write:/github/repos/acme/api/**",
];

#[test]
fn relayauth_stalled_garbled_or_gone_never_blocks_the_mount_and_fails_closed_until_it_answers() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let k = tokens::keys();
    let relayauth = FakeRelayauth::start(tokens::jwks_json(&[&k.ed]));
    let url = relayauth.url();
    let mut m = TestMount::start(
        &issuer,
        &signed(&k.ed, &issuer.iss, "tok_faults", WRITER),
        MountOpts {
            args: vec![
                "--revocation",
                "list",
                "--fail-closed-after",
                "2s",
                "--max-staleness",
                "5s",
            ],
            relayauth_url: Some(&url),
            ..MountOpts::default()
        },
    );
    assert!(eventually(Duration::from_secs(10), || m
        .sh(&format!("{REVIEW}first.json"))
        .status
        .success()));

    for (mode, name) in [(STALL, "stalled"), (GARBAGE, "garbage"), (GONE, "gone")] {
        relayauth.set(mode);
        // Reads go on at once while relayauth does not answer (a stalled answer takes 10 s):
        // nothing in the filesystem waits for it.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(1) {
            let t = Instant::now();
            assert!(m.sh(READ).status.success(), "{name}");
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{name}: a read waited for relayauth"
            );
        }
        // Writebacks stop after --fail-closed-after, everything after --max-staleness.
        assert!(
            eventually(Duration::from_secs(15), || !m
                .sh(&format!("{REVIEW}{name}.json"))
                .status
                .success()),
            "{name}: writebacks go on without a confirmation"
        );
        assert!(
            eventually(Duration::from_secs(20), || !m.sh(READ).status.success()),
            "{name}: reads go on past --max-staleness"
        );
        let st = status_json(&m);
        assert!(
            st["session"]["confirmed_secs_ago"].as_u64().unwrap_or(0) >= 5,
            "{name}: {st}"
        );
        for dir in ["", "github/repos/acme/api/"] {
            let notice = std::fs::read_to_string(m.at(&format!("{dir}_PERMISSIONS.md"))).unwrap();
            assert!(
                notice.contains("Nothing may be opened")
                    && notice.contains("has not confirmed this session"),
                "{name}: {notice}"
            );
        }
        // relayauth answers again: everything comes back without a restart.
        relayauth.set(OK);
        assert!(
            eventually(Duration::from_secs(20), || m.sh(READ).status.success()),
            "{name}: no recovery"
        );
        assert!(
            m.sh(&format!("{REVIEW}after-{name}.json")).status.success(),
            "{name}"
        );
    }
    // And a revocation still ends it.
    relayauth.set(REVOKED);
    let (code, stderr) = m.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let garbled = records(&m.audit);
    assert!(garbled.iter().any(|r| r["action"] == "token.revoked"));
}

#[test]
fn a_rotated_key_set_adopts_the_new_key_and_refuses_the_withdrawn_one() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let k = tokens::keys();
    let relayauth = FakeRelayauth::start(tokens::jwks_json(&[&k.ed]));
    let url = relayauth.url();
    let scopes = &["relayfile:fs:read:/github/**"];
    let m = TestMount::start(
        &issuer,
        &signed(&k.ed, &issuer.iss, "tok_old_key", scopes),
        MountOpts {
            args: vec!["--revocation", "list"],
            relayauth_url: Some(&url),
            ..MountOpts::default()
        },
    );
    assert!(m.sh(READ).status.success());
    // relayauth rotates: the new key is published and the old one withdrawn.
    *relayauth.jwks.lock() = tokens::jwks_json(&[&k.rsa]);
    let rewrite = |token: &str| {
        let tmp = m.token_file.with_extension("new");
        std::fs::write(&tmp, token).unwrap();
        std::fs::rename(&tmp, &m.token_file).unwrap();
    };
    rewrite(&signed(&k.rsa, &issuer.iss, "tok_new_key", scopes));
    assert!(
        eventually(
            Duration::from_secs(10),
            || status_json(&m)["session"]["token_id"] == "tok_new_key"
        ),
        "the token signed with the new key is adopted: {}",
        status_json(&m)
    );
    assert!(m.sh(READ).status.success());
    // A token signed with the withdrawn key is refused; the current one stays.
    rewrite(&signed(&k.ed, &issuer.iss, "tok_withdrawn_key", scopes));
    let refused = m.wait_audit(|r| r["action"] == "token.validated" && r["result"] == "denied");
    assert!(
        refused["reason"].as_str().unwrap().contains("unknown_key"),
        "{refused}"
    );
    assert_eq!(status_json(&m)["session"]["token_id"], "tok_new_key");
    assert!(m.sh(READ).status.success());
}

#[test]
fn a_token_path_that_becomes_a_directory_a_huge_file_or_a_loop_changes_nothing() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let me = issuer.identity("token-path-agent", &["relayfile:fs:read:*"]);
    let token = issuer.mint_scoped(&me, &["relayfile:fs:read:/github/**"], 3600);
    let m = TestMount::start(&issuer, &token, MountOpts::default());
    let path: PathBuf = m.token_file.clone();
    let loop_a = m.dir.path().join("loop-a");
    let cases: [(&str, &dyn Fn()); 3] = [
        ("a directory", &|| std::fs::create_dir(&path).unwrap()),
        ("a huge file", &|| {
            let f = std::fs::File::create(&path).unwrap();
            // Sparse: 8 GiB that take no space.
            f.set_len(8 << 30).unwrap();
        }),
        ("a symlink loop", &|| {
            std::os::unix::fs::symlink(&path, &loop_a).unwrap();
            std::os::unix::fs::symlink(&loop_a, &path).unwrap();
        }),
    ];
    for (what, make) in cases {
        if path.is_dir() {
            std::fs::remove_dir(&path).unwrap();
        } else {
            let _ = std::fs::remove_file(&path);
        }
        let _ = std::fs::remove_file(&loop_a);
        make();
        // Give the watcher time to see it (and, were it to choke, to do so).
        std::thread::sleep(Duration::from_millis(800));
        let started = Instant::now();
        let st = status_json(&m);
        assert_eq!(st["ok"], true, "{what}: {st}");
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
        assert_eq!(st["session"]["state"], "active", "{what}: {st}");
        assert!(m.sh(READ).status.success(), "{what}");
        assert!(
            !m.sh("ls slack").status.success(),
            "{what}: the scopes did not change"
        );
    }
    // A good token again is picked up as before.
    let _ = std::fs::remove_file(&path);
    let wider = issuer.mint_scoped(&me, &["relayfile:fs:read:*"], 3600);
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, &wider).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(eventually(Duration::from_secs(10), || m
        .sh("ls slack")
        .status
        .success()));
}

/// relayfile's syncer replaces files by rename while agents read and write them through the
/// mount: every read is one whole version, every writeback either lands whole or fails with
/// `ESTALE` and is kept in quarantine, and the file is never a mix of the two.
#[test]
fn the_syncer_replacing_files_underneath_tears_nothing_and_loses_nothing() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = TestMount::start(&issuer, &issuer.token(WRITER), MountOpts::default());
    let review = "github/repos/acme/api/pulls/42/reviews/draft-lead-review.json";
    let meta = "github/repos/acme/api/metadata.json";
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let syncer = {
        let (mirror, stop) = (m.mirror.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for rel in [meta, review] {
                    let body = json!({"event": "COMMENT", "body": format!("sync {i}"), "pad": "x".repeat((i % 64) as usize * 1024)});
                    let dst = mirror.join(rel);
                    let tmp = dst.with_extension("sync-tmp");
                    std::fs::write(&tmp, body.to_string()).unwrap();
                    std::fs::rename(&tmp, &dst).unwrap();
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            i
        })
    };
    let agent = |code: &str| {
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(code)
            .current_dir(&m.mnt)
            .output()
            .unwrap()
    };
    let reader = format!(
        "import json, time\n\
         n = bad = 0\n\
         end = time.time() + 4\n\
         while time.time() < end:\n\
         \x20   for p in ['{meta}', '{review}']:\n\
         \x20       with open(p) as f:\n\
         \x20           t = f.read()\n\
         \x20       try:\n\
         \x20           json.loads(t)\n\
         \x20       except ValueError:\n\
         \x20           bad += 1\n\
         \x20       n += 1\n\
         print(n, bad)\n"
    );
    // ESTALE at open carries no bytes (the node was replaced before the writer began); at
    // close it means the bytes were refused and kept.
    let writer = format!(
        "import errno, json, time\n\
         ok = at_open = at_close = 0\n\
         end = time.time() + 4\n\
         i = 0\n\
         while time.time() < end:\n\
         \x20   i += 1\n\
         \x20   try:\n\
         \x20       f = open('{review}', 'w')\n\
         \x20   except OSError as e:\n\
         \x20       if e.errno != errno.ESTALE: raise\n\
         \x20       at_open += 1\n\
         \x20       continue\n\
         \x20   try:\n\
         \x20       f.write(json.dumps({{'event': 'COMMENT', 'body': f'agent {{i}}'}}))\n\
         \x20       f.close()\n\
         \x20       ok += 1\n\
         \x20   except OSError as e:\n\
         \x20       if e.errno != errno.ESTALE: raise\n\
         \x20       at_close += 1\n\
         print(ok, at_open, at_close)\n"
    );
    let (r, w) = std::thread::scope(|s| {
        let r = s.spawn(|| agent(&reader));
        let w = s.spawn(|| agent(&writer));
        (r.join().unwrap(), w.join().unwrap())
    });
    stop.store(true, Ordering::Relaxed);
    let rounds = syncer.join().unwrap();
    assert!(r.status.success(), "{}", err(&r));
    assert!(
        w.status.success(),
        "a writeback failed with something other than ESTALE: {}",
        err(&w)
    );
    let nums = |o: &std::process::Output| -> Vec<u64> {
        out(o)
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect()
    };
    let (reads, torn) = (nums(&r)[0], nums(&r)[1]);
    let (landed, at_open, stale) = (nums(&w)[0], nums(&w)[1], nums(&w)[2]);
    eprintln!(
        "syncer: {rounds} replacements of each file; reads {reads} ({torn} torn); writebacks \
         {landed} landed, {stale} refused at close with ESTALE, {at_open} ESTALE at open"
    );
    assert!(rounds > 50 && reads > 50 && landed + stale > 10);
    assert_eq!(torn, 0, "a read mixed two versions");
    // The file is one whole version, the syncer's or an agent's.
    let last: Value = serde_json::from_slice(&std::fs::read(m.mirror_at(review)).unwrap())
        .expect("the file is one whole version");
    assert_eq!(last["event"], "COMMENT");
    // Every writeback that did not land is in quarantine.
    let kept = std::fs::read_dir(m.mirror_at(".relay/.relayauth-mount/quarantine"))
        .unwrap()
        .count() as u64;
    assert_eq!(kept, stale, "every ESTALE writeback is kept");
}

/// The mirror moves an object aside (not removes it) and puts another at its name while the
/// kernel still caches the name: a file, its directory, its grandparent. Reads, stats,
/// listings and writebacks through the name must reach what the name holds now, as on a
/// native filesystem, never `ENOENT` for a name that exists and never the object that left.
#[test]
fn a_name_moved_aside_and_filled_again_resolves_to_what_is_there_now() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = TestMount::start(&issuer, &issuer.token(WRITER), MountOpts::default());
    let rel = "github/repos/acme/api/pulls/42/reviews/draft-lead-review.json";
    let through = m.mnt.join(rel);
    let moved = [
        rel,
        "github/repos/acme/api/pulls/42/reviews",
        "github/repos/acme/api/pulls/42",
    ];
    for (round, what) in moved.iter().enumerate() {
        // Every name on the way is in the kernel's cache (a single-session mount's TTL).
        std::fs::metadata(&through).unwrap();
        std::fs::read(&through).unwrap();
        let _ = std::fs::read_dir(through.parent().unwrap())
            .unwrap()
            .count();
        let aside = m.mirror_at(&format!("{what}.aside"));
        std::fs::rename(m.mirror_at(what), &aside).unwrap();
        std::fs::create_dir_all(m.mirror_at(rel).parent().unwrap()).unwrap();
        let body = json!({"event": "COMMENT", "body": format!("placed in round {round}")});
        std::fs::write(m.mirror_at(rel), body.to_string()).unwrap();

        let read = std::fs::read(&through).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(read, body.to_string().as_bytes(), "round {round}");
        let len = std::fs::metadata(&through).unwrap().len();
        assert_eq!(len, body.to_string().len() as u64, "round {round}");
        let names = |dir: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('_'))
                .collect();
            v.sort();
            v
        };
        let listed = names(through.parent().unwrap());
        assert_eq!(
            listed,
            names(m.mirror_at(rel).parent().unwrap()),
            "round {round}"
        );
        assert_eq!(
            listed.len(),
            if round == 0 { 3 } else { 1 },
            "round {round}"
        );
        // A writeback through the name replaces the file that is there now.
        let mine = json!({"event": "COMMENT", "body": format!("written in round {round}")});
        std::fs::write(&through, mine.to_string())
            .unwrap_or_else(|e| panic!("round {round}: writeback: {e}"));
        assert_eq!(
            std::fs::read(m.mirror_at(rel)).unwrap(),
            mine.to_string().as_bytes(),
            "round {round}"
        );
        // What was moved aside is untouched.
        let aside_file = if round == 0 {
            aside.clone()
        } else {
            aside.join(&rel[what.len() + 1..])
        };
        let kept: Value = serde_json::from_slice(&std::fs::read(&aside_file).unwrap()).unwrap();
        assert_ne!(kept["body"], mine["body"], "round {round}");
        if aside.is_dir() {
            std::fs::remove_dir_all(&aside).unwrap();
        } else {
            std::fs::remove_file(&aside).unwrap();
        }
    }
}
