//! weft-chunkd, the chunk daemon, as a library: `main.rs` is a thin binary
//! over `daemon::start`, and tests start whole daemons in-process.
//!
//! Modules: `config` (command line), `store` (replica files, checksums, the
//! index), `service` (the tonic Chunk service), `pipeline` (forwarding to the
//! next replica), `heartbeat` (Register/Heartbeat/ReportCorrupt with the MDS),
//! `scrub` (background verification), `daemon` (startup and shutdown).

pub mod admin;
pub mod config;
pub mod daemon;
pub mod heartbeat;
pub mod metrics;
pub mod ordering;
pub mod pipeline;
pub mod scrub;
pub mod service;
pub mod store;
pub mod term;

pub use config::Config;
pub use daemon::{start, Daemon};
