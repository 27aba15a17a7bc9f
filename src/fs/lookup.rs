//! Lookup and attributes: resolving a name for a caller, `getattr`, `readlink`, `access` and
//! `statfs`. A node's attributes carry permission bits made from the caller's rights (the same
//! decisions the operations make), and a directory whose entries are partly hidden shows
//! counts and times made from what the caller can see.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime};

use fuser::FileAttr;
use rustix::fs::{Access, Stat};

use super::attr::{self, Rights};
use super::core::{Caller, Entry, GuardFs, Seen};
use super::error::{Error, FsResult};
use super::gate::Ctx;
use super::inode::{Ino, Node, NodeKind, RelayView};
use super::mirror::{Kind, valid_name};
use crate::authz::{self, Op, PERMISSIONS_FILE, Place, RelayItem};

/// The name of the imagined child a directory's write bit is decided for (see `rights`).
const NO_NAME: u8 = 1;

impl GuardFs {
    /// The caller's rights on a mirror object, for its permission bits.
    fn rights(&self, ctx: &Ctx, path: &[u8], place: &Place, st: &Stat) -> Rights {
        match Kind::of(st) {
            Kind::Dir => {
                // A directory is writable when the caller may create in it: asked for a child
                // named by a byte no real name starts with (\x01), so that no grant for one
                // particular name decides for the directory as a whole.
                let mut probe = path.to_vec();
                if probe != b"/" {
                    probe.push(b'/');
                }
                probe.push(NO_NAME);
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
                // The write bit says what a write would meet, the writeback gate included.
                let write = self.gate.decide(ctx, path, place, Op::Write).allowed()
                    && self
                        .gate
                        .writeback_refusal(ctx, path, place, Kind::of(st), Op::Write)
                        .is_none();
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
}
