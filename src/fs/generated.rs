//! The generated files: `_PERMISSIONS.md` (rendered per caller from the same decisions the
//! operations make, writeback gate included) and the filtered `/.relay` runtime views.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::SystemTime;

use super::core::GuardFs;
use super::error::{Error, FsResult};
use super::gate::Ctx;
use super::inode::{Node, NodeKind, RelayView};
use super::mirror::Kind;
use super::relay_files;
use super::rendered::Stamp;
use crate::authz::{self, Op, Place, RelayItem};
use crate::permissions::{self, Listed};
use crate::session::State;

/// A notice listing at least this many entries gives its scratch memory back to the system.
const TRIM_AFTER_ENTRIES: usize = 1000;

impl GuardFs {
    /// `_PERMISSIONS.md` of the directory that `node` (a permissions node) belongs to.
    ///
    /// A rendering is kept per (session, directory) and given again while nothing it was
    /// rendered from has changed (see `rendered`).
    pub(crate) fn render_permissions(&self, ctx: &Ctx, node: &Node) -> FsResult<Arc<[u8]>> {
        let NodeKind::Permissions { dir } = node.kind else {
            return Err(Error::EINVAL);
        };
        let dir_node = self.node(dir)?;
        let dir_path = String::from_utf8_lossy(&dir_node.path()).into_owned();
        let (Some(grants), Some(state), Some(session)) = (&ctx.grants, &ctx.state, &ctx.session)
        else {
            let how = if self.gate.callers().reads_environment() {
                "Start it with `relayauth-mount run` and a token, or with the token in `RELAYAUTH_TOKEN` (a token there that was refused also leaves it nothing; the audit log says why)."
            } else {
                "Start it with `relayauth-mount run` and a token."
            };
            return Ok(format!("# Permissions\n\nThis process is not registered with the mount, so it may see nothing. {how}\n").into_bytes().into());
        };
        let dir_fd = self.dir_fd(&dir_node)?;
        let denials = session.denials_in(&dir_path);
        let held = self.gate.held(session);
        let policies = self.gate.policies();
        let stamp = Stamp {
            epoch: session.epoch(),
            active: *state == State::Active,
            dir: self.mirror.stat(dir_fd.as_fd()).ok().map(|st| {
                (
                    st.st_dev,
                    st.st_ino,
                    st.st_mtime,
                    st.st_mtime_nsec,
                    st.st_ctime,
                    st.st_ctime_nsec,
                )
            }),
            denials: (denials.len(), denials.last().map(|d| d.at)),
            held: held.clone(),
            policies: policies.clone(),
        };
        let key = (session.serial(), dir);
        if let Some(text) = self.notices.get(key, &stamp) {
            return Ok(text);
        }
        let listed: Vec<Listed> = if stamp.active {
            self.visible_children(ctx, &dir_node, dir_fd.as_fd())?
                .into_iter()
                .map(|(name, kind, _)| Listed {
                    name: name.to_string_lossy().into_owned(),
                    kind,
                })
                .collect()
        } else {
            Vec::new()
        };
        let judge = FsJudge {
            fs: self,
            ctx,
            dir_fd: dir_fd.as_fd(),
            scopes: grants.scopes(),
        };
        let subject = permissions::Subject {
            grants,
            state,
            now: SystemTime::now(),
            denials: &denials,
            held,
        };
        let provider_backed = self.opts.backing.is_provider_area(&dir_path);
        let view = permissions::compute(
            subject,
            &dir_path,
            &listed,
            &judge,
            &policies,
            provider_backed,
        );
        let text: Arc<[u8]> = permissions::render(&view).into_bytes().into();
        drop(view);
        self.notices.put(key, stamp, &text);
        if listed.len() >= TRIM_AFTER_ENTRIES {
            // A large directory's notice is a burst of short-lived allocations (a decision and
            // its reasons per entry) in this worker thread's malloc arena, which keeps the
            // pages: ten thousand entries left tens of MiB resident per thread. Give them back.
            // SAFETY: malloc_trim only releases free memory; it touches no live allocation.
            unsafe { libc::malloc_trim(0) };
        }
        Ok(text)
    }

    /// The filtered content of a `/.relay` view node for this caller.
    pub(crate) fn relay_view_content(&self, ctx: &Ctx, node: &Node) -> FsResult<Vec<u8>> {
        let NodeKind::RelayView { fd, view } = &node.kind else {
            return Err(Error::EINVAL);
        };
        let fd = fd.read().clone();
        let raw = relay_files::read_runtime_file(&self.mirror, fd.as_fd());
        let Some(grants) = &ctx.grants else {
            return Ok(Vec::new());
        };
        let scopes = &grants.scopes();
        Ok(match view {
            RelayView::State => {
                let visible = |p: &[u8]| {
                    scopes.visible(p)
                        && scopes
                            .check_known(crate::scope::Requirement::SYNC_READ, p)
                            .is_some()
                };
                relay_files::filter_state(&raw, &visible)
            }
            RelayView::DeniedLog => {
                relay_files::filter_denied_log(&raw, &|p: &[u8]| scopes.visible(p))
            }
        })
    }
}

/// Rights for `_PERMISSIONS.md`, from the same decisions the operations make: the caller's
/// decision, then, for a write or delete of a provider-backed file, the writeback gate.
struct FsJudge<'a> {
    fs: &'a GuardFs,
    ctx: &'a Ctx,
    dir_fd: BorrowedFd<'a>,
    scopes: &'a crate::scope::ScopeSet,
}

impl permissions::Judge for FsJudge<'_> {
    fn right(&self, path: &str, name: &str, kind: Kind, op: Op) -> permissions::Right {
        let p = path.as_bytes();
        let place = if authz::classify_relay(p).is_some_and(|i| i.needs_target()) {
            match self.fs.mirror.lookup(self.dir_fd, OsStr::new(name)) {
                Ok((fd, st)) => self.fs.place(p, OsStr::new(name), Some((fd.as_fd(), &st))),
                Err(_) => Place::Relay(RelayItem::Record { target: None }),
            }
        } else {
            self.fs.place(p, OsStr::new(name), None)
        };
        let d = self.fs.gate.decide(self.ctx, p, &place, op);
        let right = permissions::right(&d, self.scopes, path);
        if right.allowed
            && let Some(why) = self
                .fs
                .gate
                .writeback_refusal(self.ctx, p, &place, kind, op)
        {
            return permissions::Right {
                allowed: false,
                scope: None,
                lacks: None,
                why: Some(why),
            };
        }
        right
    }
}
