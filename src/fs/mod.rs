//! The filesystem core: everything the FUSE adapter calls, testable without FUSE.
//!
//! - [`core`]: [`GuardFs`], the shared machinery and the read-side operations.
//! - [`modify`]: namespace and metadata changes.
//! - [`handles`]: open files, directories and staged writebacks.
//! - [`handle_table`]: the records of open handles, held by the core.
//! - [`error`]: the core's one error type.
//! - [`attr`]: attributes with permission bits that reflect the caller's rights.
//! - [`mirror`]: confined, descriptor-based access to the mirror directory.
//! - [`inode`]: the inode table (FUSE inode numbers, lookup counts, paths).
//! - [`relay_files`]: reading relayfile's runtime files for the `/.relay` rules.
//! - [`notice`]: `_PERMISSIONS.md` as `rm -rf`, `cp -r` and `tar x` meet it.

pub mod attr;
pub mod core;
pub mod error;
pub mod gate;
pub mod handle_table;
pub mod handles;
pub mod inode;
pub mod kind;
pub mod mirror;
pub mod modify;
pub mod notice;
pub mod relay_files;

pub use self::core::{Caller, DirItem, Entry, Error, FsResult, GuardFs, Options};
pub use handle_table::Opened;
pub use modify::SetAttr;

#[cfg(test)]
mod tests;
