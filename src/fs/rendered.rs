//! Rendered `_PERMISSIONS.md` texts kept for reuse, per (session, directory).
//!
//! A notice is thousands of decisions for a large directory, and the kernel asks for it several
//! times in a row (`ls -l` looks it up and takes its attributes, `cat` opens it): each asked for
//! a new rendering. A kept text is given again only while everything it was rendered from is
//! unchanged ([`Stamp`]) and for at most [`MAX_AGE`], the kernel's own entry cache time, which
//! bounds what a change within one timestamp tick of the directory could leave unseen. Kept
//! texts are bounded in bytes: a walk of a large tree must not keep a copy of every listing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::inode::Ino;
use crate::writeback::PolicySet;

/// How long a rendered notice is given again at most.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// How many bytes of rendered notices are kept (the table is emptied when they would exceed
/// it), and the largest notice kept.
const BUDGET: usize = 4 << 20;
const MAX_KEPT: usize = 1 << 20;

/// Everything a notice's text depends on besides the clock.
#[derive(Debug)]
pub struct Stamp {
    /// The session's grants epoch.
    pub epoch: u64,
    /// The session is active (only an active session's notice is kept).
    pub active: bool,
    /// The directory's (dev, ino, mtime, mtime ns, ctime, ctime ns).
    pub dir: Option<(u64, u64, i64, u64, i64, u64)>,
    /// How many recent denials there are in the directory, and the newest one's time.
    pub denials: (usize, Option<SystemTime>),
    /// Why the guard holds everything, if it does.
    pub held: Option<String>,
    /// The policies in force (compared by identity: a reload is a new `Arc`).
    pub policies: Arc<PolicySet>,
}

impl PartialEq for Stamp {
    fn eq(&self, other: &Stamp) -> bool {
        self.epoch == other.epoch
            && self.active == other.active
            && self.dir == other.dir
            && self.denials == other.denials
            && self.held == other.held
            && Arc::ptr_eq(&self.policies, &other.policies)
    }
}

#[derive(Debug)]
struct Kept {
    stamp: Stamp,
    at: Instant,
    text: Arc<[u8]>,
}

/// The kept notices, by (session serial, directory).
#[derive(Debug, Default)]
pub struct Rendered {
    kept: Mutex<FxHashMap<(u64, Ino), Kept>>,
}

impl Rendered {
    /// The text kept for `key` if it was rendered from `stamp` less than [`MAX_AGE`] ago.
    pub fn get(&self, key: (u64, Ino), stamp: &Stamp) -> Option<Arc<[u8]>> {
        if !stamp.active {
            return None;
        }
        let kept = self.kept.lock();
        let k = kept.get(&key)?;
        (k.stamp == *stamp && k.at.elapsed() < MAX_AGE).then(|| k.text.clone())
    }

    /// Keep `text`, rendered from `stamp`, for `key` (not when the session is not active or
    /// the text is larger than a kept one may be).
    pub fn put(&self, key: (u64, Ino), stamp: Stamp, text: &Arc<[u8]>) {
        if !stamp.active || text.len() > MAX_KEPT {
            return;
        }
        let mut kept = self.kept.lock();
        let bytes: usize = kept.values().map(|k| k.text.len()).sum();
        if bytes + text.len() > BUDGET {
            kept.clear();
        }
        kept.insert(
            key,
            Kept {
                stamp,
                at: Instant::now(),
                text: text.clone(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(epoch: u64, policies: &Arc<PolicySet>) -> Stamp {
        Stamp {
            epoch,
            active: true,
            dir: Some((1, 2, 3, 4, 5, 6)),
            denials: (0, None),
            held: None,
            policies: policies.clone(),
        }
    }

    #[test]
    fn a_kept_notice_is_given_again_only_for_what_it_was_rendered_from() {
        let r = Rendered::default();
        let p = Arc::new(PolicySet::default());
        let text: Arc<[u8]> = Arc::from(&b"notice"[..]);
        r.put((1, 7), stamp(1, &p), &text);
        assert_eq!(
            r.get((1, 7), &stamp(1, &p)).as_deref(),
            Some(&b"notice"[..])
        );
        // Another session, another directory, new grants, reloaded policies, a changed
        // directory, a new denial: rendered again.
        assert!(r.get((2, 7), &stamp(1, &p)).is_none());
        assert!(r.get((1, 8), &stamp(1, &p)).is_none());
        assert!(r.get((1, 7), &stamp(2, &p)).is_none());
        assert!(
            r.get((1, 7), &stamp(1, &Arc::new(PolicySet::default())))
                .is_none()
        );
        let mut changed = stamp(1, &p);
        changed.dir = Some((1, 2, 3, 5, 5, 6));
        assert!(r.get((1, 7), &changed).is_none());
        let mut denied = stamp(1, &p);
        denied.denials = (1, Some(SystemTime::now()));
        assert!(r.get((1, 7), &denied).is_none());
        // An ended session's notice is never kept nor given.
        let mut ended = stamp(1, &p);
        ended.active = false;
        r.put((3, 7), ended, &text);
        let mut ended = stamp(1, &p);
        ended.active = false;
        assert!(r.get((3, 7), &ended).is_none());
        assert!(r.get((3, 7), &stamp(1, &p)).is_none());
    }

    #[test]
    fn kept_notices_stay_within_their_budget() {
        let r = Rendered::default();
        let p = Arc::new(PolicySet::default());
        let big: Arc<[u8]> = vec![b'x'; MAX_KEPT].into();
        let huge: Arc<[u8]> = vec![b'x'; MAX_KEPT + 1].into();
        r.put((1, 1), stamp(1, &p), &huge);
        assert!(r.get((1, 1), &stamp(1, &p)).is_none(), "too large to keep");
        for dir in 0..(BUDGET / MAX_KEPT + 3) as u64 {
            r.put((1, dir), stamp(1, &p), &big);
            let bytes: usize = r.kept.lock().values().map(|k| k.text.len()).sum();
            assert!(bytes <= BUDGET, "{bytes}");
        }
    }
}
