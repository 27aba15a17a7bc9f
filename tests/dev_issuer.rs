//! The development issuer over real HTTP on loopback, started in-process: every endpoint, the
//! two delegation seed cases, refresh rotation and reuse detection, TTL defaults, cap and
//! propagation, suspension, revocation (and its cascade to delegated sessions), introspection
//! with each kind of credential, persistence across a restart, malformed requests, and
//! verification of minted tokens of both algorithms with the project's verifier.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use relayauth_mount::issuer::{IssuerConfig, RunningIssuer, Seed, serve};
use relayauth_mount::token::{
    JwksCache, JwksSource, KeyAlgorithm, PublicJwk, Verifier, VerifierConfig, thumbprint,
};
use reqwest::Method;
use serde_json::{Value, json};

const KEY: &str = "test-admin-key";
const ORG: &str = "org_acme";
const WS: &str = "ws_acme";
const SPONSOR: &str = "user_alice";
const READ_GITHUB: &str = "relayfile:fs:read:/github/*";
const WRITE_REVIEWS: &str = "relayfile:fs:write:/github/*/reviews/*";
const NARROW: &str = "relayfile:fs:read:/github/repos/acme/api/pulls/*";
const SLACK: &str = "relayfile:fs:write:/slack/*";
const TOKEN_READ: &str = "relayauth:token:read:*";

/// A running issuer and a client for it.
struct Dev {
    running: RunningIssuer,
    http: reqwest::Client,
}

/// An answer: status and JSON body (`Value::Null` for an empty body).
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }

    fn str(&self, key: &str) -> String {
        self.body[key]
            .as_str()
            .unwrap_or_else(|| panic!("no string {key} in {}", self.body))
            .to_owned()
    }
}

fn config() -> IssuerConfig {
    IssuerConfig::new(KEY)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The payload of a JWT, not verified (for reading what the issuer put in it).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn header(token: &str) -> Value {
    let h = token.split('.').next().expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON header")
}

/// Seconds since the epoch of an RFC 3339 `...Z` time, as the issuer writes them.
fn rfc3339_secs(text: &str) -> u64 {
    let b = text.as_bytes();
    assert!(
        text.len() == 20 && b[19] == b'Z',
        "not a whole-second UTC time: {text}"
    );
    let n = |r: std::ops::Range<usize>| text[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) as u64
}

impl Dev {
    async fn start() -> Dev {
        Dev::with(config()).await
    }

    async fn with(config: IssuerConfig) -> Dev {
        let running = serve(config).await.expect("issuer starts");
        Dev {
            running,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        let mut req = self.http.request(method, self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_vec());
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{path} answered non-JSON ({e}): {text:?}"))
        };
        Answer { status, body }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let bytes = body.map(|b| b.to_string().into_bytes());
        self.send(method, path, &[("x-api-key", KEY)], bytes.as_deref())
            .await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(Method::POST, path, &[], Some(body.to_string().as_bytes()))
            .await
    }

    async fn bearer(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Answer {
        let auth = format!("Bearer {token}");
        let bytes = body.map(|b| b.to_string().into_bytes());
        self.send(method, path, &[("authorization", &auth)], bytes.as_deref())
            .await
    }

    async fn create(&self, name: &str, scopes: &[&str]) -> Value {
        let a = self
            .admin(
                Method::POST,
                "/v1/identities",
                Some(json!({"name": name, "orgId": ORG, "workspaceId": WS, "sponsorId": SPONSOR, "scopes": scopes})),
            )
            .await;
        assert_eq!(a.status, 201, "{a:?}");
        a.body
    }

    async fn mint(&self, body: Value) -> Answer {
        self.admin(Method::POST, "/v1/tokens", Some(body)).await
    }

    /// A pair for `identity` (default settings).
    async fn pair(&self, identity: &str) -> Value {
        let a = self.mint(json!({"identityId": identity})).await;
        assert_eq!(a.status, 201, "{a:?}");
        a.body
    }

    async fn refresh(&self, refresh_token: &str) -> Answer {
        self.post("/v1/tokens/refresh", json!({"refreshToken": refresh_token}))
            .await
    }

    async fn delegate(&self, parent: &str, name: &str, scopes: &[&str], ttl: u64) -> Answer {
        self.bearer(
            Method::POST,
            "/v1/tokens/delegate",
            parent,
            Some(json!({"agentName": name, "requestedScopes": scopes, "ttlSeconds": ttl})),
        )
        .await
    }

    async fn revoked(&self, jti: &str) -> bool {
        let a = self
            .admin(
                Method::GET,
                &format!("/v1/tokens/revocation?jti={jti}"),
                None,
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        a.body["revoked"].as_bool().expect("revoked is a bool")
    }

    /// Introspection with the admin key.
    async fn introspect(&self, token: &str) -> Value {
        let a = self
            .admin(
                Method::GET,
                &format!("/v1/tokens/introspect?token={token}"),
                None,
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        a.body
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let a = self
            .admin(Method::GET, &format!("/v1/audit?{query}"), None)
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        a.body["entries"].as_array().expect("entries").clone()
    }

    /// A verifier for this issuer's tokens, its keys fetched from the JWKS URL as a mount does.
    async fn verifier(&self, workspace: &str) -> Verifier {
        let source = JwksSource::parse(&self.running.jwks_url()).expect("JWKS URL");
        let cache = JwksCache::load(source).await.expect("JWKS loads");
        let mut config = VerifierConfig::new(workspace);
        config.issuer = self.running.iss().to_owned();
        config.org = Some(ORG.to_owned());
        Verifier::new(config, Arc::new(cache))
    }
}

#[tokio::test]
async fn jwks_publishes_both_keys_with_thumbprint_kids() {
    let dev = Dev::start().await;
    let a = dev
        .send(Method::GET, "/.well-known/jwks.json", &[], None)
        .await;
    assert_eq!(a.status, 200);
    let keys = a.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let algs: BTreeSet<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert_eq!(algs, BTreeSet::from(["EdDSA", "RS256"]));
    for k in keys {
        assert!(
            k.get("d").is_none() && k.get("p").is_none(),
            "private part published: {k}"
        );
        let public = PublicJwk::from_value(k).unwrap();
        assert_eq!(k["kid"].as_str().unwrap(), thumbprint(&public));
        assert_eq!(k["use"], "sig");
    }
    let h = dev.send(Method::GET, "/health", &[], None).await;
    assert_eq!((h.status, &h.body["iss"]), (200, &json!("relayauth:dev")));
}

#[tokio::test]
async fn identities_are_created_read_and_guarded_by_the_admin_key() {
    let dev = Dev::start().await;
    let body = json!({"name": "lead", "orgId": ORG, "workspaceId": WS, "sponsorId": SPONSOR, "scopes": [READ_GITHUB]});
    let none = dev.post("/v1/identities", body.clone()).await;
    assert_eq!((none.status, none.code()), (401, "unauthorized"));
    let wrong = dev
        .send(
            Method::POST,
            "/v1/identities",
            &[("x-api-key", "nope")],
            Some(body.to_string().as_bytes()),
        )
        .await;
    assert_eq!((wrong.status, wrong.code()), (401, "unauthorized"));

    let lead = dev
        .admin(Method::POST, "/v1/identities", Some(body.clone()))
        .await;
    assert_eq!(lead.status, 201, "{lead:?}");
    let id = lead.str("id");
    assert!(id.starts_with("agent_"), "{id}");
    assert_eq!(lead.body["sponsorChain"], json!([SPONSOR, id]));
    assert_eq!(lead.body["status"], "active");
    assert_eq!(lead.body["scopes"], json!([READ_GITHUB]));
    assert!(rfc3339_secs(&lead.str("createdAt")).abs_diff(now()) < 300);

    let got = dev
        .admin(Method::GET, &format!("/v1/identities/{id}"), None)
        .await;
    assert_eq!((got.status, &got.body), (200, &lead.body));
    let missing = dev
        .admin(Method::GET, "/v1/identities/agent_nope", None)
        .await;
    assert_eq!(
        (missing.status, missing.code()),
        (404, "identity_not_found")
    );
    let unauth = dev
        .send(Method::GET, &format!("/v1/identities/{id}"), &[], None)
        .await;
    assert_eq!(unauth.status, 401);

    // Same name in the same place: a conflict naming the existing id.
    let again = dev.admin(Method::POST, "/v1/identities", Some(body)).await;
    assert_eq!((again.status, again.code()), (409, "conflict"));
    assert_eq!(again.body["id"], json!(id));

    // snake_case aliases, and a sponsor chain naming the lead by name.
    let bot = dev
        .admin(
            Method::POST,
            "/v1/identities",
            Some(
                json!({"name": "bot", "org_id": ORG, "workspace_id": WS, "sponsor_id": SPONSOR,
                        "sponsor_chain": [SPONSOR, "lead", "bot"], "scopes": [NARROW]}),
            ),
        )
        .await;
    assert_eq!(bot.status, 201, "{bot:?}");
    let bot_id = bot.str("id");
    assert_eq!(bot.body["sponsorChain"], json!([SPONSOR, id, bot_id]));
    assert_eq!(bot.body["parentIdentityId"], json!(id));

    let bad_chain = dev
        .admin(
            Method::POST,
            "/v1/identities",
            Some(json!({"name": "x", "orgId": ORG, "workspaceId": WS, "sponsorId": SPONSOR, "sponsorChain": ["someone_else"]})),
        )
        .await;
    assert_eq!(
        (bad_chain.status, bad_chain.code()),
        (400, "invalid_request")
    );
    let long: Vec<String> = std::iter::once(SPONSOR.to_owned())
        .chain((0..10).map(|i| format!("agent_{i}")))
        .collect();
    let too_long = dev
        .admin(
            Method::POST,
            "/v1/identities",
            Some(json!({"name": "deep", "orgId": ORG, "workspaceId": WS, "sponsorId": SPONSOR, "sponsorChain": long})),
        )
        .await;
    assert_eq!((too_long.status, too_long.code()), (400, "invalid_request"));

    let created: Vec<Value> = dev.audit("action=identity.created").await;
    assert_eq!(created.len(), 2);
    assert_eq!(created[0]["identityId"], json!(bot_id));
    assert_eq!(created[1]["identityId"], json!(id));
}

/// Mint with `alg`, check every claim DESIGN section 5 lists, and verify with the project's
/// verifier (and refuse the refresh token there).
async fn minted_tokens_verify(alg: KeyAlgorithm) {
    let mut cfg = config();
    cfg.algorithm = alg;
    let dev = Dev::with(cfg).await;
    let lead = dev.create("lead", &[READ_GITHUB, WRITE_REVIEWS]).await;
    let id = lead["id"].as_str().unwrap();
    let before = now();
    let pair = dev.pair(id).await;
    let access = pair["accessToken"].as_str().unwrap();
    let refresh = pair["refreshToken"].as_str().unwrap();
    assert_eq!(pair["tokenType"], "Bearer");
    assert_eq!(header(access)["alg"], alg.as_str());

    let c = claims(access);
    let names: BTreeSet<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "sub",
            "org",
            "wks",
            "scopes",
            "sponsorId",
            "sponsorChain",
            "aud",
            "exp",
            "iat",
            "nbf",
            "jti",
            "sid",
            "token_type",
            "meta",
            "iss"
        ])
    );
    assert_eq!(c["sub"], json!(id));
    assert_eq!(
        (c["org"].as_str(), c["wks"].as_str()),
        (Some(ORG), Some(WS))
    );
    assert_eq!(c["scopes"], json!([READ_GITHUB, WRITE_REVIEWS]));
    assert_eq!(c["sponsorId"], SPONSOR);
    assert_eq!(c["sponsorChain"], json!([SPONSOR, id]));
    assert_eq!(c["aud"], json!(["relayfile"]));
    assert_eq!(c["token_type"], "access");
    assert_eq!(c["iss"], "relayauth:dev");
    assert!(c["jti"].as_str().unwrap().starts_with("tok_"));
    assert!(c["sid"].as_str().unwrap().starts_with("sess_"));
    let iat = c["iat"].as_u64().unwrap();
    assert!(iat >= before && iat <= now());
    assert_eq!(c["nbf"].as_u64(), Some(iat));
    assert_eq!(
        c["exp"].as_u64(),
        Some(iat + 3600),
        "access TTL defaults to 1 h"
    );
    assert_eq!(c["meta"], json!({"refreshTokenTtl": "86400"}));
    assert_eq!(
        rfc3339_secs(pair["accessTokenExpiresAt"].as_str().unwrap()),
        iat + 3600
    );

    let r = claims(refresh);
    assert_eq!(r["token_type"], "refresh");
    assert_eq!((&r["sid"], &r["sub"]), (&c["sid"], &c["sub"]));
    assert_ne!(r["jti"], c["jti"]);
    assert_eq!(
        r["exp"].as_u64(),
        Some(iat + 86_400),
        "refresh TTL defaults to 24 h"
    );
    assert_eq!(r["meta"], c["meta"]);
    assert_eq!(
        rfc3339_secs(pair["refreshTokenExpiresAt"].as_str().unwrap()),
        iat + 86_400
    );

    let verifier = dev.verifier(WS).await;
    let verified = verifier
        .verify(access, SystemTime::now())
        .expect("the access token verifies");
    assert_eq!(verified.algorithm(), alg);
    assert_eq!(verified.subject(), id);
    assert_eq!(verified.session_id(), c["sid"].as_str().unwrap());
    assert_eq!(verified.sponsor_chain(), [SPONSOR, id]);
    let e = verifier.verify(refresh, SystemTime::now()).unwrap_err();
    assert_eq!(e.code.as_str(), "wrong_token_type");
    let other_ws = dev.verifier("ws_other").await;
    assert_eq!(
        other_ws
            .verify(access, SystemTime::now())
            .unwrap_err()
            .code
            .as_str(),
        "wrong_workspace"
    );
}

#[tokio::test]
async fn minted_rs256_tokens_verify() {
    minted_tokens_verify(KeyAlgorithm::Rs256).await;
}

#[tokio::test]
async fn minted_eddsa_tokens_verify() {
    minted_tokens_verify(KeyAlgorithm::EdDsa).await;
}

#[tokio::test]
async fn requested_scopes_audience_and_lifetimes_are_checked() {
    let dev = Dev::start().await;
    // The identity holds the seed scope that is invalid under the path contract.
    let lead = dev.create("lead", &[READ_GITHUB, WRITE_REVIEWS]).await;
    let id = lead["id"].as_str().unwrap();

    let narrow = dev
        .mint(json!({"identity_id": id, "scopes": [NARROW], "expires_in": 120}))
        .await;
    assert_eq!(narrow.status, 201, "{narrow:?}");
    let c = claims(&narrow.str("accessToken"));
    assert_eq!(c["scopes"], json!([NARROW]));
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 120);

    // A scope held word for word is grantable even when it grants nothing.
    let verbatim = dev
        .mint(json!({"identityId": id, "scopes": [WRITE_REVIEWS]}))
        .await;
    assert_eq!(verbatim.status, 201, "{verbatim:?}");

    let wide = dev
        .mint(json!({"identityId": id, "scopes": [NARROW, SLACK]}))
        .await;
    assert_eq!((wide.status, wide.code()), (403, "insufficient_scope"));
    assert_eq!(wide.body["offending"], json!([SLACK]));
    assert!(wide.str("error").contains(SLACK), "{wide:?}");

    let aud = dev
        .mint(json!({"identityId": id, "audience": "relayfile"}))
        .await;
    assert_eq!(aud.status, 201);
    assert_eq!(claims(&aud.str("accessToken"))["aud"], json!(["relayfile"]));
    let aud2 = dev
        .mint(json!({"identityId": id, "audience": ["relayfile", "relayauth"]}))
        .await;
    assert_eq!(
        claims(&aud2.str("accessToken"))["aud"],
        json!(["relayfile", "relayauth"])
    );
    let foreign = dev
        .mint(json!({"identityId": id, "audience": ["elsewhere"]}))
        .await;
    assert_eq!((foreign.status, foreign.code()), (400, "invalid_request"));

    for bad in [
        json!({"identityId": id, "expiresIn": 0}),
        json!({"identityId": id, "expiresIn": 100 * 86_400}),
        json!({"identityId": id, "expiresIn": -5}),
        json!({"identityId": id, "refreshTokenTtlSeconds": 0}),
        json!({"identityId": id, "scopes": []}),
        json!({"identityId": id, "scopes": "relayfile:fs:read:*"}),
        json!({"scopes": [NARROW]}),
    ] {
        let a = dev.mint(bad.clone()).await;
        assert_eq!(
            (a.status, a.code()),
            (400, "invalid_request"),
            "{bad}: {a:?}"
        );
    }
    let unknown = dev.mint(json!({"identityId": "agent_nope"})).await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (404, "identity_not_found")
    );
    let unauth = dev.post("/v1/tokens", json!({"identityId": id})).await;
    assert_eq!(unauth.status, 401);
}

#[tokio::test]
async fn refresh_ttl_defaults_caps_and_carries_through_rotation() {
    let dev = Dev::start().await;
    let lead = dev.create("lead", &[READ_GITHUB]).await;
    let id = lead["id"].as_str().unwrap();

    // A chosen refresh TTL is recorded on both tokens and re-applied at every rotation, as is
    // the access lifetime.
    let pair = dev
        .mint(json!({"identityId": id, "refreshTokenTtlSeconds": 7200, "expiresIn": 300}))
        .await;
    assert_eq!(pair.status, 201);
    let mut refresh = pair.str("refreshToken");
    let sid = claims(&pair.str("accessToken"))["sid"].clone();
    for round in 0..3 {
        let next = dev.refresh(&refresh).await;
        assert_eq!(next.status, 200, "round {round}: {next:?}");
        let a = claims(&next.str("accessToken"));
        let r = claims(&next.str("refreshToken"));
        assert_eq!(a["meta"], json!({"refreshTokenTtl": "7200"}));
        assert_eq!(r["meta"], a["meta"]);
        assert_eq!(a["sid"], sid);
        assert_eq!(a["exp"].as_u64().unwrap() - a["iat"].as_u64().unwrap(), 300);
        assert_eq!(
            r["exp"].as_u64().unwrap() - r["iat"].as_u64().unwrap(),
            7200
        );
        assert_eq!(
            rfc3339_secs(&next.str("refreshTokenExpiresAt")),
            r["exp"].as_u64().unwrap()
        );
        refresh = next.str("refreshToken");
    }

    // Above 90 days: capped.
    let capped = dev
        .mint(json!({"identityId": id, "refreshTokenTtlSeconds": 200 * 86_400}))
        .await;
    assert_eq!(capped.status, 201);
    let r = claims(&capped.str("refreshToken"));
    assert_eq!(r["meta"], json!({"refreshTokenTtl": "7776000"}));
    assert_eq!(
        r["exp"].as_u64().unwrap() - r["iat"].as_u64().unwrap(),
        7_776_000
    );
    let rotated = dev.refresh(&capped.str("refreshToken")).await;
    let r2 = claims(&rotated.str("refreshToken"));
    assert_eq!(
        r2["exp"].as_u64().unwrap() - r2["iat"].as_u64().unwrap(),
        7_776_000
    );
}

#[tokio::test]
async fn refresh_is_single_use_and_a_reuse_revokes_the_session() {
    let dev = Dev::start().await;
    let lead = dev.create("lead", &[READ_GITHUB]).await;
    let id = lead["id"].as_str().unwrap();
    let first = dev.pair(id).await;
    let (a1, r1) = (
        first["accessToken"].as_str().unwrap().to_owned(),
        first["refreshToken"].as_str().unwrap().to_owned(),
    );
    let c1 = claims(&a1);

    let second = dev.refresh(&r1).await;
    assert_eq!(second.status, 200, "{second:?}");
    let (a2, r2) = (second.str("accessToken"), second.str("refreshToken"));
    let c2 = claims(&a2);
    assert_eq!(c2["sid"], c1["sid"], "the session id is kept");
    assert_ne!(c2["jti"], c1["jti"]);
    assert!(c2.get("parentTokenId").is_none());
    assert_ne!(r2, r1);
    // The rotation did not revoke the older access token by itself.
    assert_ne!(dev.introspect(&a1).await, Value::Null);

    // A second use of r1 is a reuse: 401 with a reuse code, and the whole session dies.
    let reuse = dev.refresh(&r1).await;
    assert_eq!((reuse.status, reuse.code()), (401, "refresh_token_reused"));
    for jti in [&c1["jti"], &c2["jti"]] {
        assert!(dev.revoked(jti.as_str().unwrap()).await, "{jti} revoked");
    }
    assert_eq!(dev.introspect(&a2).await, Value::Null);
    let after = dev.refresh(&r2).await;
    assert_eq!((after.status, after.code()), (401, "session_revoked"));

    let reused = dev.audit("action=token.reuse_detected").await;
    assert_eq!(reused.len(), 1);
    assert_eq!(reused[0]["identityId"], json!(id));
    assert_eq!(reused[0]["result"], "denied");
    assert_eq!(reused[0]["metadata"]["sessionId"], c1["sid"]);
    assert_eq!(dev.audit("action=token.refreshed").await.len(), 1);

    // Not a refresh token of this issuer, or an access token: 401.
    let junk = dev.refresh("not-a-token").await;
    assert_eq!((junk.status, junk.code()), (401, "invalid_token"));
    let access = dev.refresh(&a1).await;
    assert_eq!(access.status, 401);
    let empty = dev
        .post("/v1/tokens/refresh", json!({"refresh_token": ""}))
        .await;
    assert_eq!((empty.status, empty.code()), (400, "invalid_request"));
}

#[tokio::test]
async fn suspension_revokes_every_token_and_refuses_new_ones() {
    let dev = Dev::start().await;
    let lead = dev.create("lead", &[READ_GITHUB]).await;
    let id = lead["id"].as_str().unwrap();
    let p1 = dev.pair(id).await;
    let p2 = dev.pair(id).await;

    let missing = dev
        .admin(
            Method::POST,
            "/v1/identities/agent_nope/suspend",
            Some(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(
        (missing.status, missing.code()),
        (404, "identity_not_found")
    );
    let no_reason = dev
        .admin(
            Method::POST,
            &format!("/v1/identities/{id}/suspend"),
            Some(json!({})),
        )
        .await;
    assert_eq!(no_reason.status, 400);

    let s = dev
        .admin(
            Method::POST,
            &format!("/v1/identities/{id}/suspend"),
            Some(json!({"reason": "left the project"})),
        )
        .await;
    assert_eq!(s.status, 200, "{s:?}");
    assert_eq!(s.body["status"], "suspended");
    assert_eq!(s.body["suspendReason"], "left the project");
    assert!(s.body["suspendedAt"].is_string());

    for p in [&p1, &p2] {
        let a = p["accessToken"].as_str().unwrap();
        assert!(dev.revoked(claims(a)["jti"].as_str().unwrap()).await);
        assert_eq!(dev.introspect(a).await, Value::Null);
    }
    let refresh = dev.refresh(p1["refreshToken"].as_str().unwrap()).await;
    assert_eq!(
        (refresh.status, refresh.code()),
        (404, "identity_not_found")
    );
    let mint = dev.mint(json!({"identityId": id})).await;
    assert_eq!((mint.status, mint.code()), (403, "identity_suspended"));
    let delegate = dev
        .delegate(p2["accessToken"].as_str().unwrap(), "bot", &[NARROW], 60)
        .await;
    assert_eq!(delegate.status, 401);

    let audit = dev.audit("action=identity.suspended").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["metadata"]["reason"], "left the project");
    assert_eq!(
        dev.audit("action=token.revoked").await.len(),
        2,
        "one per session"
    );
}

#[tokio::test]
async fn revoke_by_token_session_or_identity() {
    let dev = Dev::start().await;
    let lead = dev.create("lead", &[READ_GITHUB]).await;
    let id = lead["id"].as_str().unwrap();
    let p1 = dev.pair(id).await;
    let p2 = dev.pair(id).await;
    let p3 = dev.pair(id).await;
    let c1 = claims(p1["accessToken"].as_str().unwrap());
    let c2 = claims(p2["accessToken"].as_str().unwrap());
    let c3 = claims(p3["accessToken"].as_str().unwrap());
    let revoke = |body: Value| dev.admin(Method::POST, "/v1/tokens/revoke", Some(body));

    assert!(!dev.revoked(c1["jti"].as_str().unwrap()).await);
    let a = revoke(json!({"tokenId": c1["jti"]})).await;
    assert_eq!((a.status, &a.body), (204, &Value::Null));
    assert!(dev.revoked(c1["jti"].as_str().unwrap()).await);
    // Only that token: its refresh token still rotates.
    let r = dev.refresh(p1["refreshToken"].as_str().unwrap()).await;
    assert_eq!(r.status, 200, "{r:?}");

    let a = revoke(json!({"session_id": c2["sid"]})).await;
    assert_eq!(a.status, 204);
    assert!(dev.revoked(c2["jti"].as_str().unwrap()).await);
    let r = dev.refresh(p2["refreshToken"].as_str().unwrap()).await;
    assert_eq!((r.status, r.code()), (401, "session_revoked"));
    assert!(!dev.revoked(c3["jti"].as_str().unwrap()).await);

    let a = revoke(json!({"identityId": id})).await;
    assert_eq!(a.status, 204);
    assert!(dev.revoked(c3["jti"].as_str().unwrap()).await);
    let r = dev.refresh(p3["refreshToken"].as_str().unwrap()).await;
    assert_eq!((r.status, r.code()), (401, "session_revoked"));
    // Revoking by identity does not suspend it: it may get new tokens.
    assert_eq!(dev.mint(json!({"identityId": id})).await.status, 201);

    for (body, status) in [
        (json!({"tokenId": "tok_nope"}), 404),
        (json!({"sessionId": "sess_nope"}), 404),
        (json!({"identityId": "agent_nope"}), 404),
        (json!({}), 400),
        (json!({"tokenId": ""}), 400),
        (json!({"tokenId": c1["jti"], "sessionId": c1["sid"]}), 400),
        (json!({"tokenId": 7}), 400),
    ] {
        let a = revoke(body.clone()).await;
        assert_eq!(a.status, status, "{body}: {a:?}");
    }
    let unknown = dev
        .admin(Method::GET, "/v1/tokens/revocation?jti=tok_never", None)
        .await;
    assert_eq!(unknown.body, json!({"revoked": false}));
    let no_jti = dev.admin(Method::GET, "/v1/tokens/revocation", None).await;
    assert_eq!((no_jti.status, no_jti.code()), (400, "invalid_request"));
    let unauth = dev
        .post("/v1/tokens/revoke", json!({"tokenId": c1["jti"]}))
        .await;
    assert_eq!(unauth.status, 401);
}

#[tokio::test]
async fn introspection_and_revocation_list_credentials() {
    let dev = Dev::start().await;
    let lead = dev.create("lead", &[READ_GITHUB]).await;
    let watcher = dev.create("watcher", &[TOKEN_READ]).await;
    let lead_pair = dev.pair(lead["id"].as_str().unwrap()).await;
    let watch_pair = dev.pair(watcher["id"].as_str().unwrap()).await;
    let lead_token = lead_pair["accessToken"].as_str().unwrap();
    let watch_token = watch_pair["accessToken"].as_str().unwrap();
    let lc = claims(lead_token);
    let inspect = format!("/v1/tokens/introspect?token={lead_token}");
    let list = format!("/v1/tokens/revocation?jti={}", lc["jti"].as_str().unwrap());

    // Admin key: the claims.
    let admin = dev.admin(Method::GET, &inspect, None).await;
    assert_eq!(admin.status, 200);
    for k in [
        "sub",
        "org",
        "wks",
        "scopes",
        "sponsorId",
        "sponsorChain",
        "aud",
        "exp",
        "iat",
        "jti",
        "sid",
        "token_type",
        "meta",
        "iss",
    ] {
        assert_eq!(admin.body[k], lc[k], "{k}");
    }
    // A bearer with relayauth:token:read:*: the same.
    let reader = dev.bearer(Method::GET, &inspect, watch_token, None).await;
    assert_eq!((reader.status, &reader.body), (200, &admin.body));
    let reader_list = dev.bearer(Method::GET, &list, watch_token, None).await;
    assert_eq!(
        (reader_list.status, &reader_list.body),
        (200, &json!({"revoked": false}))
    );
    // A live bearer without it: 403 (what the probe strategy reads as "alive").
    let probe = dev.bearer(Method::GET, &inspect, lead_token, None).await;
    assert_eq!((probe.status, probe.code()), (403, "insufficient_scope"));
    let probe_list = dev.bearer(Method::GET, &list, lead_token, None).await;
    assert_eq!(probe_list.status, 403);
    // No credential, a wrong key, garbage or a refresh token as bearer: 401.
    assert_eq!(dev.send(Method::GET, &inspect, &[], None).await.status, 401);
    assert_eq!(
        dev.send(Method::GET, &inspect, &[("x-api-key", "wrong")], None)
            .await
            .status,
        401
    );
    assert_eq!(
        dev.bearer(Method::GET, &inspect, "garbage", None)
            .await
            .status,
        401
    );
    let refresh_bearer = dev
        .bearer(
            Method::GET,
            &inspect,
            watch_pair["refreshToken"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(refresh_bearer.status, 401);
    let basic = dev
        .send(
            Method::GET,
            &inspect,
            &[("authorization", "Basic dXNlcjpwdw==")],
            None,
        )
        .await;
    assert_eq!(basic.status, 401);

    // Inactive subjects: JSON null.
    assert_eq!(dev.introspect("garbage").await, Value::Null);
    assert_eq!(
        dev.introspect(lead_pair["refreshToken"].as_str().unwrap())
            .await,
        Value::Null
    );
    let missing = dev.admin(Method::GET, "/v1/tokens/introspect", None).await;
    assert_eq!((missing.status, missing.code()), (400, "invalid_request"));

    // Revoked: the probe sees 401, introspection null, the list true.
    let a = dev
        .admin(
            Method::POST,
            "/v1/tokens/revoke",
            Some(json!({"tokenId": lc["jti"]})),
        )
        .await;
    assert_eq!(a.status, 204);
    let probe = dev.bearer(Method::GET, &inspect, lead_token, None).await;
    assert_eq!((probe.status, probe.code()), (401, "unauthorized"));
    assert_eq!(
        dev.bearer(Method::GET, &inspect, watch_token, None)
            .await
            .body,
        Value::Null
    );
    assert_eq!(
        dev.bearer(Method::GET, &list, watch_token, None).await.body,
        json!({"revoked": true})
    );

    // A revoked reader loses its reading right.
    let wc = claims(watch_token);
    dev.admin(
        Method::POST,
        "/v1/tokens/revoke",
        Some(json!({"tokenId": wc["jti"]})),
    )
    .await;
    assert_eq!(
        dev.bearer(Method::GET, &list, watch_token, None)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn delegation_seed_cases() {
    let dev = Dev::start().await;
    let lead = dev.create("lead", &[READ_GITHUB, WRITE_REVIEWS]).await;
    let lead_id = lead["id"].as_str().unwrap();
    let parent_pair = dev.pair(lead_id).await;
    let parent = parent_pair["accessToken"].as_str().unwrap();
    let pc = claims(parent);

    // Within the parent's scopes: 201 and a child pair.
    let ok = dev.delegate(parent, "review-bot", &[NARROW], 600).await;
    assert_eq!(ok.status, 201, "{ok:?}");
    let child = ok.str("accessToken");
    let cc = claims(&child);
    let child_id = cc["sub"].as_str().unwrap().to_owned();
    assert_ne!(child_id, lead_id);
    assert_eq!(ok.body["identityId"], json!(child_id));
    assert_eq!(cc["scopes"], json!([NARROW]));
    assert_eq!(cc["sponsorChain"], json!([SPONSOR, lead_id, child_id]));
    assert_eq!(cc["sponsorId"], SPONSOR);
    assert_eq!(cc["parentTokenId"], pc["jti"]);
    assert_ne!(cc["sid"], pc["sid"]);
    assert_eq!(
        (&cc["org"], &cc["wks"], &cc["aud"]),
        (&pc["org"], &pc["wks"], &pc["aud"])
    );
    assert!(cc["exp"].as_u64().unwrap() <= pc["exp"].as_u64().unwrap());
    assert_eq!(
        cc["exp"].as_u64().unwrap() - cc["iat"].as_u64().unwrap(),
        600
    );
    assert_eq!(
        ok.body["delegationNotAfter"].as_str().map(rfc3339_secs),
        pc["exp"].as_u64()
    );
    let rc = claims(&ok.str("refreshToken"));
    assert!(rc["exp"].as_u64().unwrap() <= pc["exp"].as_u64().unwrap());
    assert_eq!(rc["parentTokenId"], pc["jti"]);

    // The child verifies with the project's verifier, with the narrowed scopes.
    let verified = dev
        .verifier(WS)
        .await
        .verify(&child, SystemTime::now())
        .expect("child verifies");
    assert_eq!(verified.parent_token_id(), pc["jti"].as_str());
    assert_eq!(verified.claims().scopes, [NARROW]);
    assert_eq!(verified.sponsor_chain().len(), 3);

    let child_identity = dev
        .admin(Method::GET, &format!("/v1/identities/{child_id}"), None)
        .await;
    assert_eq!(child_identity.body["name"], "review-bot");
    assert_eq!(child_identity.body["parentIdentityId"], json!(lead_id));

    let issued = dev
        .audit(&format!("action=token.issued&identityId={child_id}"))
        .await;
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["metadata"]["parentTokenId"], pc["jti"]);
    assert_eq!(issued[0]["metadata"]["tokenId"], cc["jti"]);

    // Outside the parent's scopes: 403 scope_escalation, naming the offending scope, audited.
    let esc = dev.delegate(parent, "slack-bot", &[SLACK], 600).await;
    assert_eq!((esc.status, esc.code()), (403, "scope_escalation"));
    assert_eq!(esc.body["offending"], json!([SLACK]));
    let denied = dev.audit("action=scope.escalation_denied").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["identityId"], json!(lead_id));
    assert_eq!(denied[0]["result"], "denied");
    assert_eq!(denied[0]["metadata"]["offending"], SLACK);
    // Nothing was created for the refused child.
    let created = dev.audit("action=identity.created").await;
    assert!(created.iter().all(|e| e["metadata"]["name"] != "slack-bot"));

    // A mixed request is refused whole, naming only what escalates; an invalid scope is never
    // within anything, even the same string.
    let mixed = dev.delegate(parent, "x", &[NARROW, SLACK], 60).await;
    assert_eq!(
        (mixed.status, mixed.body["offending"].clone()),
        (403, json!([SLACK]))
    );
    let invalid = dev.delegate(parent, "x", &[WRITE_REVIEWS], 60).await;
    assert_eq!(
        (invalid.status, invalid.body["offending"].clone()),
        (403, json!([WRITE_REVIEWS]))
    );

    // The same agent name from the same parent reuses the child identity.
    let again = dev.delegate(parent, "review-bot", &[NARROW], 60).await;
    assert_eq!(again.status, 201);
    assert_eq!(claims(&again.str("accessToken"))["sub"], json!(child_id));
}

#[tokio::test]
async fn delegation_limits_and_refusals() {
    let dev = Dev::start().await;
    let lead = dev.create("lead", &[READ_GITHUB]).await;
    let lead_id = lead["id"].as_str().unwrap();
    let short = dev
        .mint(json!({"identityId": lead_id, "expiresIn": 300}))
        .await;
    let parent = short.str("accessToken");
    let pc = claims(&parent);

    // The child never outlives the parent.
    let long = dev.delegate(&parent, "bot", &[NARROW], 86_400).await;
    assert_eq!(long.status, 201);
    assert_eq!(claims(&long.str("accessToken"))["exp"], pc["exp"]);
    assert_eq!(claims(&long.str("refreshToken"))["exp"], pc["exp"]);
    // ...also after the child rotates.
    let rotated = dev.refresh(&long.str("refreshToken")).await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let rc = claims(&rotated.str("accessToken"));
    assert!(rc["exp"].as_u64().unwrap() <= pc["exp"].as_u64().unwrap());
    assert_eq!(rc["parentTokenId"], pc["jti"]);
    assert!(rotated.body["delegationNotAfter"].is_string());

    // A grandchild extends the chain again and stays within the child.
    let child = long.str("accessToken");
    let grand = dev
        .delegate(
            &child,
            "grand",
            &["relayfile:fs:read:/github/repos/acme/api/pulls/42/*"],
            60,
        )
        .await;
    assert_eq!(grand.status, 201, "{grand:?}");
    let gc = claims(&grand.str("accessToken"));
    assert_eq!(gc["sponsorChain"].as_array().unwrap().len(), 4);
    let esc = dev.delegate(&child, "grand2", &[READ_GITHUB], 60).await;
    assert_eq!(esc.code(), "scope_escalation");

    // Credentials: none, garbage, a refresh token, a revoked parent.
    let body = json!({"agentName": "bot", "requestedScopes": [NARROW], "ttlSeconds": 60});
    let none = dev.post("/v1/tokens/delegate", body.clone()).await;
    assert_eq!((none.status, none.code()), (401, "unauthorized"));
    assert_eq!(
        dev.delegate("garbage", "bot", &[NARROW], 60).await.status,
        401
    );
    assert_eq!(
        dev.delegate(&short.str("refreshToken"), "bot", &[NARROW], 60)
            .await
            .status,
        401
    );
    let admin_key = dev
        .admin(Method::POST, "/v1/tokens/delegate", Some(body))
        .await;
    assert_eq!(
        admin_key.status, 401,
        "delegation needs the parent's token, not the admin key"
    );

    // Bad bodies.
    for bad in [
        json!({"agentName": "bot", "requestedScopes": []}),
        json!({"agentName": "", "requestedScopes": [NARROW]}),
        json!({"requestedScopes": [NARROW]}),
        json!({"agentName": "bot"}),
        json!({"agentName": "bot", "requestedScopes": [NARROW], "ttlSeconds": 0}),
        json!({"agentName": "bot", "requestedScopes": [NARROW], "ttlSeconds": "60"}),
    ] {
        let a = dev
            .bearer(
                Method::POST,
                "/v1/tokens/delegate",
                &parent,
                Some(bad.clone()),
            )
            .await;
        assert_eq!(
            (a.status, a.code()),
            (400, "invalid_request"),
            "{bad}: {a:?}"
        );
    }

    // A sponsor chain at the limit cannot grow.
    let chain: Vec<String> = std::iter::once(SPONSOR.to_owned())
        .chain((0..8).map(|i| format!("agent_ext{i}")))
        .collect();
    let deep = dev
        .admin(
            Method::POST,
            "/v1/identities",
            Some(json!({"name": "deep", "orgId": ORG, "workspaceId": WS, "sponsorId": SPONSOR, "sponsorChain": chain, "scopes": [READ_GITHUB]})),
        )
        .await;
    assert_eq!(deep.status, 201, "{deep:?}");
    assert_eq!(deep.body["sponsorChain"].as_array().unwrap().len(), 10);
    let deep_token = dev.pair(&deep.str("id")).await;
    let refused = dev
        .delegate(
            deep_token["accessToken"].as_str().unwrap(),
            "too-deep",
            &[NARROW],
            60,
        )
        .await;
    assert_eq!((refused.status, refused.code()), (400, "invalid_request"));

    dev.admin(
        Method::POST,
        "/v1/tokens/revoke",
        Some(json!({"tokenId": pc["jti"]})),
    )
    .await;
    let revoked = dev.delegate(&parent, "bot", &[NARROW], 60).await;
    assert_eq!((revoked.status, revoked.code()), (401, "unauthorized"));
}

#[tokio::test]
async fn revoking_a_parent_session_revokes_delegated_sessions() {
    let dev = Dev::start().await;
    let lead = dev.create("lead", &[READ_GITHUB]).await;
    let parent = dev.pair(lead["id"].as_str().unwrap()).await;
    let pa = parent["accessToken"].as_str().unwrap();
    let child = dev.delegate(pa, "child", &[NARROW], 600).await;
    let ca = child.str("accessToken");
    let grand = dev.delegate(&ca, "grand", &[NARROW], 600).await;
    let ga = grand.str("accessToken");
    // A sibling session of the lead, not delegated: untouched.
    let other = dev.pair(lead["id"].as_str().unwrap()).await;
    let oa = other["accessToken"].as_str().unwrap();

    let psid = claims(pa)["sid"].clone();
    let a = dev
        .admin(
            Method::POST,
            "/v1/tokens/revoke",
            Some(json!({"sessionId": psid})),
        )
        .await;
    assert_eq!(a.status, 204);
    for t in [pa, &ca, &ga] {
        assert!(dev.revoked(claims(t)["jti"].as_str().unwrap()).await);
        assert_eq!(dev.introspect(t).await, Value::Null);
    }
    assert!(!dev.revoked(claims(oa)["jti"].as_str().unwrap()).await);
    let r = dev.refresh(&grand.str("refreshToken")).await;
    assert_eq!((r.status, r.code()), (401, "session_revoked"));
    let revoked = dev.audit("action=token.revoked").await;
    assert_eq!(revoked.len(), 3, "parent, child and grandchild sessions");
    assert!(
        revoked
            .iter()
            .filter(|e| e["metadata"].get("cascadedFrom").is_some())
            .count()
            == 2
    );

    // A refresh reuse in the parent session reaches the children too.
    let p2 = dev.pair(lead["id"].as_str().unwrap()).await;
    let p2a = p2["accessToken"].as_str().unwrap();
    let c2 = dev.delegate(p2a, "child", &[NARROW], 600).await;
    let r1 = p2["refreshToken"].as_str().unwrap();
    assert_eq!(dev.refresh(r1).await.status, 200);
    assert_eq!(dev.refresh(r1).await.code(), "refresh_token_reused");
    assert_eq!(dev.introspect(&c2.str("accessToken")).await, Value::Null);
}

#[tokio::test]
async fn malformed_requests_get_400_never_a_crash() {
    let dev = Dev::start().await;
    let lead = dev.create("lead", &[READ_GITHUB]).await;
    let id = lead["id"].as_str().unwrap();
    let pair = dev.pair(id).await;
    let token = pair["accessToken"].as_str().unwrap();
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(200_000));
    let suspend = format!("/v1/identities/{id}/suspend");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("/v1/identities", b"{not json".to_vec()),
        ("/v1/identities", b"".to_vec()),
        ("/v1/identities", b"[]".to_vec()),
        ("/v1/identities", b"null".to_vec()),
        ("/v1/identities", br#"{"name": 5, "orgId": "o", "workspaceId": "w", "sponsorId": "s"}"#.to_vec()),
        ("/v1/identities", br#"{"name": "n", "orgId": "o", "workspaceId": "w", "sponsorId": "s", "scopes": [1]}"#.to_vec()),
        ("/v1/identities", br#"{"name": "n", "orgId": "o", "workspaceId": "w", "sponsorId": "s", "scopes": ["has space"]}"#.to_vec()),
        ("/v1/identities", br#"{"name": "  ", "orgId": "o", "workspaceId": "w", "sponsorId": "s"}"#.to_vec()),
        ("/v1/identities", br#"{"name": "n", "orgId": "o", "workspaceId": "w", "sponsorId": "s", "metadata": {"a": 1}}"#.to_vec()),
        ("/v1/identities", br#"{"name": "n", "name": "m", "orgId": "o", "workspaceId": "w", "sponsorId": "s"}"#.to_vec()),
        ("/v1/identities", huge.clone().into_bytes()),
        ("/v1/identities", vec![0xff, 0xfe, 0x00]),
        ("/v1/tokens", br#"{"identityId": ["a"]}"#.to_vec()),
        ("/v1/tokens", br#"{"identityId": "a", "identity_id": "b"}"#.to_vec()),
        ("/v1/tokens", br#"{"identityId": "a", "expiresIn": 1e400}"#.to_vec()),
        ("/v1/tokens", br#"{"identityId": "a", "expiresIn": 18446744073709551616}"#.to_vec()),
        ("/v1/tokens", br#"{"identityId": "a", "audience": 7}"#.to_vec()),
        ("/v1/tokens/revoke", b"{".to_vec()),
        (&suspend, br#"{"reason": 1}"#.to_vec()),
    ];
    for (path, body) in &cases {
        let a = dev
            .send(Method::POST, path, &[("x-api-key", KEY)], Some(body))
            .await;
        assert_eq!(
            (a.status, a.code()),
            (400, "invalid_request"),
            "{path} {:?}: {a:?}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        assert!(a.body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let unauthed = ["/v1/tokens/refresh", "/v1/tokens/delegate"];
    for body in [
        b"{oops".to_vec(),
        b"{\"refreshToken\": 5}".to_vec(),
        huge.into_bytes(),
    ] {
        let a = dev.send(Method::POST, unauthed[0], &[], Some(&body)).await;
        assert_eq!(a.status, 400, "{a:?}");
        let auth = format!("Bearer {token}");
        let a = dev
            .send(
                Method::POST,
                unauthed[1],
                &[("authorization", &auth)],
                Some(&body),
            )
            .await;
        assert_eq!(a.status, 400, "{a:?}");
    }
    // Credentials are checked before the body is read: no key, 401 whatever the body.
    let a = dev
        .send(Method::POST, "/v1/identities", &[], Some(b"{not json"))
        .await;
    assert_eq!(a.status, 401);

    for q in [
        "limit=0",
        "limit=abc",
        "limit=-1",
        "cursor=zzz",
        "action=token.bogus",
        "limit=1.5",
    ] {
        let a = dev
            .admin(Method::GET, &format!("/v1/audit?{q}"), None)
            .await;
        assert_eq!((a.status, a.code()), (400, "invalid_request"), "{q}: {a:?}");
    }
    let odd = dev
        .admin(Method::GET, "/v1/tokens/introspect?token=%FF%FE", None)
        .await;
    // Not a token at all: inactive, which introspection answers with the JSON literal null.
    assert_eq!((odd.status, &odd.body), (200, &Value::Null), "{odd:?}");
    let nothing = dev.send(Method::GET, "/v1/nothing", &[], None).await;
    assert_eq!((nothing.status, nothing.code()), (404, "not_found"));
    let method = dev.send(Method::DELETE, "/v1/tokens", &[], None).await;
    assert_eq!(method.status, 405);
    // The issuer still answers.
    assert_eq!(
        dev.send(Method::GET, "/health", &[], None).await.status,
        200
    );
}

#[tokio::test]
async fn audit_pages_newest_first_with_a_cursor() {
    let dev = Dev::start().await;
    let lead = dev.create("lead", &[READ_GITHUB]).await;
    let id = lead["id"].as_str().unwrap();
    for _ in 0..5 {
        dev.pair(id).await;
    }
    let all = dev.audit("limit=200").await;
    assert_eq!(all.len(), 6);
    assert_eq!(all[5]["action"], "identity.created");
    for e in &all {
        for k in [
            "id",
            "action",
            "identityId",
            "orgId",
            "workspaceId",
            "plane",
            "resource",
            "result",
            "timestamp",
            "metadata",
        ] {
            assert!(e.get(k).is_some(), "{k} missing in {e}");
        }
        assert_eq!(
            (e["orgId"].as_str(), e["workspaceId"].as_str()),
            (Some(ORG), Some(WS))
        );
        assert_eq!(e["plane"], "relayauth");
        rfc3339_secs(e["timestamp"].as_str().unwrap());
    }
    let mut seen = Vec::new();
    let mut query = "limit=2&action=token.issued".to_owned();
    loop {
        let a = dev
            .admin(Method::GET, &format!("/v1/audit?{query}"), None)
            .await;
        assert_eq!(a.status, 200);
        let entries = a.body["entries"].as_array().unwrap();
        assert!(entries.len() <= 2);
        seen.extend(entries.iter().map(|e| e["id"].clone()));
        match a.body["nextCursor"].as_str() {
            Some(c) => query = format!("limit=2&action=token.issued&cursor={c}"),
            None => break,
        }
    }
    let issued: Vec<Value> = all
        .iter()
        .filter(|e| e["action"] == "token.issued")
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(seen, issued);
    let unauth = dev.send(Method::GET, "/v1/audit", &[], None).await;
    assert_eq!(unauth.status, 401);
}

#[tokio::test]
async fn state_directory_keeps_keys_identities_sessions_and_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.state_dir = Some(dir.path().join("state"));
    let dev = Dev::with(cfg.clone()).await;
    let jwks = dev
        .send(Method::GET, "/.well-known/jwks.json", &[], None)
        .await
        .body;
    let lead = dev.create("lead", &[READ_GITHUB]).await;
    let id = lead["id"].as_str().unwrap().to_owned();
    let kept = dev.pair(&id).await;
    let gone = dev.pair(&id).await;
    let gone_jti = claims(gone["accessToken"].as_str().unwrap())["jti"].clone();
    dev.admin(
        Method::POST,
        "/v1/tokens/revoke",
        Some(json!({"tokenId": gone_jti})),
    )
    .await;
    let rotated = dev.refresh(kept["refreshToken"].as_str().unwrap()).await;
    assert_eq!(rotated.status, 200);
    let audit_before = dev.audit("limit=200").await;
    dev.running.shutdown().await.unwrap();

    // Files: 0600, the keys as PKCS#8 PEM; a second issuer on the same directory is refused
    // while one runs (checked below with the restarted one).
    let state = dir.path().join("state");
    for f in [
        "keys/rs256.pem",
        "keys/ed25519.pem",
        "state.json",
        "audit.jsonl",
    ] {
        let mode = std::fs::metadata(state.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let pem = std::fs::read_to_string(state.join("keys/rs256.pem")).unwrap();
    assert!(pem.contains("-----BEGIN PRIVATE KEY-----"));
    let state_text = std::fs::read_to_string(state.join("state.json")).unwrap();
    assert!(
        !state_text.contains(kept["refreshToken"].as_str().unwrap()),
        "refresh tokens are not stored"
    );

    let dev = Dev::with(cfg.clone()).await;
    let again = dev
        .send(Method::GET, "/.well-known/jwks.json", &[], None)
        .await
        .body;
    assert_eq!(again, jwks, "same keys, same kids");
    let got = dev
        .admin(Method::GET, &format!("/v1/identities/{id}"), None)
        .await;
    assert_eq!((got.status, &got.body), (200, &lead));
    assert!(
        dev.revoked(gone_jti.as_str().unwrap()).await,
        "revocation kept"
    );
    let live = kept["accessToken"].as_str().unwrap();
    assert_eq!(
        dev.introspect(live).await["sub"],
        json!(id),
        "old token still active"
    );
    dev.verifier(WS)
        .await
        .verify(live, SystemTime::now())
        .expect("old token verifies");
    // Rotation state kept: the used refresh token is a reuse, the new one works.
    assert_eq!(
        dev.refresh(kept["refreshToken"].as_str().unwrap())
            .await
            .code(),
        "refresh_token_reused"
    );
    let audit_after = dev.audit("limit=200").await;
    assert_eq!(audit_after[0]["action"], "token.reuse_detected");
    assert_eq!(audit_after[1]["action"], "token.revoked");
    assert_eq!(
        audit_after[2..],
        audit_before[..],
        "the audit trail is kept"
    );
    let other_dir = dev.running.issuer().state_dir().map(Path::to_path_buf);
    assert_eq!(other_dir, Some(state.clone()));
    let mut second = config();
    second.state_dir = Some(state.clone());
    let err = serve(second).await.unwrap_err().to_string();
    assert!(err.contains("another dev-issuer"), "{err}");
    // Names stay unique across the restart.
    let dup = dev
        .admin(
            Method::POST,
            "/v1/identities",
            Some(json!({"name": "lead", "orgId": ORG, "workspaceId": WS, "sponsorId": SPONSOR})),
        )
        .await;
    assert_eq!(dup.status, 409);
    dev.running.shutdown().await.unwrap();

    // A damaged state file stops the start instead of forgetting revocations.
    std::fs::write(state.join("state.json"), "{broken").unwrap();
    let err = serve(cfg).await.unwrap_err().to_string();
    assert!(err.contains("state.json"), "{err}");
}

#[tokio::test]
async fn seed_creates_the_sample_identities_idempotently() {
    let seed_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-fixtures/identities/acme.json");
    let seed = Seed::from_file(&seed_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.seed = Some(seed);
    cfg.state_dir = Some(dir.path().to_path_buf());
    let dev = Dev::with(cfg.clone()).await;
    let names = dev.running.identities().clone();
    assert_eq!(
        names.keys().map(String::as_str).collect::<Vec<_>>(),
        ["acme-lead", "review-bot", "slack-reader"]
    );
    let lead = &names["acme-lead"];
    let bot = dev
        .admin(
            Method::GET,
            &format!("/v1/identities/{}", names["review-bot"]),
            None,
        )
        .await;
    assert_eq!(
        bot.body["sponsorChain"],
        json!(["user_alice", lead, names["review-bot"]])
    );
    assert_eq!(dev.running.ready_json()["identities"], json!(names));

    // The lead delegating to "review-bot" gets the seeded review-bot.
    let pair = dev.pair(lead).await;
    let child = dev
        .delegate(
            pair["accessToken"].as_str().unwrap(),
            "review-bot",
            &[NARROW],
            60,
        )
        .await;
    assert_eq!(child.status, 201, "{child:?}");
    assert_eq!(child.body["identityId"], json!(names["review-bot"]));
    dev.running.shutdown().await.unwrap();

    let dev = Dev::with(cfg).await;
    assert_eq!(dev.running.identities(), &names, "same ids after a restart");
    assert_eq!(
        dev.audit("action=identity.created&limit=200").await.len(),
        3
    );
    dev.running.shutdown().await.unwrap();

    let bad = Seed::parse(r#"{"identities": [{"name": "x"}]}"#).unwrap();
    let mut cfg = config();
    cfg.seed = Some(bad);
    let err = serve(cfg).await.unwrap_err().to_string();
    assert!(err.contains("orgId"), "{err}");
    assert!(Seed::parse("{").is_err());
}

#[tokio::test]
async fn issuer_string_is_configurable_and_checked_by_verifiers() {
    let mut cfg = config();
    cfg.issuer = "https://relayauth.dev".into();
    let dev = Dev::with(cfg).await;
    let lead = dev.create("lead", &[READ_GITHUB]).await;
    let pair = dev.pair(lead["id"].as_str().unwrap()).await;
    let token = pair["accessToken"].as_str().unwrap();
    assert_eq!(claims(token)["iss"], "https://relayauth.dev");
    dev.verifier(WS)
        .await
        .verify(token, SystemTime::now())
        .expect("verifies with its iss");
    let mut wrong = VerifierConfig::new(WS);
    wrong.issuer = "relayauth:dev".into();
    let cache = JwksCache::load(JwksSource::parse(&dev.running.jwks_url()).unwrap())
        .await
        .unwrap();
    let e = Verifier::new(wrong, Arc::new(cache))
        .verify(token, SystemTime::now())
        .unwrap_err();
    assert_eq!(e.code.as_str(), "wrong_issuer");
}
