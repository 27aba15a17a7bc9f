//! The type of a mirror object, on its own so that the gate, the mirror and `_PERMISSIONS.md`
//! all name it without needing each other.

use rustix::fs::Stat;
use serde::Serialize;

/// The type of a mirror object, from its `st_mode`; `_PERMISSIONS.md` names it in lowercase
/// (`file`, `dir`, `symlink`, `other`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFOs, sockets and device nodes: shown, never opened.
    #[serde(rename = "other")]
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
