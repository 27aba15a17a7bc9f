//! `_PERMISSIONS.md`: what this caller may do in this directory, and why (DESIGN section 9).
//!
//! [`compute`] asks [`crate::authz::decide`] (the code that enforces) about the directory and
//! each visible entry, so every claim in the file is what enforcement decides; [`render`] turns
//! that into plain Markdown an agent can act on, ending with a fenced `json` block of the same
//! facts for programs. Both are pure; the filesystem lists the directory and passes the names in.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde::Serialize;

use crate::authz::{self, Decision, Op, Place, Verdict};
use crate::scope::pattern::PathPattern;
use crate::scope::{Requirement, ScopeForm, ScopeSet, path as vpath};
use crate::session::{Denial, Grants, State};
use crate::writeback::{PolicySet, PolicySummary};

/// One visible entry of the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub kind: EntryKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One right on one path, as enforcement decides it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Right {
    pub allowed: bool,
    /// The scope that grants it.
    pub scope: Option<String>,
    /// The requirement no scope grants, when that is why it is refused (`fs:write`).
    pub lacks: Option<String>,
    /// Why it is refused, when the reason is not a missing scope.
    pub why: Option<String>,
}

/// An entry and the caller's rights on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryRights {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Files: open for reading. Directories: list.
    pub read: Right,
    pub write: Right,
    pub delete: Right,
}

/// Which new names a create-capable scope allows directly in this directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Names {
    /// Any name.
    Any,
    /// Names starting with `prefix`.
    Prefix { prefix: String },
    /// Exactly `name`.
    Exact { name: String },
}

impl Names {
    pub fn admits(&self, name: &str) -> bool {
        match self {
            Names::Any => true,
            Names::Prefix { prefix } => name.starts_with(prefix.as_str()),
            Names::Exact { name: n } => n == name,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CreateClaim {
    pub scope: String,
    pub names: Names,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScopeNote {
    pub scope: String,
    pub valid: bool,
    pub problem: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DenialNote {
    pub at: String,
    pub path: String,
    pub operation: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Who {
    pub agent: String,
    pub sponsor: String,
    pub sponsor_chain: Vec<String>,
    pub org: String,
    pub workspace: String,
    pub token_id: String,
    pub session_id: String,
    pub expires_at: String,
    pub state: String,
    pub state_detail: String,
}

/// Everything `_PERMISSIONS.md` says, for one caller and one directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct View {
    pub directory: String,
    pub who: Who,
    pub list: bool,
    pub create: Vec<CreateClaim>,
    /// New files here are writebacks: creating one also needs a matching policy.
    pub provider_backed: bool,
    pub entries: Vec<EntryRights>,
    pub writeback_policies: Vec<PolicySummary>,
    pub scopes_granting_nothing: Vec<ScopeNote>,
    pub recent_denials: Vec<DenialNote>,
}

/// The caller's right to `op` on `path` as a decision says it.
pub fn right(d: &Decision, scopes: &ScopeSet, path: &str) -> Right {
    let (lacks, why) = match (&d.requirement, &d.reason) {
        _ if d.allowed() => (None, None),
        (Some(r), crate::authz::Reason::NoGrant) => (Some(r.to_string()), None),
        _ => (None, Some(d.describe(scopes, path))),
    };
    Right {
        allowed: d.allowed(),
        scope: d.matched_scope(scopes).map(str::to_owned),
        lacks,
        why,
    }
}

/// The place of a path for authorization (content, `_PERMISSIONS.md`, `/.relay`).
pub fn place_of(path: &str, name: &str) -> Place {
    if name == authz::PERMISSIONS_FILE {
        return Place::PermissionsFile;
    }
    match authz::classify_relay(path.as_bytes()) {
        Some(item) => Place::Relay(item),
        None => Place::Content,
    }
}

/// The caller a `_PERMISSIONS.md` is rendered for.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub grants: &'a Grants,
    pub state: &'a State,
    pub now: SystemTime,
    /// The caller's recent denials in this directory.
    pub denials: &'a [Denial],
}

/// What the caller may do, asked of the code that enforces it.
pub trait Judge {
    /// The right to `op` on the entry at `path` (named `name`, of `kind`).
    fn right(&self, path: &str, name: &str, kind: EntryKind, op: Op) -> Right;
}

/// A judge over a scope set alone (no mirror, no writeback policies): for tests and tools.
pub struct ScopeJudge<'a> {
    pub grants: &'a Grants,
    pub state: &'a State,
    pub place_for: &'a dyn Fn(&str, &str) -> Place,
}

impl Judge for ScopeJudge<'_> {
    fn right(&self, path: &str, name: &str, _kind: EntryKind, op: Op) -> Right {
        let place = (self.place_for)(path, name);
        let d = if *self.state == State::Active {
            authz::decide(&self.grants.scopes, path.as_bytes(), &place, op)
        } else {
            authz::decide_inactive(path.as_bytes(), &place, op, self.state.name())
        };
        right(&d, &self.grants.scopes, path)
    }
}

/// Decide the directory's and each entry's rights for `subject`, asking `judge`.
///
/// `policies` are the writeback policies in force; `provider_backed` says whether new files in
/// `dir` are writebacks (so creating one also needs a matching policy).
pub fn compute(
    subject: Subject<'_>,
    dir: &str,
    listed: &[Listed],
    judge: &dyn Judge,
    policies: &PolicySet,
    provider_backed: bool,
) -> View {
    let Subject {
        grants,
        state,
        now,
        denials,
    } = subject;
    let scopes = &grants.scopes;
    let active = *state == State::Active;
    let dir_name = dir.rsplit('/').next().unwrap_or("");
    let list = judge.right(dir, dir_name, EntryKind::Dir, Op::See).allowed;
    let entries = listed
        .iter()
        .map(|l| {
            let path = vpath::join(dir, &l.name);
            let read_op = if l.kind == EntryKind::Dir {
                Op::See
            } else {
                Op::Read
            };
            EntryRights {
                name: l.name.clone(),
                path: path.clone(),
                kind: l.kind,
                read: judge.right(&path, &l.name, l.kind, read_op),
                write: judge.right(&path, &l.name, l.kind, Op::Write),
                delete: judge.right(&path, &l.name, l.kind, Op::Delete),
            }
        })
        .collect();
    let create = if active && place_of(dir, dir_name) == Place::Content {
        create_claims(scopes, dir)
    } else {
        Vec::new()
    };
    let problems = scopes
        .problems()
        .map(|(s, p)| ScopeNote {
            scope: s.raw.to_string(),
            valid: !p.is_invalid(),
            problem: p.reason().to_owned(),
        })
        .collect();
    let expires = grants.expires_at;
    View {
        directory: dir.to_owned(),
        who: Who {
            agent: grants.actor.identity_id.clone(),
            sponsor: grants.actor.sponsor_id.clone(),
            sponsor_chain: grants.actor.sponsor_chain.clone(),
            org: grants.actor.org_id.clone(),
            workspace: grants.actor.workspace_id.clone(),
            token_id: grants.actor.token_id.clone(),
            session_id: grants.actor.session_id.clone(),
            expires_at: crate::token::time::format_rfc3339(expires),
            state: state.name().to_owned(),
            state_detail: describe_state(state, expires, now),
        },
        list,
        create,
        provider_backed,
        entries,
        writeback_policies: policies.applying_in(dir),
        scopes_granting_nothing: problems,
        recent_denials: denials
            .iter()
            .map(|d| DenialNote {
                at: crate::token::time::format_rfc3339(d.at),
                path: d.path.clone(),
                operation: d.operation.clone(),
                reason: d.reason.clone(),
            })
            .collect(),
    }
}

fn describe_state(state: &State, expires: SystemTime, now: SystemTime) -> String {
    match state {
        State::Active => match expires.duration_since(now) {
            Ok(left) => format!(
                "active; the token expires in {}",
                humantime::format_duration(std::time::Duration::from_secs(left.as_secs()))
            ),
            Err(_) => "active".to_owned(),
        },
        other => other.describe(),
    }
}

/// Which new names the create-capable grants allow directly in `dir`.
pub fn create_claims(scopes: &ScopeSet, dir: &str) -> Vec<CreateClaim> {
    let req = Requirement::known(Requirement::FS_CREATE);
    let child_prefix = if dir == "/" {
        "/".to_owned()
    } else {
        format!("{dir}/")
    };
    let mut out = Vec::new();
    let mut literal = None;
    let mut narrow = false;
    for scope in scopes.scopes() {
        let grant = match &scope.form {
            ScopeForm::Grant(g) if g.covers_requirement(&req) => g,
            ScopeForm::Literal if req.literal_forms().any(|l| l == *scope.raw) => {
                literal.get_or_insert_with(|| scope.raw.to_string());
                continue;
            }
            _ => continue,
        };
        narrow |= grant.explicit_path;
        let Ok(pattern) = &grant.path else { continue };
        let names = match pattern {
            PathPattern::Any => Some(Names::Any),
            PathPattern::Exact(e) => e
                .strip_prefix(child_prefix.as_str())
                .filter(|n| !n.is_empty() && !n.contains('/'))
                .map(|n| Names::Exact { name: n.to_owned() }),
            PathPattern::Subtree(d) if child_prefix.starts_with(&*d.child_prefix) => {
                Some(Names::Any)
            }
            PathPattern::Subtree(d) => d
                .node
                .strip_prefix(child_prefix.as_str())
                .filter(|n| !n.is_empty() && !n.contains('/'))
                .map(|n| Names::Exact { name: n.to_owned() }),
            PathPattern::Descendants(d) if child_prefix.starts_with(&*d.child_prefix) => {
                Some(Names::Any)
            }
            PathPattern::Descendants(_) => None,
            PathPattern::Prefix(s) if child_prefix.starts_with(&**s) => Some(Names::Any),
            PathPattern::Prefix(s) => s
                .strip_prefix(child_prefix.as_str())
                .filter(|n| !n.contains('/'))
                .map(|n| Names::Prefix {
                    prefix: n.to_owned(),
                }),
        };
        if let Some(names) = names {
            out.push(CreateClaim {
                scope: scope.raw.to_string(),
                names,
            });
        }
    }
    if let (Some(raw), false) = (literal, narrow) {
        out.push(CreateClaim {
            scope: raw,
            names: Names::Any,
        });
    }
    out
}

fn yes_no(r: &Right) -> String {
    match (&r.scope, &r.lacks, &r.why) {
        (Some(s), _, _) if r.allowed => format!("yes (`{s}`)"),
        _ if r.allowed => "yes".to_owned(),
        (_, Some(l), _) => format!("no (needs `{l}`)"),
        (_, _, Some(why)) => format!("no ({why})"),
        _ => "no".to_owned(),
    }
}

/// The Markdown text of `_PERMISSIONS.md`.
pub fn render(view: &View) -> String {
    let mut s = String::new();
    let w = &view.who;
    let _ = writeln!(s, "# Permissions in {}\n", view.directory);
    let _ = writeln!(
        s,
        "Generated by relayauth-mount for the agent that opened this file. It is not part of the \
         workspace, is never uploaded, and cannot be changed.\n"
    );
    let _ = writeln!(s, "## Who\n");
    let _ = writeln!(s, "- Agent: `{}`", w.agent);
    let _ = writeln!(
        s,
        "- Sponsor: `{}` (chain: {})",
        w.sponsor,
        w.sponsor_chain.join(" -> ")
    );
    let _ = writeln!(s, "- Org: `{}`, workspace: `{}`", w.org, w.workspace);
    let _ = writeln!(s, "- Token: `{}`, session: `{}`", w.token_id, w.session_id);
    let _ = writeln!(s, "- Expires: {}", w.expires_at);
    let _ = writeln!(s, "- Session: {}\n", w.state_detail);
    if w.state != "active" {
        let _ = writeln!(
            s,
            "**This session has ended: nothing in the workspace is visible or writable until a \
             new token is issued.** Ask your sponsor (`{}`) for a new delegation.\n",
            w.sponsor
        );
    }
    let _ = writeln!(s, "## What you may do here\n");
    let _ = writeln!(
        s,
        "- List this directory: {}",
        if view.list { "yes" } else { "no" }
    );
    if view.provider_backed && !view.create.is_empty() {
        let _ = writeln!(
            s,
            "- New files here are writebacks: besides the scope below, a file must match a writeback \
             policy (listed further down) and validate, or creating it is refused"
        );
    }
    if view.create.is_empty() {
        let _ = writeln!(
            s,
            "- Create new files or directories here: no (needs `fs:create` or `fs:write` on the new path)"
        );
    } else {
        for c in &view.create {
            let names = match &c.names {
                Names::Any => "any name".to_owned(),
                Names::Prefix { prefix } => format!("names starting with `{prefix}`"),
                Names::Exact { name } => format!("the name `{name}`"),
            };
            let _ = writeln!(s, "- Create new entries here: {names} (`{}`)", c.scope);
        }
    }
    let _ = writeln!(s);
    if !view.entries.is_empty() {
        let _ = writeln!(s, "## Entries\n");
        let _ = writeln!(s, "| name | type | read / list | write | delete |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for e in &view.entries {
            let kind = match e.kind {
                EntryKind::File => "file",
                EntryKind::Dir => "dir",
                EntryKind::Symlink => "symlink",
                EntryKind::Other => "other",
            };
            let _ = writeln!(
                s,
                "| {} | {kind} | {} | {} | {} |",
                e.name.replace('|', "\\|"),
                yes_no(&e.read),
                yes_no(&e.write),
                yes_no(&e.delete)
            );
        }
        let _ = writeln!(s);
    }
    if !view.writeback_policies.is_empty() {
        let _ = writeln!(s, "## Writeback policies here\n");
        let _ = writeln!(
            s,
            "A file written under these patterns is pushed to the provider. It must match a \
             policy, your token must grant the policy's scope, and the content must validate; \
             otherwise `close()` fails and nothing reaches the provider.\n"
        );
        for p in &view.writeback_policies {
            let schema = p
                .payload_schema_ref
                .as_deref()
                .map_or(String::new(), |r| format!(", schema `{r}`"));
            let _ = writeln!(
                s,
                "- `{}`: `{}` becomes `{}` on {} (needs `{}`{schema})",
                p.id, p.path_pattern, p.provider_action, p.provider, p.relayfile_scope
            );
        }
        let _ = writeln!(s);
    }
    if !view.scopes_granting_nothing.is_empty() {
        let _ = writeln!(s, "## Scopes in your token that grant nothing\n");
        for n in &view.scopes_granting_nothing {
            let kind = if n.valid { "grants nothing" } else { "invalid" };
            let _ = writeln!(s, "- `{}` ({kind}): {}", n.scope, n.problem);
        }
        let _ = writeln!(s);
    }
    if !view.recent_denials.is_empty() {
        let _ = writeln!(s, "## Your recent denials here\n");
        for d in &view.recent_denials {
            let _ = writeln!(s, "- {} {} `{}`: {}", d.at, d.operation, d.path, d.reason);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## How to get more access\n");
    let _ = writeln!(
        s,
        "Ask your lead agent or your sponsor (`{}`) to delegate the scope you need, naming the \
         path, e.g. `relayfile:fs:write:{}/**` to write here. A delegated scope must be within \
         what the delegating token holds.\n",
        w.sponsor,
        if view.directory == "/" {
            ""
        } else {
            &view.directory
        }
    );
    let _ = writeln!(s, "```json");
    let _ = writeln!(
        s,
        "{}",
        serde_json::to_string_pretty(view).unwrap_or_else(|_| "{}".to_owned())
    );
    let _ = writeln!(s, "```");
    s
}

/// Whether a decision would let the entry's `read` claim stand (used by tests).
pub fn claim_matches(right: &Right, d: &Decision) -> bool {
    right.allowed == (d.verdict == Verdict::Allow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testing::session;

    fn listed(names: &[(&str, EntryKind)]) -> Vec<Listed> {
        names
            .iter()
            .map(|(n, k)| Listed {
                name: (*n).to_owned(),
                kind: *k,
            })
            .collect()
    }

    #[test]
    fn claims_agree_with_enforcement() {
        let s = session(&[
            "relayfile:fs:read:*",
            "relayfile:fs:write:/github/repos/acme/api/**",
            "relayfile:fs:create:/github/repos/acme-*",
            "relayfile:fs:write:/github/repos/acme/api/pulls/*/reviews/*",
        ]);
        let g = s.grants();
        let names = listed(&[
            ("api", EntryKind::Dir),
            ("web", EntryKind::Dir),
            ("notes.md", EntryKind::File),
        ]);
        let place = |p: &str, n: &str| place_of(p, n);
        let subject = Subject {
            grants: &g,
            state: &State::Active,
            now: SystemTime::now(),
            denials: &[],
        };
        let judge = ScopeJudge {
            grants: &g,
            state: &State::Active,
            place_for: &place,
        };
        let view = compute(
            subject,
            "/github/repos/acme",
            &names,
            &judge,
            &PolicySet::default(),
            false,
        );
        for e in &view.entries {
            let op = if e.kind == EntryKind::Dir {
                Op::See
            } else {
                Op::Read
            };
            for (right, op) in [
                (&e.read, op),
                (&e.write, Op::Write),
                (&e.delete, Op::Delete),
            ] {
                let d = authz::decide(&g.scopes, e.path.as_bytes(), &Place::Content, op);
                assert!(claim_matches(right, &d), "{} {op:?}", e.path);
            }
        }
        let api = &view.entries[0];
        assert!(api.write.allowed);
        assert_eq!(
            api.write.scope.as_deref(),
            Some("relayfile:fs:write:/github/repos/acme/api/**")
        );
        assert!(!view.entries[1].write.allowed);
        let text = render(&view);
        assert!(text.contains("mid-path glob"), "{text}");
        assert!(text.contains("```json"));
        // The JSON block parses back to the same view.
        let json = text
            .split("```json\n")
            .nth(1)
            .unwrap()
            .split("\n```")
            .next()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["directory"], "/github/repos/acme");
        assert_eq!(v["entries"][0]["write"]["allowed"], true);
    }

    #[test]
    fn create_claims_agree_with_enforcement() {
        let scopes = ScopeSet::new([
            "relayfile:fs:create:/a/b/**",
            "relayfile:fs:create:/a/x.json",
            "relayfile:fs:write:/a/pre-*",
            "relayfile:fs:create:/c/*",
            "relayfile:fs:create:/d*",
            "relayfile:fs:read:/**",
        ]);
        let dirs = ["/", "/a", "/a/b", "/a/b/c", "/c", "/c/d", "/dx", "/e"];
        let names = ["b", "x.json", "pre-1", "pre", "y", "d", "dz"];
        for dir in dirs {
            let claims = create_claims(&scopes, dir);
            for name in names {
                let path = vpath::join(dir, name);
                let enforced =
                    authz::decide(&scopes, path.as_bytes(), &Place::Content, Op::Create).allowed();
                let claimed = claims.iter().any(|c| c.names.admits(name));
                assert_eq!(claimed, enforced, "{path}: claims {claims:?}");
            }
        }
    }
}
