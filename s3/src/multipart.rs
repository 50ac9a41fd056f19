//! Multipart uploads. An upload is the directory `/.weft-s3/uploads/ID`
//! (ID: 32 hex digits) whose xattrs name its bucket and key and hold the
//! object's headers; each part is the file `NNNNN` in it, written atomically
//! like a PUT, with its MD5 as its ETag.
//!
//! Complete checks the list (ascending, every part present with its ETag,
//! all but the last at least 5 MiB) and then assembles the object: a single
//! part is renamed into place; several are streamed into one temp file, so
//! their bytes pass through the gateway once more (weft has no operation
//! that moves chunks from file to file yet). The ETag is S3's: the MD5 of
//! the parts' MD5s, `-N`.

use futures::{StreamExt, TryStreamExt};
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

fn part_name(n: i32) -> String {
    format!("{n:05}")
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
        st.set_etag(&a, &etag, &t.sums).await
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
    let (etag, _, sums) = store_part(g, &up, input.part_number, body, &expect).await?;
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
        g.store.set_etag(&a, &etag, &t.sums).await
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

/// The upload's parts: number, file attributes, ETag.
async fn parts(g: &Gateway, up: &FileAttr) -> S3Result<Vec<(i32, FileAttr, String)>> {
    let mut out = vec![];
    for (name, a) in g.store.children(up.ino.0).await.map_err(s3err)? {
        let Ok(n) = name.parse::<i32>() else { continue };
        let etag = g
            .store
            .current_etag(a.ino.0, a.size, a.mtime)
            .await
            .unwrap_or_default();
        out.push((n, a, etag));
    }
    out.sort_by_key(|p| p.0);
    Ok(out)
}

/// Checks Complete's list against the stored parts; returns the files in
/// order. Pure.
pub fn check_complete<'a>(
    asked: &[(i32, Option<String>)],
    stored: &'a [(i32, FileAttr, String)],
) -> S3Result<Vec<&'a (i32, FileAttr, String)>> {
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
        let Some(p) = stored.iter().find(|p| p.0 == *n) else {
            return Err(s3_error!(InvalidPart, "part {} was not uploaded", n));
        };
        if let Some(e) = etag {
            if e.trim_matches('"') != p.2 {
                return Err(s3_error!(InvalidPart, "part {} has another ETag", n));
            }
        }
        out.push(p);
    }
    if out[..out.len() - 1].iter().any(|p| p.1.size < MIN_PART) {
        return Err(s3_error!(EntityTooSmall));
    }
    Ok(out)
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
    let etags: Vec<&str> = chosen.iter().map(|p| p.2.as_str()).collect();
    let etag = multipart_etag(&etags);
    let meta = st.meta(up.ino.0).await?;
    let a = if let [only] = chosen.as_slice() {
        // One part: it is the object already.
        let f = &only.1;
        st.set_meta(f.ino.0, &meta).await?;
        st.set_etag(f, &etag, &Checksum::default()).await?;
        let dir = st.mkdirs(b.ino.0, key.parents()).await?;
        st.rename(
            up.ino.0,
            &part_name(only.0),
            dir,
            key.name().unwrap_or_default(),
        )
        .await
        .map_err(s3err)?;
        st.getattr(f.ino.0).await.map_err(s3err)?
    } else {
        let files: Vec<(u64, u64)> = chosen.iter().map(|p| (p.1.ino.0, p.1.size)).collect();
        let store = g.store.clone();
        let body = futures::stream::iter(files)
            .then(move |(ino, size)| {
                let store = store.clone();
                async move {
                    store
                        .reader(ino, 0, size)
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))
                }
            })
            .try_flatten();
        g.put_stream(
            &b,
            &key,
            body,
            &meta,
            Some(etag.clone()),
            &Default::default(),
        )
        .await?
        .1
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
        .filter(|p| p.0 > marker)
        .collect();
    let truncated = all.len() > max;
    let shown: Vec<Part> = all
        .into_iter()
        .take(max)
        .map(|(n, a, etag)| Part {
            part_number: Some(n),
            size: Some(a.size as i64),
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(Timestamp::from(a.mtime)),
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
