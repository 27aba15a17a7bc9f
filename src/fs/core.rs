//! The guarded filesystem: every request is authorized before the mirror is touched.
//!
//! [`GuardFs`] answers the FUSE operations in plain Rust (`Result<_, Error>`), so it can be
//! driven and tested without a kernel; `crate::fuse` only translates. Each request resolves the
//! caller's session, asks [`crate::authz::decide`] and only then goes to the mirror through
//! [`Mirror`]'s descriptors. The audited operations (open, create, unlink, rename, mkdir,
//! setattr) write one event each, with the sponsor chain.
//!
//! This file holds the shared machinery and the read-side operations (lookup, getattr,
//! readlink, directories, access, statfs, xattrs); `modify` holds the namespace changes and
//! `handles` the open files and staged writebacks.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use rustix::fs::{Access, Stat};

use super::attr::{self, Rights};
pub use super::error::{Error, FsResult};
use super::gate::{Allowed, Change, Ctx, Gate, Limits};
pub use super::gate::{Caller, Stats};
pub use super::handle_table::DirItem;
use super::handle_table::Handles;
use super::inode::{Ino, Inodes, Node, NodeKind, RelayView, child_path};
use super::mirror::{GuardArea, Kind, Mirror, valid_name};
use super::relay_files;
use crate::audit::AuditLog;
use crate::authz::{self, Op, PERMISSIONS_FILE, Place, RelayItem};
use crate::permissions::{self, EntryKind, Listed};
use crate::session::{Callers, State};
use crate::writeback::{Backing, PolicySet};

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
    pub backing: Backing,
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
            backing: Backing::default(),
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

/// A runtime file's identity and version: (dev, ino, mtime seconds, mtime nanoseconds).
type RecordKey = (u64, u64, i64, i64);

/// The guarded filesystem.
#[derive(Debug)]
pub struct GuardFs {
    pub(crate) mirror: Mirror,
    pub(crate) inodes: Inodes,
    /// Every decision, its audit and the writeback gate.
    pub(crate) gate: Gate,
    pub(crate) opts: Options,
    pub(crate) handles: Handles,
    /// Staged new files, not yet in the mirror: (parent, name) -> node.
    pub(crate) pending: Mutex<FxHashMap<(Ino, OsString), Ino>>,
    /// The record a `/.relay` file is about, by (dev, ino, mtime).
    record_targets: Mutex<FxHashMap<RecordKey, Option<Vec<u8>>>>,
    pub(crate) root_stat: Stat,
    /// The guard's staging and quarantine folders.
    pub(crate) area: GuardArea,
    /// (session serial, directory) pairs whose `_PERMISSIONS.md` that session removed.
    pub(crate) notice_marks: Mutex<rustc_hash::FxHashSet<(u64, Ino)>>,
    /// The same moment as a time stamp (the times shown for directories whose entries are all
    /// hidden).
    started_at: SystemTime,
    /// The daemon runs as root (it can give new objects to their creators).
    as_root: bool,
    daemon_gid: u32,
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
        let area = mirror.guard_area()?;
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
            started_at: SystemTime::now(),
            as_root: rustix::process::geteuid().is_root(),
            daemon_gid: rustix::process::getegid().as_raw(),
        })
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

    /// Whether the daemon runs as root on behalf of a caller with other ids than its own.
    fn acts_for_another(&self, caller: &Caller) -> bool {
        self.as_root && (caller.uid != self.gate.callers().owner() || caller.gid != self.daemon_gid)
    }

    /// Make a new object (behind `fd`, created in a directory whose stat is `dir`) belong to
    /// `caller`, as a native filesystem would: when the daemon runs as root it can, and does, so
    /// a file another user creates through the mount is theirs, not root's. A setgid directory
    /// keeps its group, as the kernel already gave it. As any other user the daemon cannot, and
    /// new objects belong to it (the README says so).
    pub(crate) fn give_to(
        &self,
        proof: &Allowed,
        caller: &Caller,
        fd: BorrowedFd<'_>,
        dir: &Stat,
    ) -> FsResult<()> {
        if !self.acts_for_another(caller) {
            return Ok(());
        }
        let gid = (dir.st_mode & libc::S_ISGID == 0).then_some(caller.gid);
        Ok(self.mirror.chown(proof, fd, Some(caller.uid), gid)?)
    }

    /// Run `make` (a `mkdirat` or `symlinkat` and the lookup of what it made) with this
    /// thread's filesystem ids set to `caller`'s when the daemon runs as root for someone else,
    /// so the kernel creates the object as the caller's. Nothing is chowned by name afterwards:
    /// the name could already hold another object (swapped in by someone who can write the
    /// mirror), which would then be given away. The ids are per thread and restored before
    /// returning.
    pub(crate) fn make_as<T>(&self, caller: &Caller, make: impl FnOnce() -> T) -> T {
        if !self.acts_for_another(caller) {
            return make();
        }
        struct Restore(u32);
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: setfsuid/setfsgid change only this thread's filesystem ids.
                unsafe {
                    libc::setfsuid(0);
                    libc::setfsgid(self.0);
                }
            }
        }
        let _restore = Restore(self.daemon_gid);
        // SAFETY: as above; the previous ids come back when `_restore` drops.
        unsafe {
            libc::setfsgid(caller.gid);
            libc::setfsuid(caller.uid);
        }
        make()
    }

    /// Give a staged copy the owner and group of the file it replaces (root only; see
    /// [`GuardFs::give_to`]), so a writeback never changes who owns a file.
    pub(crate) fn keep_owner(&self, staged: &std::fs::File, like: &Stat) -> FsResult<()> {
        if !self.as_root {
            return Ok(());
        }
        Ok(self
            .mirror
            .own_staged(&self.area, staged, like.st_uid, like.st_gid)?)
    }

    /// Whether some active session of this mount may write, replace or delete the ordinary
    /// content path `path`.
    pub(crate) fn changeable_by_any_session(&self, path: &[u8]) -> bool {
        let now = SystemTime::now();
        self.gate.callers().sessions().iter().any(|s| {
            s.is_active(now) && {
                let grants = s.grants();
                [Op::Write, Op::Create, Op::Delete]
                    .into_iter()
                    .any(|op| authz::decide(grants.scopes(), path, &Place::Content, op).allowed())
            }
        })
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

    /// The node `ino`, checked to still be where its path says: a directory (or file) moved
    /// in the mirror behind the guard's back (into a hidden area, say) is `ENOENT` until it
    /// is looked up again where it is now, so nothing is ever decided on a path it left. A
    /// staged new file is checked through its directory (it is not in the mirror yet); a
    /// generated file through the directory it describes.
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
        if here { Ok(node) } else { Err(Error::ENOENT) }
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
            match self.mirror.lookup(pfd.as_fd(), &loc.name) {
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
        self.pending.lock().get(&(loc.parent, loc.name)) == Some(&node.ino)
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
    /// something else is `ENOENT` (the node is not where it was).
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
            let (fd, st) = self.mirror.lookup(base.as_fd(), &n.location().name)?;
            if (st.st_dev, st.st_ino, Kind::of(&st)) != (b.dev, b.ino, b.kind) {
                return Err(Error::ENOENT);
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
                    if cache.len() > 65_536 {
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
                    Ok(self.place(&loc.path, &loc.name, Some((fd.as_fd(), &st))))
                } else {
                    Ok(self.place(&loc.path, &loc.name, None))
                }
            }
        }
    }

    /// The caller's rights on a mirror object, for its permission bits.
    fn rights(&self, ctx: &Ctx, path: &[u8], place: &Place, st: &Stat) -> Rights {
        match Kind::of(st) {
            Kind::Dir => {
                let mut probe = path.to_vec();
                if probe != b"/" {
                    probe.push(b'/');
                }
                probe.push(1);
                let write = matches!(place, Place::Content)
                    && self
                        .gate
                        .decide(ctx, &probe, &Place::Content, Op::Create)
                        .allowed();
                Rights {
                    read: true,
                    write,
                    exec: true,
                }
            }
            _ => {
                let read = self.gate.decide(ctx, path, place, Op::Read).allowed();
                let write = self.gate.decide(ctx, path, place, Op::Write).allowed();
                Rights {
                    read,
                    write,
                    exec: read && st.st_mode & 0o111 != 0,
                }
            }
        }
    }

    /// Whether a write to the notice of directory `dir` is accepted (and discarded).
    pub(crate) fn notice_writable(&self, ctx: &Ctx, dir: Ino) -> bool {
        self.inodes
            .get(dir)
            .is_some_and(|d| self.notice_accepts(ctx, &d.path(), Op::Create))
    }

    /// The attributes of `node` for this caller (its visibility already decided).
    pub(crate) fn attr_of(&self, ctx: &Ctx, node: &Node, place: &Place) -> FsResult<FileAttr> {
        match &node.kind {
            NodeKind::Permissions { dir } => {
                let text = self.render_permissions(ctx, node)?;
                let writable = self.notice_writable(ctx, *dir);
                Ok(attr::generated(
                    node.ino,
                    text.len(),
                    &self.root_stat,
                    writable,
                ))
            }
            NodeKind::RelayView { .. } => {
                let content = self.relay_view_content(ctx, node)?;
                Ok(attr::generated(
                    node.ino,
                    content.len(),
                    &self.root_stat,
                    false,
                ))
            }
            NodeKind::Backed(_) => {
                let fd = self.fd_of(node)?;
                let st = self.mirror.stat(fd.as_fd())?;
                Ok(self.backed_attr(ctx, node, place, &st))
            }
        }
    }

    /// The attributes of a mirror object whose stat is at hand.
    pub(crate) fn backed_attr(&self, ctx: &Ctx, node: &Node, place: &Place, st: &Stat) -> FileAttr {
        let path = node.path();
        let rights = self.rights(ctx, &path, place, st);
        let mut attr = attr::from_stat(node.ino, st, rights);
        if Kind::of(st) == Kind::Dir {
            self.hide_hidden_in_dir_attr(ctx, node, &path, place, &mut attr);
        }
        attr
    }

    /// A directory's link count, size and times count every entry in it, hidden ones too, so
    /// where the caller may not see everything below a directory they are made from what it
    /// can see: 2 plus the visible subdirectories, one block, and the latest time among the
    /// visible entries (the mount's start when there are none).
    fn hide_hidden_in_dir_attr(
        &self,
        ctx: &Ctx,
        node: &Node,
        path: &[u8],
        place: &Place,
        attr: &mut FileAttr,
    ) {
        let whole = *place == Place::Content
            && ctx.active()
            && ctx
                .grants
                .as_ref()
                .is_some_and(|g| g.scopes().all_visible_below(path));
        if whole {
            return;
        }
        let Ok(fd) = self.fd_of(node) else {
            return;
        };
        let children = self
            .visible_children(ctx, node, fd.as_fd())
            .unwrap_or_default();
        let mut latest: Option<(SystemTime, SystemTime)> = None;
        let mut subdirs = 0u32;
        for (name, kind, _) in &children {
            if *kind == Kind::Dir {
                subdirs += 1;
            }
            let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
            if let Ok(st) = rustix::fs::statat(fd.as_fd(), name, flags) {
                let m = attr::time(st.st_mtime, st.st_mtime_nsec as i64);
                let c = attr::time(st.st_ctime, st.st_ctime_nsec as i64);
                latest = Some(latest.map_or((m, c), |(lm, lc)| (lm.max(m), lc.max(c))));
            }
        }
        let latest = latest.unwrap_or((self.started_at, self.started_at));
        attr.nlink = 2 + subdirs;
        attr.size = 4096;
        attr.blocks = 8;
        attr.mtime = latest.0;
        attr.atime = latest.0;
        attr.ctime = latest.1;
    }

    // ------------------------------------------------------------------ lookup and attributes

    pub fn lookup(&self, caller: &Caller, parent: Ino, name: &OsStr) -> FsResult<Entry> {
        let ctx = self.gate.ctx(caller);
        let dir = self.located(parent)?;
        let dir_fd = self.dir_fd(&dir)?;
        if !valid_name(name) {
            return Err(Error::ENOENT);
        }
        let path = self.child_of(&dir, name)?;
        if name.as_bytes() == PERMISSIONS_FILE.as_bytes() {
            let d = self
                .gate
                .decide(&ctx, &path, &Place::PermissionsFile, Op::See);
            if !d.allowed() || self.notice_removed(&ctx, parent) {
                return Err(Error::ENOENT);
            }
            let node = self.inodes.permissions(parent, path, name);
            let attr = self.attr_of(&ctx, &node, &Place::PermissionsFile)?;
            return Ok(Entry {
                attr,
                ttl: Duration::ZERO,
            });
        }
        let pending = self.pending.lock().get(&(parent, name.to_owned())).copied();
        if let Some(ino) = pending
            && let Some(node) = self.inodes.get(ino)
        {
            let d = self.gate.decide(&ctx, &path, &Place::Content, Op::See);
            if !d.allowed() {
                return Err(Error::ENOENT);
            }
            let attr = self.attr_of(&ctx, &node, &Place::Content)?;
            self.inodes.add_ref(ino);
            return Ok(Entry {
                attr,
                ttl: self.ttl(),
            });
        }
        let relay = authz::classify_relay(&path);
        if relay.is_none() {
            // Content: decided on the path alone, before the mirror is touched.
            if !self
                .gate
                .decide(&ctx, &path, &Place::Content, Op::See)
                .allowed()
            {
                return Err(Error::ENOENT);
            }
        } else if matches!(relay, Some(RelayItem::Guard | RelayItem::Other)) {
            return Err(Error::ENOENT);
        }
        let (fd, st) = self.mirror.lookup(dir_fd.as_fd(), name)?;
        let place = self.place(&path, name, Some((fd.as_fd(), &st)));
        if relay.is_some() && !self.gate.decide(&ctx, &path, &place, Op::See).allowed() {
            return Err(Error::ENOENT);
        }
        let node = match (&place, Kind::of(&st)) {
            (Place::Relay(RelayItem::State), Kind::File) => {
                self.inodes
                    .relay_view(parent, name, path, RelayView::State, fd)
            }
            (Place::Relay(RelayItem::DeniedLog), Kind::File) => {
                self.inodes
                    .relay_view(parent, name, path, RelayView::DeniedLog, fd)
            }
            _ => self.inodes.remember(parent, name, path, fd, &st),
        };
        let attr = match node.kind {
            // The stat of the object just found is the node's (same key, same object).
            NodeKind::Backed(_) => self.backed_attr(&ctx, &node, &place, &st),
            _ => self.attr_of(&ctx, &node, &place)?,
        };
        let ttl = if matches!(node.kind, NodeKind::Backed(_)) {
            self.ttl()
        } else {
            Duration::ZERO
        };
        Ok(Entry { attr, ttl })
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes.forget(ino, n);
    }

    pub fn getattr(
        &self,
        caller: &Caller,
        ino: Ino,
        fh: Option<u64>,
    ) -> FsResult<(FileAttr, Duration)> {
        // `fstat` of an open file answers from that file (a staged write with its staged
        // size), wherever its name has gone since: as natively, a removed or replaced file
        // that is still open can be asked about.
        if let Some(fh) = fh
            && let Some(st) = self.handles.stat_of(fh, ino)
        {
            let ctx = self.gate.ctx(caller);
            let node = self.node(ino)?;
            let place = self.place_of_node(&node)?;
            let path = node.path();
            if !self.gate.decide(&ctx, &path, &place, Op::See).allowed() {
                return Err(Error::ENOENT);
            }
            let rights = self.rights(&ctx, &path, &place, &st);
            return Ok((attr::from_stat(ino, &st, rights), Duration::ZERO));
        }
        let Seen {
            ctx,
            node,
            place,
            path: _,
        } = self.visible_node(caller, ino)?;
        let attr = self.attr_of(&ctx, &node, &place)?;
        let ttl = if matches!(node.kind, NodeKind::Backed(_)) {
            self.ttl()
        } else {
            Duration::ZERO
        };
        Ok((attr, ttl))
    }

    pub fn readlink(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<u8>> {
        let node = self.visible_node(caller, ino)?.node;
        let b = node.backing().ok_or(Error::EINVAL)?;
        if b.kind != Kind::Symlink {
            return Err(Error::EINVAL);
        }
        Ok(self.mirror.readlink(self.fd_of(&node)?.as_fd())?)
    }

    // ------------------------------------------------------------------ directories

    /// A snapshot of the visible entries of directory `ino`.
    pub fn list_dir(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<DirItem>> {
        let ctx = self.gate.ctx(caller);
        let dir = self.located(ino)?;
        let dir_fd = self.dir_fd(&dir)?;
        let place = self.place_of_node(&dir)?;
        let path = dir.path();
        if !self.gate.decide(&ctx, &path, &place, Op::See).allowed() {
            return Err(Error::ENOENT);
        }
        let parent_ino = dir.location().parent;
        let mut items = vec![
            DirItem {
                name: ".".into(),
                kind: FileType::Directory,
                ino,
            },
            DirItem {
                name: "..".into(),
                kind: FileType::Directory,
                ino: parent_ino,
            },
        ];
        for (name, kind, backing_ino) in self.visible_children(&ctx, &dir, dir_fd.as_fd())? {
            items.push(DirItem {
                name,
                kind: kind_to_type(kind),
                ino: backing_ino,
            });
        }
        // Inside a version-controlled tree the file is readable by name but not listed, so
        // `git status` stays clean and `git add -A` never commits it.
        // Listing a directory brings back a notice its lister removed (or never saw, in a
        // directory it made): `ls` always finds it.
        self.unmark_notice(&ctx, ino);
        if !self.in_vcs_tree(&dir) {
            items.push(DirItem {
                name: PERMISSIONS_FILE.into(),
                kind: FileType::RegularFile,
                ino: 0,
            });
        }
        Ok(items)
    }

    /// Whether `dir` is inside a version-controlled working tree (it or an ancestor holds
    /// `.git`, `.hg`, `.svn` or `.jj`), or inside such a metadata directory.
    fn in_vcs_tree(&self, dir: &Node) -> bool {
        let path = dir.path();
        let in_metadata = path.split(|&b| b == b'/').any(|seg| {
            crate::writeback::VCS_DIRS
                .iter()
                .any(|v| v.as_bytes() == seg)
        });
        if in_metadata {
            return true;
        }
        let mut node = self.inodes.get(dir.ino);
        for _ in 0..256 {
            let Some(n) = node else {
                return false;
            };
            if let Ok(fd) = self.fd_of(&n) {
                let found = crate::writeback::VCS_DIRS.iter().any(|v| {
                    rustix::fs::statat(fd.as_fd(), *v, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok()
                });
                if found {
                    return true;
                }
            }
            if n.ino == super::inode::ROOT {
                return false;
            }
            node = self.inodes.get(n.location().parent);
        }
        false
    }

    /// The names in `dir` this caller may see, with their kinds and the mirror's inode numbers
    /// (mirror order, then staged new files).
    pub(crate) fn visible_children(
        &self,
        ctx: &Ctx,
        dir: &Node,
        dir_fd: BorrowedFd<'_>,
    ) -> FsResult<Vec<(OsString, Kind, u64)>> {
        let dir_path = dir.path();
        let in_relay = authz::classify_relay(&child_path(&dir_path, OsStr::new("x"))).is_some();
        let mut out = Vec::new();
        for e in self.mirror.list(dir_fd)? {
            if e.name.as_bytes() == PERMISSIONS_FILE.as_bytes() {
                continue;
            }
            // Nothing past PATH_MAX is shown (it could not be looked up either).
            let Ok(path) = super::inode::checked_child_path(&dir_path, &e.name) else {
                continue;
            };
            // `/.relay` itself is judged by the `/.relay` rules, not by fs grants.
            let at_relay_root = dir_path.as_ref() == b"/" && e.name.as_bytes() == b".relay";
            let (place, kind) = if in_relay || at_relay_root {
                let item = authz::classify_relay(&path);
                if matches!(item, Some(RelayItem::Guard | RelayItem::Other) | None) {
                    continue;
                }
                let Ok((fd, st)) = self.mirror.lookup(dir_fd, &e.name) else {
                    continue;
                };
                (
                    self.place(&path, &e.name, Some((fd.as_fd(), &st))),
                    Kind::of(&st),
                )
            } else {
                let kind = match e.kind {
                    Some(k) => k,
                    None => match self.mirror.lookup(dir_fd, &e.name) {
                        Ok((_, st)) => Kind::of(&st),
                        Err(_) => continue,
                    },
                };
                (Place::Content, kind)
            };
            if self.gate.decide(ctx, &path, &place, Op::See).allowed() {
                out.push((e.name, kind, e.ino));
            }
        }
        let staged: Vec<OsString> = self
            .pending
            .lock()
            .keys()
            .filter(|(p, _)| *p == dir.ino)
            .map(|(_, n)| n.clone())
            .collect();
        for name in staged {
            if out.iter().any(|(n, _, _)| *n == name) {
                continue;
            }
            let path = child_path(&dir_path, &name);
            if self
                .gate
                .decide(ctx, &path, &Place::Content, Op::See)
                .allowed()
            {
                out.push((name, Kind::File, 0));
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ generated files

    /// `_PERMISSIONS.md` of the directory that `node` (a permissions node) belongs to.
    pub(crate) fn render_permissions(&self, ctx: &Ctx, node: &Node) -> FsResult<Vec<u8>> {
        let NodeKind::Permissions { dir } = node.kind else {
            return Err(Error::EINVAL);
        };
        let dir_node = self.node(dir)?;
        let dir_path = String::from_utf8_lossy(&dir_node.path()).into_owned();
        let (Some(grants), Some(state), Some(session)) = (&ctx.grants, &ctx.state, &ctx.session)
        else {
            return Ok(b"# Permissions\n\nThis process is not registered with the mount, so it may see nothing. Start it with `relayauth-mount run` and a token.\n".to_vec());
        };
        let listed: Vec<Listed> = if *state == State::Active {
            let fd = self.dir_fd(&dir_node)?;
            self.visible_children(ctx, &dir_node, fd.as_fd())?
                .into_iter()
                .map(|(name, kind, _)| Listed {
                    name: name.to_string_lossy().into_owned(),
                    kind: match kind {
                        Kind::File => EntryKind::File,
                        Kind::Dir => EntryKind::Dir,
                        Kind::Symlink => EntryKind::Symlink,
                        Kind::Special => EntryKind::Other,
                    },
                })
                .collect()
        } else {
            Vec::new()
        };
        let dir_fd = self.dir_fd(&dir_node)?;
        let judge = FsJudge {
            fs: self,
            ctx,
            dir_fd: dir_fd.as_fd(),
            scopes: grants.scopes(),
        };
        let denials = session.denials_in(&dir_path);
        let subject = permissions::Subject {
            grants,
            state,
            now: SystemTime::now(),
            denials: &denials,
        };
        let provider_backed = self.opts.backing.is_provider_area(&dir_path);
        let view = permissions::compute(
            subject,
            &dir_path,
            &listed,
            &judge,
            &self.gate.policies(),
            provider_backed,
        );
        Ok(permissions::render(&view).into_bytes())
    }

    /// The filtered content of a `/.relay` view node for this caller.
    pub(crate) fn relay_view_content(&self, ctx: &Ctx, node: &Node) -> FsResult<Vec<u8>> {
        let NodeKind::RelayView { fd, view } = &node.kind else {
            return Err(Error::EINVAL);
        };
        let fd = fd.read().clone();
        let raw = relay_files::read_runtime_file(&self.mirror, fd.as_fd());
        let Some(grants) = &ctx.grants else {
            return Ok(Vec::new());
        };
        let scopes = &grants.scopes();
        Ok(match view {
            RelayView::State => {
                let visible = |p: &[u8]| {
                    scopes.visible(p)
                        && scopes
                            .check_known(crate::scope::Requirement::SYNC_READ, p)
                            .is_some()
                };
                relay_files::filter_state(&raw, &visible)
            }
            RelayView::DeniedLog => {
                relay_files::filter_denied_log(&raw, &|p: &[u8]| scopes.visible(p))
            }
        })
    }

    // ------------------------------------------------------------------ access, statfs, xattrs

    /// `access(2)` answers from the caller's rights (the decisions), not from the mode bits:
    /// those also carry the mirror's own mode, whose owner may not be the caller.
    pub fn access(&self, caller: &Caller, ino: Ino, mask: Access) -> FsResult<()> {
        let Seen {
            ctx,
            node,
            place,
            path,
        } = self.visible_node(caller, ino)?;
        if mask == Access::EXISTS {
            return Ok(());
        }
        let rights = match &node.kind {
            NodeKind::Backed(_) => {
                let fd = self.fd_of(&node)?;
                let st = self.mirror.stat(fd.as_fd())?;
                self.rights(&ctx, &path, &place, &st)
            }
            // Generated files are readable by everyone who can see them; a write to the notice
            // is accepted (and discarded) where an ordinary file of its name could be made.
            NodeKind::Permissions { dir } => Rights {
                read: true,
                write: self.notice_writable(&ctx, *dir),
                exec: false,
            },
            NodeKind::RelayView { .. } => Rights {
                read: true,
                write: false,
                exec: false,
            },
        };
        let refused = (mask.contains(Access::READ_OK) && !rights.read)
            || (mask.contains(Access::WRITE_OK) && !rights.write)
            || (mask.contains(Access::EXEC_OK) && !rights.exec);
        if refused { Err(Error::EACCES) } else { Ok(()) }
    }

    pub fn statfs(&self) -> FsResult<rustix::fs::StatVfs> {
        Ok(self.mirror.statvfs()?)
    }

    /// The object an xattr call acts on, with the proof for `op` on it (a change to a regular
    /// file passes the writeback gate too).
    fn xattr_target(
        &self,
        caller: &Caller,
        ino: Ino,
        op: Op,
        operation: &str,
    ) -> FsResult<(Arc<OwnedFd>, Allowed, Option<Change>)> {
        let Seen {
            ctx,
            node,
            place,
            path,
        } = self.visible_node(caller, ino)?;
        let b = node.backing().ok_or(Error::ENOTSUP)?;
        if b.kind == Kind::Symlink || b.kind == Kind::Special {
            return Err(Error::ENOTSUP);
        }
        let op = if op == Op::Read && b.kind == Kind::Dir {
            Op::See
        } else {
            op
        };
        let (allowed, change) = if op == Op::Write {
            let allowed = self.gate.permit(&ctx, &path, &place, op, operation)?;
            let change = self.gate.change(&ctx, allowed.clone(), b.kind, operation)?;
            (allowed, Some(change))
        } else {
            let allowed = self
                .gate
                .check(&ctx, &path, &place, op)
                .map_err(|d| Error::of(d.errno().unwrap_or(libc::EACCES)))?;
            (allowed, None)
        };
        Ok((self.fd_of(&node)?, allowed, change))
    }

    pub fn getxattr(&self, caller: &Caller, ino: Ino, name: &OsStr) -> FsResult<Vec<u8>> {
        let (fd, proof, _) = self.xattr_target(caller, ino, Op::Read, "getxattr")?;
        match xattr_class(name) {
            XattrClass::User => {}
            XattrClass::Acl => return Err(Error::ENOTSUP),
            // Only `user.` attributes are shared through the view: the others (`trusted.`,
            // `security.`) describe the mirror's host, not the workspace.
            XattrClass::Other => return Err(Error::ENODATA),
        }
        Ok(self.mirror.getxattr(&proof, fd.as_fd(), name)?)
    }

    /// The `user.` attribute names only.
    pub fn listxattr(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<u8>> {
        let (fd, proof, _) = self.xattr_target(caller, ino, Op::Read, "listxattr")?;
        let all = self.mirror.listxattr(&proof, fd.as_fd())?;
        let mut out = Vec::with_capacity(all.len());
        for name in all.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if name.starts_with(b"user.") {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn setxattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        match xattr_class(name) {
            XattrClass::User => {}
            // As a filesystem without ACLs answers, so `cp -a` and `rsync -A` carry on.
            XattrClass::Acl => return Err(Error::ENOTSUP),
            XattrClass::Other => return Err(Error::EPERM),
        }
        let (fd, _, change) = self.xattr_target(caller, ino, Op::Write, "setxattr")?;
        let change = change.ok_or(Error::EACCES)?;
        let flags = rustix::fs::XattrFlags::from_bits_truncate(flags as u32);
        Ok(self
            .mirror
            .setxattr(&change, fd.as_fd(), name, value, flags)?)
    }

    pub fn removexattr(&self, caller: &Caller, ino: Ino, name: &OsStr) -> FsResult<()> {
        match xattr_class(name) {
            XattrClass::User => {}
            XattrClass::Acl => return Err(Error::ENOTSUP),
            XattrClass::Other => return Err(Error::EPERM),
        }
        let (fd, _, change) = self.xattr_target(caller, ino, Op::Write, "removexattr")?;
        let change = change.ok_or(Error::EACCES)?;
        Ok(self.mirror.removexattr(&change, fd.as_fd(), name)?)
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

/// Which extended attributes the view passes on.
enum XattrClass {
    /// `user.*`: passed on, decided like the file's content.
    User,
    /// `system.posix_acl_*`: the view has no ACLs (ENOTSUP, as such a filesystem answers).
    Acl,
    /// Everything else: neither listed nor shown nor set.
    Other,
}

fn xattr_class(name: &OsStr) -> XattrClass {
    let name = name.as_bytes();
    if name.starts_with(b"user.") {
        XattrClass::User
    } else if name.starts_with(b"system.posix_acl_") {
        XattrClass::Acl
    } else {
        XattrClass::Other
    }
}

/// Rights for `_PERMISSIONS.md`, from the same decisions the operations make: the caller's
/// decision, then, for a write or delete of a provider-backed file, the writeback gate.
struct FsJudge<'a> {
    fs: &'a GuardFs,
    ctx: &'a Ctx,
    dir_fd: BorrowedFd<'a>,
    scopes: &'a crate::scope::ScopeSet,
}

impl permissions::Judge for FsJudge<'_> {
    fn right(&self, path: &str, name: &str, kind: EntryKind, op: Op) -> permissions::Right {
        let p = path.as_bytes();
        let place = if authz::classify_relay(p).is_some_and(|i| i.needs_target()) {
            match self.fs.mirror.lookup(self.dir_fd, OsStr::new(name)) {
                Ok((fd, st)) => self.fs.place(p, OsStr::new(name), Some((fd.as_fd(), &st))),
                Err(_) => Place::Relay(RelayItem::Record { target: None }),
            }
        } else {
            self.fs.place(p, OsStr::new(name), None)
        };
        let d = self.fs.gate.decide(self.ctx, p, &place, op);
        let right = permissions::right(&d, self.scopes, path);
        if right.allowed
            && kind == EntryKind::File
            && place == Place::Content
            && matches!(op, Op::Write | Op::Delete)
            && let Err((_, why)) = self.fs.gate.writeback_check(self.ctx, path)
        {
            return permissions::Right {
                allowed: false,
                scope: None,
                lacks: None,
                why: Some(why),
            };
        }
        right
    }
}

pub(crate) fn kind_to_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Special => FileType::NamedPipe,
    }
}
