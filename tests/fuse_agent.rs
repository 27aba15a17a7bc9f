//! Agents at work on a real mount: shell tools, Python, an editor-style save, `git status`,
//! many processes at once. Every row of DESIGN section 7's table, allowed and refused, and the
//! mirror is checked afterwards: a refused operation changes nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::mount::*;
use serde_json::Value;

/// The fixture's lead agent, plus a local scratch area it manages.
const LEAD: &[&str] = &[
    "relayfile:fs:read:*",
    "relayfile:fs:write:/github/repos/acme/api/**",
    "relayfile:fs:create:/linear/issues/*",
    "relayfile:fs:write:/slack/channels/c456-eng/messages/*",
    "relayfile:ops:read:/github/**",
    "relayfile:sync:read:*",
    "relayfile:fs:write:/github/repos/acme/api/pulls/*/reviews/*",
    "relayfile:fs:manage:/scratch/**",
];

fn scratch(mirror: &Path) {
    std::fs::create_dir_all(mirror.join("scratch/docs")).unwrap();
    std::fs::write(mirror.join("scratch/notes.txt"), "first line\n").unwrap();
    std::fs::write(mirror.join("scratch/docs/a.md"), "# a\n").unwrap();
}

fn lead_mount(issuer: &Issuer) -> TestMount {
    TestMount::start(
        issuer,
        &issuer.token(LEAD),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&scratch),
            ..MountOpts::default()
        },
    )
}

/// Python as an agent would use it; prints what it saw, one line per step.
fn python(m: &TestMount, code: &str) -> String {
    let o = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(code)
        .current_dir(&m.mnt)
        .output()
        .expect("python3");
    assert!(o.status.success(), "python failed: {}{}", out(&o), err(&o));
    out(&o)
}

const ERRNO_OF: &str = r#"
import errno, os, sys
def attempt(label, f):
    try:
        f()
        print(label, "ok")
    except OSError as e:
        print(label, errno.errorcode.get(e.errno, e.errno))
"#;

#[test]
fn shell_tools_see_only_what_the_token_allows() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:read:/slack/**"]),
        MountOpts::default(),
    );
    let ls = m.sh("ls -a");
    assert_eq!(out(&ls), ".\n..\n_PERMISSIONS.md\nslack\n");
    let o = m.sh("ls github");
    assert!(
        !o.status.success() && err(&o).contains("No such file"),
        "{}",
        err(&o)
    );
    let o = m.sh("stat .relay");
    assert!(err(&o).contains("No such file"), "{}", err(&o));
    let found = out(&m.sh("find . -type f | sort"));
    assert!(
        found
            .lines()
            .all(|l| l.starts_with("./slack/") || l.ends_with("_PERMISSIONS.md")),
        "{found}"
    );
    let slack_files = found
        .lines()
        .filter(|l| l.starts_with("./slack/") && !l.ends_with("_PERMISSIONS.md"))
        .count();
    let in_mirror = snapshot(&m.mirror_at("slack"))
        .iter()
        .filter(|(p, _)| !p.ends_with('/'))
        .count();
    assert_eq!(slack_files, in_mirror);
    let cat = m.sh("cat slack/users/U04ALICE01.json");
    assert!(cat.status.success());
    assert_eq!(
        cat.stdout,
        std::fs::read(m.mirror_at("slack/users/U04ALICE01.json")).unwrap()
    );
}

#[test]
fn refused_operations_change_nothing() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = lead_mount(&issuer);
    let before = snapshot(&m.mirror);
    let web = "github/repos/acme/web";
    for (what, script) in [
        ("write", format!("echo x > {web}/metadata.json")),
        ("append", format!("echo x >> {web}/metadata.json")),
        ("truncate", format!("truncate -s 0 {web}/metadata.json")),
        ("touch", format!("touch {web}/metadata.json")),
        ("chmod", format!("chmod 600 {web}/metadata.json")),
        (
            "fallocate",
            format!("fallocate -l 4096 {web}/metadata.json"),
        ),
        ("rm", format!("rm -f {web}/metadata.json")),
        ("mkdir", format!("mkdir {web}/newdir")),
        ("symlink", format!("ln -s metadata.json {web}/link")),
        ("create", format!("echo x > {web}/new.txt")),
        ("cp", format!("cp scratch/notes.txt {web}/notes.txt")),
        ("mv-in", format!("mv scratch/notes.txt {web}/moved.txt")),
        (
            "mv-out",
            format!("mv {web}/metadata.json scratch/stolen.json"),
        ),
        (
            "rmdir",
            "rmdir github/repos/acme/web/pulls/18/comments".to_owned(),
        ),
        (
            "relay",
            "echo x > .relay/outbox/pending/new.json".to_owned(),
        ),
        ("relay-rm", "rm -f .relay/state.json".to_owned()),
        ("permissions", "echo x > _PERMISSIONS.md".to_owned()),
    ] {
        let o = m.sh(&script);
        assert!(!o.status.success(), "{what}: `{script}` should fail");
        assert!(
            err(&o).contains("Permission denied") || err(&o).contains("Operation not permitted"),
            "{what}: `{script}`: {}",
            err(&o)
        );
    }
    assert_eq!(
        snapshot(&m.mirror),
        before,
        "a refused operation changed the mirror"
    );
}

#[test]
fn errno_policy_enoent_eacces_eperm() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = TestMount::start(
        &issuer,
        &issuer.token(&[
            "relayfile:fs:read:/github/repos/acme/api/**",
            "relayfile:fs:create:/github/repos/acme/api/issues/*",
        ]),
        MountOpts::default(),
    );
    let seen = python(
        &m,
        &format!(
            "{ERRNO_OF}
attempt('hidden-stat', lambda: os.stat('slack'))
attempt('hidden-open', lambda: open('github/repos/acme/web/metadata.json'))
attempt('visible-write', lambda: open('github/repos/acme/api/metadata.json', 'w'))
attempt('visible-read', lambda: open('github/repos/acme/api/metadata.json').read())
attempt('hard-link', lambda: os.link('github/repos/acme/api/metadata.json', 'github/repos/acme/api/issues/7/x'))
attempt('mkfifo', lambda: os.mkfifo('github/repos/acme/api/issues/7/fifo'))
attempt('mknod-device', lambda: os.mknod('github/repos/acme/api/issues/7/null', 0o20600, os.makedev(1, 3)))
"
        ),
    );
    // A FIFO is made like a file (and never in a provider area); a device never.
    let expect = "hidden-stat ENOENT\nhidden-open ENOENT\nvisible-write EACCES\nvisible-read ok\nhard-link EPERM\nmkfifo EACCES\nmknod-device EPERM\n";
    assert_eq!(seen, expect);
}

#[test]
fn test_r_and_test_w_answer_from_the_token_and_the_mode_bits() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let probe = "for f in scratch/notes.txt scratch/open.txt github/repos/acme/web/metadata.json _PERMISSIONS.md; do
           printf '%s' \"$f\"; test -r \"$f\" && printf ' r'; test -w \"$f\" && printf ' w'; echo
         done";
    let prepare = |mirror: &std::path::Path| {
        scratch(mirror);
        std::fs::write(mirror.join("scratch/open.txt"), "anyone").unwrap();
        std::fs::set_permissions(
            mirror.join("scratch/open.txt"),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .unwrap();
    };
    // The mount's owner (root here): what it may do comes from the token, which `test`
    // (access(2)) says exactly. Nobody else may use the mount at all.
    let m = TestMount::start(
        &issuer,
        &issuer.token(LEAD),
        MountOpts {
            args: vec!["--local-roots", "scratch"],
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    assert_eq!(
        out(&m.sh(probe)),
        "scratch/notes.txt r w\nscratch/open.txt r w\ngithub/repos/acme/web/metadata.json r\n_PERMISSIONS.md r\n"
    );
    assert_eq!(
        out(&m.sh_as_nobody(probe)),
        "scratch/notes.txt\nscratch/open.txt\ngithub/repos/acme/web/metadata.json\n_PERMISSIONS.md\n"
    );
    drop(m);
    // Another user, let in with --allow-other-users: the token and the mirror's own bits both
    // apply (root's 0644 notes.txt is read-only for nobody, as natively).
    let m = TestMount::start(
        &issuer,
        &issuer.token(LEAD),
        MountOpts {
            args: vec!["--local-roots", "scratch", "--allow-other-users"],
            prepare: Some(&prepare),
            ..MountOpts::default()
        },
    );
    let o = m.sh_as_nobody(probe);
    assert_eq!(
        out(&o),
        "scratch/notes.txt r\nscratch/open.txt r w\ngithub/repos/acme/web/metadata.json r\n_PERMISSIONS.md r\n",
        "{}",
        err(&o)
    );
}

#[test]
fn local_area_works_with_everyday_tools() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = lead_mount(&issuer);
    let o = m.sh("set -e
        cd scratch
        echo hello > a.txt
        echo more >> a.txt
        cat a.txt > b.txt
        cp a.txt c.txt
        mv c.txt d.txt
        mkdir -p deep/er
        echo x > deep/er/f
        ln -s ../a.txt deep/link
        cat deep/link > /dev/null
        touch -d '2020-01-01' a.txt
        chmod 640 b.txt
        truncate -s 3 b.txt
        fallocate -l 8192 d.txt
        rm deep/er/f
        rmdir deep/er
        find . -type f | sort");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        std::fs::read_to_string(m.mirror_at("scratch/a.txt")).unwrap(),
        "hello\nmore\n"
    );
    assert_eq!(
        std::fs::read_to_string(m.mirror_at("scratch/b.txt")).unwrap(),
        "hel"
    );
    assert_eq!(
        std::fs::metadata(m.mirror_at("scratch/d.txt"))
            .unwrap()
            .len(),
        8192
    );
    assert_eq!(
        std::fs::read_link(m.mirror_at("scratch/deep/link")).unwrap(),
        Path::new("../a.txt")
    );
    assert!(!m.mirror_at("scratch/deep/er").exists());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(m.mirror_at("scratch/b.txt"))
                .unwrap()
                .permissions()
        ) & 0o777,
        0o640
    );
}

#[test]
fn python_file_io_and_xattrs() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = lead_mount(&issuer);
    let seen = python(
        &m,
        &format!(
            "{ERRNO_OF}
with open('scratch/py.txt', 'w') as f:
    f.write('line 1\\n')
with open('scratch/py.txt', 'a') as f:
    f.write('line 2\\n')
print(open('scratch/py.txt').read().splitlines())
with open('scratch/py.txt', 'r+') as f:
    f.seek(5); f.write('X')
print(open('scratch/py.txt').read().splitlines())
os.rename('scratch/py.txt', 'scratch/py2.txt')
attempt('user-xattr', lambda: os.setxattr('scratch/py2.txt', 'user.tag', b'v'))
print(os.getxattr('scratch/py2.txt', 'user.tag'))
attempt('trusted-xattr', lambda: os.setxattr('scratch/py2.txt', 'trusted.tag', b'v'))
attempt('xattr-readonly', lambda: os.setxattr('github/repos/acme/web/metadata.json', 'user.tag', b'v'))
os.remove('scratch/py2.txt')
print(os.path.exists('scratch/py2.txt'))
"
        ),
    );
    assert_eq!(
        seen,
        "['line 1', 'line 2']\n['line X', 'line 2']\nuser-xattr ok\nb'v'\ntrusted-xattr EPERM\nxattr-readonly EACCES\nFalse\n"
    );
}

#[test]
fn editor_style_save_replaces_atomically() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = lead_mount(&issuer);
    // Local file: write a temporary name, then rename over the original.
    let o = m.sh("set -e; printf 'new text\\n' > scratch/.notes.txt.swp; mv scratch/.notes.txt.swp scratch/notes.txt; cat scratch/notes.txt");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "new text\n");
    // Provider path: the temporary name is not a writeback; the rename is, and is validated.
    let reviews = "github/repos/acme/api/pulls/42/reviews";
    let o = m.sh(&format!(
        "set -e; printf '{{\"event\": \"COMMENT\", \"body\": \"Saved from an editor.\"}}' > {reviews}/edit.json.tmp; mv {reviews}/edit.json.tmp {reviews}/edit.json"
    ));
    assert!(o.status.success(), "{}", err(&o));
    assert!(m.mirror_at(&format!("{reviews}/edit.json")).exists());
    let o = m.sh(&format!(
        "printf '{{\"event\": \"LGTM\"}}' > {reviews}/bad.json.tmp; mv {reviews}/bad.json.tmp {reviews}/bad.json"
    ));
    assert!(!o.status.success());
    assert!(err(&o).contains("Permission denied"), "{}", err(&o));
    assert!(!m.mirror_at(&format!("{reviews}/bad.json")).exists());
    let md = std::fs::read_to_string(m.at(&format!("{reviews}/_PERMISSIONS.md"))).unwrap();
    assert!(
        md.contains("bad.json") && md.contains("does not match schema"),
        "{md}"
    );
}

#[test]
fn writebacks_are_validated_before_they_reach_the_mirror() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = lead_mount(&issuer);
    let reviews = "github/repos/acme/api/pulls/42/reviews";
    let seen = python(
        &m,
        &format!(
            r#"{ERRNO_OF}
def write(path, text):
    f = open(path, 'w')
    f.write(text)
    f.close()
attempt('valid', lambda: write('{reviews}/agent.json', '{{"event": "COMMENT", "body": "Please add a test."}}'))
attempt('invalid', lambda: write('{reviews}/broken.json', '{{"event": "LGTM"}}'))
attempt('not-json', lambda: write('{reviews}/text.json', 'hello'))
attempt('no-policy', lambda: write('github/repos/acme/api/pulls/42/metadata.json', '{{}}'))
attempt('truncate', lambda: os.truncate('{reviews}/agent.json', 0))
"#
        ),
    );
    assert_eq!(
        seen,
        "valid ok\ninvalid EINVAL\nnot-json EINVAL\nno-policy EACCES\ntruncate EINVAL\n"
    );
    assert_eq!(
        std::fs::read_to_string(m.mirror_at(&format!("{reviews}/agent.json"))).unwrap(),
        r#"{"event": "COMMENT", "body": "Please add a test."}"#
    );
    assert!(!m.mirror_at(&format!("{reviews}/broken.json")).exists());
    assert!(!m.mirror_at(&format!("{reviews}/text.json")).exists());
    let quarantined = std::fs::read_dir(m.mirror_at(".relay/.relayauth-mount/quarantine"))
        .unwrap()
        .count();
    assert_eq!(quarantined, 3);
    let rejected = m.wait_audit(|e| {
        e["action"] == "writeback.rejected"
            && e["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("broken.json"))
    });
    assert_eq!(
        rejected["writebackPolicyId"],
        "github.pull-request-review.create"
    );
    let md = std::fs::read_to_string(m.at(&format!("{reviews}/_PERMISSIONS.md"))).unwrap();
    assert!(
        md.contains("broken.json") && md.contains("does not match schema"),
        "{md}"
    );
}

#[test]
fn git_status_on_a_repository_inside_the_mirror() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let repo = |mirror: &Path| {
        let dir = mirror.join("github/repos/acme/api/code");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("main.go"), "package main\n").unwrap();
        let git = |args: &[&str]| {
            let o = Command::new("git")
                .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-qm", "init"]);
    };
    let m = TestMount::start(
        &issuer,
        &issuer.token(LEAD),
        MountOpts {
            prepare: Some(&repo),
            ..MountOpts::default()
        },
    );
    let o = m.sh("cd github/repos/acme/api/code && git -c safe.directory='*' status --porcelain && git -c safe.directory='*' log --oneline | wc -l");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "1", "a clean tree, one commit");
    // _PERMISSIONS.md is still there by name, just not listed inside the working tree.
    assert!(
        m.sh("cat github/repos/acme/api/code/_PERMISSIONS.md")
            .status
            .success()
    );
    // main.go is provider content no writeback policy covers: the edit is refused, the tree
    // stays clean, the mirror keeps its bytes.
    let main_go = m.mirror_at("github/repos/acme/api/code/main.go");
    let before = std::fs::read(&main_go).unwrap();
    let o = m.sh("cd github/repos/acme/api/code && echo change >> main.go; git -c safe.directory='*' status --porcelain");
    assert!(err(&o).contains("Permission denied"), "{}", err(&o));
    assert!(!out(&o).contains("main.go"), "{}", out(&o));
    assert_eq!(std::fs::read(&main_go).unwrap(), before);
    // A reader without write access to .git can still see the tree but git cannot lock the index.
    drop(m);
    let m = TestMount::start(
        &issuer,
        &issuer.token(&["relayfile:fs:read:*"]),
        MountOpts {
            prepare: Some(&repo),
            ..MountOpts::default()
        },
    );
    let o =
        m.sh("cd github/repos/acme/api/code && git -c safe.directory='*' log --oneline | wc -l");
    assert_eq!(out(&o).trim(), "1", "{}", err(&o));
}

#[test]
fn many_processes_at_once() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = lead_mount(&issuer);
    // All eight start before any is waited for, so they really run at the same time.
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "set -e
                    for n in $(seq 1 25); do echo \"$n\" > scratch/p{i}-$n.txt; done
                    find . -name '*.json' | head -200 | xargs cat > /dev/null
                    cat scratch/p{i}-*.txt | wc -l
                    ! echo x > github/repos/acme/web/metadata.json 2>/dev/null"
                ))
                .current_dir(&m.mnt)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let children: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (i, o) in children.iter().enumerate() {
        assert!(o.status.success(), "process {i}: {}", err(o));
        assert_eq!(out(o).trim(), "25");
    }
    let written = std::fs::read_dir(m.mirror_at("scratch"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('p')
        })
        .count();
    assert_eq!(written, 200);
    // Every refused write was audited, with the sponsor chain.
    let mut denied = 0;
    for _ in 0..100 {
        denied = m
            .audit_events()
            .iter()
            .filter(|e| e["action"] == "file.write.denied")
            .count();
        if denied >= 8 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(denied, 8);
}

#[test]
fn permissions_file_agrees_with_enforcement() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = lead_mount(&issuer);
    let before = snapshot(&m.mirror);
    let mut checked = 0;
    for dir in [
        "",
        "github/repos/acme",
        "github/repos/acme/api/pulls/42",
        "slack/channels/c456-eng/messages",
        "scratch",
        ".relay/outbox/pending",
    ] {
        let text = std::fs::read_to_string(m.at(dir).join("_PERMISSIONS.md")).unwrap();
        let json = text
            .split("```json\n")
            .nth(1)
            .and_then(|t| t.split("\n```").next())
            .expect("json block");
        let view: Value = serde_json::from_str(json).unwrap();
        let entries = view["entries"].as_array().unwrap();
        assert!(!entries.is_empty(), "no entries listed in /{dir}");
        for e in entries {
            checked += 1;
            let path = m.at(e["path"].as_str().unwrap());
            match e["type"].as_str().unwrap() {
                "file" => {
                    let read = std::fs::File::open(&path).is_ok();
                    assert_eq!(
                        read,
                        e["read"]["allowed"] == true,
                        "read claim for {}",
                        path.display()
                    );
                    // Opening for writing without writing changes nothing, staged or not.
                    let write = std::fs::OpenOptions::new().write(true).open(&path).is_ok();
                    assert_eq!(
                        write,
                        e["write"]["allowed"] == true,
                        "write claim for {}",
                        path.display()
                    );
                }
                "dir" => {
                    let list = std::fs::read_dir(&path).is_ok();
                    assert_eq!(
                        list,
                        e["read"]["allowed"] == true,
                        "list claim for {}",
                        path.display()
                    );
                }
                other => panic!("unexpected entry type {other:?} for {}", path.display()),
            }
        }
    }
    assert!(checked > 10, "only {checked} claims checked");
    assert!(
        snapshot(&m.mirror) == before,
        "opening files to test the claims changed the mirror"
    );
    assert!(
        std::fs::read_to_string(m.at("_PERMISSIONS.md"))
            .unwrap()
            .contains("mid-path glob")
    );
}

#[test]
fn the_audit_log_ties_every_decision_to_the_sponsor() {
    if !fuse_available() {
        return;
    }
    let issuer = Issuer::start();
    let m = lead_mount(&issuer);
    let o = m.sh("cat github/repos/acme/api/metadata.json > /dev/null; mkdir scratch/d; echo x > scratch/d/f; mv scratch/d/f scratch/d/g; rm scratch/d/g; chmod 600 scratch/notes.txt; echo x > github/repos/acme/web/metadata.json");
    assert!(!o.status.success());
    for op in ["open", "mkdir", "create", "rename", "unlink", "setattr"] {
        let e = m.wait_audit(|e| e["operation"] == op);
        assert_eq!(e["sponsorId"], "user_alice", "{e}");
        assert_eq!(e["sponsorChain"][0], "user_alice");
        assert!(e["sponsorChain"].as_array().unwrap().len() >= 2);
        assert_eq!(e["workspaceId"], "ws_acme");
        assert!(e["tokenId"].as_str().unwrap().starts_with("tok_"));
    }
    let denied = m.wait_audit(|e| e["action"] == "file.write.denied");
    assert_eq!(denied["result"], "denied");
    assert_eq!(denied["requestedScope"], "relayfile:fs:write");
    let validated = m.wait_audit(|e| e["action"] == "token.validated");
    assert!(
        validated["metadata"]["invalidScopes"][0]["scope"]
            .as_str()
            .unwrap()
            .contains("/pulls/*/reviews/*")
    );
}
