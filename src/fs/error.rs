//! The core's one error type: the errno the kernel gets, what went wrong in words, the I/O
//! error behind it, and how loudly it deserves to be logged.
//!
//! Refusals and the everyday answers of a filesystem (`ENOENT`, `EEXIST`, `ENOTEMPTY`, ...) are
//! expected and logged at debug level; a failure of the mirror itself (`EIO`, `ENOSPC`, a commit
//! whose rename failed) is a warning, with its message and source. The FUSE adapter logs each
//! error once, with the operation and node (see `crate::fuse`), so nothing that goes wrong in
//! the core leaves no trace, and nothing is logged twice.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::sync::Arc;

/// How loudly an error is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Expected: a refusal, a name that does not exist.
    Debug,
    /// The mirror or the guard failed at something it should have managed.
    Warn,
}

/// An error of the core: an errno for the kernel, with what is known about it.
#[derive(Clone, Debug)]
pub struct Error {
    errno: i32,
    message: Option<Cow<'static, str>>,
    source: Option<Arc<io::Error>>,
    level: Level,
    /// Already in the audit log as the refusal it is: an operation that audits itself once
    /// (a rename) writes nothing more for it.
    audited: bool,
}

/// Errors compare by errno: that is what the kernel, and a test, sees.
impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        self.errno == other.errno
    }
}

impl Eq for Error {}

impl Error {
    pub const ENOENT: Error = Error::of(libc::ENOENT);
    pub const EACCES: Error = Error::of(libc::EACCES);
    pub const EPERM: Error = Error::of(libc::EPERM);
    pub const EINVAL: Error = Error::of(libc::EINVAL);
    pub const EIO: Error = Error::of(libc::EIO);
    pub const ENOTDIR: Error = Error::of(libc::ENOTDIR);
    pub const EISDIR: Error = Error::of(libc::EISDIR);
    pub const EBADF: Error = Error::of(libc::EBADF);
    pub const EXDEV: Error = Error::of(libc::EXDEV);
    pub const ENODATA: Error = Error::of(libc::ENODATA);
    pub const ENOTSUP: Error = Error::of(libc::ENOTSUP);
    pub const ERANGE: Error = Error::of(libc::ERANGE);
    pub const EFBIG: Error = Error::of(libc::EFBIG);
    /// The node the kernel asked about no longer stands where its name is: the kernel looks
    /// the name up again (once, with revalidation) and retries the call on what is there now.
    pub const ESTALE: Error = Error::of(libc::ESTALE);

    /// An errno with nothing more to say, at the level its errno suggests.
    pub const fn of(errno: i32) -> Error {
        Error {
            errno,
            message: None,
            source: None,
            level: level_of(errno),
            audited: false,
        }
    }

    /// The same error, saying what went wrong.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Error {
        self.message = Some(message.into());
        self
    }

    /// The same error, logged as a warning: something failed that should not have.
    pub fn warn(mut self) -> Error {
        self.level = Level::Warn;
        self
    }

    /// The same error, marked as audited (only the gate, which wrote the record, says so).
    pub(crate) fn audited_refusal(mut self) -> Error {
        self.audited = true;
        self
    }

    /// Whether the refusal this error reports is already audited.
    pub fn is_audited(&self) -> bool {
        self.audited
    }

    pub fn errno(&self) -> i32 {
        self.errno
    }

    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Log this error once, for `operation` on node `ino`. Nothing is formatted unless the
    /// level is enabled (every failed lookup comes through here).
    pub fn log(&self, operation: &str, ino: u64) {
        let message = self.message.as_deref().unwrap_or("");
        let source = self.source.as_deref().map(tracing::field::display);
        match self.level {
            Level::Debug => tracing::debug!(
                operation,
                ino,
                errno = self.errno,
                message,
                source,
                "request failed"
            ),
            Level::Warn => tracing::warn!(
                operation,
                ino,
                errno = self.errno,
                message,
                source,
                "request failed"
            ),
        }
    }
}

/// The errnos of a filesystem's ordinary answers, which are no news in a log.
const fn level_of(errno: i32) -> Level {
    match errno {
        libc::ENOENT
        | libc::EACCES
        | libc::EPERM
        | libc::EEXIST
        | libc::ENOTEMPTY
        | libc::ENOTDIR
        | libc::EISDIR
        | libc::EXDEV
        | libc::EBUSY
        | libc::EINVAL
        | libc::ENODATA
        | libc::ENOTSUP
        | libc::ERANGE
        | libc::ENAMETOOLONG
        | libc::ESTALE
        | libc::EBADF => Level::Debug,
        _ => Level::Warn,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errno = io::Error::from_raw_os_error(self.errno);
        match &self.message {
            Some(m) => write!(f, "{m} ({errno})")?,
            None => write!(f, "{errno}")?,
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An OS error is its errno and nothing more, so only an error with words of its own is kept
/// as the source: a failed lookup (the commonest error there is) allocates nothing.
impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(errno) => Error::of(errno),
            None => Error {
                source: Some(Arc::new(e)),
                ..Error::of(libc::EIO)
            },
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Error {
        Error::from(io::Error::from(e))
    }
}

pub type FsResult<T> = Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_keeps_its_errno_and_source() {
        let e = Error::from(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.errno(), libc::ENOSPC);
        assert_eq!(e.level(), Level::Warn);
        let e = Error::from(io::Error::other("no errno"));
        assert_eq!(e.errno(), libc::EIO);
        assert!(std::error::Error::source(&e).is_some());
        let e = Error::ENOENT.with_message("gone");
        assert_eq!(e, Error::ENOENT);
        assert_eq!(e.level(), Level::Debug);
        assert!(e.to_string().starts_with("gone ("));
        assert_eq!(Error::EACCES.warn().level(), Level::Warn);
    }
}
