//! Extended attributes: only `user.*` attributes pass through the view, decided like the
//! file's content (a change to a provider file passes the writeback gate too); ACLs answer
//! `ENOTSUP`, as a filesystem without them does, so `cp -a` and `rsync -A` carry on.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::core::{Caller, GuardFs, Seen};
use super::error::{Error, FsResult};
use super::gate::{Allowed, Change};
use super::inode::Ino;
use super::mirror::Kind;
use crate::authz::Op;

impl GuardFs {
    /// The object an xattr call acts on, with the proof for `op` on it (a change to a regular
    /// file passes the writeback gate too).
    fn xattr_target(
        &self,
        caller: &Caller,
        ino: Ino,
        op: Op,
        operation: &str,
    ) -> FsResult<(Arc<OwnedFd>, Allowed, Option<Change>)> {
        let Seen {
            ctx,
            node,
            place,
            path,
        } = self.visible_node(caller, ino)?;
        let b = node.backing().ok_or(Error::ENOTSUP)?;
        if b.kind == Kind::Symlink || b.kind.is_special() {
            return Err(Error::ENOTSUP);
        }
        let op = if op == Op::Read && b.kind == Kind::Dir {
            Op::See
        } else {
            op
        };
        let (allowed, change) = if op == Op::Write {
            let allowed = self.gate.permit(&ctx, &path, &place, op, operation)?;
            let change = self.gate.change(&ctx, allowed.clone(), b.kind, operation)?;
            (allowed, Some(change))
        } else {
            let allowed = self
                .gate
                .check(&ctx, &path, &place, op)
                .map_err(|d| Error::of(d.errno().unwrap_or(libc::EACCES)))?;
            (allowed, None)
        };
        Ok((self.fd_of(&node)?, allowed, change))
    }

    pub fn getxattr(&self, caller: &Caller, ino: Ino, name: &OsStr) -> FsResult<Vec<u8>> {
        let (fd, proof, _) = self.xattr_target(caller, ino, Op::Read, "getxattr")?;
        match xattr_class(name) {
            XattrClass::User => {}
            XattrClass::Acl => return Err(Error::ENOTSUP),
            // Only `user.` attributes are shared through the view: the others (`trusted.`,
            // `security.`) describe the mirror's host, not the workspace.
            XattrClass::Other => return Err(Error::ENODATA),
        }
        Ok(self.mirror.getxattr(&proof, fd.as_fd(), name)?)
    }

    /// The `user.` attribute names only.
    pub fn listxattr(&self, caller: &Caller, ino: Ino) -> FsResult<Vec<u8>> {
        let (fd, proof, _) = self.xattr_target(caller, ino, Op::Read, "listxattr")?;
        let all = self.mirror.listxattr(&proof, fd.as_fd())?;
        let mut out = Vec::with_capacity(all.len());
        for name in all.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if name.starts_with(b"user.") {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn setxattr(
        &self,
        caller: &Caller,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        match xattr_class(name) {
            XattrClass::User => {}
            // As a filesystem without ACLs answers, so `cp -a` and `rsync -A` carry on.
            XattrClass::Acl => return Err(Error::ENOTSUP),
            XattrClass::Other => return Err(Error::EPERM),
        }
        let (fd, _, change) = self.xattr_target(caller, ino, Op::Write, "setxattr")?;
        let change = change.ok_or(Error::EACCES)?;
        let flags = rustix::fs::XattrFlags::from_bits_truncate(flags as u32);
        Ok(self
            .mirror
            .setxattr(&change, fd.as_fd(), name, value, flags)?)
    }

    pub fn removexattr(&self, caller: &Caller, ino: Ino, name: &OsStr) -> FsResult<()> {
        match xattr_class(name) {
            XattrClass::User => {}
            XattrClass::Acl => return Err(Error::ENOTSUP),
            XattrClass::Other => return Err(Error::EPERM),
        }
        let (fd, _, change) = self.xattr_target(caller, ino, Op::Write, "removexattr")?;
        let change = change.ok_or(Error::EACCES)?;
        Ok(self.mirror.removexattr(&change, fd.as_fd(), name)?)
    }
}

/// Which extended attributes the view passes on.
enum XattrClass {
    /// `user.*`: passed on, decided like the file's content.
    User,
    /// `system.posix_acl_*`: the view has no ACLs (ENOTSUP, as such a filesystem answers).
    Acl,
    /// Everything else: neither listed nor shown nor set.
    Other,
}

fn xattr_class(name: &OsStr) -> XattrClass {
    let name = name.as_bytes();
    if name.starts_with(b"user.") {
        XattrClass::User
    } else if name.starts_with(b"system.posix_acl_") {
        XattrClass::Acl
    } else {
        XattrClass::Other
    }
}
