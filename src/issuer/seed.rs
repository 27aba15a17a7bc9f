//! Seed files (`--seed FILE`): identities to create at start, in the shape of
//! `mount-fixtures/identities/acme.json`:
//!
//! ```json
//! {"orgId": "org_acme", "workspaceId": "ws_acme", "sponsorId": "user_alice",
//!  "identities": [{"name": "acme-lead", "scopes": ["..."], "sponsorChain": ["..."],
//!                  "sponsorId": "...", "description": "..."}]}
//! ```
//!
//! Each identity may override `orgId`, `workspaceId` and `sponsorId`. Seeding is idempotent:
//! an identity that already exists (same name, org, workspace and parent, as after a restart
//! with `--state`) is reused, so the `name -> id` mapping stays the same.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::StartError;
use super::identities::NewIdentity;
use super::store::Store;

/// Largest seed file read.
const MAX_SEED_BYTES: u64 = 4 * 1024 * 1024;

/// A parsed seed file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seed {
    #[serde(default, alias = "org_id")]
    pub org_id: Option<String>,
    #[serde(default, alias = "workspace_id")]
    pub workspace_id: Option<String>,
    #[serde(default, alias = "sponsor_id")]
    pub sponsor_id: Option<String>,
    pub identities: Vec<SeedIdentity>,
}

/// One identity of a seed file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedIdentity {
    pub name: String,
    #[serde(default, alias = "org_id")]
    pub org_id: Option<String>,
    #[serde(default, alias = "workspace_id")]
    pub workspace_id: Option<String>,
    #[serde(default, alias = "sponsor_id")]
    pub sponsor_id: Option<String>,
    #[serde(default, alias = "sponsor_chain")]
    pub sponsor_chain: Option<Vec<String>>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

impl Seed {
    /// Parse a seed file's text.
    pub fn parse(text: &str) -> Result<Seed, StartError> {
        serde_json::from_str(text).map_err(|e| StartError::Seed(e.to_string()))
    }

    /// Read and parse a seed file.
    pub fn from_file(path: &Path) -> Result<Seed, StartError> {
        let fail = |m: String| StartError::Seed(format!("{}: {m}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.len() > MAX_SEED_BYTES {
            return Err(fail(format!(
                "{} bytes, over the {MAX_SEED_BYTES}-byte limit",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        Seed::parse(&text).map_err(|e| fail(e.to_string()))
    }
}

impl Store {
    /// Create (or find) every identity of `seed`, in file order; returns `name -> id`.
    pub fn apply_seed(
        &mut self,
        seed: &Seed,
        now: u64,
    ) -> Result<BTreeMap<String, String>, StartError> {
        let mut names = BTreeMap::new();
        for (n, s) in seed.identities.iter().enumerate() {
            let pick = |own: &Option<String>, common: &Option<String>, field: &str| {
                own.clone().or_else(|| common.clone()).ok_or_else(|| {
                    StartError::Seed(format!(
                        "identity {} ({:?}) has no {field} and the file gives no default",
                        n + 1,
                        s.name
                    ))
                })
            };
            let mut metadata = Map::new();
            if let Some(d) = &s.description {
                metadata.insert("description".into(), Value::String(d.clone()));
            }
            let req = NewIdentity {
                name: s.name.clone(),
                org_id: pick(&s.org_id, &seed.org_id, "orgId")?,
                workspace_id: pick(&s.workspace_id, &seed.workspace_id, "workspaceId")?,
                sponsor_id: pick(&s.sponsor_id, &seed.sponsor_id, "sponsorId")?,
                scopes: s.scopes.clone(),
                sponsor_chain: s.sponsor_chain.clone(),
                metadata,
            };
            let identity = self.ensure_identity(req, now).map_err(|e| {
                StartError::Seed(format!("identity {} ({:?}): {}", n + 1, s.name, e.message))
            })?;
            if names
                .insert(identity.name.clone(), identity.id.clone())
                .is_some()
            {
                return Err(StartError::Seed(format!(
                    "the name {:?} appears twice; names in a seed file must be unique",
                    identity.name
                )));
            }
        }
        Ok(names)
    }
}
