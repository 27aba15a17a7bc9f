//! JWKS sources and the key cache: files, `data:` URLs (base64 and percent-encoded), and URLs
//! served by a local test server that counts requests (mixed key types, the rate-limited
//! refetch on an unknown kid, timeouts, failures), plus RFC 7638 thumbprints as relayauth
//! computes them.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::http::{Reply, Server};
use common::tokens::*;
use relayauth_mount::token::{
    JwksCache, JwksError, JwksOptions, JwksSource, PublicJwk, Signer, SigningKey, TokenErrorCode,
    Verifier, thumbprint,
};
use serde_json::{Value, json};

fn ed() -> &'static Signer {
    &keys().ed
}

fn rsa() -> &'static Signer {
    &keys().rsa
}

fn verifier_over(cache: JwksCache) -> Verifier {
    Verifier::new(config(), Arc::new(cache))
}

/// Options for servers that answer: a timeout generous enough for a loaded CI machine.
fn quick() -> JwksOptions {
    JwksOptions {
        timeout: Duration::from_secs(2),
        ..JwksOptions::default()
    }
}

/// A server answering every request with the current JWKS text.
async fn jwks_server(body: Arc<Mutex<String>>) -> Server {
    Server::start(move |req| {
        if req.path != "/.well-known/jwks.json" {
            return Reply::Json(404, r#"{"error":"not found"}"#.into());
        }
        Reply::Json(200, body.lock().unwrap().clone())
    })
    .await
}

// ----- thumbprints --------------------------------------------------------------------------

#[test]
fn thumbprint_matches_the_rfc_7638_known_answer() {
    let jwk = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    let public = PublicJwk::from_value(&jwk).unwrap();
    assert_eq!(
        thumbprint(&public),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
}

#[test]
fn kids_are_computed_as_relayauth_computes_them() {
    // relayauth: SHA-256 over {"e":"<e>","kty":"RSA","n":"<n>"}, base64url without padding.
    let jwk = rsa().key().public_jwk();
    let canonical = format!(
        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
        jwk["e"].as_str().unwrap(),
        jwk["n"].as_str().unwrap()
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    assert_eq!(rsa().key().kid(), b64(digest.as_ref()));
    assert_eq!(jwk["kid"], rsa().key().kid());
    // Ed25519 (RFC 8037 appendix A.3 form): {"crv":"Ed25519","kty":"OKP","x":"<x>"}.
    let jwk = ed().key().public_jwk();
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        jwk["x"].as_str().unwrap()
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    assert_eq!(ed().key().kid(), b64(digest.as_ref()));
    // The cache reports the same thumbprint for the keys it loads.
    let cache = JwksCache::from_json(&jwks_json(&[ed(), rsa()])).unwrap();
    assert_eq!(
        cache.key(rsa().key().kid()).unwrap().thumbprint,
        rsa().key().kid()
    );
}

// ----- local sources ------------------------------------------------------------------------

#[tokio::test]
async fn file_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks_json(&[ed(), rsa()])).unwrap();
    let source = JwksSource::parse(path.to_str().unwrap()).unwrap();
    assert_eq!(source, JwksSource::File(path.clone()));
    let cache = JwksCache::load(source).await.unwrap();
    let mut expected = vec![ed().key().kid().to_owned(), rsa().key().kid().to_owned()];
    expected.sort();
    assert_eq!(cache.kids(), expected);
    let v = verifier_over(cache);
    assert!(
        v.verify_fresh(&rsa().sign(&claims()).unwrap())
            .await
            .is_ok()
    );
    assert!(v.verify_fresh(&ed().sign(&claims()).unwrap()).await.is_ok());
}

#[tokio::test]
async fn missing_or_bad_file_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let e = JwksCache::load(JwksSource::File(missing.clone()))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("nope.json") && text.contains("no such file"),
        "{text}"
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"keys\": 7}").unwrap();
    let e = JwksCache::load(JwksSource::File(bad)).await.unwrap_err();
    assert!(matches!(e, JwksError::BadJson { .. }), "{e}");
    assert!(e.to_string().contains("keys"), "{e}");
}

#[tokio::test]
async fn data_url_base64() {
    let text = jwks_json(&[ed(), rsa()]);
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        let url = format!("data:application/json;base64,{}", engine.encode(&text));
        let source = JwksSource::parse(&url).unwrap();
        assert_eq!(source, JwksSource::Data(text.clone()));
        let v = verifier_over(JwksCache::load(source).await.unwrap());
        assert!(v.verify_fresh(&ed().sign(&claims()).unwrap()).await.is_ok());
    }
}

#[tokio::test]
async fn data_url_percent_encoded() {
    // The form relayauth itself builds: data:application/json,<encodeURIComponent(json)>.
    let text = jwks_json(&[ed(), rsa()]);
    let encoded: String = text
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let source = JwksSource::parse(&format!("data:application/json,{encoded}")).unwrap();
    assert_eq!(source, JwksSource::Data(text));
    let v = verifier_over(JwksCache::load(source).await.unwrap());
    assert!(
        v.verify_fresh(&rsa().sign(&claims()).unwrap())
            .await
            .is_ok()
    );
}

// ----- key selection ------------------------------------------------------------------------

/// A JWKS with the two test keys and everything that must be skipped next to them.
fn mixed_jwks() -> Value {
    let mut doc: Value = serde_json::from_str(&jwks_json(&[ed(), rsa()])).unwrap();
    let rsa_jwk = rsa().key().public_jwk();
    let small_n = b64([0xc3u8; 128]); // a 1024-bit modulus
    let extra = [
        json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256",
               "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}),
        json!({"kty": "oct", "kid": "legacy-production", "alg": "HS256", "use": "sig", "k": "c2VjcmV0"}),
        json!({"kty": "OKP", "crv": "X25519", "kid": "x25519-1",
               "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}),
        json!({"kty": "RSA", "kid": "rs384-1", "alg": "RS384", "n": rsa_jwk["n"], "e": "AQAB"}),
        json!({"kty": "RSA", "kid": "enc-1", "use": "enc", "n": rsa_jwk["n"], "e": "AQAB"}),
        json!({"kty": "RSA", "kid": "small-1", "n": small_n, "e": "AQAB"}),
        json!({"kty": "RSA", "n": rsa_jwk["n"], "e": "AQAB"}),
        json!("not an object"),
    ];
    doc["keys"].as_array_mut().unwrap().extend(extra);
    doc
}

#[tokio::test]
async fn mixed_key_jwks_from_a_url_keeps_only_rsa_and_ed25519() {
    let body = Arc::new(Mutex::new(mixed_jwks().to_string()));
    let server = jwks_server(body).await;
    let url = server.url("/.well-known/jwks.json");
    let cache = JwksCache::load_with(JwksSource::parse(&url).unwrap(), quick())
        .await
        .unwrap();
    let mut expected = vec![ed().key().kid().to_owned(), rsa().key().kid().to_owned()];
    expected.sort();
    assert_eq!(cache.kids(), expected);
    let skipped = cache.skipped();
    assert_eq!(skipped.len(), 8, "{skipped:?}");
    let reasons: Vec<String> = skipped.iter().map(|s| s.to_string()).collect();
    for (kid, word) in [
        ("ec-1", "EC"),
        ("legacy-production", "oct"),
        ("x25519-1", "X25519"),
        ("rs384-1", "RS384"),
        ("enc-1", "use"),
        ("small-1", "1024"),
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(kid) && r.contains(word)),
            "{kid}: {reasons:?}"
        );
    }
    assert_eq!(server.hits(), 1);
    let v = verifier_over(cache);
    assert!(v.verify_fresh(&ed().sign(&claims()).unwrap()).await.is_ok());
    assert!(
        v.verify_fresh(&rsa().sign(&claims()).unwrap())
            .await
            .is_ok()
    );
    assert_eq!(server.hits(), 1, "known kids need no fetch");
}

#[test]
fn duplicate_kids_are_dropped() {
    let mut doc: Value = serde_json::from_str(&jwks_json(&[ed(), rsa()])).unwrap();
    let mut twin = rsa().key().public_jwk();
    twin["kid"] = json!(ed().key().kid());
    doc["keys"].as_array_mut().unwrap().push(twin);
    let cache = JwksCache::from_json(&doc.to_string()).unwrap();
    assert_eq!(cache.kids(), [rsa().key().kid()]);
    assert!(cache.skipped()[0].reason.contains("more than once"));
    let e = verifier_over(cache)
        .verify(&ed().sign(&claims()).unwrap(), std::time::SystemTime::now())
        .unwrap_err();
    assert_eq!(e.code, TokenErrorCode::UnknownKey);
}

#[test]
fn a_jwks_without_usable_keys_is_an_error() {
    let doc = json!({"keys": [
        {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-256", "kid": "e", "x": "AA", "y": "AA"}
    ]});
    let e = JwksCache::from_json(&doc.to_string()).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, JwksError::NoUsableKeys { .. }));
    assert!(text.contains("\"h\"") && text.contains("\"e\""), "{text}");
    assert!(JwksCache::from_json(r#"{"keys": []}"#).is_err());
}

// ----- refetching ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_kid_triggers_exactly_one_refetch_within_60_s() {
    let body = Arc::new(Mutex::new(jwks_json(&[ed()])));
    let server = jwks_server(body.clone()).await;
    let source = JwksSource::parse(&server.url("/.well-known/jwks.json")).unwrap();
    let v = verifier_over(JwksCache::load_with(source, quick()).await.unwrap());
    assert_eq!(server.hits(), 1);

    // Three tokens from keys the JWKS does not have, one after the other and then at once.
    let strangers: Vec<Signer> = (0..3)
        .map(|_| Signer::new(SigningKey::generate_ed25519().unwrap()))
        .collect();
    let e = v
        .verify_fresh(&strangers[0].sign(&claims()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code, TokenErrorCode::UnknownKey);
    assert_eq!(server.hits(), 2, "the first unknown kid refetches once");
    let e = v
        .verify_fresh(&strangers[1].sign(&claims()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code, TokenErrorCode::UnknownKey);
    let t2 = strangers[2].sign(&claims()).unwrap();
    let (a, b) = tokio::join!(v.verify_fresh(&t2), v.verify_fresh(&t2));
    assert!(a.is_err() && b.is_err());
    assert_eq!(server.hits(), 2, "no second refetch within 60 s");
    // Known keys still verify without fetching.
    assert!(v.verify_fresh(&ed().sign(&claims()).unwrap()).await.is_ok());
    assert_eq!(server.hits(), 2);
    assert_eq!(v.keys().load_count(), 2);
}

#[tokio::test]
async fn a_rotated_key_is_found_by_the_refetch() {
    let body = Arc::new(Mutex::new(jwks_json(&[ed()])));
    let server = jwks_server(body.clone()).await;
    let source = JwksSource::parse(&server.url("/.well-known/jwks.json")).unwrap();
    let v = verifier_over(JwksCache::load_with(source, quick()).await.unwrap());
    let token = rsa().sign(&claims()).unwrap();
    // The synchronous path never fetches.
    assert_eq!(
        v.verify(&token, std::time::SystemTime::now())
            .unwrap_err()
            .code,
        TokenErrorCode::UnknownKey
    );
    *body.lock().unwrap() = jwks_json(&[ed(), rsa()]);
    assert_eq!(server.hits(), 1);
    let t = v.verify_fresh(&token).await.unwrap();
    assert_eq!(t.key_id(), rsa().key().kid());
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn refetch_is_allowed_again_after_the_interval() {
    let body = Arc::new(Mutex::new(jwks_json(&[ed()])));
    let server = jwks_server(body.clone()).await;
    let options = JwksOptions {
        refetch_interval: Duration::from_secs(1),
        ..quick()
    };
    let source = JwksSource::parse(&server.url("/.well-known/jwks.json")).unwrap();
    let v = verifier_over(JwksCache::load_with(source, options).await.unwrap());
    let stranger = Signer::new(SigningKey::generate_ed25519().unwrap());
    let token = stranger.sign(&claims()).unwrap();
    assert!(v.verify_fresh(&token).await.is_err());
    assert_eq!(server.hits(), 2);
    assert!(v.verify_fresh(&token).await.is_err());
    assert_eq!(server.hits(), 2);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(v.verify_fresh(&token).await.is_err());
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn stale_keys_are_refetched_after_the_cache_lifetime() {
    let body = Arc::new(Mutex::new(jwks_json(&[ed()])));
    let server = jwks_server(body.clone()).await;
    let options = JwksOptions {
        cache_ttl: Duration::from_secs(1),
        refetch_interval: Duration::from_secs(1),
        ..quick()
    };
    let source = JwksSource::parse(&server.url("/.well-known/jwks.json")).unwrap();
    let v = verifier_over(JwksCache::load_with(source, options).await.unwrap());
    assert!(v.verify_fresh(&ed().sign(&claims()).unwrap()).await.is_ok());
    assert_eq!(server.hits(), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(v.verify_fresh(&ed().sign(&claims()).unwrap()).await.is_ok());
    assert_eq!(server.hits(), 2);
}

// ----- failures -----------------------------------------------------------------------------

#[tokio::test]
async fn a_silent_server_times_out() {
    // Keys are generated before the server runs: generating them inside a handler would stall
    // this single-threaded runtime.
    let body = jwks_json(&[ed()]);
    let server = Server::start(move |_| {
        Reply::After(
            Duration::from_secs(5),
            Box::new(Reply::Json(200, body.clone())),
        )
    })
    .await;
    let options = JwksOptions {
        timeout: Duration::from_millis(300),
        ..JwksOptions::default()
    };
    let source = JwksSource::parse(&server.url("/.well-known/jwks.json")).unwrap();
    let e = JwksCache::load_with(source, options).await.unwrap_err();
    assert!(matches!(e, JwksError::Fetch { .. }), "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn a_failed_refetch_keeps_the_known_keys() {
    let healthy = Arc::new(Mutex::new(true));
    let body = jwks_json(&[ed()]);
    let server = {
        let healthy = healthy.clone();
        Server::start(move |_| {
            if *healthy.lock().unwrap() {
                Reply::Json(200, body.clone())
            } else {
                Reply::After(Duration::from_secs(10), Box::new(Reply::Drop))
            }
        })
        .await
    };
    let options = JwksOptions {
        timeout: Duration::from_secs(1),
        ..JwksOptions::default()
    };
    let source = JwksSource::parse(&server.url("/.well-known/jwks.json")).unwrap();
    let v = verifier_over(JwksCache::load_with(source, options).await.unwrap());
    *healthy.lock().unwrap() = false;
    let e = v
        .verify_fresh(&rsa().sign(&claims()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code, TokenErrorCode::UnknownKey);
    assert_eq!(server.hits(), 2);
    assert!(v.verify_fresh(&ed().sign(&claims()).unwrap()).await.is_ok());
}

#[tokio::test]
async fn http_errors_and_bad_bodies_are_reported() {
    let server = Server::start(|req| match req.path.as_str() {
        "/500" => Reply::Json(500, r#"{"error":"boom"}"#.into()),
        "/html" => Reply::Json(200, "<html></html>".into()),
        _ => Reply::Json(404, "{}".into()),
    })
    .await;
    let load = |path: &str| {
        let url = server.url(path);
        async move { JwksCache::load_with(JwksSource::parse(&url).unwrap(), quick()).await }
    };
    let e = load("/500").await.unwrap_err();
    assert!(e.to_string().contains("500"), "{e}");
    let e = load("/html").await.unwrap_err();
    assert!(matches!(e, JwksError::BadJson { .. }), "{e}");
    let e = load("/missing").await.unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
}

#[tokio::test]
async fn an_unreachable_url_is_an_error_not_a_panic() {
    // Bind a port, then free it, so nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    let e = JwksCache::load_with(JwksSource::parse(&url).unwrap(), quick())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

#[test]
fn plain_http_is_refused_except_for_loopback() {
    assert!(matches!(
        JwksSource::parse("http://relayauth.example/.well-known/jwks.json"),
        Err(JwksError::InsecureUrl(_))
    ));
    for ok in [
        "http://127.0.0.1:8787/.well-known/jwks.json",
        "http://[::1]:8787/.well-known/jwks.json",
        "http://localhost:8787/.well-known/jwks.json",
        "https://relayauth.dev/.well-known/jwks.json",
    ] {
        assert!(
            matches!(JwksSource::parse(ok), Ok(JwksSource::Url(_))),
            "{ok}"
        );
    }
}
