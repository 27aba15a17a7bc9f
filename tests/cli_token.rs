//! `check --token-file`/`--token-env`/`--credentials` and `token inspect` through the built
//! binary: decisions against verified tokens, refused tokens with their codes (exit 1), and every
//! bad-input case (exit 2) with a message that names the fix.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine;
use common::tokens::*;
use common::{bin, run, run_json};
use serde_json::{Value, json};
use tempfile::TempDir;

const PATH: &str = "/github/repos/acme/api/pulls/1/metadata.json";

struct Fixture {
    dir: TempDir,
    jwks: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, jwks_json(&[&keys().ed, &keys().rsa])).unwrap();
        Fixture { dir, jwks }
    }

    fn jwks(&self) -> &str {
        self.jwks.to_str().unwrap()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// A token file holding `claims` signed with the Ed25519 key (and a trailing newline).
    fn token(&self, claims: &Value) -> String {
        self.write(
            "token.jwt",
            &format!("{}\n", keys().ed.sign(claims).unwrap()),
        )
    }
}

/// `check --token-file F --jwks J --workspace WS <extra> --json`.
fn check(f: &Fixture, token_file: &str, require: &str, path: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "check",
        "--token-file",
        token_file,
        "--jwks",
        f.jwks(),
        "--workspace",
        WORKSPACE,
        "--require",
        require,
        "--path",
        path,
        "--json",
    ];
    args.extend_from_slice(extra);
    run_json(&args)
}

fn keys_of(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

// ----- check: decisions ---------------------------------------------------------------------

#[test]
fn check_token_file_allowed() {
    let f = Fixture::new();
    let token = f.token(&claims());
    let (code, v) = check(&f, &token, "fs:read", PATH, &["--org", ORG]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        keys_of(&v),
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
    assert_eq!(v["error_code"], Value::Null);
}

#[test]
fn check_token_file_denied_by_scope() {
    let f = Fixture::new();
    let token = f.token(&claims());
    let (code, v) = check(&f, &token, "fs:write", "/github/orgs/acme.json", &[]);
    assert_eq!(code, 1);
    assert_eq!(v["allowed"], false);
    assert_eq!(v["error_code"], "insufficient_scope");
    let (code, v) = check(&f, &token, "fs:read", "/slack/channels/x.json", &[]);
    assert_eq!(code, 1);
    assert_eq!(v["error_code"], "insufficient_scope");
}

#[test]
fn check_token_file_text_output() {
    let f = Fixture::new();
    let token = f.token(&claims());
    let (code, out, _) = run(&[
        "check",
        "--token-file",
        &token,
        "--jwks",
        f.jwks(),
        "--workspace",
        WORKSPACE,
        "--op",
        "read",
        "--path",
        PATH,
    ]);
    assert_eq!(code, 0);
    assert!(out.starts_with("allowed: "), "{out}");
}

#[test]
fn check_prefixed_token_rs256_and_data_jwks() {
    let f = Fixture::new();
    let token = f.write(
        "t.jwt",
        &format!("relay_ag_{}", keys().rsa.sign(&claims()).unwrap()),
    );
    let data = format!(
        "data:application/json;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jwks_json(&[&keys().rsa]))
    );
    let (code, v) = run_json(&[
        "check",
        "--token-file",
        &token,
        "--jwks",
        &data,
        "--workspace",
        WORKSPACE,
        "--require",
        "fs:read",
        "--path",
        PATH,
        "--json",
    ]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn check_token_env() {
    let f = Fixture::new();
    let jwt = keys().ed.sign(&claims()).unwrap();
    let out: Output = bin()
        .args([
            "check",
            "--token-env",
            "RELAYAUTH_TOKEN",
            "--jwks",
            f.jwks(),
            "--workspace",
            WORKSPACE,
            "--require",
            "fs:read",
            "--path",
            PATH,
            "--json",
        ])
        .env("RELAYAUTH_TOKEN", &jwt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allowed"], true);

    // `--token-env` alone reads RELAYAUTH_TOKEN.
    let out: Output = bin()
        .args([
            "check",
            "--token-env",
            "--jwks",
            f.jwks(),
            "--workspace",
            WORKSPACE,
        ])
        .args(["--require", "fs:read", "--path", PATH, "--json"])
        .env("RELAYAUTH_TOKEN", &jwt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let out = bin()
        .args([
            "check",
            "--token-env",
            "RELAYAUTH_TEST_UNSET_VARIABLE",
            "--jwks",
            f.jwks(),
            "--workspace",
            WORKSPACE,
            "--require",
            "fs:read",
            "--path",
            PATH,
        ])
        .env_remove("RELAYAUTH_TEST_UNSET_VARIABLE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RELAYAUTH_TEST_UNSET_VARIABLE") && err.contains("not set"),
        "{err}"
    );
}

#[test]
fn check_credentials_bundle() {
    let f = Fixture::new();
    let bundle = json!({
        "relayfileWorkspaceId": WORKSPACE,
        "accessToken": keys().ed.sign(&claims()).unwrap(),
        "refreshToken": "rt-0",
        "relayauthUrl": "https://relayauth.dev"
    });
    let path = f.write("delegated.json", &bundle.to_string());
    let (code, v) = run_json(&[
        "check",
        "--credentials",
        &path,
        "--jwks",
        f.jwks(),
        "--workspace",
        WORKSPACE,
        "--require",
        "fs:write",
        "--path",
        "/github/repos/acme/api/pulls/1/reviews/x.json",
        "--json",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["matched_scope"],
        "relayfile:fs:write:/github/repos/acme/*"
    );
}

// ----- check: refused tokens ----------------------------------------------------------------

#[test]
fn check_refused_token_reports_its_code() {
    let f = Fixture::new();
    let expired = f.write(
        "expired.jwt",
        &keys().ed.sign(&claims_at(now_secs() - 7200)).unwrap(),
    );
    let (code, v) = check(&f, &expired, "fs:read", PATH, &[]);
    assert_eq!(code, 1);
    assert_eq!(
        keys_of(&v),
        [
            "allowed",
            "requirement",
            "matched_scope",
            "reason",
            "error_code"
        ]
    );
    assert_eq!(v["allowed"], false);
    assert_eq!(v["error_code"], "token_expired");
    assert_eq!(v["matched_scope"], Value::Null);
    assert!(v["reason"].as_str().unwrap().contains("expired"), "{v}");

    let good = f.token(&claims());
    let cases: [(&[&str], &str); 3] = [
        (&["--org", "org_other"], "wrong_org"),
        (&["--issuer", "https://issuer.example"], "wrong_issuer"),
        (&["--leeway", "0", "--org", ORG], ""),
    ];
    for (extra, expected) in cases {
        let (code, v) = check(&f, &good, "fs:read", PATH, extra);
        if expected.is_empty() {
            assert_eq!(code, 0, "{v}");
        } else {
            assert_eq!((code, v["error_code"].as_str()), (1, Some(expected)), "{v}");
        }
    }
    let (code, v) = run_json(&[
        "check",
        "--token-file",
        &good,
        "--jwks",
        f.jwks(),
        "--workspace",
        "ws_other",
        "--op",
        "read",
        "--path",
        PATH,
        "--json",
    ]);
    assert_eq!(
        (code, v["error_code"].as_str()),
        (1, Some("wrong_workspace"))
    );
}

#[test]
fn check_unknown_key_and_forged_tokens() {
    let f = Fixture::new();
    let only_rsa = f.write("rsa-only.json", &jwks_json(&[&keys().rsa]));
    let token = f.token(&claims());
    let (code, v) = run_json(&[
        "check",
        "--token-file",
        &token,
        "--jwks",
        &only_rsa,
        "--workspace",
        WORKSPACE,
        "--op",
        "read",
        "--path",
        PATH,
        "--json",
    ]);
    assert_eq!((code, v["error_code"].as_str()), (1, Some("unknown_key")));
    let none = f.write(
        "none.jwt",
        &format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"}).to_string()),
            b64(claims().to_string())
        ),
    );
    let (code, v) = check(&f, &none, "fs:read", PATH, &[]);
    assert_eq!((code, v["error_code"].as_str()), (1, Some("invalid_token")));
}

#[test]
fn check_leeway_flag() {
    let f = Fixture::new();
    // Expired 10 s ago: inside the default 30 s leeway, outside --leeway 5.
    let iat = now_secs() - 3610;
    let token = f.token(&claims_at(iat));
    let (code, v) = check(&f, &token, "fs:read", PATH, &[]);
    assert_eq!(code, 0, "{v}");
    let (code, v) = check(&f, &token, "fs:read", PATH, &["--leeway", "5"]);
    assert_eq!((code, v["error_code"].as_str()), (1, Some("token_expired")));
    // One meaning of --leeway everywhere: seconds, or a duration as `mount` takes it.
    let (code, v) = check(&f, &token, "fs:read", PATH, &["--leeway", "5s"]);
    assert_eq!((code, v["error_code"].as_str()), (1, Some("token_expired")));
    let (code, v) = check(&f, &token, "fs:read", PATH, &["--leeway", "1m"]);
    assert_eq!(code, 0, "{v}");
    // An absurd leeway cannot overflow into a panic; it refuses (fails closed).
    let (code, v) = check(
        &f,
        &token,
        "fs:read",
        PATH,
        &["--leeway", &u64::MAX.to_string()],
    );
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["allowed"], false);
}

#[test]
fn check_refused_token_text_output() {
    let f = Fixture::new();
    let token = f.token(&with_claim(claims(), "token_type", json!("refresh")));
    let (code, out, _) = run(&[
        "check",
        "--token-file",
        &token,
        "--jwks",
        f.jwks(),
        "--workspace",
        WORKSPACE,
        "--op",
        "read",
        "--path",
        PATH,
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("denied") && out.contains("wrong_token_type"),
        "{out}"
    );
}

fn with_claim(mut c: Value, name: &str, value: Value) -> Value {
    c[name] = value;
    c
}

// ----- check: bad input ---------------------------------------------------------------------

fn assert_exit_2(args: &[&str], needles: &[&str]) {
    let (code, out, err) = run(args);
    assert_eq!(code, 2, "{args:?}\nstdout: {out}\nstderr: {err}");
    assert!(out.is_empty(), "{out}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn check_args<'a>(token_flag: &'a str, token: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "check",
        token_flag,
        token,
        "--require",
        "fs:read",
        "--path",
        PATH,
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn check_missing_or_unreadable_token_file_exits_2() {
    let f = Fixture::new();
    let missing = f.dir.path().join("missing.jwt");
    let missing = missing.to_str().unwrap();
    let ws = ["--jwks", f.jwks(), "--workspace", WORKSPACE];
    assert_exit_2(
        &check_args("--token-file", missing, &ws),
        &["missing.jwt", "does not exist", "--token-env"],
    );
    let empty = f.write("empty.jwt", "\n \n");
    assert_exit_2(&check_args("--token-file", &empty, &ws), &["empty"]);
    let json_file = f.write("bundle.json", "{\"accessToken\": \"x\"}");
    assert_exit_2(
        &check_args("--token-file", &json_file, &ws),
        &["--credentials"],
    );
    let dir = f.dir.path().to_str().unwrap();
    assert_exit_2(&check_args("--token-file", dir, &ws), &["directory"]);
    let bad_bundle = f.write("bad.json", "{not json");
    assert_exit_2(&check_args("--credentials", &bad_bundle, &ws), &["JSON"]);
    let no_token = f.write("notoken.json", "{\"refreshToken\": \"r\"}");
    assert_exit_2(
        &check_args("--credentials", &no_token, &ws),
        &["accessToken"],
    );
}

#[test]
fn check_missing_jwks_or_workspace_exits_2() {
    let f = Fixture::new();
    let token = f.token(&claims());
    assert_exit_2(
        &check_args("--token-file", &token, &["--workspace", WORKSPACE]),
        &["--jwks is required"],
    );
    assert_exit_2(
        &check_args("--token-file", &token, &["--jwks", f.jwks()]),
        &["--workspace is required"],
    );
    assert_exit_2(
        &check_args(
            "--token-file",
            &token,
            &["--jwks", f.jwks(), "--workspace", " "],
        ),
        &["--workspace is required"],
    );
}

#[test]
fn check_unusable_jwks_exits_2() {
    let f = Fixture::new();
    let token = f.token(&claims());
    let no_keys = f.write(
        "nokeys.json",
        r#"{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}"#,
    );
    let not_jwks = f.write("notjwks.json", "[]");
    let missing = f.dir.path().join("absent.json");
    for (jwks, needle) in [
        (missing.to_str().unwrap(), "absent.json"),
        (no_keys.as_str(), "no usable key"),
        (not_jwks.as_str(), "not a JWKS"),
        ("http://relayauth.example/.well-known/jwks.json", "https"),
        ("data:application/json;base64,@@@", "base64"),
        ("ftp://example/jwks.json", "scheme"),
        ("", "empty"),
    ] {
        assert_exit_2(
            &check_args(
                "--token-file",
                &token,
                &["--jwks", jwks, "--workspace", WORKSPACE],
            ),
            &["--jwks", needle],
        );
    }
}

#[test]
fn check_flag_conflicts_exit_2() {
    let f = Fixture::new();
    let token = f.token(&claims());
    let (code, _, err) = run(&[
        "check",
        "--scope",
        "fs:read",
        "--token-file",
        &token,
        "--op",
        "read",
        "--path",
        PATH,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = run(&[
        "check",
        "--token-file",
        &token,
        "--token-env",
        "RELAYAUTH_TOKEN",
        "--op",
        "read",
        "--path",
        PATH,
    ]);
    assert_eq!(code, 2, "{err}");
    assert_exit_2(
        &[
            "check",
            "--scope",
            "fs:read",
            "--jwks",
            f.jwks(),
            "--op",
            "read",
            "--path",
            PATH,
        ],
        &["apply only to a token"],
    );
    let (code, _, err) = run(&check_args(
        "--token-file",
        &token,
        &[
            "--jwks",
            f.jwks(),
            "--workspace",
            WORKSPACE,
            "--leeway",
            "soon",
        ],
    ));
    assert_eq!(code, 2, "{err}");
}

// ----- token inspect ------------------------------------------------------------------------

fn inspect(f: &Fixture, token_file: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "token",
        "inspect",
        "--token-file",
        token_file,
        "--jwks",
        f.jwks(),
        "--workspace",
        WORKSPACE,
        "--json",
    ];
    args.extend_from_slice(extra);
    run_json(&args)
}

fn inspected_claims() -> Value {
    with_claim(
        claims(),
        "scopes",
        json!([
            "relayfile:fs:read:/github/**",
            "relayfile:fs:write:/github/repos/acme/api/pulls/*/reviews/*",
            "relayfile:fs:fly:/github/**"
        ]),
    )
}

#[test]
fn token_inspect_json() {
    let f = Fixture::new();
    let token = f.token(&inspected_claims());
    let (code, v) = inspect(&f, &token, &["--org", ORG]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["valid"], true);
    assert_eq!(v["subject"], AGENT);
    assert_eq!(v["sponsor_id"], SPONSOR);
    assert_eq!(v["sponsor_chain"], json!([SPONSOR, AGENT]));
    assert_eq!(v["org"], ORG);
    assert_eq!(v["workspace"], WORKSPACE);
    assert_eq!(v["token_id"], "tok_0001");
    assert_eq!(v["session_id"], "sess_0001");
    assert_eq!(v["algorithm"], "EdDSA");
    assert_eq!(v["key_id"], keys().ed.key().kid());
    assert_eq!(v["expired"], false);
    // Issued a minute ago for an hour.
    assert_eq!(v["expiry"], "expires in 59 minutes");
    let left = v["expires_in_seconds"].as_i64().unwrap();
    assert!((3530..=3540).contains(&left), "{left}");
    assert_eq!(v["claims"]["jti"], "tok_0001");
    let scopes = v["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), 3);
    assert_eq!(
        scopes[0],
        json!({"scope": "relayfile:fs:read:/github/**", "valid": true, "mounts_at": "/github", "problem": null})
    );
    assert_eq!(scopes[1]["valid"], false);
    assert_eq!(scopes[1]["mounts_at"], Value::Null);
    assert!(scopes[1]["problem"].is_string());
    assert_eq!(scopes[2]["valid"], true);
    assert!(
        scopes[2]["problem"].is_string(),
        "an unknown action grants nothing"
    );
}

#[test]
fn token_inspect_text() {
    let f = Fixture::new();
    let token = f.token(&inspected_claims());
    let (code, out, err) = run(&[
        "token",
        "inspect",
        "--token-file",
        &token,
        "--jwks",
        f.jwks(),
        "--workspace",
        WORKSPACE,
    ]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "token: valid (expires in 59 minutes)",
        AGENT,
        "user_alice > agent_coder",
        "relayfile:fs:read:/github/**  valid, mounts at /github",
        "/reviews/*  invalid",
        "grants nothing",
    ] {
        assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    }
}

#[test]
fn token_inspect_within_leeway_shows_expired() {
    let f = Fixture::new();
    let token = f.token(&claims_at(now_secs() - 3610));
    let (code, v) = inspect(&f, &token, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["expired"], true);
    let expiry = v["expiry"].as_str().unwrap();
    assert!(
        expiry.starts_with("expired ") && expiry.ends_with(" seconds ago"),
        "{expiry}"
    );
}

#[test]
fn token_inspect_refused_exits_1_with_code_and_message() {
    let f = Fixture::new();
    let token = f.token(&with_claim(claims(), "aud", json!(["relayauth"])));
    let (code, v) = inspect(&f, &token, &[]);
    assert_eq!(code, 1);
    assert_eq!(v["valid"], false);
    assert_eq!(v["error_code"], "wrong_audience");
    assert!(v["message"].as_str().unwrap().contains("relayfile"));
    let (code, out, _) = run(&[
        "token",
        "inspect",
        "--token-file",
        &token,
        "--jwks",
        f.jwks(),
        "--workspace",
        WORKSPACE,
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("wrong_audience"), "{out}");
}

#[test]
fn token_inspect_bad_input_exits_2() {
    let f = Fixture::new();
    let (code, _, err) = run(&[
        "token",
        "inspect",
        "--jwks",
        f.jwks(),
        "--workspace",
        WORKSPACE,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--token-file"), "{err}");
    let token = f.token(&claims());
    assert_exit_2(
        &[
            "token",
            "inspect",
            "--token-file",
            &token,
            "--workspace",
            WORKSPACE,
        ],
        &["--jwks is required"],
    );
    let missing: PathBuf = Path::new(f.dir.path()).join("nope.jwt");
    assert_exit_2(
        &[
            "token",
            "inspect",
            "--token-file",
            missing.to_str().unwrap(),
            "--jwks",
            f.jwks(),
            "--workspace",
            WORKSPACE,
        ],
        &["nope.jwt"],
    );
}
