//! Directory listings: the entries a caller may see (mirror order, then staged new files),
//! and the generated `_PERMISSIONS.md` everywhere but inside version-controlled trees.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use fuser::FileType;

use super::core::{Caller, GuardFs};
use super::error::{Error, FsResult};
use super::gate::Ctx;
use super::handle_table::DirItem;
use super::inode::{Ino, Node, child_path};
use super::mirror::Kind;
use crate::authz::{self, Op, PERMISSIONS_FILE, Place, RelayItem};

/// How many ancestors are looked at for a version-control directory (see `in_vcs_tree`).
const MAX_VCS_DEPTH: usize = 256;

impl GuardFs {
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
        // Working trees are not deep; past this many levels up the walk stops (and counts as
        // not in one), so a deep tree costs a bounded walk per listing.
        for _ in 0..MAX_VCS_DEPTH {
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
}

pub(crate) fn kind_to_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::Device => FileType::CharDevice,
    }
}
