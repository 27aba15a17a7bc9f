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

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, Mode, OFlags, RenameFlags, Stat, StatVfs, Timestamps};

/// The type of a mirror object, from its `st_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFOs, sockets and device nodes: shown, never opened.
    Special,
}

impl Kind {
    pub fn of(stat: &Stat) -> Kind {
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        }
    }
}

/// Whether `name` is a single, real directory entry name.
pub fn valid_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b != b"." && b != b".." && !b.contains(&b'/') && !b.contains(&0)
}

/// A directory entry as listed from the mirror.
#[derive(Clone, Debug)]
pub struct Entry {
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

    pub fn stat(&self, fd: BorrowedFd<'_>) -> io::Result<Stat> {
        Ok(rustix::fs::fstat(fd)?)
    }

    /// Open the object behind an `O_PATH` descriptor for I/O. The caller has checked that it is
    /// a regular file or a directory (never a symlink).
    pub fn reopen(&self, fd: BorrowedFd<'_>, flags: OFlags) -> io::Result<File> {
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
    pub fn list(&self, dir: BorrowedFd<'_>) -> io::Result<Vec<Entry>> {
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
                _ => Some(Kind::Special),
            };
            out.push(Entry {
                name: OsStr::from_bytes(name).to_owned(),
                ino: entry.ino(),
                kind,
            });
        }
        Ok(out)
    }

    /// Create a new regular file (never following or replacing anything) and open it.
    pub fn create_file(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
        flags: OFlags,
    ) -> io::Result<(File, OwnedFd, Stat)> {
        check(name)?;
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
                    self.undo_create(dir, name, &st);
                }
                Err(e)
            }
        }
    }

    pub fn mkdir(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
    ) -> io::Result<(OwnedFd, Stat)> {
        check(name)?;
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode & 0o777))?;
        self.lookup(dir, name).inspect_err(|_| {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR);
        })
    }

    pub fn symlink(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        target: &Path,
    ) -> io::Result<(OwnedFd, Stat)> {
        check(name)?;
        rustix::fs::symlinkat(target, dir, name)?;
        self.lookup(dir, name).inspect_err(|_| {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
        })
    }

    /// Remove what was just created as `name` in `dir` (a step after the create failed), but
    /// only if the name still holds that very object.
    pub fn undo_create(&self, dir: BorrowedFd<'_>, name: &OsStr, created: &Stat) {
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

    pub fn unlink(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        check(name)?;
        Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
    }

    pub fn rmdir(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        check(name)?;
        Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
    }

    pub fn rename(
        &self,
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

    /// The target of a symlink held as an `O_PATH | O_NOFOLLOW` descriptor.
    pub fn readlink(&self, fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
        Ok(rustix::fs::readlinkat(fd, "", Vec::new())?.into_bytes())
    }

    pub fn truncate(&self, fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
        let f = self.reopen(fd, OFlags::WRONLY)?;
        f.set_len(size)
    }

    pub fn chmod(&self, fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::chmodat(
            &self.proc_fd,
            fd_name(fd),
            Mode::from_raw_mode(mode & 0o7777),
            AtFlags::empty(),
        )?)
    }

    /// Change the owner and/or group of the object behind a descriptor (an `O_PATH` one
    /// included; a symlink itself, never its target).
    pub fn chown(&self, fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        Ok(rustix::fs::chownat(
            fd,
            "",
            uid.map(rustix::fs::Uid::from_raw),
            gid.map(rustix::fs::Gid::from_raw),
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// The times of a symlink itself (never its target), through its `O_PATH | O_NOFOLLOW`
    /// descriptor.
    pub fn set_link_times(&self, fd: BorrowedFd<'_>, times: &Timestamps) -> io::Result<()> {
        Ok(rustix::fs::utimensat(
            fd,
            "",
            times,
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    pub fn set_times(&self, fd: BorrowedFd<'_>, times: &Timestamps) -> io::Result<()> {
        Ok(rustix::fs::utimensat(
            &self.proc_fd,
            fd_name(fd),
            times,
            AtFlags::empty(),
        )?)
    }

    pub fn statvfs(&self) -> io::Result<StatVfs> {
        Ok(rustix::fs::fstatvfs(&self.root)?)
    }

    /// The `/proc/self/fd/<n>` path of a descriptor, for the xattr calls that only take paths.
    pub fn proc_path(&self, fd: BorrowedFd<'_>) -> String {
        format!("/proc/self/fd/{}", fd.as_raw_fd())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

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
        m.reopen(fd.as_fd(), OFlags::RDONLY)
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
    fn create_never_replaces() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("x"), b"old").unwrap();
        let m = Mirror::open(root.path()).unwrap();
        let e = m
            .create_file(m.root(), OsStr::new("x"), 0o644, OFlags::WRONLY)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        let (mut f, _, st) = m
            .create_file(m.root(), OsStr::new("y"), 0o644, OFlags::WRONLY)
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
