//! The MDS's term: a generation clock that only grows, sent with every
//! instruction to a chunk daemon (SetVersion, Replicate, the deletes in a
//! heartbeat reply). A daemon remembers the highest term it has seen and
//! refuses older ones, so an MDS that lost its authority — a stale process,
//! or a leader deposed while paused or cut off — gets nothing obeyed.
//!
//! A single MDS takes a new term at every start: `DATA/term` holds the last
//! one, written durably before the MDS serves under the next.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

const TERM_FILE: &str = "term";

#[derive(Debug, Default)]
pub struct Term(AtomicU64);

impl Term {
    pub fn new(term: u64) -> Term {
        Term(AtomicU64::new(term))
    }

    /// Reads `DATA/term`, and makes and records the next term (at least
    /// `min`) durably.
    pub fn next_start(data: &Path, min: u64) -> anyhow::Result<Term> {
        let path = data.join(TERM_FILE);
        let last = match std::fs::read_to_string(&path) {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .with_context(|| format!("{}: not a term: {:?}", path.display(), s.trim()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let term = (last + 1).max(min);
        crate::durable_file::write_durably(data, TERM_FILE, format!("{term}\n").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Term::new(term))
    }

    /// The last term recorded in `DATA/term` (0 if none).
    pub fn last(data: &Path) -> anyhow::Result<u64> {
        let path = data.join(TERM_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .with_context(|| format!("{}: not a term: {:?}", path.display(), s.trim())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// In an MDS group the term is the Raft term this node leads in.
    pub fn set(&self, term: u64) {
        self.0.fetch_max(term, Ordering::AcqRel);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_takes_a_higher_term() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Term::next_start(dir.path(), 0).unwrap().get(), 1);
        assert_eq!(Term::next_start(dir.path(), 0).unwrap().get(), 2);
        std::fs::write(dir.path().join(TERM_FILE), "41\n").unwrap();
        assert_eq!(Term::next_start(dir.path(), 0).unwrap().get(), 42);
        // --min-term: above what daemons saw after a restored data directory.
        assert_eq!(Term::next_start(dir.path(), 100).unwrap().get(), 100);
        assert_eq!(Term::next_start(dir.path(), 5).unwrap().get(), 101);
        std::fs::write(dir.path().join(TERM_FILE), "junk").unwrap();
        assert!(Term::next_start(dir.path(), 0).is_err());
    }
}
