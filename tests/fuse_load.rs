//! Load on a real mount: 32 agent processes doing mixed operations (create, write, read back,
//! rename, unlink, mkdir, list, provider reads, refused provider writes) while the token file is
//! rewritten with the same identity's fresh tokens, then a revocation in the middle of a second
//! run; and 32 agents under 4 sub-agent sessions, one revoked midway while the others go on.
//! Bounded by `LOAD_SECS` (default 20; the report's run uses 60).
//!
//! It checks what a guard under load must keep: no crash or deadlock, descriptors and memory
//! bounded (and back to where they were), every file as its writer left it, every decision a
//! process made in the audit log, and the revocation still ending the mount at once.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::*;
use serde_json::{Value, json};

const AGENTS: usize = 32;

/// One agent: its own directory under `scratch`, a fixed seed, until `secs` pass or the mount
/// goes away. Prints its counts, anything unexpected, and the sha256 of each file it expects.
const AGENT: &str = r#"
import errno, hashlib, json, os, random, sys, time
n, secs, tag = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
top = sys.argv[4] if len(sys.argv) > 4 else "scratch"
rnd = random.Random(n)
base = f"{top}/{tag}{n}"
os.mkdir(base)
audited, denied, ops = 1, 0, 0
unexpected, expect = [], {}
end = time.time() + secs
gone = False
while time.time() < end:
    op = rnd.randrange(10)
    try:
        if op < 3:
            name = f"f{rnd.randrange(20)}"
            data = os.urandom(rnd.randrange(1, 20000))
            with open(f"{base}/{name}", "wb") as f:
                f.write(data)
            audited += 1; expect[name] = data
        elif op == 3 and expect:
            name = rnd.choice(sorted(expect))
            with open(f"{base}/{name}", "rb") as f:
                got = f.read()
            audited += 1
            if got != expect[name]:
                unexpected.append(f"{name}: read back {len(got)} bytes, wrote {len(expect[name])}")
        elif op == 4 and expect:
            a = rnd.choice(sorted(expect))
            b = f"f{rnd.randrange(20)}"
            if a != b:
                os.rename(f"{base}/{a}", f"{base}/{b}")
                audited += 1; expect[b] = expect.pop(a)
        elif op == 5 and expect:
            a = rnd.choice(sorted(expect))
            os.unlink(f"{base}/{a}")
            audited += 1; del expect[a]
        elif op == 6:
            os.mkdir(f"{base}/d"); os.rmdir(f"{base}/d")
            audited += 2
        elif op == 7:
            names = {x for x in os.listdir(base) if x != "_PERMISSIONS.md"}
            if names != set(expect):
                unexpected.append(f"listing differs: {sorted(names ^ set(expect))}")
        elif op == 8:
            with open("github/repos/acme/api/metadata.json", "rb") as f:
                f.read()
            audited += 1
        else:
            try:
                open("github/repos/acme/api/metadata.json", "r+b").close()
                unexpected.append("a provider file was opened for writing without a policy")
            except PermissionError:
                audited += 1; denied += 1
        ops += 1
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ENOENT, errno.EACCES) and tag.startswith("r"):
            gone = True
            break
        unexpected.append(f"op {op}: {e}")
print(json.dumps({"pid": int(os.readlink("/proc/self")), "ops": ops, "audited": audited, "denied": denied,
                  "unexpected": unexpected[:10], "gone": gone,
                  "files": {k: hashlib.sha256(v).hexdigest() for k, v in expect.items()}}))
"#;

fn start_agents(m: &TestMount, secs: u64, tag: &str) -> Vec<Child> {
    (0..AGENTS)
        .map(|n| {
            Command::new("/usr/bin/python3")
                .arg("-c")
                .arg(AGENT)
                .args([n.to_string(), secs.to_string(), tag.to_owned()])
                .current_dir(&m.mnt)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

fn reports(agents: Vec<Child>) -> Vec<Value> {
    agents
        .into_iter()
        .map(|a| {
            let o = a.wait_with_output().unwrap();
            assert!(o.status.success(), "an agent failed: {}", err(&o));
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out(&o)))
        })
        .collect()
}

fn sha256(path: &std::path::Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    out(&o).split_whitespace().next().unwrap_or("").to_owned()
}

#[test]
fn thirty_two_agents_under_load_keep_the_guard_bounded_consistent_and_audited() {
    if !fuse_available() {
        return;
    }
    let secs: u64 = std::env::var("LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let issuer = Issuer::start();
    let scopes = ["relayfile:fs:read:*", "relayfile:fs:manage:/scratch/**"];
    let me = issuer.identity("load-agent", &scopes);
    let mut m = TestMount::start(
        &issuer,
        &issuer.mint_scoped(&me, &scopes, 3600),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&|mirror: &std::path::Path| {
                std::fs::create_dir_all(mirror.join("scratch")).unwrap()
            }),
            ..MountOpts::default()
        },
    );
    let pid = m.daemon_pid().unwrap();
    let fds_before = open_fds(pid);
    let mut fds = FdWatch::start(pid);
    let started = Instant::now();
    let agents = start_agents(&m, secs, "p");
    // Tokens refresh meanwhile: the same identity's new token every 3 s.
    let mut refreshed = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(3));
        let tmp = m.token_file.with_extension("new");
        std::fs::write(&tmp, issuer.mint_scoped(&me, &scopes, 3600)).unwrap();
        std::fs::rename(&tmp, &m.token_file).unwrap();
        refreshed += 1;
    }
    let done = reports(agents);
    let peak_fds = fds.peak();
    let fds_held = open_fds(pid);
    // The daemon keeps a bounded set of descriptors for nodes the kernel still remembers; once
    // the kernel forgets them (dentries dropped), they must all be closed again.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    eventually(Duration::from_secs(10), || open_fds(pid) <= fds_before + 8);
    let fds_after = open_fds(pid);
    let rss = peak_rss_kib(pid);
    let total: u64 = done.iter().map(|r| r["ops"].as_u64().unwrap()).sum();
    eprintln!(
        "load: {AGENTS} agents, {secs} s, {total} operations, {refreshed} token rewrites; daemon \
         descriptors {fds_before} before, peak {peak_fds}, {fds_held} held after, {fds_after} once \
         the kernel forgot the nodes; peak RSS {} MiB",
        rss / 1024
    );
    for r in &done {
        assert_eq!(r["unexpected"], json!([]), "{r}");
        assert!(
            r["ops"].as_u64().unwrap() > 0,
            "an agent made no progress: {r}"
        );
    }
    // Bounded, and back where it was (nothing leaked per operation).
    assert!(peak_fds < 1024, "descriptors peaked at {peak_fds}");
    assert!(
        fds_after <= fds_before + 8,
        "{fds_before} descriptors before, {fds_after} after the kernel forgot every node"
    );
    assert!(rss < 256 * 1024, "peak RSS {rss} KiB");

    // Every file is what its writer last wrote.
    for (n, r) in done.iter().enumerate() {
        assert_files_as_written(
            &m.mirror_at(&format!("scratch/p{n}")),
            r,
            &format!("agent {n}"),
        );
    }

    // Every decision an agent's operations needed is in the audit log, under its pid.
    let (code, stderr) = {
        // The second run: revoked in the middle, while all 32 agents are busy.
        let agents = start_agents(&m, 60, "r");
        std::thread::sleep(Duration::from_secs(3));
        let sid = claims_of(&std::fs::read_to_string(&m.token_file).unwrap())["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        let revoked_at = Instant::now();
        issuer.revoke(json!({"sessionId": sid}));
        let ended = m.wait_exit(Duration::from_secs(20));
        eprintln!(
            "load: revocation ended the mount in {:?}",
            revoked_at.elapsed()
        );
        for r in reports(agents) {
            assert_eq!(
                r["gone"], true,
                "an agent went on after the revocation: {r}"
            );
        }
        ended
    };
    assert_eq!(code, Some(3), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let records = records_of(&m);
    let mut by_pid: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for r in &records {
        if let Some(p) = r["pid"].as_u64() {
            let e = by_pid.entry(p).or_default();
            e.0 += 1;
            if r["result"] == "denied" {
                e.1 += 1;
            }
        }
    }
    for r in &done {
        let pid = r["pid"].as_u64().unwrap();
        let (all, denied) = by_pid.get(&pid).copied().unwrap_or_default();
        assert_eq!(
            (all, denied),
            (
                r["audited"].as_u64().unwrap(),
                r["denied"].as_u64().unwrap()
            ),
            "agent {pid}: audit records (all, denied) against its decisions"
        );
    }
    assert!(
        records
            .iter()
            .filter(|r| r["action"] == "token.refreshed")
            .count()
            >= refreshed - 1,
        "the token rewrites were adopted"
    );
}

/// Every file in `dir` is what the agent reporting `r` last wrote there, and nothing else is.
fn assert_files_as_written(dir: &std::path::Path, r: &Value, who: &str) {
    let on_disk: BTreeMap<String, String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                sha256(&e.path()),
            )
        })
        .collect();
    let expected: BTreeMap<String, String> = r["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(on_disk, expected, "{who}");
}

fn records_of(m: &TestMount) -> Vec<Value> {
    std::fs::read_to_string(&m.audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Started by `relayauth-mount run` for one session: 8 agents under it, their reports as one
/// JSON list.
const LAUNCH: &str = r#"
import json, subprocess, sys
agent, secs, tag, top = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ps = [subprocess.Popen(["/usr/bin/python3", "-c", agent, str(n), secs, tag, top],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(8)]
out = []
for p in ps:
    o, e = p.communicate()
    if p.returncode != 0:
        print("an agent failed:", e, file=sys.stderr)
        sys.exit(1)
    out.append(json.loads(o))
print(json.dumps(out))
"#;

#[test]
fn four_sessions_of_eight_agents_go_on_while_one_is_revoked() {
    if !fuse_available() {
        return;
    }
    let secs: u64 = std::env::var("LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let issuer = Issuer::start();
    let lead_scopes = ["relayfile:fs:read:*", "relayfile:fs:manage:/scratch/**"];
    let lead = issuer.identity("load-lead", &lead_scopes);
    let m = TestMount::start(
        &issuer,
        &issuer.mint_scoped(&lead, &lead_scopes, 3600),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&|mirror: &std::path::Path| {
                for k in 0..4 {
                    std::fs::create_dir_all(mirror.join(format!("scratch/s{k}"))).unwrap();
                }
            }),
            ..MountOpts::default()
        },
    );
    let pid = m.daemon_pid().unwrap();
    let fds_before = open_fds(pid);
    let mut fds = FdWatch::start(pid);
    // Each session may change only its own part of scratch.
    let sessions: Vec<(String, Child)> = (0..4)
        .map(|k| {
            let scopes = [
                "relayfile:fs:read:*".to_owned(),
                format!("relayfile:fs:manage:/scratch/s{k}/**"),
            ];
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            let token = issuer.token(&scopes);
            let file = m.dir.path().join(format!("s{k}.jwt"));
            std::fs::write(&file, &token).unwrap();
            let tag = if k == 0 { "ra" } else { "a" };
            let child = Command::new(env!("CARGO_BIN_EXE_relayauth-mount"))
                .arg("run")
                .arg("--mountpoint")
                .arg(&m.mnt)
                .arg("--token-file")
                .arg(&file)
                .args(["--", "/usr/bin/python3", "-c", LAUNCH, AGENT])
                .args([secs.to_string(), tag.to_owned(), format!("scratch/s{k}")])
                .current_dir(&m.mnt)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (token, child)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs / 2));
    let jti = claims_of(&sessions[0].0)["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked_at = Instant::now();
    issuer.revoke(json!({ "tokenId": jti }));
    let mut reports = Vec::new();
    for (k, (_, child)) in sessions.into_iter().enumerate() {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "session {k}: {}", err(&o));
        let r: Vec<Value> = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("session {k}: {e}: {}", out(&o)));
        if k == 0 {
            eprintln!(
                "load: the revoked session's 8 agents all stopped {:?} after the revocation",
                revoked_at.elapsed()
            );
        }
        reports.push(r);
    }
    let peak_fds = fds.peak();
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    eventually(Duration::from_secs(10), || open_fds(pid) <= fds_before + 8);
    let fds_after = open_fds(pid);
    let rss = peak_rss_kib(pid);
    let total: u64 = reports
        .iter()
        .flatten()
        .map(|r| r["ops"].as_u64().unwrap())
        .sum();
    eprintln!(
        "load: 4 sessions x 8 agents, {secs} s, {total} operations; daemon descriptors \
         {fds_before} before, peak {peak_fds}, {fds_after} after; peak RSS {} MiB",
        rss / 1024
    );
    assert!(peak_fds < 1024, "descriptors peaked at {peak_fds}");
    assert!(
        fds_after <= fds_before + 8,
        "{fds_before} before, {fds_after} after"
    );
    assert!(rss < 256 * 1024, "peak RSS {rss} KiB");
    // The revoked session's agents were cut off; the others never noticed.
    for r in &reports[0] {
        assert_eq!(r["gone"], true, "a revoked agent went on: {r}");
    }
    // Each agent runs in its session's PID namespace, where its own pid is not the one the
    // audit log names; the log's pid for it is that of the record of its first decision, the
    // mkdir of its own directory.
    let created = records_of(&m);
    for (k, session) in reports.iter_mut().enumerate() {
        for (n, r) in session.iter_mut().enumerate() {
            let tag = if k == 0 { "ra" } else { "a" };
            let dir = format!("/scratch/s{k}/{tag}{n}");
            let host = created
                .iter()
                .find(|e| e["operation"] == "mkdir" && e["path"] == dir.as_str())
                .and_then(|e| e["pid"].as_u64())
                .unwrap_or_else(|| panic!("no audit record of the mkdir of {dir}"));
            r["pid"] = json!(host);
        }
    }
    // The mount is still up: its log is written behind the decisions, so wait for it to hold
    // every decision the agents counted.
    let wanted: u64 = reports
        .iter()
        .skip(1)
        .flatten()
        .map(|r| r["audited"].as_u64().unwrap())
        .sum();
    let agent_pids: std::collections::BTreeSet<u64> = reports
        .iter()
        .flatten()
        .filter_map(|r| r["pid"].as_u64())
        .collect();
    eventually(Duration::from_secs(10), || {
        records_of(&m)
            .iter()
            .filter(|e| e["pid"].as_u64().is_some_and(|p| agent_pids.contains(&p)))
            .count() as u64
            >= wanted
    });
    let records = records_of(&m);
    for (k, session) in reports.iter().enumerate().skip(1) {
        for (n, r) in session.iter().enumerate() {
            assert_eq!(r["unexpected"], json!([]), "session {k}: {r}");
            assert_eq!(r["gone"], false, "session {k}: {r}");
            // Every file as its writer left it, and every decision audited under its pid.
            assert_files_as_written(
                &m.mirror_at(&format!("scratch/s{k}/a{n}")),
                r,
                &format!("session {k} agent {n}"),
            );
            let pid = r["pid"].as_u64();
            let mine: Vec<&Value> = records
                .iter()
                .filter(|e| e["pid"].as_u64() == pid)
                .collect();
            let denied = mine.iter().filter(|e| e["result"] == "denied").count() as u64;
            assert_eq!(
                (mine.len() as u64, denied),
                (
                    r["audited"].as_u64().unwrap(),
                    r["denied"].as_u64().unwrap()
                ),
                "session {k} agent {n}: audit records (all, denied) against its decisions"
            );
        }
    }
    assert!(is_mounted(&m.mnt));
}
