//! The `weft` admin tool's library: `cluster` runs a whole cluster on one
//! machine (used by `weft up` and by the tests), `admin` talks to an MDS.

pub mod admin;
pub mod cluster;
pub mod stats;
