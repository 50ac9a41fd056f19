//! weft-mds, the metadata server.
//!
//! Layout:
//! - `ns`         the namespace as a pure state machine (prepare → record → apply)
//! - `state`      ns plus the per-session reply table; `apply_entry` is the only mutator
//! - `wal`        the write-ahead log: frame codec and segment files, replay
//! - `committer`  group commit: decide, journal with one write per batch, apply, answer (the fdatasync trails, `wal/durable.rs`)
//! - `group`      the MDS group: the log replicated with openraft, leader lease, MDS↔MDS calls
//! - `chunkds`    chunk daemons and their replicas, rebuilt from their reports
//! - `placement`  where new replicas go (pure)
//! - `leases`     write leases and version bumps that fence stale writers
//! - `repair`     re-replication, trimming, draining (background loop)
//! - `service`    the gRPC glue for `Meta` and `Master`
//! - `snapshot`   checkpoints: the whole state at one log index, durably
//! - `durable_file` small files written whole or not at all, durably
//! - `sessions`   session contact times and expiry
//! - `inspect`    `--check` and `--dump`: offline views of a data directory
//! - `datadir`    a data directory's lock, format file, and state (snapshot + replay)
//! - `server`     startup and serving, for a single MDS and a group node
//! - `watch`      cache-coherence pushes to the mounts (`Coherence.Watch`)
//! - `strict`     which mutations wait for strict mounts' acknowledgements
//!
//! Imports run one way, from `server` and `service` down to `ns`: no module
//! imports one that imports it back. (Only a test, `ns/tests/model.rs`,
//! reaches up to `datadir` to recover the namespace from real files.)

pub mod chunkds;
pub mod committer;
pub mod config;
pub mod datadir;
pub mod durable_file;
pub mod exports;
pub mod group;
pub mod inspect;
pub mod leases;
pub mod locks;
pub mod metrics;
pub mod ns;
pub mod placement;
pub mod repair;
pub mod server;
pub mod service;
pub mod sessions;
pub mod snapshot;
pub mod state;
pub mod status_page;
pub mod strict;
pub mod term;
pub mod wal;
pub mod watch;
