//! The core's answer to the kernel: an errno, from a decision or from the mirror.

use std::io;

/// An errno for the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
}

/// The errno a refusing decision answers with (`Ok` when it allows).
pub(crate) fn errno_of(d: &crate::authz::Decision) -> FsResult<()> {
    match d.verdict.errno() {
        Some(e) => Err(Errno(e)),
        None => Ok(()),
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Errno {
        Errno(e.raw_os_error())
    }
}

pub type FsResult<T> = Result<T, Errno>;
