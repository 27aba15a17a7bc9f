//! Open files and directories, and staged writebacks.
//!
//! A handle remembers the session that opened it, and in strict mode every `read` and `write`
//! checks that session again, so a revoked or expired session loses its open files too.
//!
//! Writes to a provider-backed path never go to the mirror directly. They go to a staging file
//! in the guard's folder under `/.relay` (relayfile never uploads from there), and when the
//! writer closes the file the content is validated against the writeback policy and moved into
//! place with one `rename`: nothing half-written or invalid ever reaches the mirror, so nothing
//! of the kind is pushed to a provider. A rejected payload makes `close()` fail (`EINVAL` for
//! invalid content, `EACCES` for a refused policy) and is kept in the quarantine folder.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rustix::fs::{OFlags, RenameFlags, Stat};

use super::core::{Caller, Error, FsResult, GuardFs, Seen};
use super::gate::{Change, Ctx, Refusal, WritebackPermit};
use super::handle_table::{Body, DirItem, Edits, Handle, Opened, Stage, Staged, Target};
use super::inode::{Ino, Node, NodeKind};
use super::mirror::Kind;
use crate::audit::Outcome;
use crate::authz::{Op, Place};
use crate::session::{Session, State};
use crate::writeback::{self, SchemaSource};

use crate::writeback::MAX_PAYLOAD;

/// Schemas looked up inside the mirror through descriptors: `/.relay/schemas/<ref>.json`, else
/// `<ref>.schema.json` beside the written file.
struct MirrorSchemas<'a> {
    fs: &'a GuardFs,
    parent: Option<Arc<Node>>,
}

impl SchemaSource for MirrorSchemas<'_> {
    fn load(&self, schema_ref: &str, _path: &str) -> Result<serde_json::Value, String> {
        if !writeback::plain_schema_ref(schema_ref) {
            return Err(format!(
                "schema reference {schema_ref:?} is not a plain name"
            ));
        }
        let m = &self.fs.mirror;
        let from_relay = (|| {
            let (relay, _) = m.lookup(m.root(), OsStr::new(".relay")).ok()?;
            let (schemas, _) = m.lookup(relay.as_fd(), OsStr::new("schemas")).ok()?;
            let (f, st) = m
                .lookup(schemas.as_fd(), OsStr::new(&format!("{schema_ref}.json")))
                .ok()?;
            (Kind::of(&st) == Kind::File).then_some(f)
        })();
        // A schema beside the file counts only when no session of this mount may change it:
        // otherwise a payload that is also a permissive schema could replace it.
        let mut writable_sibling = false;
        let beside = || {
            let parent = self.parent.as_ref()?;
            let dir = self.fs.fd_of(parent).ok()?;
            let name = format!("{schema_ref}.schema.json");
            let (f, st) = m.lookup(dir.as_fd(), OsStr::new(&name)).ok()?;
            if Kind::of(&st) != Kind::File {
                return None;
            }
            let path = super::inode::child_path(&parent.path(), OsStr::new(&name));
            if self.fs.gate.changeable_by_any_session(&path) {
                writable_sibling = true;
                return None;
            }
            Some(f)
        };
        let Some(fd) = from_relay.or_else(beside) else {
            if writable_sibling {
                return Err(format!(
                    "schema {schema_ref} is not in /.relay/schemas, and the {schema_ref}.schema.json beside \
                     the file does not count because an agent of this mount may change it; the write is \
                     refused until the schema is in /.relay/schemas/{schema_ref}.json"
                ));
            }
            return Err(format!(
                "schema {schema_ref} was not found in /.relay/schemas/{schema_ref}.json nor beside the file \
                 as {schema_ref}.schema.json; the write is refused until it exists"
            ));
        };
        let bytes = self
            .fs
            .read_all(fd.as_fd(), MAX_SCHEMA)
            .map_err(|e| format!("schema {schema_ref} cannot be read (errno {})", e.errno()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("schema {schema_ref} is not JSON: {e}"))
    }
}

/// A name in the quarantine for refused bytes of `path`: the time, a number no other name of
/// this daemon has, and the path with `%` and `/` percent-encoded (so two paths never flatten to
/// one name), cut from the front to fit `NAME_MAX`.
fn quarantine_name(path: &str) -> OsString {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut flat = String::with_capacity(path.len());
    for c in path.trim_start_matches('/').chars() {
        match c {
            '%' => flat.push_str("%25"),
            '/' => flat.push_str("%2F"),
            c => flat.push(c),
        }
    }
    // Keep the end of the path, which says most about the file.
    let mut start = flat.len().saturating_sub(200);
    while !flat.is_char_boundary(start) {
        start += 1;
    }
    let seq = STAGE_SEQ.fetch_add(1, Ordering::Relaxed);
    OsString::from(format!(
        "{stamp}-{}-{seq}-{}",
        std::process::id(),
        &flat[start..]
    ))
}

/// How many names a quarantine tries before it gives up (only a name left by another daemon
/// with the same process id, in the same millisecond, could be taken).
const QUARANTINE_TRIES: usize = 8;

/// One entry of a `readdirplus` reply.
pub struct PlusEntry<'a> {
    pub name: &'a OsStr,
    /// The offset of the entry after this one.
    pub next: u64,
    pub kind: fuser::FileType,
    /// The attributes to hand the kernel; `None` for a name it is not to cache (node 0).
    pub entry: Option<super::core::Entry>,
}

/// Schemas bigger than this are not read (and so writes they govern are refused): a JSON
/// schema is a few kilobytes; this leaves room for generated ones.
const MAX_SCHEMA: u64 = 8 << 20;

/// `copy_file_range` moves at most this much per call (the kernel calls again for the rest),
/// so one call never holds more than this in memory.
const COPY_CHUNK: u64 = 16 << 20;

static STAGE_SEQ: AtomicU64 = AtomicU64::new(0);

impl GuardFs {
    /// Validate `content` as the payload of the writeback `permit` allows to `path`, with
    /// schemas found from `parent`. The policy is the one the permit names: a reload that
    /// dropped it since fails closed.
    pub(crate) fn validate_payload(
        &self,
        permit: &WritebackPermit,
        path: &str,
        content: &[u8],
        parent: Option<Arc<Node>>,
    ) -> Result<(), Refusal> {
        let policies = self.gate.policies();
        let Some(policy) = policies.by_id(permit.policy_id()) else {
            return Err((
                Error::EACCES,
                format!(
                    "writeback policy {} was removed while {path} was being written",
                    permit.policy_id()
                ),
            ));
        };
        let schemas = MirrorSchemas { fs: self, parent };
        policies
            .check_payload(policy, path, content, &schemas)
            .map_err(|r| (Error::of(r.errno()), r.message().to_owned()))
    }

    /// A new staging file, optionally holding a copy of `from`.
    pub(crate) fn stage(
        &self,
        mode: u32,
        from: Option<BorrowedFd<'_>>,
    ) -> FsResult<(File, OsString)> {
        let name = OsString::from(format!(
            "{}-{}",
            std::process::id(),
            STAGE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = self.mirror.stage(&self.area, &name, mode)?;
        if let Some(src) = from {
            let copied = (|| -> io::Result<()> {
                let mut src = self.mirror.inspect(src)?;
                io::copy(&mut src, &mut file)?;
                file.seek(SeekFrom::Start(0))?;
                Ok(())
            })();
            if let Err(e) = copied {
                self.mirror.unstage(&self.area, &name);
                return Err(e.into());
            }
        }
        Ok((file, name))
    }

    /// A staging file that will replace the file whose stat is `like`: same permission bits
    /// and, where the daemon can set it, the same owner; optionally a copy of `from`.
    pub(crate) fn stage_like(
        &self,
        like: &Stat,
        from: Option<BorrowedFd<'_>>,
    ) -> FsResult<(File, OsString)> {
        let (file, name) = self.stage(like.st_mode & 0o777, from)?;
        if let Err(e) = self.keep_owner(&file, like) {
            self.mirror.unstage(&self.area, &name);
            return Err(e);
        }
        Ok((file, name))
    }

    // ------------------------------------------------------------------ open / create

    /// Open `ino`.
    pub fn open(&self, caller: &Caller, ino: Ino, flags: OFlags) -> FsResult<Opened> {
        let Seen {
            ctx,
            node,
            place,
            path,
        } = self.visible_node(caller, ino)?;
        let acc = flags & OFlags::RWMODE;
        let write = acc != OFlags::RDONLY || flags.contains(OFlags::TRUNC);
        let read = acc != OFlags::WRONLY;
        // Writing the notice where an ordinary file of its name could be made is accepted, and
        // what is written is discarded (see `notice`).
        let sink = match &node.kind {
            NodeKind::Permissions { dir } if write => self.notice_writable(&ctx, *dir),
            _ => false,
        };
        // One audit per open: the write decision when it writes, else the read's.
        let read_proof = match (read, write) {
            (false, _) => None,
            (true, false) => Some(self.gate.permit(&ctx, &path, &place, Op::Read, "open")?),
            (true, true) => Some(
                self.gate
                    .check(&ctx, &path, &place, Op::Read)
                    .map_err(|d| self.gate.refuse(&ctx, &path, &d, "open"))?,
            ),
        };
        let mut write_proof = None;
        if sink {
            self.note_discarded(&ctx, super::inode::parent_path(&path), Op::Write, "open");
        } else if write {
            write_proof = Some(self.gate.permit(&ctx, &path, &place, Op::Write, "open")?);
        }
        let mut kept = None;
        let body = match &node.kind {
            NodeKind::Permissions { .. } if sink => {
                Body::Sink(self.render_permissions(&ctx, &node)?)
            }
            NodeKind::Permissions { .. } => Body::Bytes(self.render_permissions(&ctx, &node)?),
            NodeKind::RelayView { .. } => Body::Bytes(self.relay_view_content(&ctx, &node)?.into()),
            NodeKind::Backed(b) => {
                let kind = b.read().kind;
                match kind {
                    Kind::Dir => return Err(Error::EISDIR),
                    Kind::Symlink | Kind::Fifo | Kind::Socket | Kind::Device => {
                        return Err(Error::EACCES);
                    }
                    Kind::File => {}
                }
                let fd = self.fd_of(&node)?;
                let change = match write_proof {
                    Some(w) => Some(self.gate.change(&ctx, w, Kind::File, "open")?),
                    None => None,
                };
                let body = match &change {
                    Some(c) if c.writeback().is_some() && node.passthrough_open() => {
                        // The kernel would refuse the staged (non-passthrough) open with EIO.
                        tracing::warn!(
                            path = %String::from_utf8_lossy(&path),
                            "a writeback open was refused: another process has this file open \
                             for passthrough I/O; close it and try again, or mount with --io \
                             strict"
                        );
                        return Err(Error::of(libc::EBUSY));
                    }
                    Some(c) if c.writeback().is_some() => {
                        // A node the mirror replaced under its name (the kernel's cache still
                        // points at it): ESTALE makes the kernel look the name up again and
                        // open what is there now, instead of staging bytes that could never
                        // be placed.
                        let loc = node.location();
                        let parent = self.located(loc.parent)?;
                        let parent_fd = self.dir_fd(&parent)?;
                        if !self.still_at(fd.as_fd(), parent_fd.as_fd(), loc.name()) {
                            return Err(Error::of(libc::ESTALE));
                        }
                        let st = self.mirror.stat(fd.as_fd())?;
                        let copy = (!flags.contains(OFlags::TRUNC)).then(|| fd.as_fd());
                        let (file, name) = self.stage_like(&st, copy)?;
                        let edits = if flags.contains(OFlags::TRUNC) {
                            Edits::Touched
                        } else {
                            Edits::None
                        };
                        Body::Staged(Mutex::new(Staged::new(
                            Target::Replace,
                            crate::session::callers::thread_group(caller.pid),
                            (file, name),
                            edits,
                            Some(fd.clone()),
                        )))
                    }
                    _ => {
                        let keep = OFlags::RWMODE
                            | OFlags::APPEND
                            | OFlags::TRUNC
                            | OFlags::SYNC
                            | OFlags::DSYNC;
                        let f = flags & keep;
                        let file = match (&change, &read_proof) {
                            (Some(c), _) => self.mirror.open_write(c, fd.as_fd(), f)?,
                            (None, Some(r)) => self.mirror.open_read(r, fd.as_fd(), f)?,
                            (None, None) => return Err(Error::EACCES),
                        };
                        Body::File(file)
                    }
                };
                kept = change;
                body
            }
        };
        let opened = self.opened_flags(&body);
        let grants = [read.then_some(Op::Read), write.then_some(Op::Write)];
        let fh = self.handles.insert(Handle::new(
            body,
            node,
            ctx.session.clone(),
            (read, write),
            grants,
            kept,
        ));
        self.mark_passthrough(fh, &opened);
        Ok(Opened { fh, ..opened })
    }

    /// Create and open a new regular file `name` in `parent`.
    pub fn create(
        &self,
        caller: &Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: OFlags,
    ) -> FsResult<(super::core::Entry, Opened)> {
        let ctx = self.gate.ctx(caller);
        let dir = self.located(parent)?;
        let dir_fd = self.dir_fd(&dir)?;
        let path = self.child_of(&dir, name)?;
        if super::notice::is_notice(name) && self.notice_accepts(&ctx, &dir.path(), Op::Create) {
            return self.create_notice(&ctx, parent, &dir.path(), path, flags);
        }
        let place = self.place(&path, name, None);
        if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            let d = crate::authz::Decision::forbidden(crate::authz::Forbidden::SetId);
            return Err(self.gate.refuse(&ctx, &path, &d, "create"));
        }
        let allowed = self
            .gate
            .permit(&ctx, &path, &place, Op::Create, "create")?;
        if place != Place::Content {
            return Err(Error::EACCES);
        }
        let change = self.gate.change(&ctx, allowed, Kind::File, "create")?;
        let mode = mode & !umask & 0o777;
        let dir_st = self.mirror.stat(dir_fd.as_fd())?;
        let (body, node, st) = match change.writeback() {
            Some(_) => {
                // The name must be free now; it is claimed again when the file is committed.
                if self.pending.lock().contains_key(&(parent, name.to_owned())) {
                    return Err(Error::of(libc::EEXIST));
                }
                match self.mirror.lookup(dir_fd.as_fd(), name) {
                    Ok(_) => return Err(Error::of(libc::EEXIST)),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
                let (file, staged_name) = self.stage(mode, None)?;
                let made = self
                    .give_to(change.allowed(), caller, file.as_fd(), &dir_st)
                    .and_then(|()| Ok(self.mirror.path_of(file.as_fd())?))
                    .and_then(|fd| Ok((self.mirror.stat(fd.as_fd())?, fd)));
                let (st, path_fd) = match made {
                    Ok(v) => v,
                    Err(e) => {
                        self.mirror.unstage(&self.area, &staged_name);
                        return Err(e);
                    }
                };
                // Pinned: it has no name in the mirror to be found again by until it commits.
                let node = self
                    .inodes
                    .remember_pinned(parent, name, path.clone(), path_fd, &st);
                self.pending
                    .lock()
                    .insert((parent, name.to_owned()), node.ino);
                let staged = Staged::new(
                    Target::New,
                    crate::session::callers::thread_group(caller.pid),
                    (file, staged_name),
                    Edits::Touched,
                    None,
                );
                (Body::Staged(Mutex::new(staged)), node, st)
            }
            None => {
                let acc = flags & (OFlags::RWMODE | OFlags::APPEND);
                let (file, path_fd, st) =
                    self.mirror
                        .create_file(&change, dir_fd.as_fd(), name, mode, acc)?;
                let owned = self
                    .give_to(change.allowed(), caller, file.as_fd(), &dir_st)
                    .and_then(|()| Ok(self.mirror.stat(file.as_fd())?));
                let st = match owned {
                    Ok(now) => now,
                    Err(e) => {
                        // Nothing half-done: the caller is told it failed, so it is not there.
                        self.mirror.undo_create(&change, dir_fd.as_fd(), name, &st);
                        return Err(e);
                    }
                };
                let node = self
                    .inodes
                    .remember(parent, name, path.clone(), path_fd, &st);
                (Body::File(file), node, st)
            }
        };
        let attr = self.backed_attr(&ctx, &node, &Place::Content, &st);
        let opened = self.opened_flags(&body);
        let read = flags & OFlags::RWMODE != OFlags::WRONLY;
        let grants = [read.then_some(Op::Read), Some(Op::Create)];
        let fh = self.handles.insert(Handle::new(
            body,
            node,
            ctx.session.clone(),
            (read, true),
            grants,
            Some(change),
        ));
        self.mark_passthrough(fh, &opened);
        let entry = super::core::Entry {
            attr,
            ttl: self.ttl(),
        };
        Ok((entry, Opened { fh, ..opened }))
    }

    /// `_PERMISSIONS.md` created (again) where an ordinary file of its name could be: the
    /// notice is there, and what is written to it is discarded.
    fn create_notice(
        &self,
        ctx: &Ctx,
        parent: Ino,
        dir_path: &[u8],
        path: Arc<[u8]>,
        flags: OFlags,
    ) -> FsResult<(super::core::Entry, Opened)> {
        self.unmark_notice(ctx, parent);
        self.note_discarded(ctx, dir_path, Op::Create, "create");
        let name = OsStr::new(crate::authz::PERMISSIONS_FILE);
        let node = self.inodes.permissions(parent, path, name);
        let attr = self.attr_of(ctx, &node, &Place::PermissionsFile)?;
        let body = Body::Sink(self.render_permissions(ctx, &node)?);
        let opened = self.opened_flags(&body);
        let read = flags & OFlags::RWMODE != OFlags::WRONLY;
        let fh = self.handles.insert(Handle::new(
            body,
            node,
            ctx.session.clone(),
            (read, true),
            [None, None],
            None,
        ));
        let entry = super::core::Entry {
            attr,
            ttl: Duration::ZERO,
        };
        Ok((entry, Opened { fh, ..opened }))
    }

    /// How the kernel should treat a handle with this body.
    fn opened_flags(&self, body: &Body) -> Opened {
        Opened {
            fh: 0,
            direct_io: self.opts.direct_io || matches!(body, Body::Bytes(_) | Body::Sink(_)),
            // Only staged writes act on close(); the others spare the kernel a round trip.
            flush: matches!(body, Body::Staged(_)),
            // Only a plain mirror file: generated files and staged writebacks are the daemon's
            // to produce and check.
            // Only the mount's own session: a sub-agent's open files must be cut off when it
            // ends (a passthrough mount registers none; this holds if one ever were).
            passthrough: matches!(body, Body::File(_))
                && self.passthrough()
                && self.gate.callers().session_count() == 1,
        }
    }

    fn mark_passthrough(&self, fh: u64, opened: &Opened) {
        if opened.passthrough
            && let Ok(h) = self.handles.get(fh)
        {
            h.set_passthrough(true);
        }
    }

    /// The kernel refused passthrough for handle `fh` (it is served as strict I/O).
    pub fn passthrough_refused(&self, fh: u64) {
        if let Ok(h) = self.handles.get(fh) {
            h.set_passthrough(false);
        }
    }

    pub fn opendir(&self, caller: &Caller, ino: Ino) -> FsResult<u64> {
        let items = self.list_dir(caller, ino)?;
        let ctx = self.gate.ctx(caller);
        let node = self.node(ino)?;
        Ok(self.handles.insert(Handle::new(
            Body::Dir(items),
            node,
            ctx.session,
            (true, false),
            [Some(Op::See), None],
            None,
        )))
    }

    /// Hand the entries of an open directory from `offset` (an index; each entry's offset is
    /// the next) to `add`, until it answers that the reply is full. Nothing is copied: a large
    /// directory is read in many calls, each starting where the last stopped.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &DirItem) -> bool,
    ) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        let Body::Dir(items) = &h.body else {
            return Err(Error::ENOTDIR);
        };
        // A directory listed before its session ended (or lost the right to see it) lists
        // nothing more.
        self.live(&h)?;
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            if add(i as u64 + 1, item) {
                break;
            }
        }
        Ok(())
    }

    /// `readdirplus`: [`GuardFs::readdir`] with each entry looked up, so the kernel gets its
    /// attributes with the name. `.`, `..` and `_PERMISSIONS.md` come without (node 0): the
    /// kernel never looks the first two up, and the notice is left for a plain lookup, so that
    /// listing a directory does not render it. Each entry handed over with attributes counts as a
    /// lookup; one the reply had no room for is forgotten again.
    pub fn readdirplus(
        &self,
        caller: &Caller,
        dir: Ino,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(PlusEntry<'_>) -> bool,
    ) -> FsResult<()> {
        self.readdir(fh, offset, |next, item| {
            let plain = item.name == "."
                || item.name == ".."
                || item.name == crate::authz::PERMISSIONS_FILE;
            if plain {
                return add(PlusEntry {
                    name: &item.name,
                    next,
                    kind: item.kind,
                    entry: None,
                });
            }
            // Gone or hidden since the listing: left out.
            let Ok(entry) = self.lookup(caller, dir, &item.name) else {
                return false;
            };
            let ino = entry.attr.ino.0;
            let full = add(PlusEntry {
                name: &item.name,
                next,
                kind: item.kind,
                entry: Some(entry),
            });
            if full {
                self.forget(ino, 1);
            }
            full
        })
    }

    /// Hand the mirror file behind passthrough handle `fh` to `f` (the kernel makes its backing
    /// file of it). `EBADF` for any other handle.
    pub fn with_backing<R>(&self, fh: u64, f: impl FnOnce(BorrowedFd<'_>) -> R) -> FsResult<R> {
        let h = self.handles.get(fh)?;
        match &h.body {
            Body::File(file) => Ok(f(file.as_fd())),
            _ => Err(Error::of(libc::EBADF)),
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove(fh);
    }

    // ------------------------------------------------------------------ I/O

    /// Strict I/O: the session that opened a handle must still be active. Only a
    /// `_PERMISSIONS.md` snapshot stays readable, since it explains what happened.
    ///
    /// An open handle also carries no more than the session's current grants: when they change
    /// (a refreshed or rewritten token with other scopes), what authorized the handle is decided
    /// again on the node's path, and a handle the new grants would refuse is cut off for good.
    /// After `--max-staleness` without a confirmation from relayauth, open files stop working
    /// too, as new opens do.
    fn live(&self, h: &Handle) -> FsResult<()> {
        let generated = matches!(h.node.kind, NodeKind::Permissions { .. });
        let s = match &h.session {
            Some(s) if s.state(SystemTime::now()) == State::Active => s,
            _ if generated => return Ok(()),
            _ => return Err(Error::EACCES),
        };
        if generated {
            return Ok(());
        }
        if h.cut.load(Ordering::Acquire) {
            return Err(Error::EACCES);
        }
        let epoch = s.epoch();
        // Read before the path: a move while deciding leaves the count stale, and the next
        // call decides again.
        let moves = h.node.moves();
        if h.checked.load(Ordering::Acquire) != epoch
            || h.decided_moves.load(Ordering::Acquire) != moves
        {
            let ctx = Ctx::of(h.session.clone(), 0);
            let path = h.node.path();
            let place = self.place_of_node(&h.node)?;
            let still = h
                .grants
                .iter()
                .flatten()
                .all(|op| self.gate.decide(&ctx, &path, &place, *op).allowed());
            if !still {
                h.cut.store(true, Ordering::Release);
                return Err(Error::EACCES);
            }
            h.checked.store(epoch, Ordering::Release);
            h.decided_moves.store(moves, Ordering::Release);
        }
        if self.gate.freshness(s).stale() {
            return Err(Error::EACCES);
        }
        Ok(())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let mut buf = vec![0u8; size as usize];
        let n = self.read_into(fh, offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Read into `buf` (the adapter reuses one buffer per thread): the number of bytes read.
    pub fn read_into(&self, fh: u64, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let h = self.handles.get(fh)?;
        if !h.read {
            return Err(Error::EBADF);
        }
        self.live(&h)?;
        Ok(match &h.body {
            Body::File(f) => read_at(f, buf, offset)?,
            Body::Staged(s) => {
                let s = s.lock();
                match s.readable() {
                    Some(f) => read_at(f, buf, offset)?,
                    None => return Err(Error::EIO),
                }
            }
            Body::Bytes(b) | Body::Sink(b) => {
                let start = (offset as usize).min(b.len());
                let end = (start + buf.len()).min(b.len());
                buf[..end - start].copy_from_slice(&b[start..end]);
                end - start
            }
            Body::Dir(_) => return Err(Error::EISDIR),
        })
    }

    /// Write through the handle `fh`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.write_from(fh, offset, data, false)
    }

    /// Write pages from the kernel's page cache through the handle `fh` (a shared writable
    /// mapping being written back). The kernel sends them through any handle open for writing
    /// on the file, so they may carry what another handle's mapping dirtied (a session's
    /// revoked since): they are accepted only while every handle open for writing on the file
    /// may still write.
    pub fn write_back(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.write_from(fh, offset, data, true)
    }

    fn write_from(&self, fh: u64, offset: u64, data: &[u8], cached: bool) -> FsResult<u32> {
        let h = self.handles.get(fh)?;
        if !h.write {
            return Err(Error::EBADF);
        }
        self.live(&h)?;
        if cached {
            for other in self.handles.writable_on(h.node.ino) {
                self.live(&other)?;
            }
        }
        match &h.body {
            Body::File(f) => Ok(write_at(f, data, offset)? as u32),
            Body::Staged(s) => {
                fits_payload(offset.saturating_add(data.len() as u64))?;
                let mut s = s.lock();
                let n = write_at(self.staged_file(&mut s)?, data, offset)?;
                s.set_edits(Edits::Written);
                Ok(n as u32)
            }
            Body::Sink(_) => Ok(data.len() as u32),
            Body::Bytes(_) => Err(Error::EACCES),
            Body::Dir(_) => Err(Error::EISDIR),
        }
    }

    /// The staging copy behind a writeback handle. After a commit, the next change stages a
    /// copy of the file that commit placed (not of whatever the name holds by now), based on
    /// that file: if the mirror replaces it meanwhile, the change is not placed over the newer
    /// file.
    fn staged_file<'s>(&self, s: &'s mut Staged) -> FsResult<&'s File> {
        if matches!(s.stage, Stage::Placed(_)) {
            let Stage::Placed(placed) = std::mem::replace(&mut s.stage, Stage::Failed(Error::EIO))
            else {
                return Err(Error::EIO);
            };
            let st = self.mirror.stat(placed.as_fd())?;
            let (file, name) = self.stage_like(&st, Some(placed.as_fd()))?;
            s.stage = Stage::Open {
                file,
                name,
                edits: Edits::None,
                base: Some(Arc::new(OwnedFd::from(placed))),
            };
        }
        match &s.stage {
            Stage::Failed(_) => Err(Error::EIO),
            _ => s.staging().ok_or(Error::EIO),
        }
    }

    /// `close()` of one descriptor: a dirty staged write is validated and committed here, so
    /// that a refusal is what `close()` returns.
    pub fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        if let Body::Staged(s) = &h.body {
            let mut s = s.lock();
            if let Some(e) = s.failure() {
                return Err(e.clone());
            }
            if s.edits() == Edits::Written && crate::session::callers::thread_group(pid) == s.opener
            {
                return self.commit(&h.node, &h.session, &mut s, pid);
            }
        }
        Ok(())
    }

    pub fn release(&self, fh: u64, pid: u32) -> FsResult<()> {
        let Some(h) = self.handles.remove(fh) else {
            return Ok(());
        };
        if let Body::Staged(s) = &h.body {
            let mut s = s.lock();
            let result = self.commit(&h.node, &h.session, &mut s, pid);
            if let Stage::Open { name, .. } = &s.stage {
                // Never committed (the file was removed meanwhile): drop the bytes.
                self.mirror.unstage(&self.area, name);
            }
            if s.target == Target::New {
                self.forget_pending(&h.node);
            }
            return result;
        }
        Ok(())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        let sync = |f: &File| {
            if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            }
        };
        match &h.body {
            Body::File(f) => Ok(sync(f)?),
            Body::Staged(s) => match s.lock().staging() {
                Some(f) => Ok(sync(f)?),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        if !h.write {
            return Err(Error::EBADF);
        }
        self.live(&h)?;
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        match &h.body {
            Body::File(f) => Ok(rustix::fs::fallocate(f, flags, offset, length)?),
            Body::Staged(s) => {
                fits_payload(offset.saturating_add(length))?;
                let mut s = s.lock();
                rustix::fs::fallocate(self.staged_file(&mut s)?, flags, offset, length)?;
                s.set_edits(Edits::Written);
                Ok(())
            }
            Body::Sink(_) => Ok(()),
            _ => Err(Error::EACCES),
        }
    }

    /// Copy between two open files through the same checks as read and write.
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<u32> {
        let chunk = len.min(COPY_CHUNK) as u32;
        let data = self.read(fh_in, off_in, chunk)?;
        if data.is_empty() {
            return Ok(0);
        }
        self.write(fh_out, off_out, &data)
    }

    /// Validate and commit a dirty staged write, or quarantine it. Everything is decided on
    /// where the node is now (its parent directory, name and path at this moment): that is
    /// where the bytes go and what the audit names.
    fn commit(
        &self,
        node: &Arc<Node>,
        session: &Option<Arc<Session>>,
        s: &mut Staged,
        pid: u32,
    ) -> FsResult<()> {
        if let Some(e) = s.failure() {
            return Err(e.clone());
        }
        if s.edits() == Edits::None {
            return Ok(());
        }
        let ctx = Ctx::of(session.clone(), pid);
        let loc = node.location();
        let path = String::from_utf8_lossy(&loc.path).into_owned();
        if !ctx.active() {
            return self.quarantine(
                &ctx,
                node,
                s,
                Error::EACCES,
                "the session ended before the file was closed",
                None,
            );
        }
        if s.target == Target::New && !self.pending_node(node) {
            // Removed before it was ever committed: nothing to place.
            s.set_edits(Edits::None);
            return Ok(());
        }
        // The right to put bytes at this path, decided again now.
        let op = match s.target {
            Target::Replace => Op::Write,
            Target::New => Op::Create,
        };
        let allowed = match self.gate.check(&ctx, &loc.path, &Place::Content, op) {
            Ok(allowed) => allowed,
            Err(d) => {
                let why = match &ctx.grants {
                    Some(g) => d.describe(g.scopes(), &path),
                    None => "the caller has no session in this mount".to_owned(),
                };
                return self.quarantine(&ctx, node, s, Error::EACCES, &why, None);
            }
        };
        let change = match self.gate.try_change(&ctx, allowed, Kind::File) {
            Ok(change) => change,
            Err((e, why)) => return self.quarantine(&ctx, node, s, e, &why, None),
        };
        let permit = change.writeback();
        let Stage::Open {
            file, name, base, ..
        } = &s.stage
        else {
            return Ok(());
        };
        let mut content = Vec::new();
        let mut reader = file.try_clone()?;
        reader.seek(SeekFrom::Start(0))?;
        reader.take(MAX_PAYLOAD + 1).read_to_end(&mut content)?;
        if content.len() as u64 > MAX_PAYLOAD {
            let why = format!("{path} is larger than {MAX_PAYLOAD} bytes and cannot be validated");
            return self.quarantine(&ctx, node, s, Error::EFBIG, &why, permit);
        }
        let Ok(parent) = self.located(loc.parent) else {
            let why =
                format!("the directory of {path} moved or went away before the file was closed");
            return self.quarantine(&ctx, node, s, Error::ENOENT, &why, permit);
        };
        if let Some(p) = permit
            && let Err((e, why)) = self.validate_payload(p, &path, &content, Some(parent.clone()))
        {
            return self.quarantine(&ctx, node, s, e, &why, permit);
        }
        file.sync_all()?;
        let parent_fd = self.dir_fd(&parent)?;
        // The name holds another file now (relayfile's syncer replaced it, or it was removed,
        // or it was renamed onto a writeback path, which places a copy): on a native filesystem
        // these bytes would have gone to the file that was opened, not to what holds its name
        // now, so they must not overwrite that.
        let stale = format!(
            "{path} no longer holds the file these bytes were staged from (the mirror replaced \
             or removed it while it was open for writing), so they were not placed over the \
             newer file; reopen it and write again"
        );
        let Some(base) = base.as_ref().filter(|_| s.target == Target::Replace) else {
            // A new file: the name must still be free.
            if let Err(e) = self.mirror.place_staged(
                &self.area,
                &change,
                name,
                (parent_fd.as_fd(), loc.name()),
                RenameFlags::NOREPLACE,
            ) {
                let why = format!("{path} could not be placed in the mirror: {e}");
                return self.quarantine(&ctx, node, s, Error::from(e).warn(), &why, permit);
            }
            return self.committed(&ctx, node, s, &path, permit);
        };
        if !self.still_at(base.as_fd(), parent_fd.as_fd(), loc.name()) {
            return self.quarantine(&ctx, node, s, Error::of(libc::ESTALE), &stale, permit);
        }
        // Exchanged, not renamed over: what comes back under the staging name is what the name
        // held at that instant, and if the mirror replaced the file since the check above, it
        // goes back (nothing the syncer placed is ever lost to a race).
        let at = (parent_fd.as_fd(), loc.name());
        if let Err(e) =
            self.mirror
                .place_staged(&self.area, &change, name, at, RenameFlags::EXCHANGE)
        {
            let why = format!("{path} could not be placed in the mirror: {e}");
            let e = Error::from(e);
            let e = if e.errno() == libc::ENOENT {
                e
            } else {
                e.warn()
            };
            return self.quarantine(&ctx, node, s, e, &why, permit);
        }
        let took_base = self
            .mirror
            .staged_stat(&self.area, name)
            .ok()
            .zip(self.mirror.stat(base.as_fd()).ok())
            .is_some_and(|(took, b)| (took.st_dev, took.st_ino) == (b.st_dev, b.st_ino));
        if !took_base {
            if let Err(e) =
                self.mirror
                    .place_staged(&self.area, &change, name, at, RenameFlags::EXCHANGE)
            {
                tracing::warn!(path, error = %e, "a file the mirror placed during a writeback could not be put back");
            }
            return self.quarantine(&ctx, node, s, Error::of(libc::ESTALE), &stale, permit);
        }
        // The staging name now holds the file that was replaced.
        self.mirror.unstage(&self.area, name);
        self.committed(&ctx, node, s, &path, permit)
    }

    /// The staged bytes of `s` are in place at `node`'s name: the node is backed by them now.
    fn committed(
        &self,
        ctx: &Ctx,
        node: &Arc<Node>,
        s: &mut Staged,
        path: &str,
        permit: Option<&WritebackPermit>,
    ) -> FsResult<()> {
        let was_new = s.target == Target::New;
        let committed = s.placed().ok_or(Error::EIO)?;
        let path_fd = self.mirror.path_of(committed.as_fd())?;
        let st = self.mirror.stat(path_fd.as_fd())?;
        self.inodes.replace_backing(node.ino, path_fd, &st);
        if was_new {
            self.forget_pending(node);
        }
        let policy_id = permit.map_or("", |p| p.policy_id());
        self.gate.note_writeback(
            ctx,
            path,
            s.committed_by,
            Outcome::Allowed,
            &format!("validated and placed for writeback by policy {policy_id}"),
            permit,
        );
        Ok(())
    }

    /// Whether `name` in `parent` still holds `base`, the file a staged copy was made from.
    /// `base` is held open, so a file that replaced it cannot have been given its number.
    fn still_at(&self, base: BorrowedFd<'_>, parent: BorrowedFd<'_>, name: &OsStr) -> bool {
        let Ok(b) = self.mirror.stat(base) else {
            return false;
        };
        self.mirror
            .lookup(parent, name)
            .is_ok_and(|(_, st)| st.st_dev == b.st_dev && st.st_ino == b.st_ino)
    }

    /// `node` is no longer a staged new file (committed, dropped or refused).
    fn forget_pending(&self, node: &Node) {
        let loc = node.location();
        let mut pending = self.pending.lock();
        let key = (loc.parent, loc.name().to_owned());
        if pending.get(&key) == Some(&node.ino) {
            pending.remove(&key);
        }
    }

    /// The proof a live handle of `node` open for writing carries: such a handle carries the
    /// right to change the file's size and times (`ftruncate`, `futimens`), as it carries the
    /// right to write. A handle of a session that is no longer active carries nothing.
    pub(crate) fn handle_change(&self, fh: u64, node: &Arc<Node>) -> Option<Change> {
        let h = self.handles.get(fh).ok()?;
        let usable = h.write && Arc::ptr_eq(&h.node, node) && self.live(&h).is_ok();
        usable.then(|| h.change.clone()).flatten()
    }

    /// Truncate through a handle open for writing (see [`GuardFs::writes`]); `None` when `fh` is
    /// not one.
    pub(crate) fn truncate_handle(
        &self,
        fh: u64,
        node: &Arc<Node>,
        size: u64,
    ) -> Option<FsResult<()>> {
        let h = self.handles.get(fh).ok()?;
        if !h.write || !Arc::ptr_eq(&h.node, node) {
            return None;
        }
        if let Err(e) = self.live(&h) {
            return Some(Err(e));
        }
        Some(match &h.body {
            Body::File(f) => f.set_len(size).map_err(Error::from),
            Body::Staged(s) => {
                if let Err(e) = fits_payload(size) {
                    return Some(Err(e));
                }
                let mut s = s.lock();
                let r = self
                    .staged_file(&mut s)
                    .and_then(|f| f.set_len(size).map_err(Error::from));
                if r.is_ok() {
                    s.set_edits(Edits::Written);
                }
                r
            }
            Body::Sink(_) => Ok(()),
            Body::Bytes(_) => Err(Error::EACCES),
            Body::Dir(_) => Err(Error::EISDIR),
        })
    }

    /// Truncate a provider-backed file by path: stage, truncate, validate, commit.
    pub(crate) fn staged_truncate(&self, ctx: &Ctx, node: &Arc<Node>, size: u64) -> FsResult<()> {
        fits_payload(size)?;
        let fd = self.fd_of(node)?;
        let st = self.mirror.stat(fd.as_fd())?;
        let (file, name) = self.stage_like(&st, Some(fd.as_fd()))?;
        file.set_len(size)?;
        let mut staged = Staged::new(
            Target::Replace,
            ctx.pid,
            (file, name),
            Edits::Written,
            Some(fd),
        );
        staged.committed_by = "truncate";
        let result = self.commit(node, &ctx.session, &mut staged, ctx.pid);
        if let Stage::Open { name, .. } = &staged.stage {
            self.mirror.unstage(&self.area, name);
        }
        result
    }

    fn quarantine(
        &self,
        ctx: &Ctx,
        node: &Node,
        s: &mut Staged,
        errno: Error,
        why: &str,
        permit: Option<&WritebackPermit>,
    ) -> FsResult<()> {
        let path = String::from_utf8_lossy(&node.path()).into_owned();
        let mut kept = None;
        if let Stage::Open { name, .. } = &s.stage {
            for _ in 0..QUARANTINE_TRIES {
                let candidate = quarantine_name(&path);
                match self.mirror.quarantine(&self.area, name, &candidate) {
                    Ok(()) => {
                        kept = Some(candidate);
                        break;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => {
                        tracing::warn!(path, error = %e, "refused bytes could not be quarantined");
                        break;
                    }
                }
            }
            if kept.is_none() {
                // Refused either way: the bytes are not kept where nothing can reach them.
                self.mirror.unstage(&self.area, name);
            }
        }
        let errno = errno.with_message(format!("{path}: {why}"));
        s.stage = Stage::Failed(errno.clone());
        if s.target == Target::New {
            self.forget_pending(node);
        }
        let where_kept = match &kept {
            Some(kept) => format!(
                "; the bytes are kept in /.relay/.relayauth-mount/quarantine/{}",
                kept.to_string_lossy()
            ),
            None => String::new(),
        };
        self.gate.note_writeback(
            ctx,
            &path,
            s.committed_by,
            Outcome::Denied,
            &format!("{why}{where_kept}"),
            permit,
        );
        Err(errno)
    }
}

/// A writeback can never be bigger than [`MAX_PAYLOAD`] (it could not be validated): a write,
/// preallocation or size past it is `EFBIG` at once, so refused bytes never pile up in the
/// staging and quarantine folders beyond that per file.
fn fits_payload(end: u64) -> FsResult<()> {
    if end > MAX_PAYLOAD {
        return Err(Error::EFBIG.with_message(format!(
            "a writeback is at most {MAX_PAYLOAD} bytes; write large files in a local root"
        )));
    }
    Ok(())
}

fn read_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn write_at(f: &File, data: &[u8], offset: u64) -> io::Result<usize> {
    f.write_all_at(data, offset)?;
    Ok(data.len())
}
