//! Writeback: what a write to a provider-backed path needs besides its fs scope (DESIGN 8).
//!
//! relayfile pushes any regular file written under a provider's top-level directory to that
//! provider, so such a write is a writeback. It needs a matching policy from
//! `writeback-policies.json`, the requirement named by the policy's `relayfileScope` on the
//! written path, and a payload that validates (JSON parses; the policy's JSON Schema, when it
//! names one, accepts it). No matching policy means denied, even with `relayfile:fs:write:*`.
//!
//! This module is pure apart from reading schema files: the filesystem stages the bytes and asks
//! [`PolicySet::check_payload`] before anything reaches the mirror.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scope::{Requirement, Scope, ScopeForm, ScopeSet};

/// Top-level names that are never provider content.
pub const RESERVED_ROOTS: [&str; 5] = [
    ".relay",
    ".skills",
    "digests",
    "node_modules",
    "_PERMISSIONS.md",
];
/// Version-control directories, local at any depth.
pub const VCS_DIRS: [&str; 4] = [".git", ".hg", ".svn", ".jj"];

/// Whether `name` is an editor temporary name relayfile ignores until it is renamed.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(".#")
        || name.ends_with(".swp")
        || name.ends_with('~')
        || name.ends_with(".tmp")
        || name.contains(".writer-tmp-")
}

/// Which paths relayfile would push to a provider.
#[derive(Clone, Debug, Default)]
pub struct ProviderAreas {
    /// Extra top-level directories that are local (`--local-roots`).
    pub local_roots: Vec<String>,
}

impl ProviderAreas {
    /// Whether a write to the regular file at `path` is a writeback: it lies in a provider
    /// area (below the top level) and its name is not an editor temporary.
    pub fn is_provider_backed(&self, path: &str) -> bool {
        match path.rsplit_once('/') {
            Some((dir, name)) => {
                !dir.trim_start_matches('/').is_empty()
                    && !VCS_DIRS.contains(&name)
                    && self.is_provider_area(dir)
                    && !is_temp_name(name)
            }
            None => false,
        }
    }

    /// Whether files directly in the directory `dir` would be pushed to a provider: `dir` is
    /// under a provider's top-level directory (not a reserved or local root) and inside no
    /// version-control metadata.
    pub fn is_provider_area(&self, dir: &str) -> bool {
        let mut segments = dir.trim_start_matches('/').split('/');
        let top = segments.next().unwrap_or_default();
        !top.is_empty()
            && !RESERVED_ROOTS.contains(&top)
            && !self.local_roots.iter().any(|r| r == top)
            && !VCS_DIRS.contains(&top)
            && !segments.any(|s| VCS_DIRS.contains(&s))
    }
}

/// Payloads bigger than this are not validated, and so refused: a writeback is a record
/// (a review, a comment, an issue), and validating means holding it in memory whole.
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// One segment of a policy path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Literal(String),
    /// `{name}`: one non-empty segment.
    Param,
    /// A glob within one segment (`*.json`): `*` matches any bytes except `/`.
    Glob(String),
    /// A final `**`: any depth (at least one segment).
    Rest,
}

fn glob_match(pattern: &str, text: &str) -> bool {
    // Iterative `*`-only matching with backtracking to the last star.
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

impl Seg {
    fn matches(&self, seg: &str) -> bool {
        match self {
            Seg::Literal(l) => l == seg,
            Seg::Param => !seg.is_empty(),
            Seg::Glob(g) => glob_match(g, seg),
            Seg::Rest => true,
        }
    }
}

fn compile_pattern(pattern: &str) -> Result<Vec<Seg>, String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err("must start with /".to_owned());
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segs = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let seg = if part.is_empty() {
            return Err(format!("empty segment {}", i + 1));
        } else if *part == "**" {
            if !last {
                return Err("`**` may only be the last segment".to_owned());
            }
            Seg::Rest
        } else if part.starts_with('{') && part.ends_with('}') && part.len() > 2 {
            Seg::Param
        } else if part.contains('{') || part.contains('}') {
            return Err(format!(
                "segment {:?}: a parameter must be a whole segment",
                part
            ));
        } else if part.contains("**") {
            return Err(format!("segment {:?}: `**` must be a whole segment", part));
        } else if part.contains('*') {
            Seg::Glob((*part).to_owned())
        } else {
            Seg::Literal((*part).to_owned())
        };
        segs.push(seg);
    }
    Ok(segs)
}

/// A writeback policy (governance contract section 7).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub id: String,
    pub path_pattern: String,
    pub provider: String,
    pub provider_action: String,
    pub relayfile_scope: String,
    #[serde(default)]
    pub required_o_auth_scopes: Vec<String>,
    #[serde(default)]
    pub payload_schema_ref: Option<String>,
    #[serde(default)]
    pub connection_resolution: Value,
    #[serde(default)]
    pub idempotency_key_fields: Vec<String>,
    #[serde(default)]
    pub conflict_behavior: Value,
    #[serde(skip)]
    segs: Vec<Seg>,
    #[serde(skip)]
    requirement: Option<Requirement>,
}

/// What `_PERMISSIONS.md` shows of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct PolicySummary {
    pub id: String,
    pub path_pattern: String,
    pub provider: String,
    pub provider_action: String,
    pub relayfile_scope: String,
    pub payload_schema_ref: Option<String>,
}

impl Policy {
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match self.segs.last() {
            Some(Seg::Rest) => {
                let fixed = &self.segs[..self.segs.len() - 1];
                parts.len() > fixed.len() && fixed.iter().zip(&parts).all(|(s, p)| s.matches(p))
            }
            _ => {
                parts.len() == self.segs.len()
                    && self.segs.iter().zip(&parts).all(|(s, p)| s.matches(p))
            }
        }
    }

    /// Whether some path below `dir` could match.
    fn reaches_below(&self, dir: &str) -> bool {
        let parts: Vec<&str> = dir
            .trim_start_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        for (i, p) in parts.iter().enumerate() {
            match self.segs.get(i) {
                Some(Seg::Rest) => return true,
                Some(s) if s.matches(p) => {}
                _ => return false,
            }
        }
        self.segs.len() > parts.len()
    }

    /// The requirement named by `relayfileScope` (`relayfile:fs:create` means `fs:create`).
    pub fn requirement(&self) -> Option<&Requirement> {
        self.requirement.as_ref()
    }

    pub fn summary(&self) -> PolicySummary {
        PolicySummary {
            id: self.id.clone(),
            path_pattern: self.path_pattern.clone(),
            provider: self.provider.clone(),
            provider_action: self.provider_action.clone(),
            relayfile_scope: self.relayfile_scope.clone(),
            payload_schema_ref: self.payload_schema_ref.clone(),
        }
    }
}

/// The SHA-256 of a policy file's bytes.
pub type Digest = Vec<u8>;

/// The largest policy file read.
const MAX_POLICY_FILE: u64 = 4 << 20;

/// Why the policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("writeback policies {path}: cannot read: {message}")]
    Read { path: PathBuf, message: String },
    #[error("writeback policies {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
struct PolicyFile {
    version: u32,
    policies: Vec<Policy>,
}

/// The policies in force, in file order (the first match wins).
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    policies: Vec<Policy>,
}

/// Why a write is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No policy, or the token lacks the policy's scope: `EACCES`.
    Policy(String),
    /// The content does not validate: `EINVAL`.
    Payload(String),
}

impl Refusal {
    pub fn errno(&self) -> i32 {
        match self {
            Refusal::Policy(_) => libc::EACCES,
            Refusal::Payload(_) => libc::EINVAL,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::Policy(m) | Refusal::Payload(m) => m,
        }
    }
}

impl PolicySet {
    /// Parse a policy file; every error names the policy and the field.
    pub fn parse(text: &str, origin: &Path) -> Result<PolicySet, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let file: PolicyFile = serde_json::from_str(text).map_err(|e| {
            invalid(format!(
                "not a policy file ({{\"version\": 1, \"policies\": [...]}}): {e}"
            ))
        })?;
        if file.version != 1 {
            return Err(invalid(format!(
                "version {} is not supported (expected 1)",
                file.version
            )));
        }
        let mut policies = Vec::with_capacity(file.policies.len());
        for mut p in file.policies {
            if p.id.is_empty() {
                return Err(invalid("a policy has an empty id".to_owned()));
            }
            p.segs = compile_pattern(&p.path_pattern).map_err(|e| {
                invalid(format!(
                    "policy {}: pathPattern {:?} {e}",
                    p.id, p.path_pattern
                ))
            })?;
            let scope = Scope::parse(&p.relayfile_scope);
            let req = match (&scope.form, scope.problem()) {
                (ScopeForm::Grant(g), None) => match &g.resource {
                    crate::scope::Resource::Named(r) => {
                        Requirement::parse(&format!("{r}:{}", g.action)).ok()
                    }
                    crate::scope::Resource::Any => None,
                },
                _ => None,
            };
            let Some(req) = req else {
                return Err(invalid(format!(
                    "policy {}: relayfileScope {:?} must name a requirement such as relayfile:fs:create",
                    p.id, p.relayfile_scope
                )));
            };
            p.requirement = Some(req);
            // relayfile's adapters write `""` for "no schema"; anything else must be a plain
            // name, refused here rather than at the first close().
            p.payload_schema_ref = match p.payload_schema_ref.take() {
                Some(r) if r.is_empty() => None,
                Some(r) if !plain_schema_ref(&r) => {
                    return Err(invalid(format!(
                        "policy {}: payloadSchemaRef {:?} must be a plain schema name (letters, digits, \
                         '.', '-' and '_', not starting with '.'), or empty for no schema",
                        p.id, r
                    )));
                }
                other => other,
            };
            policies.push(p);
        }
        Ok(PolicySet { policies })
    }

    /// Load a policy file.
    /// Load a policy file: a regular file of at most 4 MiB (a FIFO or a device at the path is
    /// refused at once rather than read).
    pub fn load(path: &Path) -> Result<PolicySet, PolicyError> {
        PolicySet::load_versioned(path)
            .map(|(set, _)| set)
            .map_err(|(e, _)| e)
    }

    /// [`PolicySet::load`], with the SHA-256 of the bytes it was parsed from (so a watcher can
    /// tell a real change from a rewrite with the same content). A read error carries no
    /// digest; a parse error carries the digest of what failed to parse.
    pub fn load_versioned(
        path: &Path,
    ) -> Result<(PolicySet, Digest), (PolicyError, Option<Digest>)> {
        let read_error = |message: String| PolicyError::Read {
            path: path.to_owned(),
            message,
        };
        let bytes = crate::files::read_regular(path, MAX_POLICY_FILE)
            .map_err(|e| (read_error(e.to_string()), None))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
            .as_ref()
            .to_vec();
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            (
                read_error("it is not UTF-8 text".into()),
                Some(digest.clone()),
            )
        })?;
        match PolicySet::parse(text, path) {
            Ok(set) => Ok((set, digest)),
            Err(e) => Err((e, Some(digest))),
        }
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policy with this id (the one a writeback was permitted by; `None` once a reload
    /// dropped it).
    pub fn by_id(&self, id: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.id == id)
    }

    /// The policy governing a write to `path`.
    pub fn matching(&self, path: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.matches(path))
    }

    /// The policies that can govern paths below `dir`.
    pub fn applying_in(&self, dir: &str) -> Vec<PolicySummary> {
        self.policies
            .iter()
            .filter(|p| p.reaches_below(dir))
            .map(Policy::summary)
            .collect()
    }

    /// Policy and scope check for a writeback to `path`: the policy, or why not.
    pub fn authorize(&self, scopes: &ScopeSet, path: &str) -> Result<&Policy, Refusal> {
        let Some(policy) = self.matching(path) else {
            return Err(Refusal::Policy(format!(
                "{path} is provider-backed and no writeback policy matches it, so it cannot be written"
            )));
        };
        let Some(req) = policy.requirement() else {
            return Err(Refusal::Policy(format!(
                "policy {} names no requirement",
                policy.id
            )));
        };
        if scopes.check_exact(req, path.as_bytes()).is_none() {
            return Err(Refusal::Policy(format!(
                "writeback policy {} needs {req} on {path}, which the token does not grant",
                policy.id
            )));
        }
        Ok(policy)
    }

    /// Validate the bytes about to be written to `path` under `policy`.
    pub fn check_payload(
        &self,
        policy: &Policy,
        path: &str,
        content: &[u8],
        schemas: &dyn SchemaSource,
    ) -> Result<(), Refusal> {
        let is_json = path.ends_with(".json");
        if !is_json && policy.payload_schema_ref.is_none() {
            return Ok(());
        }
        let value: Value = serde_json::from_slice(content).map_err(|e| {
            Refusal::Payload(format!(
                "{path} is not valid JSON ({e}); policy {} needs a JSON payload",
                policy.id
            ))
        })?;
        let Some(schema_ref) = &policy.payload_schema_ref else {
            return Ok(());
        };
        let schema = schemas.load(schema_ref, path).map_err(Refusal::Payload)?;
        let validator = compile_schema(&schema).map_err(|e| {
            // The builder's message can quote the schema; it goes to the operator's log only.
            tracing::warn!(
                "schema {schema_ref} of policy {} cannot be used: {e}",
                policy.id
            );
            Refusal::Payload(format!(
                "schema {schema_ref} of policy {} is not a usable JSON Schema (it may refer to \
                 another document, which is never fetched); the write is refused until it is fixed",
                policy.id
            ))
        })?;
        // Messages name the place in the payload and the rule it breaks, never a value: neither
        // the payload's nor the schema's (which the writer may not be allowed to read).
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .take(5)
            .map(|e| describe_violation(&e))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Refusal::Payload(format!(
                "{path} does not match schema {schema_ref} of policy {}: {}",
                policy.id,
                errors.join("; ")
            )))
        }
    }
}

/// Compile a payload schema. External references are never resolved: no file, no network, so
/// a schema cannot make the daemon read anything (or block on a FIFO) on a writer's behalf; the
/// JSON Schema meta-schemas are built in.
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .offline()
        .build(schema)
        .map_err(|e| e.to_string())
}

/// One schema violation without any value in it: where it is and which keyword it breaks.
fn describe_violation(e: &jsonschema::ValidationError<'_>) -> String {
    let at = e.instance_path().to_string();
    let at = if at.is_empty() { "/".to_owned() } else { at };
    format!("{at} does not satisfy \"{}\"", e.kind().keyword())
}

/// Where JSON Schemas named by `payloadSchemaRef` come from.
pub trait SchemaSource {
    /// The schema `schema_ref` for a write to `path`: `<mirror>/.relay/schemas/<ref>.json`, else
    /// `<ref>.schema.json` beside the written file. An error says where it looked.
    fn load(&self, schema_ref: &str, path: &str) -> Result<Value, String>;
}

/// Whether a schema reference is a plain name (no path tricks): ASCII letters, digits, `.`,
/// `-` and `_`, not starting with `.`, at most 200 bytes.
pub fn plain_schema_ref(schema_ref: &str) -> bool {
    !schema_ref.is_empty()
        && schema_ref.len() <= 200
        && !schema_ref.starts_with('.')
        && schema_ref
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Schemas read from one directory (for tests and `--writeback-policies` without a mirror).
#[derive(Clone, Debug)]
#[cfg(test)]
pub struct DirSchemas(pub PathBuf);

#[cfg(test)]
impl SchemaSource for DirSchemas {
    fn load(&self, schema_ref: &str, _path: &str) -> Result<Value, String> {
        if !plain_schema_ref(schema_ref) {
            return Err(format!(
                "schema reference {schema_ref:?} is not a plain name"
            ));
        }
        let file = self.0.join(format!("{schema_ref}.json"));
        let text = std::fs::read_to_string(&file).map_err(|e| {
            format!("schema {schema_ref} was not found at {} ({e}); the write is refused until it exists", file.display())
        })?;
        serde_json::from_str(&text)
            .map_err(|e| format!("schema {} is not JSON: {e}", file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: &str = r#"{"version": 1, "policies": [
        {"id": "review", "pathPattern": "/github/repos/{owner}/{repo}/pulls/{number}/reviews/*.json",
         "provider": "github", "providerAction": "github.pulls.createReview",
         "relayfileScope": "relayfile:fs:create", "payloadSchemaRef": "review.v1"},
        {"id": "slack", "pathPattern": "/slack/channels/{channel}/messages/**",
         "provider": "slack", "providerAction": "slack.chat.postMessage", "relayfileScope": "relayfile:fs:write"}
    ]}"#;

    fn set() -> PolicySet {
        PolicySet::parse(POLICIES, Path::new("p.json")).unwrap()
    }

    #[test]
    fn pattern_matching() {
        let s = set();
        assert_eq!(
            s.matching("/github/repos/acme/api/pulls/42/reviews/r.json")
                .unwrap()
                .id,
            "review"
        );
        assert!(
            s.matching("/github/repos/acme/api/pulls/42/reviews/r.txt")
                .is_none()
        );
        assert!(
            s.matching("/github/repos/acme/api/pulls/42/reviews/x/r.json")
                .is_none()
        );
        assert!(
            s.matching("/github/repos//api/pulls/42/reviews/r.json")
                .is_none()
        );
        assert_eq!(
            s.matching("/slack/channels/c1/messages/a/b.json")
                .unwrap()
                .id,
            "slack"
        );
        assert!(s.matching("/slack/channels/c1/messages").is_none());
        assert!(glob_match("*.json", "a.json") && !glob_match("*.json", "a.jso"));
        assert!(glob_match("a*b*c", "aXbYc") && !glob_match("a*b*c", "aXbY"));
        assert_eq!(s.applying_in("/github/repos/acme").len(), 1);
        assert_eq!(s.applying_in("/").len(), 2);
        assert!(s.applying_in("/linear").is_empty());
    }

    #[test]
    fn malformed_files_are_errors_that_name_the_policy() {
        for (text, needle) in [
            ("{", "not a policy file"),
            (r#"{"version": 2, "policies": []}"#, "version 2"),
            (
                r#"{"version": 1, "policies": [{"id": "x", "pathPattern": "/a/**/b", "provider": "p", "providerAction": "a", "relayfileScope": "relayfile:fs:create"}]}"#,
                "policy x",
            ),
            (
                r#"{"version": 1, "policies": [{"id": "y", "pathPattern": "/a", "provider": "p", "providerAction": "a", "relayfileScope": "nonsense"}]}"#,
                "relayfileScope",
            ),
        ] {
            let e = PolicySet::parse(text, Path::new("p.json"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn provider_backed_paths() {
        let b = ProviderAreas {
            local_roots: vec!["scratch".into()],
        };
        assert!(b.is_provider_backed("/github/x.json"));
        assert!(!b.is_provider_backed("/x.json"));
        assert!(!b.is_provider_backed("/.relay/state.json"));
        assert!(!b.is_provider_backed("/scratch/x"));
        assert!(!b.is_provider_backed("/github/repo/.git/index"));
        assert!(!b.is_provider_backed("/github/a/.x.json.swp"));
        assert!(!b.is_provider_backed("/github/a/x.json.tmp"));
        assert!(!b.is_provider_backed("/github/a/x.json~"));
        assert!(!b.is_provider_backed("/github/a/x.writer-tmp-1"));
        assert!(!b.is_provider_backed("/node_modules/a/b"));
        assert!(!b.is_provider_backed("/github/.git"));
        assert!(!b.is_provider_backed("/.git/x"));
        assert!(b.is_provider_area("/github"));
        assert!(b.is_provider_area("/github/repos/acme"));
        assert!(!b.is_provider_area("/"));
        assert!(!b.is_provider_area("/scratch/a"));
        assert!(!b.is_provider_area("/github/repo/.git"));
        assert!(!b.is_provider_area("/.relay"));
    }

    #[test]
    fn authorization_and_payloads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("review.v1.json"),
            r#"{"type": "object", "required": ["body"], "properties": {"body": {"type": "string", "minLength": 1}}}"#,
        )
        .unwrap();
        let s = set();
        let schemas = DirSchemas(dir.path().to_owned());
        let path = "/github/repos/acme/api/pulls/42/reviews/r.json";
        let create = ScopeSet::new(["relayfile:fs:create:/github/**"]);
        let read = ScopeSet::new(["relayfile:fs:read:/github/**"]);
        let p = s.authorize(&create, path).unwrap();
        assert!(matches!(s.authorize(&read, path), Err(Refusal::Policy(_))));
        assert!(matches!(
            s.authorize(&create, "/github/x/y.json"),
            Err(Refusal::Policy(_))
        ));
        assert!(
            s.check_payload(p, path, br#"{"body": "ok"}"#, &schemas)
                .is_ok()
        );
        let e = s
            .check_payload(p, path, br#"{"body": ""}"#, &schemas)
            .unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        let e = s
            .check_payload(p, path, b"{not json", &schemas)
            .unwrap_err();
        assert!(e.message().contains("not valid JSON"));
        let missing = DirSchemas(dir.path().join("missing"));
        let e = s
            .check_payload(p, path, br#"{"body": "ok"}"#, &missing)
            .unwrap_err();
        assert!(e.message().contains("not found"));
    }

    fn one_policy(schema_ref: &str) -> String {
        format!(
            r#"{{"version": 1, "policies": [{{"id": "p", "pathPattern": "/github/**", "provider": "github",
                "providerAction": "a", "relayfileScope": "relayfile:fs:write", "payloadSchemaRef": {}}}]}}"#,
            serde_json::Value::String(schema_ref.to_owned())
        )
    }

    #[test]
    fn an_empty_schema_ref_means_no_schema_and_a_bad_one_is_refused_at_load() {
        let set = PolicySet::parse(&one_policy(""), Path::new("p.json")).unwrap();
        assert_eq!(set.policies()[0].payload_schema_ref, None);
        let schemas = DirSchemas(PathBuf::from("/nonexistent"));
        assert!(
            set.check_payload(&set.policies()[0], "/github/a.json", b"{}", &schemas)
                .is_ok()
        );
        for bad in [
            "../x",
            "a/b",
            ".hidden",
            "x y",
            "file:///etc/passwd",
            "a\u{1}",
        ] {
            let e = PolicySet::parse(&one_policy(bad), Path::new("p.json"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("payloadSchemaRef"), "{bad}: {e}");
        }
    }

    #[test]
    fn schemas_never_resolve_external_references() {
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), r#"{"enum": ["SECRET-VALUE-FROM-A-FILE"]}"#).unwrap();
        let url = format!("file://{}", secret.path().display());
        for schema in [
            serde_json::json!({"$ref": url}),
            serde_json::json!({"properties": {"body": {"$ref": url}}}),
            serde_json::json!({"$ref": "file:///dev/zero"}),
            serde_json::json!({"$ref": "https://example.com/schema.json"}),
        ] {
            assert!(compile_schema(&schema).is_err(), "{schema}");
        }
        // A reference inside the document itself still works.
        let local = serde_json::json!({
            "$defs": {"body": {"type": "string"}},
            "properties": {"body": {"$ref": "#/$defs/body"}}
        });
        let v = compile_schema(&local).unwrap();
        assert!(v.is_valid(&serde_json::json!({"body": "x"})));
        assert!(!v.is_valid(&serde_json::json!({"body": 1})));
    }

    #[test]
    fn refusals_quote_neither_the_payload_nor_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s.json"),
            r#"{"type": "object", "properties": {"kind": {"enum": ["SCHEMA-ONLY-VALUE"]},
                "body": {"type": "string", "pattern": "^SCHEMA-PATTERN$"}}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("bad.json"),
            r#"{"$ref": "file:///etc/passwd"}"#,
        )
        .unwrap();
        let set = PolicySet::parse(&one_policy("s"), Path::new("p.json")).unwrap();
        let schemas = DirSchemas(dir.path().to_owned());
        let e = set
            .check_payload(
                &set.policies()[0],
                "/github/a.json",
                br#"{"kind": "PAYLOAD-VALUE", "body": "PAYLOAD-BODY"}"#,
                &schemas,
            )
            .unwrap_err();
        let m = e.message();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(m.contains("/kind") && m.contains("enum"), "{m}");
        for leaked in [
            "SCHEMA-ONLY-VALUE",
            "SCHEMA-PATTERN",
            "PAYLOAD-VALUE",
            "PAYLOAD-BODY",
        ] {
            assert!(!m.contains(leaked), "{leaked} quoted in: {m}");
        }
        let set = PolicySet::parse(&one_policy("bad"), Path::new("p.json")).unwrap();
        let e = set
            .check_payload(&set.policies()[0], "/github/a.json", b"{}", &schemas)
            .unwrap_err();
        assert!(!e.message().contains("passwd"), "{}", e.message());
    }
}
