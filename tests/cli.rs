//! The `check` and `scopes` commands through the built binary: output shapes and every exit code.

mod common;

use common::{run, run_json};
use serde_json::json;

#[test]
fn check_allowed_prints_the_documented_object_and_exits_0() {
    let (code, v) = run_json(&[
        "check",
        "--scope",
        "relayfile:fs:read:/github/**",
        "--require",
        "fs:read",
        "--path",
        "/github/repos/acme/api/pulls/1/metadata.json",
        "--json",
    ]);
    assert_eq!(code, 0);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "allowed",
            "requirement",
            "matched_scope",
            "reason",
            "error_code"
        ]
    );
    assert_eq!(v["allowed"], true);
    assert_eq!(v["requirement"], "fs:read");
    assert_eq!(v["matched_scope"], "relayfile:fs:read:/github/**");
    assert_eq!(v["error_code"], serde_json::Value::Null);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("relayfile:fs:read:/github/**")
    );
}

#[test]
fn check_denied_exits_1_with_insufficient_scope() {
    let (code, v) = run_json(&[
        "check",
        "--scopes-json",
        r#"["relayfile:fs:read:/github/**"]"#,
        "--op",
        "write",
        "--path",
        "/github/x",
        "--json",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["allowed"], false);
    assert_eq!(v["requirement"], "fs:write");
    assert_eq!(v["matched_scope"], serde_json::Value::Null);
    assert_eq!(v["error_code"], "insufficient_scope");
}

#[test]
fn check_explains_the_seed_mid_path_glob() {
    let (code, v) = run_json(&[
        "check",
        "--scope",
        "relayfile:fs:write:/github/repos/acme/api/pulls/*/reviews/*",
        "--op",
        "write",
        "--path",
        "/github/repos/acme/api/pulls/7/reviews/r.json",
        "--json",
    ]);
    assert_eq!(code, 1);
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("mid-path glob") && reason.contains("segment 6"),
        "{reason}"
    );
}

#[test]
fn check_human_output_is_one_sentence() {
    let (code, out, _) = run(&[
        "check", "--scope", "fs:read", "--op", "read", "--path", "/x",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("allowed: fs:read on \"/x\" is granted by the bare literal fs:read"),
        "{out}"
    );
    let (code, out, _) = run(&["check", "--scopes-json", "[]", "--op", "read", "--path", ""]);
    assert_eq!(code, 1);
    assert!(out.starts_with("denied: "), "{out}");
}

#[test]
fn check_empty_path_and_empty_scope_set() {
    let (code, v) = run_json(&[
        "check",
        "--scopes-json",
        r#"["relayfile:fs:read:*"]"#,
        "--op",
        "read",
        "--path",
        "",
        "--json",
    ]);
    assert_eq!((code, v["allowed"].clone()), (0, json!(true)));
    let (code, v) = run_json(&[
        "check",
        "--scopes-json",
        "[]",
        "--op",
        "read",
        "--path",
        "/a",
        "--json",
    ]);
    assert_eq!((code, v["allowed"].clone()), (1, json!(false)));
}

#[test]
fn check_uses_scopes_json_byte_for_byte() {
    // A scope with a trailing space in its path: the path part is trimmed by the contract,
    // but the string itself must come back unchanged as the matched scope.
    let (code, v) = run_json(&[
        "check",
        "--scopes-json",
        r#"["relayfile:fs:read: /github/** "]"#,
        "--op",
        "read",
        "--path",
        "/github/x",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["matched_scope"], "relayfile:fs:read: /github/** ");
}

#[test]
fn check_bad_input_exits_2_naming_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "check",
                "--scopes-json",
                "{}",
                "--op",
                "read",
                "--path",
                "/x",
            ],
            "JSON array of strings",
        ),
        (
            &[
                "check",
                "--scopes-json",
                "[1]",
                "--op",
                "read",
                "--path",
                "/x",
            ],
            "JSON array of strings",
        ),
        (
            &[
                "check",
                "--scopes-json",
                "not json",
                "--op",
                "read",
                "--path",
                "/x",
            ],
            "JSON array of strings",
        ),
        (
            &[
                "check",
                "--scope",
                "fs:read",
                "--require",
                "fsread",
                "--path",
                "/x",
            ],
            "RESOURCE:ACTION",
        ),
        (
            &[
                "check",
                "--scope",
                "fs:read",
                "--require",
                "fs:bogus",
                "--path",
                "/x",
            ],
            "known actions",
        ),
        (
            &[
                "check", "--scope", "fs:read", "--op", "bogus", "--path", "/x",
            ],
            "known actions",
        ),
        (
            &[
                "check",
                "--scope",
                "fs:read",
                "--require",
                "fs:*",
                "--path",
                "/x",
            ],
            "RESOURCE:ACTION",
        ),
        (
            &["check", "--scope", "fs:read", "--path", "/x"],
            "--require",
        ),
        (&["check", "--op", "read", "--path", "/x"], "--scope"),
        (&["check", "--scope", "fs:read", "--op", "read"], "--path"),
        (
            &[
                "check",
                "--scope",
                "a",
                "--scopes-json",
                "[]",
                "--op",
                "read",
                "--path",
                "/x",
            ],
            "cannot be used",
        ),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains(needle),
            "{args:?}: stderr does not name the problem: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
    }
}

#[test]
fn scopes_validate_reports_each_scope() {
    let (code, v) = run_json(&[
        "scopes",
        "validate",
        "relayfile:fs:read:/github/repos/acme-*",
        "relayfile:fs:write:/github/repos/acme/api/pulls/*/reviews/*",
        "relaycast:channel:read:*",
        "--json",
    ]);
    assert_eq!(code, 1, "an invalid scope makes validate exit 1");
    assert_eq!(
        v[0],
        json!({"scope": "relayfile:fs:read:/github/repos/acme-*", "valid": true, "mounts_at": "/github/repos", "error": null, "warning": null})
    );
    assert_eq!(v[1]["valid"], false);
    assert_eq!(v[1]["mounts_at"], serde_json::Value::Null);
    assert!(v[1]["error"].as_str().unwrap().contains("mid-path glob"));
    assert_eq!(v[2]["valid"], true);
    assert!(v[2]["warning"].as_str().unwrap().contains("relaycast"));
    let (code, _) = run_json(&["scopes", "validate", "relayfile:fs:read:*", "--json"]);
    assert_eq!(code, 0);
    let (code, _, err) = run(&["scopes", "validate"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn scopes_within_exit_codes_and_shape() {
    let parent = [
        "relayfile:fs:read:/github/*",
        "relayfile:fs:write:/github/*/reviews/*",
    ];
    let mut args = vec![
        "scopes",
        "within",
        "--child",
        "relayfile:fs:read:/github/repos/acme/api/pulls/*",
        "--parent",
    ];
    args.extend(parent);
    args.push("--json");
    let (code, v) = run_json(&args);
    assert_eq!(code, 0);
    assert_eq!(v, json!({"within": true, "offending": [], "invalid": []}));

    let mut args = vec![
        "scopes",
        "within",
        "--child",
        "relayfile:fs:write:/slack/*",
        "relayfile:fs:read:/a/*/b",
        "--parent",
    ];
    args.extend(parent);
    args.push("--json");
    let (code, v) = run_json(&args);
    assert_eq!(code, 1);
    assert_eq!(
        v,
        json!({"within": false, "offending": ["relayfile:fs:write:/slack/*"], "invalid": ["relayfile:fs:read:/a/*/b"]})
    );

    let (code, out, _) = run(&[
        "scopes",
        "within",
        "--child",
        "relayfile:fs:write:/slack/*",
        "--parent",
        "relayfile:fs:read:*",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("relayfile:fs:write:/slack/*"), "{out}");
    let (code, _, err) = run(&["scopes", "within", "--child", "fs:read"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn scopes_normalize_and_contains() {
    let (code, out, _) = run(&["scopes", "normalize", "github/", "", "/a//"]);
    assert_eq!(code, 0);
    assert_eq!(out, "/github\n/\n/a/\n");
    let (code, _, _) = run(&[
        "scopes",
        "contains",
        "--base",
        "/github",
        "--candidate",
        "/github2",
    ]);
    assert_eq!(code, 1);
    let (code, _, _) = run(&[
        "scopes",
        "contains",
        "--base",
        "github/",
        "--candidate",
        "/github/x",
    ]);
    assert_eq!(code, 0);
}

#[test]
fn help_and_version_exit_0() {
    for args in [
        &["--help"][..],
        &["--version"],
        &["check", "--help"],
        &["scopes", "within", "--help"],
    ] {
        let (code, out, _) = run(args);
        assert_eq!(code, 0, "{args:?}");
        assert!(!out.is_empty());
    }
    // The version names the commit it was built from.
    let (_, out, _) = run(&["--version"]);
    assert!(
        out.contains(" (commit ") || out.contains(" (unknown commit)"),
        "{out}"
    );
}

#[test]
fn mount_refuses_an_unknown_io_mode_naming_the_ones_there_are() {
    let (code, _, err) = run(&[
        "mount",
        "/nonexistent-src",
        "/nonexistent-mnt",
        "--workspace",
        "ws",
        "--token-env",
        "--io",
        "direct",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--io") && err.contains("strict") && err.contains("passthrough"),
        "{err}"
    );
}

#[test]
fn passthrough_without_cap_sys_admin_falls_back_to_strict_and_says_why() {
    // Run as `nobody` (the tests run as root): the daemon would lack CAP_SYS_ADMIN.
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let o = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_relayauth-mount"))
        .args([
            "mount",
            "/nonexistent-src",
            "/nonexistent-mnt",
            "--workspace",
            "ws",
            "--token-env",
            "NO_SUCH_VARIABLE",
            "--io",
            "passthrough",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--io passthrough is not available here")
            && err.contains("CAP_SYS_ADMIN")
            && err.contains("--io strict"),
        "{err}"
    );
}
