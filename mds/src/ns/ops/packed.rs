//! Packed small files: segments (CreateSegment), a file's data becoming one
//! needle in a segment (CommitPacked), and the two halves of moving a
//! needle into a chunk of the file's own (BeginUnpack, Unpack) before any
//! chunk of it is written.
//!
//! A segment is a regular file no directory names (`SEGMENT_PARENT`), so
//! leases, placement, repair and orphan collection treat its chunk 0 as any
//! file's chunk. Only the session that created it appends to it.

use crate::ns::inode::{
    needle_span, Body, ChunkRef, Inode, Kind, Time, NEEDLE_ALIGN, NEEDLE_HEADER, SEGMENT_PARENT,
    SEGMENT_SESSION_XATTR,
};
use crate::ns::ops::chunks::FIRST_VERSION;
use crate::ns::perm::write_kills_privs;
use crate::ns::{pb, Ctx, Errno, Namespace, Prepared, Record, MAX_FILE_SIZE};
use pb::meta_reply::Result as ReplyResult;
use std::collections::BTreeMap;

/// Where a packed file's bytes are, for GetChunks and open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeedleAt {
    /// The segment chunk, its owner (the segment inode) and version.
    pub chunk: u64,
    pub segment: u64,
    pub version: u64,
    pub offset: u64,
    pub len: u64,
}

impl Namespace {
    /// CreateSegment for `session` (the writer that may append to it).
    pub fn prepare_create_segment(&self, ctx: &Ctx, session: u64) -> Prepared {
        Prepared::Record(Record::CreateSegment {
            ino: self.next_ino,
            session,
            now: ctx.now,
        })
    }

    pub(crate) fn apply_create_segment(
        &mut self,
        ino: u64,
        session: u64,
        now: Time,
    ) -> Result<ReplyResult, Errno> {
        if self.inodes.contains_key(&ino) {
            return Err(Errno::EIO);
        }
        let mut inode = Inode::new(ino, Kind::Regular, 0o600, 0, 0, now);
        inode.parent = SEGMENT_PARENT;
        inode.nlink = 1;
        inode.xattrs.insert(
            SEGMENT_SESSION_XATTR.to_vec(),
            session.to_le_bytes().to_vec(),
        );
        let attr = self.attr_of(&inode);
        self.inodes.insert(ino, inode);
        self.segments += 1;
        self.next_ino = self.next_ino.max(ino.saturating_add(1));
        Ok(ReplyResult::Attr(attr))
    }

    pub(crate) fn prepare_commit_packed(
        &self,
        ctx: &Ctx,
        r: &pb::CommitPackedReq,
    ) -> Result<Prepared, Errno> {
        let i = self.inode(r.ino)?;
        match i.kind {
            Kind::Regular => {}
            Kind::Directory => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        if i.is_segment() {
            return Err(Errno::EINVAL);
        }
        let seg = self
            .inodes
            .get(&r.segment)
            .filter(|s| s.is_segment())
            .ok_or(Errno::EINVAL)?;
        let seg_chunk = seg.chunks().and_then(|c| c.get(&0)).map(|c| c.id);
        if seg_chunk != Some(r.chunk_id) || r.chunk_id == 0 {
            return Err(Errno::EINVAL);
        }
        if r.len > r.end || !r.offset.is_multiple_of(NEEDLE_ALIGN) {
            return Err(Errno::EINVAL);
        }
        let needle_end = r
            .offset
            .checked_add(NEEDLE_HEADER)
            .and_then(|o| o.checked_add(r.len));
        if needle_end.is_none_or(|e| e > self.chunk_size) {
            return Err(Errno::EINVAL);
        }
        if r.end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        // Data elsewhere (a chunk, or a needle another mount committed):
        // the client writes chunks instead.
        match &i.body {
            Body::File { chunks } if chunks.is_empty() => {}
            _ => return Err(Errno::EAGAIN),
        }
        Ok(Prepared::Record(Record::CommitPacked {
            ino: r.ino,
            chunk: r.chunk_id,
            offset: r.offset,
            len: r.len,
            end: r.end,
            kill_privs: write_kills_privs(i, &ctx.caller),
            now: ctx.now,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_commit_packed(
        &mut self,
        ino: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        end: u64,
        kill_privs: bool,
        now: Time,
    ) -> Result<ReplyResult, Errno> {
        let i = self.inodes.get_mut(&ino).ok_or(Errno::EIO)?;
        match &i.body {
            Body::File { chunks } if chunks.is_empty() => {}
            _ => return Err(Errno::EIO),
        }
        i.body = Body::Packed {
            chunk,
            offset,
            len,
            unpack_to: None,
        };
        i.alloc.clear();
        self.live_add(chunk, len);
        // The segment remembers how far it is written (its allocation, as
        // for any chunk) and when a needle last went in (its mtime: the
        // compactor leaves a segment alone while it is appended to).
        if let Some(&(seg, 0)) = self.chunk_owners.get(&chunk) {
            if let Some(s) = self.inodes.get_mut(&seg).filter(|s| s.is_segment()) {
                let end = offset.saturating_add(needle_span(len));
                let w = s.alloc.entry(0).or_insert(0);
                *w = (*w).max(end).min(self.chunk_size);
                s.mtime = now;
            }
        }
        // Size, times and setuid/setgid as any write's commit.
        self.apply_commit_write(ino, end, kill_privs, now)
    }

    /// Where packed file `ino`'s needle is (None: not packed, or its
    /// segment chunk is gone).
    pub fn needle(&self, ino: u64) -> Option<NeedleAt> {
        let Body::Packed {
            chunk, offset, len, ..
        } = self.inodes.get(&ino)?.body
        else {
            return None;
        };
        let (segment, index, version) = self.chunk_owner(chunk)?;
        (index == 0).then_some(NeedleAt {
            chunk,
            segment,
            version,
            offset,
            len,
        })
    }

    /// The first step of unpacking `ino` (an AllocChunk of a packed file):
    /// Ok(None) when an unpack is under way already (its chunk is
    /// `unpack_target`), else the BeginUnpack naming a fresh chunk. EINVAL
    /// when `ino` is not packed.
    pub fn prepare_begin_unpack(&self, ino: u64) -> Result<Option<Record>, Errno> {
        match self.inode(ino)?.body {
            Body::Packed {
                unpack_to: Some(_), ..
            } => Ok(None),
            Body::Packed {
                unpack_to: None, ..
            } => Ok(Some(Record::BeginUnpack {
                ino,
                chunk_id: self.next_chunk,
                version: FIRST_VERSION,
            })),
            _ => Err(Errno::EINVAL),
        }
    }

    /// The chunk a begun unpack of `ino` copies into.
    pub fn unpack_target(&self, ino: u64) -> Option<ChunkRef> {
        match &self.inodes.get(&ino)?.body {
            Body::Packed { unpack_to, .. } => unpack_to.as_deref().copied(),
            _ => None,
        }
    }

    pub(crate) fn apply_begin_unpack(
        &mut self,
        ino: u64,
        chunk_id: u64,
        version: u64,
    ) -> Result<ReplyResult, Errno> {
        if self.chunk_owners.contains_key(&chunk_id) {
            return Err(Errno::EIO);
        }
        let i = self.inodes.get_mut(&ino).ok_or(Errno::EIO)?;
        let Body::Packed { unpack_to, .. } = &mut i.body else {
            return Err(Errno::EIO);
        };
        if unpack_to.is_some() {
            return Err(Errno::EIO);
        }
        *unpack_to = Some(Box::new(ChunkRef {
            id: chunk_id,
            version,
        }));
        self.chunk_owners.insert(chunk_id, (ino, 0));
        self.next_chunk = self.next_chunk.max(chunk_id.saturating_add(1));
        Ok(ReplyResult::Empty(pb::Empty {}))
    }

    pub(crate) fn apply_unpack(
        &mut self,
        ino: u64,
        chunk_id: u64,
        copied: u64,
    ) -> Result<ReplyResult, Errno> {
        let Some(i) = self.inodes.get_mut(&ino) else {
            return Ok(ReplyResult::Empty(pb::Empty {}));
        };
        let target = match &i.body {
            Body::Packed {
                unpack_to: Some(c),
                len,
                ..
            } if c.id == chunk_id && *len == copied => **c,
            // Truncated (or emptied) since the copy began: nothing changes,
            // and the service copies again (an empty reply says so).
            _ => return Ok(ReplyResult::Empty(pb::Empty {})),
        };
        let (seg_chunk, seg_len) = match i.body {
            Body::Packed { chunk, len, .. } => (chunk, len),
            _ => unreachable!("matched as packed above"),
        };
        i.body = Body::File {
            chunks: BTreeMap::from([(0, target)]),
        };
        let attr = i.attr(self.chunk_size);
        self.live_sub(seg_chunk, seg_len);
        Ok(ReplyResult::Attr(attr))
    }
}
