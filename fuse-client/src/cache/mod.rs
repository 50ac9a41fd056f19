//! Client-side caches: inode attributes (for read clipping and access checks)
//! and chunk locations (so reads don't ask the MDS for every chunk).
//!
//! `coherence` applies the MDS's pushes (other mounts' changes) to both and
//! to the kernel's caches.
//!
//! Invariant: both are hints. Anything cached may be stale; every user either
//! tolerates staleness bounded by a TTL (attributes) or detects it through a
//! chunk daemon's answer and refreshes (locations).

pub mod attr;
pub mod chunks;
pub mod coherence;
pub mod kernel;
pub mod meta;

pub use attr::AttrCache;
pub use chunks::ChunkLocCache;
