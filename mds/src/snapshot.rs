//! Checkpoints: the whole MDS state (namespace + session table) at one log
//! index, in one file, so restart reads a snapshot plus a short log tail and
//! the log segments the snapshot covers can be deleted.
//!
//! File `DATA/snapshot/NNNNNNNNNNNNNNNNNNNN.snap` (named for the index it covers):
//! ```text
//! offset size  field (little-endian)
//! 0      8     magic "WEFTSNP1"
//! 8      4     format version (3; 1 and 2 still load)
//! 12     4     reserved (0)
//! 16     8     index: the last log entry the state includes
//! 24     8     payload length
//! 32     4     crc32c of the payload
//! 36     4     crc32c of bytes 0..36
//! 40     ...   payload: postcard of (Namespace, Sessions, chunk allocations,
//!              the unlogged tables an MDS group replicates: opens, open
//!              counts, advisory locks, drain marks)
//! ```
//! Invariants: a `.snap` file that exists is complete and fsync'd (written as
//! `.tmp`, fsync, rename, fsync of the directory); it is only ever trusted after
//! both checksums pass; log segments are dropped only after the snapshot that
//! covers them is durable; at most one writer at a time (`Checkpointer::lock`).

use crate::state::{Opens, Sessions, State};
use crate::wal::log::{self, WalError};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub const MAGIC: &[u8; 8] = b"WEFTSNP1";
/// 3 adds the tables an MDS group builds from its log but a single MDS's
/// log does not (`Live`); 2 adds each file's chunk allocations after the
/// session table; 1 (without them) still loads, its files' st_blocks
/// estimated until their next write. 1 and 2 load with nothing open, locked
/// or draining.
pub const VERSION: u32 = 3;
const VERSION_WITHOUT_ALLOCS: u32 = 1;
const VERSION_WITHOUT_LIVE: u32 = 2;
pub const HEADER_LEN: usize = 40;
pub const DIR: &str = "snapshot";

/// ino → (chunk index → data bytes on disk): `Inode::alloc`, which the
/// namespace's own serialized form leaves out.
type Allocs<'a> = Vec<(u64, &'a BTreeMap<u64, u64>)>;

#[derive(Serialize)]
struct BodyRef<'a> {
    ns: &'a crate::ns::Namespace,
    sessions: &'a Sessions,
    allocs: Allocs<'a>,
    live: LiveRef<'a>,
}

/// Who holds what open, the namespace's open counts, advisory locks and
/// drain marks: an MDS group's nodes build them alike from the log, so a
/// node that loads a snapshot needs them to go on where the log resumes.
/// A single MDS forgets them at its restart (`State::forget_unlogged`).
#[derive(Serialize)]
struct LiveRef<'a> {
    opens: &'a HashMap<u64, HashMap<u64, Opens>>,
    open_counts: Vec<(u64, u32)>,
    locks: &'a crate::locks::Locks,
    draining: &'a BTreeSet<u64>,
}

#[derive(Deserialize)]
struct Live {
    opens: HashMap<u64, HashMap<u64, Opens>>,
    open_counts: Vec<(u64, u32)>,
    locks: crate::locks::Locks,
    draining: BTreeSet<u64>,
}

#[derive(Deserialize)]
struct BodyWithLive {
    ns: crate::ns::Namespace,
    sessions: Sessions,
    allocs: Vec<(u64, BTreeMap<u64, u64>)>,
    live: Live,
}

#[derive(Deserialize)]
struct Body {
    ns: crate::ns::Namespace,
    sessions: Sessions,
}

#[derive(Deserialize)]
struct BodyWithAllocs {
    ns: crate::ns::Namespace,
    sessions: Sessions,
    allocs: Vec<(u64, BTreeMap<u64, u64>)>,
}

pub fn snapshot_name(index: u64) -> String {
    format!("{index:020}.snap")
}

/// Snapshot files in `dir`, sorted by index.
pub fn list(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        if let Some(num) = name.to_string_lossy().strip_suffix(".snap") {
            if let Ok(i) = num.parse::<u64>() {
                out.push((i, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn encode_header(index: u64, len: u64, crc: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&index.to_le_bytes());
    h[24..32].copy_from_slice(&len.to_le_bytes());
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32c::crc32c(&h[..36]);
    h[36..40].copy_from_slice(&hcrc.to_le_bytes());
    h
}

/// Counts and checksums the payload as it streams to disk, so a snapshot of
/// a large namespace never needs a second copy of itself in memory.
struct Tee<W: Write> {
    inner: W,
    crc: u32,
    len: u64,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the state durably as the snapshot for `st.applied_index`; returns its path and size.
pub fn write(dir: &Path, st: &State) -> anyhow::Result<(PathBuf, u64)> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let index = st.applied_index;
    let path = dir.join(snapshot_name(index));
    let tmp = dir.join(format!("{}.tmp", snapshot_name(index)));
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(&[0u8; HEADER_LEN])?;
    let mut tee = Tee {
        inner: BufWriter::with_capacity(1 << 20, &mut f),
        crc: 0,
        len: 0,
    };
    postcard::to_io(
        &BodyRef {
            ns: &st.ns,
            sessions: &st.sessions,
            allocs: st.ns.allocations().collect(),
            live: LiveRef {
                opens: &st.opens,
                open_counts: st.ns.open_counts(),
                locks: &st.locks,
                draining: &st.draining,
            },
        },
        &mut tee,
    )
    .with_context(|| format!("writing {}", tmp.display()))?;
    tee.flush()?;
    let (len, crc) = (tee.len, tee.crc);
    drop(tee);
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&encode_header(index, len, crc))?;
    f.sync_all()
        .with_context(|| format!("fsync {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, &path)?;
    log::sync_dir(dir)?;
    Ok((path, HEADER_LEN as u64 + len))
}

/// Reads and verifies one snapshot file: (index, namespace, sessions).
pub fn read(path: &Path, chunk_size: u64) -> anyhow::Result<State> {
    read_checked(path, Some(chunk_size))
}

/// `read`, checking the chunk size only if one is given (a node joining an
/// MDS group takes the group's from the snapshot it is sent).
pub fn read_checked(path: &Path, chunk_size: Option<u64>) -> anyhow::Result<State> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let bad = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    if bytes.len() < HEADER_LEN {
        return Err(bad(format!(
            "{} bytes, shorter than the header",
            bytes.len()
        )));
    }
    let h = &bytes[..HEADER_LEN];
    if &h[..8] != MAGIC {
        return Err(bad("bad magic (not a weft snapshot)".into()));
    }
    let hcrc = u32::from_le_bytes(h[36..40].try_into().unwrap());
    if crc32c::crc32c(&h[..36]) != hcrc {
        return Err(bad("header checksum mismatch at offset 0".into()));
    }
    let version = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if !(VERSION_WITHOUT_ALLOCS..=VERSION).contains(&version) {
        return Err(bad(format!(
            "snapshot format version {version}, this MDS reads {VERSION_WITHOUT_ALLOCS} to {VERSION}"
        )));
    }
    let index = u64::from_le_bytes(h[16..24].try_into().unwrap());
    let len = u64::from_le_bytes(h[24..32].try_into().unwrap());
    let crc = u32::from_le_bytes(h[32..36].try_into().unwrap());
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(bad(format!(
            "payload is {} bytes, the header says {len}",
            payload.len()
        )));
    }
    let actual = crc32c::crc32c(payload);
    if actual != crc {
        return Err(bad(format!(
            "payload checksum mismatch (stored {crc:08x}, computed {actual:08x})"
        )));
    }
    let undecodable = |e: postcard::Error| bad(format!("payload does not decode: {e}"));
    let (body, live) = if version == VERSION_WITHOUT_ALLOCS {
        (
            postcard::from_bytes::<Body>(payload).map_err(undecodable)?,
            None,
        )
    } else if version == VERSION_WITHOUT_LIVE {
        let b: BodyWithAllocs = postcard::from_bytes(payload).map_err(undecodable)?;
        let mut ns = b.ns;
        ns.restore_allocations(b.allocs);
        let body = Body {
            ns,
            sessions: b.sessions,
        };
        (body, None)
    } else {
        let b: BodyWithLive = postcard::from_bytes(payload).map_err(undecodable)?;
        let mut ns = b.ns;
        ns.restore_allocations(b.allocs);
        let body = Body {
            ns,
            sessions: b.sessions,
        };
        (body, Some(b.live))
    };
    if let Some(chunk_size) = chunk_size.filter(|cs| *cs != body.ns.chunk_size()) {
        return Err(bad(format!(
            "chunk size {} differs from format.json's {chunk_size}",
            body.ns.chunk_size()
        )));
    }
    let mut st = State {
        ns: body.ns,
        sessions: body.sessions,
        applied_index: index,
        opens: Default::default(),
        locks: Default::default(),
        draining: Default::default(),
    };
    if let Some(live) = live {
        st.opens = live.opens;
        st.ns.set_open_counts(live.open_counts);
        st.locks = live.locks;
        st.draining = live.draining;
    }
    Ok(st)
}

/// The newest snapshot, verified; `None` for a file system that has none yet.
/// A damaged newest snapshot is an error, not a silent fall-back: the log it
/// covered is gone.
pub fn load_newest(dir: &Path, chunk_size: u64) -> anyhow::Result<Option<State>> {
    match list(dir)?.last() {
        None => Ok(None),
        Some((index, path)) => {
            let st = read(path, chunk_size)?;
            if st.applied_index != *index {
                bail!(
                    "{}: holds index {} but is named for {index}",
                    path.display(),
                    st.applied_index
                );
            }
            Ok(Some(st))
        }
    }
}

/// Takes checkpoints: one at a time, then removes older snapshots and the log
/// segments the new one covers.
pub struct Checkpointer {
    snap_dir: PathBuf,
    wal_dir: PathBuf,
    lock: parking_lot::Mutex<()>,
}

/// What one checkpoint did (for logs and benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct Done {
    pub index: u64,
    pub bytes: u64,
    pub segments_dropped: usize,
    pub ms: u64,
}

impl Checkpointer {
    pub fn new(data: &Path) -> Arc<Self> {
        Arc::new(Checkpointer {
            snap_dir: data.join(DIR),
            wal_dir: data.join("wal"),
            lock: parking_lot::Mutex::new(()),
        })
    }

    /// Writes `st` (a copy, or a locked state) and cleans up what it covers.
    pub fn checkpoint(&self, st: &State) -> anyhow::Result<Done> {
        let _one = self.lock.lock();
        let t = Instant::now();
        if list(&self.snap_dir)?
            .last()
            .is_some_and(|(i, _)| *i >= st.applied_index)
        {
            return Ok(Done {
                index: st.applied_index,
                bytes: 0,
                segments_dropped: 0,
                ms: 0,
            });
        }
        let (_, bytes) = write(&self.snap_dir, st)?;
        for (i, p) in list(&self.snap_dir)? {
            if i < st.applied_index {
                fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        // Leftover temp files are from a crash mid-checkpoint: never trusted, so drop them.
        for e in fs::read_dir(&self.snap_dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp")
                && !e
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&snapshot_name(st.applied_index))
            {
                let _ = fs::remove_file(e.path());
            }
        }
        log::sync_dir(&self.snap_dir)?;
        let segments_dropped = log::drop_covered_in(&self.wal_dir, st.applied_index)
            .map_err(|e: WalError| anyhow::anyhow!(e))?;
        if weft_metrics::on() {
            crate::metrics::M
                .checkpoint
                .observe(t.elapsed().as_nanos() as u64);
        }
        Ok(Done {
            index: st.applied_index,
            bytes,
            segments_dropped,
            ms: t.elapsed().as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::{pb, Ctx, Prepared, Time};
    use pb::meta_request::Op;

    const CHUNK: u64 = 1 << 20;

    fn run(st: &mut State, op: Op) -> pb::meta_reply::Result {
        let ctx = Ctx {
            now: Time { sec: 5, nsec: 0 },
            caller: crate::ns::Caller::root(),
        };
        match st.ns.prepare(&ctx, &op).unwrap() {
            Prepared::Record(r) => st.ns.apply(&r).reply,
            Prepared::Reply(r) => r,
        }
    }

    /// A file whose one chunk's allocation (4096 bytes) was reported.
    fn state_with_a_reported_chunk() -> (State, u64) {
        let mut st = State::new(CHUNK);
        let pb::meta_reply::Result::Attr(a) = run(
            &mut st,
            Op::Create(pb::CreateReq {
                parent: 1,
                name: b"f".to_vec(),
                mode: 0o644,
                ..Default::default()
            }),
        ) else {
            panic!("create")
        };
        let pb::meta_reply::Result::ChunkWrite(w) = run(
            &mut st,
            Op::AllocChunk(pb::AllocChunkReq {
                ino: a.ino,
                index: 3,
                ..Default::default()
            }),
        ) else {
            panic!("alloc")
        };
        run(
            &mut st,
            Op::CommitWrite(pb::CommitWriteReq {
                ino: a.ino,
                end: 4 * CHUNK,
                allocs: vec![pb::ChunkAlloc {
                    index: 3,
                    chunk_id: w.chunk.unwrap().chunk_id,
                    bytes: 4096,
                }],
                allocs_only: false,
                then_setattr: Vec::new(),
            }),
        );
        st.applied_index = 7;
        (st, a.ino)
    }

    #[test]
    fn chunk_allocations_survive_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (st, ino) = state_with_a_reported_chunk();
        assert_eq!(st.ns.getattr(ino).unwrap().blocks, 8);
        let (path, _) = write(dir.path(), &st).unwrap();
        let back = read(&path, CHUNK).unwrap();
        assert_eq!(back.ns, st.ns);
        assert_eq!(back.ns.getattr(ino).unwrap().blocks, 8);
    }

    #[test]
    fn a_version_1_snapshot_loads_with_estimated_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (st, ino) = state_with_a_reported_chunk();
        // What an MDS before chunk allocations wrote: (namespace, sessions).
        let payload = postcard::to_allocvec(&(&st.ns, &st.sessions)).unwrap();
        let mut h = encode_header(7, payload.len() as u64, crc32c::crc32c(&payload));
        h[8..12].copy_from_slice(&VERSION_WITHOUT_ALLOCS.to_le_bytes());
        let hcrc = crc32c::crc32c(&h[..36]);
        h[36..40].copy_from_slice(&hcrc.to_le_bytes());
        let path = dir.path().join(snapshot_name(7));
        fs::write(&path, [h.as_slice(), &payload].concat()).unwrap();
        let back = read(&path, CHUNK).unwrap();
        assert_eq!(back.applied_index, 7);
        // The chunk's part below the size: the whole chunk.
        assert_eq!(back.ns.getattr(ino).unwrap().blocks * 512, CHUNK);
    }

    #[test]
    fn opens_locks_and_drain_marks_survive_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut st, ino) = state_with_a_reported_chunk();
        st.opened(9, ino, true);
        st.opened(10, ino, false);
        st.locks
            .set(ino, 9, 1, (0, u64::MAX), crate::locks::F_WRLCK, 42)
            .unwrap();
        st.draining.insert(3);
        let (path, _) = write(dir.path(), &st).unwrap();
        let mut back = read(&path, CHUNK).unwrap();
        assert_eq!(back.opens, st.opens);
        assert_eq!(back.ns.open_counts(), vec![(ino, 2)]);
        assert_eq!(back.locks, st.locks);
        assert_eq!(back.draining, st.draining);
        // One close of two keeps the inode open; the lock still excludes.
        assert_eq!(back.released(9, ino, true), None);
        assert_eq!(back.ns.open_counts(), vec![(ino, 1)]);
        assert!(back
            .locks
            .test(ino, 10, 1, (0, 0), crate::locks::F_RDLCK)
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_version_2_snapshot_loads_with_nothing_open_or_locked() {
        let dir = tempfile::tempdir().unwrap();
        let (mut st, ino) = state_with_a_reported_chunk();
        st.opened(9, ino, true);
        // What an MDS before the replicated tables wrote.
        let payload = postcard::to_allocvec(&(
            &st.ns,
            &st.sessions,
            st.ns.allocations().collect::<Allocs>(),
        ))
        .unwrap();
        let mut h = encode_header(7, payload.len() as u64, crc32c::crc32c(&payload));
        h[8..12].copy_from_slice(&VERSION_WITHOUT_LIVE.to_le_bytes());
        let hcrc = crc32c::crc32c(&h[..36]);
        h[36..40].copy_from_slice(&hcrc.to_le_bytes());
        let path = dir.path().join(snapshot_name(7));
        fs::write(&path, [h.as_slice(), &payload].concat()).unwrap();
        let back = read(&path, CHUNK).unwrap();
        assert_eq!(back.ns, st.ns);
        assert_eq!(back.ns.getattr(ino).unwrap().blocks, 8);
        assert!(back.opens.is_empty() && back.ns.open_counts().is_empty());
        assert_eq!(back.locks.held(), 0);
    }

    /// A snapshot the MDS wrote before packed files existed (`weft up` with
    /// chunk size 1 MiB: /d/f "hello\n" with a hard link /d/hard, a 3 MB
    /// sparse /big with one byte at 1.5 MB, a symlink and a fifo) still
    /// loads, and takes segments and packed files from then on.
    #[test]
    fn a_snapshot_from_before_packed_files_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(snapshot_name(14));
        fs::write(
            &path,
            include_bytes!("../testdata/snapshot-v3-before-packed.snap"),
        )
        .unwrap();
        let mut st = read(&path, CHUNK).unwrap();
        let lookup = |st: &State, parent: u64, name: &str| {
            let op = Op::Lookup(pb::LookupReq {
                parent,
                name: name.into(),
            });
            match st.ns.read(&crate::ns::Caller::root(), &op).unwrap() {
                pb::meta_reply::Result::Attr(a) => a,
                r => panic!("{r:?}"),
            }
        };
        let d = lookup(&st, 1, "d").ino;
        let f = lookup(&st, d, "f");
        assert_eq!((f.size, f.nlink), (6, 2));
        let big = lookup(&st, 1, "big");
        assert_eq!(big.size, 3_000_000);
        let (_, chunks) = st.ns.file_chunks(big.ino, 0, 3).unwrap();
        assert!(chunks[0].1 == 0 && chunks[1].1 != 0 && chunks[2].1 == 0);
        let c = st.ns.counts();
        assert_eq!((c.files, c.directories, c.segments), (4, 2, 0));
        // Packed files from here on, through a new snapshot.
        let ctx = Ctx {
            now: Time { sec: 9, nsec: 0 },
            caller: crate::ns::Caller::root(),
        };
        let Prepared::Record(rec) = st.ns.prepare_create_segment(&ctx, 77) else {
            panic!("segment")
        };
        st.ns.apply(&rec);
        let seg = rec.ino();
        let pb::meta_reply::Result::ChunkWrite(w) = run(
            &mut st,
            Op::AllocChunk(pb::AllocChunkReq {
                ino: seg,
                index: 0,
                ..Default::default()
            }),
        ) else {
            panic!("alloc")
        };
        let pb::meta_reply::Result::Attr(small) = run(
            &mut st,
            Op::Create(pb::CreateReq {
                parent: d,
                name: b"small".to_vec(),
                mode: 0o644,
                ..Default::default()
            }),
        ) else {
            panic!("create")
        };
        run(
            &mut st,
            Op::CommitPacked(pb::CommitPackedReq {
                ino: small.ino,
                segment: seg,
                chunk_id: w.chunk.unwrap().chunk_id,
                offset: 0,
                len: 100,
                end: 100,
                then_setattr: Vec::new(),
            }),
        );
        assert!(st.ns.needle(small.ino).is_some());
        st.applied_index = 20;
        let (path, _) = write(dir.path(), &st).unwrap();
        let back = read(&path, CHUNK).unwrap();
        assert_eq!(back.ns, st.ns);
        assert_eq!(back.ns.needle(small.ino), st.ns.needle(small.ino));
        assert_eq!(back.ns.counts().segments, 1);
        assert_eq!(back.ns.counts().files, 5);
    }
}
