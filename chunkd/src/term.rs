//! Term fencing: the highest MDS term this daemon has seen, kept in
//! `DIR/mds.term` (written durably before the term is acted on), so a deposed
//! MDS leader — paused, partitioned, or a stale process — gets none of its
//! instructions obeyed once a newer leader has spoken to this daemon, also
//! across a restart of the daemon.

use std::path::{Path, PathBuf};

use anyhow::Context;
use parking_lot::Mutex;

pub struct TermGuard {
    path: PathBuf,
    /// The highest term seen; the lock also orders the durable writes.
    highest: Mutex<u64>,
}

/// An instruction from an MDS whose term is older than one already seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleTerm {
    pub got: u64,
    pub highest: u64,
}

impl std::fmt::Display for StaleTerm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stale MDS term {} (this daemon has seen term {})",
            self.got, self.highest
        )
    }
}

impl TermGuard {
    pub fn load(dir: &Path) -> anyhow::Result<TermGuard> {
        let path = dir.join("mds.term");
        let highest = match std::fs::read_to_string(&path) {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .with_context(|| format!("{}: not a term: {:?}", path.display(), s.trim()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(TermGuard {
            path,
            highest: Mutex::new(highest),
        })
    }

    pub fn highest(&self) -> u64 {
        *self.highest.lock()
    }

    /// Admits an instruction carrying `term`: refused if older than the
    /// highest seen; a newer one is made durable before it is admitted.
    pub fn admit(&self, term: u64) -> Result<(), StaleTerm> {
        let mut highest = self.highest.lock();
        if term < *highest {
            return Err(StaleTerm {
                got: term,
                highest: *highest,
            });
        }
        if term > *highest {
            if let Err(e) = crate::daemon::write_atomic(&self.path, format!("{term}\n").as_bytes())
            {
                // Without the record a restart could obey the old leader again.
                tracing::error!(error = %e, term, "cannot persist the MDS term; refusing the instruction");
                return Err(StaleTerm {
                    got: term,
                    highest: *highest,
                });
            }
            tracing::info!(term, previous = *highest, "new MDS term");
            *highest = term;
        }
        Ok(())
    }

    /// `admit` as a tonic status for the ChunkAdmin calls.
    pub fn admit_status(&self, term: u64) -> Result<(), tonic::Status> {
        self.admit(term)
            .map_err(|e| tonic::Status::failed_precondition(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_older_terms_and_remembers_across_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let g = TermGuard::load(dir.path()).unwrap();
        assert_eq!(g.highest(), 0);
        g.admit(0).unwrap();
        g.admit(3).unwrap();
        g.admit(3).unwrap();
        assert_eq!(g.admit(2), Err(StaleTerm { got: 2, highest: 3 }));
        drop(g);
        let g = TermGuard::load(dir.path()).unwrap();
        assert_eq!(g.highest(), 3);
        assert!(g.admit(1).is_err());
        g.admit(4).unwrap();
        assert_eq!(TermGuard::load(dir.path()).unwrap().highest(), 4);
    }

    #[test]
    fn a_damaged_term_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mds.term"), "x\n").unwrap();
        assert!(TermGuard::load(dir.path()).is_err());
    }
}
