//! The file → chunk map: AllocChunk (a hole gets a new chunk, version 1, id
//! from the namespace's counter) and CommitWrite (extend the size after the
//! data is on every replica, stamp mtime/ctime, drop setuid/setgid as a write
//! by a caller without CAP_FSETID does).
//!
//! Neither rechecks write permission: the client holds an fd opened for
//! writing, which is where the check happened (a file may be chmod'ed 0444
//! while open for writing and stay writable through that fd).

use crate::ns::inode::{Body, ChunkRef, Time};
use crate::ns::perm::{killed_privs, write_kills_privs};
use crate::ns::{pb, ChunkAlloc, Ctx, Errno, Namespace, Prepared, Record, MAX_FILE_SIZE};
use pb::meta_reply::Result as ReplyResult;

/// The version a new chunk starts at.
pub const FIRST_VERSION: u64 = 1;
/// Most chunk allocations one CommitWrite may carry.
pub use weft_proto::contract::limits::MAX_ALLOCS_PER_COMMIT;

impl Namespace {
    fn chunk_write(&self, index: u64, chunk_id: u64, version: u64) -> ReplyResult {
        ReplyResult::ChunkWrite(pb::ChunkWrite {
            chunk: Some(pb::ChunkLoc {
                index,
                chunk_id,
                version,
                replicas: vec![],
                cap: None,
            }),
            chunk_size: self.chunk_size,
            lease_epoch: 0,
            lease_expires_ms: 0,
            term: 0,
        })
    }

    pub(crate) fn prepare_alloc_chunk(&self, r: &pb::AllocChunkReq) -> Result<Prepared, Errno> {
        let i = self.file_inode(r.ino)?;
        if let Body::Packed { .. } = i.body {
            // Its needle must move into a chunk first (the service's unpack).
            return Err(Errno::EAGAIN);
        }
        let chunks = self.file_body(i)?;
        match r.index.checked_mul(self.chunk_size) {
            Some(start) if start < MAX_FILE_SIZE => {}
            _ => return Err(Errno::EFBIG),
        }
        if let Some(c) = chunks.get(&r.index) {
            return Ok(Prepared::Reply(self.chunk_write(r.index, c.id, c.version)));
        }
        Ok(Prepared::Record(Record::AllocChunk {
            ino: r.ino,
            index: r.index,
            chunk_id: self.next_chunk,
            version: FIRST_VERSION,
        }))
    }

    pub(crate) fn prepare_commit_write(
        &self,
        ctx: &Ctx,
        r: &pb::CommitWriteReq,
    ) -> Result<Prepared, Errno> {
        let i = self.file_inode(r.ino)?;
        // A packed file too: a late commit of a write before it was packed
        // only moves the size and times.
        if !matches!(i.body, Body::Packed { .. }) {
            self.file_body(i)?;
        }
        if r.end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        if r.allocs.len() > MAX_ALLOCS_PER_COMMIT {
            return Err(Errno::EINVAL);
        }
        if !r.allocs.is_empty() || r.allocs_only {
            let allocs = r
                .allocs
                .iter()
                .map(|a| ChunkAlloc {
                    index: a.index,
                    chunk_id: a.chunk_id,
                    bytes: a.bytes.min(self.chunk_size),
                })
                .collect();
            return Ok(Prepared::Record(if r.allocs_only {
                Record::CommitAlloc {
                    ino: r.ino,
                    end: 0,
                    kill_privs: false,
                    now: None,
                    allocs,
                }
            } else {
                Record::CommitAlloc {
                    ino: r.ino,
                    end: r.end,
                    kill_privs: write_kills_privs(i, &ctx.caller),
                    now: Some(ctx.now),
                    allocs,
                }
            }));
        }
        Ok(Prepared::Record(Record::CommitWrite {
            ino: r.ino,
            end: r.end,
            kill_privs: write_kills_privs(i, &ctx.caller),
            now: ctx.now,
        }))
    }

    pub(crate) fn apply_alloc_chunk(
        &mut self,
        ino: u64,
        index: u64,
        chunk_id: u64,
        version: u64,
    ) -> Result<ReplyResult, Errno> {
        if self.chunk_owners.contains_key(&chunk_id) {
            return Err(Errno::EIO);
        }
        let i = self.inodes.get_mut(&ino).ok_or(Errno::EIO)?;
        // A new chunk holds nothing yet; any figure for the index was another's.
        i.alloc.remove(&index);
        let chunks = i.chunks_mut().ok_or(Errno::EIO)?;
        if chunks.contains_key(&index) {
            return Err(Errno::EIO);
        }
        chunks.insert(
            index,
            ChunkRef {
                id: chunk_id,
                version,
            },
        );
        self.chunk_owners.insert(chunk_id, (ino, index));
        self.next_chunk = self.next_chunk.max(chunk_id.saturating_add(1));
        Ok(self.chunk_write(index, chunk_id, version))
    }

    pub(crate) fn apply_commit_write(
        &mut self,
        ino: u64,
        end: u64,
        kill_privs: bool,
        now: Time,
    ) -> Result<ReplyResult, Errno> {
        let i = self
            .inodes
            .get_mut(&ino)
            .filter(|i| Namespace::is_file_body(i))
            .ok_or(Errno::EIO)?;
        if end > i.size {
            self.bytes += end - i.size;
            i.size = end;
        }
        i.mtime = now;
        i.ctime = now;
        if kill_privs {
            i.mode = killed_privs(i.mode);
        }
        let attr = i.attr(self.chunk_size);
        Ok(ReplyResult::Attr(attr))
    }

    pub(crate) fn apply_commit_alloc(
        &mut self,
        ino: u64,
        end: u64,
        kill_privs: bool,
        now: Option<Time>,
        allocs: &[ChunkAlloc],
    ) -> Result<ReplyResult, Errno> {
        if let Some(now) = now {
            self.apply_commit_write(ino, end, kill_privs, now)?;
        }
        let i = self
            .inodes
            .get_mut(&ino)
            .filter(|i| Namespace::is_file_body(i))
            .ok_or(Errno::EIO)?;
        for a in allocs {
            // The index may hold another chunk by now (a truncate and a new
            // write raced this commit): its figure is not this one.
            let current = i.chunks().and_then(|c| c.get(&a.index)).map(|c| c.id);
            if current == Some(a.chunk_id) {
                i.alloc.insert(a.index, a.bytes.min(self.chunk_size));
            }
        }
        Ok(ReplyResult::Attr(i.attr(self.chunk_size)))
    }

    /// A lease raised the chunk's version (see `Record::BumpVersion`).
    pub(crate) fn apply_bump_version(
        &mut self,
        ino: u64,
        index: u64,
        chunk_id: u64,
        version: u64,
    ) -> Result<ReplyResult, Errno> {
        let c = match self.inodes.get_mut(&ino).map(|i| &mut i.body) {
            // A begun unpack's chunk (a lease on it after an MDS restart).
            Some(Body::Packed {
                unpack_to: Some(c), ..
            }) if index == 0 => Some(&mut **c),
            Some(Body::File { chunks }) => chunks.get_mut(&index),
            _ => None,
        }
        .filter(|c| c.id == chunk_id && c.version < version)
        .ok_or(Errno::ENOENT)?;
        c.version = version;
        Ok(self.chunk_write(index, chunk_id, version))
    }
}
