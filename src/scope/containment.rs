//! Scope containment for delegation: is a child scope set within its parent's?
//!
//! A child scope is within a parent scope when every request it could satisfy is satisfied by
//! the parent: plane, resource, action (with `manage`/`write`/`*` implications) and path, the
//! last compared on the patterns ([`PathPattern::within`]). A child set is within a parent set
//! when each child scope is within some single parent scope. The answer errs on the side of
//! "not within": an invalid child scope is never within, an action a family does not know is
//! covered only by the same action or `*`, and a bare literal in the child counts as the full
//! namespace grant it can become. A parent's bare literal counts only while the parent holds no
//! narrow grant for the same requirement (otherwise the parent's token cannot use it either).

use super::action::{Family, Requirement, action_satisfies};
use super::parse::{Grant, Plane, Resource, Scope, ScopeForm};
use super::pattern::PathPattern;

/// The answer to "is this child set within that parent set?".
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Within {
    pub within: bool,
    /// Valid child scopes that no parent scope covers.
    pub offending: Vec<String>,
    /// Child scopes that are invalid under the contract (never within).
    pub invalid: Vec<String>,
}

impl Within {
    /// Offending and invalid child scopes together: what a delegation refusal names.
    pub fn refused(&self) -> Vec<String> {
        self.invalid
            .iter()
            .chain(&self.offending)
            .cloned()
            .collect()
    }
}

/// A scope reduced to what containment compares.
struct Cover {
    plane: PlaneKind,
    resource: Resource,
    grants: Grants,
    path: PathPattern,
}

#[derive(PartialEq, Eq)]
enum PlaneKind {
    /// `relayfile` and `workspace` (an fs grant): the planes that grant here.
    Relayfile,
    Any,
    Foreign(Box<str>),
}

/// Which requirement actions a cover grants on its resource.
enum Grants {
    /// A grant's action, with the family's implications.
    Action(Box<str>),
    /// A bare literal: exactly these requirement actions.
    Listed(Vec<Box<str>>),
}

impl Grants {
    fn grants(&self, resource: &str, required: &str) -> bool {
        match self {
            Grants::Action(a) => action_satisfies(resource, a, required),
            Grants::Listed(list) => list.iter().any(|a| &**a == required),
        }
    }
}

/// The requirement actions worth asking about for `resource` when `action` is involved.
fn candidate_actions<'a>(resource: &str, action: &'a str) -> Vec<&'a str> {
    match Family::from_name(resource) {
        Some(f) => f.actions().to_vec(),
        None => vec![action, "read", "write", "manage"],
    }
}

/// The requirements (of the literal's own resource) a bare literal satisfies, optionally only
/// those for which `suppressed` says no narrow grant hides it.
fn literal_grants(req: &Requirement, suppressed: impl Fn(&Requirement) -> bool) -> Grants {
    let literal = req.to_string();
    let listed = candidate_actions(req.resource(), req.action())
        .into_iter()
        .filter_map(|a| Requirement::parse(&format!("{}:{a}", req.resource())).ok())
        .filter(|r| r.literal_forms().any(|l| l == literal) && !suppressed(r))
        .map(|r| r.action().into())
        .collect();
    Grants::Listed(listed)
}

impl Cover {
    fn of_grant(g: &Grant) -> Option<Cover> {
        let plane = match &g.plane {
            Plane::Relayfile | Plane::Workspace(_) => PlaneKind::Relayfile,
            Plane::Any => PlaneKind::Any,
            Plane::Foreign(p) => PlaneKind::Foreign(p.clone()),
        };
        Some(Cover {
            plane,
            resource: g.resource.clone(),
            grants: Grants::Action(g.action.clone()),
            path: g.path.as_ref().ok()?.clone(),
        })
    }

    /// A bare literal as the full-namespace grant it can become.
    fn of_literal(req: &Requirement, grants: Grants) -> Cover {
        Cover {
            plane: PlaneKind::Relayfile,
            resource: Resource::Named(req.resource().into()),
            grants,
            path: PathPattern::Any,
        }
    }

    fn within(&self, parent: &Cover) -> bool {
        let plane_ok = match (&self.plane, &parent.plane) {
            (_, PlaneKind::Any) => true,
            (PlaneKind::Any, _) => false,
            (c, p) => c == p,
        };
        plane_ok
            && resource_within(&self.resource, &parent.resource)
            && self.actions_within(parent)
            && self.path.within(&parent.path)
    }

    /// Whether every requirement action the child grants is granted by the parent, in every
    /// resource the child covers.
    fn actions_within(&self, parent: &Cover) -> bool {
        if let (Grants::Action(c), Grants::Action(p)) = (&self.grants, &parent.grants) {
            if &**p == "*" || c == p {
                return true;
            }
            if &**c == "*" {
                return false;
            }
        }
        let own_action = match &self.grants {
            Grants::Action(a) => Some(&**a),
            Grants::Listed(_) => None,
        };
        // A resource wildcard must hold for every known family and for unknown ones (which
        // all follow the same generic rule, so one stands for all).
        let resources: Vec<&str> = match &self.resource {
            Resource::Named(r) => vec![r],
            Resource::Any => Family::ALL
                .iter()
                .map(|f| f.name())
                .chain(["unknown-resource"])
                .collect(),
        };
        resources.into_iter().all(|res| {
            // An action a known family does not know is opaque: only itself or `*` covers it.
            if let (Some(f), Some(a)) = (Family::from_name(res), own_action)
                && !f.knows(a)
                && self.resource != Resource::Any
            {
                return false;
            }
            candidate_actions(res, own_action.unwrap_or(""))
                .into_iter()
                .filter(|req| self.grants.grants(res, req))
                .all(|req| parent.grants.grants(res, req))
        })
    }
}

/// Decide whether `child` scopes are within `parent` scopes.
pub fn within<C, P>(child: C, parent: P) -> Within
where
    C: IntoIterator,
    C::Item: AsRef<str>,
    P: IntoIterator,
    P::Item: AsRef<str>,
{
    let parent: Vec<Scope> = parent
        .into_iter()
        .map(|s| Scope::parse(s.as_ref()))
        .collect();
    let narrow = |req: &Requirement| {
        parent
            .iter()
            .filter_map(Scope::grant)
            .any(|g| g.explicit_path && g.covers_requirement(req))
    };
    let parent_covers: Vec<Cover> = parent
        .iter()
        .filter_map(|s| match &s.form {
            ScopeForm::Grant(g) => Cover::of_grant(g),
            ScopeForm::Literal => s
                .literal_requirement()
                .map(|req| Cover::of_literal(&req, literal_grants(&req, narrow))),
            ScopeForm::Malformed(_) => None,
        })
        .collect();
    let covered = |c: &Cover| parent_covers.iter().any(|p| c.within(p));

    let mut out = Within::default();
    for raw in child {
        let raw = raw.as_ref();
        let scope = Scope::parse(raw);
        if !scope.is_valid() {
            out.invalid.push(raw.to_owned());
            continue;
        }
        let ok = match &scope.form {
            ScopeForm::Grant(g) => Cover::of_grant(g).is_some_and(|c| covered(&c)),
            // A child's literal counts with everything it could grant, suppressed or not.
            ScopeForm::Literal => match scope.literal_requirement() {
                Some(req) => covered(&Cover::of_literal(&req, literal_grants(&req, |_| false))),
                // An opaque literal grants nothing here; it passes only if the parent has it.
                None => parent.iter().any(|p| p.raw == scope.raw),
            },
            ScopeForm::Malformed(_) => false,
        };
        if !ok {
            out.offending.push(raw.to_owned());
        }
    }
    out.within = out.offending.is_empty() && out.invalid.is_empty();
    out
}

fn resource_within(child: &Resource, parent: &Resource) -> bool {
    match (child, parent) {
        (_, Resource::Any) => true,
        (Resource::Any, _) => false,
        (Resource::Named(c), Resource::Named(p)) => c == p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(child: &[&str], parent: &[&str]) -> Within {
        within(child, parent)
    }

    #[test]
    fn seed_delegation_cases() {
        let parent = [
            "relayfile:fs:read:/github/*",
            "relayfile:fs:write:/github/*/reviews/*",
        ];
        assert!(
            w(
                &["relayfile:fs:read:/github/repos/acme/api/pulls/*"],
                &parent
            )
            .within
        );
        let r = w(&["relayfile:fs:write:/slack/*"], &parent);
        assert!(!r.within);
        assert_eq!(r.offending, ["relayfile:fs:write:/slack/*"]);
    }

    #[test]
    fn actions() {
        assert!(w(&["relayfile:fs:read:/a/**"], &["relayfile:fs:manage:/a/**"]).within);
        assert!(
            w(
                &["relayfile:fs:delete:/a/**"],
                &["relayfile:fs:write:/a/**"]
            )
            .within
        );
        assert!(
            !w(
                &["relayfile:fs:write:/a/**"],
                &["relayfile:fs:delete:/a/**"]
            )
            .within
        );
        assert!(
            !w(
                &["relayfile:fs:manage:/a/**"],
                &["relayfile:fs:write:/a/**"]
            )
            .within
        );
        assert!(!w(&["relayfile:fs:*:/a/**"], &["relayfile:fs:manage:/a/**"]).within);
        assert!(w(&["relayfile:fs:manage:/a/**"], &["relayfile:fs:*:/a/**"]).within);
        assert!(
            !w(
                &["relayfile:ops:replay:/a/**"],
                &["relayfile:ops:manage:/a/**"]
            )
            .within
        );
        assert!(!w(&["relayfile:fs:frob:/a/**"], &["relayfile:fs:manage:/a/**"]).within);
        assert!(w(&["relayfile:fs:frob:/a/**"], &["relayfile:fs:*:/a/**"]).within);
        assert!(
            w(
                &["relayfile:search:manage:/a/**"],
                &["relayfile:search:manage:/a/**"]
            )
            .within
        );
        assert!(
            !w(
                &["relayfile:search:query:/a/**"],
                &["relayfile:search:manage:/a/**"]
            )
            .within
        );
        assert!(!w(&["relayfile:*:read:/a/**"], &["relayfile:fs:read:/a/**"]).within);
        assert!(w(&["relayfile:*:read:/a/**"], &["relayfile:*:manage:/a/**"]).within);
        assert!(!w(&["relayfile:*:replay:/a/**"], &["relayfile:*:manage:/a/**"]).within);
    }

    #[test]
    fn planes() {
        assert!(w(&["workspace:x:read:/a/**"], &["relayfile:fs:read:/a/**"]).within);
        assert!(w(&["relayfile:fs:read:/a/**"], &["workspace:y:read:/a/**"]).within);
        assert!(!w(&["relayfile:ops:read:/a/**"], &["workspace:y:*:/a/**"]).within);
        assert!(w(&["relayfile:fs:read:/a/**"], &["*:fs:read:/a/**"]).within);
        assert!(!w(&["*:fs:read:/a/**"], &["relayfile:fs:read:/a/**"]).within);
        assert!(!w(&["relaycast:fs:read:/a/**"], &["relayfile:fs:read:/a/**"]).within);
        assert!(w(&["relaycast:fs:read:/a/**"], &["relaycast:fs:read:/**"]).within);
    }

    #[test]
    fn literals() {
        assert!(w(&["fs:read"], &["fs:read"]).within);
        assert!(w(&["fs:read"], &["relayfile:fs:read"]).within);
        assert!(w(&["relayfile:fs:read:/a/**"], &["fs:read"]).within);
        // The parent's literal is suppressed by its own narrow grant.
        let r = w(&["fs:read"], &["fs:read", "relayfile:fs:read:/github/**"]);
        assert!(!r.within);
        assert!(
            !w(
                &["relayfile:fs:read:/slack/**"],
                &["fs:read", "relayfile:fs:read:/github/**"]
            )
            .within
        );
        assert!(!w(&["fs:read"], &["relayfile:fs:read:/**"]).within);
        assert!(w(&["openid"], &["openid"]).within);
        // A parent literal fs:write stays good for fs:write but not for fs:create when the
        // parent has a narrow fs:create grant.
        assert!(w(&["fs:write"], &["fs:write"]).within);
        assert!(
            !w(
                &["relayfile:fs:write:/x"],
                &["fs:write", "relayfile:fs:create:/y"]
            )
            .within
        );
        assert!(w(&["relayfile:fs:write:/x"], &["fs:write"]).within);
        assert!(!w(&["openid"], &["relayfile:*:*"]).within);
    }

    #[test]
    fn invalid_child_is_never_within() {
        let r = w(&["relayfile:fs:read:/a/*/b"], &["relayfile:*:*"]);
        assert!(!r.within);
        assert_eq!(r.invalid, ["relayfile:fs:read:/a/*/b"]);
        assert!(r.offending.is_empty());
        assert!(w(&[], &["relayfile:fs:read:/a/**"]).within);
    }
}
