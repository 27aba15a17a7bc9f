//! The inode table: FUSE inode numbers for mirror objects and virtual files.
//!
//! A mirror object is keyed by its `(dev, ino)`, so the same object reached twice is one FUSE
//! inode, remembered for as long as the kernel remembers it (lookup counts and `forget`). Its
//! `O_PATH` descriptor is held only while it is in use: the kernel may cache hundreds of
//! thousands of nodes, and a descriptor each would exhaust the process's limit (then every
//! create, open and token read fails). The table holds at most a fixed number of descriptors,
//! dropping the least recently used (a clock with second chances) and taking a dropped one again
//! by its parent's descriptor and its name, checked to be the very same object. Every node also records where it lives (parent, name and full relayfile
//! path), because every decision is about a path. Two exceptions keep paths honest: a regular
//! file with more than one hard link gets one node per path (a hard link must never let one
//! path borrow another path's rights), and a node found under a new name with a single link was
//! renamed behind the guard's back, so its location is updated.
//!
//! Virtual nodes (`_PERMISSIONS.md` of a directory, filtered views under `/.relay`) live in the
//! same table with their own kinds.
//!
//! Node numbers are the mirror's own inode numbers whenever that is unambiguous (same device as
//! the root, number free), so `st_ino` is stable across cache evictions and remounts: tools that
//! remember inode numbers, `git`'s index above all, do not see every file as changed. Virtual
//! nodes, per-path nodes of multiply-linked files and anything that would collide get numbers
//! from a separate range.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use rustix::fs::Stat;

use super::mirror::Kind;

pub type Ino = u64;
pub const ROOT: Ino = 1;

/// The mirror object behind a node. A committed writeback replaces the file at a path with a
/// new inode, so the node's backing can be swapped while the node (the path) stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backing {
    pub kind: Kind,
    pub dev: u64,
    pub ino: u64,
}

/// What a node stands for.
#[derive(Debug)]
pub enum NodeKind {
    /// An object of the mirror.
    Backed(RwLock<Backing>),
    /// The generated `_PERMISSIONS.md` of the directory `dir`.
    Permissions { dir: Ino },
    /// A generated, filtered view of a file under `/.relay` (its backing object is `fd`, the
    /// file last found at that name: relayfile replaces these files by rename).
    RelayView {
        fd: RwLock<Arc<OwnedFd>>,
        view: RelayView,
    },
}

/// The `/.relay` files whose content is filtered per caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayView {
    /// `state.json` filtered to the files the caller may see.
    State,
    /// `permissions-denied.log` filtered to lines about visible paths.
    DeniedLog,
}

/// Where a node lives.
#[derive(Clone, Debug)]
pub struct Location {
    pub parent: Ino,
    /// The relayfile path (`/github/x`), bytes as the kernel gives them. Its last component is
    /// the node's name in `parent` (not stored again: a node is kept per entry the kernel
    /// knows, hundreds of thousands of them).
    pub path: Arc<[u8]>,
}

impl Location {
    fn new(parent: Ino, name: &OsStr, path: Arc<[u8]>) -> Location {
        debug_assert!(
            path.ends_with(name.as_bytes())
                && (name.is_empty() || path[..path.len() - name.len()].ends_with(b"/")),
            "the path {:?} does not end with the name {name:?}",
            String::from_utf8_lossy(&path)
        );
        Location { parent, path }
    }

    /// The node's name in its parent directory.
    pub fn name(&self) -> &OsStr {
        let at = self
            .path
            .iter()
            .rposition(|&b| b == b'/')
            .map_or(0, |i| i + 1);
        OsStr::from_bytes(&self.path[at..])
    }
}

#[derive(Debug)]
pub struct Node {
    pub ino: Ino,
    pub kind: NodeKind,
    key: Key,
    loc: RwLock<Location>,
    /// Bumped whenever the location changes, so what was decided at the old path (an open
    /// handle) can tell with one atomic load that it must be decided again.
    moves: AtomicU64,
    lookups: AtomicU64,
    /// A mirror object's `O_PATH` descriptor, while the table holds it.
    held: RwLock<Option<Arc<OwnedFd>>>,
    /// Used since the clock hand last passed (its second chance).
    referenced: AtomicBool,
    /// Never dropped: the root, and a staged new file (it has no name in the mirror yet, so it
    /// could not be found again).
    pinned: AtomicBool,
    /// How many open handles of it the kernel serves by passthrough.
    passthrough_opens: std::sync::atomic::AtomicU32,
}

impl Node {
    fn new(ino: Ino, kind: NodeKind, key: Key, loc: Location, pinned: bool) -> Node {
        Node {
            ino,
            kind,
            key,
            loc: RwLock::new(loc),
            moves: AtomicU64::new(0),
            lookups: AtomicU64::new(1),
            held: RwLock::new(None),
            referenced: AtomicBool::new(true),
            pinned: AtomicBool::new(pinned),
            passthrough_opens: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Whether the kernel serves an open handle of this file by passthrough now (it then
    /// refuses, with EIO, every open of the file that is not passthrough).
    pub fn passthrough_open(&self) -> bool {
        self.passthrough_opens.load(Ordering::Acquire) > 0
    }

    pub(super) fn count_passthrough(&self, open: bool) {
        if open {
            self.passthrough_opens.fetch_add(1, Ordering::AcqRel);
        } else {
            self.passthrough_opens.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub fn location(&self) -> Location {
        self.loc.read().clone()
    }

    pub fn path(&self) -> Arc<[u8]> {
        self.loc.read().path.clone()
    }

    /// How many times the node has moved (any rename, even back to the same name).
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Acquire)
    }

    /// Move the node to `loc`.
    fn relocate(&self, loc: Location) {
        *self.loc.write() = loc;
        self.moves.fetch_add(1, Ordering::AcqRel);
    }

    /// The `O_PATH` descriptor of a mirror object if the table holds it now (or the file
    /// behind a relay view). A mirror object whose descriptor was dropped is found again with
    /// `GuardFs::fd_of`.
    pub fn fd(&self) -> Option<Arc<OwnedFd>> {
        match &self.kind {
            NodeKind::Backed(_) => {
                let fd = self.held.read().clone();
                // Written only when it changes: every request reads this, and a store per call
                // would bounce the line between the worker threads.
                if fd.is_some() && !self.referenced.load(Ordering::Relaxed) {
                    self.referenced.store(true, Ordering::Relaxed);
                }
                fd
            }
            NodeKind::RelayView { fd, .. } => Some(fd.read().clone()),
            NodeKind::Permissions { .. } => None,
        }
    }

    /// The backing of a mirror object.
    pub fn backing(&self) -> Option<Backing> {
        match &self.kind {
            NodeKind::Backed(b) => Some(*b.read()),
            _ => None,
        }
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Acquire)
    }

    pub fn is_dir(&self) -> bool {
        matches!(&self.kind, NodeKind::Backed(b) if b.read().kind == Kind::Dir)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Object(u64, u64),
    /// A multiply-linked file, one node per path (boxed: rare, and every key is this size).
    Linked(Box<(u64, u64, Arc<[u8]>)>),
    Permissions(Ino),
    View(Ino, u8),
}

#[derive(Debug)]
struct Table {
    nodes: FxHashMap<Ino, Arc<Node>>,
    by_key: FxHashMap<Key, Ino>,
    /// The next synthetic number (the top half of the range, away from real inode numbers).
    next: Ino,
    /// The device of the mirror root: only its inode numbers are used as node numbers.
    dev: u64,
}

/// Node numbers from here up are made up, for the generated files and for objects whose own
/// inode number is already taken by another node: far above any inode number a real filesystem
/// hands out, so the two ranges never meet.
const SYNTHETIC: Ino = 1 << 62;

impl Table {
    /// Add a node for `key` with one kernel reference.
    fn insert_new(&mut self, key: Key, kind: NodeKind, loc: Location, pinned: bool) -> Arc<Node> {
        let ino = self.number_for(&key);
        let node = Arc::new(Node::new(ino, kind, key.clone(), loc, pinned));
        self.nodes.insert(ino, node.clone());
        self.by_key.insert(key, ino);
        node
    }

    /// A node number for `key`: the backing inode number when it is safe, else a synthetic one.
    fn number_for(&mut self, key: &Key) -> Ino {
        if let Key::Object(dev, ino) = key
            && *dev == self.dev
            && *ino > ROOT
            && *ino < SYNTHETIC
            && !self.nodes.contains_key(ino)
        {
            return *ino;
        }
        let n = self.next;
        self.next += 1;
        n
    }
}

/// The table. Reads (`get`) take a shared lock; lookups that add nodes take it exclusively.
///
/// Lock order: `table` before any node's own locks (its location, its held descriptor, its
/// backing); `clock` alone or under `table`, never with a node's descriptor lock held (the
/// descriptors a sweep picks are dropped after the clock's lock is released).
#[derive(Debug)]
pub struct Inodes {
    table: RwLock<Table>,
    /// The nodes holding a descriptor, oldest first (entries of forgotten nodes are skipped).
    clock: Mutex<VecDeque<Weak<Node>>>,
    /// How many descriptors the table may hold (pinned ones not counted).
    cap: usize,
}

/// The fewest descriptors a table holds, however low the process limit: the deepest chain a
/// single request walks at once (a rename's two parents and their children) with room to
/// spare, so eviction never drops what the request in progress still needs.
pub const MIN_HELD: usize = 16;

/// The longest name a directory entry may have (`NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// The longest guarded path, in bytes (`PATH_MAX` less its terminating NUL). Nothing deeper is
/// shown or made: each node stores its full path, so a tree as deep as memory allows would
/// otherwise cost memory (and audit log) by the square of its depth.
pub const PATH_MAX: usize = libc::PATH_MAX as usize - 1;

/// The path of `name` in the directory at `dir_path`, or `ENAMETOOLONG` when the name or the
/// path would be longer than `NAME_MAX` or `PATH_MAX`.
pub fn checked_child_path(dir_path: &[u8], name: &OsStr) -> Result<Arc<[u8]>, i32> {
    let len = dir_path.len() + 1 + name.len();
    if name.len() > NAME_MAX || len > PATH_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(child_path(dir_path, name))
}

/// The directory part of a path (`/` for top-level names).
pub fn parent_path(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) | None => b"/",
        Some(i) => &path[..i],
    }
}

/// The path of `name` in the directory at `dir_path`.
pub fn child_path(dir_path: &[u8], name: &OsStr) -> Arc<[u8]> {
    let mut p = Vec::with_capacity(dir_path.len() + 1 + name.len());
    p.extend_from_slice(dir_path);
    if dir_path != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name.as_bytes());
    p.into()
}

impl Inodes {
    /// A table holding the root of the mirror and at most `cap` other descriptors.
    pub fn new(root_fd: OwnedFd, root: &Stat, cap: usize) -> Inodes {
        let key = Key::Object(root.st_dev, root.st_ino);
        let node = Arc::new(Node::new(
            ROOT,
            NodeKind::Backed(RwLock::new(Backing {
                kind: Kind::Dir,
                dev: root.st_dev,
                ino: root.st_ino,
            })),
            key.clone(),
            Location::new(ROOT, OsStr::new(""), Arc::from(&b"/"[..])),
            true,
        ));
        *node.held.write() = Some(Arc::new(root_fd));
        let mut nodes = FxHashMap::default();
        nodes.insert(ROOT, node);
        let mut by_key = FxHashMap::default();
        by_key.insert(key, ROOT);
        Inodes {
            table: RwLock::new(Table {
                nodes,
                by_key,
                next: SYNTHETIC,
                dev: root.st_dev,
            }),
            clock: Mutex::new(VecDeque::new()),
            cap: cap.max(MIN_HELD),
        }
    }

    /// Give `node` the descriptor `fd` (unless it holds one already) and return the one it
    /// holds. Over the cap, the least recently used unpinned descriptors are dropped.
    pub fn hold(&self, node: &Arc<Node>, fd: OwnedFd) -> Arc<OwnedFd> {
        let held = {
            let mut slot = node.held.write();
            if let Some(existing) = slot.as_ref() {
                return existing.clone();
            }
            let fd = Arc::new(fd);
            *slot = Some(fd.clone());
            fd
        };
        node.referenced.store(true, Ordering::Relaxed);
        if !node.is_pinned() {
            self.enlist(node);
        }
        held
    }

    /// Put a node that now holds a descriptor on the clock, and drop the descriptors the sweep
    /// picks, outside the clock's lock (a descriptor in use elsewhere stays open until its last
    /// user lets go).
    fn enlist(&self, node: &Arc<Node>) {
        let victims = {
            let mut clock = self.clock.lock();
            clock.push_back(Arc::downgrade(node));
            self.sweep(&mut clock)
        };
        for v in victims {
            if !v.is_pinned() {
                v.held.write().take();
            }
        }
    }

    /// Pick the nodes whose descriptors go, until the clock is within the cap.
    fn sweep(&self, clock: &mut VecDeque<Weak<Node>>) -> Vec<Arc<Node>> {
        let mut victims = Vec::new();
        let mut chances = clock.len();
        while clock.len() > self.cap {
            let Some(weak) = clock.pop_front() else {
                break;
            };
            let Some(node) = weak.upgrade() else {
                continue;
            };
            if node.is_pinned() {
                continue;
            }
            if chances > 0 && node.referenced.swap(false, Ordering::Relaxed) {
                chances -= 1;
                clock.push_back(weak);
                continue;
            }
            victims.push(node);
        }
        victims
    }

    /// How many descriptors the table holds now (pinned ones included).
    pub fn held_count(&self) -> usize {
        self.table
            .read()
            .nodes
            .values()
            .filter(|n| n.held.read().is_some())
            .count()
    }

    /// A staged file was committed into place: it can be found by name from now on.
    pub fn unpin(&self, node: &Arc<Node>) {
        if node.pinned.swap(false, Ordering::AcqRel) && node.held.read().is_some() {
            self.enlist(node);
        }
    }

    /// Every node the kernel may still cache, as `(parent, name, ino)`: what has to be
    /// invalidated when the kernel's caches must stop answering for the daemon (a second
    /// session registered).
    pub fn known(&self) -> Vec<(Ino, std::ffi::OsString, Ino)> {
        let t = self.table.read();
        t.nodes
            .values()
            .filter(|n| n.ino != ROOT)
            .map(|n| {
                let loc = n.loc.read();
                (loc.parent, loc.name().to_owned(), n.ino)
            })
            .collect()
    }

    pub fn get(&self, ino: Ino) -> Option<Arc<Node>> {
        self.table.read().nodes.get(&ino).cloned()
    }

    /// Record one kernel reference to the mirror object `(fd, stat)` found as `name` in
    /// `parent` (at `path`). Returns the node, existing or new.
    pub fn remember(
        &self,
        parent: Ino,
        name: &OsStr,
        path: Arc<[u8]>,
        fd: OwnedFd,
        stat: &Stat,
    ) -> Arc<Node> {
        self.remember_as(parent, name, path, fd, stat, false)
    }

    /// [`Inodes::remember`] for a staged new file, whose descriptor is never dropped.
    pub fn remember_pinned(
        &self,
        parent: Ino,
        name: &OsStr,
        path: Arc<[u8]>,
        fd: OwnedFd,
        stat: &Stat,
    ) -> Arc<Node> {
        self.remember_as(parent, name, path, fd, stat, true)
    }

    fn remember_as(
        &self,
        parent: Ino,
        name: &OsStr,
        path: Arc<[u8]>,
        fd: OwnedFd,
        stat: &Stat,
        pinned: bool,
    ) -> Arc<Node> {
        let kind = Kind::of(stat);
        let (dev, ino) = (stat.st_dev, stat.st_ino);
        let linked = kind != Kind::Dir && stat.st_nlink > 1;
        let key = if linked {
            Key::Linked(Box::new((dev, ino, path.clone())))
        } else {
            Key::Object(dev, ino)
        };
        let mut t = self.table.write();
        if let Some(node) = t.by_key.get(&key).and_then(|i| t.nodes.get(i)).cloned() {
            node.lookups.fetch_add(1, Ordering::Relaxed);
            let moved = {
                let loc = node.loc.read();
                loc.parent != parent || loc.name() != name
            };
            if moved && !linked {
                let old = node.path();
                node.relocate(Location::new(parent, name, path.clone()));
                if kind == Kind::Dir {
                    reparent_descendants(&t, &old, &path);
                }
            }
            drop(t);
            // The descriptor just found spares a later lookup when the node had none.
            self.hold(&node, fd);
            return node;
        }
        let kind = NodeKind::Backed(RwLock::new(Backing { kind, dev, ino }));
        let loc = Location::new(parent, name, path);
        let node = t.insert_new(key, kind, loc, pinned);
        drop(t);
        self.hold(&node, fd);
        node
    }

    /// The `_PERMISSIONS.md` node of directory `dir` (one per directory), with a reference.
    pub fn permissions(&self, dir: Ino, path: Arc<[u8]>, name: &OsStr) -> Arc<Node> {
        self.virtual_node(Key::Permissions(dir), dir, name, path, || {
            NodeKind::Permissions { dir }
        })
    }

    /// The filtered view node of the `/.relay` file `fd`, with a reference.
    pub fn relay_view(
        &self,
        parent: Ino,
        name: &OsStr,
        path: Arc<[u8]>,
        view: RelayView,
        fd: OwnedFd,
    ) -> Arc<Node> {
        let fd = Arc::new(fd);
        let node = self.virtual_node(Key::View(parent, view as u8), parent, name, path, || {
            NodeKind::RelayView {
                fd: RwLock::new(fd.clone()),
                view,
            }
        });
        // A node already held follows the file now at that name.
        if let NodeKind::RelayView { fd: current, .. } = &node.kind {
            *current.write() = fd;
        }
        node
    }

    fn virtual_node(
        &self,
        key: Key,
        parent: Ino,
        name: &OsStr,
        path: Arc<[u8]>,
        kind: impl FnOnce() -> NodeKind,
    ) -> Arc<Node> {
        let mut t = self.table.write();
        if let Some(node) = t.by_key.get(&key).and_then(|i| t.nodes.get(i)).cloned() {
            node.lookups.fetch_add(1, Ordering::Relaxed);
            return node;
        }
        let loc = Location::new(parent, name, path);
        t.insert_new(key, kind(), loc, true)
    }

    /// The node of the mirror object `(dev, ino)`, if one is held.
    pub fn find(&self, dev: u64, ino: u64) -> Option<Ino> {
        self.table
            .read()
            .by_key
            .get(&Key::Object(dev, ino))
            .copied()
    }

    /// One more kernel reference to an existing node.
    pub fn add_ref(&self, ino: Ino) {
        let t = self.table.write();
        if let Some(node) = t.nodes.get(&ino) {
            node.lookups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The kernel dropped `n` references to `ino`; the node goes away at zero.
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut t = self.table.write();
        let Some(node) = t.nodes.get(&ino).cloned() else {
            return;
        };
        // Counts only change under the exclusive table lock, so load-then-store is exact.
        let left = node.lookups.load(Ordering::Relaxed).saturating_sub(n);
        node.lookups.store(left, Ordering::Relaxed);
        if left == 0 {
            t.nodes.remove(&ino);
            if t.by_key.get(&node.key) == Some(&ino) {
                t.by_key.remove(&node.key);
            }
        }
    }

    /// The guard renamed `ino` to `name` in `parent`: move it and, for a directory, everything
    /// below it.
    pub fn moved(&self, ino: Ino, parent: Ino, name: &OsStr, path: Arc<[u8]>) {
        let t = self.table.read();
        let Some(node) = t.nodes.get(&ino).cloned() else {
            return;
        };
        let old = node.path();
        node.relocate(Location::new(parent, name, path.clone()));
        if node.is_dir() {
            reparent_descendants(&t, &old, &path);
        }
    }

    /// The file at `ino`'s path is now `fd` (a committed writeback replaced the inode, or put
    /// a staged file in place): its descriptor can be dropped and found by name from now on.
    pub fn replace_backing(&self, ino: Ino, fd: OwnedFd, stat: &Stat) {
        let node = {
            let mut t = self.table.write();
            let Some(node) = t.nodes.get(&ino).cloned() else {
                return;
            };
            let NodeKind::Backed(b) = &node.kind else {
                return;
            };
            let mut b = b.write();
            let old = Key::Object(b.dev, b.ino);
            if t.by_key.get(&old) == Some(&ino) {
                t.by_key.remove(&old);
            }
            *b = Backing {
                kind: Kind::of(stat),
                dev: stat.st_dev,
                ino: stat.st_ino,
            };
            t.by_key.insert(Key::Object(stat.st_dev, stat.st_ino), ino);
            drop(b);
            node
        };
        let had = node.held.write().replace(Arc::new(fd)).is_some();
        if node.is_pinned() {
            self.unpin(&node);
        } else if !had {
            self.enlist(&node);
        }
    }
}

/// Rewrite the paths of every node below `old` to be below `new`.
fn reparent_descendants(t: &Table, old: &[u8], new: &[u8]) {
    let mut prefix = old.to_vec();
    if prefix != b"/" {
        prefix.push(b'/');
    }
    for node in t.nodes.values() {
        let mut loc = node.loc.write();
        if loc.path.len() > prefix.len() && loc.path.starts_with(&prefix) {
            let mut p = new.to_vec();
            if p != b"/" {
                p.push(b'/');
            }
            p.extend_from_slice(&loc.path[prefix.len()..]);
            loc.path = p.into();
            node.moves.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::mirror::Mirror;
    use std::os::fd::AsFd;

    fn setup() -> (tempfile::TempDir, Mirror, Inodes) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        let m = Mirror::open(dir.path()).unwrap();
        let (fd, st) = m.root_node().unwrap();
        let inodes = Inodes::new(fd, &st, 64);
        (dir, m, inodes)
    }

    fn look(m: &Mirror, t: &Inodes, parent: &Node, name: &str) -> Arc<Node> {
        let (fd, st) = m
            .lookup(parent.fd().unwrap().as_fd(), OsStr::new(name))
            .unwrap();
        let path = child_path(&parent.path(), OsStr::new(name));
        t.remember(parent.ino, OsStr::new(name), path, fd, &st)
    }

    #[test]
    fn same_object_same_node_and_forget() {
        let (_d, m, t) = setup();
        let root = t.get(ROOT).unwrap();
        let a1 = look(&m, &t, &root, "a");
        let a2 = look(&m, &t, &root, "a");
        assert_eq!(a1.ino, a2.ino);
        assert_eq!(&*a1.path(), b"/a");
        let b = look(&m, &t, &a1, "b");
        let f = look(&m, &t, &b, "f");
        assert_eq!(&*f.path(), b"/a/b/f");
        t.forget(a1.ino, 1);
        assert!(t.get(a1.ino).is_some());
        t.forget(a1.ino, 1);
        assert!(t.get(a1.ino).is_none());
        assert!(t.get(ROOT).is_some());
    }

    #[test]
    fn rename_moves_descendant_paths() {
        let (_d, m, t) = setup();
        let root = t.get(ROOT).unwrap();
        let a = look(&m, &t, &root, "a");
        let b = look(&m, &t, &a, "b");
        let f = look(&m, &t, &b, "f");
        t.moved(a.ino, ROOT, OsStr::new("z"), Arc::from(&b"/z"[..]));
        assert_eq!(&*b.path(), b"/z/b");
        assert_eq!(&*f.path(), b"/z/b/f");
    }

    #[test]
    fn hard_links_get_a_node_per_path() {
        let (d, m, t) = setup();
        std::fs::hard_link(d.path().join("a/b/f"), d.path().join("g")).unwrap();
        let root = t.get(ROOT).unwrap();
        let a = look(&m, &t, &root, "a");
        let b = look(&m, &t, &a, "b");
        let f = look(&m, &t, &b, "f");
        let g = look(&m, &t, &root, "g");
        assert_ne!(f.ino, g.ino);
        assert_eq!(&*f.path(), b"/a/b/f");
        assert_eq!(&*g.path(), b"/g");
    }

    #[test]
    fn external_rename_updates_location() {
        let (d, m, t) = setup();
        let root = t.get(ROOT).unwrap();
        let a = look(&m, &t, &root, "a");
        std::fs::rename(d.path().join("a"), d.path().join("c")).unwrap();
        let c = look(&m, &t, &root, "c");
        assert_eq!(a.ino, c.ino);
        assert_eq!(&*a.path(), b"/c");
    }
}
