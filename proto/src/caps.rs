//! Chunk capabilities: what the MDS gives a client with each chunk location
//! (GetChunks: read) and each write lease (AllocChunk: write), and what a
//! chunk daemon checks before it serves a read or takes a write, truncate,
//! fallocate or sync from a client.
//!
//! A capability names a chunk, its version, read or write, an expiry (unix
//! ms) and the id of the key that signed it; its `mac` is HMAC-SHA256 over
//! those fields with that key. The MDS nodes and chunk daemons share the
//! keys through a key file (`--cap-key FILE`, written by `weft certs init`):
//!
//! ```text
//! # weft chunk capability keys: one "ID HEX-KEY" a line.
//! 1 4f1c...  (32 bytes, 64 hex digits)
//! 2 9ab0...
//! ```
//!
//! The highest id signs; every listed key verifies, so a key is rotated by
//! adding a higher one (to the chunk daemons first, then the MDS), and the
//! old one removed once the capabilities it signed have expired. Every
//! process re-reads its key file when it changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::pb::ChunkCap;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a capability key.
pub const KEY_LEN: usize = 32;

/// Milliseconds since the epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a capability allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Read,
    Write,
}

/// A set of keys by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRing {
    keys: BTreeMap<u32, Vec<u8>>,
}

/// One key file line.
pub fn format_key(id: u32, key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{id} {hex}\n")
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn message(c: &ChunkCap) -> Vec<u8> {
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(b"weft-cap-v1");
    m.extend_from_slice(&c.chunk_id.to_le_bytes());
    m.extend_from_slice(&c.version.to_le_bytes());
    m.push(c.write as u8);
    m.extend_from_slice(&c.expires_ms.to_le_bytes());
    m.extend_from_slice(&c.key_id.to_le_bytes());
    // Only a ranged capability signs its range, so a whole-chunk one
    // signs exactly what it did before ranges existed.
    if let Some((start, end)) = range(c) {
        m.extend_from_slice(b"range");
        m.extend_from_slice(&start.to_le_bytes());
        m.extend_from_slice(&end.to_le_bytes());
    }
    m
}

/// The byte range a capability is limited to, if any.
pub fn range(c: &ChunkCap) -> Option<(u64, u64)> {
    (c.range_end > c.range_start).then_some((c.range_start, c.range_end))
}

/// Whether `cap` (verified) lets its holder read `[offset, offset + len)`:
/// always, unless it is limited to a range that does not hold it.
pub fn covers(cap: Option<&ChunkCap>, offset: u64, len: u64) -> Result<(), String> {
    match cap.and_then(range) {
        Some((start, end)) if offset < start || offset.saturating_add(len) > end => Err(format!(
            "capability covers bytes [{start}, {end}) only, not [{offset}, {})",
            offset.saturating_add(len)
        )),
        _ => Ok(()),
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

impl KeyRing {
    pub fn parse(text: &str) -> Result<KeyRing, String> {
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}", n + 1);
            let (id, key) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected \"ID HEX-KEY\""))?;
            let id: u32 = id.parse().map_err(|_| bad("the id is not a number"))?;
            let key = unhex(key.trim()).ok_or_else(|| bad("the key is not hex"))?;
            if key.len() < 16 {
                return Err(bad("the key is shorter than 16 bytes"));
            }
            if keys.insert(id, key).is_some() {
                return Err(bad("a second key with this id"));
            }
        }
        if keys.is_empty() {
            return Err("no keys".into());
        }
        Ok(KeyRing { keys })
    }

    pub fn newest(&self) -> Option<u32> {
        self.keys.keys().next_back().copied()
    }

    /// A capability for `chunk_id` at `version`, signed with the newest key.
    pub fn sign(&self, chunk_id: u64, version: u64, mode: Mode, expires_ms: u64) -> ChunkCap {
        self.sign_range(chunk_id, version, mode, expires_ms, None)
    }

    /// `sign`, limited to bytes `[start, end)` of the chunk when `range`
    /// is given (a read of one needle of a segment).
    pub fn sign_range(
        &self,
        chunk_id: u64,
        version: u64,
        mode: Mode,
        expires_ms: u64,
        range: Option<(u64, u64)>,
    ) -> ChunkCap {
        let (&key_id, key) = self.keys.iter().next_back().expect("a ring has a key");
        let (range_start, range_end) = range.unwrap_or((0, 0));
        let mut c = ChunkCap {
            chunk_id,
            version,
            write: mode == Mode::Write,
            expires_ms,
            key_id,
            mac: vec![],
            range_start,
            range_end,
        };
        let mut m = mac(key);
        m.update(&message(&c));
        c.mac = m.finalize().into_bytes().to_vec();
        c
    }

    /// Whether `cap` lets its holder touch `chunk_id` in `mode` at `now_ms`:
    /// signed by a listed key, unexpired, for this chunk; a write needs a
    /// write capability for exactly the lease's `version`; a read (any
    /// capability) for that version, or any with `version` 0.
    pub fn verify(
        &self,
        cap: Option<&ChunkCap>,
        chunk_id: u64,
        version: u64,
        mode: Mode,
        now_ms: u64,
    ) -> Result<(), String> {
        let c = cap.ok_or("no capability")?;
        let key = self
            .keys
            .get(&c.key_id)
            .ok_or_else(|| format!("capability signed with unknown key {}", c.key_id))?;
        let mut m = mac(key);
        m.update(&message(c));
        m.verify_slice(&c.mac)
            .map_err(|_| "capability signature does not verify (forged or altered)".to_string())?;
        if c.chunk_id != chunk_id {
            return Err(format!("capability is for chunk {:016x}", c.chunk_id));
        }
        if c.expires_ms <= now_ms {
            return Err(format!(
                "capability expired {} ms ago",
                now_ms - c.expires_ms
            ));
        }
        match mode {
            Mode::Write if !c.write => Err("read capability for a write".into()),
            Mode::Write if c.version != version => Err(format!(
                "write capability for version {}, not {version}",
                c.version
            )),
            Mode::Read if version != 0 && c.version != version => Err(format!(
                "capability for version {}, not {version}",
                c.version
            )),
            _ => Ok(()),
        }
    }
}

/// A key file, re-read when it changes.
pub struct KeyFile {
    path: PathBuf,
    current: parking_lot::RwLock<(Option<SystemTime>, Arc<KeyRing>)>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn read_ring(path: &Path) -> Result<KeyRing, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--cap-key {}: {e}", path.display()))?;
    KeyRing::parse(&text).map_err(|e| format!("--cap-key {}: {e}", path.display()))
}

impl KeyFile {
    /// Reads `path` (an error stops the daemon at start).
    pub fn load(path: &Path) -> Result<Arc<KeyFile>, String> {
        let m = mtime(path);
        let ring = read_ring(path)?;
        tracing::info!(file = %path.display(), keys = ring.keys.len(), newest = ring.newest(), "chunk capability keys loaded");
        Ok(Arc::new(KeyFile {
            path: path.to_path_buf(),
            current: parking_lot::RwLock::new((m, Arc::new(ring))),
        }))
    }

    pub fn ring(&self) -> Arc<KeyRing> {
        self.current.read().1.clone()
    }

    /// Re-reads the file if its mtime changed; a file that does not parse
    /// leaves the keys in force (and says so).
    pub fn reload_if_changed(&self) {
        let m = mtime(&self.path);
        if m == self.current.read().0 {
            return;
        }
        match read_ring(&self.path) {
            Ok(ring) => {
                tracing::info!(file = %self.path.display(), keys = ring.keys.len(), newest = ring.newest(), "chunk capability keys reloaded");
                *self.current.write() = (m, Arc::new(ring));
            }
            Err(e) => {
                tracing::error!(error = %e, "capability keys not reloaded: the previous keys stay in force");
                self.current.write().0 = m;
            }
        }
    }

    /// Checks the file's mtime every `every` (inside a tokio runtime).
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                me.reload_if_changed();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> KeyRing {
        KeyRing::parse(text).unwrap()
    }

    const K1: &str = "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";
    const K2: &str = "2 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n";

    #[test]
    fn a_signed_capability_verifies_for_its_chunk_and_mode_only() {
        let r = ring(K1);
        let now = 1_000_000;
        let w = r.sign(7, 3, Mode::Write, now + 5000);
        assert_eq!(r.verify(Some(&w), 7, 3, Mode::Write, now), Ok(()));
        assert_eq!(
            r.verify(Some(&w), 7, 3, Mode::Read, now),
            Ok(()),
            "write implies read"
        );
        assert_eq!(r.verify(Some(&w), 7, 0, Mode::Read, now), Ok(()));
        assert!(
            r.verify(Some(&w), 8, 3, Mode::Write, now).is_err(),
            "another chunk"
        );
        assert!(
            r.verify(Some(&w), 7, 4, Mode::Write, now).is_err(),
            "another version"
        );
        let rd = r.sign(7, 3, Mode::Read, now + 5000);
        let e = r.verify(Some(&rd), 7, 3, Mode::Write, now).unwrap_err();
        assert!(e.contains("read capability"), "{e}");
        assert!(r.verify(None, 7, 3, Mode::Read, now).is_err());
    }

    #[test]
    fn expired_forged_and_altered_capabilities_are_refused() {
        let r = ring(K1);
        let now = 1_000_000;
        let c = r.sign(7, 3, Mode::Read, now);
        assert!(r
            .verify(Some(&c), 7, 3, Mode::Read, now)
            .unwrap_err()
            .contains("expired"));
        let mut c = r.sign(7, 3, Mode::Read, now + 10);
        c.write = true;
        assert!(r
            .verify(Some(&c), 7, 3, Mode::Write, now)
            .unwrap_err()
            .contains("signature"));
        let mut c = r.sign(7, 3, Mode::Read, now + 10);
        c.chunk_id = 8;
        assert!(r.verify(Some(&c), 8, 3, Mode::Read, now).is_err());
        let mut c = r.sign(7, 3, Mode::Read, now + 10);
        c.expires_ms += 1_000_000;
        assert!(r.verify(Some(&c), 7, 3, Mode::Read, now).is_err());
        // Signed by a key this ring does not hold.
        let other = ring(&K1.replace("000102", "990102"));
        let c = other.sign(7, 3, Mode::Read, now + 10);
        assert!(r.verify(Some(&c), 7, 3, Mode::Read, now).is_err());
        let c = ring(K2).sign(7, 3, Mode::Read, now + 10);
        assert!(r
            .verify(Some(&c), 7, 3, Mode::Read, now)
            .unwrap_err()
            .contains("unknown key"));
    }

    #[test]
    fn a_ranged_capability_covers_its_range_only_and_signs_it() {
        let r = ring(K1);
        let now = 1_000_000;
        let c = r.sign_range(7, 3, Mode::Read, now + 10, Some((128, 5160)));
        assert_eq!(r.verify(Some(&c), 7, 3, Mode::Read, now), Ok(()));
        assert_eq!(covers(Some(&c), 128, 5032), Ok(()));
        assert_eq!(covers(Some(&c), 200, 10), Ok(()));
        for (offset, len) in [(0, 4096), (127, 1), (5000, 161), (5160, 1), (u64::MAX, 2)] {
            let e = covers(Some(&c), offset, len).unwrap_err();
            assert!(e.contains("[128, 5160)"), "{e}");
        }
        // A whole-chunk capability covers everything, and its MAC is the
        // one it had before ranges existed (no range in the message).
        let whole = r.sign(7, 3, Mode::Read, now + 10);
        assert_eq!(covers(Some(&whole), 0, u64::MAX), Ok(()));
        assert_eq!(covers(None, 0, 1), Ok(()));
        assert_eq!(
            r.sign_range(7, 3, Mode::Read, now + 10, None).mac,
            whole.mac
        );
        // Widening (or dropping) the range breaks the signature.
        for (start, end) in [(0, 5160), (128, 1 << 20), (0, 0)] {
            let mut wide = c.clone();
            (wide.range_start, wide.range_end) = (start, end);
            let e = r.verify(Some(&wide), 7, 3, Mode::Read, now).unwrap_err();
            assert!(e.contains("signature"), "{e}");
        }
    }

    #[test]
    fn rotation_signs_with_the_newest_and_accepts_every_listed_key() {
        let old = ring(K1);
        let both = ring(&format!("# keys\n{K2}\n{K1}"));
        assert_eq!(both.newest(), Some(2));
        let now = 5;
        let by_old = old.sign(1, 1, Mode::Read, now + 10);
        let by_new = both.sign(1, 1, Mode::Read, now + 10);
        assert_eq!(by_new.key_id, 2);
        assert_eq!(both.verify(Some(&by_old), 1, 1, Mode::Read, now), Ok(()));
        assert_eq!(both.verify(Some(&by_new), 1, 1, Mode::Read, now), Ok(()));
        assert!(old.verify(Some(&by_new), 1, 1, Mode::Read, now).is_err());
    }

    #[test]
    fn key_files_are_checked() {
        assert!(KeyRing::parse("").is_err());
        assert!(KeyRing::parse("x 00").is_err());
        assert!(KeyRing::parse("1 zz").is_err());
        assert!(KeyRing::parse("1 0011").is_err(), "too short");
        assert!(
            KeyRing::parse(&format!("{K1}{K1}")).is_err(),
            "duplicate id"
        );
        let key = [7u8; KEY_LEN];
        assert_eq!(ring(&format_key(4, &key)).newest(), Some(4));
    }
}
