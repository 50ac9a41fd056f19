//! Finding the MDS leader: a client holds a list of MDS addresses
//! (comma-separated wherever one address was taken before) and moves to the
//! node a "not leader" answer names, or to the next address on a transport
//! error. The convention is in weft.proto's header.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

/// Response metadata entry naming the leader in a "not leader" answer.
pub const LEADER_METADATA: &str = "weft-leader";
/// Message of the UNAVAILABLE status a non-leader answers with.
pub const NOT_LEADER: &str = "not leader";

/// Splits "A,B,C" into addresses (whitespace trimmed, empty parts refused).
pub fn parse_list(list: &str) -> Result<Vec<String>, String> {
    let addrs: Vec<String> = list.split(',').map(|a| a.trim().to_string()).collect();
    if addrs.iter().any(|a| a.is_empty()) {
        return Err(format!(
            "{list:?}: expected one MDS address or a comma-separated list of them"
        ));
    }
    Ok(addrs)
}

/// The "not leader" answer: UNAVAILABLE, naming the leader if known.
pub fn not_leader(leader: Option<&str>) -> tonic::Status {
    let mut s = tonic::Status::unavailable(NOT_LEADER);
    if let Some(addr) = leader {
        if let Ok(v) = addr.parse() {
            s.metadata_mut().insert(LEADER_METADATA, v);
        }
    }
    s
}

/// Whether `status` is a "not leader" answer, and the leader it names.
pub fn leader_hint(status: &tonic::Status) -> Option<Option<String>> {
    if status.code() != tonic::Code::Unavailable || status.message() != NOT_LEADER {
        return None;
    }
    Some(
        status
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    )
}

/// The MDS addresses a client knows and which one it is talking to. Cheap to
/// clone; every clone moves together.
#[derive(Clone, Debug)]
pub struct MdsList {
    addrs: Arc<RwLock<Vec<String>>>,
    current: Arc<AtomicUsize>,
}

impl MdsList {
    pub fn new(addrs: Vec<String>) -> MdsList {
        assert!(!addrs.is_empty(), "an MDS list is never empty");
        MdsList {
            addrs: Arc::new(RwLock::new(addrs)),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn parse(list: &str) -> Result<MdsList, String> {
        parse_list(list).map(MdsList::new)
    }

    /// The address to talk to now.
    pub fn current(&self) -> String {
        let addrs = self.addrs.read();
        addrs[self.current.load(Ordering::Relaxed) % addrs.len()].clone()
    }

    pub fn all(&self) -> Vec<String> {
        self.addrs.read().clone()
    }

    pub fn len(&self) -> usize {
        self.addrs.read().len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The call to `failed` (the address it went to) failed with `status`:
    /// move to the leader it names, else to the next address. Returns the
    /// address to try now. A concurrent caller may have moved already, in
    /// which case this one does not move again.
    pub fn failed(&self, failed: &str, status: Option<&tonic::Status>) -> String {
        let hint = status.and_then(leader_hint).flatten();
        let mut addrs = self.addrs.write();
        let cur = self.current.load(Ordering::Relaxed) % addrs.len();
        if addrs[cur] != failed {
            return addrs[cur].clone();
        }
        let next = match hint {
            Some(h) if h != failed => match addrs.iter().position(|a| *a == h) {
                Some(i) => i,
                None => {
                    // A leader this client was not told of (it joined later).
                    addrs.push(h);
                    addrs.len() - 1
                }
            },
            _ => (cur + 1) % addrs.len(),
        };
        self.current.store(next, Ordering::Relaxed);
        addrs[next].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_refuses_empty_parts() {
        assert_eq!(parse_list("a:1").unwrap(), vec!["a:1"]);
        assert_eq!(
            parse_list("a:1, b:2,c:3").unwrap(),
            vec!["a:1", "b:2", "c:3"]
        );
        assert!(parse_list("a:1,,b:2").is_err());
        assert!(parse_list("").is_err());
    }

    #[test]
    fn follows_hints_then_rotates() {
        let l = MdsList::parse("a:1,b:2,c:3").unwrap();
        assert_eq!(l.current(), "a:1");
        // Transport error: next address.
        assert_eq!(l.failed("a:1", None), "b:2");
        // A "not leader" naming c.
        let s = not_leader(Some("c:3"));
        assert_eq!(leader_hint(&s), Some(Some("c:3".into())));
        assert_eq!(l.failed("b:2", Some(&s)), "c:3");
        // A stale failure report (someone moved already) does not move again.
        assert_eq!(l.failed("b:2", None), "c:3");
        // A leader not in the list is added.
        let s = not_leader(Some("d:4"));
        assert_eq!(l.failed("c:3", Some(&s)), "d:4");
        assert_eq!(l.len(), 4);
        // "not leader" without a hint, and other errors: rotate.
        assert_eq!(leader_hint(&not_leader(None)), Some(None));
        assert_eq!(leader_hint(&tonic::Status::unavailable("x")), None);
        assert_eq!(l.failed("d:4", Some(&not_leader(None))), "a:1");
    }
}
