//! Path tricks against a real mount: symlinks out of the mirror, a directory swapped for a
//! symlink while agents work, hard links that alias another path, renames across scopes and
//! truncation by path. The agent runs as `nobody` (the mounts let other users in with
//! `--allow-other-users`, and the scratch areas are world-writable), so anything it reads from
//! outside the mirror could only have come through the daemon (root).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::mount::*;

const SECRET: &str = "OUTSIDE-THE-MIRROR";

/// Let anyone create and change things in `dir` (and below), so that what stops `nobody` is
/// the guard, not the mirror's permission bits.
fn world_writable(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_symlink() {
            continue;
        }
        if p.is_dir() {
            world_writable(&p);
        } else {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// A root-only directory beside the mirror, with a secret in it.
fn outside(mirror: &Path) -> std::path::PathBuf {
    let dir = mirror.parent().unwrap().join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), SECRET).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
fn symlinks_out_of_the_mirror_serve_nothing_from_outside() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let prepare = |mirror: &Path| {
        let out = outside(mirror);
        std::fs::create_dir_all(mirror.join("scratch")).unwrap();
        std::os::unix::fs::symlink(&out, mirror.join("scratch/abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", mirror.join("scratch/rel")).unwrap();
        std::os::unix::fs::symlink(out.join("f"), mirror.join("scratch/file")).unwrap();
        world_writable(&mirror.join("scratch"));
    };
    let m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:manage:/scratch/**"]),
        MountOpts {
            args: vec!["--local-roots", "scratch", "--allow-other-users"],
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    let o = m.sh_as_nobody(
        "for p in scratch/abs/f scratch/rel/f scratch/file; do cat $p 2>/dev/null; done
         readlink scratch/abs
         echo planted > scratch/abs/new 2>/dev/null; echo planted > scratch/file 2>/dev/null
         ls scratch",
    );
    let text = out(&o);
    assert!(!text.contains(SECRET), "outside content leaked: {text}");
    assert!(
        text.contains("outside"),
        "the symlink is shown as a symlink: {text}"
    );
    let out_dir = m.mirror.parent().unwrap().join("outside");
    assert_eq!(std::fs::read_to_string(out_dir.join("f")).unwrap(), SECRET);
    assert!(!out_dir.join("new").exists());
}

#[test]
fn swapping_a_directory_for_a_symlink_never_escapes() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let prepare = |mirror: &Path| {
        let out = outside(mirror);
        std::fs::create_dir_all(mirror.join("scratch/dir")).unwrap();
        std::fs::write(mirror.join("scratch/dir/f"), "inside").unwrap();
        std::os::unix::fs::symlink(&out, mirror.join("scratch/swap")).unwrap();
        world_writable(&mirror.join("scratch"));
    };
    let m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:manage:/scratch/**"]),
        MountOpts {
            args: vec!["--local-roots", "scratch", "--allow-other-users"],
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    // Before the race: the real directory is served.
    assert_eq!(out(&m.sh_as_nobody("cat scratch/dir/f")), "inside");
    // Exchange `dir` and `swap` (a symlink to the outside) atomically, as fast as possible.
    // Which of the two an agent sees depends on when the kernel (re)looked the name up (its
    // entry cache holds an answer for up to a second), so the loop may see either; it must
    // never see the outside through the daemon.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let scratch = m.mirror_at("scratch");
        std::thread::spawn(move || {
            let dirfd = std::fs::File::open(&scratch).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    &dirfd,
                    "dir",
                    &dirfd,
                    "swap",
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
                n += 1;
            }
            n
        })
    };
    let o = m.sh_as_nobody(
        "for i in $(seq 1 300); do
            cat scratch/dir/f 2>/dev/null
            echo planted > scratch/dir/w$i 2>/dev/null
            ls scratch/dir 2>/dev/null
         done; true",
    );
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 100, "the race did not run ({swaps} swaps)");
    let text = out(&o);
    assert!(
        !text.contains(SECRET),
        "outside content leaked under a swap race"
    );
    let out_dir = m.mirror.parent().unwrap().join("outside");
    let planted: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        planted.len(),
        1,
        "something was written outside the mirror: {planted:?}"
    );
}

#[test]
fn hard_links_never_borrow_another_paths_rights() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let prepare = |mirror: &Path| {
        std::fs::create_dir_all(mirror.join("scratch")).unwrap();
        std::fs::hard_link(
            mirror.join("slack/users/U04ALICE01.json"),
            mirror.join("scratch/alias.json"),
        )
        .unwrap();
    };
    let m = TestMount::start(
        &issuer,
        &issuer.token(&[
            "relayfile:fs:read:/scratch/**",
            "relayfile:fs:write:/scratch/**",
        ]),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    // The alias is reached by its own path, which the token grants...
    assert!(m.sh("cat scratch/alias.json").status.success());
    // ...but that does not make the original path (hidden to this token) reachable.
    let o = m.sh("cat slack/users/U04ALICE01.json");
    assert!(err(&o).contains("No such file"), "{}", err(&o));
    // And no new alias can be made through the mount.
    let o = m.sh("ln scratch/alias.json scratch/alias2.json");
    assert!(err(&o).contains("Operation not permitted"), "{}", err(&o));
    assert!(!m.mirror_at("scratch/alias2.json").exists());
}

#[test]
fn renames_across_scopes_and_truncation_by_path_are_refused() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let prepare = |mirror: &Path| {
        std::fs::create_dir_all(mirror.join("scratch/mine")).unwrap();
        std::fs::create_dir_all(mirror.join("scratch/theirs")).unwrap();
        std::fs::write(mirror.join("scratch/mine/a.txt"), "mine").unwrap();
        std::fs::write(mirror.join("scratch/theirs/b.txt"), "theirs").unwrap();
    };
    let m = TestMount::start(
        &issuer,
        &issuer.token(&[
            "relayfile:fs:read:/scratch/**",
            "relayfile:fs:manage:/scratch/mine/**",
        ]),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    let before = snapshot(&m.mirror);
    for script in [
        "mv scratch/mine/a.txt scratch/theirs/a.txt",
        "mv scratch/theirs/b.txt scratch/mine/b.txt",
        "mv scratch/mine/a.txt scratch/theirs/b.txt",
        "truncate -s 0 scratch/theirs/b.txt",
        "mv scratch/mine scratch/theirs/mine",
        "/usr/bin/python3 -c \"import os; os.rename('scratch/mine/a.txt', 'scratch/theirs/../theirs/x.txt')\"",
    ] {
        let o = m.sh(script);
        assert!(!o.status.success(), "`{script}` should fail");
    }
    assert_eq!(snapshot(&m.mirror), before);
    // Within its own area the same tools work.
    assert!(
        m.sh("mv scratch/mine/a.txt scratch/mine/c.txt && truncate -s 1 scratch/mine/c.txt")
            .status
            .success()
    );
    assert_eq!(
        std::fs::read_to_string(m.mirror_at("scratch/mine/c.txt")).unwrap(),
        "m"
    );
}

#[test]
fn dot_dot_and_odd_names_cannot_alias_other_paths() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:read:/slack/channels/c456-eng/**"]),
        MountOpts::default(),
    );
    // The kernel resolves `..` through the mount, where each step is checked again.
    for p in [
        "slack/channels/c456-eng/../c123-general/channel.json",
        "slack/channels/c456-eng/messages/../../c123-general/channel.json",
        "slack/users/U04ALICE01.json",
    ] {
        let o = m.sh(&format!("cat '{p}'"));
        assert!(!o.status.success(), "{p} must not be readable");
    }
    assert!(
        m.sh("cat slack/channels/c456-eng/channel.json")
            .status
            .success()
    );
    assert!(
        m.sh("cat slack/channels/c456-eng/messages/../channel.json")
            .status
            .success()
    );
}
