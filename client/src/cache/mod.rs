//! Client-side caches: inode attributes (for read clipping and access checks),
//! chunk locations (so reads don't ask the MDS for every chunk) and file data
//! (`data`: chunk blocks, bounded by the `data_cache` mount option).
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
pub mod data;
pub mod disk;
pub mod kernel;
pub mod meta;

pub use attr::AttrCache;
pub use chunks::ChunkLocCache;
pub use data::DataCache;
