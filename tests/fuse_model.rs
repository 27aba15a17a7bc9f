//! Differential test of the guarded view against the plain filesystem: random sequences of file
//! operations (writes at offsets, appends, truncation by path and by handle, renames, unlinks,
//! directory changes, long-lived handles that outlive renames and unlinks) run once in a native
//! scratch directory and once inside a writable local area of a real mount. Every step must give
//! the same result (value or errno) on both sides, and afterwards the mirror underneath must hold
//! exactly what the native directory holds. Anything the guard gets wrong in the write path
//! (lost bytes, stale sizes, wrong errno, a handle that stops working) shows up as a difference.
//!
//! A variant runs six such sequences at once, each in its own directory of one mount.
//!
//! The last test does the same under a token with mixed rights (an area it manages, one it
//! only reads, one where it may create but not overwrite, one where it may delete, one it cannot
//! see). An oracle written from DESIGN section 7's table (which right each operation needs, ENOENT
//! for what the caller cannot see, EACCES for what it may not do) decides each step on the native
//! side, which only carries out what the oracle allows. The mount must agree at every step,
//! including the permission bits it shows, and the mirror must end up identical to the native
//! tree: a refused operation changes nothing, wherever it happens in a sequence.

mod common;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use common::mount::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use relayauth_mount::scope::{Requirement, ScopeSet};

const SLOTS: usize = 2;

/// The names a sequence works on, relative to a side's root.
struct Layout {
    files: Vec<String>,
    dirs: Vec<String>,
}

impl Layout {
    fn of(files: &[&str], dirs: &[&str]) -> Layout {
        Layout {
            files: files.iter().map(|f| (*f).to_owned()).collect(),
            dirs: dirs.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    /// The two ends of a rename: files, or directories when `dirs`.
    fn rename_ends(&self, from: usize, to: usize, dirs: bool) -> (&str, &str) {
        let names = if dirs { &self.dirs } else { &self.files };
        (&names[from % names.len()], &names[to % names.len()])
    }

    fn stat_target(&self, f: usize, dir: bool) -> &str {
        if dir {
            &self.dirs[f % self.dirs.len()]
        } else {
            &self.files[f]
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        f: usize,
        off: u64,
        data: Vec<u8>,
    },
    Append {
        f: usize,
        data: Vec<u8>,
    },
    TruncatePath {
        f: usize,
        len: i64,
    },
    Read {
        f: usize,
    },
    Stat {
        f: usize,
        dir: bool,
    },
    Rename {
        from: usize,
        to: usize,
        dirs: bool,
    },
    RenameFlags {
        from: usize,
        to: usize,
        exchange: bool,
    },
    Symlink {
        target: usize,
        link: usize,
    },
    ReadLink {
        f: usize,
    },
    Unlink {
        f: usize,
    },
    Mkdir {
        d: usize,
    },
    Rmdir {
        d: usize,
    },
    List {
        d: usize,
    },
    Open {
        slot: usize,
        f: usize,
        trunc: bool,
    },
    HWrite {
        slot: usize,
        off: u64,
        data: Vec<u8>,
    },
    HRead {
        slot: usize,
        off: u64,
        len: usize,
    },
    HTruncate {
        slot: usize,
        len: u64,
    },
    HSize {
        slot: usize,
    },
    HFallocate {
        slot: usize,
        off: u64,
        len: u64,
    },
    HSync {
        slot: usize,
    },
    Close {
        slot: usize,
    },
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..300)
}

/// Operations over `files` file names and `dirs` directory names; without `links`, no directory
/// renames (see [`ops`] for the rest).
fn op(files: usize, dirs: usize, links: bool) -> impl Strategy<Value = Op> {
    let f = 0..files;
    let d = 0..dirs;
    let slot = 0..SLOTS;
    let any_name = 0..files.max(dirs);
    prop_oneof![
        4 => (f.clone(), 0u64..5000, data()).prop_map(|(f, off, data)| Op::Write { f, off, data }),
        2 => (f.clone(), data()).prop_map(|(f, data)| Op::Append { f, data }),
        2 => (f.clone(), 0i64..6000).prop_map(|(f, len)| Op::TruncatePath { f, len }),
        3 => f.clone().prop_map(|f| Op::Read { f }),
        2 => (f.clone(), any::<bool>()).prop_map(|(f, dir)| Op::Stat { f, dir }),
        2 => (any_name.clone(), any_name, any::<bool>().prop_map(move |d| d && links))
            .prop_map(|(from, to, dirs)| Op::Rename { from, to, dirs }),
        1 => (f.clone(), f.clone(), any::<bool>())
            .prop_map(|(from, to, exchange)| Op::RenameFlags { from, to, exchange }),
        2 => (f.clone(), f.clone()).prop_map(|(target, link)| Op::Symlink { target, link }),
        2 => f.clone().prop_map(|f| Op::ReadLink { f }),
        2 => f.clone().prop_map(|f| Op::Unlink { f }),
        3 => d.clone().prop_map(|d| Op::Mkdir { d }),
        1 => d.clone().prop_map(|d| Op::Rmdir { d }),
        2 => d.prop_map(|d| Op::List { d }),
        3 => (slot.clone(), f, any::<bool>()).prop_map(|(slot, f, trunc)| Op::Open { slot, f, trunc }),
        3 => (slot.clone(), 0u64..5000, data()).prop_map(|(slot, off, data)| Op::HWrite { slot, off, data }),
        2 => (slot.clone(), 0u64..6000, 0usize..2000).prop_map(|(slot, off, len)| Op::HRead { slot, off, len }),
        1 => (slot.clone(), 0u64..6000).prop_map(|(slot, len)| Op::HTruncate { slot, len }),
        1 => slot.clone().prop_map(|slot| Op::HSize { slot }),
        1 => (slot.clone(), 0u64..6000, 1u64..3000)
            .prop_map(|(slot, off, len)| Op::HFallocate { slot, off, len }),
        1 => slot.clone().prop_map(|slot| Op::HSync { slot }),
        1 => slot.prop_map(|slot| Op::Close { slot }),
    ]
}

/// Sequences of operations; without `links`, no symlinks and no rename flags.
fn ops(files: usize, dirs: usize, links: bool) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(files, dirs, links), 1..60).prop_map(move |ops| {
        ops.into_iter()
            .filter(|o| {
                links
                    || !matches!(
                        o,
                        Op::Symlink { .. } | Op::ReadLink { .. } | Op::RenameFlags { .. }
                    )
            })
            .collect()
    })
}

/// What one step observed: a value, or the errno it failed with.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Done,
    Bytes(Vec<u8>),
    Len(u64),
    Names(Vec<String>),
    Kind {
        kind: &'static str,
        len: Option<u64>,
        perm: u32,
    },
    NoHandle,
    Errno(i32),
}

fn errno(e: std::io::Error) -> Seen {
    Seen::Errno(e.raw_os_error().unwrap_or(-1))
}

fn seen<T>(r: std::io::Result<T>, f: impl FnOnce(T) -> Seen) -> Seen {
    r.map_or_else(errno, f)
}

/// One side of the comparison: a root directory and its open handles.
struct Side {
    root: PathBuf,
    handles: [Option<File>; SLOTS],
}

impl Side {
    /// A side rooted at a new directory `root`.
    fn new(root: PathBuf) -> Side {
        std::fs::create_dir(&root).unwrap();
        Side::at(root)
    }

    /// A side rooted at an existing directory.
    fn at(root: PathBuf) -> Side {
        Side {
            root,
            handles: Default::default(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn exists(&self, rel: &str) -> bool {
        self.path(rel).symlink_metadata().is_ok()
    }

    fn is_dir(&self, rel: &str) -> bool {
        self.path(rel).symlink_metadata().is_ok_and(|m| m.is_dir())
    }

    /// Every entry below the directory `rel`, at any depth, as paths relative to the root.
    fn entries_below(&self, rel: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![rel.to_owned()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(self.path(&dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let child = format!("{dir}/{}", e.file_name().to_string_lossy());
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(child.clone());
                }
                out.push(child);
            }
        }
        out
    }

    fn apply(&mut self, op: &Op, l: &Layout) -> Seen {
        let file = |f: usize| self.path(&l.files[f]);
        match op {
            Op::Write { f, off, data } => seen(
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(file(*f))
                    .and_then(|h| h.write_all_at(data, *off)),
                |_| Seen::Done,
            ),
            Op::Append { f, data } => seen(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(file(*f))
                    .and_then(|mut h| std::io::Write::write_all(&mut h, data)),
                |_| Seen::Done,
            ),
            Op::TruncatePath { f, len } => {
                let c = CString::new(file(*f).as_os_str().as_bytes()).unwrap();
                // SAFETY: `c` is a valid NUL-terminated path.
                let rc = unsafe { libc::truncate(c.as_ptr(), *len) };
                if rc == 0 {
                    Seen::Done
                } else {
                    errno(std::io::Error::last_os_error())
                }
            }
            Op::Read { f } => seen(std::fs::read(file(*f)), Seen::Bytes),
            Op::Stat { f, dir } => {
                let p = self.path(l.stat_target(*f, *dir));
                seen(std::fs::symlink_metadata(p), |m| {
                    let t = m.file_type();
                    Seen::Kind {
                        kind: if t.is_dir() {
                            "dir"
                        } else if t.is_symlink() {
                            "symlink"
                        } else {
                            "file"
                        },
                        len: (!t.is_dir()).then_some(m.len()),
                        perm: m.mode() & 0o7777,
                    }
                })
            }
            Op::Rename { from, to, dirs } => {
                let (a, b) = l.rename_ends(*from, *to, *dirs);
                seen(std::fs::rename(self.path(a), self.path(b)), |_| Seen::Done)
            }
            Op::RenameFlags { from, to, exchange } => {
                let flags = if *exchange {
                    libc::RENAME_EXCHANGE
                } else {
                    libc::RENAME_NOREPLACE
                };
                let a = CString::new(file(*from).as_os_str().as_bytes()).unwrap();
                let b = CString::new(file(*to).as_os_str().as_bytes()).unwrap();
                // SAFETY: both are valid NUL-terminated paths; AT_FDCWD is ignored for
                // absolute paths.
                let rc = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        flags,
                    )
                };
                if rc == 0 {
                    Seen::Done
                } else {
                    errno(std::io::Error::last_os_error())
                }
            }
            Op::Symlink { target, link } => seen(
                std::os::unix::fs::symlink(&l.files[*target], file(*link)),
                |_| Seen::Done,
            ),
            Op::ReadLink { f } => seen(std::fs::read_link(file(*f)), |t| {
                Seen::Bytes(t.into_os_string().into_vec())
            }),
            Op::Unlink { f } => seen(std::fs::remove_file(file(*f)), |_| Seen::Done),
            Op::Mkdir { d } => seen(std::fs::create_dir(self.path(&l.dirs[*d])), |_| Seen::Done),
            Op::Rmdir { d } => seen(std::fs::remove_dir(self.path(&l.dirs[*d])), |_| Seen::Done),
            Op::List { d } => seen(list(&self.path(&l.dirs[*d])), Seen::Names),
            Op::Open { slot, f, trunc } => {
                let r = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(*trunc)
                    .mode(0o640)
                    .open(file(*f));
                match r {
                    Ok(h) => {
                        self.handles[*slot] = Some(h);
                        Seen::Done
                    }
                    Err(e) => errno(e),
                }
            }
            Op::HWrite { slot, off, data } => {
                self.with(*slot, |h| seen(h.write_all_at(data, *off), |_| Seen::Done))
            }
            Op::HRead { slot, off, len } => self.with(*slot, |h| {
                let mut buf = vec![0; *len];
                let mut got = 0;
                // Read until the end of the file or the buffer is full, as `read_exact_at`
                // would, but keeping a short read at the end of the file.
                loop {
                    match h.read_at(&mut buf[got..], off + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) => return errno(e),
                    }
                    if got == buf.len() {
                        break;
                    }
                }
                buf.truncate(got);
                Seen::Bytes(buf)
            }),
            Op::HTruncate { slot, len } => {
                self.with(*slot, |h| seen(h.set_len(*len), |_| Seen::Done))
            }
            Op::HSize { slot } => self.with(*slot, |h| seen(h.metadata(), |m| Seen::Len(m.len()))),
            Op::HFallocate { slot, off, len } => self.with(*slot, |h| {
                seen(
                    rustix::fs::fallocate(h, rustix::fs::FallocateFlags::empty(), *off, *len)
                        .map_err(std::io::Error::from),
                    |_| Seen::Done,
                )
            }),
            Op::HSync { slot } => self.with(*slot, |h| seen(h.sync_all(), |_| Seen::Done)),
            Op::Close { slot } => match self.handles[*slot].take() {
                Some(_) => Seen::Done,
                None => Seen::NoHandle,
            },
        }
    }

    fn with(&self, slot: usize, f: impl FnOnce(&File) -> Seen) -> Seen {
        match &self.handles[slot] {
            Some(h) => f(h),
            None => Seen::NoHandle,
        }
    }
}

/// Entry names of a directory, sorted, without the guard's generated `_PERMISSIONS.md`.
fn list(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != "_PERMISSIONS.md" {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// What a tree entry holds.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
}

/// Every entry under `root` with its content, for comparing trees.
fn tree(root: &Path) -> Vec<(String, Entry)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Entry)>) {
        for name in list(dir).unwrap() {
            let p = dir.join(&name);
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let t = std::fs::symlink_metadata(&p).unwrap().file_type();
            if t.is_symlink() {
                out.push((rel, Entry::Link(std::fs::read_link(&p).unwrap())));
            } else if t.is_dir() {
                out.push((rel, Entry::Dir));
                walk(root, &p, out);
            } else {
                out.push((rel, Entry::File(std::fs::read(&p).unwrap())));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Run generated sequences of operations through `case` with a reproducible seed (7 unless
/// `RELAYAUTH_MODEL_SEED` says otherwise; `RELAYAUTH_MODEL_CASES` sets how many).
fn run_sequences(
    files: usize,
    dirs: usize,
    links: bool,
    case: impl Fn(u32, &[Op]) -> Result<(), TestCaseError>,
) {
    run_sequences_from(0, files, dirs, links, case)
}

/// [`run_sequences`] with the seed moved by `offset`, so parallel runners differ.
fn run_sequences_from(
    offset: u64,
    files: usize,
    dirs: usize,
    links: bool,
    case: impl Fn(u32, &[Op]) -> Result<(), TestCaseError>,
) {
    let cases = std::env::var("RELAYAUTH_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("RELAYAUTH_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7u64)
        .wrapping_add(offset);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    );
    let n = AtomicU32::new(0);
    let result = runner.run(&ops(files, dirs, links), |ops| {
        case(n.fetch_add(1, Ordering::Relaxed), &ops)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The kind of an operation, for coverage notes.
fn kind(op: &Op) -> String {
    let name = format!("{op:?}");
    name.split([' ', '{']).next().unwrap_or_default().to_owned()
}

const KINDS: &[&str] = &[
    "Write",
    "Append",
    "TruncatePath",
    "Read",
    "Stat",
    "Rename",
    "RenameFlags",
    "Symlink",
    "ReadLink",
    "Unlink",
    "Mkdir",
    "Rmdir",
    "List",
    "Open",
    "HWrite",
    "HRead",
    "HTruncate",
    "HSize",
    "HFallocate",
    "HSync",
    "Close",
];

fn mismatch(i: usize, op: &Op, want: &Seen, got: &Seen) -> TestCaseError {
    TestCaseError::fail(format!(
        "step {i} {op:?}: expected {want:?}, the mount gave {got:?}"
    ))
}

fn plain_layout() -> Layout {
    Layout::of(&["a", "b", "d/x", "d/e/y", "d/e/z"], &["d", "d/e", "f"])
}

/// One sequence in a new directory `case`, natively under `native` and in the mount's scratch
/// area; both must agree step by step and end with the same tree (in the mirror too).
fn compare_plain(
    m: &TestMount,
    native: &Path,
    case: &str,
    layout: &Layout,
    ops: &[Op],
    succeeded: &Mutex<BTreeSet<String>>,
) -> Result<(), TestCaseError> {
    let mut plain = Side::new(native.join(case));
    let mut guarded = Side::new(m.at("scratch").join(case));
    for (i, op) in ops.iter().enumerate() {
        let want = plain.apply(op, layout);
        let got = guarded.apply(op, layout);
        if !matches!(want, Seen::Errno(_) | Seen::NoHandle) {
            succeeded.lock().unwrap().insert(kind(op));
        }
        if want != got {
            return Err(mismatch(i, op, &want, &got));
        }
    }
    drop(plain);
    drop(guarded);
    let want = tree(&native.join(case));
    if tree(&m.mirror_at("scratch").join(case)) != want {
        return Err(TestCaseError::fail(
            "the mirror differs from the native tree",
        ));
    }
    if tree(&m.at("scratch").join(case)) != want {
        return Err(TestCaseError::fail(
            "the guarded view differs from the native tree",
        ));
    }
    Ok(())
}

/// A mount whose token manages `/scratch`, a native directory to compare with, and the record
/// of which operations succeeded.
struct Rig {
    _issuer: Issuer,
    m: TestMount,
    native: tempfile::TempDir,
    layout: Layout,
    succeeded: Mutex<BTreeSet<String>>,
}

impl Rig {
    fn start() -> Rig {
        let issuer = Issuer::start();
        Rig {
            m: manage_scratch(&issuer),
            _issuer: issuer,
            native: tempfile::tempdir().unwrap(),
            layout: plain_layout(),
            succeeded: Mutex::new(BTreeSet::new()),
        }
    }
}

fn manage_scratch(issuer: &Issuer) -> TestMount {
    TestMount::start(
        issuer,
        &issuer.token(&[
            "relayfile:fs:read:/github/**",
            "relayfile:fs:manage:/scratch/**",
        ]),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&|mirror: &Path| std::fs::create_dir(mirror.join("scratch")).unwrap()),
            ..MountOpts::default()
        },
    )
}

#[test]
fn the_guarded_view_behaves_like_the_filesystem_underneath() {
    if !fuse_available() {
        return;
    }
    let Rig {
        _issuer,
        m,
        native,
        layout,
        succeeded,
    } = Rig::start();
    run_sequences(layout.files.len(), layout.dirs.len(), true, |n, ops| {
        compare_plain(
            &m,
            native.path(),
            &format!("case-{n}"),
            &layout,
            ops,
            &succeeded,
        )
    });
    assert_every_kind_succeeded(succeeded);
}

/// The generated sequences must reach the interesting states, not only fail early.
fn assert_every_kind_succeeded(succeeded: Mutex<BTreeSet<String>>) {
    let succeeded = succeeded.into_inner().unwrap();
    let never: Vec<_> = KINDS.iter().filter(|k| !succeeded.contains(**k)).collect();
    assert!(
        never.is_empty(),
        "these operations never succeeded: {never:?}"
    );
}

/// Areas with different rights, one set per case: `rw-N`, `ro-N`, ...
const AREAS: &[&str] = &["rw", "ro", "co", "del", "hid"];

const MIXED: &[&str] = &[
    "relayfile:fs:manage:/scratch/rw-*",
    "relayfile:fs:read:/scratch/ro-*",
    "relayfile:fs:read:/scratch/co-*",
    "relayfile:fs:create:/scratch/co-*",
    "relayfile:fs:read:/scratch/del-*",
    "relayfile:fs:delete:/scratch/del-*",
];

/// What DESIGN section 7 says each operation needs, decided on the native side's state.
struct Oracle {
    scopes: ScopeSet,
}

fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(p, _)| p)
}

impl Oracle {
    fn vpath(rel: &str) -> String {
        if rel.is_empty() {
            "/scratch".to_owned()
        } else {
            format!("/scratch/{rel}")
        }
    }

    fn visible(&self, rel: &str) -> bool {
        self.scopes.visible(Self::vpath(rel).as_bytes())
    }

    fn may(&self, req: usize, rel: &str) -> bool {
        self.scopes
            .check_known(req, Self::vpath(rel).as_bytes())
            .is_some()
    }

    /// The refusal the mount must give for `op`, or `None` when the operation must be carried
    /// out (and then give what the native filesystem gives).
    fn refusal(&self, op: &Op, l: &Layout, native: &Side) -> Option<Seen> {
        let enoent = Some(Seen::Errno(libc::ENOENT));
        let eacces = Some(Seen::Errno(libc::EACCES));
        // Existing as far as the caller can tell: a hidden entry is never revealed.
        let seen_exists = |rel: &str| native.exists(rel) && self.visible(rel);
        // Creating or opening `rel`: the parent must be visible; what is needed then depends
        // on whether `rel` exists.
        let open = |rel: &str, read: bool| {
            if !self.visible(parent(rel)) {
                return enoent.clone();
            }
            if !native.exists(parent(rel)) {
                return None;
            }
            let allowed = if seen_exists(rel) {
                self.may(Requirement::FS_WRITE, rel)
                    && (!read || self.may(Requirement::FS_READ, rel))
            } else {
                self.may(Requirement::FS_CREATE, rel)
            };
            if allowed { None } else { eacces.clone() }
        };
        // An existing entry that needs `req`.
        let existing = |rel: &str, req: Option<usize>| {
            if !self.visible(rel) {
                enoent.clone()
            } else if !native.exists(rel) {
                None
            } else if req.is_some_and(|r| !self.may(r, rel)) {
                eacces.clone()
            } else {
                None
            }
        };
        match op {
            Op::Read { f } => existing(&l.files[*f], Some(Requirement::FS_READ)),
            Op::Stat { f, dir } => existing(l.stat_target(*f, *dir), None),
            Op::List { d } => existing(&l.dirs[*d], None),
            Op::Write { f, .. } | Op::Append { f, .. } => open(&l.files[*f], false),
            Op::Open { f, .. } => open(&l.files[*f], true),
            Op::TruncatePath { f, .. } => existing(&l.files[*f], Some(Requirement::FS_WRITE)),
            Op::Unlink { f } => existing(&l.files[*f], Some(Requirement::FS_DELETE)),
            Op::Rmdir { d } => {
                let d = &l.dirs[*d];
                existing(d, Some(Requirement::FS_DELETE)).or_else(|| {
                    // Not empty, but only with entries the caller cannot see: EACCES, so the
                    // hidden entries are not revealed by ENOTEMPTY.
                    let below = native.entries_below(d);
                    (native.is_dir(d)
                        && !below.is_empty()
                        && !below.iter().any(|e| self.visible(e)))
                    .then_some(Seen::Errno(libc::EACCES))
                })
            }
            Op::Mkdir { d } => {
                let d = &l.dirs[*d];
                if !self.visible(parent(d)) {
                    enoent
                } else if !native.exists(parent(d)) || seen_exists(d) {
                    None
                } else if !self.may(Requirement::FS_CREATE, d) {
                    eacces
                } else {
                    None
                }
            }
            Op::Rename { from, to, dirs } => {
                let (a, b) = l.rename_ends(*from, *to, *dirs);
                if !self.visible(parent(a)) || !self.visible(parent(b)) {
                    enoent
                } else if !native.exists(parent(a)) || !native.exists(parent(b)) {
                    None
                } else if !seen_exists(a) {
                    enoent
                } else if a == b {
                    None
                } else if !self.may(Requirement::FS_DELETE, a)
                    || !self.may(Requirement::FS_CREATE, b)
                    || seen_exists(b) && !self.may(Requirement::FS_WRITE, b)
                {
                    eacces
                } else if native.is_dir(a)
                    && (native.is_dir(b) || !native.exists(b))
                    && !b.starts_with(&format!("{a}/"))
                    && native.entries_below(a).iter().any(|e| {
                        let moved = format!("{b}{}", &e[a.len()..]);
                        !self.may(Requirement::FS_DELETE, e)
                            || !self.may(Requirement::FS_CREATE, &moved)
                    })
                {
                    // A directory moves with everything in it: an entry the caller may not
                    // delete here or create there makes it EXDEV (`mv` copies instead).
                    Some(Seen::Errno(libc::EXDEV))
                } else if native.is_dir(a)
                    && native.is_dir(b)
                    && !native.entries_below(b).is_empty()
                    && !native.entries_below(b).iter().any(|e| self.visible(e))
                {
                    // Replacing a directory that holds only hidden entries: not ENOTEMPTY.
                    eacces
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The permission bits the mount shows for `rel`: the mirror's, limited by the rights.
    fn shown(&self, seen: Seen, rel: &str) -> Seen {
        let Seen::Kind { kind, len, perm } = seen else {
            return seen;
        };
        let mask = match kind {
            "dir" => {
                let probe = format!("{rel}/\u{1}");
                0o555
                    | if self.may(Requirement::FS_CREATE, &probe) {
                        0o222
                    } else {
                        0
                    }
            }
            "file" => {
                let read = self.may(Requirement::FS_READ, rel);
                (if read { 0o444 } else { 0 })
                    | (if self.may(Requirement::FS_WRITE, rel) {
                        0o222
                    } else {
                        0
                    })
                    | (if read && perm & 0o111 != 0 { 0o111 } else { 0 })
            }
            _ => 0o777,
        };
        Seen::Kind {
            kind,
            len,
            perm: perm & 0o1777 & (mask | 0o1000),
        }
    }
}

#[test]
fn refused_operations_in_any_sequence_change_nothing() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = TestMount::start(
        &issuer,
        &issuer.token(MIXED),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&|mirror: &Path| std::fs::create_dir(mirror.join("scratch")).unwrap()),
            ..MountOpts::default()
        },
    );
    let oracle = Oracle {
        scopes: ScopeSet::new(MIXED),
    };
    let native = tempfile::tempdir().unwrap();
    let files_per_area = ["a", "b", "sub/c", "sub/d"];
    let outcomes = Mutex::new(BTreeSet::new());
    run_sequences(
        AREAS.len() * files_per_area.len(),
        AREAS.len() * 4,
        false,
        |n, ops| {
            let areas: Vec<String> = AREAS.iter().map(|a| format!("{a}-{n}")).collect();
            let mut files = Vec::new();
            let mut dirs = Vec::new();
            for area in &areas {
                files.extend(files_per_area.iter().map(|f| format!("{area}/{f}")));
                dirs.push(format!("{area}/sub"));
                dirs.push(area.clone());
                dirs.push(format!("{area}/new"));
                dirs.push(format!("{area}/empty"));
                // The same starting content on both sides, written to the mirror directly.
                for root in [native.path().to_owned(), m.mirror_at("scratch")] {
                    std::fs::create_dir_all(root.join(area).join("sub")).unwrap();
                    std::fs::create_dir(root.join(area).join("empty")).unwrap();
                    std::fs::write(root.join(area).join("a"), format!("{area} a\n")).unwrap();
                    std::fs::write(root.join(area).join("sub/c"), format!("{area} c\n")).unwrap();
                }
            }
            let layout = Layout { files, dirs };
            let mut plain = Side::at(native.path().to_owned());
            let mut guarded = Side::at(m.at("scratch"));
            for (i, op) in ops.iter().enumerate() {
                let want = match oracle.refusal(op, &layout, &plain) {
                    Some(refused) => {
                        outcomes
                            .lock()
                            .unwrap()
                            .insert(format!("{} refused", kind(op)));
                        refused
                    }
                    None => {
                        let seen = plain.apply(op, &layout);
                        if !matches!(seen, Seen::Errno(_) | Seen::NoHandle) {
                            outcomes
                                .lock()
                                .unwrap()
                                .insert(format!("{} done", kind(op)));
                        }
                        match op {
                            Op::Stat { f, dir } => oracle.shown(seen, layout.stat_target(*f, *dir)),
                            _ => seen,
                        }
                    }
                };
                let got = guarded.apply(op, &layout);
                if want != got {
                    return Err(mismatch(i, op, &want, &got));
                }
            }
            drop(plain);
            drop(guarded);
            for area in &areas {
                if tree(&m.mirror_at("scratch").join(area)) != tree(&native.path().join(area)) {
                    return Err(TestCaseError::fail(format!(
                        "the mirror's {area} differs from the native tree"
                    )));
                }
            }
            Ok(())
        },
    );
    let outcomes = outcomes.into_inner().unwrap();
    let mut missing = Vec::new();
    for kind in [
        "Write",
        "Append",
        "TruncatePath",
        "Read",
        "Unlink",
        "Rename",
        "Mkdir",
        "Rmdir",
        "Open",
    ] {
        for outcome in ["done", "refused"] {
            let key = format!("{kind} {outcome}");
            if !outcomes.contains(&key) {
                missing.push(key);
            }
        }
    }
    assert!(missing.is_empty(), "never reached: {missing:?}");
}

#[test]
fn sequences_running_side_by_side_do_not_disturb_each_other() {
    if !fuse_available() {
        return;
    }
    let Rig {
        _issuer,
        m,
        native,
        layout,
        succeeded,
    } = Rig::start();
    // Six workers at once over the same mount (one directory each, different sequences):
    // the shared inode table, handle table and worker threads must keep every one exact.
    std::thread::scope(|scope| {
        for worker in 0..6u64 {
            let (m, native, layout, succeeded) = (&m, native.path(), &layout, &succeeded);
            scope.spawn(move || {
                run_sequences_from(
                    1000 + worker,
                    layout.files.len(),
                    layout.dirs.len(),
                    true,
                    |n, ops| {
                        let case = format!("w{worker}-case-{n}");
                        compare_plain(m, native, &case, layout, ops, succeeded)
                    },
                );
            });
        }
    });
    assert_every_kind_succeeded(succeeded);
}
