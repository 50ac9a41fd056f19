//! The `weft` admin tool's library: `cluster` runs a whole cluster on one
//! machine (used by `weft up` and by the tests), `admin` talks to an MDS, `certs` makes
//! the cluster CA and certificates, `progress` shows long commands' progress on a
//! terminal.

pub mod admin;
pub mod certs;
pub mod cluster;
pub mod progress;
pub mod stats;
