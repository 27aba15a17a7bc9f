//! Sub-agents in one mount, on real mounts: `relayauth-mount run` registers a process under its
//! own token, and it and everything it starts see and do only what that token allows, while the
//! lead and other sub-agents keep theirs; each is refused, revoked and audited on its own.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::mount::*;
use serde_json::{Value, json};

const LEAD: &[&str] = &["relayfile:fs:read:*"];
const GITHUB: &[&str] = &["relayfile:fs:read:/github/*"];
const SLACK: &[&str] = &["relayfile:fs:read:/slack/*"];
const GH_FILE: &str = "github/repos/acme/api/metadata.json";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relayauth-mount"))
}

/// A token file for `scopes` (a fresh identity of the mount's workspace).
fn token_file(m: &TestMount, issuer: &Issuer, name: &str, scopes: &[&str]) -> std::path::PathBuf {
    let path = m.dir.path().join(format!("{name}.jwt"));
    std::fs::write(&path, issuer.token(scopes)).unwrap();
    path
}

/// `relayauth-mount run` of `argv` in the mount, under the token in `token`.
fn run_as<S: AsRef<std::ffi::OsStr>>(m: &TestMount, token: &Path, argv: &[S]) -> Command {
    let mut cmd = bin();
    cmd.arg("run")
        .arg("--mountpoint")
        .arg(&m.mnt)
        .arg("--token-file")
        .arg(token)
        .arg("--")
        .args(argv)
        .current_dir(&m.mnt);
    cmd
}

/// `relayauth-mount run` of a Python program in the mount.
fn run_py(m: &TestMount, token: &Path, code: &str) -> Command {
    run_as(m, token, &["/usr/bin/python3", "-c", code])
}

/// A mount of the lead's token started with extra `mount` flags.
fn lead_mount(args: Vec<&str>) -> (Issuer, TestMount) {
    let issuer = Issuer::start();
    let m = TestMount::start(
        &issuer,
        &issuer.token(LEAD),
        MountOpts {
            args,
            ..MountOpts::default()
        },
    );
    (issuer, m)
}

/// A mount of a lead that manages everything, with `scratch` a local root made by `prepare`.
fn scratch_mount(prepare: &dyn Fn(&Path)) -> (Issuer, TestMount) {
    let issuer = Issuer::start();
    let m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:manage:*"]),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(prepare),
            ..MountOpts::default()
        },
    );
    (issuer, m)
}

/// What a process sees: the top level, and for each path whether it reads.
const LOOK: &str = "import os, json, errno
def attempt(p):
    try:
        open(p).read()
        return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno)
top = sorted(n for n in os.listdir('.') if not n.startswith('_'))
print(json.dumps({'top': top,
    'github': attempt('github/repos/acme/api/metadata.json'),
    'slack': attempt('slack/users/U04ALICE01.json') if os.path.exists('slack') else 'ENOENT',
    'notice': open('_PERMISSIONS.md').read()}))";

fn look(o: &Output) -> Value {
    assert!(o.status.success(), "{}", err(o));
    serde_json::from_str(out(o).trim()).unwrap_or_else(|e| panic!("{e}: {}", out(o)))
}

fn two_sessions() -> (Issuer, TestMount) {
    lead_mount(Vec::new())
}

#[test]
fn a_lead_and_two_sub_agents_see_their_own_trees_at_the_same_time() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = two_sessions();
    assert!(m.mirror_at("slack/users/U04ALICE01.json").exists());
    let gh = token_file(&m, &issuer, "github", GITHUB);
    let sl = token_file(&m, &issuer, "slack", SLACK);
    // Both at once, each holding its view while the other runs.
    let slow = format!("import time\ntime.sleep(0.5)\n{LOOK}");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run_py(&m, &gh, &slow).output().unwrap());
        let b = s.spawn(|| run_py(&m, &sl, &slow).output().unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (look(&a), look(&b));
    assert_eq!(a["top"], json!(["github"]), "{a}");
    assert_eq!(a["github"], "ok");
    assert_eq!(a["slack"], "ENOENT");
    assert_eq!(b["top"], json!(["slack"]), "{b}");
    assert_eq!(b["github"], "ENOENT");
    assert_eq!(b["slack"], "ok");
    // Each one's notice is its own.
    let (na, nb) = (a["notice"].as_str().unwrap(), b["notice"].as_str().unwrap());
    let sub = |f: &Path| {
        claims_of(&std::fs::read_to_string(f).unwrap())["sub"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(na.contains(&format!("Agent: `{}`", sub(&gh))), "{na}");
    assert!(nb.contains(&format!("Agent: `{}`", sub(&sl))), "{nb}");
    assert!(
        na.contains("| `github` | dir") && !na.contains("| `slack` | dir"),
        "{na}"
    );
    assert!(
        nb.contains("| `slack` | dir") && !nb.contains("| `github` | dir"),
        "{nb}"
    );
    // The lead (this process, unregistered, the mount's own user) still sees everything.
    let mut top: Vec<String> = std::fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('_'))
        .collect();
    top.sort();
    assert_eq!(top, ["github", "linear", "slack"]);
    // Every registration audited with its sponsor chain.
    let regs: Vec<Value> = m
        .audit_events()
        .into_iter()
        .filter(|e| e["action"] == "session.registered")
        .collect();
    assert_eq!(regs.len(), 2, "{regs:?}");
    for r in &regs {
        assert_eq!(r["result"], "allowed");
        assert_eq!(r["sponsorId"], "user_alice");
        assert!(r["sponsorChain"].as_array().is_some_and(|c| !c.is_empty()));
    }
}

/// Session A looks a path up; B, which may not see it, must get ENOENT right after, whatever
/// the kernel cached for A; and the reverse for a path only B may see.
#[test]
fn nothing_one_session_looked_up_answers_for_another() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = two_sessions();
    let gh = token_file(&m, &issuer, "github", GITHUB);
    let sl = token_file(&m, &issuer, "slack", SLACK);
    // The lead caches entries (TTL while it is the only session), then A registers and B
    // looks at them at once.
    std::fs::read(m.at(GH_FILE)).unwrap();
    std::fs::metadata(m.at("slack/channels")).unwrap();
    let stat = |p: &str| {
        format!(
            "import os, errno\ntry:\n    os.stat('{p}'); print('seen')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])"
        )
    };
    for _ in 0..3 {
        let a = run_py(&m, &gh, &stat(GH_FILE)).output().unwrap();
        assert_eq!(out(&a).trim(), "seen", "{}", err(&a));
        let b = run_py(&m, &sl, &stat(GH_FILE)).output().unwrap();
        assert_eq!(out(&b).trim(), "ENOENT", "{}", err(&b));
        let b = run_py(&m, &sl, &stat("slack/channels")).output().unwrap();
        assert_eq!(out(&b).trim(), "seen", "{}", err(&b));
        let a = run_py(&m, &gh, &stat("slack/channels")).output().unwrap();
        assert_eq!(out(&a).trim(), "ENOENT", "{}", err(&a));
    }
}

#[test]
fn threads_and_orphans_of_a_sub_agent_stay_in_its_session_and_stop_with_it() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = two_sessions();
    let gh = token_file(&m, &issuer, "github", GITHUB);
    // Threads started after the registration; a grandchild that double-forks away from its
    // parent (re-parented to `run`, not to init) and reads after its parent is gone.
    let code = format!(
        "import os, sys, time, threading, errno
def attempt(p):
    try:
        open(p).read(); return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno)
out = []
ts = [threading.Thread(target=lambda: out.append((attempt('{GH_FILE}'), attempt('slack/users/U04ALICE01.json')))) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
print('threads', sorted(set(out)), flush=True)
r, w = os.pipe()
if os.fork() == 0:
    if os.fork() == 0:
        time.sleep(0.3)  # the middle process has exited: this one is an orphan now
        os.write(w, ('%s %d %s %s' % (os.readlink('/proc/self'), os.getppid(), attempt('{GH_FILE}'), attempt('slack/users/U04ALICE01.json'))).encode())
        time.sleep(60)  # left running when the command exits
        os._exit(0)
    os._exit(0)
os.wait()
print('orphan', os.read(r, 200).decode(), flush=True)
sys.exit(7)"
    );
    let started = Instant::now();
    let o = run_py(&m, &gh, &code).output().unwrap();
    let took = started.elapsed();
    // The command's exit status is run's.
    assert_eq!(o.status.code(), Some(7), "{}", err(&o));
    let text = out(&o);
    assert!(
        text.contains("threads [('ok', 'ENOENT')]"),
        "a thread left its session: {text}"
    );
    let orphan = text
        .lines()
        .find_map(|l| l.strip_prefix("orphan "))
        .unwrap_or_else(|| panic!("{text}"));
    let f: Vec<&str> = orphan.split_whitespace().collect();
    assert_eq!(
        &f[2..],
        ["ok", "ENOENT"],
        "the orphan left its session: {orphan}"
    );
    // What the command left running was stopped before run returned, not after its 60 s
    // sleep (it holds run's stdout, which `output()` reads to the end).
    assert!(took < Duration::from_secs(30), "the orphan outlived run");
    assert!(err(&o).contains("stopping 1 process"), "{}", err(&o));
}

#[test]
fn registrations_the_daemon_must_refuse() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = two_sessions();
    let gh = token_file(&m, &issuer, "github", GITHUB);
    let lead_file = m.dir.path().join("lead.jwt");
    std::fs::copy(&m.token_file, &lead_file).unwrap();
    // A token of another workspace.
    let (status, v) = issuer.call(
        "POST",
        "/v1/identities",
        Some(
            json!({"name": "elsewhere", "orgId": "org_acme", "workspaceId": "ws_other",
            "sponsorId": "user_alice", "scopes": ["relayfile:fs:read:*"]}),
        ),
        None,
    );
    assert_eq!(status, 201, "{v}");
    let other = m.dir.path().join("other.jwt");
    std::fs::write(
        &other,
        issuer.mint(v["id"].as_str().unwrap(), 600)["accessToken"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let o = run_py(&m, &other, "print('ran')").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(!out(&o).contains("ran"));
    assert!(err(&o).contains("ws_other"), "{}", err(&o));
    // A revoked token.
    let revoked = token_file(&m, &issuer, "revoked", GITHUB);
    let jti = claims_of(&std::fs::read_to_string(&revoked).unwrap())["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    issuer.revoke(json!({ "tokenId": jti }));
    let o = run_py(&m, &revoked, "print('ran')").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("revoked"), "{}", err(&o));
    // Garbage.
    let junk = m.dir.path().join("junk.jwt");
    std::fs::write(&junk, "eyJhbGciOiJub25lIn0.e30.").unwrap();
    let o = run_py(&m, &junk, "print('ran')").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    // A sub-agent cannot widen itself with a broader token it got hold of (the lead's).
    let nested = format!(
        "import subprocess, sys
r = subprocess.run(['{bin}', 'run', '--mountpoint', '{mnt}', '--token-file', '{lead}', '--', 'ls', 'slack'], capture_output=True, text=True)
print(r.returncode); print(r.stderr)",
        bin = env!("CARGO_BIN_EXE_relayauth-mount"),
        mnt = m.mnt.display(),
        lead = lead_file.display(),
    );
    let o = run_py(&m, &gh, &nested).output().unwrap();
    let text = out(&o);
    assert!(
        text.starts_with("1\n"),
        "a sub-agent widened itself: {text}"
    );
    assert!(
        text.contains("beyond the session this process acts under"),
        "{text}"
    );
    let esc = m.wait_audit(|e| e["action"] == "scope.escalation_denied");
    assert!(
        esc["metadata"]["offending"]
            .as_str()
            .is_some_and(|s| s.contains("relayfile:fs:read:*")),
        "{esc}"
    );
    // ... but may narrow itself further.
    let narrow = token_file(
        &m,
        &issuer,
        "narrow",
        &["relayfile:fs:read:/github/repos/acme/api/*"],
    );
    let nested = format!(
        "import subprocess
r = subprocess.run(['{bin}', 'run', '--mountpoint', '{mnt}', '--token-file', '{narrow}', '--', '/usr/bin/python3', '-c', 'import os; print([n for n in os.listdir(\"github/repos/acme\") if n[0] != \"_\"])'], capture_output=True, text=True)
print(r.returncode, r.stdout.strip(), r.stderr.strip())",
        bin = env!("CARGO_BIN_EXE_relayauth-mount"),
        mnt = m.mnt.display(),
        narrow = narrow.display(),
    );
    let o = run_py(&m, &gh, &nested).output().unwrap();
    assert_eq!(out(&o).trim(), "0 ['api']", "{}", err(&o));
    // A request that names another process is refused: a process registers only itself.
    let sock = control_socket(&m);
    let forge = format!(
        "import socket, json, os
s = socket.socket(socket.AF_UNIX); s.connect('{sock}')
s.sendall((json.dumps({{'op': 'register', 'token': open('{lead}').read().strip(), 'pid': os.getppid()}}) + '\\n').encode())
print(s.makefile().readline())",
        sock = sock.display(),
        lead = lead_file.display(),
    );
    let o = Command::new("/usr/bin/python3")
        .args(["-c", &forge])
        .output()
        .unwrap();
    let answer: Value = serde_json::from_str(out(&o).trim()).unwrap();
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("may register only itself")),
        "{answer}"
    );
}

/// The control socket of a test mount: the one in root's runtime directory whose daemon
/// serves this mountpoint (bound just after the mount appears, so looked for until it is).
fn control_socket(m: &TestMount) -> std::path::PathBuf {
    let want = m.mnt.canonicalize().unwrap().display().to_string();
    let find = || {
        std::fs::read_dir("/run/relayauth-mount")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                std::os::unix::net::UnixStream::connect(p).is_ok_and(|mut s| {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = s.write_all(b"{\"op\":\"status\"}\n");
                    let mut line = String::new();
                    let _ = BufReader::new(s).read_line(&mut line);
                    serde_json::from_str::<Value>(&line)
                        .is_ok_and(|v| v["mountpoint"].as_str() == Some(want.as_str()))
                })
            })
    };
    let mut found = None;
    eventually(Duration::from_secs(10), || {
        found = find();
        found.is_some()
    });
    found.expect("the mount's control socket")
}

fn status(m: &TestMount) -> Value {
    let o = bin()
        .args(["status", "--json"])
        .arg(&m.mnt)
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

#[test]
fn revoking_one_sub_agent_cuts_it_off_at_once_and_leaves_the_others() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = two_sessions();
    let gh = token_file(&m, &issuer, "github", GITHUB);
    let other = token_file(&m, &issuer, "github2", GITHUB);
    // Both agents keep a file open and read by path, a line per answer, until told to stop.
    let agent = format!(
        "import sys, errno, time
held = open('{GH_FILE}')
def attempt():
    try:
        open('{GH_FILE}').read(); return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno)
def held_read():
    try:
        held.seek(0); held.read(); return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno)
print('ready', flush=True)
for line in sys.stdin:
    if line.startswith('run '):
        import subprocess
        r = subprocess.run(line[4:], shell=True, capture_output=True, text=True)
        print(r.returncode, r.stderr.strip().replace('\\n', ' '), flush=True)
        continue
    print(attempt(), held_read(), flush=True)"
    );
    let spawn = |token: &Path| {
        let mut c = run_py(&m, token, &agent);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        Running {
            child,
            stdin,
            lines,
        }
    };
    let mut a = spawn(&gh);
    let mut b = spawn(&other);
    assert_eq!(a.ask(), "ok ok");
    assert_eq!(b.ask(), "ok ok");
    let jti = claims_of(&std::fs::read_to_string(&gh).unwrap())["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked_at = Instant::now();
    issuer.revoke(json!({ "tokenId": jti }));
    let mut answer = String::new();
    while revoked_at.elapsed() < Duration::from_secs(5) {
        answer = a.ask();
        if answer != "ok ok" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = revoked_at.elapsed();
    eprintln!("revocation to first refusal: {took:?} (poll interval 200ms)");
    // The first refusal may land between an iteration's two reads; from then on everything
    // is refused: a path is gone, the file it holds open no longer reads.
    assert_ne!(answer, "ok ok", "the revoked agent still reads");
    assert_eq!(a.ask(), "ENOENT EACCES", "the revoked agent still reads");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The other sub-agent and the lead go on.
    assert_eq!(b.ask(), "ok ok");
    std::fs::read(m.at(GH_FILE)).unwrap();
    assert!(is_mounted(&m.mnt));
    let st = status(&m);
    let states: Vec<&str> = st["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "revoked").count(),
        1,
        "{st}"
    );
    assert_eq!(states.len(), 3, "{st}");
    // A revoked sub-agent cannot start over under another token it holds.
    let spare = token_file(&m, &issuer, "spare", &["relayfile:fs:read:/github/repos/*"]);
    let o = run_as(&m, &spare, &["true"]).output().unwrap();
    assert!(o.status.success(), "an active caller may: {}", err(&o));
    let restart = format!(
        "{bin} run --mountpoint {mnt} --token-file {spare} -- true",
        bin = env!("CARGO_BIN_EXE_relayauth-mount"),
        mnt = m.mnt.display(),
        spare = spare.display()
    );
    let answer = a.send(&format!("run {restart}\n"));
    assert!(
        answer.starts_with("1 "),
        "a revoked agent started over: {answer}"
    );
    assert!(answer.contains("cannot register another token"), "{answer}");
    for mut agent in [a, b] {
        agent.stdin.take();
        let _ = agent.child.wait();
    }
}

/// An agent started with `run` that answers a line per line it is sent.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn ask(&mut self) -> String {
        self.send("go\n")
    }

    fn send(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("running");
        stdin.write_all(line.as_bytes()).unwrap();
        self.lines.next().unwrap().unwrap()
    }
}

/// `delegate` from a command line alone: the seed cases of the governance contract, further
/// delegation from inside a sub-agent (never wider), and a child that never outlives its parent.
#[test]
fn delegate_issues_narrower_child_tokens_and_refuses_escalations() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:read:/github/*"]),
        MountOpts::default(),
    );
    let delegate = |scopes: &[&str], code: &str| {
        let mut cmd = bin();
        cmd.arg("delegate")
            .arg("--mountpoint")
            .arg(&m.mnt)
            .args(["--agent", "reviewer", "--ttl", "10m"]);
        for s in scopes {
            cmd.args(["--scope", s]);
        }
        cmd.args(["--", "/usr/bin/python3", "-c", code])
            .current_dir(&m.mnt)
            .output()
            .unwrap()
    };
    let list =
        "import os; print(sorted(n for n in os.listdir('github/repos/acme/api') if n[0] != '_'))";
    let o = delegate(&["relayfile:fs:read:/github/repos/acme/api/pulls/*"], list);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "['pulls']");
    let o = delegate(&["relayfile:fs:write:/slack/*"], "print('ran')");
    assert_eq!(o.status.code(), Some(1));
    assert!(!out(&o).contains("ran"));
    assert!(
        err(&o).contains("relayfile:fs:write:/slack/*"),
        "{}",
        err(&o)
    );
    let esc = m.wait_audit(|e| e["action"] == "scope.escalation_denied");
    assert_eq!(
        esc["metadata"]["offending"], "relayfile:fs:write:/slack/*",
        "{esc}"
    );
    // A sub-agent delegates further from its own session: narrower is issued, wider is not
    // (even within the lead's scopes).
    let inner = |scope: &str| {
        format!(
            "import subprocess
r = subprocess.run(['{bin}', 'delegate', '--mountpoint', '{mnt}', '--agent', 'helper', '--scope', '{scope}', '--', '/usr/bin/python3', '-c', \"import os; print(sorted(n for n in os.listdir('github/repos/acme/api/pulls') if n[0] != '_'))\"], capture_output=True, text=True)
print(r.returncode, r.stdout.strip(), r.stderr.strip())",
            bin = env!("CARGO_BIN_EXE_relayauth-mount"),
            mnt = m.mnt.display(),
        )
    };
    let o = delegate(
        &["relayfile:fs:read:/github/repos/acme/api/pulls/*"],
        &inner("relayfile:fs:read:/github/repos/acme/api/pulls/42/*"),
    );
    assert!(out(&o).starts_with("0 ['42']"), "{}{}", out(&o), err(&o));
    let o = delegate(
        &["relayfile:fs:read:/github/repos/acme/api/pulls/*"],
        &inner("relayfile:fs:read:/github/repos/acme/api/issues/*"),
    );
    assert!(out(&o).starts_with("1 "), "{}", out(&o));
    assert!(out(&o).contains("issues/*"), "{}", out(&o));
    // Every child seen so far expired no later than its parent, and names it.
    let registered = || -> Vec<Value> {
        m.audit_events()
            .into_iter()
            .filter(|e| e["action"] == "session.registered" && e["result"] == "allowed")
            .collect()
    };
    // Three delegations from the lead, one from inside a sub-agent (the wider inner one was
    // refused). The log is written behind the decisions: wait for the last record.
    eventually(Duration::from_secs(5), || registered().len() >= 4);
    let regs = registered();
    assert_eq!(regs.len(), 4, "{regs:?}");
    for r in &regs {
        let chain = r["sponsorChain"].as_array().unwrap();
        assert!(
            chain.len() >= 3,
            "a delegated chain names sponsor, lead and child: {r}"
        );
        assert_eq!(chain[0], "user_alice");
    }
}

/// Revoking a sub-agent that delegated ends its child in the same moment; with
/// `--on-revoke kill` both are stopped (and the audit log says so) while the mount goes on.
#[test]
fn revoking_a_parent_ends_its_children_and_kill_mode_stops_them() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = lead_mount(vec!["--on-revoke", "kill"]);
    let lead = token_file(&m, &issuer, "sub-lead", GITHUB);
    // The sub-lead delegates a child that sleeps; both keep running until stopped.
    let code = format!(
        "import subprocess, sys, time
child = subprocess.Popen(['{bin}', 'delegate', '--mountpoint', '{mnt}', '--agent', 'sleeper', '--scope', 'relayfile:fs:read:/github/repos/*', '--', '/usr/bin/python3', '-c', 'import time; print(\"child up\", flush=True); time.sleep(60)'], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
time.sleep(60)",
        bin = env!("CARGO_BIN_EXE_relayauth-mount"),
        mnt = m.mnt.display(),
    );
    let mut c = run_py(&m, &lead, &code);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut agent = c.spawn().unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "child up");
    let st = status(&m);
    assert_eq!(st["sessions"].as_array().unwrap().len(), 3, "{st}");
    let text = bin().arg("status").arg(&m.mnt).output().unwrap();
    assert_eq!(out(&text).matches("sub-agent").count(), 2, "{}", out(&text));
    let jti = claims_of(&std::fs::read_to_string(&lead).unwrap())["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let t = Instant::now();
    issuer.revoke(json!({ "tokenId": jti }));
    // Both sessions end, and their processes are stopped within the grace period.
    let waited = agent.wait().unwrap();
    eprintln!("revoked to stopped: {:?} ({waited:?})", t.elapsed());
    // Stopped by SIGTERM (the agent passes it on and exits with its command's status), well
    // before the grace period would have ended in SIGKILL.
    assert_eq!(waited.code(), Some(128 + 15), "{waited:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The child ended with its parent: by the daemon's cascade or by its own check of
    // relayauth (which cascades too), whichever came first; both sessions were stopped.
    let child_ended = |e: &Value| {
        (e["action"] == "session.revoked" && e["metadata"]["parentTokenId"] == jti.as_str())
            || (e["action"] == "token.revoked" && e["tokenId"] != jti.as_str())
    };
    m.wait_audit(child_ended);
    assert!(eventually(Duration::from_secs(5), || m
        .audit_events()
        .iter()
        .filter(|e| e["action"] == "session.killed")
        .count()
        == 2));
    assert_eq!(status(&m)["sessions"][0]["state"], "active");
    assert!(is_mounted(&m.mnt));
    std::fs::read(m.at(GH_FILE)).unwrap();
}

/// A sub-agent whose identity is suspended, and one whose token expires without a refresh,
/// lose everything; the notice says why; the lead goes on.
#[test]
fn suspension_and_expiry_end_only_that_sub_agent() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = two_sessions();
    let suspended = issuer.identity("to-suspend", GITHUB);
    let short = issuer.identity("short-lived", GITHUB);
    let files = [
        ("suspended", issuer.mint(&suspended, 600)),
        ("short", issuer.mint(&short, 3)),
    ];
    let watch = format!(
        "import time, errno
print('ready', flush=True)
end = time.time() + 15
while time.time() < end:
    try:
        open('{GH_FILE}').read()
    except OSError as e:
        print(errno.errorcode.get(e.errno), flush=True)
        print(open('_PERMISSIONS.md').read(), flush=True)
        break
    time.sleep(0.02)
else:
    print('still reading', flush=True)"
    );
    let mut agents = Vec::new();
    for (name, pair) in &files {
        let f = m.dir.path().join(format!("{name}.jwt"));
        std::fs::write(&f, pair["accessToken"].as_str().unwrap()).unwrap();
        let mut c = run_py(&m, &f, &watch);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Registered and running before anything ends it.
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        agents.push((name, child, lines));
    }
    let (status, v) = issuer.call(
        "POST",
        &format!("/v1/identities/{suspended}/suspend"),
        Some(json!({"reason": "test"})),
        None,
    );
    assert!(status < 300, "suspend: {status} {v}");
    for (name, mut agent, lines) in agents {
        let text: String = lines.map(|l| l.unwrap() + "\n").collect();
        agent.wait().unwrap();
        // The first refusal is ENOENT (the path is gone from its view), or EACCES when the
        // session ended between the lookup of the file's name and its open.
        assert!(
            text.starts_with("ENOENT\n") || text.starts_with("EACCES\n"),
            "{name}: {text}"
        );
        let expected = if *name == "short" {
            "expired"
        } else {
            "revoked"
        };
        assert!(text.contains(expected), "{name}: {text}");
    }
    std::fs::read(m.at(GH_FILE)).unwrap();
}

/// Forking deeper than any walk of the ancestry goes must not fall back to the mount's
/// session (found by review: 64 levels were enough once).
#[test]
fn a_sub_agent_cannot_fork_its_way_out_of_its_session() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = two_sessions();
    let gh = token_file(&m, &issuer, "github", GITHUB);
    let deep = "import os, sys
def probe():
    try:
        return ','.join(sorted(os.listdir('slack')))
    except OSError as e:
        return 'refused'
def chain(n):
    if n == 0:
        print(probe(), flush=True)
        return
    pid = os.fork()
    if pid == 0:
        chain(n - 1)
        os._exit(0)
    os.waitpid(pid, 0)
chain(int(sys.argv[1]))";
    for depth in ["5", "70", "200"] {
        let o = run_as(&m, &gh, &["/usr/bin/python3", "-c", deep, depth])
            .output()
            .unwrap();
        assert_eq!(out(&o).trim(), "refused", "depth {depth}: {}", err(&o));
    }
}

/// Kill mode against a tree that ignores SIGTERM and keeps forking: nothing of it ever acts
/// under the mount's session, and nothing of it survives.
#[test]
fn kill_mode_leaves_no_survivor_outside_the_session() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = lead_mount(vec!["--on-revoke", "kill"]);
    let gh = token_file(&m, &issuer, "github", GITHUB);
    let log = m.dir.path().join("escape.log");
    let code = format!(
        "import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print('ready', flush=True)
if os.fork() == 0:
    while True:
        if os.fork() == 0:
            try:
                names = os.listdir('slack')
                with open('{log}', 'a') as f:
                    f.write('ESCAPED %d ppid %d %s\\n' % (os.getpid(), os.getppid(), names))
            except OSError:
                pass
            os._exit(0)
        time.sleep(0.001)
time.sleep(120)",
        log = log.display()
    );
    let mut c = run_py(&m, &gh, &code);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut agent = c.spawn().unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    std::thread::sleep(Duration::from_millis(300));
    let jti = claims_of(&std::fs::read_to_string(&gh).unwrap())["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    issuer.revoke(json!({ "tokenId": jti }));
    let ended = agent.wait().unwrap();
    m.wait_audit(|e| e["action"] == "session.killed");
    std::thread::sleep(Duration::from_millis(500));
    let escaped = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(escaped.is_empty(), "{escaped}");
    // Nothing of the tree is left.
    let marker = log.display().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(left.is_empty(), "{} survivors ({ended:?})", left.len());
}

/// Idle connections to the control socket cannot take the daemon's descriptors: the lead
/// keeps working and the daemon frees them.
#[test]
fn a_flood_of_idle_control_connections_wedges_nothing() {
    if !fuse_available() {
        return;
    }
    let (_issuer, m) = two_sessions();
    let sock = control_socket(&m);
    let pid = m.daemon_pid().unwrap();
    let before = open_fds(pid);
    let mut held = Vec::new();
    for _ in 0..2000 {
        match std::os::unix::net::UnixStream::connect(&sock) {
            Ok(mut s) => {
                let _ = s.write_all(b"{\"op\":");
                held.push(s);
            }
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let during = open_fds(pid);
    assert!(
        during < before + 200,
        "{before} descriptors before, {during} during the flood"
    );
    std::fs::read(m.at(GH_FILE)).unwrap();
    // Once the idle ones time out, the socket answers again (the flood still connected).
    assert!(eventually(Duration::from_secs(15), || status(&m)["ok"] == true));
    drop(held);
}

/// Descriptors the lead opened are not handed to a sub-agent by `run` unless asked, and a
/// sub-agent may not unmount the mount it shares.
#[test]
fn run_hands_over_no_descriptor_and_a_sub_agent_cannot_unmount() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = two_sessions();
    let gh = token_file(&m, &issuer, "github", GITHUB);
    let secret = "slack/users/U04ALICE01.json";
    let via = |keep: bool| {
        let keep = if keep { "--keep-fds" } else { "" };
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 7< {secret}; {bin} run --mountpoint {mnt} --token-file {gh} {keep} -- sh -c 'head -c 20 <&7'",
                bin = env!("CARGO_BIN_EXE_relayauth-mount"),
                mnt = m.mnt.display(),
                gh = gh.display(),
            ))
            .current_dir(&m.mnt)
            .output()
            .unwrap()
    };
    let o = via(false);
    assert!(
        out(&o).is_empty(),
        "the lead's descriptor reached the sub-agent: {}",
        out(&o)
    );
    assert!(!o.status.success());
    let o = via(true);
    assert!(!out(&o).is_empty(), "--keep-fds hands it over: {}", err(&o));
    // A sub-agent asking the daemon to unmount is refused; the mount stays.
    let unmount = [
        std::ffi::OsStr::new(env!("CARGO_BIN_EXE_relayauth-mount")),
        std::ffi::OsStr::new("unmount"),
        m.mnt.as_os_str(),
    ];
    let o = run_as(&m, &gh, &unmount).output().unwrap();
    assert!(!o.status.success(), "{}", out(&o));
    assert!(err(&o).contains("sub-agent"), "{}", err(&o));
    assert!(is_mounted(&m.mnt));
    // Nor on a socket a child connected and then exited (the kernel names the child, which
    // is gone), and its status shows only its own session.
    let sock = control_socket(&m);
    let borrowed = format!(
        "import socket, os, json
def ask(s, req):
    s.sendall((json.dumps(req) + '\\n').encode()); return json.loads(s.makefile().readline())
s = socket.socket(socket.AF_UNIX)
pid = os.fork()
if pid == 0:
    s.connect('{sock}'); os._exit(0)
os.waitpid(pid, 0)
gone = ask(s, {{'op': 'unmount'}})
s = socket.socket(socket.AF_UNIX); s.connect('{sock}')
print(json.dumps({{'gone': gone, 'status': ask(s, {{'op': 'status'}})}}))",
        sock = sock.display()
    );
    let o = run_py(&m, &gh, &borrowed).output().unwrap();
    let v: Value =
        serde_json::from_str(out(&o).trim()).unwrap_or_else(|e| panic!("{e}: {}", err(&o)));
    assert_eq!(v["gone"]["ok"], false, "{v}");
    assert!(is_mounted(&m.mnt));
    assert_eq!(v["status"]["ok"], true, "{v}");
    assert!(v["status"].get("source").is_none(), "{v}");
    assert!(v["status"].get("sessions").is_none(), "{v}");
    assert_eq!(v["status"]["session"]["scopes"], json!(GITHUB), "{v}");
    m.wait_audit(|e| e["action"] == "mount.unmounted" && e["result"] == "denied");
    // The user's own process still controls the mount.
    assert_eq!(status(&m)["ok"], true);
}

/// With `--require-registration` nothing acts under the mount's token by default: an
/// unregistered process (root's, even) sees only a notice that says how to start, and the lead
/// started with `run` sees its tree.
#[test]
fn with_required_registration_only_registered_trees_see_anything() {
    if !fuse_available() {
        return;
    }
    let (_issuer, m) = lead_mount(vec!["--require-registration"]);
    // Listing is refused, nothing below the root is there; the notice says how to start.
    let listing = std::fs::read_dir(&m.mnt).map(|d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "_PERMISSIONS.md")
            .collect::<Vec<_>>()
    });
    assert!(
        listing.as_ref().is_err() || listing.as_ref().is_ok_and(|v| v.is_empty()),
        "{listing:?}"
    );
    assert!(!m.at("github").exists());
    let notice = std::fs::read_to_string(m.at("_PERMISSIONS.md")).unwrap();
    assert!(notice.contains("relayauth-mount run"), "{notice}");
    assert!(std::fs::read(m.at(GH_FILE)).is_err());
    let lead = m.dir.path().join("lead.jwt");
    std::fs::copy(&m.token_file, &lead).unwrap();
    let o = run_py(&m, &lead, LOOK).output().unwrap();
    let v = look(&o);
    assert_eq!(v["top"], json!(["github", "linear", "slack"]), "{v}");
    assert_eq!(v["github"], "ok");
}

/// `--token-from-env`: a process started with `RELAYAUTH_TOKEN` in its environment acts under
/// that token, without `run`; its children (which inherit the variable) stay in the one session;
/// a forged, foreign or revoked token there leaves the process nothing rather than the
/// mount's session; the lead keeps its view.
#[test]
fn with_token_from_env_a_process_acts_under_the_token_in_its_environment() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = lead_mount(vec!["--token-from-env"]);
    let gh = issuer.token(GITHUB);
    let py = |token: &str, code: &str| {
        Command::new("/usr/bin/python3")
            .args(["-c", code])
            .env("RELAYAUTH_TOKEN", token)
            .current_dir(&m.mnt)
            .output()
            .unwrap()
    };
    // The process and a child it starts (the child inherits the variable).
    let family = format!(
        "import subprocess, json, sys
{LOOK}
r = subprocess.run([sys.executable, '-c', '''{LOOK}'''], capture_output=True, text=True)
print(r.stdout.strip())"
    );
    let o = py(&gh, &family);
    assert!(o.status.success(), "{}", err(&o));
    let lines: Vec<Value> = out(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{}", out(&o));
    for v in &lines {
        assert_eq!(v["top"], json!(["github"]), "{v}");
        assert_eq!(v["github"], "ok");
        assert_eq!(v["slack"], "ENOENT");
        let sub = claims_of(&gh)["sub"].as_str().unwrap().to_owned();
        assert!(
            v["notice"]
                .as_str()
                .is_some_and(|n| n.contains(&format!("Agent: `{sub}`"))),
            "{v}"
        );
    }
    // One registration for the family, said to come from the environment.
    m.wait_audit(|e| e["action"] == "session.registered" && e["result"] == "allowed");
    let regs: Vec<Value> = m
        .audit_events()
        .into_iter()
        .filter(|e| e["action"] == "session.registered" && e["result"] == "allowed")
        .collect();
    assert_eq!(regs.len(), 1, "{regs:?}");
    assert_eq!(regs[0]["metadata"]["via"], "environment", "{}", regs[0]);
    // A forged token: nothing, and the notice says why (not the mount's view).
    const NOTHING: &str = "import os, json, errno
try:
    top = sorted(n for n in os.listdir('.') if not n.startswith('_'))
except OSError as e:
    top = errno.errorcode.get(e.errno)
print(json.dumps({'top': top, 'github': os.path.exists('github'),
    'notice': open('_PERMISSIONS.md').read()}))";
    let nothing = |v: &Value| {
        assert!(v["top"] == json!([]) || v["top"] == "EACCES", "{v}");
        assert_eq!(v["github"], false, "{v}");
    };
    let v = look(&py("eyJhbGciOiJub25lIn0.e30.", NOTHING));
    nothing(&v);
    assert!(
        v["notice"]
            .as_str()
            .is_some_and(|n| n.contains("RELAYAUTH_TOKEN")),
        "{v}"
    );
    m.wait_audit(|e| {
        e["action"] == "token.validated"
            && e["result"] == "denied"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("RELAYAUTH_TOKEN"))
    });
    // A revoked one.
    let revoked = issuer.token(GITHUB);
    let jti = claims_of(&revoked)["jti"].as_str().unwrap().to_owned();
    issuer.revoke(json!({ "tokenId": jti }));
    nothing(&look(&py(&revoked, NOTHING)));
    // A refusal holds for the process and everything it starts: executing itself again
    // without the variable, or a child started without it, still gets nothing.
    let shed = format!(
        "import os, sys, subprocess
try:
    os.listdir('.')
except OSError:
    pass
env = {{k: v for k, v in os.environ.items() if k != 'RELAYAUTH_TOKEN'}}
if sys.argv[1:] == ['child']:
    r = subprocess.run([sys.executable, '-c', '''{NOTHING}'''], env=env, capture_output=True, text=True)
    print(r.stdout.strip())
else:
    os.execve(sys.executable, [sys.executable, '-c', '''{NOTHING}'''], env)"
    );
    nothing(&look(&py("eyJhbGciOiJub25lIn0.e30.", &shed)));
    let o = Command::new("/usr/bin/python3")
        .args(["-c", &shed, "child"])
        .env("RELAYAUTH_TOKEN", "eyJhbGciOiJub25lIn0.e30.")
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    nothing(&look(&o));
    // A shell that holds a token but never touches the mount itself, and starts a child
    // without the variable: the child acts under the shell's token (valid: its tree only;
    // refused: nothing), not under the mount's.
    let via_shell = |token: &str, code: &str| {
        let code = format!(
            "import os\nos.chdir({mnt:?})\n{code}",
            mnt = m.mnt.display().to_string()
        );
        Command::new("/bin/sh")
            .args([
                "-c",
                "env -u RELAYAUTH_TOKEN /usr/bin/python3 -c \"$0\"; exit $?",
                &code,
            ])
            .env("RELAYAUTH_TOKEN", token)
            .current_dir("/")
            .output()
            .unwrap()
    };
    let sh_token = issuer.token(GITHUB);
    let v = look(&via_shell(&sh_token, LOOK));
    assert_eq!(v["top"], json!(["github"]), "{v}");
    nothing(&look(&via_shell("eyJhbGciOiJub25lIn0.e30.", NOTHING)));
    // Processes with the same token share one session (one admission, one revocation check
    // per poll), however many there are.
    let shared_token = issuer.token(GITHUB);
    let crowd = format!(
        "import subprocess, sys, os
env = dict(os.environ, RELAYAUTH_TOKEN={shared_token:?})
ps = [subprocess.Popen([sys.executable, '-c', 'import os, time; os.listdir(\"github\"); time.sleep(1.5)'], env=env) for _ in range(4)]
print(sum(p.wait() for p in ps))"
    );
    let o = Command::new("/usr/bin/python3")
        .args(["-c", &crowd])
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    assert_eq!(out(&o).trim(), "0", "{}", err(&o));
    let crowd_id = claims_of(&shared_token)["jti"].as_str().unwrap().to_owned();
    let regs: Vec<Value> = m
        .audit_events()
        .into_iter()
        .filter(|e| {
            e["action"] == "session.registered"
                && e["result"] == "allowed"
                && e["tokenId"] == crowd_id.as_str()
        })
        .collect();
    assert_eq!(regs.len(), 4, "{regs:#?}");
    assert_eq!(
        regs.iter()
            .filter(|e| e["metadata"]["joined"] == true)
            .count(),
        3,
        "{regs:#?}"
    );
    // A sub-agent that starts a child with a wider token (the lead's) gets it nothing.
    let lead = std::fs::read_to_string(&m.token_file).unwrap();
    let widen = format!(
        "import subprocess, sys, os
env = dict(os.environ, RELAYAUTH_TOKEN={lead:?})
r = subprocess.run([sys.executable, '-c', '''{NOTHING}'''], env=env, capture_output=True, text=True)
print(r.stdout.strip())",
        lead = lead.trim()
    );
    nothing(&look(&py(&gh, &widen)));
    m.wait_audit(|e| e["action"] == "scope.escalation_denied");
    // The lead, with no token in its environment, still sees everything.
    assert!(std::fs::read(m.at(GH_FILE)).is_ok());
    assert!(m.at("slack").exists());
    assert!(is_mounted(&m.mnt));
}

/// A sub-agent started with `run --credentials` keeps its session past its token's expiry:
/// `run` rotates the bundle's pair and the daemon swaps the session's token, while the agent
/// reads without pause from several threads. A renewal is only ever of the session's own
/// relayauth session, from its root process, never wider, and never brings an ended session
/// back.
#[test]
fn a_sub_agents_bundle_is_refreshed_under_a_read_storm_and_a_renewal_never_widens() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = two_sessions();
    let id = issuer.identity("renewing", GITHUB);
    // 10 s: a renewal is due 8 s in and has 2 s to be made (a rotation written with fsync, then
    // relayauth asked about the old and the new token) on a loaded machine.
    let pair = issuer.mint(&id, 10);
    let bundle = m.dir.path().join("renewing.json");
    std::fs::write(
        &bundle,
        serde_json::to_string(&json!({
            "accessToken": pair["accessToken"], "refreshToken": pair["refreshToken"],
            "relayauthUrl": issuer.url, "workspaceId": "ws_acme", "agentName": "renewing",
        }))
        .unwrap(),
    )
    .unwrap();
    let first = claims_of(pair["accessToken"].as_str().unwrap());
    // Four threads read for 19 s: past the first token's expiry (10 s) and two refreshes.
    let storm = format!(
        "import threading, time, errno, json, collections
errors = collections.Counter(); reads = [0]
lock = threading.Lock()
def read():
    end = time.time() + 19
    while time.time() < end:
        try:
            open('{GH_FILE}').read()
            with lock: reads[0] += 1
        except OSError as e:
            with lock: errors[errno.errorcode.get(e.errno)] += 1
ts = [threading.Thread(target=read) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
try:
    open('slack/users/U04ALICE01.json').read(); slack = 'ok'
except OSError as e:
    slack = errno.errorcode.get(e.errno)
print(json.dumps({{'reads': reads[0], 'errors': errors, 'slack': slack}}))"
    );
    let o = bin()
        .arg("run")
        .arg("--mountpoint")
        .arg(&m.mnt)
        .arg("--credentials")
        .arg(&bundle)
        .args(["--", "/usr/bin/python3", "-c", &storm])
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    let v = look(&o);
    assert_eq!(
        v["errors"],
        json!({}),
        "reads failed while the token was refreshed: {v}\n{}",
        err(&o)
    );
    assert!(v["reads"].as_u64().unwrap() > 100, "{v}");
    assert_eq!(v["slack"], "ENOENT", "{v}");
    let renewed: Vec<Value> = m
        .audit_events()
        .into_iter()
        .filter(|e| e["action"] == "token.refreshed" && e["metadata"]["via"] == "run")
        .collect();
    assert!(renewed.len() >= 2, "{renewed:#?}\n{}", err(&o));
    assert!(
        renewed.iter().all(|e| e["result"] == "allowed"),
        "{renewed:#?}"
    );
    assert_eq!(renewed[0]["metadata"]["previousTokenId"], first["jti"]);
    // The bundle holds the latest pair, private to its owner.
    let now: Value = serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap();
    assert_ne!(now["refreshToken"], pair["refreshToken"]);
    let mode = std::fs::metadata(&bundle).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    // Renewals the daemon must refuse, sent by a process that registered itself.
    let sock = control_socket(&m);
    let other = issuer.identity("another", GITHUB);
    let other_token = issuer.mint(&other, 600)["accessToken"].clone();
    let wide_id = issuer.identity("widening", LEAD);
    let narrow = issuer.mint_scoped(&wide_id, GITHUB, 600);
    let wide = issuer.mint_scoped(&wide_id, LEAD, 600);
    let another_session = issuer.mint_scoped(&wide_id, GITHUB, 600);
    let lead = std::fs::read_to_string(&m.token_file).unwrap();
    let script = format!(
        "import socket, json, os
def ask(req):
    s = socket.socket(socket.AF_UNIX); s.connect('{sock}')
    s.sendall((json.dumps(dict(req, pid=os.getpid())) + '\\n').encode())
    return json.loads(s.makefile().readline())
out = {{}}
out['unregistered'] = ask({{'op': 'renew', 'token': {narrow:?}}})
out['registered'] = ask({{'op': 'register', 'token': {narrow:?}}})
out['another_identity'] = ask({{'op': 'renew', 'token': {other_token}}})
out['the_lead'] = ask({{'op': 'renew', 'token': {lead:?}}})
out['wider'] = ask({{'op': 'renew', 'token': {wide:?}}})
out['another_session'] = ask({{'op': 'renew', 'token': {another_session:?}}})
out['garbage'] = ask({{'op': 'renew', 'token': 'eyJhbGciOiJub25lIn0.e30.'}})
print(json.dumps(out))",
        sock = sock.display(),
        lead = lead.trim(),
    );
    let o = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let v: Value =
        serde_json::from_str(out(&o).trim()).unwrap_or_else(|e| panic!("{e}: {}", err(&o)));
    assert_eq!(v["registered"]["ok"], true, "{v}");
    for (case, says) in [
        ("unregistered", "registered no session"),
        ("another_identity", "identity"),
        ("the_lead", "identity"),
        ("wider", "beyond the session's scopes"),
        ("another_session", "relayauth session"),
        ("garbage", "refreshed token was refused"),
    ] {
        assert_eq!(v[case]["ok"], false, "{case}: {v}");
        assert!(
            v[case]["error"].as_str().is_some_and(|e| e.contains(says)),
            "{case}: {v}"
        );
    }
    m.wait_audit(|e| {
        e["action"] == "scope.escalation_denied" && e.to_string().contains("renewal never widens")
    });

    // A token revoked just before its renewal (before any poll saw it) is not carried past by
    // its successor: the renewal asks about the token it replaces.
    let racing = issuer.identity("racing", GITHUB);
    let pair = issuer.mint(&racing, 600);
    let (status, fresh) = issuer.call(
        "POST",
        "/v1/tokens/refresh",
        Some(json!({"refreshToken": pair["refreshToken"]})),
        None,
    );
    assert!(status < 300, "refresh: {status} {fresh}");
    let old_jti = claims_of(pair["accessToken"].as_str().unwrap())["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let script = format!(
        "import socket, json, os, sys
def ask(req):
    s = socket.socket(socket.AF_UNIX); s.connect('{sock}')
    s.sendall((json.dumps(dict(req, pid=os.getpid())) + '\\n').encode())
    return json.loads(s.makefile().readline())
print(json.dumps(ask({{'op': 'register', 'token': {old}}})), flush=True)
sys.stdin.readline()
print(json.dumps(ask({{'op': 'renew', 'token': {new}}})), flush=True)",
        sock = sock.display(),
        old = pair["accessToken"],
        new = fresh["accessToken"],
    );
    let mut c = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    let registered: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(registered["ok"], true, "{registered}");
    issuer.revoke(json!({ "tokenId": old_jti }));
    writeln!(stdin, "renew").unwrap();
    let renewed: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    c.wait().unwrap();
    assert_eq!(
        renewed["ok"], false,
        "a revoked session was renewed: {renewed}"
    );
    assert!(
        renewed["error"]
            .as_str()
            .is_some_and(|e| e.contains("revoked")),
        "{renewed}"
    );
}

/// A sub-agent runs in a PID namespace whose init is its registered `run`: it cannot kill or
/// signal the `run`s above it (directly, or through `/proc/<pid>` descriptors), its init
/// ignores it, and so nothing it starts is ever re-parented into the lead's session.
#[test]
fn a_sub_agent_cannot_leave_its_session_by_killing_its_run() {
    if !fuse_available() {
        return;
    }
    let (issuer, m) = lead_mount(vec!["--require-registration"]);
    let lead = token_file(&m, &issuer, "lead", LEAD);
    let gh = token_file(&m, &issuer, "github", GITHUB);
    let agent = format!(
        "import os, signal, time, errno, json
def attempt(p):
    try:
        open(p).read(); return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno)
tried = {{}}
runs = [p for p in os.listdir('/proc') if p.isdigit() and b'relayauth-mount\\0run' in open('/proc/%s/cmdline' % p, 'rb').read()]
for p in runs:
    for how in ('kill', 'pidfd'):
        try:
            if how == 'kill':
                os.kill(int(p), signal.SIGKILL)
            else:
                fd = os.open('/proc/%s' % p, os.O_RDONLY | os.O_DIRECTORY)
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            tried[how + ' ' + p] = 'sent'
        except OSError as e:
            tried[how + ' ' + p] = errno.errorcode.get(e.errno)
os.kill(os.getppid(), signal.SIGKILL)
visible = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
r, w = os.pipe()
if os.fork() == 0:
    if os.fork() == 0:
        time.sleep(0.5)
        os.write(w, json.dumps({{'github': attempt('{GH_FILE}'), 'slack': attempt('slack/users/U04ALICE01.json')}}).encode())
        os._exit(0)
    os._exit(0)
os.wait()
orphan = json.loads(os.read(r, 500))
init = open('/proc/self/stat').read().rsplit(')', 1)[1].split()[1]
alive = [p for p in runs if os.path.exists('/proc/%s' % p)]
print(json.dumps({{'runs': runs, 'alive': len(alive), 'init': init, 'tried': tried, 'orphan': orphan, 'visible': visible}}))"
    );
    let lead_code = format!(
        "import subprocess, sys
r = subprocess.run(['{bin}', 'run', '--mountpoint', '{mnt}', '--token-file', '{gh}', '--', '/usr/bin/python3', '-c', sys.argv[1]], capture_output=True, text=True)
print(r.stdout.strip()); print(r.stderr.strip(), file=sys.stderr)
import os
print('lead', os.path.exists('slack/users/U04ALICE01.json'))",
        bin = env!("CARGO_BIN_EXE_relayauth-mount"),
        mnt = m.mnt.display(),
        gh = gh.display(),
    );
    let o = run_as(&m, &lead, &["/usr/bin/python3", "-c", &lead_code, &agent])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    let mut lines = text.lines();
    let v: Value = serde_json::from_str(lines.next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", err(&o)));
    // Both runs were found, and no signal reached either.
    // Its /proc shows its own namespace only (no process of the lead to read or write), where
    // its init is pid 1. (The agent runs as root here, so it may still trace its own init;
    // an agent of the mount's non-root user cannot: the init is not dumpable.)
    assert_eq!(v["runs"], json!(["1"]), "{v}");
    assert!(v["visible"].as_array().unwrap().len() <= 4, "{v}");
    // Its own init ignores the signal; the runs above it cannot be reached at all.
    let init = v["init"].as_str().unwrap();
    for (how, what) in v["tried"].as_object().unwrap() {
        if !how.ends_with(&format!(" {init}")) {
            assert_ne!(what, "sent", "{how} reached a run above the sub-agent: {v}");
        }
    }
    assert_eq!(v["alive"], 1, "its init was killed: {v}");
    assert_eq!(
        v["orphan"],
        json!({"github": "ok", "slack": "ENOENT"}),
        "the sub-agent left its session: {v}"
    );
    // The lead's run, and so the lead, lived on.
    assert_eq!(lines.next(), Some("lead True"), "{text}\n{}", err(&o));
}

/// A revoked sub-agent's shared writable mapping cannot reach the mirror through the lead's
/// handle: the kernel writes dirty pages back through any handle open for writing on the file,
/// and such a write is refused while a handle of an ended session is open on it.
#[test]
fn a_revoked_sub_agents_mapping_writes_nothing_through_the_leads_handle() {
    if !fuse_available() {
        return;
    }
    fn scratch(mirror: &Path) {
        std::fs::create_dir_all(mirror.join("scratch")).unwrap();
        std::fs::write(mirror.join("scratch/shared.bin"), vec![b'.'; 1 << 20]).unwrap();
    }
    let (issuer, m) = scratch_mount(&scratch);
    let agent = token_file(&m, &issuer, "mapper", &["relayfile:fs:manage:/scratch/**"]);
    let code = "import mmap, os, sys
fd = os.open('scratch/shared.bin', os.O_RDWR)
m = mmap.mmap(fd, 1 << 20, mmap.MAP_SHARED)
m[0:1]
print('mapped', flush=True)
sys.stdin.readline()
try:
    os.pread(fd, 4, 0); print('read ok', flush=True)
except OSError as e:
    print('read', e.errno, flush=True)
pid = os.fork()
if pid == 0:
    m[4096:4096 + 12] = b'AFTER-REVOKE'
    try:
        m.flush(); print('msync ok', flush=True)
    except OSError as e:
        print('msync', e.errno, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print('done', flush=True)";
    let mut c = run_py(&m, &agent, code);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "mapped");
    // The lead holds the file open for writing and, once the sub-agent's token is revoked,
    // maps it too and faults in the page the sub-agent will write (so the sub-agent's mapping
    // finds it in the page cache).
    let mut lead = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import mmap, os, sys
fd = os.open('scratch/shared.bin', os.O_RDWR)
sys.stdin.readline()
m = mmap.mmap(fd, 1 << 20, mmap.MAP_SHARED)
m[4096:4097]
print('faulted', flush=True)
sys.stdin.readline()
m.close(); os.close(fd)",
        ])
        .current_dir(&m.mnt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lead_in = lead.stdin.take().unwrap();
    let mut lead_out = BufReader::new(lead.stdout.take().unwrap()).lines();
    let jti = claims_of(&std::fs::read_to_string(&agent).unwrap())["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    issuer.revoke(json!({ "tokenId": jti }));
    m.wait_audit(|e| e["action"] == "token.revoked" && e["tokenId"] == jti.as_str());
    writeln!(lead_in, "map").unwrap();
    assert_eq!(lead_out.next().unwrap().unwrap(), "faulted");
    writeln!(stdin, "go").unwrap();
    let text: Vec<String> = lines.map(|l| l.unwrap()).collect();
    child.wait().unwrap();
    assert_eq!(
        text.first().map(String::as_str),
        Some("read 13"),
        "{text:?}"
    );
    assert_eq!(text.last().map(String::as_str), Some("done"), "{text:?}");
    assert!(!text.iter().any(|l| l == "msync ok"), "{text:?}");
    writeln!(lead_in, "close").unwrap();
    assert!(lead.wait().unwrap().success());
    let mirror = std::fs::read(m.mirror_at("scratch/shared.bin")).unwrap();
    assert_eq!(
        &mirror[4096..4096 + 12],
        b"............",
        "the revoked agent's bytes reached the mirror"
    );
}

/// A descriptor carries no more than its session may do where its file is now: a file the
/// lead moves into a place the sub-agent cannot see is neither read nor written through the
/// sub-agent's open descriptor any more.
#[test]
fn an_open_descriptor_loses_a_file_moved_out_of_its_sessions_reach() {
    if !fuse_available() {
        return;
    }
    fn scratch(mirror: &Path) {
        std::fs::create_dir_all(mirror.join("scratch/pub")).unwrap();
        std::fs::create_dir_all(mirror.join("scratch/secret")).unwrap();
        std::fs::write(mirror.join("scratch/pub/f.txt"), "public\n").unwrap();
    }
    let (issuer, m) = scratch_mount(&scratch);
    let agent = token_file(&m, &issuer, "pub", &["relayfile:fs:manage:/scratch/pub/**"]);
    let code = "import os, sys
r = os.open('scratch/pub/f.txt', os.O_RDONLY)
w = os.open('scratch/pub/f.txt', os.O_WRONLY)
print(os.pread(r, 6, 0).decode(), flush=True)
sys.stdin.readline()
for what, f in (('read', lambda: os.pread(r, 6, 0)), ('write', lambda: os.pwrite(w, b'X', 0))):
    try:
        f(); print(what, 'ok', flush=True)
    except OSError as e:
        print(what, e.errno, flush=True)";
    let mut c = run_py(&m, &agent, code);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "public");
    std::fs::rename(m.at("scratch/pub/f.txt"), m.at("scratch/secret/f.txt")).unwrap();
    std::fs::write(m.at("scratch/secret/f.txt"), "secret\n").unwrap();
    writeln!(stdin, "go").unwrap();
    let text: Vec<String> = lines.map(|l| l.unwrap()).collect();
    child.wait().unwrap();
    assert_eq!(
        text,
        ["read 13", "write 13"],
        "the descriptor kept the moved file"
    );
    assert_eq!(
        std::fs::read_to_string(m.mirror_at("scratch/secret/f.txt")).unwrap(),
        "secret\n"
    );
}
