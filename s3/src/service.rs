//! The S3 operations (s3s's `S3` trait) over the store: buckets, objects,
//! listings, copies. Multipart uploads are in multipart.rs.
//!
//! Every failure is S3's error: s3s turns an `S3Error` into S3's XML body
//! and status; store.rs maps file-system errors (`s3err`).

use std::sync::Arc;
use std::time::SystemTime;

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};
use weft_client::{FileAttr, FileType};

use crate::checksum::Expect;
use crate::keys::{self, KeyPath};
use crate::listing::{self, Child, Item, Query};
use crate::store::{s3err, ObjMeta, Store, ROOT, X_TAGS};
use crate::tagging;

/// MD5 of nothing: the ETag of an empty object (a directory key).
pub const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

pub struct Gateway {
    pub store: Arc<Store>,
    pub region: String,
}

/// Standard base64 with padding (the checksums' form in S3 headers).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Refuses a request signed for another region, as S3 does.
fn check_region<T>(req: &S3Request<T>, region: &str) -> S3Result<()> {
    match &req.region {
        Some(r) if r.as_str() != region => Err(s3_error!(
            AuthorizationHeaderMalformed,
            "the region '{}' is wrong; expecting '{}'",
            r.as_str(),
            region
        )),
        _ => Ok(()),
    }
}

fn secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn ts_secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

fn etag_matches(cond: &ETagCondition, etag: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    }
}

/// The outcome of If-Match, If-None-Match, If-Modified-Since and
/// If-Unmodified-Since (RFC 9110 §13.2.2's order; S3's codes).
pub struct Conditions<'a> {
    pub if_match: Option<&'a ETagCondition>,
    pub if_none_match: Option<&'a ETagCondition>,
    pub if_modified_since: Option<&'a Timestamp>,
    pub if_unmodified_since: Option<&'a Timestamp>,
}

impl Conditions<'_> {
    /// `read`: GET and HEAD answer 304 where a copy answers 412.
    pub fn check(&self, etag: &str, mtime: SystemTime, read: bool) -> S3Result<()> {
        let m = secs(mtime);
        match self.if_match {
            Some(c) if !etag_matches(c, etag) => return Err(s3_error!(PreconditionFailed)),
            Some(_) => {}
            None => {
                if self.if_unmodified_since.is_some_and(|t| m > ts_secs(t)) {
                    return Err(s3_error!(PreconditionFailed));
                }
            }
        }
        let not_modified = match self.if_none_match {
            Some(c) => etag_matches(c, etag),
            None => self.if_modified_since.is_some_and(|t| m <= ts_secs(t)),
        };
        if not_modified {
            return Err(if read {
                s3_error!(NotModified)
            } else {
                s3_error!(PreconditionFailed)
            });
        }
        Ok(())
    }
}

/// Percent-encodes a key for `encoding-type=url` listings (all but
/// unreserved characters and `/`).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[async_trait::async_trait]
impl listing::Tree for Store {
    async fn children(&self, dir: u64) -> S3Result<Vec<Child>> {
        let entries = Store::children(self, dir).await.map_err(s3err)?;
        Ok(entries
            .into_iter()
            .filter(|(_, a)| matches!(a.kind, FileType::Directory | FileType::RegularFile))
            .map(|(name, a)| Child {
                name,
                ino: a.ino.0,
                dir: a.kind == FileType::Directory,
                size: a.size,
                mtime: a.mtime,
            })
            .collect())
    }
}

/// One listing's answer, for V1 and V2 alike.
struct Listed {
    contents: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    next: Option<String>,
    truncated: bool,
    count: usize,
}

impl Gateway {
    pub fn new(store: Arc<Store>, region: String) -> Gateway {
        Gateway { store, region }
    }

    /// An object's headers from a request's; tags are checked
    /// (InvalidTag).
    pub fn meta_from(
        content_type: Option<ContentType>,
        metadata: Option<Metadata>,
        tagging: Option<&str>,
    ) -> S3Result<ObjMeta> {
        let tagging = match tagging {
            Some(t) => Some(tagging::encode(&tagging::parse(t)?)),
            None => None,
        };
        Ok(ObjMeta {
            content_type: content_type.map(|t| t.to_string()),
            user: metadata.unwrap_or_default().into_iter().collect(),
            tagging,
        })
    }

    /// Writes `body` to the key atomically (temp file, then rename) with
    /// its headers, once it matches what `expect` says; returns the ETag,
    /// the file's attributes and the checksums computed.
    pub async fn put_stream<S, E>(
        &self,
        bucket: &FileAttr,
        key: &KeyPath<'_>,
        body: S,
        meta: &ObjMeta,
        etag: Option<String>,
        expect: &Expect,
    ) -> S3Result<(String, FileAttr, Checksum)>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let st = &self.store;
        let t = st.write_temp(body, expect.hasher()).await?;
        if let Err(e) = expect.check(&t.md5, &t.sums) {
            st.discard(&t.name).await;
            return Err(e);
        }
        let staged = async {
            let a = st.getattr(t.ino).await.map_err(s3err)?;
            let etag = etag.unwrap_or_else(|| hex::encode(t.md5));
            st.set_meta(t.ino, meta).await?;
            st.set_etag(&a, &etag, &t.sums).await?;
            let dir = st.mkdirs(bucket.ino.0, key.parents()).await?;
            Ok::<_, s3s::S3Error>((etag, dir))
        }
        .await;
        let (etag, dir) = match staged {
            Ok(x) => x,
            Err(e) => {
                st.discard(&t.name).await;
                return Err(e);
            }
        };
        let name = key.name().unwrap_or_default();
        let a = st.install(&t, dir, name).await?;
        Ok((etag, a, t.sums))
    }

    /// Installs a filled temp file at the key (as `put_stream` does), with
    /// its headers and as ETag `etag` or else its MD5; returns the ETag and
    /// attributes.
    pub async fn install_temp(
        &self,
        bucket: &FileAttr,
        key: &KeyPath<'_>,
        t: crate::store::Temp,
        meta: &ObjMeta,
        etag: Option<String>,
    ) -> S3Result<(String, FileAttr)> {
        let st = &self.store;
        let etag = etag.unwrap_or_else(|| hex::encode(t.md5));
        let staged = async {
            let a = st.getattr(t.ino).await.map_err(s3err)?;
            st.set_meta(t.ino, meta).await?;
            st.set_etag(&a, &etag, &t.sums).await?;
            st.mkdirs(bucket.ino.0, key.parents()).await
        }
        .await;
        let dir = match staged {
            Ok(d) => d,
            Err(e) => {
                st.discard(&t.name).await;
                return Err(e);
            }
        };
        let a = st.install(&t, dir, key.name().unwrap_or_default()).await?;
        Ok((etag, a))
    }

    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max_keys: Option<i32>,
        url: bool,
    ) -> S3Result<Listed> {
        let b = self.store.bucket(bucket).await?;
        let max = match max_keys {
            Some(n) if n < 0 => return Err(s3_error!(InvalidArgument, "max-keys must be >= 0")),
            Some(n) => (n as usize).min(1000),
            None => 1000,
        };
        let mut listed = Listed {
            contents: vec![],
            prefixes: vec![],
            next: None,
            truncated: false,
            count: 0,
        };
        let dirs = listing::start_dir(prefix);
        if dirs.iter().any(|p| matches!(*p, "" | "." | "..")) {
            return Ok(listed);
        }
        let start = match self.store.resolve(b.ino.0, &dirs).await.map_err(s3err)? {
            Some(a) if a.kind == FileType::Directory => a,
            _ => return Ok(listed),
        };
        let start_key = if dirs.is_empty() {
            String::new()
        } else {
            format!("{}/", dirs.join("/"))
        };
        let q = Query {
            prefix,
            delimiter,
            after,
            max,
        };
        let page = listing::list(self.store.as_ref(), start.ino.0, &start_key, &q).await?;
        listed.truncated = page.truncated;
        listed.next = page.next().map(str::to_owned);
        listed.count = page.items.len();
        let enc = |k: &str| if url { url_encode(k) } else { k.to_owned() };
        for item in page.items {
            match item {
                Item::Prefix(p) => listed.prefixes.push(CommonPrefix {
                    prefix: Some(enc(&p)),
                }),
                Item::Object {
                    key,
                    ino,
                    size,
                    mtime,
                } => {
                    let etag = self.store.current_etag(ino, size, mtime).await;
                    listed.contents.push(Object {
                        key: Some(enc(&key)),
                        size: Some(size as i64),
                        last_modified: Some(Timestamp::from(mtime)),
                        e_tag: etag.map(ETag::Strong),
                        storage_class: Some(ObjectStorageClass::from_static(
                            ObjectStorageClass::STANDARD,
                        )),
                        ..Default::default()
                    })
                }
            }
        }
        Ok(listed)
    }

    /// The object's ETag, headers and stored checksums.
    async fn object_output(&self, a: &FileAttr) -> S3Result<(String, ObjMeta, Checksum)> {
        if a.kind == FileType::Directory {
            return Ok((EMPTY_MD5.into(), ObjMeta::default(), Checksum::default()));
        }
        let (etag, sums) = self.store.etag_sums(a).await?;
        let meta = self.store.meta(a.ino.0).await?;
        Ok((etag, meta, sums))
    }
}

/// When a directory was made (its mtime where crtime is unknown).
pub fn born(a: &FileAttr) -> SystemTime {
    if a.crtime > SystemTime::UNIX_EPOCH {
        a.crtime
    } else {
        a.mtime
    }
}

fn copy_source(cs: &CopySource) -> S3Result<(&str, &str)> {
    match cs {
        CopySource::Bucket { bucket, key, .. } => Ok((&**bucket, &**key)),
        _ => Err(s3_error!(NotImplemented, "only bucket/key copy sources")),
    }
}

fn checksums_asked(mode: Option<&ChecksumMode>) -> bool {
    mode.is_some_and(|m| m.as_str() == ChecksumMode::ENABLED)
}

/// `x-amz-tagging-count`: only for an object with tags.
fn tag_count(m: &ObjMeta) -> Option<i32> {
    let n = m.tagging.as_deref().map_or(0, |t| t.split('&').count());
    (n > 0).then_some(n as i32)
}

fn user_meta(m: &ObjMeta) -> Option<Metadata> {
    (!m.user.is_empty()).then(|| m.user.clone().into_iter().collect())
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        check_region(&req, &self.region)?;
        let mut buckets = vec![];
        for (name, a) in self.store.children(ROOT).await.map_err(s3err)? {
            if a.kind == FileType::Directory && keys::is_bucket_name(&name) {
                buckets.push(Bucket {
                    name: Some(name),
                    creation_date: Some(Timestamp::from(born(&a))),
                    bucket_region: None,
                });
            }
        }
        buckets.sort_by(|x, y| x.name.cmp(&y.name));
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        check_region(&req, &self.region)?;
        let name = &req.input.bucket;
        if !keys::is_bucket_name(name) {
            return Err(s3_error!(InvalidBucketName));
        }
        match self.store.mkdir(ROOT, name).await {
            Ok(_) => {}
            Err(e) if e.0 == libc::EEXIST => return Err(s3_error!(BucketAlreadyOwnedByYou)),
            Err(e) => return Err(s3err(e)),
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{name}")),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        check_region(&req, &self.region)?;
        let name = &req.input.bucket;
        self.store.bucket(name).await?;
        match self.store.rmdir(ROOT, name).await {
            Ok(()) => Ok(S3Response::new(DeleteBucketOutput {})),
            Err(e) if e.0 == libc::ENOTEMPTY => Err(s3_error!(BucketNotEmpty)),
            Err(e) if e.0 == libc::ENOENT => Err(s3_error!(NoSuchBucket)),
            Err(e) => Err(s3err(e)),
        }
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        check_region(&req, &self.region)?;
        self.store.bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        check_region(&req, &self.region)?;
        self.store.bucket(&req.input.bucket).await?;
        let location_constraint = (self.region != "us-east-1")
            .then(|| BucketLocationConstraint::from(self.region.clone()));
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint,
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        check_region(&req, &self.region)?;
        let S3Request {
            input,
            headers,
            trailing_headers,
            ..
        } = req;
        let key = keys::split(&input.key)?;
        let b = self.store.bucket(&input.bucket).await?;
        if input.if_none_match.is_some() || input.if_match.is_some() {
            let existing = self.store.object(&input.bucket, &key).await.ok();
            if let (Some(ETagCondition::Any), Some(_)) = (&input.if_none_match, &existing) {
                return Err(s3_error!(PreconditionFailed));
            }
            if let Some(c) = &input.if_match {
                let Some(a) = &existing else {
                    return Err(s3_error!(NoSuchKey));
                };
                if !etag_matches(c, &self.store.etag(a).await?) {
                    return Err(s3_error!(PreconditionFailed));
                }
            }
        }
        if key.dir {
            if input.content_length.unwrap_or(0) > 0 {
                return Err(s3_error!(
                    InvalidRequest,
                    "a key ending in '/' is a directory and holds no bytes"
                ));
            }
            self.store.mkdirs(b.ino.0, &key.parts).await?;
            return Ok(S3Response::new(PutObjectOutput {
                e_tag: Some(ETag::Strong(EMPTY_MD5.into())),
                ..Default::default()
            }));
        }
        let meta =
            Gateway::meta_from(input.content_type, input.metadata, input.tagging.as_deref())?;
        let body = match input.body {
            Some(b) => futures::future::Either::Left(b),
            None => futures::future::Either::Right(futures::stream::empty()),
        };
        let sent = crate::checksum::sent_checksums!(input);
        let expect = Expect::new(
            input.content_md5,
            sent,
            input.checksum_algorithm.as_ref(),
            &headers,
            trailing_headers,
        )?;
        let (etag, a, sums) = self
            .put_stream(&b, &key, body, &meta, None, &expect)
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            size: Some(a.size as i64),
            checksum_crc32: sums.checksum_crc32,
            checksum_crc32c: sums.checksum_crc32c,
            checksum_sha1: sums.checksum_sha1,
            checksum_sha256: sums.checksum_sha256,
            checksum_crc64nvme: sums.checksum_crc64nvme,
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        check_region(&req, &self.region)?;
        let input = req.input;
        let key = keys::split(&input.key)?;
        let a = self.store.object(&input.bucket, &key).await?;
        let (etag, meta, sums) = self.object_output(&a).await?;
        Conditions {
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
        }
        .check(&etag, a.mtime, true)?;
        let size = if a.kind == FileType::Directory {
            0
        } else {
            a.size
        };
        let (range, content_range) = match &input.range {
            None => (0..size, None),
            Some(r) => {
                let r = r.check(size)?;
                let cr = format!("bytes {}-{}/{}", r.start, r.end - 1, size);
                (r, Some(cr))
            }
        };
        let len = range.end - range.start;
        // S3 returns an object's checksums only for the whole object.
        let sums = if checksums_asked(input.checksum_mode.as_ref()) && len == size {
            sums
        } else {
            Checksum::default()
        };
        let body = if len == 0 {
            StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>())
        } else {
            let s = self.store.reader(a.ino.0, range.start, len).await?;
            StreamingBlob::wrap(s)
        };
        Ok(S3Response::new(GetObjectOutput {
            body: Some(body),
            content_length: Some(len as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            last_modified: Some(Timestamp::from(a.mtime)),
            e_tag: Some(ETag::Strong(etag)),
            content_type: meta.content_type.as_ref().and_then(|t| t.parse().ok()),
            metadata: user_meta(&meta),
            tag_count: tag_count(&meta),
            checksum_crc32: sums.checksum_crc32,
            checksum_crc32c: sums.checksum_crc32c,
            checksum_sha1: sums.checksum_sha1,
            checksum_sha256: sums.checksum_sha256,
            checksum_crc64nvme: sums.checksum_crc64nvme,
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        check_region(&req, &self.region)?;
        let input = req.input;
        let key = keys::split(&input.key)?;
        let a = self.store.object(&input.bucket, &key).await?;
        let (etag, meta, sums) = self.object_output(&a).await?;
        Conditions {
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
        }
        .check(&etag, a.mtime, true)?;
        let size = if a.kind == FileType::Directory {
            0
        } else {
            a.size
        };
        let sums = if checksums_asked(input.checksum_mode.as_ref()) {
            sums
        } else {
            Checksum::default()
        };
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(size as i64),
            accept_ranges: Some("bytes".into()),
            last_modified: Some(Timestamp::from(a.mtime)),
            e_tag: Some(ETag::Strong(etag)),
            content_type: meta.content_type.as_ref().and_then(|t| t.parse().ok()),
            metadata: user_meta(&meta),
            checksum_crc32: sums.checksum_crc32,
            checksum_crc32c: sums.checksum_crc32c,
            checksum_sha1: sums.checksum_sha1,
            checksum_sha256: sums.checksum_sha256,
            checksum_crc64nvme: sums.checksum_crc64nvme,
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        check_region(&req, &self.region)?;
        let input = req.input;
        let key = keys::split(&input.key)?;
        self.delete_key(&input.bucket, &key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        check_region(&req, &self.region)?;
        let input = req.input;
        self.store.bucket(&input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let (mut deleted, mut errors) = (vec![], vec![]);
        for o in input.delete.objects {
            let r = match keys::split(&o.key) {
                Ok(k) => self.delete_key(&input.bucket, &k).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(o.key),
                    ..Default::default()
                }),
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_owned()),
                    key: Some(o.key),
                    message: e.message().map(str::to_owned),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        check_region(&req, &self.region)?;
        let input = req.input;
        let (sb, sk) = copy_source(&input.copy_source)?;
        let src_key = keys::split(sk)?;
        let dst_key = keys::split(&input.key)?;
        let src = self.store.object(sb, &src_key).await?;
        let b = self.store.bucket(&input.bucket).await?;
        let (etag, src_meta, _) = self.object_output(&src).await?;
        Conditions {
            if_match: input.copy_source_if_match.as_ref(),
            if_none_match: input.copy_source_if_none_match.as_ref(),
            if_modified_since: input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: input.copy_source_if_unmodified_since.as_ref(),
        }
        .check(&etag, src.mtime, false)?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let mut meta = if replace {
            Gateway::meta_from(input.content_type, input.metadata, None)?
        } else {
            src_meta.clone()
        };
        // Tags are the source's unless the request replaces them.
        meta.tagging = if input
            .tagging_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == TaggingDirective::REPLACE)
        {
            Gateway::meta_from(None, None, Some(input.tagging.as_deref().unwrap_or("")))?.tagging
        } else {
            src_meta.tagging
        };
        if dst_key.dir {
            return Err(s3_error!(
                InvalidRequest,
                "cannot copy onto a directory key"
            ));
        }
        // The daemons copy and hash the bytes: the ETag is the MD5 of what
        // was copied (a single-part source's own ETag; for a multipart
        // source, the MD5 S3 gives a copy too).
        let t = self.store.copy_temp(src.ino.0, 0, src.size).await?;
        let (etag, a) = self.install_temp(&b, &dst_key, t, &meta, None).await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(Timestamp::from(a.mtime)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        check_region(&req, &self.region)?;
        let input = req.input;
        let token = input
            .continuation_token
            .as_deref()
            .map(listing::untoken)
            .transpose()?;
        let after = match (&token, &input.start_after) {
            (Some(t), _) => Some(t.as_str()),
            (None, s) => s.as_deref(),
        };
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let l = self
            .list(
                &input.bucket,
                input.prefix.as_deref().unwrap_or(""),
                input.delimiter.as_deref().filter(|d| !d.is_empty()),
                after,
                input.max_keys,
                url,
            )
            .await?;
        let enc = |o: Option<String>| o.map(|v| if url { url_encode(&v) } else { v });
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: enc(input.prefix),
            delimiter: enc(input.delimiter),
            max_keys: Some(input.max_keys.unwrap_or(1000)),
            key_count: Some(l.count as i32),
            is_truncated: Some(l.truncated),
            continuation_token: input.continuation_token,
            next_continuation_token: l.next.as_deref().map(listing::token),
            start_after: enc(input.start_after),
            encoding_type: input.encoding_type,
            contents: (!l.contents.is_empty()).then_some(l.contents),
            common_prefixes: (!l.prefixes.is_empty()).then_some(l.prefixes),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        check_region(&req, &self.region)?;
        let input = req.input;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let l = self
            .list(
                &input.bucket,
                input.prefix.as_deref().unwrap_or(""),
                input.delimiter.as_deref().filter(|d| !d.is_empty()),
                input.marker.as_deref(),
                input.max_keys,
                url,
            )
            .await?;
        let enc = |o: Option<String>| o.map(|v| if url { url_encode(&v) } else { v });
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: enc(input.prefix),
            delimiter: enc(input.delimiter),
            marker: enc(input.marker),
            max_keys: Some(input.max_keys.unwrap_or(1000)),
            is_truncated: Some(l.truncated),
            next_marker: enc(l.next),
            encoding_type: input.encoding_type,
            contents: (!l.contents.is_empty()).then_some(l.contents),
            common_prefixes: (!l.prefixes.is_empty()).then_some(l.prefixes),
            ..Default::default()
        }))
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        check_region(&req, &self.region)?;
        let input = req.input;
        let key = keys::split(&input.key)?;
        let a = self.store.object(&input.bucket, &key).await?;
        let tags = tagging::from_set(input.tagging.tag_set)?;
        if tags.is_empty() {
            self.store.removex(a.ino.0, X_TAGS).await?;
        } else {
            let v = tagging::encode(&tags);
            self.store
                .setx(a.ino.0, X_TAGS.to_vec(), v.as_bytes())
                .await?;
        }
        Ok(S3Response::new(PutObjectTaggingOutput::default()))
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        check_region(&req, &self.region)?;
        let input = req.input;
        let key = keys::split(&input.key)?;
        let a = self.store.object(&input.bucket, &key).await?;
        let tags = match self.store.getx(a.ino.0, X_TAGS).await? {
            Some(v) => tagging::parse(&v)?,
            None => vec![],
        };
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set: tagging::to_set(tags),
            version_id: None,
        }))
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        check_region(&req, &self.region)?;
        let input = req.input;
        let key = keys::split(&input.key)?;
        let a = self.store.object(&input.bucket, &key).await?;
        self.store.removex(a.ino.0, X_TAGS).await?;
        Ok(S3Response::new(DeleteObjectTaggingOutput::default()))
    }

    /// Buckets are never versioned: the answer of a bucket whose
    /// versioning was never set (no Status).
    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        check_region(&req, &self.region)?;
        self.store.bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    /// In an unversioned bucket every object has one version, `null`, the
    /// latest: the listing of ListObjects with those fields (clients and
    /// tools empty buckets with it).
    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        check_region(&req, &self.region)?;
        let input = req.input;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let l = self
            .list(
                &input.bucket,
                input.prefix.as_deref().unwrap_or(""),
                input.delimiter.as_deref().filter(|d| !d.is_empty()),
                input.key_marker.as_deref().filter(|m| !m.is_empty()),
                input.max_keys,
                url,
            )
            .await?;
        let versions: Vec<ObjectVersion> = l
            .contents
            .into_iter()
            .map(|o| ObjectVersion {
                key: o.key,
                size: o.size,
                last_modified: o.last_modified,
                e_tag: o.e_tag,
                is_latest: Some(true),
                version_id: Some("null".into()),
                storage_class: Some(ObjectVersionStorageClass::from_static(
                    ObjectVersionStorageClass::STANDARD,
                )),
                ..Default::default()
            })
            .collect();
        let enc = |o: Option<String>| o.map(|v| if url { url_encode(&v) } else { v });
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: enc(input.prefix),
            delimiter: enc(input.delimiter),
            key_marker: enc(input.key_marker),
            version_id_marker: input.version_id_marker,
            max_keys: Some(input.max_keys.unwrap_or(1000)),
            is_truncated: Some(l.truncated),
            next_key_marker: enc(l.next.clone()),
            next_version_id_marker: l.next.map(|_| "null".into()),
            encoding_type: input.encoding_type,
            versions: (!versions.is_empty()).then_some(versions),
            common_prefixes: (!l.prefixes.is_empty()).then_some(l.prefixes),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        check_region(&req, &self.region)?;
        crate::multipart::create(self, req.input).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        check_region(&req, &self.region)?;
        crate::multipart::upload_part(self, req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        check_region(&req, &self.region)?;
        crate::multipart::upload_part_copy(self, req.input).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        check_region(&req, &self.region)?;
        crate::multipart::complete(self, req.input).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        check_region(&req, &self.region)?;
        crate::multipart::abort(self, req.input).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        check_region(&req, &self.region)?;
        crate::multipart::list_parts(self, req.input).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        check_region(&req, &self.region)?;
        crate::multipart::list_uploads(self, req.input).await
    }
}

impl Gateway {
    /// Deletes a key (absent: fine, as in S3) and the directories it leaves
    /// empty.
    async fn delete_key(&self, bucket: &str, key: &KeyPath<'_>) -> S3Result<()> {
        let b = self.store.bucket(bucket).await?;
        let parent = match self
            .store
            .resolve(b.ino.0, &key.parts[..key.parts.len() - 1])
            .await
            .map_err(s3err)?
        {
            Some(p) if p.kind == FileType::Directory => p,
            _ => return Ok(()),
        };
        let last = key.parts[key.parts.len() - 1];
        let r = if key.dir {
            self.store.rmdir(parent.ino.0, last).await
        } else {
            match self.store.lookup(parent.ino.0, last).await.map_err(s3err)? {
                Some(a) if a.kind == FileType::Directory => return Ok(()),
                Some(_) => self.store.unlink(parent.ino.0, last).await,
                None => Ok(()),
            }
        };
        match r {
            Ok(()) => {}
            Err(e) if matches!(e.0, libc::ENOENT | libc::ENOTEMPTY) => {}
            Err(e) => return Err(s3err(e)),
        }
        self.store
            .tidy(b.ino.0, &key.parts[..key.parts.len() - 1])
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_as_s3_writes_it() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
