//! The filesystem core: everything the FUSE adapter calls, testable without FUSE.
//!
//! - [`mirror`]: confined, descriptor-based access to the mirror directory.
//! - [`inode`]: the inode table (FUSE inode numbers, lookup counts, paths).

pub mod inode;
pub mod mirror;
