//! Everyday tools on a real mount, as a new user runs them: `cp -a`, `rsync -a` (into, within
//! and out of the mount), `cp -r`, `tar c`/`tar x`, `rm -rf`, `find -delete`, `git clean -fdx`,
//! on a tree of 20,000 entries (`RELAYAUTH_TOOLS_FILES` changes the count), with the daemon
//! under `ulimit -n 1024`. Every tool must exit 0, the mirror must then match the native tree
//! (types, bytes, and for the preserving tools modes and modification times), nothing may be
//! left behind, and the daemon's descriptors must stay bounded (the high-water mark is printed).
//! FIFOs and sockets, and git (`clone` in and out, `status`, `commit`, `merge`, `gc`, `fsck`,
//! `clean`) and editors' saves (vim, `sed -i`, an atomic save from Python), behave as natively.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use common::mount::*;

/// What a tree holds, for comparing two trees.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        mtime: i64,
        bytes: Vec<u8>,
    },
    Link {
        target: PathBuf,
    },
    /// A FIFO or socket (`kind` from its mode), which copying tools recreate.
    Special {
        kind: u32,
        mode: u32,
    },
}

/// Every entry below `root` by relative path, skipping `_PERMISSIONS.md` (the mount's notice,
/// which tools reading the mount copy along). Without `exact`, modes and times are not kept.
fn manifest(root: &Path, exact: bool) -> BTreeMap<String, Item> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_name() == "_PERMISSIONS.md" {
                continue;
            }
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = if exact { meta.mode() & 0o7777 } else { 0 };
            let item = if meta.file_type().is_symlink() {
                Item::Link {
                    target: std::fs::read_link(&p).unwrap(),
                }
            } else if meta.is_dir() {
                stack.push(p.clone());
                Item::Dir { mode }
            } else if !meta.is_file() {
                Item::Special {
                    kind: meta.mode() & libc::S_IFMT,
                    mode,
                }
            } else {
                Item::File {
                    mode,
                    mtime: if exact { meta.mtime() } else { 0 },
                    bytes: std::fs::read(&p).unwrap(),
                }
            };
            out.insert(rel, item);
        }
    }
    out
}

fn assert_same(what: &str, want: &BTreeMap<String, Item>, got: &BTreeMap<String, Item>) {
    if want == got {
        return;
    }
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, v)| (k, v, &got[k]))
        .take(3)
        .collect();
    panic!(
        "{what}: {} entries expected, {} found; missing {missing:?}, extra {extra:?}, different {differ:#?}",
        want.len(),
        got.len()
    );
}

/// A native tree of about `n` entries: directories of 100 files each, a few nested levels,
/// empty files, executable and private modes, old modification times, symlinks, odd names.
fn make_tree(root: &Path, n: usize) {
    std::fs::create_dir_all(root).unwrap();
    let dirs = n.div_ceil(101).max(1);
    let old = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for d in 0..dirs {
        let dir = if d % 10 == 9 {
            root.join(format!("d{:03}/nested/deeper", d - 1))
        } else {
            root.join(format!("d{d:03}"))
        };
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let name = match f {
                0 => "with space.txt".to_owned(),
                1 => "ünïcode-名前.md".to_owned(),
                _ => format!("f{f:03}.json"),
            };
            let p = dir.join(&name);
            if f == 2 {
                std::os::unix::fs::symlink(format!("f{:03}.json", f + 1), &p).unwrap();
                continue;
            }
            let body = if f % 17 == 0 {
                Vec::new()
            } else {
                format!("{{\"dir\": {d}, \"file\": {f}}}\n")
                    .repeat(1 + (f * 7) % 40)
                    .into_bytes()
            };
            std::fs::write(&p, body).unwrap();
            let mode = match f % 5 {
                0 => 0o755,
                1 => 0o600,
                _ => 0o644,
            };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let file = std::fs::File::options().write(true).open(&p).unwrap();
            file.set_modified(old + Duration::from_secs((d * 100 + f) as u64))
                .unwrap();
        }
    }
}

fn run(m: &TestMount, what: &str, script: &str) -> Duration {
    let started = std::time::Instant::now();
    let o = m.sh(script);
    assert!(
        o.status.success(),
        "{what} failed ({}): {}",
        o.status,
        err(&o).lines().take(20).collect::<Vec<_>>().join("\n")
    );
    started.elapsed()
}

#[test]
fn everyday_tools_on_a_big_tree_with_1024_descriptors() {
    if !fuse_available() {
        return;
    }
    let n: usize = std::env::var("RELAYAUTH_TOOLS_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let issuer = Issuer::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src, n);
    let exact = manifest(&src, true);
    let loose = manifest(&src, false);
    assert!(exact.len() >= n, "{} entries", exact.len());
    let mut m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:manage:/scratch/**"]),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&|mirror: &Path| {
                std::fs::create_dir_all(mirror.join("scratch")).unwrap()
            }),
            open_files: Some(1024),
            ..MountOpts::default()
        },
    );
    let mut fds = FdWatch::start(m.daemon_pid().unwrap());
    let s = src.display();
    let out_dir = work.path().join("out");
    let o = out_dir.display();
    let mut times = Vec::new();
    let steps: [(&str, String); 6] = [
        ("cp -a into the mount", format!("cp -a {s} scratch/a")),
        (
            "rsync -a into the mount",
            format!("rsync -a {s}/ scratch/b/"),
        ),
        (
            "rsync -a out of the mount",
            format!("rsync -a scratch/b/ {o}/"),
        ),
        (
            "cp -r within the mount",
            "cp -r scratch/a scratch/c".to_owned(),
        ),
        (
            "rsync -a within the mount",
            "rsync -a scratch/a/ scratch/d/".to_owned(),
        ),
        (
            "tar c | tar x within the mount",
            "mkdir scratch/e && tar cf - -C scratch a | tar xf - -C scratch/e".to_owned(),
        ),
    ];
    for (what, script) in &steps {
        times.push((*what, run(&m, what, script)));
    }
    assert_same("cp -a", &exact, &manifest(&m.mirror_at("scratch/a"), true));
    assert_same(
        "rsync -a in",
        &exact,
        &manifest(&m.mirror_at("scratch/b"), true),
    );
    assert_same("rsync -a out", &exact, &manifest(&out_dir, true));
    assert_same("cp -r", &loose, &manifest(&m.mirror_at("scratch/c"), false));
    assert_same(
        "rsync -a within",
        &exact,
        &manifest(&m.mirror_at("scratch/d"), true),
    );
    assert_same(
        "tar x",
        &exact,
        &manifest(&m.mirror_at("scratch/e/a"), true),
    );
    // The notices came along out of the mount (they are listed), never into the mirror.
    assert!(out_dir.join("_PERMISSIONS.md").is_file());
    let notices = Command::new("find")
        .arg(&m.mirror)
        .args(["-name", "_PERMISSIONS.md"])
        .output()
        .unwrap();
    assert_eq!(out(&notices), "", "a notice reached the mirror");

    times.push(("rm -rf", run(&m, "rm -rf", "rm -rf scratch/c")));
    assert!(!m.mirror_at("scratch/c").exists());
    times.push((
        "find -delete",
        run(&m, "find -delete", "find scratch/d -delete"),
    ));
    assert!(!m.mirror_at("scratch/d").exists());

    // git clean in a repository inside the mount.
    let git = "set -e; cd scratch; git init -q repo; cd repo
        git -c user.email=a@b -c user.name=a commit -q --allow-empty -m init
        cp -r ../a/d000 untracked-dir; echo x > untracked.txt; mkdir -p ignored/deep; echo y > ignored/deep/z
        git clean -fdxq; test -z \"$(ls -A | grep -v '^.git$')\"";
    times.push(("git clean -fdx", run(&m, "git clean -fdx", git)));

    // Nothing else is left in the mirror: every copy compared equal above, and the removed
    // trees are gone.
    let mut left: Vec<String> = std::fs::read_dir(m.mirror_at("scratch"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["a", "b", "e", "repo"]);

    let peak = fds.peak();
    let _ = m.stop();
    eprintln!(
        "{} entries, daemon descriptors peaked at {peak} (limit 1024)",
        exact.len()
    );
    for (what, t) in &times {
        eprintln!("  {what}: {:.1} s", t.as_secs_f64());
    }
    assert!(peak < 1024, "the daemon reached its descriptor limit");
}

/// FIFOs and Unix sockets in a local root: made and used through the mount with the tools that
/// make them (`mkfifo`, a socket `bind`), and copied by `cp -a`, `cp -r`, `rsync -a` and `tar`
/// exactly as the same commands copy them natively (each run both ways and compared).
#[test]
fn fifos_and_sockets_behave_as_natively() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let native = work.path().join("native");
    std::fs::create_dir_all(&native).unwrap();
    let m = TestMount::start(
        &issuer,
        &issuer.token(&[
            "relayfile:fs:manage:/scratch/**",
            "relayfile:fs:read:/github/**",
            "relayfile:fs:create:/github/repos/acme/api/issues/7/comments/*",
        ]),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&|mirror: &Path| {
                std::fs::create_dir_all(mirror.join("scratch")).unwrap()
            }),
            ..MountOpts::default()
        },
    );
    let make = |dir: &str| {
        format!(
            "set -e; mkdir -p {dir}/sub; echo hi > {dir}/sub/file; mkfifo -m 0640 {dir}/sub/pipe
            python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('{dir}/sock')\"
            chmod 0600 {dir}/sock
            (umask 0; mkdir {dir}/open; touch {dir}/open/f; mkfifo {dir}/open/p)
            (umask 077; mkdir {dir}/closed; touch {dir}/closed/f)"
        )
    };
    // Made natively and through the mount, the two trees are the same: the modes too, under
    // the maker's umask (not the daemon's).
    run(&m, "make natively", &make(&src.display().to_string()));
    run(&m, "make in the mount", &make("scratch/made"));
    let want = manifest(&src, true);
    assert_eq!(want.len(), 9, "{want:?}");
    // Made a moment apart: everything but the modification times must agree.
    let untimed = |mut tree: BTreeMap<String, Item>| {
        for item in tree.values_mut() {
            if let Item::File { mtime, .. } = item {
                *mtime = 0;
            }
        }
        tree
    };
    assert_same(
        "made",
        &untimed(manifest(&src, true)),
        &untimed(manifest(&m.mirror_at("scratch/made"), true)),
    );

    // A FIFO carries data between two processes of the mount; a socket accepts a connection.
    run(
        &m,
        "fifo",
        "set -e; (echo through > scratch/made/sub/pipe &); test \"$(cat scratch/made/sub/pipe)\" = through",
    );
    run(
        &m,
        "socket",
        "set -e; rm scratch/made/sock; python3 -c \"
import socket, threading
s = socket.socket(socket.AF_UNIX); s.bind('scratch/made/sock'); s.listen(1)
def serve():
    c, _ = s.accept(); c.sendall(b'pong'); c.close()
t = threading.Thread(target=serve); t.start()
c = socket.socket(socket.AF_UNIX); c.connect('scratch/made/sock')
assert c.recv(4) == b'pong'
t.join()
\"",
    );

    // Each copying tool, natively and into, within and out of the mount.
    let s = src.display();
    let n = native.display();
    for (tool, cmd) in [
        ("cp -a", "cp -a {from} {to}"),
        ("cp -r", "cp -r {from} {to}"),
        ("rsync -a", "rsync -a {from}/ {to}/"),
        (
            "tar",
            "mkdir {to} && tar cf - -C {from} . | tar xf - -C {to}",
        ),
    ] {
        let slug = tool.replace([' ', '-'], "");
        let cmd = |from: &str, to: &str| cmd.replace("{from}", from).replace("{to}", to);
        // `cp -r` keeps no times: its copies are stamped when made, and the native copy and
        // the mount's are made a moment apart (across a second boundary, now and then).
        let keeps_times = tool != "cp -r";
        let manifest = |p: &Path, sockets: bool| {
            let tree = manifest(p, sockets);
            if keeps_times { tree } else { untimed(tree) }
        };
        // A tool may warn (tar ignores sockets): what matters is that the mount gives the same
        // exit status and the same tree as native.
        let native_run = m.sh(&cmd(&s.to_string(), &format!("{n}/{slug}")));
        let into = m.sh(&cmd(&s.to_string(), &format!("scratch/{slug}")));
        assert_eq!(
            into.status.code(),
            native_run.status.code(),
            "{tool} into: {}",
            err(&into)
        );
        let native_tree = manifest(&native.join(&slug), true);
        assert_same(
            &format!("{tool} into"),
            &native_tree,
            &manifest(&m.mirror_at(&format!("scratch/{slug}")), true),
        );
        let within = m.sh(&cmd(
            &format!("scratch/{slug}"),
            &format!("scratch/{slug}-within"),
        ));
        let native_within = m.sh(&cmd(&format!("{n}/{slug}"), &format!("{n}/{slug}-within")));
        assert_eq!(
            within.status.code(),
            native_within.status.code(),
            "{tool} within: {}",
            err(&within)
        );
        assert_same(
            &format!("{tool} within"),
            &manifest(&native.join(format!("{slug}-within")), true),
            &manifest(&m.mirror_at(&format!("scratch/{slug}-within")), true),
        );
        let out_of = work.path().join(format!("out-{slug}"));
        let out = m.sh(&cmd(
            &format!("scratch/{slug}"),
            &out_of.display().to_string(),
        ));
        assert_eq!(
            out.status.code(),
            native_within.status.code(),
            "{tool} out: {}",
            err(&out)
        );
        let mut got = manifest(&out_of, true);
        got.retain(|k, _| !k.ends_with("_PERMISSIONS.md"));
        assert_same(
            &format!("{tool} out"),
            &manifest(&native.join(format!("{slug}-within")), true),
            &got,
        );
    }

    // Removing them is as native: rm -rf and find -delete leave nothing.
    run(&m, "rm -rf", "rm -rf scratch/cpa scratch/made");
    run(&m, "find -delete", "find scratch/rsynca -delete");
    assert!(!m.mirror_at("scratch/cpa").exists());
    assert!(!m.mirror_at("scratch/rsynca").exists());

    // In a provider area neither can be made, under any name (a temporary's too: whatever reads
    // the directory's files would block on it), made or moved there, whatever the scopes.
    run(&m, "a fifo to move", "mkfifo scratch/pipe");
    for name in ["pipe.json", "pipe.tmp", ".#pipe", "pipe~"] {
        let at = format!("github/repos/acme/api/issues/7/comments/{name}");
        for script in [format!("mkfifo '{at}'"), format!("mv scratch/pipe '{at}'")] {
            let o = m.sh(&script);
            assert!(!o.status.success(), "{script}");
            assert!(
                err(&o).contains("Permission denied"),
                "{script}: {}",
                err(&o)
            );
            assert!(!m.mirror_at(&at).exists(), "{script}");
        }
    }
    // And a device node is refused everywhere.
    let o = m.sh("mknod scratch/null c 1 3");
    assert!(!o.status.success());
    assert!(err(&o).contains("Operation not permitted"), "{}", err(&o));
}

/// The first of `names` found on `PATH`.
fn first_tool(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| {
        Command::new("sh")
            .args(["-c", &format!("command -v {n}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| (*n).to_owned())
    })
}

/// git and editors in a local root, as a developer uses them: `git clone` into the mount,
/// `status`, `commit`, `gc`, `fsck`, `clean`, a clone out of the mount again; vim's save, `sed -i`
/// and an atomic save from Python. The repository must come out the same (the same commits, the
/// same files byte for byte) and the mirror must hold exactly what the tools wrote.
#[test]
fn git_and_editors_work_as_natively() {
    if !fuse_available() {
        return;
    }
    let vim = first_tool(&["vim", "vim.tiny", "vi"]);
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        assert!(vim.is_some(), "CI needs vim (.ci/run installs vim-tiny)");
    }
    let issuer = Issuer::start();
    let work = tempfile::tempdir().unwrap();
    let origin = work.path().join("origin");
    let out_dir = work.path().join("out");
    let m = TestMount::start(
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
    let git = "git -c user.email=a@example.com -c user.name=a -c safe.directory='*' -c gc.auto=0";
    let o = origin.display();
    run(
        &m,
        "a native repository",
        &format!(
            "set -e; mkdir -p {o}; cd {o}; {git} init -q; for d in 1 2 3 4; do mkdir -p src/m$d;
             for f in $(seq 1 50); do printf 'package m%s\\nconst F%s = %s\\n' $d $f $f > src/m$d/f$f.go; done; done
             printf 'line one\\nline two\\n' > notes.txt; {git} add -A; {git} commit -qm first
             {git} checkout -qb topic; echo topic >> notes.txt; {git} commit -qam topic; {git} checkout -q -"
        ),
    );
    let steps = [
        ("git clone into the mount", format!("{git} clone -q {o} scratch/repo")),
        (
            "git status",
            format!("cd scratch/repo && test -z \"$({git} status --porcelain)\""),
        ),
        (
            "git commit",
            format!(
                "set -e; cd scratch/repo; echo more >> src/m1/f1.go; {git} commit -qam second
                 {git} checkout -q topic; {git} checkout -q -; {git} merge -q --no-edit topic"
            ),
        ),
        ("git gc", format!("cd scratch/repo && {git} gc -q --prune=now")),
        ("git fsck", format!("cd scratch/repo && {git} fsck --strict --no-progress")),
        (
            "git clean",
            format!(
                "set -e; cd scratch/repo; mkdir -p junk/deep; echo x > junk/deep/y; echo z > untracked
                 {git} clean -fdxq; test -z \"$({git} status --porcelain)\""
            ),
        ),
        (
            "git clone out of the mount",
            format!("{git} clone -q scratch/repo {}", out_dir.display()),
        ),
        (
            "sed -i",
            "sed -i 's/line one/line 1/' scratch/repo/notes.txt".to_owned(),
        ),
        (
            "an atomic save from Python",
            "/usr/bin/python3 -c \"
import os, tempfile
d = 'scratch/repo'
fd, tmp = tempfile.mkstemp(dir=d, prefix='.notes.', suffix='.tmp')
with os.fdopen(fd, 'w') as f:
    f.write(open(d + '/notes.txt').read() + 'saved by python\\n')
os.replace(tmp, d + '/notes.txt')
\""
            .to_owned(),
        ),
    ];
    for (what, script) in &steps {
        run(&m, what, script);
    }
    let mut want = "line 1\nline two\ntopic\nsaved by python\n".to_owned();
    if let Some(vim) = &vim {
        // vim writes a backup, then the file (`:w`), as it does natively.
        run(
            &m,
            "a vim save",
            &format!(
                "{vim} -u NONE -i NONE -N -es -c 'normal Gosaved by vim' -c 'wq' scratch/repo/notes.txt"
            ),
        );
        want.push_str("saved by vim\n");
    }
    assert_eq!(
        std::fs::read_to_string(m.mirror_at("scratch/repo/notes.txt")).unwrap(),
        want
    );
    // The clone out of the mount has the same history and the same files as the one inside.
    let head = |dir: &Path| {
        let o = Command::new("git")
            .args(["-c", "safe.directory=*", "-C"])
            .arg(dir)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap();
        out(&o).trim().to_owned()
    };
    assert_eq!(head(&m.mirror_at("scratch/repo")), head(&out_dir));
    let mut inside = manifest(&m.mirror_at("scratch/repo/src"), false);
    let outside = manifest(&out_dir.join("src"), false);
    inside.retain(|k, _| !k.ends_with("_PERMISSIONS.md"));
    assert_same("the clone out of the mount", &outside, &inside);
    let fsck = Command::new("git")
        .args(["-c", "safe.directory=*", "-C"])
        .arg(&out_dir)
        .args(["fsck", "--strict", "--no-progress"])
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{}", err(&fsck));
    // Nothing else in the local root: no temporaries, backups or notices left behind.
    let left = Command::new("find")
        .arg(m.mirror_at("scratch"))
        .args(["-maxdepth", "2", "-not", "-path", "*/.git*"])
        .output()
        .unwrap();
    let left = out(&left);
    let mut left: Vec<&str> = left.lines().collect();
    left.sort();
    let root = m.mirror_at("scratch").display().to_string();
    let expect: Vec<String> = ["", "/repo", "/repo/notes.txt", "/repo/src"]
        .iter()
        .map(|p| format!("{root}{p}"))
        .collect();
    assert_eq!(left, expect);
}
