//! The type of a mirror object, on its own so that the gate, the mirror and `_PERMISSIONS.md`
//! all name it without needing each other.

use rustix::fs::Stat;
use serde::Serialize;

/// The type of a mirror object, from its `st_mode`; `_PERMISSIONS.md` names it in lowercase
/// (`file`, `dir`, `symlink`, and `other` for the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A FIFO: the kernel opens it as a pipe, nothing of its data passes through the guard.
    #[serde(rename = "other")]
    Fifo,
    /// A Unix socket: connected to by the kernel, never opened as a file.
    #[serde(rename = "other")]
    Socket,
    /// A character or block device: shown, never opened, never created.
    #[serde(rename = "other")]
    Device,
}

impl Kind {
    pub fn of(stat: &Stat) -> Kind {
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            _ => Kind::Device,
        }
    }

    /// Neither a file, a directory nor a symlink: nothing the guard reads or writes.
    pub fn is_special(self) -> bool {
        matches!(self, Kind::Fifo | Kind::Socket | Kind::Device)
    }
}
