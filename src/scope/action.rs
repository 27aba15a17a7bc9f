//! Scope families, their actions, and which granted action satisfies which requirement.
//!
//! Four families are known: `fs`, `ops`, `sync` and `integration`. In every family `manage`
//! implies `read` and `write` (for `fs` that includes `create` and `delete`) and nothing else,
//! only `manage` or `*` satisfies `manage`, and `*` satisfies everything. For `fs`, `create`
//! and `delete` are also satisfied by `write` (relayfile's server treats them as writes).
//! A known family with an action it does not know grants nothing. Unknown families (say
//! `search`) are matched generically: the same action, `*`, or `manage` for `read`/`write`.

use std::borrow::Cow;
use std::fmt;

/// A known scope family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Fs,
    Ops,
    Sync,
    Integration,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Fs, Family::Ops, Family::Sync, Family::Integration];

    pub fn from_name(name: &str) -> Option<Family> {
        match name {
            "fs" => Some(Family::Fs),
            "ops" => Some(Family::Ops),
            "sync" => Some(Family::Sync),
            "integration" => Some(Family::Integration),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Fs => "fs",
            Family::Ops => "ops",
            Family::Sync => "sync",
            Family::Integration => "integration",
        }
    }

    /// The actions this family knows, `*` aside.
    pub fn actions(self) -> &'static [&'static str] {
        match self {
            Family::Fs => &["read", "write", "create", "delete", "manage"],
            Family::Ops => &["read", "replay", "cancel", "manage"],
            Family::Sync => &["read", "trigger", "manage"],
            Family::Integration => &["read", "manage"],
        }
    }

    pub fn knows(self, action: &str) -> bool {
        action == "*" || self.actions().contains(&action)
    }
}

/// Whether a granted `action` satisfies the required action `required` of `resource`.
///
/// `resource` is the requirement's resource (`fs`, `search`, ...).
pub fn action_satisfies(resource: &str, granted: &str, required: &str) -> bool {
    if granted == "*" {
        return true;
    }
    match Family::from_name(resource) {
        Some(family) => {
            if !family.knows(granted) || !family.knows(required) {
                return false;
            }
            let fs_write_like = family == Family::Fs && matches!(required, "create" | "delete");
            granted == required
                || (granted == "manage" && (matches!(required, "read" | "write") || fs_write_like))
                || (granted == "write" && fs_write_like)
        }
        None => {
            granted == required || (granted == "manage" && matches!(required, "read" | "write"))
        }
    }
}

/// The requirements a known family can be asked for, in a fixed order (the index of the
/// compiled scope set).
pub const KNOWN_REQUIREMENTS: [(Family, &str); 14] = [
    (Family::Fs, "read"),
    (Family::Fs, "write"),
    (Family::Fs, "create"),
    (Family::Fs, "delete"),
    (Family::Fs, "manage"),
    (Family::Ops, "read"),
    (Family::Ops, "replay"),
    (Family::Ops, "cancel"),
    (Family::Ops, "manage"),
    (Family::Sync, "read"),
    (Family::Sync, "trigger"),
    (Family::Sync, "manage"),
    (Family::Integration, "read"),
    (Family::Integration, "manage"),
];

/// What a decision is about: `resource:action`, e.g. `fs:read` or `ops:replay`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// Borrowed for the known requirements, so deciding one allocates nothing.
    resource: Cow<'static, str>,
    action: Cow<'static, str>,
    /// Index into [`KNOWN_REQUIREMENTS`] when this is a known family's known action.
    known: Option<u8>,
}

/// A requirement string that cannot be decided.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    #[error("requirement {0:?} must have the form RESOURCE:ACTION, e.g. fs:read")]
    Shape(String),
    #[error("requirement {given:?}: {family} has no action {action:?}; known actions: {known}")]
    UnknownAction {
        given: String,
        family: &'static str,
        action: String,
        known: String,
    },
}

impl Requirement {
    pub const FS_READ: usize = 0;
    pub const FS_WRITE: usize = 1;
    pub const FS_CREATE: usize = 2;
    pub const FS_DELETE: usize = 3;
    pub const FS_MANAGE: usize = 4;
    pub const OPS_READ: usize = 5;
    pub const SYNC_READ: usize = 9;
    pub const INTEGRATION_READ: usize = 12;

    /// Parse `resource:action`. Known families must name one of their actions (`*` is a grant
    /// form, never a requirement).
    pub fn parse(text: &str) -> Result<Requirement, RequirementError> {
        let Some((resource, action)) = text.split_once(':') else {
            return Err(RequirementError::Shape(text.to_owned()));
        };
        if resource.is_empty()
            || action.is_empty()
            || action.contains(':')
            || resource == "*"
            || action == "*"
        {
            return Err(RequirementError::Shape(text.to_owned()));
        }
        if let Some(family) = Family::from_name(resource)
            && !family.actions().contains(&action)
        {
            return Err(RequirementError::UnknownAction {
                given: text.to_owned(),
                family: family.name(),
                action: action.to_owned(),
                known: family.actions().join(", "),
            });
        }
        let known = KNOWN_REQUIREMENTS
            .iter()
            .position(|(f, a)| f.name() == resource && *a == action)
            .map(|i| i as u8);
        Ok(Requirement {
            resource: Cow::Owned(resource.to_owned()),
            action: Cow::Owned(action.to_owned()),
            known,
        })
    }

    /// The known requirement at `index` of [`KNOWN_REQUIREMENTS`].
    pub fn known(index: usize) -> Requirement {
        let (family, action) = KNOWN_REQUIREMENTS[index];
        Requirement {
            resource: Cow::Borrowed(family.name()),
            action: Cow::Borrowed(action),
            known: Some(index as u8),
        }
    }

    /// `fs:<action>` for a filesystem operation name (`read`, `write`, `create`, ...).
    pub fn fs(action: &str) -> Result<Requirement, RequirementError> {
        Requirement::parse(&format!("fs:{action}"))
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }

    pub fn action(&self) -> &str {
        &self.action
    }

    /// The index of this requirement in `KNOWN_REQUIREMENTS`, when it is one of them.
    pub fn known_index(&self) -> Option<usize> {
        self.known.map(usize::from)
    }

    /// The bare literals that satisfy this requirement: its own text, and for `fs:create` /
    /// `fs:delete` also `fs:write`. (`manage`/`*` implications do not apply to bare literals:
    /// the contract matches them as exact strings.)
    pub fn literal_forms(&self) -> impl Iterator<Item = String> + '_ {
        let own = std::iter::once(self.to_string());
        let write = (&*self.resource == "fs" && matches!(&*self.action, "create" | "delete"))
            .then(|| "fs:write".to_owned());
        own.chain(write)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.resource, self.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implication_rules() {
        assert!(action_satisfies("fs", "manage", "read"));
        assert!(action_satisfies("fs", "manage", "write"));
        assert!(action_satisfies("fs", "manage", "delete"));
        assert!(action_satisfies("fs", "write", "create"));
        assert!(action_satisfies("fs", "write", "delete"));
        assert!(!action_satisfies("fs", "write", "read"));
        assert!(!action_satisfies("fs", "create", "write"));
        assert!(!action_satisfies("fs", "read", "manage"));
        assert!(!action_satisfies("fs", "write", "manage"));
        assert!(action_satisfies("fs", "*", "manage"));
        assert!(action_satisfies("ops", "manage", "read"));
        assert!(!action_satisfies("ops", "manage", "replay"));
        assert!(!action_satisfies("sync", "manage", "trigger"));
        assert!(!action_satisfies("fs", "frobnicate", "read"));
        assert!(action_satisfies("search", "manage", "read"));
        assert!(action_satisfies("search", "query", "query"));
        assert!(!action_satisfies("search", "manage", "query"));
    }

    #[test]
    fn requirement_parsing() {
        assert_eq!(
            Requirement::parse("fs:read").unwrap().known_index(),
            Some(0)
        );
        assert_eq!(
            Requirement::parse("search:read").unwrap().known_index(),
            None
        );
        assert!(Requirement::parse("fs").is_err());
        assert!(Requirement::parse("fs:").is_err());
        assert!(Requirement::parse(":read").is_err());
        assert!(Requirement::parse("fs:*").is_err());
        assert!(Requirement::parse("fs:read:/x").is_err());
        let e = Requirement::parse("ops:write").unwrap_err().to_string();
        assert!(e.contains("replay"), "{e}");
        let forms: Vec<String> = Requirement::parse("fs:delete")
            .unwrap()
            .literal_forms()
            .collect();
        assert_eq!(forms, ["fs:delete", "fs:write"]);
    }
}
