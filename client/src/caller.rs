//! Who is asking: the `Caller` sent with every MDS request.
//!
//! uid, gid and pid come from the FUSE request header; the supplementary groups
//! are not in the header, so they are read from `/proc/<pid>/status` (`Groups:`
//! line) and cached per pid for a short while (a process's groups rarely change,
//! and a recycled pid within the TTL is harmless because the uid/gid still come
//! from the header).
//!
//! Invariant: a failure to read /proc (process gone, pid 0 for kernel-initiated
//! writeback) yields an empty group list, never an error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use weft_proto::Caller;

const GROUPS_TTL: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub struct GroupCache {
    map: Mutex<HashMap<u32, (Instant, Vec<u32>)>>,
}

impl GroupCache {
    pub fn caller(&self, uid: u32, gid: u32, pid: u32) -> Caller {
        Caller {
            uid,
            gid,
            groups: self.groups(pid),
            pid,
        }
    }

    fn groups(&self, pid: u32) -> Vec<u32> {
        if pid == 0 {
            return Vec::new();
        }
        let now = Instant::now();
        if let Some((at, g)) = self.map.lock().get(&pid) {
            if now.duration_since(*at) < GROUPS_TTL {
                return g.clone();
            }
        }
        let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| parse_groups(&s))
            .unwrap_or_default();
        let mut map = self.map.lock();
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, (at, _)| now.duration_since(*at) < GROUPS_TTL);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(pid, (now, groups.clone()));
        groups
    }
}

/// The `Groups:` line of a /proc/<pid>/status file.
pub fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_line() {
        let s = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1000 \nNgid:\t0\n";
        assert_eq!(parse_groups(s), vec![4, 24, 27, 1000]);
        assert_eq!(parse_groups("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Name: x\n"), Vec::<u32>::new());
    }

    #[test]
    fn reads_own_process() {
        let c = GroupCache::default();
        let me = std::process::id();
        let expect = parse_groups(&std::fs::read_to_string("/proc/self/status").unwrap());
        let caller = c.caller(5, 6, me);
        assert_eq!(caller.groups, expect);
        assert_eq!((caller.uid, caller.gid, caller.pid), (5, 6, me));
        assert!(c.caller(0, 0, 0).groups.is_empty());
    }
}
