//! Kernel passthrough (`--io passthrough`, DESIGN section 7): after an authorized open the
//! kernel reads and writes the mirror file itself, without a round trip to the daemon.
//!
//! Two things live here, both on the adapter's side of the core:
//! - [`unavailable`]: whether this machine can do it at all (Linux 6.9+, `CAP_SYS_ADMIN` in the
//!   initial user namespace, which the kernel demands of the backing-file ioctl), asked before
//!   mounting so the user is told plainly and the mount falls back to strict;
//! - [`Backings`]: the kernel's backing ids. The kernel insists that every passthrough open of
//!   one inode uses the same backing id while any of them is open, so there is one id per inode,
//!   shared and counted, closed with the last release.
//!
//! Only a plain mirror file gets passthrough: the core decides that (`Opened::passthrough`),
//! never for `_PERMISSIONS.md`, `/.relay` views or staged writebacks, whose bytes the daemon has
//! to produce or check itself.

use std::sync::Arc;

use fuser::BackingId;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

/// The inode number the kernel gives the initial user namespace (`PROC_USER_INIT_INO`).
const INITIAL_USER_NS: &str = "user:[4026531837]";

/// `CAP_SYS_ADMIN`'s bit in the capability sets of `/proc/<pid>/status`.
const CAP_SYS_ADMIN: u32 = 21;

/// Why kernel passthrough cannot be used here, or `None` when it can (as far as can be told
/// before the kernel answers the mount's `init`).
pub fn unavailable() -> Option<String> {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    if !kernel_at_least(&release, (6, 9)) {
        return Some(format!(
            "the kernel is {release}; FUSE passthrough needs Linux 6.9 or newer"
        ));
    }
    if !has_sys_admin() {
        return Some(
            "the daemon lacks CAP_SYS_ADMIN, which the kernel requires to hand a file to FUSE \
             passthrough (run the mount as root)"
                .to_owned(),
        );
    }
    match std::fs::read_link("/proc/self/ns/user") {
        Ok(ns) if ns.as_os_str() == INITIAL_USER_NS => None,
        Ok(_) => Some(
            "the daemon runs in a user namespace; FUSE passthrough needs CAP_SYS_ADMIN in the \
             initial one (run the mount as root on the host)"
                .to_owned(),
        ),
        Err(e) => Some(format!("cannot tell the daemon's user namespace: {e}")),
    }
}

/// Whether a kernel release string (`6.18.0-1-amd64`) is at least `want`.
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// Whether this process holds `CAP_SYS_ADMIN` in its effective set.
fn has_sys_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// The backing ids of open passthrough files: one per inode, counted by its open handles.
#[derive(Debug, Default)]
pub struct Backings {
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// inode -> (its backing id, how many open handles use it)
    by_ino: FxHashMap<u64, (Arc<BackingId>, usize)>,
    /// handle -> inode, for the release
    by_fh: FxHashMap<u64, u64>,
}

impl Backings {
    /// The backing id for handle `fh` of inode `ino`: the inode's existing one, or a new one
    /// made by `open` (the kernel's ioctl on the handle's mirror file).
    pub fn acquire(
        &self,
        ino: u64,
        fh: u64,
        open: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<Arc<BackingId>> {
        let mut t = self.inner.lock();
        let id = match t.by_ino.get_mut(&ino) {
            Some((id, users)) => {
                *users += 1;
                id.clone()
            }
            None => {
                let id = Arc::new(open()?);
                t.by_ino.insert(ino, (id.clone(), 1));
                id
            }
        };
        t.by_fh.insert(fh, ino);
        Ok(id)
    }

    /// Handle `fh` is released: its inode's backing id is closed when no handle uses it any
    /// more (the kernel keeps what it opened for files still open on its side).
    pub fn release(&self, fh: u64) {
        let mut t = self.inner.lock();
        let Some(ino) = t.by_fh.remove(&fh) else {
            return;
        };
        if let Some((_, users)) = t.by_ino.get_mut(&ino) {
            *users -= 1;
            if *users == 0 {
                // Dropping the last reference closes the id (FUSE_DEV_IOC_BACKING_CLOSE).
                t.by_ino.remove(&ino);
            }
        }
    }

    /// How many backing ids are open (one per inode with passthrough handles).
    pub fn open_count(&self) -> usize {
        self.inner.lock().by_ino.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(kernel_at_least("6.18.0-1-amd64", (6, 9)));
        assert!(kernel_at_least("6.9", (6, 9)));
        assert!(kernel_at_least("7.0.1", (6, 9)));
        assert!(!kernel_at_least("6.8.12-generic", (6, 9)));
        assert!(!kernel_at_least("5.15.0", (6, 9)));
        assert!(!kernel_at_least("garbage", (6, 9)));
    }
}
