//! The table of open files and directories: what each handle holds (a mirror file, a staged
//! writeback, a generated snapshot, a directory listing) and what authorized it.
//!
//! Only the table and its records live here; opening, reading, writing and committing are
//! `handles`' work. The records know nothing of the filesystem core, so the core can hold the
//! table without the two modules needing each other.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fuser::FileType;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use rustix::fs::Stat;

use super::error::{Error, FsResult};
use super::gate::Change;
use super::inode::{Ino, Node};
use crate::authz::Op;
use crate::session::Session;

/// One entry of a directory listing snapshot.
#[derive(Clone, Debug)]
pub struct DirItem {
    pub name: OsString,
    pub kind: FileType,
    pub ino: u64,
}

/// Where a staged writeback goes. Where that is, is the node's location at commit time, never
/// a copy taken at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Over the existing file.
    Replace,
    /// A new name, which must still be free when the bytes are placed.
    New,
}

/// What a staged writeback's next close has to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Edits {
    /// Nothing: the staging copy is what was committed or found.
    None,
    /// Created or truncated on open, not written yet: committed only when the last descriptor
    /// goes away. A shell opens, `dup2`s and closes the original descriptor before it writes,
    /// and that first close must not commit an empty payload.
    Touched,
    /// Written since the last commit: the next `close()` (of the opener) commits.
    Written,
}

/// Where a staged writeback's bytes are.
#[derive(Debug)]
pub(crate) enum Stage {
    /// In the guard's staging folder under `name`, waiting to be validated and placed.
    Open {
        file: File,
        name: OsString,
        edits: Edits,
        /// The mirror file the copy was made from (for a [`Target::Replace`]), held open: the
        /// bytes replace it only if its name still holds it, and while it is held its inode
        /// number cannot be given to a file that replaced it.
        base: Option<Arc<OwnedFd>>,
    },
    /// Validated and placed: reads go on from the placed file, and the next write stages a new
    /// copy.
    Placed(File),
    /// Refused (and kept in quarantine) or broken: every further call answers this.
    Failed(Error),
}

/// A staged writeback: the bytes live in the guard's staging folder until they validate.
#[derive(Debug)]
pub(crate) struct Staged {
    pub(super) target: Target,
    /// The process that opened it: only its `close()` commits written bytes early (a child that
    /// inherited the descriptor and closes it on exec or exit does not); the last release
    /// always does.
    pub(super) opener: u32,
    pub(super) stage: Stage,
    /// The operation whose end commits it, as the audit names it: `close` for a descriptor,
    /// `truncate` for a truncation by path.
    pub(super) committed_by: &'static str,
}

impl Staged {
    /// A writeback staged in `file` (named `name` in the staging folder).
    pub(super) fn new(
        target: Target,
        opener: u32,
        (file, name): (File, OsString),
        edits: Edits,
        base: Option<Arc<OwnedFd>>,
    ) -> Staged {
        Staged {
            target,
            opener,
            stage: Stage::Open {
                file,
                name,
                edits,
                base,
            },
            committed_by: "close",
        }
    }

    /// The staging copy, while there is one.
    pub(super) fn staging(&self) -> Option<&File> {
        match &self.stage {
            Stage::Open { file, .. } => Some(file),
            _ => None,
        }
    }

    /// The file reads are answered from: the staging copy, or after a commit the placed file.
    pub(super) fn readable(&self) -> Option<&File> {
        match &self.stage {
            Stage::Open { file, .. } | Stage::Placed(file) => Some(file),
            Stage::Failed(_) => None,
        }
    }

    pub(super) fn failure(&self) -> Option<&Error> {
        match &self.stage {
            Stage::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// What the next close has to do.
    pub(super) fn edits(&self) -> Edits {
        match &self.stage {
            Stage::Open { edits, .. } => *edits,
            _ => Edits::None,
        }
    }

    pub(super) fn set_edits(&mut self, to: Edits) {
        if let Stage::Open { edits, .. } = &mut self.stage {
            *edits = to;
        }
    }

    /// The staging copy was placed at the target: from now on it is the file there.
    pub(super) fn placed(&mut self) -> Option<&File> {
        let stage = std::mem::replace(&mut self.stage, Stage::Failed(Error::EIO));
        self.stage = match stage {
            Stage::Open { file, .. } => Stage::Placed(file),
            other => other,
        };
        self.target = Target::Replace;
        match &self.stage {
            Stage::Placed(file) => Some(file),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Body {
    /// A mirror file, written in place (local paths).
    File(File),
    Staged(Mutex<Staged>),
    /// A generated file's per-handle snapshot.
    Bytes(Arc<[u8]>),
    /// The notice opened for writing: reads give its snapshot, writes are accepted and
    /// discarded.
    Sink(Arc<[u8]>),
    Dir(Vec<DirItem>),
}

#[derive(Debug)]
pub(crate) struct Handle {
    pub(super) body: Body,
    pub(super) node: Arc<Node>,
    pub(super) session: Option<Arc<Session>>,
    pub(super) read: bool,
    pub(super) write: bool,
    /// The operations that authorized this handle (read, write, create, see), decided again on
    /// the node's path whenever the session's grants change.
    pub(super) grants: [Option<Op>; 2],
    /// The gate's proof for writing through this handle (its open's write or create), which
    /// also lets it set the file's size and times.
    pub(super) change: Option<Change>,
    /// The session epoch the grants were last decided under.
    pub(super) checked: AtomicU64,
    /// Set once a re-decision refused: the handle carries nothing any more.
    pub(super) cut: std::sync::atomic::AtomicBool,
    /// The node's move count the grants were last decided at: a node renamed since (into a
    /// place its session may not reach) is decided again.
    pub(super) decided_moves: AtomicU64,
    /// The kernel serves it by passthrough (counted on the node while it is open).
    passthrough: std::sync::atomic::AtomicBool,
}

impl Handle {
    pub(super) fn new(
        body: Body,
        node: Arc<Node>,
        session: Option<Arc<Session>>,
        (read, write): (bool, bool),
        grants: [Option<Op>; 2],
        change: Option<Change>,
    ) -> Handle {
        let epoch = session.as_ref().map_or(0, |s| s.epoch());
        let decided_moves = AtomicU64::new(node.moves());
        Handle {
            decided_moves,
            body,
            node,
            session,
            read,
            write,
            grants,
            change,
            checked: AtomicU64::new(epoch),
            cut: std::sync::atomic::AtomicBool::new(false),
            passthrough: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Handle {
    /// Mark the handle as served by passthrough (`on`), or no longer (the kernel refused it).
    pub(super) fn set_passthrough(&self, on: bool) {
        if self.passthrough.swap(on, Ordering::AcqRel) != on {
            self.node.count_passthrough(on);
        }
    }
}

/// An open file as the kernel should treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Every read and write goes to the daemon (strict I/O, generated files).
    pub direct_io: bool,
    /// `close()` must reach the daemon (a staged writeback commits there).
    pub flush: bool,
    /// The kernel may read and write the mirror file itself (`--io passthrough`, a plain
    /// mirror file): [`GuardFs::with_backing`](super::GuardFs::with_backing) gives it.
    pub passthrough: bool,
}

/// The open handles.
#[derive(Debug, Default)]
pub struct Handles {
    table: RwLock<FxHashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
}

impl Handles {
    pub(super) fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.table.write().insert(fh, Arc::new(h));
        fh
    }

    pub(super) fn get(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.table.read().get(&fh).cloned().ok_or(Error::EBADF)
    }

    pub(super) fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        let h = self.table.write().remove(&fh)?;
        h.set_passthrough(false);
        Some(h)
    }

    /// The handles open for writing on node `ino`.
    pub(super) fn writable_on(&self, ino: Ino) -> Vec<Arc<Handle>> {
        self.table
            .read()
            .values()
            .filter(|h| h.write && h.node.ino == ino)
            .cloned()
            .collect()
    }

    /// Whether a staged writeback (new or replacing) is open on a file anywhere below the
    /// directory `dir`.
    pub(crate) fn staged_below(&self, dir: &[u8]) -> bool {
        let mut prefix = dir.to_vec();
        if prefix != b"/" {
            prefix.push(b'/');
        }
        self.table
            .read()
            .values()
            .any(|h| matches!(h.body, Body::Staged(_)) && h.node.path().starts_with(&prefix))
    }

    /// The stat of the file a handle of node `ino` has open: its staging copy for a staged
    /// write not committed yet, else the open mirror file.
    pub(crate) fn stat_of(&self, fh: u64, ino: Ino) -> Option<Stat> {
        let h = self.table.read().get(&fh).cloned()?;
        if h.node.ino != ino {
            return None;
        }
        match &h.body {
            Body::Staged(s) => rustix::fs::fstat(s.lock().staging()?).ok(),
            Body::File(f) => rustix::fs::fstat(f).ok(),
            _ => None,
        }
    }
}
