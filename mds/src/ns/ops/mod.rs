//! The operations, one file per family. Each adds `prepare_*` (validation in
//! the order Linux checks, so the first failing check gives ext4's errno) and
//! `apply_*` (the deterministic change) methods to `Namespace`.

mod atime;
pub(crate) mod chunks;
pub(crate) mod compact;
mod create;
pub(crate) mod packed;
mod read;
mod remove;
mod rename;
mod setattr;
mod xattr;
