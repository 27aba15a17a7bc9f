//! Attack classes from an adversarial review, each against a real mount: the token file
//! (FIFOs, another identity's token, an expired or revoked one, a narrower one while files are
//! open), the reload loop of watched files, and more below. Each test fails on a daemon without
//! the fix it names.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mount::*;
use serde_json::{Value, json};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relayauth-mount"))
}

/// Replace the mount's token file atomically with `token`.
fn rewrite_token(m: &TestMount, token: &str) {
    let tmp = m.token_file.with_extension("new");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, &m.token_file).unwrap();
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

/// A Python agent in the mount that stops where its code reads a line from stdin: the test
/// does something meanwhile, then lets it go on.
struct Agent {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Agent {
    fn start(m: &TestMount, code: &str) -> Agent {
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(code)
            .current_dir(&m.mnt)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Agent { child, lines }
    }

    /// The next line the agent prints ("" when it printed nothing more).
    fn line(&mut self) -> String {
        self.lines.next().and_then(Result::ok).unwrap_or_default()
    }

    /// Let it past its `sys.stdin.readline()`.
    fn go(&mut self) {
        writeln!(self.child.stdin.as_mut().unwrap()).unwrap();
    }

    /// Everything it prints until it exits, and whether it exited successfully.
    fn finish(mut self) -> (Vec<String>, bool) {
        let rest: Vec<String> = self.lines.by_ref().map_while(Result::ok).collect();
        (rest, self.child.wait().is_ok_and(|s| s.success()))
    }
}

const GITHUB: &str = "relayfile:fs:read:/github/**";
const SLACK: &str = "relayfile:fs:read:/slack/**";

/// The token path replaced by a FIFO: the daemon must neither hang on it nor stop answering
/// `status`, revoking and unmounting.
#[test]
fn a_fifo_at_the_token_path_wedges_nothing() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let token = issuer.token(&[GITHUB]);
    let mut m = TestMount::start(&issuer, &token, MountOpts::default());
    std::fs::remove_file(&m.token_file).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &m.token_file,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // Give the watcher time to react to the new name (and, without the fix, to block on it).
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    let status = status_json(&m);
    assert_eq!(status["ok"], true, "{status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        m.sh("cat github/repos/acme/api/metadata.json")
            .status
            .success()
    );
    // Revocation still ends the mount promptly.
    let sid = claims_of(&token)["sid"].as_str().unwrap().to_owned();
    issuer.revoke(json!({"sessionId": sid}));
    let (code, stderr) = m.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(3), "{stderr}");
}

/// Whoever can write the token file must not swap in another identity's (broader) token, a
/// revoked token, or one already past `exp` (inside the verification leeway); the current token
/// stays, and the refusal is audited.
#[test]
fn a_rewritten_token_is_adopted_only_for_the_same_live_identity() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let me = issuer.identity("narrow-agent", &[GITHUB, SLACK]);
    let other = issuer.identity("broad-agent", &[GITHUB, SLACK]);
    let mine = issuer.mint_scoped(&me, &[GITHUB], 3600);
    let m = TestMount::start(&issuer, &mine, MountOpts::default());
    let slack_visible = || m.at("slack/users").is_dir();
    assert!(!slack_visible());

    let theirs = issuer.mint_scoped(&other, &[GITHUB, SLACK], 3600);
    rewrite_token(&m, &theirs);
    let refused = m.wait_audit(|e| {
        e["action"] == "token.validated"
            && e["result"] == "denied"
            && e["metadata"]["refusedSubject"] == other.as_str()
    });
    assert!(
        refused["reason"].as_str().unwrap().contains("not for"),
        "{refused}"
    );
    assert!(!slack_visible(), "another identity's token was adopted");

    let revoked = issuer.mint_scoped(&me, &[GITHUB, SLACK], 3600);
    issuer.revoke(json!({"tokenId": claims_of(&revoked)["jti"]}));
    rewrite_token(&m, &revoked);
    m.wait_audit(|e| {
        e["action"] == "token.validated"
            && e["result"] == "denied"
            && e["metadata"]["refusedTokenId"] == claims_of(&revoked)["jti"]
    });
    assert!(!slack_visible(), "a revoked token was adopted");

    let short = issuer.mint_scoped(&me, &[GITHUB, SLACK], 1);
    std::thread::sleep(Duration::from_millis(2100));
    rewrite_token(&m, &short);
    m.wait_audit(|e| {
        e["action"] == "token.validated"
            && e["result"] == "denied"
            && e["metadata"]["refusedTokenId"] == claims_of(&short)["jti"]
    });
    assert!(is_mounted(&m.mnt), "an expired token ended the mount");
    assert_eq!(
        status_json(&m)["session"]["token_id"],
        claims_of(&mine)["jti"]
    );

    // The same identity's live token is adopted.
    let wide = issuer.mint_scoped(&me, &[GITHUB, SLACK], 3600);
    rewrite_token(&m, &wide);
    assert!(
        eventually(Duration::from_secs(10), slack_visible),
        "the same identity's new token was not adopted"
    );
}

/// A descriptor opened before the token lost a right loses it too.
#[test]
fn open_descriptors_lose_rights_the_new_token_drops() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let me = issuer.identity("shrinking", &[GITHUB, SLACK]);
    let wide = issuer.mint_scoped(&me, &[GITHUB, SLACK], 3600);
    let m = TestMount::start(&issuer, &wide, MountOpts::default());
    let mut agent = Agent::start(
        &m,
        "import sys, errno
kept = open('github/repos/acme/api/metadata.json')
lost = open('slack/users/U04ALICE01.json')
print('open', flush=True)
sys.stdin.readline()
for f in (kept, lost):
    f.seek(0)
    try:
        f.read()
        print('ok', flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno), flush=True)",
    );
    assert_eq!(agent.line(), "open");
    let narrow = issuer.mint_scoped(&me, &[GITHUB], 3600);
    rewrite_token(&m, &narrow);
    assert!(
        eventually(Duration::from_secs(10), || !m.at("slack").exists()),
        "the narrower token was not adopted"
    );
    agent.go();
    let (answers, _) = agent.finish();
    assert_eq!(
        answers,
        ["ok", "EACCES"],
        "a descriptor kept a right the token lost"
    );
}

/// Reading the watched files (the token file, the policy file) must not make the daemon reload
/// them: its own reload reads them too, which used to start an endless loop.
#[test]
fn reading_watched_files_causes_no_reload() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let mut m = TestMount::start(&issuer, &issuer.token(&[GITHUB]), MountOpts::default());
    let policies = m.mirror_at(".relay/writeback-policies.json");
    for _ in 0..3 {
        std::fs::read(&policies).unwrap();
        std::fs::read(&m.token_file).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    // Rewriting the policy file with the same bytes changes nothing either.
    let same = std::fs::read(&policies).unwrap();
    std::fs::write(&policies, &same).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (_, stderr) = m.stop();
    assert!(!stderr.contains("reloaded"), "{stderr}");
    let reloads = m
        .audit_events()
        .iter()
        .filter(|e| e["action"] == "token.refreshed")
        .count();
    assert_eq!(reloads, 0);
}

/// What a policy file says is re-read when its content changes.
#[test]
fn a_changed_policy_file_is_reloaded_once() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let mut m = TestMount::start(&issuer, &issuer.token(&[GITHUB]), MountOpts::default());
    let policies = m.mirror_at(".relay/writeback-policies.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&policies).unwrap()).unwrap();
    v["policies"].as_array_mut().unwrap().pop();
    std::fs::write(&policies, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            status_json(&m)["writeback_policies"] == 3
        }),
        "{} {:?}",
        status_json(&m),
        m.stop()
    );
    std::thread::sleep(Duration::from_secs(1));
    let (_, stderr) = m.stop();
    assert_eq!(stderr.matches("reloaded").count(), 1, "{stderr}");
}

fn fixture(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

fn owner(p: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::symlink_metadata(p).unwrap())
}

const REVIEWS: &str = "github/repos/acme/api/pulls/42/reviews";

/// Other local users: without `--allow-other-users` they see nothing through a root's mount,
/// not even what its token may read; with it, the mirror's permission bits apply on top of the
/// token (as natively and with bindfs), and what they create belongs to them.
#[test]
fn other_local_users_do_not_act_under_the_mounts_token() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let prepare = |mirror: &Path| {
        std::fs::create_dir_all(mirror.join("scratch/open")).unwrap();
        std::fs::write(mirror.join("scratch/secret.txt"), "ROOT-ONLY").unwrap();
        chmod(&mirror.join("scratch/secret.txt"), 0o600);
        std::fs::write(mirror.join("scratch/rootfile"), "root's").unwrap();
        chmod(&mirror.join("scratch/open"), 0o777);
        chmod(&mirror.join(REVIEWS), 0o777);
    };
    let token = issuer.token(&[
        "relayfile:fs:manage:/scratch/**",
        GITHUB,
        "relayfile:fs:create:/github/repos/acme/api/pulls/42/reviews/*",
    ]);
    let probes = "cat scratch/secret.txt; cat github/repos/acme/api/metadata.json; ls scratch;
        echo planted > scratch/open/new; echo planted > scratch/rootfile; mkdir scratch/open/d";
    {
        let m = TestMount::start(
            &issuer,
            &token,
            MountOpts {
                args: vec!["--local-roots", "scratch"],
                prepare: Some(&prepare),
                ..MountOpts::default()
            },
        );
        let before = snapshot(&m.mirror);
        let o = m.sh_as_nobody(probes);
        assert_eq!(out(&o), "", "{}", err(&o));
        assert_eq!(snapshot(&m.mirror), before, "nobody changed the mirror");
        // The owner still works.
        assert!(
            m.sh("cat scratch/secret.txt github/repos/acme/api/metadata.json")
                .status
                .success()
        );
    }
    let m = TestMount::start(
        &issuer,
        &token,
        MountOpts {
            args: vec!["--local-roots", "scratch", "--allow-other-users"],
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    let o = m.sh_as_nobody("cat scratch/secret.txt");
    assert!(err(&o).contains("Permission denied"), "{}", err(&o));
    let o = m.sh_as_nobody("echo planted > scratch/rootfile");
    assert!(err(&o).contains("Permission denied"), "{}", err(&o));
    assert_eq!(
        std::fs::read_to_string(m.mirror_at("scratch/rootfile")).unwrap(),
        "root's"
    );
    let o = m.sh_as_nobody(
        "set -e; cat github/repos/acme/api/metadata.json > /dev/null
         echo mine > scratch/open/new; mkdir scratch/open/d; ln -s new scratch/open/l",
    );
    assert!(o.status.success(), "{}", err(&o));
    for p in ["scratch/open/new", "scratch/open/d", "scratch/open/l"] {
        assert_eq!(owner(&m.mirror_at(p)), 65534, "{p} is not nobody's");
    }
    // A writeback made by nobody is nobody's file too.
    let review = fixture("mount-fixtures/payloads/github-review.valid.json");
    let target = format!("{REVIEWS}/by-nobody.json");
    let o = m.sh_as_nobody(&format!("cat > {target} <<'JSON'\n{review}\nJSON"));
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(owner(&m.mirror_at(&target)), 65534);
}

/// Overwriting an existing writeback file (shell `>`, Python `open("w")`, `O_TRUNC`) leaves the
/// old content in the mirror until the file is closed, and exactly the new bytes after: never
/// an empty file in between, never the new text followed by the old tail.
#[test]
fn overwriting_a_writeback_with_o_trunc_is_all_or_nothing() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = TestMount::start(
        &issuer,
        &issuer.token(&[
            GITHUB,
            "relayfile:fs:write:/github/repos/acme/api/pulls/42/reviews/**",
        ]),
        MountOpts::default(),
    );
    let file = format!("{REVIEWS}/draft-lead-review.json");
    let mirror = m.mirror_at(&file);
    let long = serde_json::to_string_pretty(&json!({
        "event": "COMMENT",
        "body": "a long body that is longer than what replaces it ".repeat(20),
    }))
    .unwrap();
    std::fs::write(&mirror, &long).unwrap();
    let short = r#"{"event": "APPROVE", "body": "short"}"#;
    let opens = [
        "f = open(p, 'w')",
        "f = os.fdopen(os.open(p, os.O_WRONLY | os.O_TRUNC), 'w')",
        "f = open(p, 'r+'); f.truncate(0)",
    ];
    for open in opens {
        std::fs::write(&mirror, &long).unwrap();
        let mut agent = Agent::start(
            &m,
            &format!(
                "import os, sys
p = '{file}'
{open}
f.write({short:?})
f.flush()
print('written', flush=True)
sys.stdin.readline()
f.close()
print('closed', flush=True)"
            ),
        );
        assert_eq!(agent.line(), "written", "{open}");
        assert_eq!(
            std::fs::read_to_string(&mirror).unwrap(),
            long,
            "{open}: the mirror changed before close"
        );
        agent.go();
        assert_eq!(agent.finish(), (vec!["closed".to_owned()], true), "{open}");
        assert_eq!(std::fs::read_to_string(&mirror).unwrap(), short, "{open}");
    }
    // The shell's `>` too.
    std::fs::write(&mirror, &long).unwrap();
    let o = m.sh(&format!("printf '%s' '{short}' > {file}"));
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(std::fs::read_to_string(&mirror).unwrap(), short);
}

/// The peak resident memory of a process, in KiB (`VmHWM`).
/// A tree as deep as PATH_MAX allows, and then some: the mount refuses the next level with
/// ENAMETOOLONG, and neither the daemon's memory nor the audit log grows with the square of the
/// depth.
#[test]
fn a_deep_tree_is_bounded_by_path_max() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let mut m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:manage:/scratch/**"]),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&|mirror: &Path| {
                std::fs::create_dir_all(mirror.join("scratch")).unwrap()
            }),
            ..MountOpts::default()
        },
    );
    let o = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import os, errno
os.chdir('scratch')
depth = 0
while True:
    try:
        os.mkdir('d')
        os.chdir('d')
        depth += 1
    except OSError as e:
        print(depth, errno.errorcode.get(e.errno))
        break
    if depth > 5000:
        print(depth, 'unbounded')
        break",
        )
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    let text = out(&o);
    let mut parts = text.split_whitespace();
    let depth: usize = parts.next().unwrap().parse().unwrap();
    assert_eq!(parts.next(), Some("ENAMETOOLONG"), "{text}{}", err(&o));
    // "/scratch" + "/d" per level fits in PATH_MAX - 1 bytes.
    assert_eq!(depth, (4095 - "/scratch".len()) / 2, "{text}");
    let pid = m.daemon_pid().unwrap();
    let rss = peak_rss_kib(pid);
    assert!(rss < 150 * 1024, "the daemon peaked at {rss} KiB");
    m.stop();
    let audit = std::fs::metadata(&m.audit).unwrap().len();
    eprintln!("depth {depth}: daemon peak {rss} KiB, audit log {audit} bytes");
    assert!(audit < 24 << 20, "the audit log grew to {audit} bytes");
}

/// `renameat2` for the tests (Python has no binding): flags 2 = RENAME_EXCHANGE.
const RENAMEAT2: &str = "import ctypes, os, sys, errno
libc = ctypes.CDLL(None, use_errno=True)
def renameat2(a, b, flags):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) != 0:
        return errno.errorcode.get(ctypes.get_errno())
    return 'ok'
";

/// A staged writeback's directory (its parent, or any ancestor) cannot be renamed while the file
/// is open: the commit would be validated for one place and land in another. Renames and
/// exchanges of every ancestor answer EBUSY, and the file lands where it was validated.
#[test]
fn a_staged_writebacks_directories_cannot_move_under_it() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let prepare = |mirror: &Path| {
        std::fs::create_dir_all(mirror.join("github/repos/acme/api/pulls/44/reviews")).unwrap();
        std::fs::create_dir_all(mirror.join("github/repos/acme/api/other")).unwrap();
    };
    let m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:manage:/github/repos/acme/api/**"]),
        MountOpts {
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    m.wait_audit(|e| e["action"] == "token.validated");
    let review = fixture("mount-fixtures/payloads/github-review.valid.json");
    let mut agent = Agent::start(
        &m,
        &format!(
            "import sys
f = open('github/repos/acme/api/pulls/44/reviews/r.json', 'w')
f.write({review:?})
f.flush()
print('written', flush=True)
sys.stdin.readline()
f.close()
print('closed', flush=True)"
        ),
    );
    assert_eq!(agent.line(), "written");
    let o = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "{RENAMEAT2}
base = 'github/repos/acme/api'
for a, b, flags in [
    (base + '/pulls/44', base + '/wiki', 0),
    (base + '/pulls/44/reviews', base + '/pulls/44/elsewhere', 0),
    (base + '/pulls', base + '/pulls-moved', 0),
    (base + '/pulls/44', base + '/other', 2),
    (base + '/other', base + '/pulls/44', 2),
]:
    print(renameat2(a, b, flags))"
        ))
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    // Exchanges in a provider area are refused outright (EACCES): nothing there is placed
    // without validation.
    assert_eq!(
        out(&o),
        "EBUSY\nEBUSY\nEBUSY\nEACCES\nEACCES\n",
        "{}",
        err(&o)
    );
    agent.go();
    assert_eq!(agent.finish(), (vec!["closed".to_owned()], true));
    assert_eq!(
        std::fs::read_to_string(m.mirror_at("github/repos/acme/api/pulls/44/reviews/r.json"))
            .unwrap(),
        review
    );
    assert!(!m.mirror_at("github/repos/acme/api/wiki").exists());
    let queued = m.wait_audit(|e| e["action"] == "writeback.queued");
    assert_eq!(
        queued["path"],
        "/github/repos/acme/api/pulls/44/reviews/r.json"
    );
    // Once it is committed the directory may move again (it is empty of staged files).
    let o = m.sh("mkdir github/repos/acme/api/pulls/45 && mv github/repos/acme/api/pulls/45 github/repos/acme/api/pulls/46");
    assert!(o.status.success(), "{}", err(&o));
}

/// Directory renames carry everything below them, so each entry must be one the caller may
/// delete where it is and create where it goes. A directory held by an exact grant (its
/// children hidden), a grandparent of hidden entries, and an exchange are refused with EXDEV
/// (`mv` then copies what it can see), nothing hidden moves or becomes visible, and `rmdir` of
/// a directory whose only entries are hidden answers EACCES, not ENOTEMPTY.
#[test]
fn a_directory_rename_never_carries_hidden_entries() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let prepare = |mirror: &Path| {
        for d in [
            "scratch/box",
            "scratch/gp/p",
            "scratch/open/empty",
            "scratch/open/mine/sub",
        ] {
            std::fs::create_dir_all(mirror.join(d)).unwrap();
        }
        std::fs::write(mirror.join("scratch/box/secret.txt"), "HIDDEN").unwrap();
        std::fs::write(mirror.join("scratch/gp/p/secret.txt"), "HIDDEN").unwrap();
        std::fs::write(mirror.join("scratch/open/mine/sub/f"), "mine").unwrap();
    };
    let m = TestMount::start(
        &issuer,
        &issuer.token(&[
            "relayfile:fs:manage:/scratch/box",
            "relayfile:fs:manage:/scratch/gp",
            "relayfile:fs:manage:/scratch/gp/p",
            "relayfile:fs:manage:/scratch/open/**",
        ]),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    let hidden = |p: &str| std::fs::read_to_string(m.mirror_at(p)).unwrap() == "HIDDEN";
    assert!(!m.at("scratch/box/secret.txt").exists());
    let o = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "{RENAMEAT2}
import os
for a, b, flags in [
    ('scratch/box', 'scratch/open/box', 0),
    ('scratch/gp', 'scratch/open/gp', 0),
    ('scratch/box', 'scratch/open/empty', 2),
    ('scratch/open/empty', 'scratch/box', 2),
]:
    print(renameat2(a, b, flags))
try:
    os.rmdir('scratch/box')
except OSError as e:
    print(errno.errorcode.get(e.errno))"
        ))
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    assert_eq!(
        out(&o),
        "EXDEV\nEXDEV\nEXDEV\nEXDEV\nEACCES\n",
        "{}",
        err(&o)
    );
    assert!(hidden("scratch/box/secret.txt") && hidden("scratch/gp/p/secret.txt"));
    // `mv` falls back to copying what it sees; nothing hidden moves or appears.
    let o = m.sh("mv scratch/box scratch/open/box");
    assert!(!o.status.success());
    assert!(hidden("scratch/box/secret.txt"));
    assert!(!m.mirror_at("scratch/open/box/secret.txt").exists());
    let o = m.sh("cat scratch/open/box/secret.txt scratch/open/gp/p/secret.txt");
    assert!(!o.status.success());
    // A directory whose entries the caller may all move is renamed as a whole (same inode).
    let ino =
        |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(m.mirror_at(p)).unwrap());
    let before = ino("scratch/open/mine");
    let o = m.sh("mv scratch/open/mine scratch/open/moved");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(ino("scratch/open/moved"), before);
    assert_eq!(
        std::fs::read_to_string(m.mirror_at("scratch/open/moved/sub/f")).unwrap(),
        "mine"
    );
}

/// A directory an agent holds (its working directory) that relayfile's syncer moves into an
/// area the agent cannot see: nothing relative to it is decided on its old path any more.
#[test]
fn a_held_directory_moved_away_in_the_mirror_acts_under_no_old_path() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let prepare = |mirror: &Path| {
        std::fs::create_dir_all(mirror.join("scratch/public/dir")).unwrap();
        std::fs::create_dir_all(mirror.join("scratch/hidden")).unwrap();
        std::fs::write(mirror.join("scratch/public/dir/mine.txt"), "mine").unwrap();
    };
    let m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:manage:/scratch/public/**"]),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    let mut agent = Agent::start(
        &m,
        "import os, sys, errno
os.chdir('scratch/public/dir')
print(open('mine.txt').read(), flush=True)
sys.stdin.readline()
def attempt(f):
    try:
        f()
        return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno)
print(attempt(lambda: open('secret.txt').read()), flush=True)
print(attempt(lambda: open('planted.txt', 'w').write('x')), flush=True)
print(attempt(lambda: os.listdir('.')), flush=True)
print(attempt(lambda: os.mkdir('sub')), flush=True)",
    );
    assert_eq!(agent.line(), "mine");
    // The syncer moves the directory into the hidden area and a secret appears in it.
    std::fs::rename(
        m.mirror_at("scratch/public/dir"),
        m.mirror_at("scratch/hidden/dir"),
    )
    .unwrap();
    std::fs::write(m.mirror_at("scratch/hidden/dir/secret.txt"), "SECRET").unwrap();
    agent.go();
    let (answers, _) = agent.finish();
    assert_eq!(answers, ["ENOENT", "ENOENT", "ENOENT", "ENOENT"]);
    assert!(!m.mirror_at("scratch/hidden/dir/planted.txt").exists());
    assert!(!m.mirror_at("scratch/hidden/dir/sub").exists());
}

/// An exchange of whole top-level directories, one a provider area and one local, would move a
/// provider's files out unchecked and put unvalidated ones in their place: refused like any
/// exchange touching a provider area.
#[test]
fn exchanging_a_provider_top_level_with_a_local_one_is_refused() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let prepare = |mirror: &Path| std::fs::create_dir_all(mirror.join("scratch/dir")).unwrap();
    let m = TestMount::start(
        &issuer,
        &issuer.token(&[
            "relayfile:fs:manage:/scratch/**",
            "relayfile:fs:manage:/linear/**",
        ]),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    let before = snapshot(&m.mirror);
    let o = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "{RENAMEAT2}
for a, b in [('scratch', 'linear'), ('linear', 'scratch'), ('scratch/dir', 'linear/issues'),
             ('linear/issues', 'scratch/dir')]:
    print(renameat2(a, b, 2))"
        ))
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    assert_eq!(out(&o), "EACCES\nEACCES\nEACCES\nEACCES\n", "{}", err(&o));
    assert_eq!(snapshot(&m.mirror), before);
}

/// Someone who can write the mirror swaps an object of theirs into the name a caller's mkdir
/// just made: the daemon (root) must not give that object to the caller.
#[test]
fn a_name_swapped_under_mkdir_is_not_given_away() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let prepare = |mirror: &Path| {
        std::fs::create_dir_all(mirror.join("scratch")).unwrap();
        chmod(&mirror.join("scratch"), 0o777);
        std::fs::write(mirror.join("scratch/secret"), "TOPSECRET").unwrap();
        chmod(&mirror.join("scratch/secret"), 0o600);
    };
    let m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:manage:/scratch/**"]),
        MountOpts {
            args: vec!["--local-roots", "scratch", "--allow-other-users"],
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    // One thread exchanges `secret` and `d` in the mirror as fast as it can (a writer of the
    // mirror); another, acting as nobody (its own filesystem ids: that is who FUSE reports),
    // makes and removes `d` through the mount.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let dir = std::fs::File::open(m.mirror_at("scratch")).unwrap();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let swapped = rustix::fs::renameat_with(
                    &dir,
                    "secret",
                    &dir,
                    "d",
                    rustix::fs::RenameFlags::EXCHANGE,
                );
                if swapped.is_ok() {
                    swaps += 1;
                    continue;
                }
                // The other thread removed the directory while it was named `secret`, which
                // leaves the secret file at `d`, where every later mkdir meets it: put it back
                // under its own name so the race goes on.
                let at_d = rustix::fs::statat(&dir, "d", rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
                if at_d.is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG) {
                    let _ = rustix::fs::renameat_with(
                        &dir,
                        "d",
                        &dir,
                        "secret",
                        rustix::fs::RenameFlags::NOREPLACE,
                    );
                }
            }
            swaps
        })
    };
    let mnt = m.at("scratch");
    let made = std::thread::spawn(move || {
        // SAFETY: changes this thread's filesystem ids only.
        unsafe {
            libc::setfsgid(65534);
            libc::setfsuid(65534);
        }
        let mut made = 0;
        for _ in 0..5000 {
            if std::fs::create_dir(mnt.join("d")).is_ok() {
                made += 1;
            }
            let _ = std::fs::remove_dir(mnt.join("d"));
            let _ = std::fs::remove_dir(mnt.join("secret"));
        }
        made
    })
    .join()
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(
        made > 100 && swaps > 100,
        "the race did not run ({made} mkdirs, {swaps} swaps)"
    );
    let secret = ["scratch/secret", "scratch/d"]
        .iter()
        .map(|p| m.mirror_at(p))
        .find(|p| std::fs::read(p).is_ok_and(|b| b == b"TOPSECRET"))
        .expect("the secret is still there");
    assert_eq!(owner(&secret), 0, "the secret was given to nobody");
}

/// A writer that starts a child process while writing (the child's exec closes its inherited
/// copy of the descriptor) keeps writing: only the opener's own close commits early.
#[test]
fn a_child_closing_an_inherited_descriptor_does_not_commit_a_half_write() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = TestMount::start(
        &issuer,
        &issuer.token(&[
            GITHUB,
            "relayfile:fs:write:/github/repos/acme/api/pulls/42/reviews/**",
        ]),
        MountOpts::default(),
    );
    let file = format!("{REVIEWS}/draft-lead-review.json");
    let full = r#"{"event": "APPROVE", "body": "written in two halves"}"#;
    let (a, b) = full.split_at(20);
    let o = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import os, subprocess
fd = os.open('{file}', os.O_WRONLY | os.O_TRUNC)
os.set_inheritable(fd, True)
os.write(fd, {a:?}.encode())
subprocess.run(['true'], close_fds=False)
os.write(fd, {b:?}.encode())
os.close(fd)
print('ok')"
        ))
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    assert_eq!(out(&o), "ok\n", "{}", err(&o));
    assert_eq!(std::fs::read_to_string(m.mirror_at(&file)).unwrap(), full);
}
