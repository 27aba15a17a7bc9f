//! Real-FUSE test harness: a development issuer, a scratch copy of a fixture mirror, and a
//! `relayauth-mount mount --foreground` child, all cleaned up when the guard drops (also when a
//! test fails).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Whether FUSE can be used here. Under CI (`CI=true`) a missing FUSE is a failure.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && Command::new("fusermount3")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0") {
        panic!("CI=true but FUSE is not available (/dev/fuse and fusermount3 are required)");
    }
    if !ok {
        eprintln!("FUSE is not available on this machine: skipping (CI fails instead)");
    }
    ok
}

/// A running development issuer.
pub struct Issuer {
    child: Child,
    pub url: String,
    pub admin_key: String,
    pub iss: String,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

const ADMIN_KEY: &str = "test-admin-key-not-secret";

impl Issuer {
    pub fn start() -> Issuer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_relayauth-mount"))
            .args([
                "dev-issuer",
                "--listen",
                "127.0.0.1:0",
                "--admin-key",
                ADMIN_KEY,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dev-issuer");
        let stdout = child.stdout.take().expect("issuer stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(json) = line.strip_prefix("READY ") {
                        break serde_json::from_str::<Value>(json).expect("READY json");
                    }
                }
                _ => panic!("dev-issuer exited before READY"),
            }
        };
        // Keep draining stdout so the issuer never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Issuer {
            child,
            url: ready["url"]
                .as_str()
                .expect("url")
                .trim_end_matches('/')
                .to_owned(),
            admin_key: ADMIN_KEY.to_owned(),
            iss: ready["iss"].as_str().expect("iss").to_owned(),
            rt,
            client: reqwest::Client::new(),
        }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        bearer: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let mut req = match method {
            "GET" => self.client.get(&url),
            _ => self.client.post(&url),
        };
        req = match bearer {
            Some(t) => req.bearer_auth(t),
            None => req.header("x-api-key", &self.admin_key),
        };
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.rt.block_on(async {
            let resp = req.send().await.expect("issuer request");
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
    }

    /// A new identity with `scopes`; returns its id.
    pub fn identity(&self, name: &str, scopes: &[&str]) -> String {
        let (status, v) = self.call(
            "POST",
            "/v1/identities",
            Some(json!({
                "name": name, "orgId": "org_acme", "workspaceId": "ws_acme",
                "sponsorId": "user_alice", "scopes": scopes,
            })),
            None,
        );
        assert_eq!(status, 201, "create identity: {v}");
        v["id"].as_str().expect("identity id").to_owned()
    }

    /// A token pair for `identity` living `ttl` seconds.
    pub fn mint(&self, identity: &str, ttl: u64) -> Value {
        let (status, v) = self.call(
            "POST",
            "/v1/tokens",
            Some(json!({"identityId": identity, "expiresIn": ttl})),
            None,
        );
        assert_eq!(status, 201, "mint: {v}");
        v
    }

    /// An access token for `identity` with `scopes` (within the identity's), living `ttl`
    /// seconds.
    pub fn mint_scoped(&self, identity: &str, scopes: &[&str], ttl: u64) -> String {
        let (status, v) = self.call(
            "POST",
            "/v1/tokens",
            Some(json!({"identityId": identity, "scopes": scopes, "expiresIn": ttl})),
            None,
        );
        assert_eq!(status, 201, "{v}");
        v["accessToken"].as_str().expect("accessToken").to_owned()
    }

    /// An access token for a fresh identity with `scopes`.
    pub fn token(&self, scopes: &[&str]) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = self.identity(&format!("agent-{n}"), scopes);
        self.mint(&id, 3600)["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_owned()
    }

    pub fn revoke(&self, body: Value) {
        let (status, v) = self.call("POST", "/v1/tokens/revoke", Some(body), None);
        assert_eq!(status, 204, "revoke: {v}");
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The claims of a JWT (no verification: for reading ids in tests).
pub fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let t = token.rsplit("relay_ag_").next().unwrap_or(token);
    let payload = t.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("claims json")
}

/// A mounted guarded view of a scratch copy of the acme fixture mirror.
pub struct TestMount {
    pub dir: tempfile::TempDir,
    pub mirror: PathBuf,
    pub mnt: PathBuf,
    pub audit: PathBuf,
    pub token_file: PathBuf,
    child: Option<Child>,
    /// Reads the daemon's stderr as it comes, so a chatty daemon never fills the pipe.
    stderr: Option<std::thread::JoinHandle<String>>,
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// Options for [`TestMount::start`].
#[derive(Default)]
pub struct MountOpts<'a> {
    /// Extra arguments for `mount`.
    pub args: Vec<&'a str>,
    /// Prepare the mirror copy before mounting.
    pub prepare: Option<&'a dyn Fn(&Path)>,
    /// Mount with this credentials bundle instead of the token file.
    pub credentials: Option<&'a Path>,
    /// Talk to this relayauth instead of the issuer.
    pub relayauth_url: Option<&'a str>,
    /// Start the daemon with this open-file limit (soft and hard, as `ulimit -n` sets it).
    pub open_files: Option<u64>,
    /// Write the audit log here instead of beside the mirror.
    pub audit_log: Option<&'a Path>,
}

impl TestMount {
    /// Mount with `token` against `issuer`.
    pub fn start(issuer: &Issuer, token: &str, opts: MountOpts<'_>) -> TestMount {
        let dir = tempfile::tempdir().unwrap();
        // Traversable, so agents running as `nobody` can reach the mountpoint.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mirror = dir.path().join("mirror");
        let mnt = dir.path().join("mnt");
        let audit = dir.path().join("audit.jsonl");
        let token_file = dir.path().join("token.jwt");
        copy_tree(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-fixtures/mirrors/acme"),
            &mirror,
        );
        std::fs::create_dir(&mnt).unwrap();
        std::fs::write(&token_file, token).unwrap();
        if let Some(prepare) = opts.prepare {
            prepare(&mirror);
        }
        let audit = opts.audit_log.map_or(audit, Path::to_owned);
        let mut m = TestMount {
            dir,
            mirror,
            mnt,
            audit,
            token_file,
            child: None,
            stderr: None,
        };
        m.launch(issuer, &opts);
        m
    }

    /// Mount the same mirror at the same mountpoint again (after the daemon died and the
    /// mount was taken down).
    pub fn restart(&mut self, issuer: &Issuer, opts: MountOpts<'_>) {
        assert!(self.child.is_none(), "the daemon still runs");
        self.launch(issuer, &opts);
    }

    /// SIGKILL the daemon and reap it (the mount stays, dead: ENOTCONN).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stderr_text();
    }

    fn launch(&mut self, issuer: &Issuer, opts: &MountOpts<'_>) {
        let (mirror, mnt) = (&self.mirror, &self.mnt);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relayauth-mount"));
        cmd.arg("mount")
            .arg(mirror)
            .arg(mnt)
            .args([
                "--workspace",
                "ws_acme",
                "--org",
                "org_acme",
                "--foreground",
            ])
            .args(["--relayauth-url", opts.relayauth_url.unwrap_or(&issuer.url)])
            .args(["--issuer", &issuer.iss, "--poll-interval", "200ms"]);
        match opts.credentials {
            Some(bundle) => cmd.arg("--credentials").arg(bundle),
            None => cmd.arg("--token-file").arg(&self.token_file),
        };
        cmd.arg("--audit-log")
            .arg(&self.audit)
            .args(&opts.args)
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = opts.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start mount");
        let mut pipe = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = std::io::Read::read_to_end(&mut pipe, &mut text);
            String::from_utf8_lossy(&text).into_owned()
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(mnt) {
            if let Ok(Some(status)) = child.try_wait() {
                let out = child.wait_with_output().expect("output");
                panic!(
                    "mount exited with {status} before mounting:\n{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    stderr.join().unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mount did not appear within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        self.stderr = Some(stderr);
    }

    /// What the daemon wrote to stderr, once it has exited.
    fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// The daemon's process id.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A path in the guarded view.
    pub fn at(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel.trim_start_matches('/'))
    }

    /// A path in the mirror underneath.
    pub fn mirror_at(&self, rel: &str) -> PathBuf {
        self.mirror.join(rel.trim_start_matches('/'))
    }

    /// Run a shell script in the guarded view (as root, the mount decides by token).
    pub fn sh(&self, script: &str) -> Output {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(&self.mnt)
            .output()
            .expect("bash")
    }

    /// Run a shell script as the unprivileged user `nobody`.
    pub fn sh_as_nobody(&self, script: &str) -> Output {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                "bash",
                "-c",
                script,
            ])
            .current_dir(&self.mnt)
            .output()
            .expect("setpriv")
    }

    /// The audit events written so far (the log is written out at least every 100 ms; callers
    /// that need a specific event wait for it with [`TestMount::wait_audit`]).
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait (up to 10 s) until an audit event satisfies `pred`.
    pub fn wait_audit(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.audit_events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no such audit event: {:#?}",
                self.audit_events()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the daemon to exit on its own (session ended); returns its status and stderr.
    pub fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                let out = child.wait_with_output().expect("output");
                return (out.status.code(), self.stderr_text());
            }
            if Instant::now() >= deadline {
                self.child = Some(child);
                panic!("the daemon did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the daemon with SIGTERM and wait for it; returns its exit code and stderr.
    pub fn stop(&mut self) -> (Option<i32>, String) {
        let Some(child) = self.child.take() else {
            return (None, String::new());
        };
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let out = child.wait_with_output().expect("wait mount");
        (out.status.code(), self.stderr_text())
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .status();
        }
    }
}

/// Poll `cond` every 100 ms until it holds or `limit` passes; whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// stdout of an output, as text.
pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of an output, as text.
pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The relative paths of every file under `root` with their contents (for "nothing changed").
pub fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if rel.starts_with(".relay/.relayauth-mount") {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                walk(base, &p, out);
            } else if ft.is_symlink() {
                out.push((
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                ));
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v
}

/// Counts a process's open descriptors every 20 ms until stopped: the high-water mark of a run.
pub struct FdWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How many descriptors `pid` has open now.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |rd| rd.count())
}

/// The peak resident memory of `pid` so far (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

impl FdWatch {
    pub fn start(pid: u32) -> FdWatch {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let peak = std::sync::Arc::new(AtomicUsize::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(open_fds(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        FdWatch {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stop counting; the highest count seen.
    pub fn peak(&mut self) -> usize {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}
