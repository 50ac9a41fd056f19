//! Multipart uploads. An upload is the directory `/.weft-s3/uploads/ID`
//! (ID: 32 hex digits) whose xattrs name its bucket and key and hold the
//! object's headers. Its parts are written where the object will need them:
//!
//! - The assembly file `data` (made with the upload) holds part N at
//!   `(N-1) * stride`, where the stride is the size of the first part of at
//!   least S3's 5 MiB minimum to arrive (the xattr `user.s3.upload.stride`,
//!   set only if absent, so every gateway agrees). Clients send every part
//!   but the last at one size, so every part normally lands in its slot. A
//!   part claims slot N by creating the empty marker `slot-NNNNN` (O_EXCL on
//!   the MDS, so among gateways too), writes and flushes its bytes, and only
//!   then records `ETAG SIZE SEQ` on the marker (`user.s3.part`): a marker
//!   without it is an unfinished part (a gateway died, or the write failed)
//!   that neither ListParts nor Complete sees.
//! - A part that cannot have a slot (its slot is taken: a re-upload; its
//!   size is unknown or larger than the stride; no stride yet and under 5
//!   MiB; an upload from before the assembly file) is the file `NNNNN`,
//!   written atomically like a PUT, with the MD5 as its ETag and its SEQ in
//!   `user.s3.part.seq`.
//!
//! SEQ is the time the part's bytes were stored (ns): of two finished copies
//! of a part number, the newer wins, as S3 has it.
//!
//! Complete checks the list (ascending, every part present with its ETag,
//! all but the last at least 5 MiB). When the parts are 1..k, all but the
//! last in their slots at the stride and the last in its slot or its own
//! file, the assembly file is the object: it is truncated to the object's
//! size (a last part in its own file is copied onto its end by the chunk
//! daemons: at most one part's bytes move), gets the headers and ETag, and
//! is renamed into place as a PUT's temp file is. Otherwise one part in its
//! own file is renamed into place, or the chunk daemons copy the parts into
//! a new object (`Store::copy_temp_ranges`). The ETag is S3's:
//! the MD5 of the parts' MD5s, `-N`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};
use weft_client::{FileAttr, FileType};

use crate::checksum::Expect;
use crate::keys;
use crate::service::Gateway;
use crate::store::s3err;

/// S3's smallest part but the last.
pub const MIN_PART: u64 = 5 << 20;
pub const MAX_PARTS: i32 = 10_000;

const X_BUCKET: &[u8] = b"user.s3.upload.bucket";
const X_KEY: &[u8] = b"user.s3.upload.key";
/// On the upload: the size every slot of the assembly file has.
const X_STRIDE: &[u8] = b"user.s3.upload.stride";
/// On a slot's marker once its part is stored: `ETAG SIZE SEQ`.
const X_PART: &[u8] = b"user.s3.part";
/// On a part in its own file: when it was stored.
const X_SEQ: &[u8] = b"user.s3.part.seq";
/// The upload's assembly file.
const ASSEMBLY: &str = "data";

fn part_name(n: i32) -> String {
    format!("{n:05}")
}

fn slot_name(n: i32) -> String {
    format!("slot-{n:05}")
}

/// Nanoseconds since the epoch, now: a finished part's SEQ.
fn seq_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A finished part as Complete and ListParts see it.
#[derive(Debug, Clone)]
pub struct StoredPart {
    pub n: i32,
    pub size: u64,
    pub etag: String,
    pub seq: u128,
    /// Its own file; None: its slot in the assembly file.
    pub own: Option<FileAttr>,
}

impl StoredPart {
    fn modified(&self) -> SystemTime {
        match &self.own {
            Some(a) => a.mtime,
            None => UNIX_EPOCH + Duration::from_nanos(self.seq as u64),
        }
    }
}

fn check_id(id: &str) -> S3Result<()> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(s3_error!(NoSuchUpload))
    }
}

fn check_part_number(n: i32) -> S3Result<()> {
    if (1..=MAX_PARTS).contains(&n) {
        Ok(())
    } else {
        Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive"
        ))
    }
}

/// The upload's directory, if it exists for this bucket and key.
async fn upload_dir(g: &Gateway, bucket: &str, key: &str, id: &str) -> S3Result<FileAttr> {
    check_id(id)?;
    let st = &g.store;
    let a = match st.lookup(st.uploads_dir(), id).await.map_err(s3err)? {
        Some(a) if a.kind == FileType::Directory => a,
        _ => return Err(s3_error!(NoSuchUpload)),
    };
    let b = st.getx(a.ino.0, X_BUCKET).await?;
    let k = st.getx(a.ino.0, X_KEY).await?;
    if b.as_deref() != Some(bucket) || k.as_deref() != Some(key) {
        return Err(s3_error!(NoSuchUpload));
    }
    Ok(a)
}

pub async fn create(
    g: &Gateway,
    input: CreateMultipartUploadInput,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    let st = &g.store;
    let key = keys::split(&input.key)?;
    if key.dir {
        return Err(s3_error!(
            InvalidRequest,
            "a key ending in '/' is a directory"
        ));
    }
    st.bucket(&input.bucket).await?;
    let id = format!("{:032x}", rand::random::<u128>());
    let dir = st.mkdir(st.uploads_dir(), &id).await.map_err(s3err)?;
    st.setx(dir.ino.0, X_BUCKET.to_vec(), input.bucket.as_bytes())
        .await?;
    st.setx(dir.ino.0, X_KEY.to_vec(), input.key.as_bytes())
        .await?;
    let meta = Gateway::meta_from(input.content_type, input.metadata, input.tagging.as_deref())?;
    st.set_meta(dir.ino.0, &meta).await?;
    st.claim(dir.ino.0, ASSEMBLY).await.map_err(s3err)?;
    Ok(S3Response::new(CreateMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(id),
        ..Default::default()
    }))
}

/// Stores a part from `body` (temp file, then rename into the upload)
/// once it matches what `expect` says; returns its ETag, attributes and
/// the checksums computed.
async fn store_part<S, E>(
    g: &Gateway,
    up: &FileAttr,
    n: i32,
    body: S,
    expect: &Expect,
) -> S3Result<(String, FileAttr, Checksum)>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let st = &g.store;
    let t = st.write_temp(body, expect.hasher()).await?;
    let etag = hex::encode(t.md5);
    let tagged = async {
        expect.check(&t.md5, &t.sums)?;
        let a = st.getattr(t.ino).await.map_err(s3err)?;
        st.set_etag(&a, &etag, &t.sums).await?;
        st.setx(t.ino, X_SEQ.to_vec(), seq_now().to_string().as_bytes())
            .await
    }
    .await;
    if let Err(e) = tagged {
        st.discard(&t.name).await;
        return Err(e);
    }
    let a = st.install(&t, up.ino.0, &part_name(n)).await?;
    Ok((etag, a, t.sums))
}

pub async fn upload_part(
    g: &Gateway,
    req: S3Request<UploadPartInput>,
) -> S3Result<S3Response<UploadPartOutput>> {
    let S3Request {
        input,
        headers,
        trailing_headers,
        ..
    } = req;
    check_part_number(input.part_number)?;
    let up = upload_dir(g, &input.bucket, &input.key, &input.upload_id).await?;
    let sent = crate::checksum::sent_checksums!(input);
    let expect = Expect::new(
        input.content_md5,
        sent,
        input.checksum_algorithm.as_ref(),
        &headers,
        trailing_headers,
    )?;
    let body = match input.body {
        Some(b) => futures::future::Either::Left(b),
        None => futures::future::Either::Right(futures::stream::empty()),
    };
    let n = input.part_number;
    let (etag, sums) = match claim_slot(g, &up, n, input.content_length).await? {
        Some(slot) => write_slot(g, &slot, body, &expect).await?,
        None => {
            let (etag, _, sums) = store_part(g, &up, n, body, &expect).await?;
            (etag, sums)
        }
    };
    Ok(S3Response::new(UploadPartOutput {
        e_tag: Some(ETag::Strong(etag)),
        checksum_crc32: sums.checksum_crc32,
        checksum_crc32c: sums.checksum_crc32c,
        checksum_sha1: sums.checksum_sha1,
        checksum_sha256: sums.checksum_sha256,
        checksum_crc64nvme: sums.checksum_crc64nvme,
        ..Default::default()
    }))
}

/// Part N's claimed slot in the assembly file.
struct Slot {
    asm: u64,
    marker: u64,
    marker_name: String,
    dir: u64,
    off: u64,
    len: u64,
}

/// The upload's stride: the stored one, else `len` if it may be one (the
/// first part of at least 5 MiB sets it; a concurrent one may win).
async fn stride(g: &Gateway, up: &FileAttr, len: u64) -> S3Result<Option<u64>> {
    let st = &g.store;
    let parse = |v: Option<String>| v.and_then(|v| v.parse::<u64>().ok());
    if let Some(s) = parse(st.getx(up.ino.0, X_STRIDE).await?) {
        return Ok(Some(s));
    }
    if len < MIN_PART {
        return Ok(None);
    }
    if st
        .setx_new(up.ino.0, X_STRIDE, len.to_string().as_bytes())
        .await?
    {
        return Ok(Some(len));
    }
    Ok(parse(st.getx(up.ino.0, X_STRIDE).await?))
}

/// Claims part `n`'s slot for a body of `len` bytes, if it fits one and
/// nobody holds it; None: the part goes to its own file.
async fn claim_slot(
    g: &Gateway,
    up: &FileAttr,
    n: i32,
    len: Option<i64>,
) -> S3Result<Option<Slot>> {
    let st = &g.store;
    let Some(len) = len.filter(|l| *l > 0).map(|l| l as u64) else {
        return Ok(None);
    };
    let asm = match st.lookup(up.ino.0, ASSEMBLY).await.map_err(s3err)? {
        Some(a) if a.kind == FileType::RegularFile => a,
        _ => return Ok(None),
    };
    let Some(stride) = stride(g, up, len).await?.filter(|s| len <= *s) else {
        return Ok(None);
    };
    let name = slot_name(n);
    let Some(marker) = st.claim(up.ino.0, &name).await.map_err(s3err)? else {
        return Ok(None);
    };
    Ok(Some(Slot {
        asm: asm.ino.0,
        marker: marker.ino.0,
        marker_name: name,
        dir: up.ino.0,
        off: (n as u64 - 1) * stride,
        len,
    }))
}

/// Writes a part into its claimed slot; on success records it as finished
/// on the marker, on failure gives the slot back.
async fn write_slot<S, E>(
    g: &Gateway,
    slot: &Slot,
    body: S,
    expect: &Expect,
) -> S3Result<(String, Checksum)>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let st = &g.store;
    let stored = async {
        let fh = st.open_write(slot.asm).await.map_err(s3err)?;
        let written = st
            .fill(
                slot.asm,
                fh,
                slot.off,
                Some(slot.len),
                body,
                expect.hasher(),
            )
            .await;
        let closed = st.close(slot.asm, fh).await.map_err(s3err);
        let (n, md5, sums) = written?;
        closed?;
        if n != slot.len {
            return Err(s3_error!(
                IncompleteBody,
                "the body is shorter than its Content-Length"
            ));
        }
        expect.check(&md5, &sums)?;
        let etag = hex::encode(md5);
        let v = format!("{etag} {} {}", slot.len, seq_now());
        st.setx(slot.marker, X_PART.to_vec(), v.as_bytes()).await?;
        Ok((etag, sums))
    }
    .await;
    if stored.is_err() {
        let _ = st.unlink(slot.dir, &slot.marker_name).await;
    }
    stored
}

/// `bytes=FIRST-LAST` of an UploadPartCopy.
fn copy_range(r: &str, size: u64) -> S3Result<(u64, u64)> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last"
        )
    };
    let (a, b) = r
        .strip_prefix("bytes=")
        .and_then(|x| x.split_once('-'))
        .ok_or_else(bad)?;
    let first: u64 = a.parse().map_err(|_| bad())?;
    let last: u64 = b.parse().map_err(|_| bad())?;
    if first > last || last >= size {
        return Err(s3_error!(InvalidRange));
    }
    Ok((first, last - first + 1))
}

pub async fn upload_part_copy(
    g: &Gateway,
    input: UploadPartCopyInput,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    check_part_number(input.part_number)?;
    let up = upload_dir(g, &input.bucket, &input.key, &input.upload_id).await?;
    let CopySource::Bucket { bucket, key, .. } = &input.copy_source else {
        return Err(s3_error!(NotImplemented, "only bucket/key copy sources"));
    };
    let src_key = keys::split(key)?;
    let src = g.store.object(bucket, &src_key).await?;
    let (start, len) = match &input.copy_source_range {
        Some(r) => copy_range(r, src.size)?,
        None => (0, src.size),
    };
    // Copied and hashed by the chunk daemons: the part's ETag is the MD5 of
    // the range without its bytes passing through the gateway.
    let t = g.store.copy_temp(src.ino.0, start, len).await?;
    let etag = hex::encode(t.md5);
    let tagged = async {
        let a = g.store.getattr(t.ino).await.map_err(s3err)?;
        g.store.set_etag(&a, &etag, &t.sums).await?;
        // The newer of two copies of a part number wins (S3's rule).
        let seq = seq_now().to_string();
        g.store.setx(t.ino, X_SEQ.to_vec(), seq.as_bytes()).await
    }
    .await;
    if let Err(e) = tagged {
        g.store.discard(&t.name).await;
        return Err(e);
    }
    let a = g
        .store
        .install(&t, up.ino.0, &part_name(input.part_number))
        .await?;
    Ok(S3Response::new(UploadPartCopyOutput {
        copy_part_result: Some(CopyPartResult {
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(Timestamp::from(a.mtime)),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

/// The upload's finished parts, by number; of two copies of a number, the
/// newer.
async fn parts(g: &Gateway, up: &FileAttr) -> S3Result<Vec<StoredPart>> {
    let st = &g.store;
    let mut out: Vec<StoredPart> = vec![];
    for (name, a) in st.children(up.ino.0).await.map_err(s3err)? {
        let p = if let Some(n) = name.strip_prefix("slot-") {
            let Ok(n) = n.parse::<i32>() else { continue };
            let Some(v) = st.getx(a.ino.0, X_PART).await? else {
                continue; // unfinished
            };
            let mut w = v.split(' ');
            let (Some(etag), Some(Ok(size)), Some(Ok(seq))) = (
                w.next(),
                w.next().map(str::parse::<u64>),
                w.next().map(str::parse::<u128>),
            ) else {
                continue;
            };
            StoredPart {
                n,
                size,
                etag: etag.to_owned(),
                seq,
                own: None,
            }
        } else {
            let Ok(n) = name.parse::<i32>() else { continue };
            let etag = st
                .current_etag(a.ino.0, a.size, a.mtime)
                .await
                .unwrap_or_default();
            let seq = st
                .getx(a.ino.0, X_SEQ)
                .await?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            StoredPart {
                n,
                size: a.size,
                etag,
                seq,
                own: Some(a),
            }
        };
        match out.iter_mut().find(|q| q.n == p.n) {
            Some(q) if q.seq < p.seq => *q = p,
            Some(_) => {}
            None => out.push(p),
        }
    }
    out.sort_by_key(|p| p.n);
    Ok(out)
}

/// Checks Complete's list against the stored parts; returns the parts in
/// order. Pure.
pub fn check_complete<'a>(
    asked: &[(i32, Option<String>)],
    stored: &'a [StoredPart],
) -> S3Result<Vec<&'a StoredPart>> {
    if asked.is_empty() {
        return Err(s3_error!(
            MalformedXML,
            "The XML you provided did not have any parts"
        ));
    }
    // S3's order of checks: the list's order, then each part, then sizes.
    if asked.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(s3_error!(InvalidPartOrder));
    }
    let mut out = vec![];
    for (n, etag) in asked {
        let Some(p) = stored.iter().find(|p| p.n == *n) else {
            return Err(s3_error!(InvalidPart, "part {} was not uploaded", n));
        };
        if let Some(e) = etag {
            if e.trim_matches('"') != p.etag {
                return Err(s3_error!(InvalidPart, "part {} has another ETag", n));
            }
        }
        out.push(p);
    }
    if out[..out.len() - 1].iter().any(|p| p.size < MIN_PART) {
        return Err(s3_error!(EntityTooSmall));
    }
    Ok(out)
}

/// Whether the chosen parts can become the object in the assembly file:
/// parts 1..k, all but the last in their slots at the stride, the last in
/// its slot or its own file. Pure.
pub fn in_place(chosen: &[&StoredPart], stride: u64) -> bool {
    let k = chosen.len();
    chosen.iter().enumerate().all(|(i, p)| {
        p.n as usize == i + 1
            && if i + 1 < k {
                p.own.is_none() && p.size == stride
            } else {
                p.own.is_some() || p.size <= stride
            }
    })
}

/// S3's multipart ETag: MD5 of the parts' binary MD5s, then `-N`.
pub fn multipart_etag(part_etags: &[&str]) -> String {
    let mut md5 = Md5::new();
    for e in part_etags {
        md5.update(hex::decode(e).unwrap_or_default());
    }
    format!("{}-{}", hex::encode(md5.finalize()), part_etags.len())
}

pub async fn complete(
    g: &Gateway,
    input: CompleteMultipartUploadInput,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    let st = &g.store;
    let up = upload_dir(g, &input.bucket, &input.key, &input.upload_id).await?;
    let key = keys::split(&input.key)?;
    let b = st.bucket(&input.bucket).await?;
    let asked: Vec<(i32, Option<String>)> = input
        .multipart_upload
        .and_then(|m| m.parts)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p.part_number.unwrap_or(0),
                p.e_tag.map(|e| e.value().to_owned()),
            )
        })
        .collect();
    let stored = parts(g, &up).await?;
    let chosen = check_complete(&asked, &stored)?;
    let etags: Vec<&str> = chosen.iter().map(|p| p.etag.as_str()).collect();
    let etag = multipart_etag(&etags);
    let meta = st.meta(up.ino.0).await?;
    let asm = match st.lookup(up.ino.0, ASSEMBLY).await.map_err(s3err)? {
        Some(a) if a.kind == FileType::RegularFile => Some(a),
        _ => None,
    };
    let stride = st
        .getx(up.ino.0, X_STRIDE)
        .await?
        .and_then(|v| v.parse::<u64>().ok());
    let a = match (asm, stride, chosen.as_slice()) {
        (_, _, [only]) if only.own.is_some() => {
            // One part in its own file: it is the object already.
            let f = only.own.as_ref().unwrap();
            st.set_meta(f.ino.0, &meta).await?;
            st.set_etag(f, &etag, &Checksum::default()).await?;
            let dir = st.mkdirs(b.ino.0, key.parents()).await?;
            st.rename(
                up.ino.0,
                &part_name(only.n),
                dir,
                key.name().unwrap_or_default(),
            )
            .await
            .map_err(s3err)?;
            st.getattr(f.ino.0).await.map_err(s3err)?
        }
        (Some(asm), Some(stride), _) if in_place(&chosen, stride) => {
            assemble(g, &up, &asm, stride, &chosen, &b, &key, &meta, &etag).await?
        }
        _ => {
            // Streamed into a new object: each part from its slot or file.
            let sources: Vec<(u64, u64, u64)> = chosen
                .iter()
                .map(|p| match (&p.own, asm.as_ref(), stride) {
                    (Some(f), _, _) => Ok((f.ino.0, 0, p.size)),
                    (None, Some(asm), Some(stride)) => {
                        Ok((asm.ino.0, (p.n as u64 - 1) * stride, p.size))
                    }
                    _ => Err(s3_error!(InternalError, "part {} has no bytes", p.n)),
                })
                .collect::<S3Result<_>>()?;
            // The chunk daemons copy the parts into a new object.
            let t = st.copy_temp_ranges(&sources).await?;
            g.install_temp(&b, &key, t, &meta, Some(etag.clone()))
                .await?
                .1
        }
    };
    remove_upload(g, &up).await;
    tracing::debug!(key = %input.key, size = a.size, "multipart upload completed");
    Ok(S3Response::new(CompleteMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        e_tag: Some(ETag::Strong(etag)),
        ..Default::default()
    }))
}

/// Makes the assembly file the object: cut to the object's size, a last
/// part kept in its own file copied onto the end, headers and ETag set,
/// renamed over the key.
#[allow(clippy::too_many_arguments)]
async fn assemble(
    g: &Gateway,
    up: &FileAttr,
    asm: &FileAttr,
    stride: u64,
    chosen: &[&StoredPart],
    bucket: &FileAttr,
    key: &keys::KeyPath<'_>,
    meta: &crate::store::ObjMeta,
    etag: &str,
) -> S3Result<FileAttr> {
    let st = &g.store;
    let last = chosen[chosen.len() - 1];
    let base = (last.n as u64 - 1) * stride;
    let ino = asm.ino.0;
    match &last.own {
        None => {
            st.truncate(ino, base + last.size).await.map_err(s3err)?;
        }
        Some(f) => {
            st.truncate(ino, base).await.map_err(s3err)?;
            // The chunk daemons copy the last part onto the end.
            st.copy_onto(f.ino.0, f.size, ino, base).await?;
        }
    }
    let a = st.getattr(ino).await.map_err(s3err)?;
    st.set_meta(ino, meta).await?;
    st.set_etag(&a, etag, &Checksum::default()).await?;
    let dir = st.mkdirs(bucket.ino.0, key.parents()).await?;
    st.rename(up.ino.0, ASSEMBLY, dir, key.name().unwrap_or_default())
        .await
        .map_err(s3err)?;
    st.getattr(ino).await.map_err(s3err)
}

async fn remove_upload(g: &Gateway, up: &FileAttr) {
    let st = &g.store;
    if let Ok(children) = st.children(up.ino.0).await {
        for (name, _) in children {
            let _ = st.unlink(up.ino.0, &name).await;
        }
    }
    if let Ok(list) = st.children(st.uploads_dir()).await {
        if let Some((name, _)) = list.into_iter().find(|(_, a)| a.ino == up.ino) {
            let _ = st.rmdir(st.uploads_dir(), &name).await;
        }
    }
}

pub async fn abort(
    g: &Gateway,
    input: AbortMultipartUploadInput,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    let up = upload_dir(g, &input.bucket, &input.key, &input.upload_id).await?;
    remove_upload(g, &up).await;
    Ok(S3Response::new(AbortMultipartUploadOutput::default()))
}

pub async fn list_parts(
    g: &Gateway,
    input: ListPartsInput,
) -> S3Result<S3Response<ListPartsOutput>> {
    let up = upload_dir(g, &input.bucket, &input.key, &input.upload_id).await?;
    let marker = input.part_number_marker.unwrap_or(0);
    let max = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
    let all: Vec<_> = parts(g, &up)
        .await?
        .into_iter()
        .filter(|p| p.n > marker)
        .collect();
    let truncated = all.len() > max;
    let shown: Vec<Part> = all
        .into_iter()
        .take(max)
        .map(|p| Part {
            part_number: Some(p.n),
            size: Some(p.size as i64),
            last_modified: Some(Timestamp::from(p.modified())),
            e_tag: Some(ETag::Strong(p.etag)),
            ..Default::default()
        })
        .collect();
    Ok(S3Response::new(ListPartsOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(input.upload_id),
        part_number_marker: input.part_number_marker,
        next_part_number_marker: if truncated {
            shown.last().and_then(|p| p.part_number)
        } else {
            None
        },
        max_parts: Some(max as i32),
        is_truncated: Some(truncated),
        parts: Some(shown),
        ..Default::default()
    }))
}

pub async fn list_uploads(
    g: &Gateway,
    input: ListMultipartUploadsInput,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    let st = &g.store;
    st.bucket(&input.bucket).await?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let mut uploads = vec![];
    for (id, a) in st.children(st.uploads_dir()).await.map_err(s3err)? {
        if st.getx(a.ino.0, X_BUCKET).await?.as_deref() != Some(input.bucket.as_str()) {
            continue;
        }
        let Some(key) = st.getx(a.ino.0, X_KEY).await? else {
            continue;
        };
        if key.starts_with(&prefix) {
            uploads.push(MultipartUpload {
                key: Some(key),
                upload_id: Some(id),
                initiated: Some(Timestamp::from(crate::service::born(&a))),
                ..Default::default()
            });
        }
    }
    uploads.sort_by(|x, y| (&x.key, &x.upload_id).cmp(&(&y.key, &y.upload_id)));
    Ok(S3Response::new(ListMultipartUploadsOutput {
        bucket: Some(input.bucket),
        prefix: input.prefix,
        is_truncated: Some(false),
        uploads: Some(uploads),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_of_parts_is_s3s() {
        // Two parts "a" and "b": MD5s of each, concatenated, hashed.
        let a = hex::encode(Md5::digest(b"a"));
        let b = hex::encode(Md5::digest(b"b"));
        let mut both = Md5::digest(b"a").to_vec();
        both.extend(Md5::digest(b"b"));
        let want = format!("{}-2", hex::encode(Md5::digest(&both)));
        assert_eq!(multipart_etag(&[&a, &b]), want);
    }

    #[test]
    fn copy_ranges() {
        assert_eq!(copy_range("bytes=0-9", 10).unwrap(), (0, 10));
        assert_eq!(copy_range("bytes=5-5", 10).unwrap(), (5, 1));
        assert!(copy_range("bytes=5-10", 10).is_err());
        assert!(copy_range("0-1", 10).is_err());
    }
}
