//! The attack suite of the token verifier (DESIGN sections 5 and 15): one test per attack, each
//! asserting the exact rejection code, plus the valid shapes relayauth really issues. Tokens are
//! signed with keys generated when the binary starts; hostile ones are built segment by segment.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use common::tokens::*;
use relayauth_mount::scope::Requirement;
use relayauth_mount::token::{
    JwksCache, KeyAlgorithm, Signer, SigningKey, TokenError, TokenErrorCode, Verifier,
    VerifierConfig,
};
use serde_json::{Value, json};

use TokenErrorCode::*;

/// Verify now with the standard verifier and return the error (panics if accepted).
fn refused(token: &str) -> TokenError {
    refused_by(&verifier(), token)
}

fn refused_by(v: &Verifier, token: &str) -> TokenError {
    match v.verify(token, std::time::SystemTime::now()) {
        Ok(t) => panic!("token was accepted: {t:?}"),
        Err(e) => e,
    }
}

fn assert_code(token: &str, code: TokenErrorCode) -> TokenError {
    let e = refused(token);
    assert_eq!(e.code, code, "{e}");
    assert!(!e.message.is_empty());
    e
}

fn ed() -> &'static Signer {
    &keys().ed
}

fn rsa() -> &'static Signer {
    &keys().rsa
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "typ": "JWT", "kid": kid})
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn hs256(key: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

// ----- valid tokens -------------------------------------------------------------------------

#[test]
fn valid_eddsa_token_is_accepted() {
    let token = ed().sign(&claims()).unwrap();
    let t = verifier()
        .verify(&token, std::time::SystemTime::now())
        .unwrap();
    assert_eq!(t.algorithm(), KeyAlgorithm::EdDsa);
    assert_eq!(t.key_id(), ed().key().kid());
    assert_eq!(t.raw(), token);
    assert_eq!(t.subject(), AGENT);
    assert_eq!(t.org(), ORG);
    assert_eq!(t.workspace(), WORKSPACE);
    assert_eq!(t.sponsor_id(), SPONSOR);
    assert_eq!(t.sponsor_chain(), [SPONSOR, AGENT]);
    assert_eq!(t.token_id(), "tok_0001");
    assert_eq!(t.session_id(), "sess_0001");
    assert_eq!(t.parent_token_id(), None);
    assert_eq!(t.claims().meta, Some(json!({"agentName": "coder"})));
    let req = Requirement::parse("fs:read").unwrap();
    assert!(t.scopes().check(&req, "/github/x.json").is_some());
    assert!(t.scopes().check(&req, "/slack/x.json").is_none());
}

#[test]
fn valid_rs256_token_is_accepted() {
    let iat = now_secs() - 10;
    let token = rsa()
        .sign(&with(claims_at(iat), "parentTokenId", json!("tok_parent")))
        .unwrap();
    let t = verifier()
        .verify(&token, std::time::SystemTime::now())
        .unwrap();
    assert_eq!(t.algorithm(), KeyAlgorithm::Rs256);
    assert_eq!(t.key_id(), rsa().key().kid());
    assert_eq!(t.parent_token_id(), Some("tok_parent"));
    assert_eq!(t.issued_at(), at(iat));
    assert_eq!(t.expires_at(), at(iat + 3600));
}

#[test]
fn relay_prefixes_are_stripped_and_raw_keeps_them() {
    let jwt = ed().sign(&claims()).unwrap();
    for prefix in ["relay_ag_", "relay_pa_", "relay_id_"] {
        let token = format!("{prefix}{jwt}");
        let t = verifier()
            .verify(&token, std::time::SystemTime::now())
            .unwrap();
        assert_eq!(t.raw(), token);
    }
}

#[test]
fn relay_ws_api_key_is_not_a_jwt() {
    let e = assert_code(
        &format!("relay_ws_{}", ed().sign(&claims()).unwrap()),
        InvalidToken,
    );
    assert!(e.message.contains("API key"), "{e}");
}

#[test]
fn string_aud_is_accepted() {
    let token = ed()
        .sign(&with(claims(), "aud", json!("relayfile")))
        .unwrap();
    assert!(
        verifier()
            .verify(&token, std::time::SystemTime::now())
            .is_ok()
    );
    let token = ed()
        .sign(&with(claims(), "aud", json!(["relayauth", "relayfile"])))
        .unwrap();
    assert!(
        verifier()
            .verify(&token, std::time::SystemTime::now())
            .is_ok()
    );
}

#[test]
fn workspace_id_instead_of_wks_is_accepted() {
    let c = with(without(claims(), "wks"), "workspace_id", json!(WORKSPACE));
    let t = verifier()
        .verify(&ed().sign(&c).unwrap(), std::time::SystemTime::now())
        .unwrap();
    assert_eq!(t.workspace(), WORKSPACE);
}

#[test]
fn wks_and_workspace_id_that_disagree_are_refused() {
    let c = with(claims(), "workspace_id", json!("ws_other"));
    assert_code(&ed().sign(&c).unwrap(), InvalidToken);
}

#[test]
fn space_separated_scopes_are_accepted() {
    let c = with(
        claims(),
        "scopes",
        json!("relayfile:fs:read:/linear/**  relayfile:fs:write:/linear/issues/*"),
    );
    let t = verifier()
        .verify(&ed().sign(&c).unwrap(), std::time::SystemTime::now())
        .unwrap();
    assert_eq!(
        t.claims().scopes,
        [
            "relayfile:fs:read:/linear/**",
            "relayfile:fs:write:/linear/issues/*"
        ]
    );
    let write = Requirement::parse("fs:write").unwrap();
    assert!(t.scopes().check(&write, "/linear/issues/7.json").is_some());
}

#[test]
fn session_id_falls_back_to_token_id() {
    let t = verifier()
        .verify(
            &ed().sign(&without(claims(), "sid")).unwrap(),
            std::time::SystemTime::now(),
        )
        .unwrap();
    assert_eq!(t.session_id(), "tok_0001");
}

#[test]
fn lowercase_typ_jwt_and_absent_typ_are_accepted() {
    for h in [
        json!({"alg": "EdDSA", "typ": "jwt", "kid": ed().key().kid()}),
        json!({"alg": "EdDSA", "kid": ed().key().kid()}),
    ] {
        let token = ed().sign_with_header(&h, &claims()).unwrap();
        assert!(
            verifier()
                .verify(&token, std::time::SystemTime::now())
                .is_ok()
        );
    }
}

// ----- algorithm confusion ----------------------------------------------------------------

fn alg_none(spelling: &str) {
    let h = json!({"alg": spelling, "typ": "JWT", "kid": ed().key().kid()});
    // With an empty signature, and with a signature copied from a valid token.
    let unsigned = format!("{}.{}.", b64(h.to_string()), b64(claims().to_string()));
    let e = assert_code(&unsigned, InvalidToken);
    assert!(e.message.contains("unsigned"), "{e}");
    let valid = ed().sign(&claims()).unwrap();
    let sig = valid.rsplit('.').next().unwrap();
    let e = assert_code(&format!("{unsigned}{sig}"), InvalidToken);
    assert!(e.message.contains("unsigned"), "{e}");
}

#[test]
fn alg_none_lowercase() {
    alg_none("none");
}

#[test]
fn alg_none_capitalized() {
    alg_none("None");
}

#[test]
fn alg_none_uppercase() {
    alg_none("NONE");
}

#[test]
fn alg_none_mixed_case() {
    alg_none("nOnE");
}

#[test]
fn hs256_keyed_with_the_rsa_public_key_pem() {
    let pem = rsa().key().public_key_pem().unwrap();
    let token = hs256(
        pem.as_bytes(),
        &header("HS256", rsa().key().kid()),
        &claims(),
    );
    let e = assert_code(&token, InvalidToken);
    assert!(e.message.contains("HMAC"), "{e}");
}

#[test]
fn hs256_keyed_with_the_raw_rsa_modulus() {
    let jwk = rsa().key().public_jwk();
    let modulus = unb64(jwk["n"].as_str().unwrap());
    for key in [modulus.as_slice(), jwk["n"].as_str().unwrap().as_bytes()] {
        let token = hs256(key, &header("HS256", rsa().key().kid()), &claims());
        assert_code(&token, InvalidToken);
    }
}

#[test]
fn other_hmac_algorithms_are_refused() {
    for alg in ["HS384", "HS512", "hs256", "Hé", "é"] {
        let token = hs256(b"secret", &header(alg, rsa().key().kid()), &claims());
        assert_code(&token, InvalidToken);
    }
}

#[test]
fn es256_is_refused() {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let h = header("ES256", "ec-key");
    let input = format!("{}.{}", b64(h.to_string()), b64(claims().to_string()));
    let sig = pair.sign(&rng, input.as_bytes()).unwrap();
    let token = format!("{input}.{}", b64(sig.as_ref()));
    // Even when the EC key is published in the JWKS, it is skipped and ES256 refused.
    use aws_lc_rs::signature::KeyPair;
    let point = pair.public_key().as_ref();
    let ec_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec-key", "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..65])});
    let mut doc: Value = serde_json::from_str(&jwks_json(&[ed()])).unwrap();
    doc["keys"].as_array_mut().unwrap().push(ec_jwk);
    let cache = JwksCache::from_json(&doc.to_string()).unwrap();
    assert_eq!(cache.skipped().len(), 1);
    let v = Verifier::new(config(), Arc::new(cache));
    let e = refused_by(&v, &token);
    assert_eq!(e.code, InvalidToken, "{e}");
    assert!(e.message.contains("ES256"), "{e}");
}

#[test]
fn rs256_header_naming_an_ed25519_kid() {
    let token = rsa()
        .sign_with_header(&header("RS256", ed().key().kid()), &claims())
        .unwrap();
    let e = assert_code(&token, InvalidToken);
    assert!(e.message.contains("Ed25519"), "{e}");
}

#[test]
fn eddsa_header_naming_an_rsa_kid() {
    let token = ed()
        .sign_with_header(&header("EdDSA", rsa().key().kid()), &claims())
        .unwrap();
    let e = assert_code(&token, InvalidToken);
    assert!(e.message.contains("RSA"), "{e}");
}

#[test]
fn other_rsa_algorithms_are_refused() {
    for alg in ["RS384", "RS512", "PS256"] {
        let token = rsa()
            .sign_with_header(&header(alg, rsa().key().kid()), &claims())
            .unwrap();
        assert_code(&token, InvalidToken);
    }
}

// ----- keys ---------------------------------------------------------------------------------

#[test]
fn valid_signature_from_a_key_not_in_the_jwks_under_a_known_kid() {
    let attacker_ed = Signer::new(SigningKey::generate_ed25519().unwrap());
    let token = attacker_ed
        .sign_with_header(&header("EdDSA", ed().key().kid()), &claims())
        .unwrap();
    let e = assert_code(&token, InvalidToken);
    assert!(e.message.contains("signature"), "{e}");
    let attacker_rsa = Signer::new(SigningKey::generate_rsa().unwrap());
    let token = attacker_rsa
        .sign_with_header(&header("RS256", rsa().key().kid()), &claims())
        .unwrap();
    assert_code(&token, InvalidToken);
}

#[test]
fn key_not_in_the_jwks_under_its_own_kid() {
    let attacker = Signer::new(SigningKey::generate_ed25519().unwrap());
    assert_code(&attacker.sign(&claims()).unwrap(), UnknownKey);
}

#[test]
fn kid_path_injection() {
    let attacker = Signer::new(SigningKey::generate_ed25519().unwrap());
    for kid in [
        "../../etc/passwd",
        "/dev/null",
        "../../../../proc/self/environ\0",
    ] {
        let token = attacker
            .sign_with_header(&header("EdDSA", kid), &claims())
            .unwrap();
        assert_code(&token, UnknownKey);
    }
}

#[test]
fn missing_kid() {
    let h = json!({"alg": "EdDSA", "typ": "JWT"});
    let e = assert_code(&ed().sign_with_header(&h, &claims()).unwrap(), InvalidToken);
    assert!(e.message.contains("kid"), "{e}");
    let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": ""});
    assert_code(&ed().sign_with_header(&h, &claims()).unwrap(), InvalidToken);
    let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": 7});
    assert_code(&ed().sign_with_header(&h, &claims()).unwrap(), InvalidToken);
}

/// A header naming the attacker's key in one of the key-carrying members.
fn key_header(member: &str, attacker: &Signer, kid: &str) -> Value {
    let mut h = header("EdDSA", kid);
    h[member] = match member {
        "jwk" => attacker.key().public_jwk(),
        "x5c" => {
            let pem = attacker.key().public_key_pem().unwrap();
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            json!([body])
        }
        _ => json!("http://127.0.0.1:9/attacker/jwks.json"),
    };
    h
}

fn key_carrying_header_is_ignored(member: &str) {
    let attacker = Signer::new(SigningKey::generate_ed25519().unwrap());
    // Under the attacker's own kid: not in the JWKS, whatever the header carries.
    let h = key_header(member, &attacker, attacker.key().kid());
    assert_code(
        &attacker.sign_with_header(&h, &claims()).unwrap(),
        UnknownKey,
    );
    // Under a trusted kid: checked against the JWKS key, so the signature fails.
    let h = key_header(member, &attacker, ed().key().kid());
    assert_code(
        &attacker.sign_with_header(&h, &claims()).unwrap(),
        InvalidToken,
    );
    // And a genuine token with such a header still verifies against the JWKS key.
    let h = key_header(member, &attacker, ed().key().kid());
    let genuine = ed().sign_with_header(&h, &claims()).unwrap();
    assert!(
        verifier()
            .verify(&genuine, std::time::SystemTime::now())
            .is_ok()
    );
}

#[test]
fn embedded_jwk_header_is_ignored() {
    key_carrying_header_is_ignored("jwk");
}

#[test]
fn jku_header_is_ignored() {
    key_carrying_header_is_ignored("jku");
}

#[test]
fn x5u_header_is_ignored() {
    key_carrying_header_is_ignored("x5u");
}

#[test]
fn x5c_header_is_ignored() {
    key_carrying_header_is_ignored("x5c");
}

#[test]
fn jku_header_triggers_no_fetch_in_verify_fresh() {
    let attacker = Signer::new(SigningKey::generate_ed25519().unwrap());
    let h = key_header("jku", &attacker, attacker.key().kid());
    let token = attacker.sign_with_header(&h, &claims()).unwrap();
    let v = verifier();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt.block_on(v.verify_fresh(&token)).unwrap_err();
    assert_eq!(e.code, UnknownKey);
    assert_eq!(v.keys().load_count(), 1, "a data: JWKS is never refetched");
}

// ----- tampering and malformed tokens --------------------------------------------------------

#[test]
fn tampered_payload() {
    let token = ed().sign(&claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let escalated = with(claims(), "scopes", json!(["relayfile:fs:*:*"]));
    let forged = format!("{}.{}.{}", parts[0], b64(escalated.to_string()), parts[2]);
    assert_code(&forged, InvalidToken);
    let token = rsa().sign(&claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let other_ws = with(claims(), "wks", json!("ws_other"));
    let forged = format!("{}.{}.{}", parts[0], b64(other_ws.to_string()), parts[2]);
    assert_code(&forged, InvalidToken);
}

#[test]
fn tampered_header() {
    let token = ed().sign(&claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": ed().key().kid(), "x": 1});
    let forged = format!("{}.{}.{}", b64(h.to_string()), parts[1], parts[2]);
    assert_code(&forged, InvalidToken);
}

#[test]
fn truncated_signature() {
    for signer in [ed(), rsa()] {
        let token = signer.sign(&claims()).unwrap();
        assert_code(&token[..token.len() - 4], InvalidToken);
        let (head, _) = token.rsplit_once('.').unwrap();
        assert_code(&format!("{head}."), InvalidToken);
        // A flipped bit in the signature.
        let sig = unb64(token.rsplit('.').next().unwrap());
        let mut flipped = sig.clone();
        flipped[0] ^= 1;
        assert_code(&format!("{head}.{}", b64(&flipped)), InvalidToken);
    }
}

#[test]
fn five_segments_jwe_shaped() {
    let token = ed().sign(&claims()).unwrap();
    let e = assert_code(&format!("{token}.AAAA.BBBB"), InvalidToken);
    assert!(e.message.contains("JWE"), "{e}");
    let jwe = "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.OKOawDo13gRp2ojaHV7LFpZcgV7T6DVZKTyKOMTYUmKoTCVJRgckCL9kiMT03JGeipsEdY3mx_etLbbWSrFr05kLzcSr4qKAq7YN7e9jwQRb23nfa6c9d-StnImGyFDbSv04uVuxIp5Zms1gNxKKK2Da14B8S4rzVRltdYwam_lDp5XnZAYpQdb76FdIKLaVmqgfwX7XWRxv2322i-vDxRfqNzo_tETKzpVLzfiwQyeyPGLBIO56YJ7eObdv0je81860ppamavo35UgoRdbYaBcoh9QcfylQr66oc6vFWXRcZ_ZT2LawVCWTIy3brGPi6UklfCpIMfIjf7iGdXKHzg.48V1_ALb6US04U3b.5eym8TW_c8SuK0ltJ3rpYIzOeDQz7TALvtu6UG9oMo4vpzs9tX_EFShS8iB7j6jiSdiwkIr3ajwQzaBtQD_A.XFBoMYUZodetZdvTiFvSkQ";
    assert_code(jwe, InvalidToken);
}

#[test]
fn wrong_segment_counts() {
    let token = ed().sign(&claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_code(&format!("{}.{}", parts[0], parts[1]), InvalidToken);
    assert_code(&format!("{token}.extra"), InvalidToken);
}

#[test]
fn padded_or_non_base64url_segments() {
    let token = ed().sign(&claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_code(
        &format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        InvalidToken,
    );
    let std_b64 = parts[2].replace('-', "+").replace('_', "/");
    if std_b64 != parts[2] {
        assert_code(
            &format!("{}.{}.{std_b64}", parts[0], parts[1]),
            InvalidToken,
        );
    }
    assert_code(&format!(" {token}"), InvalidToken);
    assert_code(&format!("Bearer {token}"), InvalidToken);
}

#[test]
fn typ_other_than_jwt() {
    for typ in ["JWE", "at+jwt", "dpop+jwt", ""] {
        let h = json!({"alg": "EdDSA", "typ": typ, "kid": ed().key().kid()});
        let e = assert_code(&ed().sign_with_header(&h, &claims()).unwrap(), InvalidToken);
        assert!(e.message.contains("typ"), "{e}");
    }
}

#[test]
fn crit_header_is_refused() {
    let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": ed().key().kid(), "crit": ["b64"], "b64": false});
    assert_code(&ed().sign_with_header(&h, &claims()).unwrap(), InvalidToken);
}

#[test]
fn duplicate_header_and_claim_members_are_refused() {
    let kid = ed().key().kid();
    let h = format!(r#"{{"alg":"EdDSA","alg":"none","typ":"JWT","kid":"{kid}"}}"#);
    let token = ed()
        .sign_segments(&b64(&h), &b64(claims().to_string()))
        .unwrap();
    assert_code(&token, InvalidToken);
    let c = claims().to_string();
    let dup = format!(r#"{{"exp":99999999999,{}"#, &c[1..]);
    let token = ed()
        .sign_segments(&b64(ed().header().to_string()), &b64(&dup))
        .unwrap();
    assert_code(&token, InvalidToken);
}

#[test]
fn non_object_header_or_payload() {
    let token = ed()
        .sign_segments(&b64("[1,2]"), &b64(claims().to_string()))
        .unwrap();
    assert_code(&token, InvalidToken);
    let token = ed()
        .sign_segments(&b64(ed().header().to_string()), &b64("[\"sub\"]"))
        .unwrap();
    let e = assert_code(&token, InvalidToken);
    assert!(e.message.contains("object"), "{e}");
    let token = ed()
        .sign_segments(&b64(ed().header().to_string()), &b64("not json"))
        .unwrap();
    assert_code(&token, InvalidToken);
}

#[test]
fn oversized_token_is_refused_before_parsing() {
    // Correctly signed, but over 64 KiB.
    let big = with(claims(), "meta", json!({"pad": "x".repeat(70 * 1024)}));
    let token = ed().sign(&big).unwrap();
    assert!(token.len() > 64 * 1024);
    let e = assert_code(&token, InvalidToken);
    assert!(e.message.contains("65536"), "{e}");
    // Not even a JWT: the size alone refuses it.
    let e = assert_code(&"A".repeat(64 * 1024 + 1), InvalidToken);
    assert!(e.message.contains("without being parsed"), "{e}");
    // A large token under the limit is fine.
    let large = with(claims(), "meta", json!({"pad": "x".repeat(40 * 1024)}));
    let token = ed().sign(&large).unwrap();
    assert!(token.len() < 64 * 1024);
    assert!(
        verifier()
            .verify(&token, std::time::SystemTime::now())
            .is_ok()
    );
}

#[test]
fn garbage_strings() {
    for garbage in [
        "",
        " ",
        "x",
        ".",
        "..",
        "...",
        "a.b.c",
        "eyJ.eyJ.",
        "🦀.🦀.🦀",
        "relay_ag_",
        "null",
        "{\"alg\":\"none\"}",
        "\0\0.\0.\0",
        "eyJhbGciOiJub25lIn0.e30.",
        "é.é.é",
        "Bearer",
        "bearé.x.y",
    ] {
        let e = refused(garbage);
        assert_eq!(e.code, InvalidToken, "{garbage:?}: {e}");
    }
}

// ----- claims -------------------------------------------------------------------------------

#[test]
fn expired() {
    let iat = now_secs() - 7200;
    let e = assert_code(&ed().sign(&claims_at(iat)).unwrap(), TokenExpired);
    assert!(e.message.contains("expired"), "{e}");
}

#[test]
fn string_exp() {
    let c = with(claims(), "exp", json!((now_secs() + 3600).to_string()));
    let e = assert_code(&ed().sign(&c).unwrap(), InvalidToken);
    assert!(e.message.contains("exp"), "{e}");
    let c = with(claims(), "exp", json!((now_secs() + 3600) as f64 + 0.5));
    assert_code(&ed().sign(&c).unwrap(), InvalidToken);
}

#[test]
fn exp_in_milliseconds() {
    // Valid for "a long time" to a naive parser; past the year 9999 to anyone who formats it.
    let ms = (now_secs() + 3600) * 1000;
    let e = assert_code(
        &ed().sign(&with(claims(), "exp", json!(ms))).unwrap(),
        InvalidToken,
    );
    assert!(e.message.contains("milliseconds"), "{e}");
    assert_code(
        &ed().sign(&with(claims(), "iat", json!(ms))).unwrap(),
        InvalidToken,
    );
    assert_code(
        &ed().sign(&with(claims(), "nbf", json!(ms))).unwrap(),
        InvalidToken,
    );
    // The last second of 9999 is still a date.
    let last = with(claims(), "exp", json!(253_402_300_799u64));
    assert!(
        verifier()
            .verify(&ed().sign(&last).unwrap(), std::time::SystemTime::now())
            .is_ok()
    );
}

#[test]
fn missing_exp() {
    let e = assert_code(&ed().sign(&without(claims(), "exp")).unwrap(), InvalidToken);
    assert!(e.message.contains("exp"), "{e}");
}

#[test]
fn other_missing_or_mistyped_claims() {
    for name in ["sub", "jti", "iat", "sponsorId", "sponsorChain", "scopes"] {
        let e = assert_code(&ed().sign(&without(claims(), name)).unwrap(), InvalidToken);
        assert!(e.message.contains(name), "{name}: {e}");
    }
    for (name, value) in [
        ("sub", json!(7)),
        ("iat", json!("yesterday")),
        ("nbf", json!("soon")),
        ("aud", json!({"relayfile": true})),
        ("scopes", json!([1, 2])),
        ("sid", json!(3)),
    ] {
        let e = assert_code(
            &ed().sign(&with(claims(), name, value)).unwrap(),
            InvalidToken,
        );
        assert!(e.message.contains(name), "{name}: {e}");
    }
    let e = assert_code(
        &ed().sign(&with(claims(), "sub", json!(""))).unwrap(),
        InvalidToken,
    );
    assert!(e.message.contains("sub"), "{e}");
}

#[test]
fn future_nbf() {
    let c = with(claims(), "nbf", json!(now_secs() + 3600));
    assert_code(&ed().sign(&c).unwrap(), TokenNotYetValid);
}

#[test]
fn future_iat() {
    let iat = now_secs() + 3600;
    assert_code(&ed().sign(&claims_at(iat)).unwrap(), TokenNotYetValid);
}

#[test]
fn wrong_aud() {
    let c = with(claims(), "aud", json!(["relayauth", "specialist"]));
    let e = assert_code(&ed().sign(&c).unwrap(), WrongAudience);
    assert!(e.message.contains("relayfile"), "{e}");
    let c = with(claims(), "aud", json!("Relayfile"));
    assert_code(&ed().sign(&c).unwrap(), WrongAudience);
}

#[test]
fn missing_aud() {
    assert_code(
        &ed().sign(&without(claims(), "aud")).unwrap(),
        WrongAudience,
    );
    assert_code(
        &ed().sign(&with(claims(), "aud", json!([]))).unwrap(),
        WrongAudience,
    );
}

#[test]
fn wrong_iss() {
    let c = with(claims(), "iss", json!("https://evil.example"));
    let e = assert_code(&ed().sign(&c).unwrap(), WrongIssuer);
    assert!(e.message.contains("evil.example"), "{e}");
    assert_code(&ed().sign(&without(claims(), "iss")).unwrap(), WrongIssuer);
    // A configured issuer is compared exactly.
    let v = verifier_with(
        &[ed()],
        VerifierConfig {
            issuer: "http://127.0.0.1:8787".into(),
            ..config()
        },
    );
    let e = refused_by(&v, &ed().sign(&claims()).unwrap());
    assert_eq!(e.code, WrongIssuer);
    let c = with(claims(), "iss", json!("http://127.0.0.1:8787"));
    assert!(
        v.verify(&ed().sign(&c).unwrap(), std::time::SystemTime::now())
            .is_ok()
    );
}

#[test]
fn other_workspace() {
    let c = with(claims(), "wks", json!("ws_other"));
    let e = assert_code(&ed().sign(&c).unwrap(), WrongWorkspace);
    assert!(
        e.message.contains("ws_other") && e.message.contains(WORKSPACE),
        "{e}"
    );
    assert_code(
        &ed().sign(&without(claims(), "wks")).unwrap(),
        WrongWorkspace,
    );
}

#[test]
fn other_org() {
    let c = with(claims(), "org", json!("org_other"));
    assert_code(&ed().sign(&c).unwrap(), WrongOrg);
    assert_code(&ed().sign(&without(claims(), "org")).unwrap(), WrongOrg);
    // Without a configured org any org passes, but one must be there.
    let v = verifier_with(&[ed()], VerifierConfig::new(WORKSPACE));
    assert!(
        v.verify(&ed().sign(&c).unwrap(), std::time::SystemTime::now())
            .is_ok()
    );
    let e = refused_by(&v, &ed().sign(&without(claims(), "org")).unwrap());
    assert_eq!(e.code, InvalidToken);
}

#[test]
fn refresh_token_is_refused() {
    // relayauth's refresh tokens: token_type refresh, audience relayauth.
    let c = with(
        with(claims(), "token_type", json!("refresh")),
        "aud",
        json!(["relayauth"]),
    );
    let e = assert_code(&ed().sign(&c).unwrap(), WrongTokenType);
    assert!(e.message.contains("refresh"), "{e}");
    assert_code(
        &ed().sign(&without(claims(), "token_type")).unwrap(),
        WrongTokenType,
    );
    assert_code(
        &ed()
            .sign(&with(claims(), "token_type", json!("Access")))
            .unwrap(),
        WrongTokenType,
    );
}

#[test]
fn sponsor_chain_not_starting_with_sponsor() {
    let c = with(claims(), "sponsorChain", json!(["user_mallory", AGENT]));
    let e = assert_code(&ed().sign(&c).unwrap(), InvalidToken);
    assert!(e.message.contains("sponsorChain"), "{e}");
}

#[test]
fn sponsor_chain_not_ending_with_sub() {
    let c = with(claims(), "sponsorChain", json!([SPONSOR, "agent_other"]));
    assert_code(&ed().sign(&c).unwrap(), InvalidToken);
    let c = with(claims(), "sponsorChain", json!([SPONSOR]));
    assert_code(&ed().sign(&c).unwrap(), InvalidToken);
}

#[test]
fn sponsor_chain_longer_than_ten() {
    let mut chain = vec![SPONSOR.to_owned()];
    chain.extend((1..10).map(|i| format!("agent_{i}")));
    chain.push(AGENT.into());
    assert_eq!(chain.len(), 11);
    let e = assert_code(
        &ed()
            .sign(&with(claims(), "sponsorChain", json!(chain)))
            .unwrap(),
        InvalidToken,
    );
    assert!(e.message.contains("10"), "{e}");
    // Ten is the limit, and allowed.
    chain.remove(1);
    let ok = ed()
        .sign(&with(claims(), "sponsorChain", json!(chain)))
        .unwrap();
    assert!(verifier().verify(&ok, std::time::SystemTime::now()).is_ok());
}

#[test]
fn empty_sponsor_chain() {
    let c = with(claims(), "sponsorChain", json!([]));
    assert_code(&ed().sign(&c).unwrap(), InvalidToken);
}

// ----- leeway -------------------------------------------------------------------------------

#[test]
fn leeway_edges_for_exp() {
    let iat = 1_900_000_000;
    let exp = iat + 3600;
    let token = ed().sign(&claims_at(iat)).unwrap();
    let v = verifier(); // 30 s leeway
    // Past exp but within the leeway: accepted, yet already expired for local enforcement.
    let t = v.verify(&token, at(exp + 29)).unwrap();
    assert!(t.is_expired(at(exp + 29)));
    assert!(t.is_expired(at(exp)));
    assert!(!t.is_expired(at(exp - 1)));
    // At exp + leeway: refused.
    assert_eq!(
        v.verify(&token, at(exp + 30)).unwrap_err().code,
        TokenExpired
    );
    // No leeway: refused at exp itself.
    let strict = verifier_with(
        &[ed()],
        VerifierConfig {
            leeway: Duration::ZERO,
            ..config()
        },
    );
    assert!(strict.verify(&token, at(exp - 1)).is_ok());
    assert_eq!(
        strict.verify(&token, at(exp)).unwrap_err().code,
        TokenExpired
    );
    // A larger leeway.
    let lenient = verifier_with(
        &[ed()],
        VerifierConfig {
            leeway: Duration::from_secs(300),
            ..config()
        },
    );
    assert!(lenient.verify(&token, at(exp + 299)).is_ok());
    assert_eq!(
        lenient.verify(&token, at(exp + 300)).unwrap_err().code,
        TokenExpired
    );
}

#[test]
fn leeway_edges_for_nbf_and_iat() {
    let iat = 1_900_000_000;
    let nbf = iat + 100;
    let token = ed().sign(&with(claims_at(iat), "nbf", json!(nbf))).unwrap();
    let v = verifier();
    assert!(v.verify(&token, at(nbf - 30)).is_ok());
    assert_eq!(
        v.verify(&token, at(nbf - 31)).unwrap_err().code,
        TokenNotYetValid
    );
    let plain = ed().sign(&claims_at(iat)).unwrap();
    assert!(v.verify(&plain, at(iat - 30)).is_ok());
    assert_eq!(
        v.verify(&plain, at(iat - 31)).unwrap_err().code,
        TokenNotYetValid
    );
}

// ----- codes --------------------------------------------------------------------------------

#[test]
fn error_codes_are_the_stable_strings() {
    let names: Vec<&str> = TokenErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "invalid_token",
            "unknown_key",
            "token_expired",
            "token_not_yet_valid",
            "wrong_audience",
            "wrong_issuer",
            "wrong_workspace",
            "wrong_org",
            "wrong_token_type"
        ]
    );
    let e = TokenError::new(WrongOrg, "x");
    assert_eq!(e.to_string(), "wrong_org: x");
}

#[test]
fn debug_output_never_shows_the_raw_token() {
    let token = ed().sign(&claims()).unwrap();
    let t = verifier()
        .verify(&token, std::time::SystemTime::now())
        .unwrap();
    let shown = format!("{t:?}");
    assert!(!shown.contains(&token[..40]), "{shown}");
}

// ----- no input panics ----------------------------------------------------------------------

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_strings_are_refused_without_panicking(s in "\\PC{0,300}") {
        let e = refused(&s);
        proptest::prop_assert_eq!(e.code, InvalidToken);
    }

    #[test]
    fn arbitrary_segments_are_refused_without_panicking(
        h in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
        p in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
        s in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
    ) {
        let token = format!("{}.{}.{}", b64(&h), b64(&p), b64(&s));
        proptest::prop_assert!(verifier().verify(&token, std::time::SystemTime::now()).is_err());
    }

    #[test]
    fn arbitrary_headers_with_a_real_signature_are_refused_or_checked(
        alg in "(RS256|EdDSA|none|HS256|ES256|[A-Za-z0-9]{0,6})",
        // The real kids half the time, so the accepting branch is reached too.
        kid in proptest::prop_oneof![
            proptest::strategy::Just(ed().key().kid().to_owned()),
            proptest::strategy::Just(rsa().key().kid().to_owned()),
            "\\PC{0,20}",
        ],
        typ in proptest::option::of("(JWT|jwt|JWE|[a-z+]{0,8})"),
    ) {
        let mut h = json!({"alg": alg, "kid": kid});
        if let Some(t) = &typ {
            h["typ"] = json!(t);
        }
        let token = ed().sign_with_header(&h, &claims()).unwrap();
        let real = alg == "EdDSA" && kid == ed().key().kid() && typ
            .as_deref()
            .is_none_or(|t| t.eq_ignore_ascii_case("JWT"));
        match verifier().verify(&token, std::time::SystemTime::now()) {
            // Only the real key under its real kid with EdDSA passes, and it does pass.
            Ok(t) => {
                proptest::prop_assert!(real, "accepted alg {} kid {} typ {:?}", alg, kid, typ);
                proptest::prop_assert_eq!(t.key_id(), ed().key().kid());
                proptest::prop_assert_eq!(t.algorithm(), KeyAlgorithm::EdDsa);
            }
            Err(e) => {
                proptest::prop_assert!(!real, "refused a real token: {}", e);
                proptest::prop_assert!(matches!(e.code, InvalidToken | UnknownKey), "{}", e);
            }
        }
    }
}
