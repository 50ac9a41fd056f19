//! Whole-replica installs (re-replication from a peer) and version fencing.
//!
//! Invariants:
//! * a replica being copied lives in `<id>.inst.tmp` (which the startup scan
//!   deletes as a leftover) until every byte is written and fsync'd; only then
//!   is it renamed to `<id>.chunk` and indexed, so neither a reader nor a
//!   heartbeat ever sees half a copy;
//! * an install never replaces a replica at the same or a newer version, and
//!   never resurrects a quarantined one (the tombstone rule of `write`);
//! * `set_version` only raises a version; once raised, writes carrying an older
//!   one are refused (a fenced primary cannot get a write accepted here).

use std::path::PathBuf;

use super::chunkfile::{self, ChunkFile};
use super::format::Header;
use super::{Entry, Result, Store, StoreError, PROVISIONAL_CHUNK_SIZE};

impl Store {
    fn install_tmp_path(&self, id: u64) -> PathBuf {
        self.path_with(id, "inst.tmp")
    }

    fn install_allowed(&self, id: u64, version: u64) -> Result<()> {
        if let Some(e) = self.index.lock().get(&id) {
            if e.version >= version {
                return Err(StoreError::StaleVersion {
                    id,
                    stored: e.version,
                    got: version,
                });
            }
        }
        if let Some(&tv) = self.tombstones.lock().get(&id) {
            if version <= tv {
                return Err(StoreError::Quarantined { id, version: tv });
            }
        }
        Ok(())
    }

    /// Copies a whole replica: `pieces` yields `(offset, bytes)` in any order
    /// covering `[0, length)`; the result replaces nothing older than
    /// `version`. Space for `length` bytes is reserved up front.
    pub fn install(
        &self,
        id: u64,
        version: u64,
        length: u64,
        pieces: impl Iterator<Item = std::result::Result<(u64, Vec<u8>), String>>,
    ) -> Result<()> {
        self.install_allowed(id, version)?;
        let chunk_size = self.chunk_size().unwrap_or(PROVISIONAL_CHUNK_SIZE);
        self.check_range(id, 0, length, chunk_size)?;
        let estimate = super::format::header_len(chunk_size) + length.next_multiple_of(4096);
        let reservation = self.reserve(id, estimate)?;
        let final_path = self.chunk_path(id);
        let parent = final_path.parent().expect("chunk path has a parent");
        if !parent.exists() {
            std::fs::create_dir_all(parent)
                .and_then(|_| chunkfile::fsync_dir(&self.chunks_dir))
                .map_err(|e| StoreError::io(id, format!("create {}", parent.display()), e))?;
        }
        let tmp = self.install_tmp_path(id);
        let result = (|| -> Result<ChunkFile> {
            let mut cf = ChunkFile::create(&tmp, Header::new(id, version, chunk_size))?;
            for piece in pieces {
                let (off, data) = piece.map_err(|msg| {
                    StoreError::io(id, "copy from source", std::io::Error::other(msg))
                })?;
                cf.write(off, &data, version)?;
            }
            cf.sync()?;
            Ok(cf)
        })();
        let cf = match result {
            Ok(cf) => cf,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // Commit under the chunk's lock: re-check nothing newer arrived meanwhile.
        let _g = self.stripe(id).write();
        if let Err(e) = self.install_allowed(id, version) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let old = self.index.lock().get(&id).copied();
        std::fs::rename(&tmp, &final_path)
            .and_then(|_| chunkfile::fsync_dir(parent))
            .map_err(|e| StoreError::io(id, format!("rename {}", tmp.display()), e))?;
        let h = cf.header();
        let entry = Entry::of(h, cf.allocated()?, 0);
        self.account(id, Some(entry), old.map_or(0, |e| e.allocated));
        drop(reservation);
        self.tombstones.lock().remove(&id);
        self.mark_dirty(id);
        self.new_replica.notify_one();
        Ok(())
    }

    /// Raises the stored version of replica `id` to `version` (a new lease):
    /// from now on writes carrying an older version are refused here.
    /// NotFound if the replica is not here; StaleVersion if it is newer.
    pub fn set_version(&self, id: u64, version: u64) -> Result<()> {
        let _g = self.stripe(id).write();
        let e = self.entry(id)?;
        if version < e.version {
            return Err(StoreError::StaleVersion {
                id,
                stored: e.version,
                got: version,
            });
        }
        if version == e.version {
            return Ok(());
        }
        let mut cf = ChunkFile::open(&self.chunk_path(id), id)?;
        // An empty write stores just the header with the new version.
        cf.write(0, &[], version)?;
        cf.sync()?;
        let mut entry = e;
        entry.version = version;
        self.index.lock().insert(id, entry);
        self.mark_dirty(id);
        self.new_replica.notify_one();
        Ok(())
    }
}
