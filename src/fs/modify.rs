//! Namespace and metadata changes: mkdir, unlink, rmdir, symlink, rename, link, mknod, setattr.
//!
//! Each is decided before the mirror is touched, audited once, and, where it changes a
//! provider-backed file, also passes the writeback gate (policy, scope, freshness). A rename
//! needs delete on the source and create on the destination (plus write when the destination
//! exists); a file renamed onto a provider path is validated as the payload it becomes (a
//! private copy is validated and placed, so no descriptor open on the source can change it
//! afterwards), and an exchange touching a provider area is refused. A directory renamed into or out of a provider area answers `EXDEV`, so tools fall back to
//! copying file by file, each write checked on its own.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{FileAttr, TimeOrNow};
use rustix::fs::{OFlags, RenameFlags, Stat, Timestamps};

use super::core::{Caller, Entry, Error, FsResult, GuardFs, Seen};
use super::gate::{Allowed, Change, Ctx};
use super::inode::{Ino, NodeKind, parent_path};
use super::mirror::Kind;
use super::notice::is_notice;
use crate::audit::Outcome;
use crate::authz::{Decision, Forbidden, Op, PERMISSIONS_FILE, Place};
use crate::writeback::MAX_PAYLOAD;

fn timespec(t: TimeOrNow) -> rustix::fs::Timespec {
    match t {
        TimeOrNow::Now => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        TimeOrNow::SpecificTime(t) => {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            rustix::fs::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()),
            }
        }
    }
}

const OMIT: rustix::fs::Timespec = rustix::fs::Timespec {
    tv_sec: 0,
    tv_nsec: rustix::fs::UTIME_OMIT,
};

/// What `setattr` was asked to change.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

/// A name in a directory, decided: the directory's descriptor, the name's path and place, and
/// (for a change to an existing name) what the mirror holds there.
struct Child {
    dir_fd: std::sync::Arc<OwnedFd>,
    path: std::sync::Arc<[u8]>,
    place: Place,
    found: Option<Stat>,
    allowed: Allowed,
}

impl GuardFs {
    /// Decide a change to a new or existing name in `parent`: a refusal is audited, an allowed
    /// change is the caller's to audit (see [`GuardFs::decide_child`]).
    fn checked_child(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &OsStr,
        op: Op,
        operation: &str,
    ) -> FsResult<Child> {
        let dir = self.located(parent)?;
        let fd = self.dir_fd(&dir)?;
        let path = self.child_of(&dir, name)?;
        let (place, found) = if op == Op::Create {
            (self.place(&path, name, None), None)
        } else {
            match self.mirror.lookup(fd.as_fd(), name) {
                Ok((f, st)) => (self.place(&path, name, Some((f.as_fd(), &st))), Some(st)),
                Err(_) => (self.place(&path, name, None), None),
            }
        };
        let allowed = self
            .gate
            .check(ctx, &path, &place, op)
            .map_err(|d| self.gate.refuse(ctx, &path, &d, operation))?;
        Ok(Child {
            dir_fd: fd,
            path,
            place,
            found,
            allowed,
        })
    }

    /// Decide and audit a change to a new or existing name in `parent`.
    fn decide_child(
        &self,
        ctx: &Ctx,
        parent: Ino,
        name: &OsStr,
        op: Op,
        operation: &str,
    ) -> FsResult<Child> {
        let child = self.checked_child(ctx, parent, name, op, operation)?;
        self.gate
            .note(ctx, &child.path, operation, child.allowed.decision());
        Ok(child)
    }

    /// A new directory or symlink (`kind`) named `name` in `parent`, made by `make` once
    /// allowed.
    fn make_child(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        make: impl FnOnce(&Allowed, BorrowedFd<'_>) -> std::io::Result<(OwnedFd, Stat)>,
    ) -> FsResult<Entry> {
        let operation = match kind {
            Kind::Symlink => "symlink",
            Kind::Dir => "mkdir",
            _ => "mknod",
        };
        let ctx = self.gate.ctx(caller);
        if is_notice(name) && !self.notice_removed(&ctx, parent) {
            // The notice is there.
            return Err(Error::of(libc::EEXIST));
        }
        let child = self.decide_child(&ctx, parent, name, Op::Create, operation)?;
        if child.place != Place::Content {
            return Err(Error::EACCES);
        }
        if kind != Kind::Dir {
            self.refuse_provider_special(&ctx, &child.path, kind, operation)?;
        }
        let (nfd, st) = self.make_as(caller, || make(&child.allowed, child.dir_fd.as_fd()))?;
        let node = self.inodes.remember(parent, name, child.path, nfd, &st);
        if kind == Kind::Dir {
            // A directory its maker just created is empty to it, as natively, so `cp -r` and
            // `tar x` can create every name in it with O_EXCL, the notice's too; the notice shows
            // again once the maker lists the directory (see `notice`).
            self.mark_notice_removed(&ctx, node.ino);
        }
        let attr = self.backed_attr(&ctx, &node, &Place::Content, &st);
        Ok(Entry {
            attr,
            ttl: self.ttl(),
        })
    }

    pub fn mkdir(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        self.make_child(caller, parent, name, Kind::Dir, |proof, fd| {
            self.mirror.mkdir(proof, fd, name, mode & !umask & 0o777)
        })
    }

    pub fn symlink(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &OsStr,
        target: &std::path::Path,
    ) -> FsResult<Entry> {
        self.make_child(caller, parent, name, Kind::Symlink, |proof, fd| {
            self.mirror.symlink(proof, fd, name, target)
        })
    }

    /// Only a regular file can be provider content: a symbolic link at a provider path could
    /// make relayfile push whatever it points to, past every policy and schema. A FIFO or
    /// socket has no content to validate, and one anywhere in a provider area (under a
    /// temporary name too) would block whatever reads that directory's files, so they live in
    /// local roots only.
    fn refuse_provider_special(
        &self,
        ctx: &Ctx,
        path: &[u8],
        kind: Kind,
        operation: &str,
    ) -> FsResult<()> {
        let path = String::from_utf8_lossy(path);
        let backing = self.gate.backing();
        let in_area = kind.is_special()
            && backing.is_provider_area(path.rsplit_once('/').map_or("", |(dir, _)| dir));
        if !in_area && !backing.is_provider_backed(&path) {
            return Ok(());
        }
        let why = if kind == Kind::Symlink {
            "a symbolic link cannot be a writeback; write the content itself"
        } else {
            "only a regular file can be a writeback; a FIFO or socket belongs in a local root"
        };
        Err(self
            .gate
            .refuse_writeback(ctx, &path, operation, why, None, Error::EACCES))
    }

    pub fn unlink(&self, caller: &Caller, parent: Ino, name: &OsStr) -> FsResult<()> {
        let ctx = self.gate.ctx(caller);
        if is_notice(name) {
            let dir = self.located(parent)?;
            if self
                .gate
                .decide(&ctx, &dir.path(), &Place::Content, Op::See)
                .allowed()
                && self.notice_accepts(&ctx, &dir.path(), Op::Delete)
            {
                // `rm -rf` empties the directory: the notice goes away for this session only.
                self.mark_notice_removed(&ctx, parent);
                self.note_discarded(&ctx, &dir.path(), Op::Delete, "unlink");
                return Ok(());
            }
        }
        let child = self.decide_child(&ctx, parent, name, Op::Delete, "unlink")?;
        // A staged new file that was never committed only has to be forgotten.
        if self
            .pending
            .lock()
            .remove(&(parent, name.to_owned()))
            .is_some()
        {
            return Ok(());
        }
        let st = child.found.ok_or(Error::ENOENT)?;
        let change = self
            .gate
            .change(&ctx, child.allowed, Kind::of(&st), "unlink")?;
        Ok(self.mirror.unlink(&change, child.dir_fd.as_fd(), name)?)
    }

    pub fn rmdir(&self, caller: &Caller, parent: Ino, name: &OsStr) -> FsResult<()> {
        let ctx = self.gate.ctx(caller);
        if is_notice(name) {
            return Err(Error::ENOTDIR);
        }
        // Audited once, when the outcome is known: a directory that only holds what the caller
        // cannot see is a refusal, not an allowed removal that then failed.
        let child = self.checked_child(&ctx, parent, name, Op::Delete, "rmdir")?;
        let note = |result| {
            self.gate
                .conclude(&ctx, "rmdir", (&child.allowed, None), result)
        };
        // A file being written in it (staged, not yet in the mirror) makes it not empty.
        if self.handles.staged_below(&child.path) {
            let why = "a file in it is being written as a writeback; close it, then remove it";
            return Err(self.gate.refuse_by_rule(
                &ctx,
                &child.path,
                "rmdir",
                Error::of(libc::ENOTEMPTY),
                why,
            ));
        }
        note(
            match self
                .mirror
                .rmdir(&child.allowed, child.dir_fd.as_fd(), name)
            {
                // Not empty, but nothing in it is visible to this caller: ENOTEMPTY would
                // reveal that hidden entries exist.
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    Err(self.not_empty(&ctx, child.dir_fd.as_fd(), name, &child.path, "rmdir"))
                }
                other => other.map_err(Error::from),
            },
        )
    }

    /// The errno for a directory that is not empty in the mirror: `ENOTEMPTY` when the caller
    /// can see something in it, else `EACCES` (audited), which says nothing about what is there.
    fn not_empty(
        &self,
        ctx: &Ctx,
        parent_fd: BorrowedFd<'_>,
        name: &OsStr,
        path: &[u8],
        operation: &str,
    ) -> Error {
        let visible = self.mirror.lookup(parent_fd, name).is_ok_and(|(fd, _)| {
            self.mirror.list(fd.as_fd()).is_ok_and(|entries| {
                entries.iter().any(|e| {
                    super::inode::checked_child_path(path, &e.name).is_ok_and(|p| {
                        self.gate
                            .decide(ctx, &p, &Place::Content, Op::See)
                            .allowed()
                    })
                })
            })
        });
        if visible {
            return Error::of(libc::ENOTEMPTY);
        }
        self.gate
            .refuse(ctx, path, &Decision::holds_hidden(Op::Delete), operation)
    }

    /// A directory moves with everything in it, so each entry below it must be one the caller
    /// may delete at its old path and create at its new one: otherwise a rename would carry
    /// what the caller cannot see (or may not change) into view, or out of where its rules
    /// apply. `EBUSY` while a file below is being written (a staged writeback would otherwise
    /// be validated for one place and land in another); `EXDEV` when something may not move,
    /// so `mv` falls back to copying what the caller can see, file by file, each step checked.
    fn check_dir_move(
        &self,
        ctx: &Ctx,
        dir: BorrowedFd<'_>,
        from: &[u8],
        to: &[u8],
    ) -> FsResult<()> {
        if self.handles.staged_below(from) {
            return Err(self.busy_below(ctx, from));
        }
        let Some(g) = &ctx.grants else {
            return Err(self.gate.refuse_by_rule(
                ctx,
                from,
                "rename",
                Error::EACCES,
                "the caller has no session in this mount",
            ));
        };
        let cannot_move = |why: &str| {
            let why = format!(
                "{why}; the directory cannot move as a whole, so it is copied entry by entry"
            );
            self.gate
                .refuse_by_rule(ctx, from, "rename", Error::EXDEV, &why)
        };
        use crate::scope::Requirement;
        if g.scopes().grants_all_below(Requirement::FS_DELETE, from)
            && g.scopes().grants_all_below(Requirement::FS_CREATE, to)
        {
            return Ok(());
        }
        /// Past this many entries the tree is not walked: it is copied instead.
        const BUDGET: usize = 20_000;
        let mut seen = 0usize;
        let mut stack: Vec<(OwnedFd, Vec<u8>, Vec<u8>)> = vec![(
            rustix::io::dup(dir).map_err(Error::from)?,
            from.to_vec(),
            to.to_vec(),
        )];
        while let Some((fd, src, dst)) = stack.pop() {
            for e in self.mirror.list(fd.as_fd())? {
                seen += 1;
                if seen > BUDGET {
                    return Err(cannot_move(&format!(
                        "it holds more than {BUDGET} entries to check one by one"
                    )));
                }
                let (Ok(s), Ok(d)) = (
                    super::inode::checked_child_path(&src, &e.name),
                    super::inode::checked_child_path(&dst, &e.name),
                ) else {
                    return Err(cannot_move("an entry below has a name too long to check"));
                };
                let movable = self
                    .gate
                    .decide(ctx, &s, &Place::Content, Op::Delete)
                    .allowed()
                    && self
                        .gate
                        .decide(ctx, &d, &Place::Content, Op::Create)
                        .allowed();
                if !movable {
                    return Err(cannot_move(
                        "the session may not delete or create something below it \
                         at its old or new path",
                    ));
                }
                if e.kind == Some(Kind::Dir) || e.kind.is_none() {
                    match self.mirror.lookup(fd.as_fd(), &e.name) {
                        Ok((child, st)) if Kind::of(&st) == Kind::Dir => {
                            stack.push((child, s.to_vec(), d.to_vec()));
                        }
                        Ok(_) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
            }
        }
        Ok(())
    }

    /// Hard links are refused for everyone (after visibility: a hidden path stays hidden).
    pub fn link(
        &self,
        caller: &Caller,
        ino: Ino,
        new_parent: Ino,
        new_name: &OsStr,
    ) -> FsResult<Entry> {
        let ctx = self.visible_node(caller, ino)?.ctx;
        let dir = self.located(new_parent)?;
        let target = self.child_of(&dir, new_name)?;
        let d = Decision::forbidden(Forbidden::HardLink);
        Err(self.gate.refuse(&ctx, &target, &d, "link"))
    }

    /// `mknod`: regular files are created like `create`; a FIFO or a Unix socket is created
    /// where the caller may create a file and no writeback applies (the kernel serves its data
    /// itself, none of it passes through the mirror, and many tools make them: build systems,
    /// editors, `tar` and `rsync` of a tree that holds them); devices are refused.
    pub fn mknod(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        let ifmt = mode & libc::S_IFMT;
        if ifmt == libc::S_IFIFO || ifmt == libc::S_IFSOCK {
            let kind = if ifmt == libc::S_IFIFO {
                Kind::Fifo
            } else {
                Kind::Socket
            };
            let perm = mode & !umask & 0o777;
            return self.make_child(caller, parent, name, kind, |proof, fd| {
                self.mirror.mknod(proof, fd, name, kind, perm)
            });
        }
        if ifmt != libc::S_IFREG && ifmt != 0 {
            let ctx = self.gate.ctx(caller);
            let dir = self.located(parent)?;
            let path = self.child_of(&dir, name)?;
            let d = Decision::forbidden(Forbidden::DeviceNode);
            return Err(self.gate.refuse(&ctx, &path, &d, "mknod"));
        }
        let (entry, opened) =
            self.create(caller, parent, name, mode & 0o7777, umask, OFlags::WRONLY)?;
        self.release(opened.fh, caller.pid)?;
        Ok(entry)
    }

    pub fn rename(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        let ctx = self.gate.ctx(caller);
        if flags.contains(RenameFlags::WHITEOUT) {
            return Err(Error::EINVAL);
        }
        let exchange = flags.contains(RenameFlags::EXCHANGE);
        let src_dir = self.located(parent)?;
        let dst_dir = self.located(new_parent)?;
        let src_fd = self.dir_fd(&src_dir)?;
        let dst_fd = self.dir_fd(&dst_dir)?;
        let src_path = self.child_of(&src_dir, name)?;
        let dst_path = self.child_of(&dst_dir, new_name)?;
        if is_notice(name) {
            // The notice belongs to its directory: it cannot be moved (or swapped) away.
            self.gate.permit(
                &ctx,
                &src_path,
                &Place::PermissionsFile,
                Op::Delete,
                "rename",
            )?;
            return Err(Error::EACCES);
        }
        if self.pending.lock().contains_key(&(parent, name.to_owned())) {
            // Still being written by a staged handle: it has no content in the mirror yet.
            let why = "the file is being written as a writeback and is not in the mirror until \
                       it is closed; close it, then rename it";
            return Err(self.gate.refuse_by_rule(
                &ctx,
                &src_path,
                "rename",
                Error::of(libc::EBUSY),
                why,
            ));
        }
        if is_notice(new_name) {
            let noreplace = flags.contains(RenameFlags::NOREPLACE);
            return self.rename_onto_notice(
                &ctx,
                (&src_fd, name, &src_path),
                (new_parent, &dst_dir.path()),
                exchange,
                noreplace,
            );
        }
        let src_found = self.mirror.lookup(src_fd.as_fd(), name);
        let src_place = match &src_found {
            Ok((f, st)) => self.place(&src_path, name, Some((f.as_fd(), st))),
            Err(_) => self.place(&src_path, name, None),
        };
        let dst_found = self.mirror.lookup(dst_fd.as_fd(), new_name).ok();
        let dst_place = match &dst_found {
            Some((f, st)) => self.place(&dst_path, new_name, Some((f.as_fd(), st))),
            None => self.place(&dst_path, new_name, None),
        };
        // delete on the source, create on the destination, write on it when it exists; an
        // exchange is both ways.
        let mut checks: Vec<(&[u8], &Place, Op)> = vec![
            (&src_path, &src_place, Op::Delete),
            (&dst_path, &dst_place, Op::Create),
        ];
        if dst_found.is_some() {
            checks.push((&dst_path, &dst_place, Op::Write));
        }
        if exchange {
            checks.push((&dst_path, &dst_place, Op::Delete));
            checks.push((&src_path, &src_place, Op::Create));
            checks.push((&src_path, &src_place, Op::Write));
        }
        // Decided together, audited once: the first refusal, or after the rename the whole as
        // allowed (or as failed).
        let mut proofs = Vec::with_capacity(checks.len());
        for (path, place, op) in checks {
            match self.gate.check(&ctx, path, place, op) {
                Ok(allowed) => proofs.push(allowed),
                Err(d) => return Err(self.gate.refuse(&ctx, path, &d, "rename")),
            }
        }
        let (Some(src_delete), Some(dst_create)) = (proofs.first(), proofs.get(1)) else {
            return Err(Error::EACCES);
        };
        let result = self.rename_allowed(
            &ctx,
            (
                src_delete.clone(),
                parent,
                name,
                &src_fd,
                &src_path,
                src_found,
            ),
            (
                dst_create.clone(),
                new_parent,
                new_name,
                &dst_fd,
                &dst_path,
                dst_found,
            ),
            flags,
        );
        self.gate
            .conclude(&ctx, "rename", (src_delete, Some(dst_create)), result)
    }

    /// The rename the caller's scopes allow, through the guard's own rules (directory moves,
    /// exchanges, writebacks). Each refusal here is audited where it is made; the caller
    /// audits the rest.
    #[allow(clippy::type_complexity)]
    fn rename_allowed(
        &self,
        ctx: &Ctx,
        (src_delete, parent, name, src_fd, src_path, src_found): (
            Allowed,
            Ino,
            &OsStr,
            &OwnedFd,
            &Arc<[u8]>,
            io::Result<(OwnedFd, Stat)>,
        ),
        (dst_create, new_parent, new_name, dst_fd, dst_path, dst_found): (
            Allowed,
            Ino,
            &OsStr,
            &OwnedFd,
            &Arc<[u8]>,
            Option<(OwnedFd, Stat)>,
        ),
        flags: RenameFlags,
    ) -> FsResult<()> {
        let exchange = flags.contains(RenameFlags::EXCHANGE);
        let (src_file, src_st) = src_found.map_err(Error::from)?;
        let src_kind = Kind::of(&src_st);
        let src_str = String::from_utf8_lossy(src_path).into_owned();
        let dst_str = String::from_utf8_lossy(dst_path).into_owned();
        let backing = self.gate.backing();
        let area = |p: &str| backing.is_provider_area(p.rsplit_once('/').map_or("", |(d, _)| d));
        let provider_area = |p: &str| backing.is_provider_area(p);
        // An exchange puts each side at the other's path at once, unvalidated, and descriptors
        // open on either keep writing there: it cannot be a writeback. That holds for a side
        // in a provider area and for a directory that is (or lands as) one, such as a whole
        // provider top-level swapped with a local one.
        if exchange
            && (area(&src_str)
                || area(&dst_str)
                || provider_area(&src_str)
                || provider_area(&dst_str))
        {
            let why = "an exchange cannot be validated as a writeback; rename each file instead";
            return Err(self.gate.refuse_writeback(
                ctx,
                &dst_str,
                "rename",
                why,
                None,
                Error::EACCES,
            ));
        }
        // The errors a directory rename gives before anything is looked at below it.
        if src_kind == Kind::Dir && !exchange {
            if dst_found
                .as_ref()
                .is_some_and(|(_, st)| Kind::of(st) != Kind::Dir)
            {
                return Err(Error::ENOTDIR);
            }
            let mut inside = src_path.to_vec();
            inside.push(b'/');
            if dst_path.starts_with(&inside) {
                return Err(Error::EINVAL);
            }
        }
        if src_kind == Kind::Dir {
            if provider_area(&src_str) || provider_area(&dst_str) {
                if self.handles.staged_below(src_path) {
                    return Err(self.busy_below(ctx, src_path));
                }
                if !self.mirror.list(src_file.as_fd())?.is_empty() {
                    let why = "a directory with entries cannot move into or out of a provider \
                               area, where each file is a writeback; move its files one by one";
                    return Err(self.gate.refuse_by_rule(
                        ctx,
                        src_path,
                        "rename",
                        Error::EXDEV,
                        why,
                    ));
                }
            }
            self.check_dir_move(ctx, src_file.as_fd(), src_path, dst_path)?;
        }
        if exchange
            && let Some((dst_file, st)) = &dst_found
            && Kind::of(st) == Kind::Dir
        {
            self.check_dir_move(ctx, dst_file.as_fd(), dst_path, src_path)?;
        }
        if src_kind == Kind::Symlink || src_kind.is_special() {
            self.refuse_provider_special(ctx, dst_path, src_kind, "rename")?;
        }
        // A file leaving or reaching a provider path passes the writeback gate on that side.
        let from = self.gate.change(ctx, src_delete, src_kind, "rename")?;
        let to = self.gate.change(ctx, dst_create, src_kind, "rename")?;
        if src_kind == Kind::File && to.writeback().is_some() {
            return self.rename_into_writeback(
                ctx,
                (&from, src_fd, name, src_file, &src_st),
                (&to, new_parent, dst_fd, new_name),
                flags.contains(RenameFlags::NOREPLACE),
            );
        }
        let mut rflags = RenameFlags::empty();
        if flags.contains(RenameFlags::NOREPLACE) {
            rflags |= RenameFlags::NOREPLACE;
        }
        if exchange {
            rflags |= RenameFlags::EXCHANGE;
        }
        if let Err(e) = self.mirror.rename(
            (&from, &to),
            src_fd.as_fd(),
            name,
            dst_fd.as_fd(),
            new_name,
            rflags,
        ) {
            if e.raw_os_error() == Some(libc::ENOTEMPTY) {
                return Err(self.not_empty(ctx, dst_fd.as_fd(), new_name, dst_path, "rename"));
            }
            return Err(e.into());
        }
        if let Some(ino) = self.inodes.find(src_st.st_dev, src_st.st_ino) {
            self.inodes
                .moved(ino, new_parent, new_name, dst_path.clone());
        }
        if exchange
            && let Some((_, st)) = &dst_found
            && let Some(ino) = self.inodes.find(st.st_dev, st.st_ino)
        {
            self.inodes.moved(ino, parent, name, src_path.clone());
        }
        Ok(())
    }

    /// `EBUSY` for a directory move while a file below it is being written (a staged
    /// writeback would otherwise be validated for one place and land in another), audited.
    fn busy_below(&self, ctx: &Ctx, path: &[u8]) -> Error {
        let why = "a file below is open for writing as a writeback; close it, then move the \
                   directory";
        self.gate
            .refuse_by_rule(ctx, path, "rename", Error::of(libc::EBUSY), why)
    }

    /// A file renamed onto `_PERMISSIONS.md` (`rsync` places each file by renaming a temporary
    /// onto it): the rename is accepted where an ordinary file of that name could be made, the
    /// source goes away as the rename would have taken it, and the notice stays generated.
    fn rename_onto_notice(
        &self,
        ctx: &Ctx,
        (src_dir, name, src_path): (&OwnedFd, &OsStr, &[u8]),
        (new_parent, dst_dir_path): (Ino, &[u8]),
        exchange: bool,
        noreplace: bool,
    ) -> FsResult<()> {
        let (found, st) = self.mirror.lookup(src_dir.as_fd(), name)?;
        let place = self.place(src_path, name, Some((found.as_fd(), &st)));
        // Audited once: the refusal, or after the source is gone, the rename as allowed.
        let allowed = self
            .gate
            .check(ctx, src_path, &place, Op::Delete)
            .map_err(|d| self.gate.refuse(ctx, src_path, &d, "rename"))?;
        if exchange
            || Kind::of(&st) == Kind::Dir
            || !self.notice_accepts(ctx, dst_dir_path, Op::Create)
        {
            let why = "_PERMISSIONS.md is generated by the mount: it cannot be exchanged, \
                       replaced by a directory, or replaced where the session may not create a \
                       file of that name";
            return Err(self
                .gate
                .refuse_by_rule(ctx, src_path, "rename", Error::EACCES, why));
        }
        if noreplace && !self.notice_removed(ctx, new_parent) {
            let e = Error::of(libc::EEXIST);
            self.gate.failed(ctx, src_path, None, "rename", &e);
            return Err(e);
        }
        let change = self.gate.change(ctx, allowed, Kind::of(&st), "rename")?;
        match self.mirror.unlink(&change, src_dir.as_fd(), name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                let e = Error::from(e);
                self.gate.failed(ctx, src_path, None, "rename", &e);
                return Err(e);
            }
        }
        self.gate
            .note(ctx, src_path, "rename", change.allowed().decision());
        self.unmark_notice(ctx, new_parent);
        self.note_discarded(ctx, dst_dir_path, Op::Create, "rename");
        Ok(())
    }

    /// A file renamed onto a provider path becomes a writeback payload. The bytes placed there
    /// are a private copy, validated before it is renamed into place; the source is then
    /// removed. Renaming the file itself would let a descriptor still open on it (a temporary
    /// file written in place) keep writing to the provider path after validation.
    fn rename_into_writeback(
        &self,
        ctx: &Ctx,
        (from, src_dir, name, src_file, src_st): (&Change, &OwnedFd, &OsStr, OwnedFd, &Stat),
        (to, new_parent, dst_dir, new_name): (&Change, Ino, &OwnedFd, &OsStr),
        noreplace: bool,
    ) -> FsResult<()> {
        let dst_path = String::from_utf8_lossy(to.allowed().path()).into_owned();
        let (copy, staged) = self.stage_like(src_st, Some(src_file.as_fd()))?;
        let placed = (|| {
            self.validate_as(ctx, to, copy.as_fd(), new_parent)?;
            copy.sync_all()?;
            let flags = if noreplace {
                RenameFlags::NOREPLACE
            } else {
                RenameFlags::empty()
            };
            self.mirror.place_staged(
                &self.area,
                to,
                &staged,
                (dst_dir.as_fd(), new_name),
                flags,
            )?;
            Ok(())
        })();
        if let Err(e) = placed {
            self.mirror.unstage(&self.area, &staged);
            return Err(e);
        }
        // Queued only once it is there: a rename that then fails is audited as failed alone.
        self.gate.note_writeback(
            ctx,
            &dst_path,
            "rename",
            Outcome::Allowed,
            "validated and renamed into place",
            to.writeback(),
        );
        match self.mirror.unlink(from, src_dir.as_fd(), name) {
            Ok(()) => {}
            // Removed meanwhile by someone else: the rename's effect is complete.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        // The node the kernel now shows at the new name is backed by the copy.
        if let Some(ino) = self.inodes.find(src_st.st_dev, src_st.st_ino) {
            let path_fd = self.mirror.path_of(copy.as_fd())?;
            let st = self.mirror.stat(path_fd.as_fd())?;
            self.inodes.replace_backing(ino, path_fd, &st);
            self.inodes
                .moved(ino, new_parent, new_name, dst_path.as_bytes().into());
        }
        Ok(())
    }

    /// Validate the file at `fd` as the payload of the writeback `to` permits.
    fn validate_as(&self, ctx: &Ctx, to: &Change, fd: BorrowedFd<'_>, parent: Ino) -> FsResult<()> {
        let path = String::from_utf8_lossy(to.allowed().path()).into_owned();
        let permit = to.writeback().ok_or(Error::EACCES)?;
        let content = match self.read_all(fd, MAX_PAYLOAD) {
            Ok(content) => content,
            Err(e) if e.errno() == libc::EFBIG => {
                let why =
                    format!("{path} is larger than {MAX_PAYLOAD} bytes and cannot be validated");
                return Err(self.gate.refuse_writeback(
                    ctx,
                    &path,
                    "rename",
                    &why,
                    Some(permit),
                    e,
                ));
            }
            Err(e) => return Err(e),
        };
        if let Err((_, why)) =
            self.validate_payload(permit, &path, &content, self.inodes.get(parent))
        {
            // EACCES, not EINVAL: `mv` reads EINVAL from rename(2) as "moving a directory
            // into itself" and would tell the agent something false.
            return Err(self.gate.refuse_writeback(
                ctx,
                &path,
                "rename",
                &why,
                Some(permit),
                Error::EACCES,
            ));
        }
        Ok(())
    }

    pub fn setattr(
        &self,
        caller: &Caller,
        ino: Ino,
        set: SetAttr,
    ) -> FsResult<(FileAttr, std::time::Duration)> {
        let Seen {
            ctx,
            node,
            place,
            path,
        } = self.visible_node(caller, ino)?;
        if let NodeKind::Permissions { dir } = node.kind
            && self.notice_writable(&ctx, dir)
        {
            // `cp -a` sets times and modes on the notice it copied: accepted, and nothing
            // changes.
            self.note_discarded(&ctx, parent_path(&path), Op::Write, "setattr");
            return self.getattr(caller, ino, None);
        }
        if node.location().name().as_bytes() == PERMISSIONS_FILE.as_bytes()
            || node.backing().is_none()
        {
            self.gate
                .permit(&ctx, &path, &place, Op::Write, "setattr")?;
            return Err(Error::EACCES);
        }
        let b = node.backing().ok_or(Error::EACCES)?;
        let fd = self.fd_of(&node)?;
        let st = self.mirror.stat(fd.as_fd())?;
        let chown =
            set.uid.is_some_and(|u| u != st.st_uid) || set.gid.is_some_and(|g| g != st.st_gid);
        if chown {
            let d = Decision::forbidden(Forbidden::Chown);
            return Err(self.gate.refuse(&ctx, &path, &d, "setattr"));
        }
        if let Some(mode) = set.mode
            && mode & (libc::S_ISUID | libc::S_ISGID) != 0
        {
            let d = Decision::forbidden(Forbidden::SetId);
            return Err(self.gate.refuse(&ctx, &path, &d, "setattr"));
        }
        // `ftruncate` on a descriptor open for writing is authorized by that descriptor, like
        // its writes (a file created where the caller may create but not overwrite can still be
        // sized by the one who created it); everything else is decided on the path.
        let by_handle = set.fh.and_then(|fh| self.handle_change(fh, &node));
        let changes = set.mode.is_some()
            || by_handle.is_none()
                && (set.size.is_some() || set.atime.is_some() || set.mtime.is_some());
        let change = if changes {
            let allowed = self
                .gate
                .permit(&ctx, &path, &place, Op::Write, "setattr")?;
            // relayfile pushes a provider file whose metadata changes like one whose content
            // does, so chmod and utimes pass the writeback gate too (truncation is staged).
            let operation = if set.size.is_some() {
                "truncate"
            } else {
                "setattr"
            };
            Some(self.gate.change(&ctx, allowed, b.kind, operation)?)
        } else {
            by_handle
        };
        if let Some(size) = set.size {
            self.truncate(&ctx, &node, set.fh, size, change.as_ref())?;
        }
        // A chown to the owner it has already (`cp -a`, `rsync -a`) changes nothing and needs
        // nothing more.
        let changed = || change.as_ref().ok_or(Error::EACCES);
        if let Some(mode) = set.mode {
            if b.kind == Kind::Symlink {
                return Err(Error::EPERM);
            }
            self.mirror.chmod(changed()?, fd.as_fd(), mode & 0o777)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let change = changed()?;
            let times = Timestamps {
                last_access: set.atime.map_or(OMIT, timespec),
                last_modification: set.mtime.map_or(OMIT, timespec),
            };
            if b.kind == Kind::Symlink {
                // `touch -h`, `cp -a` and `rsync -a` set a link's own times.
                self.mirror
                    .set_link_times(change.allowed(), fd.as_fd(), &times)?;
            } else {
                self.mirror.set_times(change, fd.as_fd(), &times)?;
            }
        }
        self.getattr(caller, ino, set.fh)
    }

    /// Truncate by handle or by path; a provider-backed file is staged and validated like any
    /// other writeback, so `truncate -s 0 review.json` cannot push an empty review.
    fn truncate(
        &self,
        ctx: &Ctx,
        node: &std::sync::Arc<super::inode::Node>,
        fh: Option<u64>,
        size: u64,
        change: Option<&Change>,
    ) -> FsResult<()> {
        if let Some(fh) = fh
            && let Some(done) = self.truncate_handle(fh, node, size)
        {
            return done;
        }
        let b = node.backing().ok_or(Error::EACCES)?;
        if b.kind != Kind::File {
            return Err(Error::EISDIR);
        }
        let change = change.ok_or(Error::EACCES)?;
        match change.writeback() {
            None => Ok(self
                .mirror
                .truncate(change, self.fd_of(node)?.as_fd(), size)?),
            Some(_) => self.staged_truncate(ctx, node, size),
        }
    }
}
