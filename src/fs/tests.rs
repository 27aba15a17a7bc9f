//! Core tests: the guarded filesystem driven directly, without a kernel.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::core::{Caller, Error, GuardFs, Options};
use super::inode::ROOT;
use super::mirror::Mirror;
use super::modify::SetAttr;
use crate::audit::AuditLog;
use crate::session::testing::session;
use crate::session::{Callers, Session};
use crate::writeback::PolicySet;
use rustix::fs::{Access, OFlags, RenameFlags};

const ME: Caller = Caller {
    pid: 1,
    uid: 0,
    gid: 0,
};

/// A scratch copy of the acme fixture mirror.
pub(crate) fn fixture_copy() -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-fixtures/mirrors/acme");
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("acme");
    copy_tree(&src, &dst);
    (dir, dst)
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

pub(crate) fn guard(root: &Path, s: Arc<Session>, audit: Option<Arc<AuditLog>>) -> GuardFs {
    guard_with(root, s, audit, Options::default())
}

/// A guard with the mirror's writeback policies and `opts`; the session is confirmed.
fn guard_with(
    root: &Path,
    s: Arc<Session>,
    audit: Option<Arc<AuditLog>>,
    opts: Options,
) -> GuardFs {
    let policies = PolicySet::load(&root.join(".relay/writeback-policies.json")).unwrap();
    s.confirm();
    GuardFs::new(
        Mirror::open(root).unwrap(),
        Arc::new(Callers::new(s, false)),
        policies,
        audit,
        opts,
    )
    .unwrap()
}

/// A guard without writeback policies, with `opts`; the session is confirmed.
fn bare_guard(root: &Path, s: Arc<Session>, opts: Options) -> GuardFs {
    s.confirm();
    GuardFs::new(
        Mirror::open(root).unwrap(),
        Arc::new(Callers::new(s, false)),
        PolicySet::default(),
        None,
        opts,
    )
    .unwrap()
}

/// Options with `scratch` as a local root.
fn scratch_local() -> Options {
    Options {
        backing: crate::writeback::ProviderAreas {
            local_roots: vec!["scratch".to_owned()],
        },
        ..Options::default()
    }
}

/// Walk `path` from the root with lookups; the inode of the last component.
fn walk(fs: &GuardFs, path: &str) -> Result<u64, Error> {
    let mut ino = ROOT;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs.lookup(&ME, ino, OsStr::new(part))?.attr.ino.0;
    }
    Ok(ino)
}

fn read_path(fs: &GuardFs, path: &str) -> Result<Vec<u8>, Error> {
    let ino = walk(fs, path)?;
    let fh = fs.open(&ME, ino, OFlags::RDONLY)?.fh;
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(fh, out.len() as u64, 65536)?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(fh, ME.pid)?;
    Ok(out)
}

fn names(fs: &GuardFs, path: &str) -> Vec<String> {
    let ino = walk(fs, path).unwrap();
    fs.list_dir(&ME, ino)
        .unwrap()
        .into_iter()
        .map(|i| i.name.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect()
}

const LEAD: &[&str] = &[
    "relayfile:fs:read:*",
    "relayfile:fs:write:/github/repos/acme/api/**",
    "relayfile:fs:create:/linear/issues/*",
    "relayfile:fs:write:/slack/channels/c456-eng/messages/*",
    "relayfile:ops:read:/github/**",
    "relayfile:sync:read:*",
    "relayfile:fs:write:/github/repos/acme/api/pulls/*/reviews/*",
];

#[test]
fn hidden_paths_are_enoent_and_unlisted() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(&["relayfile:fs:read:/slack/**"]), None);
    assert_eq!(names(&fs, "/"), ["slack", "_PERMISSIONS.md"]);
    assert_eq!(walk(&fs, "/github"), Err(Error::ENOENT));
    assert_eq!(walk(&fs, "/.relay"), Err(Error::ENOENT));
    assert!(read_path(&fs, "/slack/users/U04ALICE01.json").is_ok());
}

#[test]
fn reads_allowed_writes_refused_eacces() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let body = read_path(&fs, "/github/repos/acme/web/pulls/18/metadata.json").unwrap();
    assert!(!body.is_empty());
    let ino = walk(&fs, "/github/repos/acme/web/pulls/18/metadata.json").unwrap();
    assert_eq!(
        fs.open(&ME, ino, OFlags::WRONLY).unwrap_err(),
        Error::EACCES
    );
    assert_eq!(
        fs.open(&ME, ino, OFlags::RDONLY | OFlags::TRUNC)
            .unwrap_err(),
        Error::EACCES
    );
    let (attr, _) = fs.getattr(&ME, ino, None).unwrap();
    assert_eq!(attr.perm & 0o222, 0, "no w bits where writing is refused");
    assert_eq!(attr.perm & 0o444, 0o444);
}

#[test]
fn relay_rules() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let pending = names(&fs, "/.relay/outbox/pending");
    // ops:read on /github/** only: the GitHub review draft, not the Slack one.
    assert_eq!(
        pending,
        [
            "mountcmd_7297f5cbe1631e2505767872af24f22d.json",
            "_PERMISSIONS.md"
        ]
    );
    let relay = names(&fs, "/.relay");
    assert!(!relay.iter().any(|n| n == ".relayauth-mount"), "{relay:?}");
    let state: serde_json::Value =
        serde_json::from_slice(&read_path(&fs, "/.relay/state.json").unwrap()).unwrap();
    assert!(state.get("localRoot").is_none());
    let ino = walk(&fs, "/.relay/state.json").unwrap();
    assert_eq!(
        fs.open(&ME, ino, OFlags::WRONLY).unwrap_err(),
        Error::EACCES
    );
    let fs_only = guard(&root, session(&["relayfile:fs:*:*"]), None);
    assert_eq!(walk(&fs_only, "/.relay"), Err(Error::ENOENT));
}

#[test]
fn permissions_file_is_virtual_and_read_only() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let text = String::from_utf8(read_path(&fs, "/github/repos/acme/api/_PERMISSIONS.md").unwrap())
        .unwrap();
    assert!(text.contains("mid-path glob"), "{text}");
    assert!(text.contains("```json"));
    // A refusal that is not a missing scope gives its reason, not a fake requirement.
    let row = text
        .lines()
        .find(|l| l.starts_with("| `metadata.json` |"))
        .unwrap();
    assert!(
        row.contains("| no (/github/repos/acme/api/metadata.json is provider-backed"),
        "{row}"
    );
    assert!(!row.contains("needs `/"), "{row}");
    // Where the caller could not make an ordinary file of that name, writing it is refused...
    let ino = walk(&fs, "/github/repos/acme/web/_PERMISSIONS.md").unwrap();
    assert_eq!(
        fs.open(&ME, ino, OFlags::WRONLY).unwrap_err(),
        Error::EACCES
    );
    let web = walk(&fs, "/github/repos/acme/web").unwrap();
    assert_eq!(
        fs.unlink(&ME, web, OsStr::new("_PERMISSIONS.md"))
            .unwrap_err(),
        Error::EACCES
    );
    // ...where it could, the write is accepted and discarded, and nothing reaches the mirror.
    let ino = walk(&fs, "/github/repos/acme/api/_PERMISSIONS.md").unwrap();
    let fh = fs
        .open(&ME, ino, OFlags::WRONLY | OFlags::TRUNC)
        .unwrap()
        .fh;
    assert_eq!(fs.write(fh, 0, b"forged").unwrap(), 6);
    fs.release(fh, ME.pid).unwrap();
    assert!(!root.join("github/repos/acme/api/_PERMISSIONS.md").exists());
    let again =
        String::from_utf8(read_path(&fs, "/github/repos/acme/api/_PERMISSIONS.md").unwrap())
            .unwrap();
    assert!(again.starts_with("# Permissions in"), "{again}");
    // Unlinking it removes it for this session until it is created again.
    let api = walk(&fs, "/github/repos/acme/api").unwrap();
    fs.unlink(&ME, api, OsStr::new("_PERMISSIONS.md")).unwrap();
    assert_eq!(
        walk(&fs, "/github/repos/acme/api/_PERMISSIONS.md").unwrap_err(),
        Error::ENOENT
    );
    // Listing the directory brings it back...
    assert!(names(&fs, "/github/repos/acme/api").contains(&"_PERMISSIONS.md".to_owned()));
    assert!(walk(&fs, "/github/repos/acme/api/_PERMISSIONS.md").is_ok());
    // ...and after another unlink an exclusive create of it succeeds, as `tar x` retries.
    fs.unlink(&ME, api, OsStr::new("_PERMISSIONS.md")).unwrap();
    let (_, opened) = fs
        .create(
            &ME,
            api,
            OsStr::new("_PERMISSIONS.md"),
            0o644,
            0o022,
            OFlags::WRONLY | OFlags::EXCL,
        )
        .unwrap();
    fs.write(opened.fh, 0, b"copied").unwrap();
    fs.release(opened.fh, ME.pid).unwrap();
    assert!(names(&fs, "/github/repos/acme/api").contains(&"_PERMISSIONS.md".to_owned()));
    assert!(!root.join("github/repos/acme/api/_PERMISSIONS.md").exists());
}

#[test]
fn writeback_valid_payload_commits_and_invalid_is_quarantined() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let dir = walk(&fs, "/github/repos/acme/api/pulls/42/reviews").unwrap();
    let good = br#"{"event": "COMMENT", "body": "Looks good to me."}"#;
    let (_, opened) = fs
        .create(
            &ME,
            dir,
            OsStr::new("new-review.json"),
            0o644,
            0o022,
            OFlags::WRONLY,
        )
        .unwrap();
    let fh = opened.fh;
    fs.write(fh, 0, good).unwrap();
    // Not in the mirror until the writer closes it.
    assert!(
        !root
            .join("github/repos/acme/api/pulls/42/reviews/new-review.json")
            .exists()
    );
    fs.flush(fh, ME.pid).unwrap();
    fs.release(fh, ME.pid).unwrap();
    assert_eq!(
        std::fs::read(root.join("github/repos/acme/api/pulls/42/reviews/new-review.json")).unwrap(),
        good
    );

    let (_, opened) = fs
        .create(
            &ME,
            dir,
            OsStr::new("bad-review.json"),
            0o644,
            0o022,
            OFlags::WRONLY,
        )
        .unwrap();
    let fh = opened.fh;
    fs.write(fh, 0, br#"{"event": "LGTM", "body": "x"}"#)
        .unwrap();
    assert_eq!(fs.flush(fh, ME.pid).unwrap_err(), Error::EINVAL);
    fs.release(fh, ME.pid).unwrap_err();
    assert!(
        !root
            .join("github/repos/acme/api/pulls/42/reviews/bad-review.json")
            .exists()
    );
    let q: Vec<_> = std::fs::read_dir(root.join(".relay/.relayauth-mount/quarantine"))
        .unwrap()
        .collect();
    assert_eq!(q.len(), 1);
}

#[test]
fn no_policy_means_no_write_even_with_fs_write_everywhere() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(&["relayfile:fs:*:*"]), None);
    let ino = walk(&fs, "/github/repos/acme/web/pulls/18/metadata.json").unwrap();
    assert_eq!(
        fs.open(&ME, ino, OFlags::WRONLY).unwrap_err(),
        Error::EACCES
    );
    let before = std::fs::read(root.join("github/repos/acme/web/pulls/18/metadata.json")).unwrap();
    let ino = walk(&fs, "/github/repos/acme/web/pulls/18/metadata.json").unwrap();
    let set = super::modify::SetAttr {
        size: Some(0),
        ..Default::default()
    };
    assert_eq!(fs.setattr(&ME, ino, set).unwrap_err(), Error::EACCES);
    assert_eq!(
        std::fs::read(root.join("github/repos/acme/web/pulls/18/metadata.json")).unwrap(),
        before
    );
}

#[test]
fn hard_links_are_eperm_and_rename_needs_both_sides() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let f = walk(&fs, "/github/repos/acme/api/issues/7/metadata.json").unwrap();
    let d = walk(&fs, "/github/repos/acme/api/issues/7").unwrap();
    assert_eq!(
        fs.link(&ME, f, d, OsStr::new("alias.json")).unwrap_err(),
        Error::EPERM
    );
    // Rename from a writable area into a read-only one.
    let web = walk(&fs, "/github/repos/acme/web").unwrap();
    let api = walk(&fs, "/github/repos/acme/api").unwrap();
    assert_eq!(
        fs.rename(
            &ME,
            api,
            OsStr::new("metadata.json"),
            web,
            OsStr::new("stolen.json"),
            RenameFlags::empty()
        )
        .unwrap_err(),
        Error::EACCES
    );
    assert!(root.join("github/repos/acme/api/metadata.json").exists());
    assert!(!root.join("github/repos/acme/web/stolen.json").exists());
}

/// The adapter over the core, mounted in-process: the listing, a generated file, a refused
/// write, a valid writeback and one refused at `close()`. (The suites in `tests/` cover the
/// daemon; this one needs no issuer.) Under `CI=true` a missing FUSE is a failure.
#[test]
fn fuse_smoke() {
    let fuse = Path::new("/dev/fuse").exists();
    if !fuse {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(!ci, "running under CI but /dev/fuse is missing");
        return;
    }
    let (d, root) = fixture_copy();
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // A directory far larger than one reply, so listing takes many resumed calls.
    let many = root.join("slack/channels/c456-eng/many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..3000 {
        std::fs::write(many.join(format!("message-{i:05}.json")), b"{}").unwrap();
    }
    let fs = Arc::new(guard(&root, session(LEAD), None));
    let cfg = crate::fuse::MountConfig {
        threads: 4,
        source_name: root.display().to_string(),
        other_users: false,
        passthrough: false,
    };
    // Dropping the session unmounts, also when an assertion below fails.
    let crate::fuse::Mounted { bg, .. } = crate::fuse::mount(fs, &mnt, &cfg).unwrap();
    let mut top: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert!(top.contains(&"_PERMISSIONS.md".to_owned()), "{top:?}");
    assert!(top.contains(&"github".to_owned()), "{top:?}");
    let mut listed: Vec<String> = std::fs::read_dir(mnt.join("slack/channels/c456-eng/many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    let mut want: Vec<String> = (0..3000).map(|i| format!("message-{i:05}.json")).collect();
    want.push("_PERMISSIONS.md".to_owned());
    want.sort();
    assert_eq!(
        listed, want,
        "every entry once, across resumed readdir calls"
    );
    let cat = std::fs::read_to_string(mnt.join("github/repos/acme/api/_PERMISSIONS.md")).unwrap();
    assert!(
        cat.starts_with("# Permissions in `/github/repos/acme/api`"),
        "{cat}"
    );
    let err = std::fs::write(
        mnt.join("github/repos/acme/web/pulls/18/metadata.json"),
        b"x",
    )
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    let reviews = "github/repos/acme/api/pulls/42/reviews";
    std::fs::write(
        mnt.join(reviews).join("r9.json"),
        br#"{"event":"COMMENT","body":"fine"}"#,
    )
    .unwrap();
    assert!(root.join(reviews).join("r9.json").exists());
    {
        use std::io::Write;
        use std::os::fd::IntoRawFd;
        let mut f = std::fs::File::create(mnt.join(reviews).join("r10.json")).unwrap();
        f.write_all(b"{").unwrap();
        // SAFETY: the descriptor was just taken out of `f` and is closed exactly once.
        let rc = unsafe { libc::close(f.into_raw_fd()) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(
            (rc, errno),
            (-1, Some(libc::EINVAL)),
            "close of an invalid payload"
        );
    }
    assert!(!root.join(reviews).join("r10.json").exists());
    bg.umount_and_join().unwrap();
}

/// A change of size alone, through `fh` when given.
fn resize(size: u64, fh: Option<u64>) -> SetAttr {
    SetAttr {
        size: Some(size),
        fh,
        ..SetAttr::default()
    }
}

#[test]
fn ftruncate_rides_on_the_handle_that_may_write() {
    let (_d, root) = fixture_copy();
    std::fs::create_dir_all(root.join("scratch/drop")).unwrap();
    let s = session(&[
        "relayfile:fs:read:/scratch/**",
        "relayfile:fs:create:/scratch/drop/*",
    ]);
    let fs = bare_guard(&root, s.clone(), scratch_local());
    let dir = walk(&fs, "/scratch/drop").unwrap();
    let (entry, opened) = fs
        .create(&ME, dir, OsStr::new("new.bin"), 0o644, 0o022, OFlags::RDWR)
        .unwrap();
    let ino = entry.attr.ino.0;
    fs.write(opened.fh, 0, b"hello").unwrap();
    // The creator may size its own file through its descriptor (cp does this for sparse files)...
    let by_handle = SetAttr {
        size: Some(4096),
        mtime: Some(fuser::TimeOrNow::Now),
        fh: Some(opened.fh),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(&ME, ino, by_handle).unwrap().0.size, 4096);
    // ... but not by path, nor change its mode: overwriting needs fs:write.
    assert_eq!(
        fs.setattr(&ME, ino, resize(0, None)).unwrap_err(),
        Error::EACCES
    );
    let chmod = SetAttr {
        mode: Some(0o600),
        fh: Some(opened.fh),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(&ME, ino, chmod).unwrap_err(), Error::EACCES);
    fs.release(opened.fh, ME.pid).unwrap();
    assert_eq!(
        std::fs::metadata(root.join("scratch/drop/new.bin"))
            .unwrap()
            .len(),
        4096
    );
    // A read-only handle of the same file carries no such right.
    let ro = fs.open(&ME, ino, OFlags::RDONLY).unwrap();
    assert_eq!(
        fs.setattr(&ME, ino, resize(0, Some(ro.fh))).unwrap_err(),
        Error::EACCES
    );
    fs.release(ro.fh, ME.pid).unwrap();
    // Nor does a writable handle once the session has ended.
    let (entry, again) = fs
        .create(
            &ME,
            dir,
            OsStr::new("other.bin"),
            0o644,
            0o022,
            OFlags::RDWR,
        )
        .unwrap();
    fs.write(again.fh, 0, b"kept").unwrap();
    s.revoke("test");
    let other = entry.attr.ino.0;
    assert!(fs.setattr(&ME, other, resize(0, Some(again.fh))).is_err());
    let touch = SetAttr {
        mtime: Some(fuser::TimeOrNow::Now),
        fh: Some(again.fh),
        ..SetAttr::default()
    };
    assert!(fs.setattr(&ME, other, touch).is_err());
    assert_eq!(
        std::fs::read(root.join("scratch/drop/other.bin")).unwrap(),
        b"kept"
    );
    // Releasing still works (the kernel's close must not fail) and changes nothing.
    fs.release(again.fh, ME.pid).unwrap();
    assert_eq!(
        std::fs::read(root.join("scratch/drop/other.bin")).unwrap(),
        b"kept"
    );
}

#[test]
fn a_revoked_session_loses_the_files_it_holds_open() {
    let (_d, root) = fixture_copy();
    let s = session(LEAD);
    let fs = bare_guard(&root, s.clone(), Options::default());
    let ino = walk(&fs, "/github/repos/acme/api/pulls/42/metadata.json").unwrap();
    let fh = fs.open(&ME, ino, OFlags::RDONLY).unwrap().fh;
    assert!(!fs.read(fh, 0, 16).unwrap().is_empty());
    s.revoke("revoked at relayauth");
    // Strict I/O: the next read of the descriptor opened before the revocation is refused.
    assert_eq!(fs.read(fh, 0, 16).unwrap_err(), Error::EACCES);
    fs.release(fh, ME.pid).unwrap();
}

#[test]
fn ftruncate_of_a_writeback_before_any_write_is_staged_and_validated() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let path = "github/repos/acme/api/pulls/42/reviews/draft-lead-review.json";
    let ino = walk(&fs, &format!("/{path}")).unwrap();
    let before = std::fs::read(root.join(path)).unwrap();
    // Emptying then rewriting through one descriptor: the truncation is staged, not applied
    // to the mirror, and the result is validated at close.
    let fh = fs.open(&ME, ino, OFlags::RDWR).unwrap().fh;
    fs.setattr(&ME, ino, resize(0, Some(fh))).unwrap();
    assert_eq!(std::fs::read(root.join(path)).unwrap(), before);
    let good = br#"{"event": "APPROVE", "body": "Eviction landed."}"#;
    fs.write(fh, 0, good).unwrap();
    fs.flush(fh, ME.pid).unwrap();
    fs.release(fh, ME.pid).unwrap();
    assert_eq!(std::fs::read(root.join(path)).unwrap(), good);
    // Emptying alone leaves an invalid payload: refused at close, the mirror keeps the last
    // good version.
    let fh = fs.open(&ME, ino, OFlags::RDWR).unwrap().fh;
    fs.setattr(&ME, ino, resize(0, Some(fh))).unwrap();
    assert_eq!(fs.flush(fh, ME.pid).unwrap_err(), Error::EINVAL);
    let _ = fs.release(fh, ME.pid);
    assert_eq!(std::fs::read(root.join(path)).unwrap(), good);
    // Preallocating before the first write is staged the same way.
    let fh = fs.open(&ME, ino, OFlags::RDWR).unwrap().fh;
    fs.fallocate(fh, 0, 8, 0).unwrap();
    fs.flush(fh, ME.pid).unwrap();
    fs.release(fh, ME.pid).unwrap();
    assert_eq!(std::fs::read(root.join(path)).unwrap(), good);
}

#[test]
fn a_descriptor_open_on_a_renamed_temp_file_cannot_change_the_writeback() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let dir = walk(&fs, "/github/repos/acme/api/pulls/42/reviews").unwrap();
    let reviews = root.join("github/repos/acme/api/pulls/42/reviews");
    // An editor-style temporary is written in place (not a writeback until renamed).
    let (_, tmp) = fs
        .create(
            &ME,
            dir,
            OsStr::new("late.json.tmp"),
            0o644,
            0o022,
            OFlags::RDWR,
        )
        .unwrap();
    let good = br#"{"event": "COMMENT", "body": "Validated."}"#;
    fs.write(tmp.fh, 0, good).unwrap();
    fs.rename(
        &ME,
        dir,
        OsStr::new("late.json.tmp"),
        dir,
        OsStr::new("late.json"),
        RenameFlags::empty(),
    )
    .unwrap();
    assert_eq!(std::fs::read(reviews.join("late.json")).unwrap(), good);
    assert!(!reviews.join("late.json.tmp").exists());
    // The descriptor from before the rename still writes, but not to the provider path.
    let _ = fs.write(tmp.fh, 0, b"not json at all, and much longer than before");
    let late = walk(&fs, "/github/repos/acme/api/pulls/42/reviews/late.json").unwrap();
    let _ = fs.setattr(&ME, late, resize(3, Some(tmp.fh)));
    let _ = fs.release(tmp.fh, ME.pid);
    assert_eq!(std::fs::read(reviews.join("late.json")).unwrap(), good);
    // The guarded view reads what the mirror holds.
    assert_eq!(
        read_path(&fs, "/github/repos/acme/api/pulls/42/reviews/late.json").unwrap(),
        good
    );
}

#[test]
fn an_exchange_in_a_provider_area_is_refused() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let dir = walk(&fs, "/github/repos/acme/api/pulls/42/reviews").unwrap();
    let reviews = root.join("github/repos/acme/api/pulls/42/reviews");
    let (_, tmp) = fs
        .create(
            &ME,
            dir,
            OsStr::new("x.json.tmp"),
            0o644,
            0o022,
            OFlags::WRONLY,
        )
        .unwrap();
    fs.write(tmp.fh, 0, b"not json").unwrap();
    fs.release(tmp.fh, ME.pid).unwrap();
    let before = snapshot_dir(&reviews);
    // Either way round, one side's bytes would land at the provider path unvalidated.
    for (a, b) in [
        ("x.json.tmp", "draft-lead-review.json"),
        ("draft-lead-review.json", "x.json.tmp"),
    ] {
        assert_eq!(
            fs.rename(
                &ME,
                dir,
                OsStr::new(a),
                dir,
                OsStr::new(b),
                RenameFlags::EXCHANGE
            )
            .unwrap_err(),
            Error::EACCES,
            "{a} <-> {b}"
        );
        assert_eq!(snapshot_dir(&reviews), before);
    }
}

fn snapshot_dir(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_replaced_state_file_is_served_fresh() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let before = read_path(&fs, "/.relay/state.json").unwrap();
    assert!(String::from_utf8_lossy(&before).contains("writeback-needs-attention"));
    // relayfile rewrites its state by writing a new file and renaming it over the old one.
    let state = root.join(".relay/state.json");
    let text = std::fs::read_to_string(&state)
        .unwrap()
        .replace("writeback-needs-attention", "ready");
    std::fs::write(root.join(".relay/state.json.new"), text).unwrap();
    std::fs::rename(root.join(".relay/state.json.new"), &state).unwrap();
    let after = read_path(&fs, "/.relay/state.json").unwrap();
    let fresh = read_path(&guard(&root, session(LEAD), None), "/.relay/state.json").unwrap();
    assert_eq!(after, fresh);
    assert!(String::from_utf8_lossy(&after).contains("\"ready\""));
}

#[test]
fn symlinks_are_never_provider_content() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let dir = walk(&fs, "/github/repos/acme/api/pulls/42/reviews").unwrap();
    let reviews = root.join("github/repos/acme/api/pulls/42/reviews");
    let before = snapshot_dir(&reviews);
    // A link named like a review would make relayfile push whatever it points to.
    assert_eq!(
        fs.symlink(&ME, dir, OsStr::new("leak.json"), Path::new("/etc/passwd"))
            .unwrap_err(),
        Error::EACCES
    );
    // Nor may one be renamed there from a name relayfile ignores.
    fs.symlink(
        &ME,
        dir,
        OsStr::new("leak.json.tmp"),
        Path::new("/etc/passwd"),
    )
    .unwrap();
    assert_eq!(
        fs.rename(
            &ME,
            dir,
            OsStr::new("leak.json.tmp"),
            dir,
            OsStr::new("leak.json"),
            RenameFlags::empty()
        )
        .unwrap_err(),
        Error::EACCES
    );
    assert!(!reviews.join("leak.json").exists() && !reviews.join("leak.json").is_symlink());
    std::fs::remove_file(reviews.join("leak.json.tmp")).unwrap();
    assert_eq!(snapshot_dir(&reviews), before);
}

#[test]
fn access_answers_from_the_rights_not_the_mirror_mode() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, root) = fixture_copy();
    std::fs::create_dir_all(root.join("scratch")).unwrap();
    // The mirror's own bits say the opposite of what the token says.
    std::fs::write(root.join("scratch/locked.txt"), b"x").unwrap();
    std::fs::set_permissions(
        root.join("scratch/locked.txt"),
        std::fs::Permissions::from_mode(0o444),
    )
    .unwrap();
    let meta = root.join("github/repos/acme/web/pulls/18/metadata.json");
    std::fs::set_permissions(&meta, std::fs::Permissions::from_mode(0o666)).unwrap();
    let s = session(&["relayfile:fs:read:*", "relayfile:fs:write:/scratch/**"]);
    let fs = bare_guard(&root, s, scratch_local());
    let locked = walk(&fs, "/scratch/locked.txt").unwrap();
    assert_eq!(fs.access(&ME, locked, Access::WRITE_OK), Ok(()));
    assert_eq!(
        fs.access(&ME, locked, Access::READ_OK | Access::WRITE_OK),
        Ok(())
    );
    assert_eq!(fs.access(&ME, locked, Access::EXEC_OK), Err(Error::EACCES));
    let meta = walk(&fs, "/github/repos/acme/web/pulls/18/metadata.json").unwrap();
    assert_eq!(fs.access(&ME, meta, Access::READ_OK), Ok(()));
    assert_eq!(fs.access(&ME, meta, Access::WRITE_OK), Err(Error::EACCES));
    // The notice is writable (the write is discarded) where a file of its name could be made.
    let notice = walk(&fs, "/scratch/_PERMISSIONS.md").unwrap();
    assert_eq!(fs.access(&ME, notice, Access::READ_OK), Ok(()));
    assert_eq!(fs.access(&ME, notice, Access::WRITE_OK), Ok(()));
    let elsewhere = walk(&fs, "/github/_PERMISSIONS.md").unwrap();
    assert_eq!(
        fs.access(&ME, elsewhere, Access::WRITE_OK),
        Err(Error::EACCES)
    );
}

#[test]
fn a_non_empty_directory_moves_in_or_out_of_a_provider_area_file_by_file() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let issues = walk(&fs, "/github/repos/acme/api/issues").unwrap();
    // EXDEV makes `mv` copy file by file, each write checked, instead of moving a tree of
    // provider files past validation.
    assert_eq!(
        fs.rename(
            &ME,
            issues,
            OsStr::new("7"),
            issues,
            OsStr::new("70"),
            RenameFlags::empty()
        )
        .unwrap_err(),
        Error::EXDEV
    );
    assert!(root.join("github/repos/acme/api/issues/7").is_dir());
    // An empty directory has nothing to validate and moves.
    fs.mkdir(&ME, issues, OsStr::new("empty"), 0o755, 0o022)
        .unwrap();
    fs.rename(
        &ME,
        issues,
        OsStr::new("empty"),
        issues,
        OsStr::new("moved"),
        RenameFlags::empty(),
    )
    .unwrap();
    assert!(root.join("github/repos/acme/api/issues/moved").is_dir());
}

#[test]
fn open_handles_lose_what_the_new_grants_refuse() {
    let (_d, root) = fixture_copy();
    std::fs::create_dir_all(root.join("node_modules")).unwrap();
    std::fs::write(root.join("node_modules/a.txt"), "local").unwrap();
    let s = session(&[
        "relayfile:fs:manage:/node_modules/**",
        "relayfile:fs:read:/github/**",
    ]);
    let fs = guard(&root, s.clone(), None);
    let ino = walk(&fs, "/node_modules/a.txt").unwrap();
    let reader = fs.open(&ME, ino, OFlags::RDONLY).unwrap().fh;
    let writer = fs.open(&ME, ino, OFlags::WRONLY).unwrap().fh;
    let gh = walk(&fs, "/github/repos/acme/api/metadata.json").unwrap();
    let other = fs.open(&ME, gh, OFlags::RDONLY).unwrap().fh;
    let dir = fs
        .opendir(&ME, walk(&fs, "/node_modules").unwrap())
        .unwrap();
    assert!(fs.read(reader, 0, 16).is_ok());
    assert!(fs.write(writer, 0, b"{").is_ok());
    // Same session, narrower token: reading the file stays, writing it and /github go.
    crate::session::testing::replace_scopes(&s, &["relayfile:fs:read:/node_modules/**"]);
    assert!(fs.read(reader, 0, 16).is_ok());
    assert_eq!(fs.write(writer, 0, b"{").unwrap_err(), Error::EACCES);
    assert_eq!(fs.read(other, 0, 16).unwrap_err(), Error::EACCES);
    assert!(fs.readdir(dir, 0, |_, _| false).is_ok());
    // A handle cut off stays cut off, even if the grants come back.
    crate::session::testing::replace_scopes(&s, &["relayfile:fs:manage:*"]);
    assert_eq!(fs.write(writer, 0, b"{").unwrap_err(), Error::EACCES);
    crate::session::testing::replace_scopes(&s, &["relayfile:fs:read:/github/**"]);
    assert_eq!(fs.readdir(dir, 0, |_, _| false).unwrap_err(), Error::EACCES);
}

#[test]
fn metadata_changes_of_provider_files_pass_the_writeback_gate() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(&["relayfile:fs:manage:*"]), None);
    let path = "/slack/users/U04ALICE01.json";
    let ino = walk(&fs, path).unwrap();
    let before = std::fs::metadata(root.join(&path[1..])).unwrap();
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(&ME, ino, chmod).unwrap_err(), Error::EACCES);
    let touch = SetAttr {
        mtime: Some(fuser::TimeOrNow::Now),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(&ME, ino, touch).unwrap_err(), Error::EACCES);
    assert_eq!(
        fs.setxattr(&ME, ino, OsStr::new("user.x"), b"1", 0)
            .unwrap_err(),
        Error::EACCES
    );
    assert_eq!(
        fs.removexattr(&ME, ino, OsStr::new("user.x")).unwrap_err(),
        Error::EACCES
    );
    let after = std::fs::metadata(root.join(&path[1..])).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(before.mode(), after.mode());
    assert_eq!(before.mtime_nsec(), after.mtime_nsec());
    // A local path is not a writeback: the same calls work there.
    std::fs::create_dir_all(root.join("node_modules")).unwrap();
    std::fs::write(root.join("node_modules/x"), "x").unwrap();
    let local = walk(&fs, "/node_modules/x").unwrap();
    assert!(fs.setattr(&ME, local, chmod).is_ok());
    assert!(fs.setattr(&ME, local, touch).is_ok());
}

#[test]
fn a_chown_to_the_current_owner_changes_nothing_and_succeeds() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(&["relayfile:fs:read:*"]), None);
    let ino = walk(&fs, "/slack/users/U04ALICE01.json").unwrap();
    let st = std::fs::metadata(root.join("slack/users/U04ALICE01.json")).unwrap();
    use std::os::unix::fs::MetadataExt;
    // `cp -a` and `rsync -a` set the owner they read; read-only callers may do that.
    let same = SetAttr {
        uid: Some(st.uid()),
        gid: Some(st.gid()),
        ..SetAttr::default()
    };
    assert!(fs.setattr(&ME, ino, same).is_ok());
    let other = SetAttr {
        uid: Some(st.uid() + 1),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(&ME, ino, other).unwrap_err(), Error::EPERM);
}

#[test]
fn nothing_hidden_shows_through_counts_times_xattrs_or_records() {
    let (_d, root) = fixture_copy();
    // A directory's link count and times come from what the caller can see in it.
    let fs = guard(
        &root,
        session(&["relayfile:fs:read:/github/repos/acme/api/**"]),
        None,
    );
    let acme = walk(&fs, "/github/repos/acme").unwrap();
    let attr = |fs: &GuardFs| fs.getattr(&ME, acme, None).unwrap().0;
    let before = attr(&fs);
    assert_eq!(before.nlink, 3, "2 + the one visible subdirectory");
    let api = std::fs::symlink_metadata(root.join("github/repos/acme/api")).unwrap();
    assert_eq!(before.mtime, api.modified().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::create_dir(root.join("github/repos/acme/hidden-new")).unwrap();
    std::fs::remove_dir_all(root.join("github/repos/acme/web")).unwrap();
    let after = attr(&fs);
    assert_eq!(
        (after.nlink, after.mtime, after.ctime, after.size),
        (before.nlink, before.mtime, before.ctime, before.size)
    );
    // Where everything below is visible, the real values are shown.
    let whole = guard(&root, session(&["relayfile:fs:read:*"]), None);
    let real = std::fs::symlink_metadata(root.join("github/repos/acme")).unwrap();
    let shown = whole
        .getattr(&ME, walk(&whole, "/github/repos/acme").unwrap(), None)
        .unwrap()
        .0;
    assert_eq!(shown.mtime, real.modified().unwrap());
    assert_eq!(
        shown.nlink as u64,
        std::os::unix::fs::MetadataExt::nlink(&real)
    );

    // Only `user.` attributes are listed or read.
    let file = root.join("github/repos/acme/api/metadata.json");
    rustix::fs::setxattr(
        &file,
        "trusted.secret",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(&file, "user.note", b"2", rustix::fs::XattrFlags::empty()).unwrap();
    let ino = walk(&fs, "/github/repos/acme/api/metadata.json").unwrap();
    assert_eq!(fs.listxattr(&ME, ino).unwrap(), b"user.note\0");
    assert_eq!(
        fs.getxattr(&ME, ino, OsStr::new("trusted.secret"))
            .unwrap_err(),
        Error::ENODATA
    );
    assert_eq!(
        fs.getxattr(&ME, ino, OsStr::new("user.note")).unwrap(),
        b"2"
    );
    assert_eq!(
        fs.getxattr(&ME, ino, OsStr::new("system.posix_acl_access"))
            .unwrap_err(),
        Error::ENOTSUP
    );

    // `/.relay` is judged by its own rules at the root: an fs-only token does not list it, an
    // ops-only token sees the root and `/.relay`.
    let fs_only = guard(&root, session(&["relayfile:fs:read:*"]), None);
    assert!(!names(&fs_only, "/").contains(&".relay".to_owned()));
    let ops_only = guard(&root, session(&["relayfile:ops:read:/slack/**"]), None);
    assert!(names(&ops_only, "/").contains(&".relay".to_owned()));
    // A record about a path with `..` in it is about no path: never listed.
    std::fs::write(
        root.join(".relay/outbox/pending/mountcmd_dotdot.json"),
        r#"{"remotePath": "/slack/../github/repos/acme/api/metadata.json"}"#,
    )
    .unwrap();
    std::fs::write(
        root.join(".relay/outbox/pending/mountcmd_slack.json"),
        r#"{"remotePath": "/slack/channels/c1/messages/m.json"}"#,
    )
    .unwrap();
    let pending = names(&ops_only, "/.relay/outbox/pending");
    assert!(
        pending.contains(&"mountcmd_slack.json".to_owned()),
        "{pending:?}"
    );
    assert!(
        !pending.contains(&"mountcmd_dotdot.json".to_owned()),
        "{pending:?}"
    );
}

/// The inode table holds a bounded number of descriptors, finds dropped ones again by name, and
/// refuses a name that now holds another object.
#[test]
fn descriptors_are_bounded_and_found_again_by_name() {
    let (_d, root) = fixture_copy();
    let many = root.join("node_modules/many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..300 {
        std::fs::write(many.join(format!("f{i:03}")), format!("{i}")).unwrap();
    }
    let s = session(&["relayfile:fs:manage:/node_modules/**"]);
    let fs = bare_guard(
        &root,
        s,
        Options {
            max_held_fds: 32,
            ..Options::default()
        },
    );
    let fds_now = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds_now();
    let inos: Vec<u64> = (0..300)
        .map(|i| walk(&fs, &format!("/node_modules/many/f{i:03}")).unwrap())
        .collect();
    assert!(
        fs.inodes.held_count() <= 32 + 1,
        "{} held",
        fs.inodes.held_count()
    );
    // Other tests run in this process too: the bound is loose, the growth without it is 300.
    assert!(fds_now() < before + 100, "{before} -> {}", fds_now());
    // Every node still works: its descriptor is taken again by name.
    for (i, ino) in inos.iter().enumerate() {
        let fh = fs.open(&ME, *ino, OFlags::RDONLY).unwrap().fh;
        assert_eq!(fs.read(fh, 0, 16).unwrap(), format!("{i}").as_bytes());
        fs.release(fh, ME.pid).unwrap();
    }
    // A dropped descriptor is not taken again for a different object at the same name (the
    // 100 files used since leave f299's descriptor dropped).
    for ino in &inos[..100] {
        fs.getattr(&ME, *ino, None).unwrap();
    }
    std::fs::write(many.join("impostor"), "impostor").unwrap();
    std::fs::rename(many.join("impostor"), many.join("f299")).unwrap();
    let last = inos[299];
    // ESTALE: the kernel looks the name up again.
    assert_eq!(
        fs.open(&ME, last, OFlags::RDONLY).unwrap_err(),
        Error::ESTALE
    );
    // Looked up again, the name is the new object.
    let again = walk(&fs, "/node_modules/many/f299").unwrap();
    let fh = fs.open(&ME, again, OFlags::RDONLY).unwrap().fh;
    assert_eq!(fs.read(fh, 0, 16).unwrap(), b"impostor");
}

/// A schema beside the written file counts only when no session of the mount may change it:
/// otherwise a writer could first write a permissive "schema" and then anything.
#[test]
fn a_sibling_schema_a_session_may_change_does_not_count() {
    let (_d, root) = fixture_copy();
    let notes = root.join("github/repos/acme/api/notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(
        notes.join("note.v1.schema.json"),
        r#"{"type": "object", "required": ["body"]}"#,
    )
    .unwrap();
    std::fs::write(
        root.join(".relay/writeback-policies.json"),
        r#"{"version": 1, "policies": [{"id": "note", "pathPattern": "/github/repos/acme/api/notes/*.json",
            "provider": "github", "providerAction": "github.notes.create",
            "relayfileScope": "relayfile:fs:create", "payloadSchemaRef": "note.v1"}]}"#,
    )
    .unwrap();
    let write_note = |scopes: &[&str], name: &str, body: &[u8]| {
        let fs = guard(&root, session(scopes), None);
        let dir = walk(&fs, "/github/repos/acme/api/notes").unwrap();
        let (_, opened) = fs
            .create(&ME, dir, OsStr::new(name), 0o644, 0o022, OFlags::WRONLY)
            .unwrap();
        fs.write(opened.fh, 0, body).unwrap();
        fs.release(opened.fh, ME.pid)
    };
    // A writer who may also change the sibling: it does not count, so the write is refused
    // even though the payload would satisfy it.
    let manager = ["relayfile:fs:manage:/github/repos/acme/api/notes/**"];
    assert_eq!(
        write_note(&manager, "a.json", br#"{"body": "x"}"#),
        Err(Error::EINVAL)
    );
    assert!(!notes.join("a.json").exists());
    // A writer who may only create its own file: the sibling counts and is applied.
    let narrow = [
        "relayfile:fs:read:/github/**",
        "relayfile:fs:create:/github/repos/acme/api/notes/b.json",
    ];
    assert_eq!(write_note(&narrow, "b.json", b"{}"), Err(Error::EINVAL));
    assert!(write_note(&narrow, "b.json", br#"{"body": "x"}"#).is_ok());
    assert!(notes.join("b.json").exists());
}

/// A staged new file has no name in the mirror yet, so its descriptor is never dropped: it stays
/// reachable however many other descriptors the table takes meanwhile.
#[test]
fn a_staged_new_file_survives_descriptor_pressure() {
    let (_d, root) = fixture_copy();
    let many = root.join("node_modules/many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..100 {
        std::fs::write(many.join(format!("f{i:03}")), "x").unwrap();
    }
    let s = session(&[
        "relayfile:fs:read:*",
        "relayfile:fs:manage:/node_modules/**",
        "relayfile:fs:create:/github/repos/acme/api/pulls/42/reviews/*",
    ]);
    let opts = Options {
        max_held_fds: 16,
        ..Options::default()
    };
    let fs = guard_with(&root, s, None, opts);
    let dir = walk(&fs, "/github/repos/acme/api/pulls/42/reviews").unwrap();
    let (entry, opened) = fs
        .create(
            &ME,
            dir,
            OsStr::new("staged.json"),
            0o644,
            0o022,
            OFlags::WRONLY,
        )
        .unwrap();
    let ino = entry.attr.ino.0;
    fs.write(opened.fh, 0, br#"{"event": "COMMENT", "body": "staged"}"#)
        .unwrap();
    for i in 0..100 {
        walk(&fs, &format!("/node_modules/many/f{i:03}")).unwrap();
    }
    assert!(
        fs.getattr(&ME, ino, None).is_ok(),
        "the staged file was lost"
    );
    assert!(fs.lookup(&ME, dir, OsStr::new("staged.json")).is_ok());
    fs.release(opened.fh, ME.pid).unwrap();
    assert!(
        root.join("github/repos/acme/api/pulls/42/reviews/staged.json")
            .exists()
    );
}

/// The audit records written so far, as JSON.
fn audit_records(log: &AuditLog, path: &Path) -> Vec<serde_json::Value> {
    log.flush().unwrap();
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The records of `operation`, as (action, result) pairs.
fn outcomes(records: &[serde_json::Value], operation: &str) -> Vec<(String, String)> {
    records
        .iter()
        .filter(|r| r["operation"] == operation)
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("").to_owned(),
                r["result"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn pair(action: &str, result: &str) -> (String, String) {
    (action.to_owned(), result.to_owned())
}

/// A file `name` in `dir` holding `content`, made through the guard.
fn put(fs: &GuardFs, dir: u64, name: &str, content: &[u8]) {
    let (_, opened) = fs
        .create(&ME, dir, OsStr::new(name), 0o644, 0o022, OFlags::WRONLY)
        .unwrap();
    fs.write(opened.fh, 0, content).unwrap();
    fs.release(opened.fh, ME.pid).unwrap();
}

#[test]
fn a_refused_or_failed_rename_is_audited_once_as_what_happened() {
    let (_d, root) = fixture_copy();
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_path = audit_dir.path().join("audit.jsonl");
    let log = Arc::new(AuditLog::open(&audit_path).unwrap());
    let fs = guard(&root, session(LEAD), Some(log.clone()));
    let issues = walk(&fs, "/github/repos/acme/api/issues").unwrap();
    let reviews = walk(&fs, "/github/repos/acme/api/pulls/42/reviews").unwrap();
    put(&fs, reviews, "t.tmp", b"");
    put(
        &fs,
        reviews,
        "v.tmp",
        br#"{"event": "COMMENT", "body": "ok"}"#,
    );
    fs.mkdir(&ME, reviews, OsStr::new("d"), 0o755, 0o022)
        .unwrap();
    let (x, plain, nr) = (
        RenameFlags::EXCHANGE,
        RenameFlags::empty(),
        RenameFlags::NOREPLACE,
    );
    let (denied, rejected, failed) = (
        ("file.write.denied", "denied"),
        ("writeback.rejected", "denied"),
        ("file.write.failed", "error"),
    );
    // (why, directory, from, to, flags, errno, the one record it leaves). A guard rule
    // refuses a provider directory with entries (it moves file by file), an exchange in a
    // provider area, an invalid payload and the notice; a directory onto a file and a valid
    // payload onto a taken name are allowed but fail, and are never queued or accepted.
    #[rustfmt::skip]
    let cases = [
        ("dir with entries", issues, "7", "70", plain, libc::EXDEV, denied),
        ("exchange", reviews, "t.tmp", "draft-lead-review.json", x, libc::EACCES, rejected),
        ("invalid payload", reviews, "t.tmp", "bad.json", plain, libc::EACCES, rejected),
        ("dir onto a file", reviews, "d", "t.tmp", plain, libc::ENOTDIR, failed),
        ("taken name", reviews, "v.tmp", "draft-lead-review.json", nr, libc::EEXIST, failed),
        ("notice exchange", reviews, "t.tmp", "_PERMISSIONS.md", x, libc::EACCES, denied),
        ("done", reviews, "t.tmp", "u.tmp", plain, 0, ("file.write.accepted", "allowed")),
    ];
    let mut seen = 0;
    for (why, dir, from, to, flags, errno, (action, result)) in cases {
        let got = fs.rename(&ME, dir, OsStr::new(from), dir, OsStr::new(to), flags);
        assert_eq!(
            got.map_err(|e| e.errno()).err().unwrap_or(0),
            errno,
            "{why}"
        );
        let all = outcomes(&audit_records(&log, &audit_path), "rename");
        assert_eq!(all[seen..], [pair(action, result)], "{why}");
        seen = all.len();
    }
    // The record of a move names both ends.
    let records = audit_records(&log, &audit_path);
    let done = records
        .iter()
        .rfind(|r| r["operation"] == "rename")
        .unwrap();
    assert_eq!(
        done["path"],
        "/github/repos/acme/api/pulls/42/reviews/t.tmp"
    );
    assert_eq!(
        done["metadata"]["newPath"],
        "/github/repos/acme/api/pulls/42/reviews/u.tmp"
    );
}

#[test]
fn every_refused_payload_is_kept_even_when_refusals_coincide() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let rel = "/github/repos/acme/api/pulls/42/reviews/draft-lead-review.json";
    let ino = walk(&fs, rel).unwrap();
    // Refusals of one path as close together as they come: each keeps its bytes.
    for round in 0..20 {
        let fhs: Vec<u64> = (0..4)
            .map(|_| fs.open(&ME, ino, OFlags::RDWR | OFlags::TRUNC).unwrap().fh)
            .collect();
        for (i, fh) in fhs.iter().enumerate() {
            fs.write(*fh, 0, format!("not json {round} {i}").as_bytes())
                .unwrap();
        }
        for fh in fhs {
            assert_eq!(fs.flush(fh, ME.pid).unwrap_err(), Error::EINVAL);
            let _ = fs.release(fh, ME.pid);
        }
    }
    let kept: Vec<String> = std::fs::read_dir(root.join(".relay/.relayauth-mount/quarantine"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(kept.len(), 80);
    let distinct: std::collections::HashSet<&String> = kept.iter().collect();
    assert_eq!(distinct.len(), 80);
}

#[test]
fn removing_a_directory_that_holds_only_hidden_entries_is_one_refusal() {
    let (_d, root) = fixture_copy();
    std::fs::create_dir_all(root.join("scratch/d")).unwrap();
    std::fs::write(root.join("scratch/d/secret"), b"s").unwrap();
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_path = audit_dir.path().join("audit.jsonl");
    let log = Arc::new(AuditLog::open(&audit_path).unwrap());
    let s = session(&[
        "relayfile:fs:read:/scratch/d",
        "relayfile:fs:delete:/scratch/d",
    ]);
    let fs = guard_with(&root, s, Some(log.clone()), scratch_local());
    let scratch = walk(&fs, "/scratch").unwrap();
    assert_eq!(
        fs.rmdir(&ME, scratch, OsStr::new("d")).unwrap_err(),
        Error::EACCES
    );
    assert!(root.join("scratch/d/secret").exists());
    let got = outcomes(&audit_records(&log, &audit_path), "rmdir");
    assert_eq!(got, vec![pair("file.write.denied", "denied")]);
}

#[test]
fn a_write_bit_shows_what_the_writeback_gate_would_say() {
    let (_d, root) = fixture_copy();
    // Every fs right, but no policy covers pull request metadata.
    let fs = guard(&root, session(&["relayfile:fs:*:*"]), None);
    let meta = walk(&fs, "/github/repos/acme/web/pulls/18/metadata.json").unwrap();
    assert_eq!(fs.access(&ME, meta, Access::WRITE_OK), Err(Error::EACCES));
    let (attr, _) = fs.getattr(&ME, meta, None).unwrap();
    assert_eq!(attr.perm & 0o222, 0, "mode {:o}", attr.perm);
    // A review a policy covers is writable, and shows it.
    let fs = guard(&root, session(LEAD), None);
    let review = walk(
        &fs,
        "/github/repos/acme/api/pulls/42/reviews/draft-lead-review.json",
    )
    .unwrap();
    assert_eq!(fs.access(&ME, review, Access::WRITE_OK), Ok(()));
    let (attr, _) = fs.getattr(&ME, review, None).unwrap();
    assert_ne!(attr.perm & 0o200, 0, "mode {:o}", attr.perm);
}

#[test]
fn a_writeback_never_overwrites_a_file_replaced_while_it_was_open() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let rel = "github/repos/acme/api/pulls/42/reviews/draft-lead-review.json";
    let path = root.join(rel);
    let quarantine = root.join(".relay/.relayauth-mount/quarantine");
    let quarantined = || std::fs::read_dir(&quarantine).map_or(0, |d| d.count());
    // What relayfile's syncer does: a new file renamed over the old one.
    let sync = |content: &[u8]| {
        let tmp = path.with_extension("sync-tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    let newer = br#"{"event": "COMMENT", "body": "From the provider."}"#;
    let mine = br#"{"event": "APPROVE", "body": "Mine."}"#;

    // Replaced between open and close.
    let ino = walk(&fs, &format!("/{rel}")).unwrap();
    let fh = fs.open(&ME, ino, OFlags::RDWR | OFlags::TRUNC).unwrap().fh;
    fs.write(fh, 0, mine).unwrap();
    sync(newer);
    assert_eq!(fs.flush(fh, ME.pid).unwrap_err().errno(), libc::ESTALE);
    let _ = fs.release(fh, ME.pid);
    assert_eq!(std::fs::read(&path).unwrap(), newer);
    assert_eq!(quarantined(), 1);

    // Committed once, then replaced, then written again through the same descriptor.
    let ino = walk(&fs, &format!("/{rel}")).unwrap();
    let fh = fs.open(&ME, ino, OFlags::RDWR | OFlags::TRUNC).unwrap().fh;
    fs.write(fh, 0, mine).unwrap();
    fs.flush(fh, ME.pid).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), mine);
    sync(newer);
    fs.setattr(&ME, ino, resize(0, Some(fh))).unwrap();
    fs.write(fh, 0, mine).unwrap();
    assert_eq!(fs.flush(fh, ME.pid).unwrap_err().errno(), libc::ESTALE);
    let _ = fs.release(fh, ME.pid);
    assert_eq!(std::fs::read(&path).unwrap(), newer);
    assert_eq!(quarantined(), 2);

    // Removed while open: not brought back.
    let ino = walk(&fs, &format!("/{rel}")).unwrap();
    let fh = fs.open(&ME, ino, OFlags::RDWR | OFlags::TRUNC).unwrap().fh;
    fs.write(fh, 0, mine).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(fs.flush(fh, ME.pid).unwrap_err().errno(), libc::ESTALE);
    let _ = fs.release(fh, ME.pid);
    assert!(!path.exists());
    assert_eq!(quarantined(), 3);
}

#[test]
fn a_replaced_file_keeps_its_number_while_a_writeback_based_on_it_is_open() {
    use std::os::unix::fs::MetadataExt;
    let (_d, root) = fixture_copy();
    let bulk = root.join("github/repos/acme/api/bulk");
    std::fs::create_dir_all(&bulk).unwrap();
    for i in 0..64 {
        std::fs::write(bulk.join(format!("f{i}")), b"x").unwrap();
    }
    let s = session(LEAD);
    let opts = Options {
        max_held_fds: 8,
        ..Options::default()
    };
    let fs = guard_with(&root, s, None, opts);
    let rel = "github/repos/acme/api/pulls/42/reviews/draft-lead-review.json";
    let path = root.join(rel);
    let original = std::fs::metadata(&path).unwrap().ino();
    let ino = walk(&fs, &format!("/{rel}")).unwrap();
    let fh = fs.open(&ME, ino, OFlags::RDWR | OFlags::TRUNC).unwrap().fh;
    fs.write(fh, 0, br#"{"event": "APPROVE", "body": "Stale."}"#)
        .unwrap();
    // Enough other lookups that the table drops its own descriptor of the file.
    for i in 0..64 {
        walk(&fs, &format!("/github/repos/acme/api/bulk/f{i}")).unwrap();
    }
    // The syncer replaces the file again and again. A filesystem gives freed inode numbers
    // out again (ext4 soon does), and a new file with the original's number would pass for it;
    // the open writeback holds the original, so none can.
    let newest = br#"{"event": "COMMENT", "body": "Newest."}"#;
    for i in 0..50 {
        let tmp = path.with_extension("sync-tmp");
        std::fs::write(&tmp, if i == 49 { &newest[..] } else { b"{}" }).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(
            std::fs::metadata(&path).unwrap().ino(),
            original,
            "update {i}"
        );
    }
    assert_eq!(fs.flush(fh, ME.pid).unwrap_err().errno(), libc::ESTALE);
    let _ = fs.release(fh, ME.pid);
    assert_eq!(std::fs::read(&path).unwrap(), newest);
}

#[test]
fn a_file_the_mirror_places_during_a_commit_is_never_overwritten() {
    let (_d, root) = fixture_copy();
    let fs = Arc::new(guard(&root, session(LEAD), None));
    let reviews = root.join("github/repos/acme/api/pulls/42/reviews");
    let mine = br#"{"event": "APPROVE", "body": "Mine."}"#;
    // The syncer renames its file over the name at some moment during the writer's close;
    // it always acts after the open, so whatever the interleaving its file is the one left.
    for trial in 0..300u64 {
        let name = format!("race{trial}.json");
        let path = reviews.join(&name);
        std::fs::write(&path, br#"{"event": "COMMENT", "body": "old"}"#).unwrap();
        let ino = walk(
            &fs,
            &format!("/github/repos/acme/api/pulls/42/reviews/{name}"),
        )
        .unwrap();
        let fh = fs.open(&ME, ino, OFlags::RDWR | OFlags::TRUNC).unwrap().fh;
        fs.write(fh, 0, mine).unwrap();
        let theirs = format!(r#"{{"event": "COMMENT", "body": "sync {trial}"}}"#);
        let syncer = {
            let (path, theirs) = (path.clone(), theirs.clone());
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_micros(trial % 40 * 25));
                let tmp = path.with_extension("sync-tmp");
                std::fs::write(&tmp, theirs).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            })
        };
        let closed = fs.flush(fh, ME.pid);
        let _ = fs.release(fh, ME.pid);
        syncer.join().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            theirs,
            "trial {trial}: close gave {closed:?}"
        );
    }
}

#[test]
fn opening_a_replaced_writeback_for_writing_asks_the_kernel_to_look_again() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let rel = "github/repos/acme/api/pulls/42/reviews/draft-lead-review.json";
    let ino = walk(&fs, &format!("/{rel}")).unwrap();
    let path = root.join(rel);
    let tmp = path.with_extension("sync-tmp");
    std::fs::write(&tmp, br#"{"event": "COMMENT", "body": "newer"}"#).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    // The kernel's cached node is the replaced file: ESTALE makes it look the name up again.
    assert_eq!(
        fs.open(&ME, ino, OFlags::WRONLY | OFlags::TRUNC)
            .unwrap_err()
            .errno(),
        libc::ESTALE
    );
    let fresh = walk(&fs, &format!("/{rel}")).unwrap();
    assert_ne!(fresh, ino);
    let fh = fs
        .open(&ME, fresh, OFlags::WRONLY | OFlags::TRUNC)
        .unwrap()
        .fh;
    // And no writeback may grow past what can be validated.
    assert_eq!(
        fs.write(fh, crate::writeback::MAX_PAYLOAD, b"x")
            .unwrap_err(),
        Error::EFBIG
    );
    fs.write(fh, 0, br#"{"event": "COMMENT", "body": "mine"}"#)
        .unwrap();
    fs.flush(fh, ME.pid).unwrap();
    fs.release(fh, ME.pid).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        br#"{"event": "COMMENT", "body": "mine"}"#
    );
}

/// A node whose object the mirror moved away (not removed) while something else took its name:
/// the syncer's rename dance, a writeback's exchange, a directory moved aside and recreated.
/// Every call on the old node is `ESTALE`, so the kernel looks the name up again and answers
/// from what the name holds now (never `ENOENT` for a name that exists, never the old object).
#[test]
fn a_node_moved_away_underneath_is_stale_not_missing() {
    let (_d, root) = fixture_copy();
    let fs = guard(&root, session(LEAD), None);
    let read = OFlags::RDONLY;
    // A file moved aside, a new one at its name; then its directory, then its grandparent.
    let rel = "github/repos/acme/api/pulls/42/reviews/draft-lead-review.json";
    let file = walk(&fs, &format!("/{rel}")).unwrap();
    let aside = root.join("github/repos/acme/api/pulls/42/aside.json");
    std::fs::rename(root.join(rel), &aside).unwrap();
    std::fs::write(root.join(rel), br#"{"event": "COMMENT", "body": "newer"}"#).unwrap();
    assert_eq!(fs.open(&ME, file, read).unwrap_err(), Error::ESTALE);
    assert_eq!(fs.getattr(&ME, file, None).unwrap_err(), Error::ESTALE);
    assert!(
        String::from_utf8(read_path(&fs, &format!("/{rel}")).unwrap())
            .unwrap()
            .contains("newer")
    );
    for dir in [
        "github/repos/acme/api/pulls/42/reviews",
        "github/repos/acme/api/pulls/42",
    ] {
        let ino = walk(&fs, &format!("/{dir}")).unwrap();
        let file = walk(&fs, &format!("/{rel}")).unwrap();
        let moved = root.join(format!("{dir}-moved"));
        std::fs::rename(root.join(dir), &moved).unwrap();
        std::fs::create_dir_all(root.join(rel).parent().unwrap()).unwrap();
        std::fs::write(
            root.join(rel),
            br#"{"event": "COMMENT", "body": "rebuilt"}"#,
        )
        .unwrap();
        assert_eq!(fs.opendir(&ME, ino).unwrap_err(), Error::ESTALE, "{dir}");
        assert_eq!(
            fs.lookup(&ME, ino, OsStr::new("reviews"))
                .map(|_| ())
                .unwrap_err(),
            Error::ESTALE,
            "{dir}"
        );
        assert_eq!(
            fs.open(&ME, file, read).unwrap_err(),
            Error::ESTALE,
            "{dir}"
        );
        assert!(
            String::from_utf8(read_path(&fs, &format!("/{rel}")).unwrap())
                .unwrap()
                .contains("rebuilt"),
            "{dir}"
        );
        std::fs::remove_dir_all(&moved).unwrap();
    }
    // Moved aside with nothing at its name: gone from where the caller knew it (ENOENT; the
    // kernel would find nothing by looking again), and never followed to where it went.
    let file = walk(&fs, &format!("/{rel}")).unwrap();
    std::fs::rename(root.join(rel), &aside).unwrap();
    assert_eq!(fs.open(&ME, file, read).unwrap_err(), Error::ENOENT);
    std::fs::rename(&aside, root.join(rel)).unwrap();
    // Removed outright (no longer anywhere), the name free: the node stays what it was (an
    // open-then-unlinked file reads natively), and the name is ENOENT.
    let file = walk(&fs, &format!("/{rel}")).unwrap();
    std::fs::remove_file(root.join(rel)).unwrap();
    assert!(fs.getattr(&ME, file, None).is_ok());
    assert_eq!(walk(&fs, &format!("/{rel}")).unwrap_err(), Error::ENOENT);
}

/// Wait (bounded) until the audit log's writer reports `failing`.
fn wait_audit_fault(log: &AuditLog, failing: bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while log.fault().is_some() != failing {
        assert!(
            std::time::Instant::now() < deadline,
            "fault never {failing}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn nothing_audited_happens_while_the_audit_log_cannot_be_written() {
    let (_d, root) = fixture_copy();
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_path = audit_dir.path().join("audit.jsonl");
    let log = Arc::new(AuditLog::open(&audit_path).unwrap());
    let fs = guard(&root, session(LEAD), Some(log.clone()));
    let readme = "/github/repos/acme/api/metadata.json";
    read_path(&fs, readme).unwrap();
    let reviews = walk(&fs, "/github/repos/acme/api/pulls/42/reviews").unwrap();
    // A writeback opened while the log works, closed while it does not.
    let (_, open_wb) = fs
        .create(
            &ME,
            reviews,
            OsStr::new("late.json"),
            0o644,
            0o022,
            OFlags::WRONLY,
        )
        .unwrap();
    fs.write(open_wb.fh, 0, br#"{"event": "COMMENT", "body": "late"}"#)
        .unwrap();

    std::fs::rename(&audit_path, audit_dir.path().join("moved")).unwrap();
    std::fs::create_dir(&audit_path).unwrap();
    log.reopen();
    wait_audit_fault(&log, true);

    // Opening, creating, writing and removing are refused; looking and listing are not.
    assert_eq!(read_path(&fs, readme).unwrap_err(), Error::EACCES);
    let api = walk(&fs, "/github/repos/acme/api").unwrap();
    assert!(names(&fs, "/github/repos/acme/api").contains(&"metadata.json".to_owned()));
    assert_eq!(
        fs.create(
            &ME,
            api,
            OsStr::new("new.txt"),
            0o644,
            0o022,
            OFlags::WRONLY
        )
        .unwrap_err(),
        Error::EACCES
    );
    assert_eq!(
        fs.mkdir(&ME, api, OsStr::new("d"), 0o755, 0o022)
            .unwrap_err(),
        Error::EACCES
    );
    assert_eq!(
        fs.unlink(&ME, api, OsStr::new("metadata.json"))
            .unwrap_err(),
        Error::EACCES
    );
    // The open writeback is not committed unaudited: it goes to quarantine.
    assert!(fs.release(open_wb.fh, ME.pid).is_err());
    assert!(
        !root
            .join("github/repos/acme/api/pulls/42/reviews/late.json")
            .exists()
    );
    let notice =
        String::from_utf8(read_path(&fs, "/github/repos/acme/api/_PERMISSIONS.md").unwrap())
            .unwrap();
    assert!(
        notice.contains("Nothing may be opened, created, changed or removed right now")
            && notice.contains("cannot be written"),
        "{notice}"
    );

    // The log is writable again: everything works, and the held records are all there.
    std::fs::remove_dir(&audit_path).unwrap();
    wait_audit_fault(&log, false);
    read_path(&fs, readme).unwrap();
    let records = audit_records(&log, &audit_path);
    let recovered = records
        .iter()
        .position(|r| r["action"] == "audit.recovered")
        .expect("a recovery record");
    let held: Vec<&serde_json::Value> = records[..recovered].iter().collect();
    assert!(
        held.iter()
            .any(|r| r["action"] == "scope.denied" && r["path"] == readme),
        "the refusal of the read is in the log: {held:?}"
    );
    assert!(
        held.iter().any(|r| r["action"] == "writeback.rejected"
            && r["path"] == "/github/repos/acme/api/pulls/42/reviews/late.json"),
        "{held:?}"
    );
    assert!(
        records[recovered + 1..]
            .iter()
            .any(|r| r["action"] == "file.read" && r["path"] == readme)
    );
}
