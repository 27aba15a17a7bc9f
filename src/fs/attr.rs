//! File attributes as the caller sees them: the mirror's stat, with permission bits that
//! reflect the caller's rights (no `w` where writing is refused) so that `ls -l`, `test -w` and
//! editors behave as enforcement will. The bits shown never exceed either the mirror's own mode
//! or the caller's rights: a `chmod 600` in the mirror stays visible (and survives `cp -a` out
//! of the mount), and a right the token lacks is never suggested by the mode.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use rustix::fs::Stat;

use super::inode::Ino;
use super::mirror::Kind;

/// The rights that shape the permission bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

impl Rights {
    /// The `rwx` bits these rights allow, repeated for user, group and other.
    pub fn mode(self) -> u16 {
        let bits =
            (u16::from(self.read) << 2) | (u16::from(self.write) << 1) | u16::from(self.exec);
        (bits << 6) | (bits << 3) | bits
    }

    /// The mirror's permission bits limited to these rights. Setuid and setgid bits are never
    /// shown (the mount is `nosuid` and refuses to set them); the sticky bit is kept.
    pub fn limit(self, st_mode: u32) -> u16 {
        (st_mode & 0o1777) as u16 & (self.mode() | 0o1000)
    }
}

/// A stat time as a `SystemTime`.
pub fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = nsecs.clamp(0, 999_999_999) as u32;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            + Duration::from_nanos(u64::from(nsecs))
    }
}

pub fn file_type(kind: Kind, mode: u32) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::Device if mode & libc::S_IFMT == libc::S_IFBLK => FileType::BlockDevice,
        Kind::Device => FileType::CharDevice,
    }
}

/// The attributes of a mirror object for a caller with `rights`.
pub fn from_stat(ino: Ino, st: &Stat, rights: Rights) -> FileAttr {
    let kind = Kind::of(st);
    let perm = if kind == Kind::Symlink {
        0o777
    } else {
        rights.limit(st.st_mode)
    };
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size.max(0) as u64,
        blocks: st.st_blocks.max(0) as u64,
        atime: time(st.st_atime, st.st_atime_nsec as i64),
        mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
        ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
        crtime: time(st.st_ctime, st.st_ctime_nsec as i64),
        kind: file_type(kind, st.st_mode),
        perm,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The attributes of a generated file of `size` bytes: read-only, or `writable` where a write
/// to it is accepted (and discarded).
pub fn generated(ino: Ino, size: usize, like: &Stat, writable: bool) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: size as u64,
        blocks: (size as u64).div_ceil(512),
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind: FileType::RegularFile,
        perm: Rights {
            read: true,
            write: writable,
            exec: false,
        }
        .mode()
            & 0o644,
        nlink: 1,
        uid: like.st_uid,
        gid: like.st_gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(
            Rights {
                read: true,
                write: false,
                exec: false
            }
            .mode(),
            0o444
        );
        assert_eq!(
            Rights {
                read: true,
                write: true,
                exec: true
            }
            .mode(),
            0o777
        );
        assert_eq!(
            Rights {
                read: true,
                write: true,
                exec: false
            }
            .mode(),
            0o666
        );
        let rw = Rights {
            read: true,
            write: true,
            exec: false,
        };
        assert_eq!(rw.limit(0o100600), 0o600, "a private file stays private");
        assert_eq!(
            rw.limit(0o100755),
            0o644,
            "no x without the right to execute"
        );
        assert_eq!(
            rw.limit(0o106777),
            0o666,
            "setuid and setgid are never shown"
        );
        assert_eq!(
            Rights {
                read: true,
                write: false,
                exec: true
            }
            .limit(0o41777),
            0o1555,
            "a read-only sticky directory"
        );
        assert_eq!(time(-1, 0), UNIX_EPOCH - Duration::from_secs(1));
    }
}
