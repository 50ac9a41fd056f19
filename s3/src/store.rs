//! The namespace as the gateway sees it, over weft-client: buckets are the
//! top-level directories, an object is the file its key names, its user
//! metadata and Content-Type are xattrs (`user.s3.meta.NAME`,
//! `user.s3.content-type`), its ETag the xattr `user.s3.etag`.
//!
//! Writes are atomic: a PUT streams into a new file in the hidden directory
//! `/.weft-s3/tmp` (never a valid bucket name), then renames it over the
//! key, so no GET and no reader on a mount sees half an object, and of two
//! concurrent PUTs of one key one stays whole. The body's pieces go to the
//! client library as they arrive (copied once, into its buffer); its
//! write-back stores them on the chunk daemons in the background while the
//! body keeps arriving, and a PUT waits while its file holds the gateway's
//! `--write-buffer-mib` buffered and in flight (ClientOpts'
//! file_dirty_limit), so its memory is bounded whatever the object's size;
//! it waits for all of it once, at the end. MD5 and the checksums are
//! computed on a blocking thread beside it. Reads go in pieces of
//! `READ_PIECE`, which the library reads as 1 MiB stripes in parallel, one
//! piece ahead of the client.
//!
//! A copy (CopyObject, UploadPartCopy) fills its temp file with
//! `copy_temp`: the chunk daemons copy the bytes and hash them (client
//! copy.rs), then it is installed as a PUT's is.
//!
//! The ETag xattr carries the size and mtime it was computed for, and the
//! additional checksums a PUT was sent with (checksum.rs); a file changed
//! since (written on a mount) gets its MD5 computed again on the next HEAD
//! or GET, and stored, and has no additional checksums any more.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use s3s::checksum::ChecksumHasher;
use s3s::dto::Checksum;
use s3s::{s3_error, S3Error, S3Result};
use tokio_stream::wrappers::ReceiverStream;
use weft_client::{Caller, Errno, FileAttr, FileType, Weft};

use crate::keys::KeyPath;

pub const ROOT: u64 = 1;
/// The gateway's own directory at the root: temp files and uploads.
pub const HIDDEN: &str = ".weft-s3";
/// Bytes per read from the cluster (several stripes fetched in parallel);
/// a GET holds about three: one being read, one queued, one being sent.
pub const READ_PIECE: u64 = 4 << 20;

const X_ETAG: &[u8] = b"user.s3.etag";
const X_TYPE: &[u8] = b"user.s3.content-type";
const X_META: &str = "user.s3.meta.";
pub const X_TAGS: &[u8] = b"user.s3.tagging";

/// An object's stored headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjMeta {
    pub content_type: Option<String>,
    pub user: HashMap<String, String>,
    /// Tags in the `x-amz-tagging` form (tagging.rs).
    pub tagging: Option<String>,
}

/// A written, flushed and closed temp file, not yet at its key.
#[derive(Debug)]
pub struct Temp {
    pub ino: u64,
    pub name: String,
    pub size: u64,
    pub md5: [u8; 16],
    /// The additional checksums asked for (checksum.rs).
    pub sums: Checksum,
}

/// S3's answer for a file-system error.
pub fn s3err(e: Errno) -> S3Error {
    match e.0 {
        libc::ENOENT => s3_error!(NoSuchKey),
        libc::EACCES | libc::EPERM | libc::EROFS => s3_error!(AccessDenied),
        libc::ENAMETOOLONG => s3_error!(KeyTooLongError),
        libc::ENOTDIR | libc::EISDIR | libc::EEXIST | libc::ENOTEMPTY => s3_error!(
            InvalidRequest,
            "the key conflicts with a directory or a file of the same path"
        ),
        libc::ENOSPC | libc::EDQUOT => s3_error!(ServiceUnavailable, "the cluster is out of space"),
        _ => s3_error!(InternalError, "file system error: {}", e),
    }
}

fn ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// What an ETag xattr must say to be current for `a`.
fn stamp(a: &FileAttr) -> String {
    format!("{} {}", a.size, ns(a.mtime))
}

/// The ETag xattr's `ETAG SIZE MTIME_NS [NAME=SUM]...`: the ETag and the
/// checksums, if current for a file of this size and mtime.
fn current(v: &[u8], size: u64, mtime: SystemTime) -> Option<(String, Checksum)> {
    let v = std::str::from_utf8(v).ok()?;
    let mut words = v.split(' ');
    let etag = words.next()?;
    let (s, m) = (words.next()?, words.next()?);
    (s == size.to_string() && m == ns(mtime).to_string())
        .then(|| (etag.to_owned(), crate::checksum::decode(words)))
}

pub struct Store {
    w: Arc<Weft>,
    c: Caller,
    tmp: u64,
    uploads: u64,
}

impl Store {
    /// Makes the hidden directories if missing.
    pub async fn open(w: Arc<Weft>) -> Result<Store, Errno> {
        let c = Caller {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            groups: vec![],
            pid: std::process::id(),
        };
        let mut s = Store {
            w,
            c,
            tmp: 0,
            uploads: 0,
        };
        let hidden = s.mkdir_p(ROOT, HIDDEN).await?;
        s.tmp = s.mkdir_p(hidden, "tmp").await?;
        s.uploads = s.mkdir_p(hidden, "uploads").await?;
        Ok(s)
    }

    pub fn uploads_dir(&self) -> u64 {
        self.uploads
    }

    async fn mkdir_p(&self, parent: u64, name: &str) -> Result<u64, Errno> {
        match self.w.mkdir(&self.c, parent, name.into(), 0o755, 0).await {
            Ok(a) => Ok(a.ino.0),
            Err(Errno(libc::EEXIST)) => match self.lookup(parent, name).await? {
                Some(a) if a.kind == FileType::Directory => Ok(a.ino.0),
                Some(_) => Err(Errno(libc::ENOTDIR)),
                None => Err(Errno(libc::ENOENT)),
            },
            Err(e) => Err(e),
        }
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Option<FileAttr>, Errno> {
        match self.w.lookup(&self.c, parent, name.into()).await {
            Ok(a) => Ok(Some(a)),
            Err(Errno(libc::ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        self.w.getattr(&self.c, ino).await
    }

    /// The bucket's directory, or NoSuchBucket.
    pub async fn bucket(&self, name: &str) -> S3Result<FileAttr> {
        if !crate::keys::is_bucket_name(name) {
            return Err(s3_error!(NoSuchBucket));
        }
        match self.lookup(ROOT, name).await.map_err(s3err)? {
            Some(a) if a.kind == FileType::Directory => Ok(a),
            _ => Err(s3_error!(NoSuchBucket)),
        }
    }

    /// Walks `parts` below `dir`; None where a component is missing or not a
    /// directory on the way.
    pub async fn resolve(&self, dir: u64, parts: &[&str]) -> Result<Option<FileAttr>, Errno> {
        let mut cur = self.getattr(dir).await?;
        for p in parts {
            if cur.kind != FileType::Directory {
                return Ok(None);
            }
            match self.lookup(cur.ino.0, p).await? {
                Some(a) => cur = a,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The object `key` of `bucket` names: a regular file, or a directory
    /// for a key ending in `/`. NoSuchBucket or NoSuchKey otherwise.
    pub async fn object(&self, bucket: &str, key: &KeyPath<'_>) -> S3Result<FileAttr> {
        let b = self.bucket(bucket).await?;
        match self.resolve(b.ino.0, &key.parts).await.map_err(s3err)? {
            Some(a) if key.dir == (a.kind == FileType::Directory) => {
                if key.dir || a.kind == FileType::RegularFile {
                    Ok(a)
                } else {
                    Err(s3_error!(NoSuchKey))
                }
            }
            _ => Err(s3_error!(NoSuchKey)),
        }
    }

    /// Makes the directories `parts` below `dir` as needed; returns the last.
    pub async fn mkdirs(&self, dir: u64, parts: &[&str]) -> S3Result<u64> {
        let mut cur = dir;
        for p in parts {
            cur = match self.lookup(cur, p).await.map_err(s3err)? {
                Some(a) if a.kind == FileType::Directory => a.ino.0,
                Some(_) => return Err(s3err(Errno(libc::ENOTDIR))),
                None => self.mkdir_p(cur, p).await.map_err(s3err)?,
            };
        }
        Ok(cur)
    }

    /// Removes the directories `parents` (below `bucket`) that are now
    /// empty, deepest first; stops at the first that is not.
    pub async fn tidy(&self, bucket: u64, parents: &[&str]) {
        let mut inos = vec![bucket];
        for p in parents {
            match self.lookup(*inos.last().unwrap(), p).await {
                Ok(Some(a)) if a.kind == FileType::Directory => inos.push(a.ino.0),
                _ => return,
            }
        }
        for (i, name) in parents.iter().enumerate().rev() {
            if self
                .w
                .rmdir(&self.c, inos[i], (*name).into())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    pub async fn unlink(&self, dir: u64, name: &str) -> Result<(), Errno> {
        self.w.unlink(&self.c, dir, name.into()).await
    }

    pub async fn rmdir(&self, dir: u64, name: &str) -> Result<(), Errno> {
        self.w.rmdir(&self.c, dir, name.into()).await
    }

    pub async fn mkdir(&self, dir: u64, name: &str) -> Result<FileAttr, Errno> {
        self.w.mkdir(&self.c, dir, name.into(), 0o755, 0).await
    }

    pub async fn rename(&self, dir: u64, name: &str, to_dir: u64, to: &str) -> Result<(), Errno> {
        self.w
            .rename(&self.c, dir, name.into(), to_dir, to.into(), 0)
            .await
    }

    pub async fn children(&self, dir: u64) -> Result<Vec<(String, FileAttr)>, Errno> {
        let entries = self.w.readdir_all(&self.c, dir).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(e, a)| String::from_utf8(e.name).ok().map(|n| (n, a)))
            .collect())
    }

    /// Streams `body` into a new temp file, computing its MD5 and what
    /// `sums` asks for; flushed and closed on return. The temp file is
    /// removed if anything fails.
    pub async fn write_temp<S, E>(&self, body: S, sums: ChecksumHasher) -> S3Result<Temp>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let (ino, fh, name) = self.create_temp().await?;
        let written = self.fill(ino, fh, 0, None, body, sums).await;
        let closed = self.w.release(&self.c, ino, fh).await.map_err(s3err);
        match (written, closed) {
            (Ok((size, md5, sums)), Ok(())) => Ok(Temp {
                ino,
                name,
                size,
                md5,
                sums,
            }),
            (Err(e), _) | (Ok(_), Err(e)) => {
                self.discard(&name).await;
                Err(e)
            }
        }
    }

    /// A new empty temp file, open for writing: (ino, handle, name).
    async fn create_temp(&self) -> S3Result<(u64, u64, String)> {
        let name = format!("put-{:032x}", rand::random::<u128>());
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let (a, fh) = self
            .w
            .create(
                &self.c,
                self.tmp,
                name.clone().into_bytes(),
                libc::S_IFREG | 0o644,
                0,
                flags,
            )
            .await
            .map_err(s3err)?;
        Ok((a.ino.0, fh, name))
    }

    /// A new temp file holding the `len` bytes of file `src` from `start`,
    /// copied by the chunk daemons (server-side: no byte passes through the
    /// gateway), with their MD5 (hashed by the daemons too); closed on
    /// return, removed if anything fails.
    pub async fn copy_temp(&self, src: u64, start: u64, len: u64) -> S3Result<Temp> {
        self.copy_temp_ranges(&[(src, start, len)]).await
    }

    /// A new temp file holding the given ranges `(file, start, len)` one
    /// after another, copied by the chunk daemons; `md5` is the MD5 of the
    /// bytes when there is one range (the daemons hash it), else zeros (a
    /// multipart object's ETag is not an MD5 of its bytes). Closed on
    /// return, removed if anything fails.
    pub async fn copy_temp_ranges(&self, ranges: &[(u64, u64, u64)]) -> S3Result<Temp> {
        let (ino, fh, name) = self.create_temp().await?;
        let hash = ranges.len() == 1;
        let copied = async {
            let mut at = 0u64;
            let mut md5 = [0u8; 16];
            for &(src, start, len) in ranges {
                let done = self
                    .w
                    .copy_range(&self.c, src, start, ino, at, len, hash)
                    .await
                    .map_err(s3err)?;
                if done.bytes != len {
                    return Err(s3_error!(
                        InternalError,
                        "the source shrank while being copied"
                    ));
                }
                if hash {
                    md5 = done
                        .md5
                        .ok_or_else(|| s3_error!(InternalError, "the copy's MD5 is missing"))?;
                }
                at += len;
            }
            // Durable as a PUT's data is before it answers.
            self.w.flush_handle(ino, fh).await.map_err(s3err)?;
            Ok((at, md5))
        }
        .await;
        let closed = self.w.release(&self.c, ino, fh).await.map_err(s3err);
        match (copied, closed) {
            (Ok((size, md5)), Ok(())) => Ok(Temp {
                ino,
                name,
                size,
                md5,
                sums: Checksum::default(),
            }),
            (Err(e), _) | (Ok(_), Err(e)) => {
                self.discard(&name).await;
                Err(e)
            }
        }
    }

    /// Writes `body` into the open file at `base` (at most `limit` bytes:
    /// more is refused before anything past it is written), hashing it;
    /// flushed on return. Returns the bytes written, their MD5 and sums.
    pub async fn fill<S, E>(
        &self,
        ino: u64,
        fh: u64,
        base: u64,
        limit: Option<u64>,
        body: S,
        mut sums: ChecksumHasher,
    ) -> S3Result<(u64, [u8; 16], Checksum)>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut body = std::pin::pin!(body);
        // MD5 and the checksums on a thread of their own, so hashing one
        // piece overlaps receiving and storing the next.
        let (htx, mut hrx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let hasher = tokio::task::spawn_blocking(move || {
            let mut md5 = Md5::new();
            while let Some(b) = hrx.blocking_recv() {
                md5.update(&b);
                sums.update(&b);
            }
            let mut sum = [0u8; 16];
            sum.copy_from_slice(&md5.finalize());
            (sum, sums.finalize())
        });
        let hasher_gone = || s3_error!(InternalError, "the hashing thread stopped");
        let mut off = 0u64;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| s3_error!(IncompleteBody, "reading the body: {}", e))?;
            if piece.is_empty() {
                continue;
            }
            if limit.is_some_and(|l| off + piece.len() as u64 > l) {
                return Err(s3_error!(
                    IncompleteBody,
                    "the body is longer than its Content-Length"
                ));
            }
            // The library copies the bytes into its buffer (the one copy),
            // waiting while this file holds its share of memory.
            self.w
                .write_slice(self.c.clone(), ino, base + off, &piece)
                .await
                .map_err(s3err)?;
            off += piece.len() as u64;
            htx.send(piece).await.map_err(|_| hasher_gone())?;
        }
        // Everything stored (the library flushed most of it in the
        // background meanwhile) before the file is closed.
        self.w.flush_handle(ino, fh).await.map_err(s3err)?;
        drop(htx);
        let (sum, sums) = hasher.await.map_err(|_| hasher_gone())?;
        Ok((off, sum, sums))
    }

    /// Creates the empty file `name` in `dir` if absent: whoever creates it
    /// holds it (O_EXCL on the MDS, so also among several gateways).
    pub async fn claim(&self, dir: u64, name: &str) -> Result<Option<FileAttr>, Errno> {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        match self
            .w
            .create(&self.c, dir, name.into(), libc::S_IFREG | 0o644, 0, flags)
            .await
        {
            Ok((a, fh)) => {
                self.w.release(&self.c, a.ino.0, fh).await?;
                Ok(Some(a))
            }
            Err(Errno(libc::EEXIST)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Copies file `src`'s first `len` bytes to `dst` at `at`, on the
    /// chunk daemons, durably (as a PUT's data is before it answers).
    pub async fn copy_onto(&self, src: u64, len: u64, dst: u64, at: u64) -> S3Result<()> {
        let fh = self.open_write(dst).await.map_err(s3err)?;
        let copied = async {
            let done = self
                .w
                .copy_range(&self.c, src, 0, dst, at, len, false)
                .await
                .map_err(s3err)?;
            if done.bytes != len {
                return Err(s3_error!(InternalError, "the last part changed meanwhile"));
            }
            self.w.flush_handle(dst, fh).await.map_err(s3err)
        }
        .await;
        let closed = self.close(dst, fh).await.map_err(s3err);
        copied.and(closed)
    }

    pub async fn open_write(&self, ino: u64) -> Result<u64, Errno> {
        Ok(self.w.open(&self.c, ino, libc::O_WRONLY).await?.0)
    }

    pub async fn close(&self, ino: u64, fh: u64) -> Result<(), Errno> {
        self.w.release(&self.c, ino, fh).await
    }

    pub async fn truncate(&self, ino: u64, size: u64) -> Result<FileAttr, Errno> {
        let args = weft_client::SetAttrArgs {
            size: Some(size),
            ..Default::default()
        };
        self.w.setattr(&self.c, ino, args).await
    }

    /// Sets an xattr only if absent: false if it was there already.
    pub async fn setx_new(&self, ino: u64, name: &[u8], value: &[u8]) -> S3Result<bool> {
        const XATTR_CREATE: u32 = 1;
        match self
            .w
            .setxattr(&self.c, ino, name.to_vec(), value.to_vec(), XATTR_CREATE)
            .await
        {
            Ok(()) => Ok(true),
            Err(Errno(libc::EEXIST)) => Ok(false),
            Err(e) => Err(s3err(e)),
        }
    }

    /// Removes a temp file (best effort: a leftover is only garbage).
    pub async fn discard(&self, name: &str) {
        if let Err(e) = self.unlink(self.tmp, name).await {
            tracing::warn!(name, error = %e, "cannot remove a temp file");
        }
    }

    /// Moves a temp file to `name` in `dir` (replacing a file there).
    pub async fn install(&self, t: &Temp, dir: u64, name: &str) -> S3Result<FileAttr> {
        if let Err(e) = self.rename(self.tmp, &t.name, dir, name).await {
            self.discard(&t.name).await;
            return Err(s3err(e));
        }
        self.getattr(t.ino).await.map_err(s3err)
    }

    /// A stream of `len` bytes of file `ino` from `start`: a task reads
    /// pieces one ahead of the client and closes the file at the end, or when
    /// the client hangs up.
    pub async fn reader(
        self: &Arc<Self>,
        ino: u64,
        start: u64,
        len: u64,
    ) -> S3Result<ReceiverStream<Result<Bytes, std::io::Error>>> {
        let (fh, _) = self
            .w
            .open(&self.c, ino, libc::O_RDONLY)
            .await
            .map_err(s3err)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let me = self.clone();
        tokio::spawn(async move {
            let end = start + len;
            let mut off = start;
            while off < end {
                let n = (end - off).min(READ_PIECE) as u32;
                let piece = match me.w.read(&me.c, ino, off, n).await {
                    Ok(b) if b.is_empty() => {
                        Err(std::io::Error::other("the file shrank while being read"))
                    }
                    Ok(b) => Ok(b),
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                };
                let failed = piece.is_err();
                off += piece.as_ref().map_or(0, |b| b.len() as u64);
                if tx.send(piece).await.is_err() || failed {
                    break;
                }
            }
            let _ = me.w.release(&me.c, ino, fh).await;
        });
        Ok(ReceiverStream::new(rx))
    }

    /// The object's stored headers.
    pub async fn meta(&self, ino: u64) -> S3Result<ObjMeta> {
        let names = self.w.listxattr(&self.c, ino).await.map_err(s3err)?;
        let mut m = ObjMeta::default();
        for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            let is_type = name.as_bytes() == X_TYPE;
            let is_tags = name.as_bytes() == X_TAGS;
            let user = name.strip_prefix(X_META);
            if !is_type && !is_tags && user.is_none() {
                continue;
            }
            let v = match self.w.getxattr(&self.c, ino, name.into()).await {
                Ok(v) => String::from_utf8_lossy(&v).into_owned(),
                Err(Errno(libc::ENODATA)) => continue,
                Err(e) => return Err(s3err(e)),
            };
            match user {
                Some(k) => {
                    m.user.insert(k.to_owned(), v);
                }
                None if is_tags => m.tagging = Some(v),
                None => m.content_type = Some(v),
            }
        }
        Ok(m)
    }

    pub async fn set_meta(&self, ino: u64, m: &ObjMeta) -> S3Result<()> {
        if let Some(t) = &m.content_type {
            self.setx(ino, X_TYPE.to_vec(), t.as_bytes()).await?;
        }
        for (k, v) in &m.user {
            let name = format!("{X_META}{}", k.to_ascii_lowercase());
            self.setx(ino, name.into_bytes(), v.as_bytes()).await?;
        }
        if let Some(t) = m.tagging.as_ref().filter(|t| !t.is_empty()) {
            self.setx(ino, X_TAGS.to_vec(), t.as_bytes()).await?;
        }
        Ok(())
    }

    /// Removes an xattr; absent is fine.
    pub async fn removex(&self, ino: u64, name: &[u8]) -> S3Result<()> {
        match self.w.removexattr(&self.c, ino, name.to_vec()).await {
            Ok(()) | Err(Errno(libc::ENODATA)) => Ok(()),
            Err(e) => Err(s3err(e)),
        }
    }

    pub async fn setx(&self, ino: u64, name: Vec<u8>, value: &[u8]) -> S3Result<()> {
        self.w
            .setxattr(&self.c, ino, name, value.to_vec(), 0)
            .await
            .map_err(s3err)
    }

    /// An xattr as text; None if absent.
    pub async fn getx(&self, ino: u64, name: &[u8]) -> S3Result<Option<String>> {
        match self.w.getxattr(&self.c, ino, name.to_vec()).await {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(Errno(libc::ENODATA)) => Ok(None),
            Err(e) => Err(s3err(e)),
        }
    }

    /// Records `etag` (and the checksums computed on the way in) as
    /// current for the file as `a` describes it.
    pub async fn set_etag(&self, a: &FileAttr, etag: &str, sums: &Checksum) -> S3Result<()> {
        let mut v = format!("{etag} {}", stamp(a));
        let extra = crate::checksum::encode(sums);
        if !extra.is_empty() {
            v.push(' ');
            v.push_str(&extra);
        }
        self.setx(a.ino.0, X_ETAG.to_vec(), v.as_bytes()).await
    }

    /// The stored ETag if current for a file of this size and mtime (a
    /// listing does not read files to hash them).
    pub async fn current_etag(&self, ino: u64, size: u64, mtime: SystemTime) -> Option<String> {
        let v = self.w.getxattr(&self.c, ino, X_ETAG.to_vec()).await.ok()?;
        current(&v, size, mtime).map(|(etag, _)| etag)
    }

    /// The stored ETag if still current, else the MD5 of the bytes (read
    /// through once, then stored).
    pub async fn etag(self: &Arc<Self>, a: &FileAttr) -> S3Result<String> {
        Ok(self.etag_sums(a).await?.0)
    }

    /// `etag`, and the checksums stored with it (none once the file has
    /// changed since).
    pub async fn etag_sums(self: &Arc<Self>, a: &FileAttr) -> S3Result<(String, Checksum)> {
        if a.kind == FileType::Directory {
            return Ok((
                "d41d8cd98f00b204e9800998ecf8427e".into(),
                Checksum::default(),
            ));
        }
        match self.w.getxattr(&self.c, a.ino.0, X_ETAG.to_vec()).await {
            Ok(v) => {
                if let Some(found) = current(&v, a.size, a.mtime) {
                    return Ok(found);
                }
            }
            Err(Errno(libc::ENODATA)) => {}
            Err(e) => return Err(s3err(e)),
        }
        let mut md5 = Md5::new();
        let mut s = std::pin::pin!(self.reader(a.ino.0, 0, a.size).await?);
        while let Some(b) = s.next().await {
            md5.update(b.map_err(|e| s3_error!(InternalError, "{}", e))?);
        }
        let etag = hex::encode(md5.finalize());
        // Only if the file did not change meanwhile.
        let now = self.getattr(a.ino.0).await.map_err(s3err)?;
        if stamp(&now) == stamp(a) {
            self.set_etag(a, &etag, &Checksum::default()).await?;
        }
        Ok((etag, Checksum::default()))
    }
}
