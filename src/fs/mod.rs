//! The filesystem core: everything the FUSE adapter calls, testable without FUSE.
//!
//! The gate and the mirror:
//! - [`gate`]: the one gate. Every decision, its audit, the writeback gate, and the proof
//!   types ([`gate::Allowed`], [`gate::Change`]) without which the mirror changes nothing.
//! - [`mirror`]: confined, descriptor-based access to the mirror directory; every change or
//!   open takes a proof.
//! - [`error`]: the core's one error type (errno, message, source, log level).
//!
//! The guarded filesystem, [`GuardFs`] ([`core`]: its state, node resolution and places), with
//! its operations in files named for what they do:
//! - [`lookup`]: lookup, attributes, `readlink`, `access`, `statfs`.
//! - [`dirs`]: what a caller sees listed.
//! - [`modify`]: namespace and metadata changes (mkdir, unlink, rename, setattr, ...).
//! - [`handles`]: open files and directories, reads and writes, staged writebacks and their
//!   commit; [`handle_table`] holds the records.
//! - [`xattrs`]: extended attributes.
//! - [`generated`]: `_PERMISSIONS.md` and the filtered `/.relay` views ([`rendered`]: the
//!   renderings kept for reuse);
//!   [`notice`]: the notice as `rm -rf`, `cp -r` and `tar x` meet it.
//! - [`owner`]: who owns what the guard makes.
//!
//! Supporting pieces: [`inode`] (the inode table), [`attr`] (permission bits from rights),
//! [`kind`] (object types), [`relay_files`] (relayfile's runtime files).

pub mod attr;
pub mod core;
pub mod dirs;
pub mod error;
pub mod gate;
pub mod generated;
pub mod handle_table;
pub mod handles;
pub mod inode;
pub mod kind;
pub mod lookup;
pub mod mirror;
pub mod modify;
pub mod notice;
pub mod owner;
pub mod relay_files;
pub mod rendered;
pub mod xattrs;

pub use self::core::{Caller, DirItem, Entry, Error, FsResult, GuardFs, Options};
pub use handle_table::Opened;
pub use modify::SetAttr;

#[cfg(test)]
mod tests;
