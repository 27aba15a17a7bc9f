//! The scope engine: parse, validate, match and compare relayauth scopes.
//!
//! This is the part every decision of relayauth-mount rests on, so it is pure (no I/O) and
//! follows the relayfile path contract v1 to the byte. The pieces:
//!
//! - [`pattern`]: scope path patterns (`*`, exact, `/d/**`, `/d/*`, `/d/name*`), their
//!   validation with the rule and segment that fail, matching, `mounts_at`, and containment.
//! - [`action`]: families (`fs`, `ops`, `sync`, `integration`), actions and the
//!   `manage`/`write`/`*` implications; [`Requirement`] is what a decision is about.
//! - [`parse`]: one scope string into a [`Grant`] (or a bare literal), keeping anything that
//!   grants nothing together with the reason.
//! - [`compiled`]: a whole scope set compiled into per-requirement path indexes for
//!   sub-microsecond decisions; also visibility.
//! - [`containment`]: whether a child scope set is within a parent set (delegation).
//! - [`path`]: contract path normalization and directory containment.

pub mod action;
pub mod compiled;
pub mod containment;
pub mod parse;
pub mod path;
pub mod pattern;

pub use action::{Family, Requirement, RequirementError};
pub use compiled::{Explanation, Match, ScopeSet, Via};
pub use containment::{Within, within};
pub use parse::{Grant, Plane, Resource, Scope, ScopeForm, ScopeProblem};
pub use pattern::{PathError, PathPattern, PathRule};
