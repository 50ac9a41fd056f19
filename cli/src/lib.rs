//! The `weft` admin tool's library: `cluster` runs a whole cluster on one
//! machine (used by `weft up` and by the tests), `admin` talks to an MDS,
//! `progress` shows long commands' progress on a terminal.

pub mod admin;
pub mod cluster;
pub mod progress;
pub mod stats;
