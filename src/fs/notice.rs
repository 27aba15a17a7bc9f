//! `_PERMISSIONS.md` as ordinary tools meet it.
//!
//! Every visible directory lists a generated `_PERMISSIONS.md`, so `rm -rf`, `cp -r`,
//! `rsync -a`, `tar x`, `find -delete` and `git clean` all run into it. Were it simply
//! read-only, `rm -rf` could never empty a directory, and a copy of a directory within the mount
//! would fail on its notice. So the notice behaves like an ordinary file whose changes vanish,
//! for a caller who could make that change to an ordinary file of that name there:
//!
//! - unlinking it succeeds (when the caller may delete such a file there) and changes nothing;
//!   for that session it is then absent from that directory until it is created again or the
//!   session lists the directory, so a tool that unlinks and re-creates it with `O_EXCL`
//!   (`tar x`) succeeds;
//! - in a directory a session has just made it is absent for that session in the same way (a new
//!   directory is empty to its maker: `cp -r` and `tar x` create every name in it with
//!   `O_EXCL`), until the session lists the directory or creates the notice there;
//! - creating, opening for writing, truncating, `chmod`/`utimes` of it, or renaming a file onto
//!   it (when the caller may create such a file there) succeeds; the bytes written are
//!   discarded, and a file renamed onto it is removed, as the rename would have replaced it;
//! - `rmdir` never sees it (it is not in the mirror), moving it elsewhere is refused.
//!
//! A caller without those rights gets `EACCES`, as before. Nothing about the notice ever
//! reaches the mirror, and reading it always gives the generated text.

use std::ffi::OsStr;

use super::core::GuardFs;
use super::gate::Ctx;
use super::inode::{Ino, child_path};
use crate::authz::{Decision, Op, PERMISSIONS_FILE, Place};

/// Whether `name` is the notice's name.
pub fn is_notice(name: &OsStr) -> bool {
    name.as_encoded_bytes() == PERMISSIONS_FILE.as_bytes()
}

/// How many "removed here" marks are kept; past that they are all dropped at once (a
/// forgotten mark only makes a notice reappear, which `rm -rf` then removes again).
const MAX_MARKS: usize = 16_384;

impl GuardFs {
    /// Whether this caller may `op` (create or delete) an ordinary file named like the notice
    /// in the directory at `dir_path`: then that change to the notice is accepted, and
    /// discarded.
    pub(crate) fn notice_accepts(&self, ctx: &Ctx, dir_path: &[u8], op: Op) -> bool {
        let path = child_path(dir_path, OsStr::new(PERMISSIONS_FILE));
        self.gate.decide(ctx, &path, &Place::Content, op).allowed()
    }

    /// Audit a change to the notice that was accepted and discarded.
    pub(crate) fn note_discarded(&self, ctx: &Ctx, dir_path: &[u8], op: Op, operation: &str) {
        let path = child_path(dir_path, OsStr::new(PERMISSIONS_FILE));
        let d = Decision::notice_discarded(op);
        self.gate.note(ctx, &path, operation, &d);
    }

    /// The session removed the notice of directory `dir`: it stays absent for that
    /// session until it is created there again.
    pub(crate) fn mark_notice_removed(&self, ctx: &Ctx, dir: Ino) {
        let Some(s) = &ctx.session else {
            return;
        };
        let mut marks = self.notice_marks.lock();
        if marks.len() >= MAX_MARKS {
            marks.clear();
        }
        marks.insert((s.serial(), dir));
    }

    /// The notice of `dir` is there again for this session.
    pub(crate) fn unmark_notice(&self, ctx: &Ctx, dir: Ino) {
        if let Some(s) = &ctx.session {
            let mut marks = self.notice_marks.lock();
            if !marks.is_empty() {
                marks.remove(&(s.serial(), dir));
            }
        }
    }

    /// Whether this session removed the notice of `dir`.
    pub(crate) fn notice_removed(&self, ctx: &Ctx, dir: Ino) -> bool {
        match &ctx.session {
            Some(s) => {
                let marks = self.notice_marks.lock();
                !marks.is_empty() && marks.contains(&(s.serial(), dir))
            }
            None => false,
        }
    }
}
