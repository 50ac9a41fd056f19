//! Where a new chunk's replicas go. Pure: candidates in, daemon ids out.
//!
//! Rules, in order: never two replicas on one daemon; only live daemons with
//! room for a whole chunk; spread over as many racks as there are before
//! doubling up in one; within those, prefer the daemons with most free space,
//! with a random tie-break (given by the caller) so equal daemons share load.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: u64,
    pub rack: String,
    pub free: u64,
}

/// Picks up to `want` daemons for a chunk of `chunk_size` bytes, excluding
/// `exclude` (daemons that already hold a replica). `jitter` gives each
/// candidate a tie-break value (a random source in production, fixed in tests).
pub fn place(
    candidates: &[Candidate],
    want: usize,
    chunk_size: u64,
    exclude: &[u64],
    mut jitter: impl FnMut(u64) -> u64,
) -> Vec<u64> {
    // Racks already used by existing replicas count as taken first.
    let mut by_rack: BTreeMap<&str, Vec<(&Candidate, u64)>> = BTreeMap::new();
    for c in candidates {
        if c.free >= chunk_size && !exclude.contains(&c.id) {
            by_rack
                .entry(c.rack.as_str())
                .or_default()
                .push((c, jitter(c.id)));
        }
    }
    for list in by_rack.values_mut() {
        // Most free first; free space bucketed to a chunk so near-equal daemons tie.
        list.sort_by_key(|(c, j)| (std::cmp::Reverse(c.free / chunk_size.max(1)), *j));
    }
    let used_racks: Vec<&str> = candidates
        .iter()
        .filter(|c| exclude.contains(&c.id))
        .map(|c| c.rack.as_str())
        .collect();
    // Rack order: racks without a replica yet, then by best free space.
    let mut racks: Vec<&str> = by_rack.keys().copied().collect();
    racks.sort_by_key(|r| {
        let best = by_rack[r]
            .first()
            .map(|(c, _)| c.free / chunk_size.max(1))
            .unwrap_or(0);
        (used_racks.contains(r), std::cmp::Reverse(best))
    });
    let mut picked = Vec::new();
    let mut round = 0;
    while picked.len() < want {
        let mut any = false;
        for r in &racks {
            if let Some((c, _)) = by_rack[r].get(round) {
                any = true;
                if picked.len() < want {
                    picked.push(c.id);
                }
            }
        }
        if !any {
            break;
        }
        round += 1;
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, rack: &str, free: u64) -> Candidate {
        Candidate {
            id,
            rack: rack.into(),
            free,
        }
    }

    #[test]
    fn distinct_daemons_and_never_more_than_exist() {
        let cs = [c(1, "", 100), c(2, "", 100)];
        let p = place(&cs, 3, 10, &[], |id| id);
        assert_eq!(p.len(), 2);
        assert_ne!(p[0], p[1]);
    }

    #[test]
    fn spreads_over_racks_first() {
        let cs = [
            c(1, "a", 500),
            c(2, "a", 400),
            c(3, "a", 300),
            c(4, "b", 10),
        ];
        let p = place(&cs, 2, 10, &[], |id| id);
        assert!(p.contains(&4), "{p:?} should use rack b");
        assert!(p.contains(&1), "{p:?} should use the freest in rack a");
        let p3 = place(&cs, 3, 10, &[], |id| id);
        assert_eq!(p3.len(), 3);
    }

    #[test]
    fn skips_full_and_excluded_and_prefers_other_racks_than_existing() {
        let cs = [c(1, "a", 5), c(2, "a", 100), c(3, "b", 100), c(4, "c", 100)];
        let p = place(&cs, 2, 10, &[2], |id| id);
        assert!(!p.contains(&1) && !p.contains(&2));
        assert_eq!(p.len(), 2);
        let only_new_rack = place(
            &[c(2, "a", 100), c(5, "a", 100), c(6, "b", 100)],
            1,
            10,
            &[2],
            |id| id,
        );
        assert_eq!(only_new_rack, vec![6]);
    }

    #[test]
    fn jitter_breaks_ties() {
        let cs = [c(1, "", 100), c(2, "", 100), c(3, "", 100)];
        assert_eq!(place(&cs, 1, 10, &[], |id| id), vec![1]);
        assert_eq!(place(&cs, 1, 10, &[], |id| 10 - id), vec![3]);
    }
}
