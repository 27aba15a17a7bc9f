//! Callers already resolved, by thread, so that a request from a known thread costs a lookup
//! and one `poll(2)` instead of a walk of its ancestry in `/proc` (tens of µs per request once
//! sessions are registered).
//!
//! What makes a remembered answer safe to give again:
//! - **The very thread.** Each entry holds a pidfd of the thread (`PIDFD_THREAD`, Linux 6.9),
//!   opened *before* its ancestry was read and checked alive after: the walk and the pidfd name
//!   the same thread. A pidfd turns readable when its thread exits, so a reused thread id never
//!   inherits an answer. Kernels without thread pidfds remember nothing.
//! - **The same registrations.** Every entry carries the registrations' generation, bumped by
//!   every registration and every forgotten one: an answer given before a process (or one of its
//!   ancestors) registered is not given after.
//! - **The same uid.** An entry answers only for the uid it was resolved for.
//!
//! A thread's answer otherwise stays while it lives, even if its ancestry changes (a parent
//! exiting re-parents it): the session it was found in is the narrower one to keep.
//!
//! Bounded: at most [`CAPACITY`] threads (each holds a descriptor); entries of exited threads
//! are dropped when looked at, by [`KnownThreads::prune`], and when the table is full.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::OnceLock;

use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use super::Session;

/// How many threads are remembered at most.
pub const CAPACITY: usize = 1024;

/// `PIDFD_THREAD` (Linux 6.9): a pidfd for one thread rather than its whole group.
const PIDFD_THREAD: libc::c_int = libc::O_EXCL;

#[derive(Debug)]
struct Known {
    pidfd: OwnedFd,
    uid: u32,
    generation: u64,
    session: Option<Arc<Session>>,
}

/// The threads whose session is known (see the module documentation).
#[derive(Debug, Default)]
pub struct KnownThreads {
    map: RwLock<FxHashMap<u32, Known>>,
}

/// A pidfd for the thread `tid`, if the kernel has thread pidfds.
pub fn thread_pidfd(tid: u32) -> Option<OwnedFd> {
    if !supported() {
        return None;
    }
    open_thread_pidfd(tid)
}

fn open_thread_pidfd(tid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) with a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, PIDFD_THREAD) };
    // SAFETY: on success the kernel returned a new descriptor that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Whether this kernel gives pidfds for single threads (asked once, of a thread of ours).
fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let me = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        open_thread_pidfd(me).is_some()
    })
}

/// Whether the thread behind `pidfd` is still running (a pidfd turns readable at its exit).
pub fn alive(pidfd: &OwnedFd) -> bool {
    let mut fds = [libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd, no timeout.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    rc == 0
}

impl KnownThreads {
    /// The remembered answer for thread `tid` running as `uid` under registrations of
    /// `generation`: `Some(session or none)`, or `None` when it must be resolved afresh.
    pub fn get(&self, tid: u32, uid: u32, generation: u64) -> Option<Option<Arc<Session>>> {
        let map = self.map.read();
        let k = map.get(&tid)?;
        (k.uid == uid && k.generation == generation && alive(&k.pidfd)).then(|| k.session.clone())
    }

    /// Remember `session` as the answer for the thread behind `pidfd` (opened before its
    /// ancestry was read), unless the thread has exited since.
    pub fn remember(
        &self,
        tid: u32,
        pidfd: OwnedFd,
        uid: u32,
        generation: u64,
        session: Option<Arc<Session>>,
    ) {
        if !alive(&pidfd) {
            return;
        }
        let mut map = self.map.write();
        if map.len() >= CAPACITY && !map.contains_key(&tid) {
            map.retain(|_, k| alive(&k.pidfd));
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(
            tid,
            Known {
                pidfd,
                uid,
                generation,
                session,
            },
        );
    }

    /// Forget the threads that have exited.
    pub fn prune(&self) {
        self.map.write().retain(|_, k| alive(&k.pidfd));
    }

    /// How many threads are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testing::session;

    fn gettid() -> u32 {
        rustix::thread::gettid().as_raw_nonzero().get() as u32
    }

    #[test]
    fn an_answer_is_given_again_only_to_the_same_living_thread_uid_and_registrations() {
        let known = KnownThreads::default();
        let s = session(&["relayfile:fs:read:/github/**"]);
        let me = gettid();
        let Some(fd) = thread_pidfd(me) else {
            panic!("this kernel has no thread pidfds (Linux 6.9+ is required by the tests)");
        };
        known.remember(me, fd, 1000, 7, Some(s.clone()));
        assert!(
            known
                .get(me, 1000, 7)
                .flatten()
                .is_some_and(|g| Arc::ptr_eq(&g, &s))
        );
        assert!(known.get(me, 0, 7).is_none(), "another uid");
        assert!(known.get(me, 1000, 8).is_none(), "newer registrations");
        // A thread that exits: its id answers nothing any more, and pruning forgets it.
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let tid = gettid();
            tx.send((tid, thread_pidfd(tid))).unwrap();
        });
        let (tid, fd) = rx.recv().unwrap();
        t.join().unwrap();
        // Its pidfd was opened while it ran; it has exited now, so nothing is remembered.
        known.remember(tid, fd.unwrap(), 1000, 7, None);
        assert!(known.get(tid, 1000, 7).is_none());
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let tid = gettid();
            tx.send((tid, thread_pidfd(tid))).unwrap();
            let _ = done_rx.recv();
        });
        let (tid, fd) = rx.recv().unwrap();
        known.remember(tid, fd.unwrap(), 1000, 7, None);
        assert!(matches!(known.get(tid, 1000, 7), Some(None)));
        assert_eq!(known.len(), 2);
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(
            known.get(tid, 1000, 7).is_none(),
            "an exited thread's answer was given"
        );
        known.prune();
        assert_eq!(known.len(), 1);
    }

    #[test]
    fn the_table_stays_bounded() {
        let known = KnownThreads::default();
        let me = gettid();
        for i in 0..(CAPACITY as u32 + 10) {
            // Every entry is this (living) thread's pidfd under another id.
            if let Some(fd) = thread_pidfd(me) {
                known.remember(1_000_000 + i, fd, 0, 0, None);
            }
        }
        assert!(known.len() <= CAPACITY, "{}", known.len());
    }
}
