//! The claim set of a relayauth access token (DESIGN section 5), typed strictly.
//!
//! A claim of the wrong JSON type refuses the whole token rather than being coerced: a string
//! `exp` could otherwise be read as "no expiry" by one parser and as a date by another. The
//! shapes relayauth really emits are accepted: `aud` as a string or an array, `scopes` as an
//! array or one space-separated string, and `workspace_id` as an older name for `wks`. Claims
//! whose absence has its own rejection code (`aud`, `iss`, `token_type`, the workspace) default
//! to empty here so the verifier can say which one is missing; everything else is required.
//! Duplicate claim names are refused by the deserializer.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The verified claims of an access token. Deserializing one proves nothing: only
/// [`crate::token::VerifiedToken`] says the signature and the rules were checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The agent (identity) the token was issued to.
    pub sub: String,
    /// The organization.
    #[serde(default)]
    pub org: String,
    /// The workspace (`wks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wks: Option<String>,
    /// The workspace under its older name (`workspace_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// The granted scopes, in token order.
    #[serde(deserialize_with = "scopes_de")]
    pub scopes: Vec<String>,
    /// The human sponsor accountable for the agent.
    #[serde(rename = "sponsorId")]
    pub sponsor_id: String,
    /// From the sponsor to `sub`, through every delegating agent.
    #[serde(rename = "sponsorChain")]
    pub sponsor_chain: Vec<String>,
    /// The audiences.
    #[serde(default)]
    pub aud: Audience,
    /// The issuer.
    #[serde(default)]
    pub iss: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issue time, seconds since the epoch.
    pub iat: u64,
    /// The token id.
    pub jti: String,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The session id, kept across refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The token this one was delegated from.
    #[serde(
        rename = "parentTokenId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_token_id: Option<String>,
    /// `access` or `refresh`.
    #[serde(default)]
    pub token_type: String,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

impl Claims {
    /// The workspace the token names: `wks`, else `workspace_id`.
    pub fn workspace(&self) -> Option<&str> {
        self.wks.as_deref().or(self.workspace_id.as_deref())
    }
}

/// `aud`: one string or an array of strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Audience(pub Vec<String>);

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        self.0.iter().any(|a| a == audience)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// Visits a string or an array of strings; `split` says how a single string is read.
struct StringOrSeq {
    what: &'static str,
    split: bool,
}

impl<'de> Visitor<'de> for StringOrSeq {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.what)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        if self.split {
            Ok(v.split_ascii_whitespace().map(str::to_owned).collect())
        } else {
            Ok(vec![v.to_owned()])
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element::<String>()? {
            out.push(item);
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Audience, D::Error> {
        d.deserialize_any(StringOrSeq {
            what: "a string or an array of strings",
            split: false,
        })
        .map(Audience)
    }
}

fn scopes_de<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(StringOrSeq {
        what: "an array of strings or one space-separated string",
        split: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "sub": "agent_1", "org": "org_1", "wks": "ws_1", "scopes": ["relayfile:fs:read:*"],
            "sponsorId": "user_1", "sponsorChain": ["user_1", "agent_1"], "aud": ["relayfile"],
            "iss": "https://relayauth.dev", "exp": 2000, "iat": 1000, "jti": "tok_1",
            "token_type": "access"
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Claims, serde_json::Error> {
        serde_json::from_slice(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn accepts_relayauth_shapes() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.workspace(), Some("ws_1"));
        let mut v = base();
        v["aud"] = "relayfile".into();
        v["scopes"] = " a  b\tc ".into();
        v.as_object_mut().unwrap().remove("wks");
        v["workspace_id"] = "ws_2".into();
        let c = parse(&v).unwrap();
        assert_eq!(c.aud, Audience(vec!["relayfile".into()]));
        assert_eq!(c.scopes, ["a", "b", "c"]);
        assert_eq!(c.workspace(), Some("ws_2"));
    }

    #[test]
    fn refuses_wrong_types_and_duplicates() {
        for (claim, value) in [
            ("exp", serde_json::json!("2000")),
            ("exp", serde_json::json!(2000.5)),
            ("exp", serde_json::json!(-1)),
            ("iat", serde_json::json!(null)),
            ("aud", serde_json::json!(["relayfile", 7])),
            ("scopes", serde_json::json!([1])),
            ("sponsorChain", serde_json::json!("user_1")),
            ("nbf", serde_json::json!("soon")),
        ] {
            let mut v = base();
            v[claim] = value.clone();
            assert!(parse(&v).is_err(), "{claim} = {value}");
        }
        let text = r#"{"sub":"a","org":"o","wks":"w","scopes":[],"sponsorId":"s","sponsorChain":["s","a"],
            "aud":"relayfile","iss":"i","exp":2000,"exp":1,"iat":1,"jti":"j","token_type":"access"}"#;
        assert!(serde_json::from_str::<Claims>(text).is_err());
        let mut v = base();
        v.as_object_mut().unwrap().remove("exp");
        assert!(parse(&v).is_err());
    }
}
