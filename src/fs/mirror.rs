//! Confined access to the mirror directory.
//!
//! Every object of the mirror that the guard knows about is held as an `O_PATH | O_NOFOLLOW`
//! descriptor, and every name is resolved relative to its parent directory's descriptor with
//! `O_NOFOLLOW`: one component at a time, never through a joined path string. A symlink in the
//! mirror is therefore only ever opened as a symlink (to read its target), and a directory
//! swapped for a symlink mid-operation is seen as the symlink, so nothing here can be steered
//! outside the mirror by a link. Regular files and directories are reopened for I/O through
//! `/proc/self/fd/<n>`, which names the very inode the descriptor holds (the model of libfuse's
//! `passthrough_hp`).
//!
//! Every method that changes the mirror or opens one of its objects for I/O takes a proof from
//! the gate ([`Allowed`] or [`Change`], see `gate`) and checks that the proof is for that kind
//! of change. What needs none: resolving names, `stat`, `readlink` and listing (names and
//! metadata, which the core filters per entry through the gate before a caller sees them), the
//! guard's own reads for its checks ([`Mirror::inspect`]: schemas, runtime records, the payload
//! being validated), and the guard's own folder ([`GuardArea`]), which no caller can reach.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use rustix::fs::{AtFlags, Dir, Mode, OFlags, RenameFlags, Stat, StatVfs, Timestamps};

use super::gate::{Allowed, Change};
use crate::authz::Op;

pub use super::kind::Kind;

/// Whether `name` is a single, real directory entry name.
pub fn valid_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
}

/// A directory entry as listed from the mirror.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    /// From `d_type`; `None` when the filesystem does not say.
    pub kind: Option<Kind>,
}

/// The mirror root and the means to reach its objects safely.
#[derive(Debug)]
pub struct Mirror {
    root: OwnedFd,
    proc_fd: OwnedFd,
    /// Where the kernel says the root is (`/proc/self/fd/<root>`), to tell where any held
    /// object is now.
    root_path: Vec<u8>,
}

impl Mirror {
    /// Open the mirror at `root`, which must be a directory.
    pub fn open(root: &Path) -> io::Result<Mirror> {
        let root = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let proc_fd = rustix::fs::open(
            "/proc/self/fd",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let root_path =
            rustix::fs::readlinkat(&proc_fd, fd_name(root.as_fd()), Vec::new())?.into_bytes();
        Ok(Mirror {
            root,
            proc_fd,
            root_path,
        })
    }

    /// Whether the object behind `fd` is still at `path` (a relayfile path) in the mirror,
    /// as the kernel tracks it: renamed or moved elsewhere (by relayfile's syncer, say) it is
    /// not. An object that was removed counts as still where it last was: it is at no other
    /// path, and open files of removed objects keep working as natively.
    ///
    /// `None` when the kernel cannot say (the full path is longer than a page).
    pub fn still_at(&self, fd: BorrowedFd<'_>, path: &[u8]) -> Option<bool> {
        let now = match rustix::fs::readlinkat(&self.proc_fd, fd_name(fd), Vec::new()) {
            Ok(now) => now,
            Err(rustix::io::Errno::NAMETOOLONG) => return None,
            Err(_) => return Some(false),
        };
        let now = now.as_bytes();
        let expected_tail = if path == b"/" { &b""[..] } else { path };
        let here = now.len() == self.root_path.len() + expected_tail.len()
            && now.starts_with(&self.root_path)
            && now.ends_with(expected_tail);
        Some(here || rustix::fs::fstat(fd).is_ok_and(|st| st.st_nlink == 0))
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// A fresh `O_PATH` descriptor for the root, with its stat.
    pub fn root_node(&self) -> io::Result<(OwnedFd, Stat)> {
        let fd = rustix::fs::openat(
            &self.proc_fd,
            fd_name(self.root.as_fd()),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        Ok((fd, st))
    }

    /// Resolve one name in a directory without following a symlink: the descriptor and the
    /// stat of the very object found.
    pub fn lookup(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(OwnedFd, Stat)> {
        if !valid_name(name) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        Ok((fd, st))
    }

    /// Whether anything is at `path` (from the root, no symlink followed on the way). Only
    /// for choosing between "look again" and "gone" when a node left its path: nothing is
    /// decided on what it finds.
    pub fn occupied(&self, path: &[u8]) -> bool {
        let rel = path.strip_prefix(b"/").unwrap_or(path);
        let rel = if rel.is_empty() { &b"."[..] } else { rel };
        rustix::fs::openat2(
            &self.root,
            OsStr::from_bytes(rel),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            rustix::fs::ResolveFlags::BENEATH
                | rustix::fs::ResolveFlags::NO_SYMLINKS
                | rustix::fs::ResolveFlags::NO_MAGICLINKS,
        )
        .is_ok()
    }

    pub fn stat(&self, fd: BorrowedFd<'_>) -> io::Result<Stat> {
        Ok(rustix::fs::fstat(fd)?)
    }

    /// Open the object behind an `O_PATH` descriptor for reading, as `proof` allows. The caller
    /// has checked that it is a regular file or a directory (never a symlink).
    pub fn open_read(
        &self,
        proof: &Allowed,
        fd: BorrowedFd<'_>,
        flags: OFlags,
    ) -> io::Result<File> {
        proof.require(&[Op::Read, Op::See])?;
        self.reopen(
            fd,
            flags & !(OFlags::WRONLY | OFlags::RDWR | OFlags::TRUNC | OFlags::APPEND),
        )
    }

    /// Open a local file behind an `O_PATH` descriptor for writing (and reading, when `flags`
    /// say so), as `proof` allows. A provider file is never opened for writing in place.
    pub fn open_write(
        &self,
        proof: &Change,
        fd: BorrowedFd<'_>,
        flags: OFlags,
    ) -> io::Result<File> {
        proof.require_local(&[Op::Write, Op::Create])?;
        self.reopen(fd, flags)
    }

    /// Open the object behind a descriptor read-only for the guard's own checks: a schema, a
    /// runtime record, a payload being validated or copied into staging. What it reads goes to
    /// those checks, never to a caller.
    pub fn inspect(&self, fd: BorrowedFd<'_>) -> io::Result<File> {
        self.reopen(fd, OFlags::RDONLY)
    }

    fn reopen(&self, fd: BorrowedFd<'_>, flags: OFlags) -> io::Result<File> {
        let flags = (flags | OFlags::CLOEXEC) - OFlags::CREATE - OFlags::EXCL - OFlags::NOFOLLOW;
        let fd = rustix::fs::openat(&self.proc_fd, fd_name(fd), flags, Mode::empty())?;
        Ok(File::from(fd))
    }

    /// An `O_PATH` descriptor for an object already open for I/O (no name lookup, no race).
    pub fn path_of(&self, file: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.proc_fd,
            fd_name(file),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// The entries of a directory (without `.` and `..`).
    pub fn list(&self, dir: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
        let fd = self.reopen(dir, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut d = Dir::new(OwnedFd::from(fd))?;
        let mut out = Vec::new();
        while let Some(entry) = d.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let kind = match entry.file_type() {
                rustix::fs::FileType::RegularFile => Some(Kind::File),
                rustix::fs::FileType::Directory => Some(Kind::Dir),
                rustix::fs::FileType::Symlink => Some(Kind::Symlink),
                rustix::fs::FileType::Unknown => None,
                rustix::fs::FileType::Fifo => Some(Kind::Fifo),
                rustix::fs::FileType::Socket => Some(Kind::Socket),
                _ => Some(Kind::Device),
            };
            out.push(DirEntry {
                name: OsStr::from_bytes(name).to_owned(),
                ino: entry.ino(),
                kind,
            });
        }
        Ok(out)
    }

    /// Create a new local regular file (never following or replacing anything) and open it.
    pub fn create_file(
        &self,
        proof: &Change,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
        flags: OFlags,
    ) -> io::Result<(File, OwnedFd, Stat)> {
        proof.require_local(&[Op::Create])?;
        self.create_in(dir, name, mode, flags)
    }

    fn create_in(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
        flags: OFlags,
    ) -> io::Result<(File, OwnedFd, Stat)> {
        check(name)?;
        exact_modes();
        let access = flags & (OFlags::RDONLY | OFlags::WRONLY | OFlags::RDWR);
        let extra = flags & (OFlags::APPEND | OFlags::NONBLOCK);
        let fd = rustix::fs::openat(
            dir,
            name,
            access | extra | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode & 0o777),
        )?;
        // Created: from here on a failure removes it again, so no caller is ever told "failed"
        // about a file that stays behind (empty) in the mirror.
        let finish = || -> io::Result<(OwnedFd, Stat)> {
            let st = rustix::fs::fstat(&fd)?;
            Ok((self.path_of(fd.as_fd())?, st))
        };
        match finish() {
            Ok((path, st)) => Ok((File::from(fd), path, st)),
            Err(e) => {
                if let Ok(st) = rustix::fs::fstat(&fd) {
                    self.undo_in(dir, name, &st);
                }
                Err(e)
            }
        }
    }

    pub fn mkdir(
        &self,
        proof: &Allowed,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
    ) -> io::Result<(OwnedFd, Stat)> {
        proof.require(&[Op::Create])?;
        self.mkdir_in(dir, name, mode)
    }

    fn mkdir_in(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
    ) -> io::Result<(OwnedFd, Stat)> {
        check(name)?;
        exact_modes();
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode & 0o777))?;
        self.lookup(dir, name).inspect_err(|_| {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR);
        })
    }

    pub fn symlink(
        &self,
        proof: &Allowed,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        target: &Path,
    ) -> io::Result<(OwnedFd, Stat)> {
        proof.require(&[Op::Create])?;
        check(name)?;
        rustix::fs::symlinkat(target, dir, name)?;
        self.lookup(dir, name).inspect_err(|_| {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
        })
    }

    /// A FIFO or a Unix socket node (`kind`) named `name` in `dir`; anything else is `EPERM`.
    pub fn mknod(
        &self,
        proof: &Allowed,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        kind: Kind,
        perm: u32,
    ) -> io::Result<(OwnedFd, Stat)> {
        proof.require(&[Op::Create])?;
        check(name)?;
        let file_type = match kind {
            Kind::Fifo => rustix::fs::FileType::Fifo,
            Kind::Socket => rustix::fs::FileType::Socket,
            _ => return Err(io::Error::from_raw_os_error(libc::EPERM)),
        };
        exact_modes();
        rustix::fs::mknodat(dir, name, file_type, Mode::from_raw_mode(perm & 0o777), 0)?;
        self.lookup(dir, name).inspect_err(|_| {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
        })
    }

    /// Remove what was just created as `name` in `dir` (a step after the create failed), but
    /// only if the name still holds that very object.
    pub fn undo_create(&self, proof: &Change, dir: BorrowedFd<'_>, name: &OsStr, created: &Stat) {
        if proof.allowed().require(&[Op::Create]).is_err() {
            return;
        }
        self.undo_in(dir, name, created);
    }

    fn undo_in(&self, dir: BorrowedFd<'_>, name: &OsStr, created: &Stat) {
        let Ok(now) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            return;
        };
        if (now.st_dev, now.st_ino) != (created.st_dev, created.st_ino) {
            return;
        }
        let flags = if Kind::of(&now) == Kind::Dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        let _ = rustix::fs::unlinkat(dir, name, flags);
    }

    /// Remove a file, symlink or special object (the proof passed the writeback gate).
    pub fn unlink(&self, proof: &Change, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        proof.allowed().require(&[Op::Delete])?;
        unlink_in(dir, name)
    }

    pub fn rmdir(&self, proof: &Allowed, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        proof.require(&[Op::Delete])?;
        check(name)?;
        Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
    }

    /// Rename (or exchange) as `from` (a delete of the source) and `to` (a create at the
    /// destination) allow.
    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        (from_proof, to_proof): (&Change, &Change),
        from_dir: BorrowedFd<'_>,
        from: &OsStr,
        to_dir: BorrowedFd<'_>,
        to: &OsStr,
        flags: RenameFlags,
    ) -> io::Result<()> {
        from_proof.allowed().require(&[Op::Delete])?;
        to_proof.allowed().require(&[Op::Create])?;
        rename_in(from_dir, from, to_dir, to, flags)
    }

    /// The target of a symlink held as an `O_PATH | O_NOFOLLOW` descriptor.
    pub fn readlink(&self, fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
        Ok(rustix::fs::readlinkat(fd, "", Vec::new())?.into_bytes())
    }

    /// Truncate a local file in place (a provider file is truncated in staging).
    pub fn truncate(&self, proof: &Change, fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
        let f = self.open_write(proof, fd, OFlags::WRONLY)?;
        f.set_len(size)
    }

    pub fn chmod(&self, proof: &Change, fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
        proof.allowed().require(&[Op::Write])?;
        Ok(rustix::fs::chmodat(
            &self.proc_fd,
            fd_name(fd),
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )?)
    }

    /// Change the owner and/or group of an object the caller just created or is replacing,
    /// behind a descriptor (an `O_PATH` one included; a symlink itself, never its target).
    pub fn chown(
        &self,
        proof: &Allowed,
        fd: BorrowedFd<'_>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> io::Result<()> {
        proof.require(&[Op::Create, Op::Write])?;
        chown_fd(fd, uid, gid)
    }

    /// The times of a symlink itself (never its target), through its `O_PATH | O_NOFOLLOW`
    /// descriptor.
    pub fn set_link_times(
        &self,
        proof: &Allowed,
        fd: BorrowedFd<'_>,
        times: &Timestamps,
    ) -> io::Result<()> {
        proof.require(&[Op::Write])?;
        Ok(rustix::fs::utimensat(
            fd,
            "",
            times,
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// A file's or directory's times, as a write allows (or the create of the very file, by
    /// the handle that created it).
    pub fn set_times(
        &self,
        proof: &Change,
        fd: BorrowedFd<'_>,
        times: &Timestamps,
    ) -> io::Result<()> {
        proof.allowed().require(&[Op::Write, Op::Create])?;
        Ok(rustix::fs::utimensat(
            &self.proc_fd,
            fd_name(fd),
            times,
            AtFlags::empty(),
        )?)
    }

    /// A `user.` extended attribute, as a read of the object allows.
    pub fn getxattr(
        &self,
        proof: &Allowed,
        fd: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<Vec<u8>> {
        proof.require(&[Op::Read, Op::See])?;
        let mut buf = vec![0u8; XATTR_MAX];
        let n = rustix::fs::getxattr(proc_path(fd).as_str(), name, &mut buf[..])?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The extended attribute names (NUL-separated), as a read of the object allows.
    pub fn listxattr(&self, proof: &Allowed, fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
        proof.require(&[Op::Read, Op::See])?;
        let mut buf = vec![0u8; XATTR_MAX];
        let n = rustix::fs::listxattr(proc_path(fd).as_str(), &mut buf[..])?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn setxattr(
        &self,
        proof: &Change,
        fd: BorrowedFd<'_>,
        name: &OsStr,
        value: &[u8],
        flags: rustix::fs::XattrFlags,
    ) -> io::Result<()> {
        proof.allowed().require(&[Op::Write])?;
        Ok(rustix::fs::setxattr(
            proc_path(fd).as_str(),
            name,
            value,
            flags,
        )?)
    }

    pub fn removexattr(&self, proof: &Change, fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        proof.allowed().require(&[Op::Write])?;
        Ok(rustix::fs::removexattr(proc_path(fd).as_str(), name)?)
    }

    pub fn statvfs(&self) -> io::Result<StatVfs> {
        Ok(rustix::fs::fstatvfs(&self.root)?)
    }

    /// The guard's folders inside the mirror's `/.relay` (made when missing). What a previous
    /// run left in staging (a writeback still open when the daemon was killed: never
    /// committed) is moved to quarantine under `interrupted-...` names, never dropped; the
    /// second value counts those files.
    pub fn guard_area(&self) -> io::Result<(GuardArea, usize)> {
        let dir_at = |parent: BorrowedFd<'_>, name: &str| -> io::Result<OwnedFd> {
            match self.lookup(parent, OsStr::new(name)) {
                Ok((fd, st)) if Kind::of(&st) == Kind::Dir => Ok(fd),
                Ok(_) => Err(io::Error::other(format!(
                    "{name} in the mirror is not a directory; the guard needs it for staged writes"
                ))),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    Ok(self.mkdir_in(parent, OsStr::new(name), 0o700)?.0)
                }
                Err(e) => Err(e),
            }
        };
        let relay = dir_at(self.root(), ".relay")?;
        let guard = dir_at(relay.as_fd(), crate::authz::relay::GUARD_DIR)?;
        let area = GuardArea {
            staging: dir_at(guard.as_fd(), "staging")?,
            quarantine: dir_at(guard.as_fd(), "quarantine")?,
        };
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut kept = 0;
        for e in self.list(area.staging.as_fd())? {
            let mut to = OsString::from(format!("interrupted-{stamp}-"));
            to.push(&e.name);
            match self.quarantine(&area, &e.name, &to) {
                Ok(()) => kept += 1,
                Err(err) => tracing::error!(
                    "a staged writeback left by a previous run ({}) could not be moved to \
                     quarantine: {err}; it stays in staging",
                    e.name.to_string_lossy()
                ),
            }
        }
        Ok((area, kept))
    }

    /// A new file in the guard's staging folder, open for reading and writing.
    pub fn stage(&self, area: &GuardArea, name: &OsStr, mode: u32) -> io::Result<File> {
        Ok(self
            .create_in(area.staging.as_fd(), name, mode, OFlags::RDWR)?
            .0)
    }

    /// What the staging folder holds under `name` (after an exchange: what was taken out).
    pub fn staged_stat(&self, area: &GuardArea, name: &OsStr) -> io::Result<Stat> {
        Ok(rustix::fs::statat(
            area.staging.as_fd(),
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Drop a staged file (never committed, or quarantined elsewhere).
    pub fn unstage(&self, area: &GuardArea, name: &OsStr) {
        let _ = unlink_in(area.staging.as_fd(), name);
    }

    /// Give a staged file (open as `file`) the owner of the file it replaces.
    pub fn own_staged(&self, _area: &GuardArea, file: &File, uid: u32, gid: u32) -> io::Result<()> {
        chown_fd(file.as_fd(), Some(uid), Some(gid))
    }

    /// Keep a refused staged file in the quarantine folder under `kept`.
    pub fn quarantine(&self, area: &GuardArea, name: &OsStr, kept: &OsStr) -> io::Result<()> {
        rename_in(
            area.staging.as_fd(),
            name,
            area.quarantine.as_fd(),
            kept,
            RenameFlags::NOREPLACE,
        )
    }

    /// Place a validated staged file at `to` in `dir`, as `proof` (the writeback's or a local
    /// create's or write's) allows: one `rename`, so nothing half-written is ever there.
    pub fn place_staged(
        &self,
        area: &GuardArea,
        proof: &Change,
        name: &OsStr,
        (dir, to): (BorrowedFd<'_>, &OsStr),
        flags: RenameFlags,
    ) -> io::Result<()> {
        proof.allowed().require(&[Op::Create, Op::Write])?;
        rename_in(area.staging.as_fd(), name, dir, to, flags)
    }
}

/// The guard's own folders in the mirror (`/.relay/.relayauth-mount/{staging,quarantine}`):
/// staged writebacks wait in one, refused payloads are kept in the other. No caller can reach
/// them (the `/.relay` rules hide the guard's folder from everyone), so what is done there needs
/// no decision; only [`Mirror::guard_area`] makes one.
#[derive(Debug)]
pub struct GuardArea {
    staging: OwnedFd,
    quarantine: OwnedFd,
}

/// How much one extended attribute value (or name list) may hold (the kernel's `XATTR_SIZE_MAX`).
const XATTR_MAX: usize = 64 * 1024;

/// The `/proc/self/fd/<n>` path of a descriptor, for the xattr calls that only take paths.
fn proc_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn unlink_in(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    check(name)?;
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
}

fn rename_in(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
    flags: RenameFlags,
) -> io::Result<()> {
    check(from)?;
    check(to)?;
    Ok(rustix::fs::renameat_with(
        from_dir, from, to_dir, to, flags,
    )?)
}

fn chown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    Ok(rustix::fs::chownat(
        fd,
        "",
        uid.map(rustix::fs::Uid::from_raw),
        gid.map(rustix::fs::Gid::from_raw),
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

fn fd_name(fd: BorrowedFd<'_>) -> String {
    fd.as_raw_fd().to_string()
}

fn check(name: &OsStr) -> io::Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// Make the modes this thread creates with final. The caller's umask is applied already (the
/// kernel sends it with each create, and the guard masks with it), so the daemon's own umask
/// must not mask them a second time: a directory made `0777` under `umask 0` is `0777`, as
/// natively. The first time a thread creates in the mirror it takes a private umask of 0
/// (`unshare(CLONE_FS)`); the daemon's own files (the audit log, runtime files) keep the
/// process's umask. Where the thread cannot have its own, nothing changes (modes stay at most
/// as permissive as asked).
fn exact_modes() {
    thread_local!(static OWN_UMASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    OWN_UMASK.with(|done| {
        if done.get() {
            return;
        }
        done.set(true);
        // SAFETY: CLONE_FS gives this thread its own root, working directory and umask; no
        // descriptor table is unshared, so every thread still sees every descriptor.
        if unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }.is_ok() {
            rustix::process::umask(Mode::empty());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    use crate::fs::gate::{Allowed, Change};

    #[test]
    fn lookup_never_follows_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"outside").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("file"))
            .unwrap();
        let m = Mirror::open(root.path()).unwrap();
        let (fd, st) = m.lookup(m.root(), OsStr::new("link")).unwrap();
        assert_eq!(Kind::of(&st), Kind::Symlink);
        // Looking a name up "inside" the symlink fails: it is not a directory.
        assert!(m.lookup(fd.as_fd(), OsStr::new("secret")).is_err());
        let (fd, st) = m.lookup(m.root(), OsStr::new("file")).unwrap();
        assert_eq!(Kind::of(&st), Kind::Symlink);
        assert_eq!(
            m.readlink(fd.as_fd()).unwrap(),
            outside.path().join("secret").as_os_str().as_bytes()
        );
        for bad in ["", ".", "..", "a/b"] {
            assert!(m.lookup(m.root(), OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reopen_reaches_the_same_inode_after_rename() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a"), b"hello").unwrap();
        let m = Mirror::open(root.path()).unwrap();
        let (fd, _) = m.lookup(m.root(), OsStr::new("a")).unwrap();
        std::fs::rename(root.path().join("a"), root.path().join("b")).unwrap();
        std::fs::write(root.path().join("a"), b"impostor").unwrap();
        let mut s = String::new();
        m.inspect(fd.as_fd())
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn a_symlinks_own_times_change_and_its_targets_do_not() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("target"), b"t").unwrap();
        std::os::unix::fs::symlink("target", root.path().join("link")).unwrap();
        let m = Mirror::open(root.path()).unwrap();
        let (fd, _) = m.lookup(m.root(), OsStr::new("link")).unwrap();
        let t = rustix::fs::Timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        };
        m.set_link_times(
            &Allowed::for_test(Op::Write),
            fd.as_fd(),
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
        )
        .unwrap();
        use std::os::unix::fs::MetadataExt;
        let link = std::fs::symlink_metadata(root.path().join("link")).unwrap();
        assert_eq!(link.mtime(), 1_000_000_000);
        let target = std::fs::metadata(root.path().join("target")).unwrap();
        assert_ne!(target.mtime(), 1_000_000_000);
    }

    #[test]
    fn a_proof_for_one_operation_is_not_one_for_another() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("x"), b"keep").unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        let m = Mirror::open(root.path()).unwrap();
        let eacces = |r: io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::EACCES);
        let read = Change::for_test(Op::Read);
        let write = Change::for_test(Op::Write);
        let x = OsStr::new("x");
        assert!(eacces(m.unlink(&read, m.root(), x)));
        assert!(eacces(m.unlink(&write, m.root(), x)));
        assert!(eacces(m.rmdir(read.allowed(), m.root(), OsStr::new("d"))));
        let delete = Change::for_test(Op::Delete);
        let moved = m.rename(
            (&delete, &delete),
            m.root(),
            x,
            m.root(),
            OsStr::new("y"),
            RenameFlags::empty(),
        );
        assert!(eacces(moved));
        assert!(
            m.create_file(&read, m.root(), OsStr::new("n"), 0o644, OFlags::WRONLY)
                .is_err()
        );
        let (fd, _) = m.lookup(m.root(), x).unwrap();
        assert!(m.open_write(&read, fd.as_fd(), OFlags::WRONLY).is_err());
        assert!(eacces(m.chmod(&read, fd.as_fd(), 0o600)));
        assert!(
            m.open_read(delete.allowed(), fd.as_fd(), OFlags::RDONLY)
                .is_err()
        );
        // A read proof opens for reading only, whatever flags it is given.
        let f = m
            .open_read(read.allowed(), fd.as_fd(), OFlags::RDWR | OFlags::TRUNC)
            .unwrap();
        assert!(std::io::Write::write(&mut &f, b"x").is_err());
        assert_eq!(std::fs::read(root.path().join("x")).unwrap(), b"keep");
        assert!(root.path().join("d").is_dir());
        // The right proof does it.
        m.unlink(&delete, m.root(), x).unwrap();
        assert!(!root.path().join("x").exists());
    }

    #[test]
    fn create_never_replaces() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("x"), b"old").unwrap();
        let m = Mirror::open(root.path()).unwrap();
        let create = Change::for_test(Op::Create);
        let e = m
            .create_file(&create, m.root(), OsStr::new("x"), 0o644, OFlags::WRONLY)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        let (mut f, _, st) = m
            .create_file(&create, m.root(), OsStr::new("y"), 0o644, OFlags::WRONLY)
            .unwrap();
        assert_eq!(Kind::of(&st), Kind::File);
        f.write_all(b"new").unwrap();
        assert_eq!(std::fs::read(root.path().join("y")).unwrap(), b"new");
        let names: Vec<_> = m
            .list(m.root())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names.len(), 2);
    }
}
