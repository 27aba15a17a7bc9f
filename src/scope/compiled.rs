//! A token's scopes compiled for fast decisions.
//!
//! Every filesystem call asks "does this scope set grant `fs:<action>` on this path?", so the
//! answer must not scan the scopes. At compile time each known requirement (`fs:read`,
//! `ops:replay`, ...) gets a [`PathIndex`]: the grants that satisfy it, keyed by the directory
//! they anchor at. A lookup walks the path's own key and its ancestors (deepest first), one
//! hash probe each, skipping depths at which no grant is anchored. The first hit is therefore
//! the most specific grant, which is also the one worth naming to a user.
//!
//! Bare literals (`fs:read`) grant a requirement on every path, but only when no four-part
//! ("narrow") grant satisfies that requirement; a narrow grant with an invalid path still counts
//! as narrow, so adding a broken scope can only take access away.

use rustc_hash::{FxHashMap, FxHashSet};

use super::action::{Family, KNOWN_REQUIREMENTS, Requirement};
use super::parse::{Scope, ScopeForm, ScopeProblem};
use super::pattern::PathPattern;

/// A parsed, compiled scope set. Cheap to query from many threads at once.
#[derive(Debug)]
pub struct ScopeSet {
    scopes: Vec<Scope>,
    known: Vec<ReqIndex>,
    /// Every fs grant that grants something: drives visibility.
    visible: ReqIndex,
}

/// How a requirement was satisfied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A three- or four-part grant whose path matches.
    Grant,
    /// A bare literal such as `fs:read`, with no narrow grant for the requirement.
    Literal,
}

/// The scope that satisfied a requirement: its index in [`ScopeSet::scopes`] and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    pub scope: usize,
    pub via: Via,
}

#[derive(Debug, Default)]
struct ReqIndex {
    paths: PathIndex,
    literal: Option<u32>,
    narrow: bool,
    /// Every `mounts_at` of an inserted pattern, and all their ancestors.
    dirs: FxHashSet<Box<[u8]>>,
}

impl ReqIndex {
    fn insert(&mut self, pattern: &PathPattern, scope: u32) {
        self.paths.insert(pattern, scope);
        let mut dir = pattern.mounts_at();
        loop {
            self.dirs.insert(dir.as_bytes().into());
            match dir.rfind('/') {
                Some(0) if dir != "/" => dir = "/",
                Some(j) if j > 0 => dir = &dir[..j],
                _ => break,
            }
        }
    }

    /// A grant matches `path`, or `path` leads to where one mounts.
    fn reaches(&self, path: &[u8]) -> bool {
        self.dirs.contains(path) || self.find(path).is_some()
    }

    /// Whether every path strictly below `dir` is granted.
    fn covers_below(&self, dir: &[u8]) -> bool {
        (self.literal.is_some() && !self.narrow) || self.paths.covers_below(dir)
    }

    fn grants_anything(&self) -> bool {
        self.paths.any.is_some()
            || !self.paths.anchors.is_empty()
            || (self.literal.is_some() && !self.narrow)
    }

    fn find(&self, path: &[u8]) -> Option<Match> {
        if let Some(scope) = self.paths.find(path) {
            return Some(Match {
                scope: scope as usize,
                via: Via::Grant,
            });
        }
        match self.literal {
            Some(scope) if !self.narrow => Some(Match {
                scope: scope as usize,
                via: Via::Literal,
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct Anchor {
    exact: Option<u32>,
    subtree: Option<u32>,
    descendants: Option<u32>,
    /// `/d/name*` anchored at `/d`: the bytes after `/d/` (`name`), and the scope.
    prefixes: Vec<(Box<[u8]>, u32)>,
}

/// Path patterns keyed by the directory they anchor at.
#[derive(Debug, Default)]
struct PathIndex {
    any: Option<u32>,
    anchors: FxHashMap<Box<[u8]>, Anchor>,
    /// Bit `d` is set when some anchor has depth `d` (depths of 63 and more share bit 63).
    depth_mask: u64,
}

fn depth_bit(depth: usize) -> u64 {
    1u64 << depth.min(63)
}

fn key_depth(key: &[u8]) -> usize {
    if key == b"/" {
        0
    } else {
        key.iter().filter(|&&b| b == b'/').count()
    }
}

fn first(slot: &mut Option<u32>, scope: u32) {
    slot.get_or_insert(scope);
}

impl PathIndex {
    fn insert(&mut self, pattern: &PathPattern, scope: u32) {
        if pattern.is_any() {
            first(&mut self.any, scope);
            return;
        }
        let key = pattern.mounts_at();
        self.depth_mask |= depth_bit(key_depth(key.as_bytes()));
        let anchor = self.anchors.entry(key.as_bytes().into()).or_default();
        match pattern {
            PathPattern::Exact(_) => first(&mut anchor.exact, scope),
            PathPattern::Subtree(_) => first(&mut anchor.subtree, scope),
            PathPattern::Descendants(_) => first(&mut anchor.descendants, scope),
            PathPattern::Prefix(s) => {
                let name_at = if key == "/" { 1 } else { key.len() + 1 };
                anchor
                    .prefixes
                    .push((s.as_bytes()[name_at..].into(), scope));
            }
            PathPattern::Any => {}
        }
    }

    /// Whether some pattern matches every path strictly below `dir` (`dir/x` for any
    /// non-empty `x`): `*`, a subtree or descendants grant at `dir` or above it, or a prefix
    /// grant above it that `dir` already extends. An exact grant never does.
    fn covers_below(&self, dir: &[u8]) -> bool {
        if self.any.is_some() {
            return true;
        }
        if let Some(a) = self.anchors.get(dir)
            && (a.subtree.is_some()
                || a.descendants.is_some()
                || a.prefixes.iter().any(|(n, _)| n.is_empty()))
        {
            return true;
        }
        if dir == b"/" {
            return false;
        }
        for i in (0..dir.len()).rev() {
            if dir[i] != b'/' || (i == 1 && dir[0] == b'/') {
                // As in `find`: `//...` has an empty first segment, nobody's directory.
                continue;
            }
            let key = if i == 0 { &b"/"[..] } else { &dir[..i] };
            let rest = &dir[i + 1..];
            let Some(a) = self.anchors.get(key) else {
                continue;
            };
            if a.subtree.is_some()
                || (!rest.is_empty() && a.descendants.is_some())
                || a.prefixes.iter().any(|(n, _)| rest.starts_with(n))
            {
                return true;
            }
        }
        false
    }

    /// The most specific pattern matching `path`, by scope index.
    fn find(&self, path: &[u8]) -> Option<u32> {
        if !self.anchors.is_empty() {
            let slashes = path.iter().filter(|&&b| b == b'/').count();
            let own_depth = if path == b"/" { 0 } else { slashes };
            if self.depth_mask & depth_bit(own_depth) != 0
                && let Some(a) = self.anchors.get(path)
                && let Some(s) = a.exact.or(a.subtree)
            {
                return Some(s);
            }
            let mut depth = slashes;
            for i in (0..path.len()).rev() {
                if path[i] != b'/' {
                    continue;
                }
                depth -= 1;
                if self.depth_mask & depth_bit(depth) == 0 {
                    continue;
                }
                if i == 1 && path[0] == b'/' {
                    // `//...`: the root anchor's children start with a single `/`, so the empty
                    // first segment is nobody's directory.
                    continue;
                }
                let key = if i == 0 { &b"/"[..] } else { &path[..i] };
                let Some(a) = self.anchors.get(key) else {
                    continue;
                };
                let rest = &path[i + 1..];
                if let Some(s) = a.subtree {
                    return Some(s);
                }
                if !rest.is_empty()
                    && let Some(s) = a.descendants
                {
                    return Some(s);
                }
                if let Some((_, s)) = a.prefixes.iter().find(|(n, _)| rest.starts_with(n)) {
                    return Some(*s);
                }
            }
        }
        self.any
    }
}

impl ScopeSet {
    /// Parse and compile `scopes`, byte for byte. Nothing is dropped: scopes that grant nothing
    /// stay in [`ScopeSet::scopes`] and are listed by [`ScopeSet::problems`].
    pub fn new<I, S>(scopes: I) -> ScopeSet
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let scopes: Vec<Scope> = scopes
            .into_iter()
            .map(|s| Scope::parse(s.as_ref()))
            .collect();
        let known: Vec<ReqIndex> = (0..KNOWN_REQUIREMENTS.len())
            .map(|i| build_index(&scopes, &Requirement::known(i)))
            .collect();

        let mut visible = ReqIndex::default();
        let fs_indices = [
            Requirement::FS_READ,
            Requirement::FS_WRITE,
            Requirement::FS_CREATE,
            Requirement::FS_DELETE,
        ];
        for (i, scope) in scopes.iter().enumerate() {
            let grants_fs = fs_indices.iter().any(|&r| {
                let req = Requirement::known(r);
                match &scope.form {
                    ScopeForm::Grant(g) => g.covers_requirement(&req),
                    ScopeForm::Literal => {
                        !known[r].narrow && req.literal_forms().any(|l| l == *scope.raw)
                    }
                    ScopeForm::Malformed(_) => false,
                }
            });
            if !grants_fs {
                continue;
            }
            let pattern = match &scope.form {
                ScopeForm::Grant(g) => match &g.path {
                    Ok(p) => p.clone(),
                    Err(_) => continue,
                },
                _ => PathPattern::Any,
            };
            visible.insert(&pattern, i as u32);
        }
        ScopeSet {
            scopes,
            known,
            visible,
        }
    }

    /// The scopes, in the order given, with their parse results.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// The raw scope strings.
    pub fn raw(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(|s| &*s.raw)
    }

    /// Every scope that grants nothing, with the reason.
    pub fn problems(&self) -> impl Iterator<Item = (&Scope, ScopeProblem)> {
        self.scopes
            .iter()
            .filter_map(|s| s.problem().map(|p| (s, p)))
    }

    /// Decide `req` on `path` as the contract does: the path is whitespace-trimmed, then matched
    /// byte for byte.
    pub fn check(&self, req: &Requirement, path: &str) -> Option<Match> {
        self.check_exact(req, path.trim().as_bytes())
    }

    /// Decide `req` on an exact path (no trimming): what the filesystem uses, so that `/x ` is
    /// never taken for `/x`.
    pub fn check_exact(&self, req: &Requirement, path: &[u8]) -> Option<Match> {
        match req.known_index() {
            Some(i) => self.known[i].find(path),
            None => build_index(&self.scopes, req).find(path),
        }
    }

    /// Decide a known requirement by its index in [`KNOWN_REQUIREMENTS`] (the hot path).
    pub fn check_known(&self, index: usize, path: &[u8]) -> Option<Match> {
        self.known[index].find(path)
    }

    /// Whether the known requirement at `index` is granted on at least one path.
    pub fn grants_anywhere(&self, index: usize) -> bool {
        self.known[index].grants_anything()
    }

    /// Whether any requirement of `family` is granted on at least one path.
    pub fn grants_family(&self, family: Family) -> bool {
        KNOWN_REQUIREMENTS
            .iter()
            .enumerate()
            .any(|(i, (f, _))| *f == family && self.known[i].grants_anything())
    }

    /// Whether a bare literal for `req` is present but suppressed by a narrow grant.
    pub fn literal_suppressed(&self, req: &Requirement) -> Option<&Scope> {
        let index;
        let idx = match req.known_index() {
            Some(i) => &self.known[i],
            None => {
                index = build_index(&self.scopes, req);
                &index
            }
        };
        match idx.literal {
            Some(s) if idx.narrow => Some(&self.scopes[s as usize]),
            _ => None,
        }
    }

    /// Whether `path` is visible: some fs grant matches it, or it is an ancestor of (or equal
    /// to) where an fs grant mounts.
    pub fn visible(&self, path: &[u8]) -> bool {
        self.visible.reaches(path)
    }

    /// Whether the known requirement at `index` is granted on every path strictly below `dir`
    /// (so a whole subtree can be decided without listing it).
    pub fn grants_all_below(&self, index: usize, dir: &[u8]) -> bool {
        self.known[index].covers_below(dir)
    }

    /// Whether every path strictly below `dir` is visible.
    pub fn all_visible_below(&self, dir: &[u8]) -> bool {
        self.visible.covers_below(dir)
    }

    /// Whether the known requirement at `index` is granted on `path`, or on something below it.
    pub fn reaches(&self, index: usize, path: &[u8]) -> bool {
        self.known[index].reaches(path)
    }
}

/// A decision with a sentence a person (or an agent) can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub matched: Option<Match>,
    /// The raw scope that granted the requirement.
    pub matched_scope: Option<String>,
    pub reason: String,
}

impl ScopeSet {
    /// Decide like [`ScopeSet::check`] and say why. Slower than `check`: for commands, reports
    /// and `_PERMISSIONS.md`, not for the per-call hot path.
    pub fn explain(&self, req: &Requirement, path: &str) -> Explanation {
        let matched = self.check(req, path);
        let shown = path.trim();
        let matched_scope = matched.map(|m| self.scopes[m.scope].raw.to_string());
        let reason = match (matched, &matched_scope) {
            (Some(m), Some(raw)) if m.via == Via::Literal => format!(
                "{req} on {shown:?} is granted by the bare literal {raw} (the token has no narrower {req} grant)"
            ),
            (Some(_), Some(raw)) => format!("{req} on {shown:?} is granted by {raw}"),
            _ => {
                let mut reason = if self.scopes.is_empty() {
                    format!("{req} on {shown:?} is not granted: the token carries no scopes")
                } else {
                    format!("no scope grants {req} on {shown:?}")
                };
                if let Some(lit) = self.literal_suppressed(req) {
                    reason.push_str(&format!(
                        "; the bare literal {} is ignored because the token also has narrower {req} grants",
                        lit.raw
                    ));
                }
                for scope in &self.scopes {
                    if let ScopeForm::Grant(g) = &scope.form
                        && g.covers_requirement(req)
                        && let Err(e) = &g.path
                    {
                        reason.push_str(&format!(
                            "; {} would apply but is invalid and grants nothing: {e}",
                            scope.raw
                        ));
                    }
                }
                reason
            }
        };
        Explanation {
            matched,
            matched_scope,
            reason,
        }
    }
}

fn build_index(scopes: &[Scope], req: &Requirement) -> ReqIndex {
    let mut index = ReqIndex::default();
    for (i, scope) in scopes.iter().enumerate() {
        match &scope.form {
            ScopeForm::Literal
                if index.literal.is_none() && req.literal_forms().any(|l| l == *scope.raw) =>
            {
                index.literal = Some(i as u32);
            }
            ScopeForm::Grant(g) if g.covers_requirement(req) => {
                index.narrow |= g.explicit_path;
                if let Ok(p) = &g.path {
                    index.insert(p, i as u32);
                }
            }
            _ => {}
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(scopes: &[&str], req: &str, path: &str) -> bool {
        let set = ScopeSet::new(scopes);
        set.check(&Requirement::parse(req).unwrap(), path).is_some()
    }

    #[test]
    fn most_specific_grant_is_reported() {
        let set = ScopeSet::new([
            "relayfile:fs:read:*",
            "relayfile:fs:read:/github/**",
            "relayfile:fs:read:/github/repos/acme/*",
        ]);
        let m = set
            .check(
                &Requirement::parse("fs:read").unwrap(),
                "/github/repos/acme/x",
            )
            .unwrap();
        assert_eq!(m.scope, 2);
        let m = set
            .check(&Requirement::parse("fs:read").unwrap(), "/github")
            .unwrap();
        assert_eq!(m.scope, 1);
        let m = set
            .check(&Requirement::parse("fs:read").unwrap(), "/slack")
            .unwrap();
        assert_eq!(m.scope, 0);
    }

    #[test]
    fn byte_edges() {
        assert!(!allowed(&["relayfile:fs:read:/a/*"], "fs:read", "/a/"));
        assert!(allowed(&["relayfile:fs:read:/a/*"], "fs:read", "/a//"));
        assert!(allowed(&["relayfile:fs:read:/a/**"], "fs:read", "/a/"));
        assert!(!allowed(&["relayfile:fs:read:/*"], "fs:read", "/"));
        assert!(allowed(&["relayfile:fs:read:/**"], "fs:read", "/"));
        assert!(!allowed(&["relayfile:fs:read:/**"], "fs:read", ""));
        assert!(allowed(&["relayfile:fs:read:/a*"], "fs:read", "/a"));
        assert!(allowed(&["relayfile:fs:read:/a/b*"], "fs:read", "/a/bc/d"));
        assert!(!allowed(&["relayfile:fs:read:/a/b*"], "fs:read", "/a/c/b"));
        assert!(!allowed(&["relayfile:fs:read:/a/b*"], "fs:read", "a/b"));
        // A leading empty segment is not the root's child.
        assert!(!allowed(&["relayfile:fs:read:/a*"], "fs:read", "//a"));
        assert!(allowed(&["relayfile:fs:read:/**"], "fs:read", "//a"));
        assert!(!ScopeSet::new(["relayfile:fs:read:/a", "relayfile:fs:read:/a*"]).visible(b"//a"));
    }

    #[test]
    fn narrow_invalid_grant_suppresses_literal() {
        assert!(allowed(&["fs:read"], "fs:read", "/x"));
        assert!(!allowed(
            &["fs:read", "relayfile:fs:read:"],
            "fs:read",
            "/x"
        ));
        assert!(!allowed(
            &["fs:read", "relayfile:fs:read:/a/*/b"],
            "fs:read",
            "/x"
        ));
        // A three-part grant is not narrow, and grants everything anyway.
        assert!(allowed(&["fs:read", "relayfile:fs:read"], "fs:read", "/x"));
        // Narrowness is per requirement.
        assert!(allowed(
            &["fs:read", "relayfile:fs:write:/a/**"],
            "fs:read",
            "/x"
        ));
    }

    #[test]
    fn create_and_delete_accept_write() {
        assert!(allowed(&["relayfile:fs:write:/a/**"], "fs:create", "/a/x"));
        assert!(allowed(&["relayfile:fs:write:/a/**"], "fs:delete", "/a/x"));
        assert!(allowed(&["fs:write"], "fs:create", "/a/x"));
        assert!(!allowed(&["relayfile:fs:create:/a/**"], "fs:write", "/a/x"));
        assert!(!allowed(
            &["relayfile:fs:create:/a/**"],
            "fs:delete",
            "/a/x"
        ));
    }

    #[test]
    fn visibility() {
        let set = ScopeSet::new(["relayfile:fs:read:/github/repos/acme-*"]);
        for p in [
            "/",
            "/github",
            "/github/repos",
            "/github/repos/acme-x",
            "/github/repos/acme-x/y",
        ] {
            assert!(set.visible(p.as_bytes()), "{p}");
        }
        for p in ["/slack", "/github/other", "/github/repos/other", "/githubx"] {
            assert!(!set.visible(p.as_bytes()), "{p}");
        }
        let none = ScopeSet::new(["relayfile:ops:read:/github/**", "relayfile:fs:read:/a/*/b"]);
        assert!(!none.visible(b"/github"));
        assert!(!none.visible(b"/a"));
    }
}
