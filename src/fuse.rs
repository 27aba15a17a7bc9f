//! The fuser adapter: translate kernel requests into [`GuardFs`] calls and answers back.
//!
//! Nothing here decides anything. Each method builds a [`Caller`] from the request header,
//! calls the core, and maps `Ok`/`Err(Error)` to the reply; the core is what the tests exercise
//! without a kernel. Several worker threads serve requests (fuser's `n_threads` with cloned
//! device descriptors), and the core is `Sync`.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Config, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};

use crate::fs::{Caller, Error, FsResult, GuardFs, SetAttr};

/// The kernel-facing wrapper around the core.
#[derive(Debug)]
pub struct FuseAdapter {
    fs: Arc<GuardFs>,
    /// `--io passthrough` was asked for (the kernel's `init` answer decides whether it is on).
    want_passthrough: bool,
    /// The kernel's backing ids of passthrough files.
    backings: Arc<crate::passthrough::Backings>,
    /// Dropped with the adapter, which fuser drops once every worker thread has stopped: that
    /// is what [`Ended`] waits for.
    _alive: tokio::sync::watch::Sender<()>,
}

/// The end of a mount's kernel session (unmounted from outside, aborted, or torn down): every
/// worker thread has stopped and the filesystem is gone.
#[derive(Debug)]
pub struct Ended(tokio::sync::watch::Receiver<()>);

impl Ended {
    /// Wait until the session has ended.
    pub async fn wait(&mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        pid: req.pid(),
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The errno for the kernel, with the error logged once, at its level, with the operation and
/// the node it was about.
fn fail(operation: &str, ino: INodeNo, e: Error) -> fuser::Errno {
    e.log(operation, ino.0);
    fuser::Errno::from_i32(e.errno())
}

fn empty(operation: &str, ino: INodeNo, result: FsResult<()>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(operation, ino, e)),
    }
}

fn entry(operation: &str, ino: INodeNo, result: FsResult<crate::fs::Entry>, reply: ReplyEntry) {
    match result {
        Ok(e) => reply.entry(&e.ttl, &e.attr, Generation(0)),
        Err(e) => reply.error(fail(operation, ino, e)),
    }
}

/// Attributes for a readdirplus entry the kernel is not to cache (node 0: looked up later).
fn plain_attr(kind: fuser::FileType) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

/// The `open(2)` flags of a request, typed.
fn open_flags_of(flags: i32) -> rustix::fs::OFlags {
    rustix::fs::OFlags::from_bits_retain(flags as u32)
}

/// The flags of a passthrough open: the kernel does the I/O, so no direct I/O.
fn passthrough_flags(o: crate::fs::Opened) -> FopenFlags {
    open_flags(crate::fs::Opened {
        direct_io: false,
        ..o
    })
}

fn open_flags(o: crate::fs::Opened) -> FopenFlags {
    let mut flags = FopenFlags::empty();
    if o.direct_io {
        flags |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if !o.flush {
        flags |= FopenFlags::FOPEN_NOFLUSH;
    }
    flags
}

impl FuseAdapter {
    /// The backing id for passthrough handle `fh` of `ino`, made by `open` from the handle's
    /// mirror file if the inode has none yet. `None` (the open is served as strict I/O) when
    /// the kernel refuses it.
    fn backing(
        &self,
        ino: u64,
        fh: u64,
        open: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> io::Result<fuser::BackingId>,
    ) -> Option<Arc<fuser::BackingId>> {
        let made = self
            .backings
            .acquire(ino, fh, || match self.fs.with_backing(fh, open) {
                Ok(r) => r,
                Err(e) => Err(io::Error::from_raw_os_error(e.errno())),
            });
        match made {
            Ok(id) => Some(id),
            Err(e) => {
                self.fs.passthrough_refused(fh);
                tracing::warn!(
                    ino,
                    error = %e,
                    "the kernel refused a passthrough backing file; this open is served by the \
                     daemon (strict I/O)"
                );
                None
            }
        }
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Shared mappings of direct-I/O files (git and many tools mmap), parallel lookups, and
        // O_TRUNC passed with open instead of a separate truncate: a staged writeback is
        // emptied in its staging copy, while the mirror keeps the old content until close.
        for flag in [
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
        ] {
            if config.capabilities().contains(flag) {
                let _ = config.add_capabilities(flag);
            }
        }
        // 1 MiB reads ahead and writes per request: fewer round trips for large files, and
        // the most the kernel negotiates with a FUSE daemon by default.
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        if self.want_passthrough {
            // Depth 2: the mirror may itself be on a stacked filesystem (overlayfs), at the
            // price of not stacking one on the guarded view.
            if config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok()
            {
                self.fs.set_passthrough(true);
            } else {
                tracing::warn!(
                    "the kernel does not offer FUSE passthrough on this mount; every read and \
                     write goes through the daemon (strict I/O)"
                );
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(
            "lookup",
            parent,
            self.fs.lookup(&caller(req), parent.0, name),
            reply,
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(&caller(req), ino.0, fh.map(|f| f.0)) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(fail("getattr", ino, e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh: fh.map(|f| f.0),
        };
        match self.fs.setattr(&caller(req), ino.0, set) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(fail("setattr", ino, e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(&caller(req), ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(fail("readlink", ino, e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        entry(
            "mknod",
            parent,
            self.fs.mknod(&caller(req), parent.0, name, mode, umask),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        entry(
            "mkdir",
            parent,
            self.fs.mkdir(&caller(req), parent.0, name, mode, umask),
            reply,
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            "unlink",
            parent,
            self.fs.unlink(&caller(req), parent.0, name),
            reply,
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            "rmdir",
            parent,
            self.fs.rmdir(&caller(req), parent.0, name),
            reply,
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        entry(
            "symlink",
            parent,
            self.fs.symlink(&caller(req), parent.0, link_name, target),
            reply,
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(
            "rename",
            parent,
            self.fs.rename(
                &caller(req),
                parent.0,
                name,
                newparent.0,
                newname,
                rustix::fs::RenameFlags::from_bits_retain(flags.bits()),
            ),
            reply,
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(
            "link",
            ino,
            self.fs.link(&caller(req), ino.0, newparent.0, newname),
            reply,
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(&caller(req), ino.0, open_flags_of(flags.0)) {
            Ok(o) if o.passthrough => {
                match self.backing(ino.0, o.fh, |fd| reply.open_backing(fd)) {
                    Some(id) => {
                        reply.opened_passthrough(FileHandle(o.fh), passthrough_flags(o), &id)
                    }
                    None => reply.opened(FileHandle(o.fh), open_flags(o)),
                }
            }
            Ok(o) => reply.opened(FileHandle(o.fh), open_flags(o)),
            Err(e) => reply.error(fail("open", ino, e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        thread_local! {
            // One buffer per worker thread, kept at its largest size: no allocation or zeroing
            // per read.
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            match self.fs.read_into(fh.0, offset, &mut buf[..size as usize]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(fail("read", _ino, e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let written = if write_flags.contains(WriteFlags::FUSE_WRITE_CACHE) {
            self.fs.write_back(fh.0, offset, data)
        } else {
            self.fs.write(fh.0, offset, data)
        };
        match written {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail("write", _ino, e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        empty("flush", _ino, self.fs.flush(fh.0, req.pid()), reply);
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backings.release(fh.0);
        empty("release", _ino, self.fs.release(fh.0, req.pid()), reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty("fsync", _ino, self.fs.fsync(fh.0, datasync), reply);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(&caller(req), ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fail("opendir", ino, e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.fs.readdir(fh.0, offset, |next, item| {
            // Node 0 means "not in the mirror yet" (a staged new file, the notice); readdir must
            // still give some inode number, and one no real entry has tells `ls -i` and `find`
            // nothing false. The kernel looks every name up before it uses a number.
            let ino = if item.ino == 0 { u64::MAX } else { item.ino };
            reply.add(INodeNo(ino), next, item.kind, &item.name)
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("readdir", _ino, e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listed = self
            .fs
            .readdirplus(&caller(req), ino.0, fh.0, offset, |e| match &e.entry {
                Some(found) => reply.add(
                    found.attr.ino,
                    e.next,
                    e.name,
                    &found.ttl,
                    &found.attr,
                    Generation(0),
                ),
                None => reply.add(
                    INodeNo(0),
                    e.next,
                    e.name,
                    &Duration::ZERO,
                    &plain_attr(e.kind),
                    Generation(0),
                ),
            });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("readdirplus", ino, e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(fail("statfs", _ino, e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(
            "setxattr",
            ino,
            self.fs.setxattr(&caller(req), ino.0, name, value, flags),
            reply,
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr_reply(
            "getxattr",
            ino,
            self.fs.getxattr(&caller(req), ino.0, name),
            size,
            reply,
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(
            "listxattr",
            ino,
            self.fs.listxattr(&caller(req), ino.0),
            size,
            reply,
        );
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            "removexattr",
            ino,
            self.fs.removexattr(&caller(req), ino.0, name),
            reply,
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        empty(
            "access",
            ino,
            self.fs.access(
                &caller(req),
                ino.0,
                rustix::fs::Access::from_bits_retain(mask.bits() as u32),
            ),
            reply,
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.fs.create(
            &caller(req),
            parent.0,
            name,
            mode,
            umask,
            open_flags_of(flags),
        ) {
            Ok((e, o)) if o.passthrough => {
                match self.backing(e.attr.ino.0, o.fh, |fd| reply.open_backing(fd)) {
                    Some(id) => reply.created_passthrough(
                        &e.ttl,
                        &e.attr,
                        Generation(0),
                        FileHandle(o.fh),
                        passthrough_flags(o),
                        &id,
                    ),
                    None => reply.created(
                        &e.ttl,
                        &e.attr,
                        Generation(0),
                        FileHandle(o.fh),
                        open_flags(o),
                    ),
                }
            }
            Ok((e, o)) => reply.created(
                &e.ttl,
                &e.attr,
                Generation(0),
                FileHandle(o.fh),
                open_flags(o),
            ),
            Err(e) => reply.error(fail("create", parent, e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            "fallocate",
            _ino,
            self.fs.fallocate(fh.0, offset, length, mode),
            reply,
        );
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self
            .fs
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail("copy_file_range", _ino_in, e)),
        }
    }
}

fn xattr_reply(
    operation: &str,
    ino: INodeNo,
    result: FsResult<Vec<u8>>,
    size: u32,
    reply: ReplyXattr,
) {
    match result {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() <= size as usize => reply.data(&data),
        Ok(_) => reply.error(fuser::Errno::ERANGE),
        Err(e) => reply.error(fail(operation, ino, e)),
    }
}

/// How the kernel mount is set up.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub threads: usize,
    /// The name shown in `/proc/mounts` (the source directory).
    pub source_name: String,
    /// Let the kernel pass requests of every local user (`allow_other`), checking the
    /// permission bits the daemon shows (`default_permissions`). Without it the kernel only
    /// passes the mounting user's requests.
    pub other_users: bool,
    /// Ask the kernel for passthrough I/O (`--io passthrough`).
    pub passthrough: bool,
}

/// A mount being served: its threads, the signal that it ended, and the channel for telling
/// the kernel to drop what it caches.
pub struct Mounted {
    pub bg: fuser::BackgroundSession,
    pub ended: Ended,
    pub notifier: fuser::Notifier,
    /// The backing ids of open passthrough files (for `status`).
    pub backings: Arc<crate::passthrough::Backings>,
}

/// Mount `fs` at `mountpoint` and serve it on background threads.
pub fn mount(fs: Arc<GuardFs>, mountpoint: &Path, cfg: &MountConfig) -> io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(cfg.source_name.clone()),
        MountOption::Subtype("relayauth-mount".to_owned()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
    ];
    if cfg.other_users {
        config.mount_options.push(MountOption::DefaultPermissions);
        config.acl = SessionACL::All;
    } else {
        config.acl = SessionACL::Owner;
    }
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = true;
    let (alive, watch) = tokio::sync::watch::channel(());
    let backings = Arc::new(crate::passthrough::Backings::default());
    let adapter = FuseAdapter {
        fs,
        want_passthrough: cfg.passthrough,
        backings: backings.clone(),
        _alive: alive,
    };
    let session = fuser::Session::new(adapter, mountpoint, &config)?;
    let notifier = session.notifier();
    Ok(Mounted {
        bg: session.spawn()?,
        ended: Ended(watch),
        notifier,
        backings,
    })
}

/// Make the kernel forget every entry and attribute it caches for `fs` (and the pages of its
/// files), so that from now on each caller's view is asked for again. Never called from a
/// FUSE handler: the kernel may need the daemon's threads to answer while it invalidates.
/// Returns how many entries were invalidated.
pub fn forget_cached(notifier: &fuser::Notifier, fs: &GuardFs) -> usize {
    let mut n = 0;
    for (parent, name, ino) in fs.cached_entries() {
        // ENOENT (the kernel no longer has it) is no error for an invalidation; fuser maps
        // it to Ok. A connection that is gone ends the pass; any other refusal of one entry
        // must not spare the entries after it.
        match notifier.inval_entry(INodeNo(parent), &name) {
            Ok(()) => n += 1,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ENODEV)) => break,
            Err(e) => tracing::debug!(parent, error = %e, "an entry could not be invalidated"),
        }
        let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
    }
    n
}

/// A reasonable number of worker threads for this machine.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (n.get() * 2).clamp(4, 16))
}

/// Unmount `mountpoint` (lazily if busy), for `unmount` and cleanup paths.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH)
            .map_err(io::Error::from),
    }
}
