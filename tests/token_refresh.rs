//! The refresh client against a local relayauth stand-in that counts calls and rotates
//! single-use refresh tokens: single flight across refreshers (flock) and within one, the atomic
//! 0600 rewrite that keeps unknown members, scopes re-read from the new token, no retry after an
//! ambiguous failure, and the rejections that end a session.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::{Reply, Server};
use common::tokens::*;
use relayauth_mount::relayauth::{RefreshError, RefreshOptions, Refresher, should_refresh};
use relayauth_mount::scope::Requirement;
use relayauth_mount::token::{TokenErrorCode, Verifier};
use serde_json::{Value, json};

const NEW_SCOPE: &str = "relayfile:fs:write:/linear/issues/**";

/// relayauth's refresh endpoint, in miniature: one live refresh token at a time; presenting
/// any other is a reuse (401).
struct Issuer {
    live: String,
    issued: u32,
    /// Workspace put into minted tokens.
    workspace: String,
}

impl Issuer {
    fn rotate(&mut self, presented: &str) -> Reply {
        if presented != self.live {
            return Reply::Json(
                401,
                json!({"error": "refresh token reuse detected", "code": "invalid_grant"})
                    .to_string(),
            );
        }
        self.issued += 1;
        self.live = format!("rt-{}", self.issued);
        let now = now_secs();
        let mut c = claims_at(now);
        c["scopes"] = json!([NEW_SCOPE]);
        c["jti"] = json!(format!("tok_{}", self.issued));
        c["wks"] = json!(self.workspace);
        let access = format!("relay_ag_{}", keys().ed.sign(&c).unwrap());
        Reply::Json(
            200,
            json!({
                "accessToken": access,
                "refreshToken": self.live,
                "accessTokenExpiresAt": "2099-01-01T00:00:00Z",
                "refreshTokenExpiresAt": "2099-01-02T00:00:00Z",
                "tokenType": "Bearer"
            })
            .to_string(),
        )
    }
}

/// A stand-in relayauth whose answers take `delay`.
async fn relayauth(delay: Duration) -> (Server, Arc<Mutex<Issuer>>) {
    let issuer = Arc::new(Mutex::new(Issuer {
        live: "rt-0".into(),
        issued: 0,
        workspace: WORKSPACE.into(),
    }));
    let state = issuer.clone();
    let server = Server::start(move |req| {
        if req.method != "POST" || req.path != "/v1/tokens/refresh" {
            return Reply::Json(404, r#"{"error":"not found"}"#.into());
        }
        let presented = req.json()["refreshToken"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let reply = state.lock().unwrap().rotate(&presented);
        Reply::After(delay, Box::new(reply))
    })
    .await;
    (server, issuer)
}

/// An access token that is due for refresh: 50 of its 60 minutes are gone.
fn due_token() -> String {
    let iat = now_secs() - 3000;
    format!("relay_ag_{}", keys().ed.sign(&claims_at(iat)).unwrap())
}

/// A bundle as relayfile writes it, plus members this crate does not know.
fn write_bundle(dir: &Path, relayauth_url: &str, access: &str) -> PathBuf {
    let path = dir.join("delegated.json");
    let bundle = json!({
        "relayfileUrl": "https://relayfile.test",
        "relayfileWorkspaceId": WORKSPACE,
        "accessToken": access,
        "refreshToken": "rt-0",
        "accessTokenExpiresAt": "2020-01-01T00:00:00Z",
        "refreshTokenExpiresAt": "2099-01-01T00:00:00Z",
        "relayauthUrl": relayauth_url,
        "scopes": ["relayfile:fs:read:/github/**"],
        "agentName": "coder",
        "delegationNotAfter": "2099-01-01T00:00:00Z",
        "custom": {"nested": [1, 2, 3], "keep": true}
    });
    std::fs::write(&path, serde_json::to_string_pretty(&bundle).unwrap()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn shared_verifier() -> Arc<Verifier> {
    Arc::new(verifier_for(&[&keys().ed]))
}

fn refresher(bundle: &Path, verifier: &Arc<Verifier>) -> Refresher {
    refresher_with(bundle, verifier, RefreshOptions::default())
}

fn refresher_with(bundle: &Path, verifier: &Arc<Verifier>, options: RefreshOptions) -> Refresher {
    Refresher::new(bundle, verifier.clone(), options).unwrap()
}

// ----- single flight ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_refreshers_make_one_network_call() {
    let (server, _) = relayauth(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_bundle(dir.path(), &server.url(""), &due_token());
    let inode_before = std::fs::metadata(&path).unwrap().ino();
    let verifier = shared_verifier();
    // Two refreshers on one bundle stand for two processes: they share nothing but the files.
    let a = refresher(&path, &verifier);
    let b = refresher(&path, &verifier);
    let (ra, rb) = tokio::join!(
        tokio::spawn(async move { a.refresh().await }),
        tokio::spawn(async move { b.refresh().await })
    );
    let (ra, rb) = (ra.unwrap().unwrap(), rb.unwrap().unwrap());

    assert_eq!(
        server.hits(),
        1,
        "exactly one refresh call reached relayauth"
    );
    assert_eq!(
        [ra.network, rb.network].iter().filter(|n| **n).count(),
        1,
        "one refresher rotated, the other adopted its pair"
    );
    assert_eq!(ra.token.raw(), rb.token.raw());
    assert_eq!(ra.token.token_id(), "tok_1");
    assert!(ra.token.raw().starts_with("relay_ag_"));

    // The bundle holds the new pair, was replaced by a rename, is 0600, and kept everything else.
    let bundle = read_json(&path);
    assert_eq!(bundle["accessToken"], ra.token.raw());
    assert_eq!(bundle["refreshToken"], "rt-1");
    assert_eq!(bundle["accessTokenExpiresAt"], "2099-01-01T00:00:00Z");
    assert_eq!(bundle["custom"], json!({"nested": [1, 2, 3], "keep": true}));
    assert_eq!(bundle["relayfileUrl"], "https://relayfile.test");
    assert_eq!(bundle["agentName"], "coder");
    assert_eq!(bundle["relayauthUrl"], server.url(""));
    assert!(bundle["updatedAt"].is_string());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_ne!(
        meta.ino(),
        inode_before,
        "replaced by rename, not rewritten in place"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["delegated.json", "delegated.json.lock"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresher_shared_by_many_tasks_makes_one_call() {
    let (server, _) = relayauth(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_bundle(dir.path(), &server.url(""), &due_token());
    let r = Arc::new(refresher(&path, &shared_verifier()));
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.refresh().await })
        })
        .collect();
    let mut raws = Vec::new();
    for t in tasks {
        raws.push(t.await.unwrap().unwrap().token.raw().to_owned());
    }
    assert_eq!(server.hits(), 1);
    raws.dedup();
    assert_eq!(raws.len(), 1);
}

#[tokio::test]
async fn refreshing_twice_in_a_row_rotates_each_time_only_when_due() {
    let (server, issuer) = relayauth(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_bundle(dir.path(), &server.url(""), &due_token());
    let r = refresher(&path, &shared_verifier());
    assert!(r.refresh().await.unwrap().network);
    // The new token is fresh: a second call adopts it without a network call.
    let again = r.refresh().await.unwrap();
    assert!(!again.network);
    assert_eq!(server.hits(), 1);
    assert_eq!(issuer.lock().unwrap().live, "rt-1");
}

#[tokio::test]
async fn a_fresh_bundle_needs_no_network_call() {
    let (server, _) = relayauth(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let fresh = keys().ed.sign(&claims()).unwrap();
    let path = write_bundle(dir.path(), &server.url(""), &fresh);
    let before = std::fs::read(&path).unwrap();
    let out = refresher(&path, &shared_verifier())
        .refresh()
        .await
        .unwrap();
    assert!(!out.network);
    assert_eq!(out.token.raw(), fresh);
    assert_eq!(server.hits(), 0);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the bundle is untouched"
    );
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed() {
    let (server, _) = relayauth(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let expired = keys().ed.sign(&claims_at(now_secs() - 7200)).unwrap();
    let path = write_bundle(dir.path(), &server.url(""), &expired);
    let out = refresher(&path, &shared_verifier())
        .refresh()
        .await
        .unwrap();
    assert!(out.network);
    assert_eq!(server.hits(), 1);
}

// ----- scopes and verification --------------------------------------------------------------

#[tokio::test]
async fn scopes_are_reread_from_the_new_token() {
    let (server, _) = relayauth(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_bundle(dir.path(), &server.url(""), &due_token());
    let out = refresher(&path, &shared_verifier())
        .refresh()
        .await
        .unwrap();
    let write = Requirement::parse("fs:write").unwrap();
    let read = Requirement::parse("fs:read").unwrap();
    assert_eq!(out.token.claims().scopes, [NEW_SCOPE]);
    assert!(
        out.token
            .scopes()
            .check(&write, "/linear/issues/9.json")
            .is_some()
    );
    assert!(out.token.scopes().check(&read, "/github/x.json").is_none());
    // The bundle's own `scopes` member is relayfile's record and stays as it was.
    assert_eq!(
        read_json(&path)["scopes"],
        json!(["relayfile:fs:read:/github/**"])
    );
    assert_eq!(out.credentials.access_token, out.token.raw());
}

#[tokio::test]
async fn a_refused_new_token_is_still_persisted_but_not_used() {
    let (server, issuer) = relayauth(Duration::ZERO).await;
    issuer.lock().unwrap().workspace = "ws_other".into();
    let dir = tempfile::tempdir().unwrap();
    let path = write_bundle(dir.path(), &server.url(""), &due_token());
    let e = refresher(&path, &shared_verifier())
        .refresh()
        .await
        .unwrap_err();
    match e {
        RefreshError::Verify(t) => assert_eq!(t.code, TokenErrorCode::WrongWorkspace),
        other => panic!("expected Verify, got {other}"),
    }
    // relayauth consumed rt-0: the bundle must hold rt-1, or the next start would reuse rt-0.
    assert_eq!(read_json(&path)["refreshToken"], "rt-1");
}

// ----- failures -----------------------------------------------------------------------------

async fn assert_no_retry_after(reply: fn() -> Reply, options: RefreshOptions) {
    let server = Server::start(move |_| reply()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_bundle(dir.path(), &server.url(""), &due_token());
    let before = std::fs::read(&path).unwrap();
    let verifier = shared_verifier();
    let r = refresher_with(&path, &verifier, options.clone());
    let e = r.refresh().await.unwrap_err();
    assert!(matches!(e, RefreshError::Ambiguous { .. }), "{e}");
    assert!(e.to_string().contains("spent"), "{e}");
    assert_eq!(server.hits(), 1);
    // The same refresher will not send that refresh token again...
    let e = r.refresh().await.unwrap_err();
    assert!(matches!(e, RefreshError::Spent { .. }), "{e}");
    assert!(e.is_terminal());
    // ...and neither will another process (a new refresher reading the lock file).
    let other = refresher_with(&path, &verifier, options);
    let e = other.refresh().await.unwrap_err();
    assert!(matches!(e, RefreshError::Spent { .. }), "{e}");
    assert_eq!(server.hits(), 1, "the refresh token was sent exactly once");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the bundle is untouched"
    );
}

#[tokio::test]
async fn a_refresh_token_never_follows_a_redirect() {
    let elsewhere = Server::start(|_| Reply::Json(200, "{}".into())).await;
    let target = elsewhere.url("/v1/tokens/refresh");
    let server = Server::start(move |_| Reply::Redirect(307, target.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_bundle(dir.path(), &server.url(""), &due_token());
    let verifier = shared_verifier();
    let e = refresher(&path, &verifier).refresh().await.unwrap_err();
    assert_eq!(server.hits(), 1);
    assert_eq!(
        elsewhere.hits(),
        0,
        "the refresh token went to another host: {e}"
    );
}

#[tokio::test]
async fn a_connection_dropped_after_sending_is_not_retried() {
    assert_no_retry_after(|| Reply::Drop, RefreshOptions::default()).await;
}

#[tokio::test]
async fn a_5xx_is_not_retried() {
    assert_no_retry_after(
        || Reply::Json(503, r#"{"error":"unavailable"}"#.into()),
        RefreshOptions::default(),
    )
    .await;
}

#[tokio::test]
async fn a_timeout_is_not_retried() {
    assert_no_retry_after(
        || {
            Reply::After(
                Duration::from_secs(5),
                Box::new(Reply::Json(200, "{}".into())),
            )
        },
        RefreshOptions {
            timeout: Duration::from_millis(300),
            ..RefreshOptions::default()
        },
    )
    .await;
}

#[tokio::test]
async fn a_2xx_without_a_pair_is_not_retried() {
    assert_no_retry_after(
        || Reply::Json(200, r#"{"accessToken": ""}"#.into()),
        RefreshOptions::default(),
    )
    .await;
}

#[tokio::test]
async fn session_ending_rejections_are_terminal() {
    for (status, body, code) in [
        (
            401,
            r#"{"error":"delegation expired","code":"delegation_expired"}"#,
            "delegation_expired",
        ),
        (
            401,
            r#"{"error":"Workspace token has been revoked","code":"workspace_token_revoked"}"#,
            "workspace_token_revoked",
        ),
        (
            404,
            r#"{"error":"Identity not found","code":"identity_not_found"}"#,
            "identity_not_found",
        ),
        (
            401,
            r#"{"error":"invalid_grant","error_description":"refresh token reused"}"#,
            "invalid_grant",
        ),
        (
            401,
            r#"{"error":"Refresh token has been revoked","code":"token_revoked"}"#,
            "token_revoked",
        ),
        (
            403,
            r#"{"code":"delegation_expired"}"#,
            "delegation_expired",
        ),
    ] {
        let server = Server::start(move |_| Reply::Json(status, body.into())).await;
        let dir = tempfile::tempdir().unwrap();
        let path = write_bundle(dir.path(), &server.url(""), &due_token());
        let before = std::fs::read(&path).unwrap();
        let r = refresher(&path, &shared_verifier());
        let e = r.refresh().await.unwrap_err();
        match &e {
            RefreshError::Terminal {
                status: s, code: c, ..
            } => {
                assert_eq!((*s, c.as_str()), (status, code), "{e}");
            }
            other => panic!("{status} {body}: expected Terminal, got {other}"),
        }
        assert!(e.is_terminal());
        assert_eq!(e.code(), Some(code));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // A dead refresh token is not presented again either.
        assert!(matches!(r.refresh().await, Err(RefreshError::Spent { .. })));
        assert_eq!(server.hits(), 1);
    }
}

#[tokio::test]
async fn other_rejections_are_not_terminal_and_may_be_retried() {
    for (status, body) in [
        (429, r#"{"error":"slow down","code":"rate_limited"}"#),
        (400, r#"{"error":"refreshToken is required"}"#),
        (404, r#"not found"#),
    ] {
        let server = Server::start(move |_| Reply::Json(status, body.into())).await;
        let dir = tempfile::tempdir().unwrap();
        let path = write_bundle(dir.path(), &server.url(""), &due_token());
        let r = refresher(&path, &shared_verifier());
        let e = r.refresh().await.unwrap_err();
        assert!(matches!(e, RefreshError::Rejected { .. }), "{status}: {e}");
        assert!(!e.is_terminal());
        // The refresh token was refused before use, so trying again is allowed.
        assert!(r.refresh().await.is_err());
        assert_eq!(server.hits(), 2, "{status}");
    }
}

#[tokio::test]
async fn an_unreachable_relayauth_is_a_transport_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_bundle(
        dir.path(),
        &format!("http://127.0.0.1:{port}"),
        &due_token(),
    );
    let r = refresher(&path, &shared_verifier());
    let e = r.refresh().await.unwrap_err();
    assert!(matches!(e, RefreshError::Transport { .. }), "{e}");
    assert!(!e.is_terminal());
    // Nothing was sent, so the token is not spent.
    assert!(matches!(
        r.refresh().await,
        Err(RefreshError::Transport { .. })
    ));
}

// ----- endpoints and bundles ----------------------------------------------------------------

#[tokio::test]
async fn refresh_url_and_the_relayauth_url_option_choose_the_endpoint() {
    let (server, _) = relayauth(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    // refreshUrl wins over relayauthUrl (which points nowhere here).
    let path = write_bundle(dir.path(), "http://127.0.0.1:9", &due_token());
    let mut b = read_json(&path);
    b["refreshUrl"] = json!(server.url("/v1/tokens/refresh"));
    std::fs::write(&path, b.to_string()).unwrap();
    assert!(refresher(&path, &shared_verifier()).refresh().await.is_ok());
    assert_eq!(server.hits(), 1);

    // The option wins over both.
    let (server2, _) = relayauth(Duration::ZERO).await;
    let dir2 = tempfile::tempdir().unwrap();
    let path2 = write_bundle(dir2.path(), "http://127.0.0.1:9", &due_token());
    let options = RefreshOptions {
        relayauth_url: Some(server2.url("/")),
        ..RefreshOptions::default()
    };
    assert!(
        refresher_with(&path2, &shared_verifier(), options)
            .refresh()
            .await
            .is_ok()
    );
    assert_eq!(server2.hits(), 1);
}

#[tokio::test]
async fn a_refresh_token_is_never_sent_over_plain_http_to_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_bundle(dir.path(), "http://relayauth.example", &due_token());
    let e = refresher(&path, &shared_verifier())
        .refresh()
        .await
        .unwrap_err();
    assert!(matches!(e, RefreshError::BadEndpoint(_)), "{e}");
    assert!(e.to_string().contains("https"), "{e}");
}

#[tokio::test]
async fn a_bundle_without_refresh_token_or_endpoint_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_bundle(dir.path(), "http://127.0.0.1:9", &due_token());
    let mut b = read_json(&path);
    b.as_object_mut().unwrap().remove("refreshToken");
    std::fs::write(&path, b.to_string()).unwrap();
    let e = refresher(&path, &shared_verifier())
        .refresh()
        .await
        .unwrap_err();
    assert!(matches!(e, RefreshError::NoRefreshToken { .. }), "{e}");

    let mut b = read_json(&path);
    b["refreshToken"] = json!("rt-0");
    b.as_object_mut().unwrap().remove("relayauthUrl");
    std::fs::write(&path, b.to_string()).unwrap();
    let e = refresher(&path, &shared_verifier())
        .refresh()
        .await
        .unwrap_err();
    assert!(matches!(e, RefreshError::NoEndpoint { .. }), "{e}");
    assert!(e.to_string().contains("--relayauth-url"), "{e}");
}

#[tokio::test]
async fn aliased_members_are_read_and_rewritten_canonically() {
    let (server, _) = relayauth(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creds.json");
    std::fs::write(
        &path,
        json!({
            "relayfileToken": due_token(),
            "relayfileRefreshToken": "rt-0",
            "relayfileTokenExpiresAt": "2020-01-01T00:00:00Z",
            "relayauthUrl": server.url(""),
            "workspaceId": WORKSPACE,
            "leaseId": "lease_1"
        })
        .to_string(),
    )
    .unwrap();
    let out = refresher(&path, &shared_verifier())
        .refresh()
        .await
        .unwrap();
    assert!(out.network);
    let b = read_json(&path);
    assert_eq!(b["accessToken"], out.token.raw());
    assert_eq!(b["refreshToken"], "rt-1");
    assert!(b.get("relayfileToken").is_none());
    assert!(b.get("relayfileRefreshToken").is_none());
    assert_eq!(b["leaseId"], "lease_1");
    assert_eq!(b["workspaceId"], WORKSPACE);
}

#[tokio::test]
async fn a_symlinked_bundle_is_rewritten_at_its_target() {
    let (server, _) = relayauth(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("real");
    std::fs::create_dir(&real_dir).unwrap();
    let real = write_bundle(&real_dir, &server.url(""), &due_token());
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let r = refresher(&link, &shared_verifier());
    assert!(
        r.lock_path()
            .starts_with(std::fs::canonicalize(&real_dir).unwrap())
    );
    r.refresh().await.unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(read_json(&real)["refreshToken"], "rt-1");
}

// ----- when to refresh ----------------------------------------------------------------------

#[test]
fn should_refresh_after_80_percent_of_the_lifetime() {
    let iat = 1_900_000_000;
    let token = keys().ed.sign(&claims_at(iat)).unwrap(); // one hour
    let v = verifier_for(&[&keys().ed]);
    let t = v.verify(&token, at(iat)).unwrap();
    assert!(!should_refresh(&t, at(iat)));
    assert!(!should_refresh(&t, at(iat + 2879)));
    assert!(should_refresh(&t, at(iat + 2880)));
    assert!(should_refresh(&t, at(iat + 3600)));
}
