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
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rustix::fs::{OFlags, RenameFlags, Stat};

use super::core::{Caller, Ctx, Errno, FsResult, GuardFs, Seen};
use super::handle_table::{Body, DirItem, Handle, Opened, Staged};
use super::inode::{Ino, Node, NodeKind};
use super::mirror::Kind;
use crate::audit::{Event, Outcome};
use crate::authz::{Op, Place};
use crate::session::{Denial, Session, State};
use crate::writeback::{self, SchemaSource};

/// Payloads bigger than this are not validated (and so refused).
const MAX_PAYLOAD: u64 = 64 << 20;

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
            if self.fs.changeable_by_any_session(&path) {
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
            .read_all(fd.as_fd(), 8 << 20)
            .map_err(|e| format!("schema {schema_ref} cannot be read (errno {})", e.0))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("schema {schema_ref} is not JSON: {e}"))
    }
}

/// The schema source for writes into `parent`.
pub(crate) fn mirror_schemas(fs: &GuardFs, parent: Option<Arc<Node>>) -> impl SchemaSource + '_ {
    MirrorSchemas { fs, parent }
}

fn session_ctx(session: &Option<Arc<Session>>, pid: u32) -> Ctx {
    match session {
        Some(s) => Ctx {
            session: Some(s.clone()),
            grants: Some(s.grants()),
            state: Some(s.state(SystemTime::now())),
            pid,
        },
        None => Ctx {
            session: None,
            grants: None,
            state: None,
            pid,
        },
    }
}

fn quarantine_name(path: &str) -> OsString {
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let flat: String = path
        .trim_start_matches('/')
        .chars()
        .map(|c| if c == '/' { '~' } else { c })
        .collect();
    // A name must fit NAME_MAX: keep the end of the path, which says most about the file.
    let mut start = flat.len().saturating_sub(200);
    while !flat.is_char_boundary(start) {
        start += 1;
    }
    OsString::from(format!("{stamp}-{}", &flat[start..]))
}

static STAGE_SEQ: AtomicU64 = AtomicU64::new(0);

impl GuardFs {
    /// Policy, scope and freshness for a writeback to `path`: `Ok(None)` for a local path,
    /// `Ok(Some(policy id))` for an allowed writeback.
    pub(crate) fn writeback_gate(
        &self,
        ctx: &Ctx,
        path: &str,
    ) -> Result<Option<(String, String)>, (Errno, String)> {
        if !self.opts.backing.is_provider_backed(path) {
            return Ok(None);
        }
        let (Some(grants), Some(session)) = (&ctx.grants, &ctx.session) else {
            return Err((Errno::EACCES, "no session".to_owned()));
        };
        let policies = self.policies();
        let policy = policies
            .authorize(&grants.scopes, path)
            .map_err(|r| (Errno(r.errno()), r.message().to_owned()))?;
        match session.since_confirmed() {
            None => {
                return Err((
                    Errno::EACCES,
                    "relayauth has not confirmed this session yet (writebacks need a confirmation); \
                     the write is refused until it does"
                        .to_owned(),
                ));
            }
            Some(quiet) if quiet > self.opts.fail_closed_after => {
                return Err((
                    Errno::EACCES,
                    format!(
                        "relayauth has not confirmed this session for {}s (writebacks need a confirmation within {}s); \
                         the write is refused until it does",
                        quiet.as_secs(),
                        self.opts.fail_closed_after.as_secs()
                    ),
                ));
            }
            Some(_) => {}
        }
        Ok(Some((policy.id.clone(), policy.provider_action.clone())))
    }

    /// The writeback gate for `operation` on `path`, with a refusal audited as
    /// `writeback.rejected` before it is returned.
    pub(crate) fn gated(
        &self,
        ctx: &Ctx,
        path: &str,
        operation: &str,
    ) -> FsResult<Option<(String, String)>> {
        self.writeback_gate(ctx, path).map_err(|(e, why)| {
            self.note_writeback(ctx, path, operation, Outcome::Denied, &why, None);
            e
        })
    }

    /// Count, remember and audit a writeback decision (`writeback.queued` or
    /// `writeback.rejected`).
    pub(crate) fn note_writeback(
        &self,
        ctx: &Ctx,
        path: &str,
        operation: &str,
        outcome: Outcome,
        reason: &str,
        policy: Option<(&str, &str)>,
    ) {
        let action = if outcome == Outcome::Allowed {
            "writeback.queued"
        } else {
            "writeback.rejected"
        };
        if outcome == Outcome::Allowed {
            self.stats.allowed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            if let Some(s) = &ctx.session {
                s.remember_denial(Denial {
                    at: SystemTime::now(),
                    path: path.to_owned(),
                    operation: operation.to_owned(),
                    reason: reason.to_owned(),
                });
            }
        }
        if let Some(audit) = &self.audit {
            let actor = ctx
                .grants
                .as_ref()
                .map(|g| g.actor.clone())
                .unwrap_or_default();
            let mut ev = Event::new(action, outcome, &actor, operation)
                .pid(ctx.pid)
                .path(path)
                .reason(reason);
            if let Some((id, provider_action)) = policy {
                ev.writeback_policy_id = Some(id.to_owned());
                ev.provider_action = Some(provider_action.to_owned());
            }
            audit.record(ev);
        }
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
        let (mut file, _, _) =
            self.mirror
                .create_file(self.staging.as_fd(), &name, mode, OFlags::RDWR)?;
        if let Some(src) = from {
            let copied = (|| -> io::Result<()> {
                let mut src = self.mirror.reopen(src, OFlags::RDONLY)?;
                io::copy(&mut src, &mut file)?;
                file.seek(SeekFrom::Start(0))?;
                Ok(())
            })();
            if let Err(e) = copied {
                let _ = self.mirror.unlink(self.staging.as_fd(), &name);
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
        if let Err(e) = self.keep_owner(file.as_fd(), like) {
            let _ = self.mirror.unlink(self.staging.as_fd(), &name);
            return Err(e);
        }
        Ok((file, name))
    }

    // ------------------------------------------------------------------ open / create

    /// Open `ino`.
    pub fn open(&self, caller: &Caller, ino: Ino, flags: i32) -> FsResult<Opened> {
        let Seen {
            ctx,
            node,
            place,
            path,
        } = self.visible_node(caller, ino)?;
        let acc = flags & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let read = acc != libc::O_WRONLY;
        // Writing the notice where an ordinary file of its name could be made is accepted, and
        // what is written is discarded (see `notice`).
        let sink = match &node.kind {
            NodeKind::Permissions { dir } if write => self.notice_writable(&ctx, *dir),
            _ => false,
        };
        if read {
            let d = self.decide(&ctx, &path, &place, Op::Read);
            if !write || !d.allowed() {
                self.note(&ctx, &path, "open", &d);
            }
            super::core::errno_of(&d)?;
        }
        if sink {
            self.note_discarded(&ctx, super::inode::parent_path(&path), Op::Write, "open");
        } else if write {
            let d = self.decide(&ctx, &path, &place, Op::Write);
            self.note(&ctx, &path, "open", &d);
            super::core::errno_of(&d)?;
        }
        let body = match &node.kind {
            NodeKind::Permissions { .. } if sink => {
                Body::Sink(self.render_permissions(&ctx, &node)?)
            }
            NodeKind::Permissions { .. } => Body::Bytes(self.render_permissions(&ctx, &node)?),
            NodeKind::RelayView { .. } => Body::Bytes(self.relay_view_content(&ctx, &node)?),
            NodeKind::Backed(b) => {
                let kind = b.read().kind;
                match kind {
                    Kind::Dir => return Err(Errno::EISDIR),
                    Kind::Symlink | Kind::Special => return Err(Errno::EACCES),
                    Kind::File => {}
                }
                let fd = self.fd_of(&node)?;
                let path_str = String::from_utf8_lossy(&path).into_owned();
                let gate = if write {
                    self.gated(&ctx, &path_str, "open")?
                } else {
                    None
                };
                match gate {
                    Some(_) => {
                        let st = self.mirror.stat(fd.as_fd())?;
                        let copy = (flags & libc::O_TRUNC == 0).then(|| fd.as_fd());
                        let (file, name) = self.stage_like(&st, copy)?;
                        let truncated = flags & libc::O_TRUNC != 0;
                        Body::Staged(Mutex::new(Staged {
                            file: Some(file),
                            name,
                            opener: crate::session::callers::thread_group(caller.pid),
                            existing: true,
                            dirty: false,
                            touched: truncated,
                            failed: None,
                        }))
                    }
                    None => {
                        let keep = libc::O_ACCMODE
                            | libc::O_APPEND
                            | libc::O_TRUNC
                            | libc::O_SYNC
                            | libc::O_DSYNC;
                        let f = OFlags::from_bits_retain((flags & keep) as u32);
                        Body::File(self.mirror.reopen(fd.as_fd(), f)?)
                    }
                }
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
        ));
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
        flags: i32,
    ) -> FsResult<(super::core::Entry, Opened)> {
        let ctx = self.ctx(caller);
        let dir = self.located(parent)?;
        let dir_fd = self.dir_fd(&dir)?;
        let path = self.child_of(&dir, name)?;
        if super::notice::is_notice(name) && self.notice_accepts(&ctx, &dir.path(), Op::Create) {
            return self.create_notice(&ctx, parent, &dir.path(), path, flags);
        }
        let place = self.place(&path, name, None);
        if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            let d = crate::authz::Decision::forbidden(crate::authz::Forbidden::SetId);
            self.note(&ctx, &path, "create", &d);
            return Err(Errno::EPERM);
        }
        let d = self.decide(&ctx, &path, &place, Op::Create);
        self.note(&ctx, &path, "create", &d);
        super::core::errno_of(&d)?;
        if place != Place::Content {
            return Err(Errno::EACCES);
        }
        let path_str = String::from_utf8_lossy(&path).into_owned();
        let gate = self.gated(&ctx, &path_str, "create")?;
        let mode = mode & !umask & 0o777;
        let dir_st = self.mirror.stat(dir_fd.as_fd())?;
        let (body, node, st) = match gate {
            Some(_) => {
                // The name must be free now; it is claimed again when the file is committed.
                if self.pending.lock().contains_key(&(parent, name.to_owned())) {
                    return Err(Errno(libc::EEXIST));
                }
                match self.mirror.lookup(dir_fd.as_fd(), name) {
                    Ok(_) => return Err(Errno(libc::EEXIST)),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
                let (file, staged_name) = self.stage(mode, None)?;
                let made = self
                    .give_to(caller, file.as_fd(), &dir_st)
                    .and_then(|()| Ok(self.mirror.path_of(file.as_fd())?))
                    .and_then(|fd| Ok((self.mirror.stat(fd.as_fd())?, fd)));
                let (st, path_fd) = match made {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = self.mirror.unlink(self.staging.as_fd(), &staged_name);
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
                let staged = Staged {
                    file: Some(file),
                    name: staged_name,
                    opener: crate::session::callers::thread_group(caller.pid),
                    existing: false,
                    dirty: false,
                    touched: true,
                    failed: None,
                };
                (Body::Staged(Mutex::new(staged)), node, st)
            }
            None => {
                let acc =
                    OFlags::from_bits_retain((flags & (libc::O_ACCMODE | libc::O_APPEND)) as u32);
                let (file, path_fd, st) =
                    self.mirror.create_file(dir_fd.as_fd(), name, mode, acc)?;
                let owned = self
                    .give_to(caller, file.as_fd(), &dir_st)
                    .and_then(|()| Ok(self.mirror.stat(file.as_fd())?));
                let st = match owned {
                    Ok(now) => now,
                    Err(e) => {
                        // Nothing half-done: the caller is told it failed, so it is not there.
                        self.mirror.undo_create(dir_fd.as_fd(), name, &st);
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
        let acc = flags & libc::O_ACCMODE;
        let opened = self.opened_flags(&body);
        let read = acc != libc::O_WRONLY;
        let grants = [read.then_some(Op::Read), Some(Op::Create)];
        let fh = self.handles.insert(Handle::new(
            body,
            node,
            ctx.session.clone(),
            (read, true),
            grants,
        ));
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
        flags: i32,
    ) -> FsResult<(super::core::Entry, Opened)> {
        self.unmark_notice(ctx, parent);
        self.note_discarded(ctx, dir_path, Op::Create, "create");
        let name = OsStr::new(crate::authz::PERMISSIONS_FILE);
        let node = self.inodes.permissions(parent, path, name);
        let attr = self.attr_of(ctx, &node, &Place::PermissionsFile)?;
        let body = Body::Sink(self.render_permissions(ctx, &node)?);
        let opened = self.opened_flags(&body);
        let read = flags & libc::O_ACCMODE != libc::O_WRONLY;
        let fh = self.handles.insert(Handle::new(
            body,
            node,
            ctx.session.clone(),
            (read, true),
            [None, None],
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
        }
    }

    pub fn opendir(&self, caller: &Caller, ino: Ino) -> FsResult<u64> {
        let items = self.list_dir(caller, ino)?;
        let ctx = self.ctx(caller);
        let node = self.node(ino)?;
        Ok(self.handles.insert(Handle::new(
            Body::Dir(items),
            node,
            ctx.session,
            (true, false),
            [Some(Op::See), None],
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
            return Err(Errno::ENOTDIR);
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
            _ => return Err(Errno::EACCES),
        };
        if generated {
            return Ok(());
        }
        if h.cut.load(Ordering::Acquire) {
            return Err(Errno::EACCES);
        }
        let epoch = s.epoch();
        if h.checked.load(Ordering::Acquire) != epoch {
            let ctx = session_ctx(&h.session, 0);
            let path = h.node.path();
            let place = self.place_of_node(&h.node)?;
            let still = h
                .grants
                .iter()
                .flatten()
                .all(|op| self.decide(&ctx, &path, &place, *op).allowed());
            if !still {
                h.cut.store(true, Ordering::Release);
                return Err(Errno::EACCES);
            }
            h.checked.store(epoch, Ordering::Release);
        }
        if self.unconfirmed_for(s) > self.opts.max_staleness {
            return Err(Errno::EACCES);
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
            return Err(Errno::EBADF);
        }
        self.live(&h)?;
        Ok(match &h.body {
            Body::File(f) => read_at(f, buf, offset)?,
            Body::Staged(s) => {
                let s = s.lock();
                match &s.file {
                    Some(f) => read_at(f, buf, offset)?,
                    None => {
                        let fd = self.fd_of(&h.node)?;
                        let f = self.mirror.reopen(fd.as_fd(), OFlags::RDONLY)?;
                        read_at(&f, buf, offset)?
                    }
                }
            }
            Body::Bytes(b) | Body::Sink(b) => {
                let start = (offset as usize).min(b.len());
                let end = (start + buf.len()).min(b.len());
                buf[..end - start].copy_from_slice(&b[start..end]);
                end - start
            }
            Body::Dir(_) => return Err(Errno::EISDIR),
        })
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handles.get(fh)?;
        if !h.write {
            return Err(Errno::EBADF);
        }
        self.live(&h)?;
        match &h.body {
            Body::File(f) => Ok(write_at(f, data, offset)? as u32),
            Body::Staged(s) => {
                let mut s = s.lock();
                let n = write_at(self.staged_file(&h, &mut s)?, data, offset)?;
                s.dirty = true;
                Ok(n as u32)
            }
            Body::Sink(_) => Ok(data.len() as u32),
            Body::Bytes(_) => Err(Errno::EACCES),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    /// The staging copy behind a writeback handle, made from the mirror's file on first use.
    fn staged_file<'s>(&self, h: &Handle, s: &'s mut Staged) -> FsResult<&'s File> {
        if s.failed.is_some() {
            return Err(Errno::EIO);
        }
        if s.file.is_none() {
            let fd = self.fd_of(&h.node)?;
            let st = self.mirror.stat(fd.as_fd())?;
            let (file, name) = self.stage_like(&st, Some(fd.as_fd()))?;
            s.file = Some(file);
            s.name = name;
        }
        s.file.as_ref().ok_or(Errno::EIO)
    }

    /// `close()` of one descriptor: a dirty staged write is validated and committed here, so
    /// that a refusal is what `close()` returns.
    pub fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        if let Body::Staged(s) = &h.body {
            let mut s = s.lock();
            if let Some(e) = s.failed {
                return Err(e);
            }
            if s.dirty && crate::session::callers::thread_group(pid) == s.opener {
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
            if s.file.is_some() {
                // Never committed (failed, or the file was removed meanwhile): drop the bytes.
                let _ = self.mirror.unlink(self.staging.as_fd(), &s.name);
            }
            if !s.existing {
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
            Body::Staged(s) => match &s.lock().file {
                Some(f) => Ok(sync(f)?),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        if !h.write {
            return Err(Errno::EBADF);
        }
        self.live(&h)?;
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        match &h.body {
            Body::File(f) => Ok(rustix::fs::fallocate(f, flags, offset, length)?),
            Body::Staged(s) => {
                let mut s = s.lock();
                rustix::fs::fallocate(self.staged_file(&h, &mut s)?, flags, offset, length)?;
                s.dirty = true;
                Ok(())
            }
            Body::Sink(_) => Ok(()),
            _ => Err(Errno::EACCES),
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
        let chunk = len.min(16 << 20) as u32;
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
        if let Some(e) = s.failed {
            return Err(e);
        }
        if !s.dirty && !s.touched {
            return Ok(());
        }
        let ctx = session_ctx(session, pid);
        let loc = node.location();
        let path = String::from_utf8_lossy(&loc.path).into_owned();
        if !ctx.active() {
            return self.quarantine(
                &ctx,
                node,
                s,
                Errno::EACCES,
                "the session ended before the file was closed",
                None,
            );
        }
        if !s.existing && !self.pending_node(node) {
            // Removed before it was ever committed: nothing to place.
            s.dirty = false;
            s.touched = false;
            return Ok(());
        }
        // The right to put bytes at this path, decided again now.
        let op = if s.existing { Op::Write } else { Op::Create };
        let d = self.decide(&ctx, &loc.path, &Place::Content, op);
        if !d.allowed() {
            let why = match &ctx.grants {
                Some(g) => d.describe(&g.scopes, &path),
                None => "the caller has no session in this mount".to_owned(),
            };
            return self.quarantine(&ctx, node, s, Errno::EACCES, &why, None);
        }
        let (policy_id, provider_action) = match self.writeback_gate(&ctx, &path) {
            Ok(Some(p)) => p,
            Ok(None) => (String::new(), String::new()),
            Err((e, why)) => return self.quarantine(&ctx, node, s, e, &why, None),
        };
        let Some(file) = s.file.as_ref() else {
            return Ok(());
        };
        let mut content = Vec::new();
        let mut reader = file.try_clone()?;
        reader.seek(SeekFrom::Start(0))?;
        reader.take(MAX_PAYLOAD + 1).read_to_end(&mut content)?;
        let ids = (policy_id.as_str(), provider_action.as_str());
        if content.len() as u64 > MAX_PAYLOAD {
            let why = format!("{path} is larger than {MAX_PAYLOAD} bytes and cannot be validated");
            return self.quarantine(&ctx, node, s, Errno::EFBIG, &why, Some(ids));
        }
        let Ok(parent) = self.located(loc.parent) else {
            let why =
                format!("the directory of {path} moved or went away before the file was closed");
            return self.quarantine(&ctx, node, s, Errno::ENOENT, &why, Some(ids));
        };
        if !policy_id.is_empty() {
            let policies = self.policies();
            // Policies reloaded since the gate and this one gone: fail closed.
            let Some(policy) = policies.policies().iter().find(|p| p.id == policy_id) else {
                let why = format!("writeback policy {policy_id} was removed while {path} was open");
                return self.quarantine(&ctx, node, s, Errno::EACCES, &why, Some(ids));
            };
            let schemas = MirrorSchemas {
                fs: self,
                parent: Some(parent.clone()),
            };
            if let Err(r) = policies.check_payload(policy, &path, &content, &schemas) {
                return self.quarantine(&ctx, node, s, Errno(r.errno()), r.message(), Some(ids));
            }
        }
        file.sync_all()?;
        let parent_fd = self.dir_fd(&parent)?;
        let flags = if s.existing {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        if let Err(e) = self.mirror.rename(
            self.staging.as_fd(),
            &s.name,
            parent_fd.as_fd(),
            &loc.name,
            flags,
        ) {
            let why = format!("{path} could not be placed in the mirror: {e}");
            return self.quarantine(&ctx, node, s, Errno::from(e), &why, Some(ids));
        }
        let committed = s.file.take().ok_or(Errno::EIO)?;
        let path_fd = self.mirror.path_of(committed.as_fd())?;
        let st = self.mirror.stat(path_fd.as_fd())?;
        self.inodes.replace_backing(node.ino, path_fd, &st);
        if !s.existing {
            self.forget_pending(node);
            s.existing = true;
        }
        s.dirty = false;
        s.touched = false;
        self.note_writeback(
            &ctx,
            &path,
            "close",
            Outcome::Allowed,
            &format!("validated and placed for writeback by policy {policy_id}"),
            Some(ids),
        );
        Ok(())
    }

    /// `node` is no longer a staged new file (committed, dropped or refused).
    fn forget_pending(&self, node: &Node) {
        let loc = node.location();
        let mut pending = self.pending.lock();
        let key = (loc.parent, loc.name);
        if pending.get(&key) == Some(&node.ino) {
            pending.remove(&key);
        }
    }

    /// Whether `fh` is a live handle of `node` open for writing: such a handle carries the
    /// right to change the file's size and times (`ftruncate`), as it carries the right to
    /// write. A handle of a session that is no longer active carries nothing.
    pub(crate) fn writes(&self, fh: u64, node: &Arc<Node>) -> bool {
        self.handles
            .get(fh)
            .is_ok_and(|h| h.write && Arc::ptr_eq(&h.node, node) && self.live(&h).is_ok())
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
            Body::File(f) => f.set_len(size).map_err(Errno::from),
            Body::Staged(s) => {
                let mut s = s.lock();
                let r = self
                    .staged_file(&h, &mut s)
                    .and_then(|f| f.set_len(size).map_err(Errno::from));
                if r.is_ok() {
                    s.dirty = true;
                }
                r
            }
            Body::Sink(_) => Ok(()),
            Body::Bytes(_) => Err(Errno::EACCES),
            Body::Dir(_) => Err(Errno::EISDIR),
        })
    }

    /// Truncate a provider-backed file by path: stage, truncate, validate, commit.
    pub(crate) fn staged_truncate(&self, ctx: &Ctx, node: &Arc<Node>, size: u64) -> FsResult<()> {
        let fd = self.fd_of(node)?;
        let st = self.mirror.stat(fd.as_fd())?;
        let (file, name) = self.stage_like(&st, Some(fd.as_fd()))?;
        file.set_len(size)?;
        let mut staged = Staged {
            file: Some(file),
            name,
            opener: ctx.pid,
            existing: true,
            dirty: true,
            touched: false,
            failed: None,
        };
        let result = self.commit(node, &ctx.session, &mut staged, ctx.pid);
        if staged.file.is_some() {
            let _ = self.mirror.unlink(self.staging.as_fd(), &staged.name);
        }
        result
    }

    fn quarantine(
        &self,
        ctx: &Ctx,
        node: &Node,
        s: &mut Staged,
        errno: Errno,
        why: &str,
        policy: Option<(&str, &str)>,
    ) -> FsResult<()> {
        let path = String::from_utf8_lossy(&node.path()).into_owned();
        let kept = quarantine_name(&path);
        let moved = self
            .mirror
            .rename(
                self.staging.as_fd(),
                &s.name,
                self.quarantine.as_fd(),
                &kept,
                RenameFlags::NOREPLACE,
            )
            .is_ok();
        if moved {
            s.file = None;
        }
        s.failed = Some(errno);
        s.dirty = false;
        s.touched = false;
        if !s.existing {
            self.forget_pending(node);
        }
        let where_kept = if moved {
            format!(
                "; the bytes are kept in /.relay/.relayauth-mount/quarantine/{}",
                kept.to_string_lossy()
            )
        } else {
            String::new()
        };
        self.note_writeback(
            ctx,
            &path,
            "close",
            Outcome::Denied,
            &format!("{why}{where_kept}"),
            policy,
        );
        Err(errno)
    }
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
