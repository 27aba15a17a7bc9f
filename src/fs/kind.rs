//! The type of a mirror object, on its own so that the gate and the mirror can both name it
//! without needing each other.

use rustix::fs::Stat;

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
