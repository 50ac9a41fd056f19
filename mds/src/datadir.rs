//! What a data directory holds for startup, shared by a single MDS
//! (`server.rs`) and an MDS group (`group/`): its lock, the format file
//! (what never changes for a file system once made) and the state a single
//! MDS left (`recover`: the newest snapshot, then the log after it).

use crate::config::{Config, DEFAULT_CHUNK_SIZE};
use crate::durable_file::write_durably;
use crate::snapshot;
use crate::state::{decode_entry, State};
use crate::wal::log;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::Path;
use std::time::Instant;

pub const FORMAT_FILE: &str = "format.json";

/// What never changes for a file system once made.
#[derive(Serialize, Deserialize)]
pub struct Format {
    pub format: u32,
    pub fs_id: u64,
    pub chunk_size: u64,
}

/// Holds the data directory for this process (released on exit).
pub struct DirLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

pub fn lock_data_dir(dir: &Path) -> anyhow::Result<DirLock> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let path = dir.join("LOCK");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(DirLock(l)),
        Err((_, e)) => bail!("{} is in use by another weft-mds ({e})", dir.display()),
    }
}

/// The format file, made on first start (`--chunk-size` or the default).
pub fn read_or_create_format(cfg: &Config) -> anyhow::Result<Format> {
    let path = cfg.data.join(FORMAT_FILE);
    if path.exists() {
        let f: Format = serde_json::from_slice(&fs::read(&path)?)
            .with_context(|| format!("{} is not a weft format file", path.display()))?;
        if let Some(cs) = cfg.chunk_size {
            if cs != f.chunk_size {
                bail!("--chunk-size {cs} differs from this file system's chunk size {} (set when it was created)", f.chunk_size);
            }
        }
        return Ok(f);
    }
    let f = Format {
        format: 1,
        fs_id: rand::random(),
        chunk_size: cfg.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE),
    };
    write_durably(&cfg.data, FORMAT_FILE, &serde_json::to_vec_pretty(&f)?)?;
    Ok(f)
}

/// Records the file system's chunk size in `data/format.json` (a node that
/// joined an MDS group learns it from the group's snapshot).
pub fn set_chunk_size(data: &Path, chunk_size: u64) -> anyhow::Result<()> {
    let path = data.join(FORMAT_FILE);
    let mut f: Format = serde_json::from_slice(&fs::read(&path)?)?;
    f.chunk_size = chunk_size;
    Ok(write_durably(
        data,
        FORMAT_FILE,
        &serde_json::to_vec_pretty(&f)?,
    )?)
}

/// Rebuilds the state: the newest snapshot in `data/snapshot`, then the log in
/// `data/wal` after it, cutting off a torn tail when `repair` is set.
pub fn recover(data: &Path, chunk_size: u64, repair: bool) -> anyhow::Result<State> {
    let t = Instant::now();
    let mut st = snapshot::load_newest(&data.join(snapshot::DIR), chunk_size)?
        .unwrap_or_else(|| State::new(chunk_size));
    // The log does not rebuild opens: after a restart nothing is open.
    st.forget_unlogged();
    let from_snapshot = st.applied_index;
    let snap_ms = t.elapsed().as_millis() as u64;
    let wal_dir = data.join("wal");
    let replayed = log::replay(&wal_dir, st.applied_index, repair)?;
    if let Some((path, offset, bytes)) = &replayed.truncated_tail {
        tracing::warn!("{}: cut {bytes} bytes of a torn record at offset {offset} (a power loss mid-sync: no fsync or close waited for it)", path.display());
    }
    if let Some(first) = replayed.frames.first() {
        if first.index != st.applied_index + 1 {
            bail!(
                "{}: the log resumes at entry {} but the state (snapshot at {}) needs {} next: \
                 log segments or the newest snapshot are missing; refusing to start",
                wal_dir.display(),
                first.index,
                st.applied_index,
                st.applied_index + 1
            );
        }
    }
    for frame in &replayed.frames {
        let entry = decode_entry(&frame.payload).with_context(|| {
            format!(
                "{}: log entry {} does not decode",
                wal_dir.display(),
                frame.index
            )
        })?;
        st.apply_entry(frame.index, &entry);
    }
    tracing::info!(
        snapshot_index = from_snapshot,
        snapshot_ms = snap_ms,
        entries = replayed.frames.len(),
        ms = t.elapsed().as_millis() as u64,
        "recovered state"
    );
    Ok(st)
}
