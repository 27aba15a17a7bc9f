//! Who owns what the guard makes: run as root for another user, the daemon creates
//! directories and symlinks with that user's filesystem ids and gives created files to their
//! creator on their own descriptor; a writeback keeps the owner of the file it replaces.

use std::os::fd::BorrowedFd;

use rustix::fs::Stat;

use super::core::{Caller, GuardFs};
use super::error::FsResult;
use super::gate::Allowed;

impl GuardFs {
    /// Whether the daemon runs as root on behalf of a caller with other ids than its own.
    fn acts_for_another(&self, caller: &Caller) -> bool {
        self.as_root && (caller.uid != self.gate.callers().owner() || caller.gid != self.daemon_gid)
    }

    /// Make a new object (behind `fd`, created in a directory whose stat is `dir`) belong to
    /// `caller`, as a native filesystem would: when the daemon runs as root it can, and does, so
    /// a file another user creates through the mount is theirs, not root's. A setgid directory
    /// keeps its group, as the kernel already gave it. As any other user the daemon cannot, and
    /// new objects belong to it (the README says so).
    pub(crate) fn give_to(
        &self,
        proof: &Allowed,
        caller: &Caller,
        fd: BorrowedFd<'_>,
        dir: &Stat,
    ) -> FsResult<()> {
        if !self.acts_for_another(caller) {
            return Ok(());
        }
        let gid = (dir.st_mode & libc::S_ISGID == 0).then_some(caller.gid);
        Ok(self.mirror.chown(proof, fd, Some(caller.uid), gid)?)
    }

    /// Run `make` (a `mkdirat` or `symlinkat` and the lookup of what it made) with this
    /// thread's filesystem ids set to `caller`'s when the daemon runs as root for someone else,
    /// so the kernel creates the object as the caller's. Nothing is chowned by name afterwards:
    /// the name could already hold another object (swapped in by someone who can write the
    /// mirror), which would then be given away. The ids are per thread and restored before
    /// returning.
    pub(crate) fn make_as<T>(&self, caller: &Caller, make: impl FnOnce() -> T) -> T {
        if !self.acts_for_another(caller) {
            return make();
        }
        struct Restore(u32);
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: setfsuid/setfsgid change only this thread's filesystem ids.
                unsafe {
                    libc::setfsuid(0);
                    libc::setfsgid(self.0);
                }
            }
        }
        let _restore = Restore(self.daemon_gid);
        // SAFETY: as above; the previous ids come back when `_restore` drops.
        unsafe {
            libc::setfsgid(caller.gid);
            libc::setfsuid(caller.uid);
        }
        make()
    }

    /// Give a staged copy the owner and group of the file it replaces (root only; see
    /// [`GuardFs::give_to`]), so a writeback never changes who owns a file.
    pub(crate) fn keep_owner(&self, staged: &std::fs::File, like: &Stat) -> FsResult<()> {
        if !self.as_root {
            return Ok(());
        }
        Ok(self
            .mirror
            .own_staged(&self.area, staged, like.st_uid, like.st_gid)?)
    }
}
