//! The guarded filesystem's state and the machinery every operation shares: resolving a node
//! (and checking it is still where its path says), its descriptor, and its place under the
//! rules.
//!
//! [`GuardFs`] answers the FUSE operations in plain Rust (`Result<_, Error>`), so it can be
//! driven and tested without a kernel; `crate::fuse` only translates. Each request resolves the
//! caller's session, asks the gate (`gate`) and only then goes to the mirror through
//! [`Mirror`]'s descriptors, with the gate's proof. The operations themselves are in the files
//! named for what they do (see the `fs` module).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::FileAttr;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use rustix::fs::Stat;

pub use super::error::{Error, FsResult};
pub use super::gate::{Caller, Stats};
use super::gate::{Ctx, Gate, Limits};
pub use super::handle_table::DirItem;
use super::handle_table::Handles;
use super::inode::{Ino, Inodes, Node, NodeKind, RelayView};
use super::mirror::{GuardArea, Kind, Mirror};
use super::relay_files;
use crate::audit::AuditLog;
use crate::authz::{self, Op, PERMISSIONS_FILE, Place, RelayItem};
use crate::session::Callers;
use crate::writeback::{PolicySet, ProviderAreas};

/// A lookup answer.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub attr: FileAttr,
    pub ttl: Duration,
}

/// Tunables of the guarded view.
#[derive(Clone, Debug)]
pub struct Options {
    /// Kernel entry/attribute cache time while one session acts in the mount.
    pub attr_ttl: Duration,
    /// Which paths are provider-backed.
    pub backing: ProviderAreas,
    /// Writebacks are refused when relayauth has not confirmed the session for this long.
    pub fail_closed_after: Duration,
    /// Everything but the root notice is refused after this long without a confirmation.
    pub max_staleness: Duration,
    /// `strict`: every read and write goes through the daemon (direct I/O).
    pub direct_io: bool,
    /// How many `O_PATH` descriptors the inode table may hold at once.
    pub max_held_fds: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            attr_ttl: Duration::from_secs(1),
            backing: ProviderAreas::default(),
            fail_closed_after: Duration::from_secs(30),
            max_staleness: Duration::from_secs(300),
            direct_io: true,
            max_held_fds: 4096,
        }
    }
}

/// A node the caller may see, with everything needed to decide more about it.
pub(crate) struct Seen {
    pub ctx: Ctx,
    pub node: Arc<Node>,
    pub place: Place,
    pub path: Arc<[u8]>,
}

/// How many `/.relay` record targets are remembered (each is a path, read from a small file).
const MAX_RECORD_TARGETS: usize = 65_536;

/// A runtime file's identity and version: (dev, ino, mtime seconds, mtime nanoseconds).
type RecordKey = (u64, u64, i64, i64);

/// The guarded filesystem. Its fields are the `fs` module's own: the operations live in the
/// files named for what they do (`lookup`, `dirs`, `modify`, `handles`, `xattrs`,
/// `generated`, `notice`, `owner`), all `impl GuardFs`, and nothing outside `fs` reaches in.
///
/// Lock order, where more than one is held: a staged handle's lock comes first (a commit
/// validates, places and forgets its `pending` entry and replaces the node's backing while it
/// holds its handle), then `pending` or the inode table's locks (see [`Inodes`] for their own
/// order). `pending`, `record_targets` and `notice_marks` are held for one lookup or insert
/// with nothing taken under them; the gate's policy lock is only held to clone an `Arc`.
#[derive(Debug)]
pub struct GuardFs {
    pub(super) mirror: Mirror,
    pub(super) inodes: Inodes,
    /// Every decision, its audit and the writeback gate.
    pub(super) gate: Gate,
    pub(super) opts: Options,
    pub(super) handles: Handles,
    /// Staged new files, not yet in the mirror: (parent, name) -> node.
    pub(super) pending: Mutex<FxHashMap<(Ino, OsString), Ino>>,
    /// The record a `/.relay` file is about, by (dev, ino, mtime); cleared past
    /// [`MAX_RECORD_TARGETS`] entries (a forgotten entry is only read again).
    record_targets: Mutex<FxHashMap<RecordKey, Option<Vec<u8>>>>,
    pub(super) root_stat: Stat,
    /// The guard's staging and quarantine folders.
    pub(super) area: GuardArea,
    /// (session serial, directory) pairs whose `_PERMISSIONS.md` that session removed.
    pub(super) notice_marks: Mutex<rustc_hash::FxHashSet<(u64, Ino)>>,
    /// Rendered notices by (session serial, directory), served again while unchanged.
    pub(super) notices: super::rendered::Rendered,
    /// The same moment as a time stamp (the times shown for directories whose entries are all
    /// hidden).
    pub(super) started_at: SystemTime,
    /// The daemon runs as root (it can give new objects to their creators).
    pub(super) as_root: bool,
    pub(super) daemon_gid: u32,
    /// Plain mirror files are opened for kernel passthrough (`--io passthrough`, switched on
    /// once the kernel accepted it at `init`).
    pub(super) passthrough: std::sync::atomic::AtomicBool,
}

impl GuardFs {
    /// Open the guarded view of `mirror` for `callers`.
    pub fn new(
        mirror: Mirror,
        callers: Arc<Callers>,
        policies: PolicySet,
        audit: Option<Arc<AuditLog>>,
        opts: Options,
    ) -> io::Result<GuardFs> {
        let (root_fd, root_stat) = mirror.root_node()?;
        let (area, interrupted) = mirror.guard_area()?;
        if interrupted > 0 {
            tracing::warn!(
                "{interrupted} writeback(s) were still open when the previous run of the guard \
                 ended (killed?): never committed, kept in /.relay/{}/quarantine under \
                 interrupted-* names",
                crate::authz::relay::GUARD_DIR
            );
        }
        Ok(GuardFs {
            inodes: Inodes::new(root_fd, &root_stat, opts.max_held_fds),
            mirror,
            gate: Gate::new(
                callers,
                policies,
                opts.backing.clone(),
                audit,
                Limits {
                    max_staleness: opts.max_staleness,
                    fail_closed_after: opts.fail_closed_after,
                },
            ),
            opts,
            handles: Handles::default(),
            pending: Mutex::new(FxHashMap::default()),
            record_targets: Mutex::new(FxHashMap::default()),
            root_stat,
            area,
            notice_marks: Mutex::new(rustc_hash::FxHashSet::default()),
            notices: super::rendered::Rendered::default(),
            started_at: SystemTime::now(),
            as_root: rustix::process::geteuid().is_root(),
            daemon_gid: rustix::process::getegid().as_raw(),
            passthrough: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Open plain mirror files for kernel passthrough from now on (the kernel accepted it), or
    /// stop doing so.
    pub fn set_passthrough(&self, on: bool) {
        self.passthrough
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether plain mirror files are opened for kernel passthrough.
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How the view was set up (cache times, limits).
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Every entry the kernel may cache, as `(parent, name, ino)` (see [`Inodes::known`]).
    pub fn cached_entries(&self) -> Vec<(Ino, std::ffi::OsString, Ino)> {
        self.inodes.known()
    }

    pub fn stats(&self) -> &Stats {
        self.gate.stats()
    }

    /// Replace the writeback policies (the file changed while mounted).
    pub fn set_policies(&self, policies: PolicySet) {
        self.gate.set_policies(policies);
    }

    /// The writeback policies in force.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.gate.policies()
    }

    pub(crate) fn ttl(&self) -> Duration {
        if self.gate.callers().session_count() > 1 {
            Duration::ZERO
        } else {
            self.opts.attr_ttl
        }
    }

    /// The node `ino` as this caller sees it: `ENOENT` unless it is visible to them now.
    pub(crate) fn visible_node(&self, caller: &Caller, ino: Ino) -> FsResult<Seen> {
        let ctx = self.gate.ctx(caller);
        let node = self.located(ino)?;
        let place = self.place_of_node(&node)?;
        let path = node.path();
        if !self.gate.decide(&ctx, &path, &place, Op::See).allowed() {
            return Err(Error::ENOENT);
        }
        Ok(Seen {
            ctx,
            node,
            place,
            path,
        })
    }

    /// The path of `name` in the directory `dir`: `ENAMETOOLONG` past `NAME_MAX`/`PATH_MAX`.
    pub(crate) fn child_of(&self, dir: &Node, name: &OsStr) -> FsResult<Arc<[u8]>> {
        super::inode::checked_child_path(&dir.path(), name).map_err(Error::of)
    }

    /// The node `ino`, checked to still be where its path says, so nothing is ever decided on
    /// a path it left. A directory (or file) moved in the mirror behind the guard's back is
    /// `ENOENT` when its path holds nothing now (moved into a hidden area, say: as if it had
    /// been removed from the caller's view), and `ESTALE` when something else holds the path
    /// (the syncer's replacement, a directory moved aside and made again, a writeback's
    /// exchange briefly holding the old file in the staging area): the kernel then looks the
    /// name up again and retries on what is there now, as a native filesystem would have
    /// resolved the name. A staged new file is checked through its directory (it is not in
    /// the mirror yet); a generated file through the directory it describes.
    pub(crate) fn located(&self, ino: Ino) -> FsResult<Arc<Node>> {
        let node = self.node(ino)?;
        let anchor = match &node.kind {
            // Pinned: the root (returned below) or a staged new file, checked through its
            // directory. (A flag, not the pending table: this runs on every request.)
            NodeKind::Backed(_) if node.is_pinned() => self.node(node.location().parent)?,
            NodeKind::Backed(_) => node.clone(),
            NodeKind::Permissions { dir } => self.node(*dir)?,
            NodeKind::RelayView { .. } => return Ok(node),
        };
        if anchor.ino == super::inode::ROOT {
            return Ok(node);
        }
        let fd = self.fd_of(&anchor)?;
        let here = match self.mirror.still_at(fd.as_fd(), &anchor.path()) {
            Some(here) => here,
            None => self.chain_in_place(&anchor),
        };
        if here {
            Ok(node)
        } else if self.mirror.occupied(&anchor.path()) {
            Err(Error::ESTALE)
        } else {
            Err(Error::ENOENT)
        }
    }

    /// The slow form of the location check, for paths too long for the kernel to name: each
    /// ancestor's name, looked up in its parent, must still be that very object.
    fn chain_in_place(&self, node: &Arc<Node>) -> bool {
        let mut cur = node.clone();
        for _ in 0..=super::inode::PATH_MAX / 2 {
            if cur.ino == super::inode::ROOT {
                return true;
            }
            let loc = cur.location();
            let (Some(b), Some(parent)) = (cur.backing(), self.inodes.get(loc.parent)) else {
                return false;
            };
            let Ok(pfd) = self.fd_of(&parent) else {
                return false;
            };
            match self.mirror.lookup(pfd.as_fd(), loc.name()) {
                Ok((_, st)) if (st.st_dev, st.st_ino) == (b.dev, b.ino) => {}
                _ => return false,
            }
            cur = parent;
        }
        false
    }

    /// Whether `node` is a staged new file (not in the mirror yet).
    pub(crate) fn pending_node(&self, node: &Node) -> bool {
        let loc = node.location();
        self.pending
            .lock()
            .get(&(loc.parent, loc.name().to_owned()))
            == Some(&node.ino)
    }

    pub(crate) fn node(&self, ino: Ino) -> FsResult<Arc<Node>> {
        self.inodes.get(ino).ok_or(Error::ENOENT)
    }

    pub(crate) fn dir_fd(&self, node: &Node) -> FsResult<Arc<OwnedFd>> {
        if !node.is_dir() {
            return Err(Error::ENOTDIR);
        }
        self.fd_of(node)
    }

    /// The `O_PATH` descriptor of a mirror object (or the file behind a relay view). When the
    /// table dropped it, it is found again from the nearest ancestor still held, one name at a
    /// time, each checked to be the very object the node stands for: a name that now holds
    /// something else is `ESTALE` (the node is not where it was; see [`GuardFs::located`]).
    pub(crate) fn fd_of(&self, node: &Node) -> FsResult<Arc<OwnedFd>> {
        if let Some(fd) = node.fd() {
            return Ok(fd);
        }
        if node.backing().is_none() {
            return Err(Error::ENOENT);
        }
        // The chain of nodes without a descriptor, up to the first with one.
        let mut chain = vec![self.node(node.ino)?];
        let mut base = loop {
            let last = chain.last().ok_or(Error::ENOENT)?;
            if last.ino == super::inode::ROOT || chain.len() > super::inode::PATH_MAX {
                return Err(Error::ENOENT);
            }
            let parent = self.node(last.location().parent)?;
            match parent.fd() {
                Some(fd) => break fd,
                None => chain.push(parent),
            }
        };
        while let Some(n) = chain.pop() {
            let b = n.backing().ok_or(Error::ENOENT)?;
            let (fd, st) = self.mirror.lookup(base.as_fd(), n.location().name())?;
            if (st.st_dev, st.st_ino, Kind::of(&st)) != (b.dev, b.ino, b.kind) {
                return Err(Error::ESTALE);
            }
            base = self.inodes.hold(&n, fd);
        }
        Ok(base)
    }

    /// The place of `path` (named `name`); for `/.relay` records it reads what the record is
    /// about from `fd`.
    pub(crate) fn place(
        &self,
        path: &[u8],
        name: &OsStr,
        found: Option<(BorrowedFd<'_>, &Stat)>,
    ) -> Place {
        if name.as_bytes() == PERMISSIONS_FILE.as_bytes() {
            return Place::PermissionsFile;
        }
        let Some(mut item) = authz::classify_relay(path) else {
            return Place::Content;
        };
        if item.needs_target()
            && let Some((fd, st)) = found
        {
            let key = (st.st_dev, st.st_ino, st.st_mtime, st.st_mtime_nsec as i64);
            let cached = self.record_targets.lock().get(&key).cloned();
            let target = match cached {
                Some(t) => t,
                None => {
                    let rel = String::from_utf8_lossy(&path[authz::relay::RELAY_ROOT.len() + 1..])
                        .into_owned();
                    let t = relay_files::record_target(
                        &self.mirror,
                        &rel,
                        fd,
                        Kind::of(st) == Kind::Dir,
                    );
                    let mut cache = self.record_targets.lock();
                    if cache.len() > MAX_RECORD_TARGETS {
                        cache.clear();
                    }
                    cache.insert(key, t.clone());
                    t
                }
            };
            item = RelayItem::Record { target };
        }
        Place::Relay(item)
    }

    /// The place of a node already in the table.
    pub(crate) fn place_of_node(&self, node: &Node) -> FsResult<Place> {
        let loc = node.location();
        match &node.kind {
            NodeKind::Permissions { .. } => Ok(Place::PermissionsFile),
            NodeKind::RelayView { view, .. } => Ok(Place::Relay(match view {
                RelayView::State => RelayItem::State,
                RelayView::DeniedLog => RelayItem::DeniedLog,
            })),
            NodeKind::Backed(_) => {
                if authz::classify_relay(&loc.path).is_some_and(|i| i.needs_target()) {
                    let fd = self.fd_of(node)?;
                    let st = self.mirror.stat(fd.as_fd())?;
                    Ok(self.place(&loc.path, loc.name(), Some((fd.as_fd(), &st))))
                } else {
                    Ok(self.place(&loc.path, loc.name(), None))
                }
            }
        }
    }

    /// Everything behind `fd` (at most `cap` bytes, else `EFBIG`), read for the guard's own
    /// checks: a payload being validated, a schema.
    pub(crate) fn read_all(&self, fd: BorrowedFd<'_>, cap: u64) -> FsResult<Vec<u8>> {
        use std::io::Read;
        let f = self.mirror.inspect(fd)?;
        let mut buf = Vec::new();
        f.take(cap + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > cap {
            return Err(Error::EFBIG);
        }
        Ok(buf)
    }
}
