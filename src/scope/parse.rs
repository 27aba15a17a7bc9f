//! Parsing one scope string into what it grants, and explaining scopes that grant nothing.
//!
//! A scope is split into at most four parts on `:` (`plane:resource:action[:path]`; the path
//! keeps any further colons). Fewer than three parts make an opaque literal such as `fs:read`,
//! which matches only as the exact text of a requirement. The `relayfile` and `*` planes grant
//! here; `workspace:<label>:<action>[:path]` is an `fs` grant whose second part is a label; any
//! other plane grants nothing in relayfile. A three-part grant covers every path (`*`).
//!
//! Parsing never fails and never drops a scope: a scope that cannot grant anything is kept with
//! the reason, so that the startup output, `_PERMISSIONS.md` and the audit log can say why.

use std::fmt;

use super::action::{Family, Requirement, action_satisfies};
use super::pattern::{PathError, PathPattern};

/// The first part of a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plane {
    Relayfile,
    /// `*`: every plane.
    Any,
    /// `workspace:<label>:...`: an `fs` grant; the label is informational.
    Workspace(Box<str>),
    /// Any other plane: kept for containment, grants nothing in relayfile.
    Foreign(Box<str>),
}

/// The second part of a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    Any,
    Named(Box<str>),
}

impl Resource {
    pub fn covers(&self, resource: &str) -> bool {
        match self {
            Resource::Any => true,
            Resource::Named(r) => &**r == resource,
        }
    }
}

/// A scope of three or four parts.
#[derive(Clone, Debug)]
pub struct Grant {
    pub plane: Plane,
    pub resource: Resource,
    pub action: Box<str>,
    /// The path pattern (`*` for a three-part grant), or why the written path is invalid.
    pub path: Result<PathPattern, PathError>,
    /// Whether the scope had a fourth part. A four-part grant is "narrow": it suppresses a bare
    /// literal for the same requirement, even when its path is invalid.
    pub explicit_path: bool,
}

impl Grant {
    /// Whether plane, resource and action satisfy `req`, whatever the path.
    pub fn covers_requirement(&self, req: &Requirement) -> bool {
        let plane_ok = match &self.plane {
            Plane::Relayfile | Plane::Any => true,
            Plane::Workspace(_) => req.resource() == "fs",
            Plane::Foreign(_) => false,
        };
        plane_ok
            && self.resource.covers(req.resource())
            && action_satisfies(req.resource(), &self.action, req.action())
    }

    /// Whether the action is meaningful for the resource (a known family must know it).
    fn action_known(&self) -> bool {
        match &self.resource {
            Resource::Named(r) => Family::from_name(r).is_none_or(|f| f.knows(&self.action)),
            Resource::Any => {
                &*self.action == "*" || Family::ALL.iter().any(|f| f.knows(&self.action))
            }
        }
    }
}

/// How a scope string reads.
#[derive(Clone, Debug)]
pub enum ScopeForm {
    /// Fewer than three parts: matches only as the exact text of a requirement.
    Literal,
    Grant(Grant),
    /// An empty plane, resource or action.
    Malformed(&'static str),
}

/// One scope of a token, parsed. `raw` is the original string, byte for byte.
#[derive(Clone, Debug)]
pub struct Scope {
    pub raw: Box<str>,
    pub form: ScopeForm,
}

/// What is wrong with a scope that grants nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeProblem {
    /// The scope breaks the grammar (a reason names the rule and segment).
    Invalid { code: &'static str, reason: String },
    /// Well-formed, but grants nothing in relayfile.
    GrantsNothing { code: &'static str, reason: String },
}

impl ScopeProblem {
    pub fn reason(&self) -> &str {
        match self {
            ScopeProblem::Invalid { reason, .. } | ScopeProblem::GrantsNothing { reason, .. } => {
                reason
            }
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ScopeProblem::Invalid { code, .. } | ScopeProblem::GrantsNothing { code, .. } => code,
        }
    }

    pub fn is_invalid(&self) -> bool {
        matches!(self, ScopeProblem::Invalid { .. })
    }
}

impl fmt::Display for ScopeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl Scope {
    pub fn parse(raw: &str) -> Scope {
        let parts: Vec<&str> = raw.splitn(4, ':').collect();
        let form = if parts.len() < 3 {
            ScopeForm::Literal
        } else if parts[0].is_empty() {
            ScopeForm::Malformed("the plane (first part) is empty")
        } else if parts[1].is_empty() {
            ScopeForm::Malformed("the resource (second part) is empty")
        } else if parts[2].is_empty() {
            ScopeForm::Malformed("the action (third part) is empty")
        } else {
            let (plane, resource) = match (parts[0], parts[1]) {
                ("relayfile", r) => (Plane::Relayfile, resource(r)),
                ("*", r) => (Plane::Any, resource(r)),
                ("workspace", label) => {
                    (Plane::Workspace(label.into()), Resource::Named("fs".into()))
                }
                (other, r) => (Plane::Foreign(other.into()), resource(r)),
            };
            let (path, explicit_path) = match parts.get(3) {
                Some(p) => (PathPattern::parse(p.trim()), true),
                None => (Ok(PathPattern::Any), false),
            };
            ScopeForm::Grant(Grant {
                plane,
                resource,
                action: parts[2].into(),
                path,
                explicit_path,
            })
        };
        Scope {
            raw: raw.into(),
            form,
        }
    }

    /// The grant, when this scope has three or four parts.
    pub fn grant(&self) -> Option<&Grant> {
        match &self.form {
            ScopeForm::Grant(g) => Some(g),
            _ => None,
        }
    }

    /// The requirement a bare literal stands for (`fs:read`), if it reads as one.
    pub fn literal_requirement(&self) -> Option<Requirement> {
        match self.form {
            ScopeForm::Literal => Requirement::parse(&self.raw).ok(),
            _ => None,
        }
    }

    /// Why this scope grants nothing, or `None` when it grants something.
    pub fn problem(&self) -> Option<ScopeProblem> {
        match &self.form {
            ScopeForm::Literal => {
                self.literal_requirement()
                    .is_none()
                    .then(|| ScopeProblem::GrantsNothing {
                        code: "opaque_literal",
                        reason: "not a relayfile scope (plane:resource:action[:path]) nor a bare \
                             RESOURCE:ACTION literal; it grants nothing here"
                            .to_owned(),
                    })
            }
            ScopeForm::Malformed(why) => Some(ScopeProblem::Invalid {
                code: "malformed",
                reason: format!("{why}; a scope reads plane:resource:action[:path]"),
            }),
            ScopeForm::Grant(g) => {
                if let Err(e) = &g.path {
                    return Some(ScopeProblem::Invalid {
                        code: e.rule.code(),
                        reason: e.to_string(),
                    });
                }
                if let Plane::Foreign(p) = &g.plane {
                    return Some(ScopeProblem::GrantsNothing {
                        code: "foreign_plane",
                        reason: format!(
                            "plane {p:?} is not relayfile; only relayfile, * and workspace scopes grant here"
                        ),
                    });
                }
                if !g.action_known() {
                    let known = match &g.resource {
                        Resource::Named(r) => Family::from_name(r)
                            .map(|f| f.actions().join(", "))
                            .unwrap_or_default(),
                        Resource::Any => String::new(),
                    };
                    return Some(ScopeProblem::GrantsNothing {
                        code: "unknown_action",
                        reason: format!("unknown action {:?}; known actions: {known}, *", g.action),
                    });
                }
                None
            }
        }
    }

    /// Whether this scope is valid under the contract grammar (it may still grant nothing).
    pub fn is_valid(&self) -> bool {
        !self.problem().is_some_and(|p| p.is_invalid())
    }

    /// The deepest concrete directory this scope implies, for a scope that grants something.
    pub fn mounts_at(&self) -> Option<&str> {
        if self.problem().is_some() {
            return None;
        }
        match &self.form {
            ScopeForm::Literal => Some("/"),
            ScopeForm::Grant(g) => g.path.as_ref().ok().map(PathPattern::mounts_at),
            ScopeForm::Malformed(_) => None,
        }
    }
}

fn resource(r: &str) -> Resource {
    if r == "*" {
        Resource::Any
    } else {
        Resource::Named(r.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_into_at_most_four_parts() {
        let s = Scope::parse("relayfile:fs:read:/a:b/**");
        let g = s.grant().unwrap();
        assert_eq!(g.path.as_ref().unwrap().to_string(), "/a:b/**");
        assert_eq!(s.mounts_at(), Some("/a:b"));
    }

    #[test]
    fn seed_mid_path_glob_is_invalid_with_reason() {
        let s = Scope::parse("relayfile:fs:write:/github/repos/acme/api/pulls/*/reviews/*");
        let p = s.problem().unwrap();
        assert!(p.is_invalid());
        assert_eq!(p.code(), "mid_path_glob");
        assert!(p.reason().contains("segment 6"), "{p}");
        assert_eq!(s.mounts_at(), None);
    }

    #[test]
    fn grants_nothing_is_valid_but_reported() {
        for (raw, code) in [
            ("relaycast:fs:read:/src/**", "foreign_plane"),
            ("relayfile:fs:frobnicate:/src/**", "unknown_action"),
            ("openid", "opaque_literal"),
        ] {
            let s = Scope::parse(raw);
            assert!(s.is_valid(), "{raw}");
            assert_eq!(s.problem().unwrap().code(), code, "{raw}");
            assert_eq!(s.mounts_at(), None, "{raw}");
        }
    }

    #[test]
    fn malformed_parts() {
        for raw in [
            "relayfile::read:/x",
            ":fs:read",
            "relayfile:fs::/x",
            "workspace::read",
        ] {
            let s = Scope::parse(raw);
            assert!(!s.is_valid(), "{raw}");
        }
    }

    #[test]
    fn workspace_plane_is_fs() {
        let s = Scope::parse("workspace:label:read:/slack/**");
        let g = s.grant().unwrap();
        assert!(g.covers_requirement(&Requirement::parse("fs:read").unwrap()));
        assert!(!g.covers_requirement(&Requirement::parse("search:read").unwrap()));
        assert!(!g.covers_requirement(&Requirement::parse("ops:read").unwrap()));
    }
}
