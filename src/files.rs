//! Reading the small files the daemon depends on (token, credentials bundle, policy file, key
//! set, refresh lock) without letting the file decide how long that takes.
//!
//! Those paths are named by users and live in directories other programs write. Opening a FIFO
//! for reading blocks until a writer appears, reading `/dev/zero` never ends, and a slow network
//! filesystem can stall a read for minutes; any of these on the async runtime would wedge the
//! revocation checks, signal handling and unmount that run there. So files are opened
//! non-blocking, accepted only when `fstat` says they are regular, read up to a cap, and, from
//! async code, read on the blocking pool under a timeout.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no such file")]
    NotFound,
    #[error("it is a {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("it is larger than the {cap}-byte limit")]
    TooLarge { cap: u64 },
    #[error("reading it took longer than {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ReadError {
    #[cfg(test)]
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::NotFound)
    }
}

/// How long an async read of a small file may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "device"
    } else {
        "special file"
    }
}

/// Open `path` (following symlinks, as configuration paths may be links) without blocking and
/// only if it is a regular file.
pub fn open_regular(path: &Path, write: bool) -> Result<File, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Io(e),
        })?;
    let ft = file.metadata()?.file_type();
    if !ft.is_file() {
        return Err(ReadError::NotRegular(kind_name(ft)));
    }
    Ok(file)
}

/// The whole content of the regular file at `path`, at most `cap` bytes.
pub fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let file = open_regular(path, false)?;
    if file.metadata()?.len() > cap {
        return Err(ReadError::TooLarge { cap });
    }
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge { cap });
    }
    Ok(bytes)
}

/// [`read_regular`] on the blocking pool, given up after `timeout` (the read itself may go on
/// in the background; nothing waits for it).
pub async fn read_regular_async(
    path: PathBuf,
    cap: u64,
    timeout: Duration,
) -> Result<Vec<u8>, ReadError> {
    blocking(timeout, move || read_regular(&path, cap))
        .await
        .and_then(|r| r)
}

/// Run `f` on the blocking pool; `TimedOut` when it does not finish within `timeout`.
pub async fn blocking<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReadError> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ReadError::Io(io::Error::other(e.to_string()))),
        Err(_) => Err(ReadError::TimedOut(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_and_nothing_else_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read_regular(&file, 10).unwrap(), b"abc");
        assert!(matches!(
            read_regular(&file, 2),
            Err(ReadError::TooLarge { cap: 2 })
        ));
        assert!(
            read_regular(&dir.path().join("missing"), 10)
                .unwrap_err()
                .is_not_found()
        );
        // A FIFO nobody writes to: refused at once instead of blocking forever.
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            read_regular(&fifo, 10),
            Err(ReadError::NotRegular("FIFO"))
        ));
        assert!(matches!(
            read_regular(dir.path(), 10),
            Err(ReadError::NotRegular("directory"))
        ));
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 10),
            Err(ReadError::NotRegular("device"))
        ));
        // A symlink to a regular file is followed (configuration paths are often links).
        std::os::unix::fs::symlink(&file, dir.path().join("link")).unwrap();
        assert_eq!(read_regular(&dir.path().join("link"), 10).unwrap(), b"abc");
    }

    #[test]
    fn async_reads_give_up_after_the_timeout() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let slow = rt.block_on(blocking(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_millis(500));
        }));
        assert!(matches!(slow, Err(ReadError::TimedOut(_))));
    }
}
