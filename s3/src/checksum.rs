//! The checksums a body is checked against: Content-MD5 and S3's additional
//! checksums (CRC32, CRC32C, SHA-1, SHA-256, CRC64NVME), each sent as a
//! header or as an aws-chunked trailer. The algorithms asked for (a value
//! sent, `x-amz-sdk-checksum-algorithm`, or a trailer announced in
//! `x-amz-trailer`) are computed while the body streams in; a mismatch is
//! BadDigest and the object is not put in place. What was computed is
//! answered by the PUT or UploadPart and stored beside the ETag, so a GET
//! with `x-amz-checksum-mode: ENABLED` returns it.

use s3s::checksum::ChecksumHasher;
use s3s::dto::{Checksum, ChecksumAlgorithm};
use s3s::{s3_error, S3Result, TrailingHeaders};

/// The five algorithms, by their names in headers (`x-amz-checksum-NAME`)
/// and in the ETag xattr.
const NAMES: [&str; 5] = ["crc32", "crc32c", "sha1", "sha256", "crc64nvme"];

fn field(c: &Checksum, i: usize) -> &Option<String> {
    match i {
        0 => &c.checksum_crc32,
        1 => &c.checksum_crc32c,
        2 => &c.checksum_sha1,
        3 => &c.checksum_sha256,
        _ => &c.checksum_crc64nvme,
    }
}

fn field_mut(c: &mut Checksum, i: usize) -> &mut Option<String> {
    match i {
        0 => &mut c.checksum_crc32,
        1 => &mut c.checksum_crc32c,
        2 => &mut c.checksum_sha1,
        3 => &mut c.checksum_sha256,
        _ => &mut c.checksum_crc64nvme,
    }
}

/// The `x-amz-checksum-*` values a request (PutObject, UploadPart) sent, as
/// one `Checksum`; moves those fields out of `input`.
macro_rules! sent_checksums {
    ($input:ident) => {
        s3s::dto::Checksum {
            checksum_crc32: $input.checksum_crc32,
            checksum_crc32c: $input.checksum_crc32c,
            checksum_sha1: $input.checksum_sha1,
            checksum_sha256: $input.checksum_sha256,
            checksum_crc64nvme: $input.checksum_crc64nvme,
            ..Default::default()
        }
    };
}
pub(crate) use sent_checksums;

/// What a request sent to check its body with.
#[derive(Default)]
pub struct Expect {
    /// Content-MD5 (base64).
    pub md5: Option<String>,
    /// `x-amz-checksum-*` headers.
    pub sent: Checksum,
    /// Algorithms to compute (indexes into NAMES).
    algs: [bool; 5],
    pub trailers: Option<TrailingHeaders>,
}

impl Expect {
    /// `headers` are the request's (for `x-amz-trailer`).
    pub fn new(
        md5: Option<String>,
        sent: Checksum,
        algorithm: Option<&ChecksumAlgorithm>,
        headers: &http::HeaderMap,
        trailers: Option<TrailingHeaders>,
    ) -> S3Result<Expect> {
        let mut algs = [false; 5];
        for (i, a) in algs.iter_mut().enumerate() {
            *a = field(&sent, i).is_some();
        }
        if let Some(a) = algorithm {
            let name = a.as_str().to_ascii_lowercase();
            match NAMES.iter().position(|n| *n == name) {
                Some(i) => algs[i] = true,
                None => {
                    return Err(s3_error!(
                        InvalidRequest,
                        "unknown checksum algorithm {}",
                        a.as_str()
                    ))
                }
            }
        }
        for v in headers.get_all("x-amz-trailer") {
            for t in v.to_str().unwrap_or_default().split(',') {
                let t = t.trim().to_ascii_lowercase();
                if let Some(i) = t
                    .strip_prefix("x-amz-checksum-")
                    .and_then(|n| NAMES.iter().position(|x| *x == n))
                {
                    algs[i] = true;
                }
            }
        }
        Ok(Expect {
            md5,
            sent,
            algs,
            trailers,
        })
    }

    /// A hasher for the algorithms asked for.
    pub fn hasher(&self) -> ChecksumHasher {
        let mut h = ChecksumHasher::default();
        if self.algs[0] {
            h.crc32 = Some(Default::default());
        }
        if self.algs[1] {
            h.crc32c = Some(Default::default());
        }
        if self.algs[2] {
            h.sha1 = Some(Default::default());
        }
        if self.algs[3] {
            h.sha256 = Some(Default::default());
        }
        if self.algs[4] {
            h.crc64nvme = Some(Default::default());
        }
        h
    }

    /// Checks what was computed against what was sent (headers, then
    /// trailers, which are known only once the body has been read).
    pub fn check(&self, md5: &[u8; 16], computed: &Checksum) -> S3Result<()> {
        if let Some(m) = &self.md5 {
            if m.trim() != crate::service::base64(md5) {
                return Err(s3_error!(
                    BadDigest,
                    "The Content-MD5 you specified did not match what we received."
                ));
            }
        }
        for (i, name) in NAMES.iter().enumerate() {
            let header = format!("x-amz-checksum-{name}");
            let trailer = self.trailers.as_ref().and_then(|t| {
                t.read(|h| {
                    h.get(header.as_str())
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                })
                .flatten()
            });
            let Some(want) = field(&self.sent, i).as_ref().or(trailer.as_ref()) else {
                continue;
            };
            if Some(want.trim()) != field(computed, i).as_deref() {
                return Err(s3_error!(
                    BadDigest,
                    "The {} you specified did not match the calculated checksum.",
                    name.to_ascii_uppercase()
                ));
            }
        }
        Ok(())
    }
}

/// `crc32=B64 sha256=B64 ...`: the form stored after the ETag.
pub fn encode(c: &Checksum) -> String {
    let mut out = vec![];
    for (i, name) in NAMES.iter().enumerate() {
        if let Some(v) = field(c, i) {
            out.push(format!("{name}={v}"));
        }
    }
    out.join(" ")
}

/// The inverse of `encode`, one `NAME=VALUE` word at a time; unknown words
/// are skipped.
pub fn decode<'a>(words: impl Iterator<Item = &'a str>) -> Checksum {
    let mut c = Checksum::default();
    for w in words {
        if let Some((n, v)) = w.split_once('=') {
            if let Some(i) = NAMES.iter().position(|x| *x == n) {
                *field_mut(&mut c, i) = Some(v.to_owned());
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3s::dto::Checksum;

    fn computed(algorithm: &str, data: &[u8]) -> Checksum {
        let e = Expect::new(
            None,
            Checksum::default(),
            Some(&ChecksumAlgorithm::from(algorithm.to_owned())),
            &http::HeaderMap::new(),
            None,
        )
        .unwrap();
        let mut h = e.hasher();
        h.update(data);
        h.finalize()
    }

    #[test]
    fn known_values() {
        // CRC32 and CRC32C of "123456789" (the CRC catalogue's check values).
        let c = computed("CRC32", b"123456789");
        assert_eq!(c.checksum_crc32.as_deref(), Some("y/Q5Jg=="));
        assert!(c.checksum_sha256.is_none());
        let c = computed("CRC32C", b"123456789");
        assert_eq!(c.checksum_crc32c.as_deref(), Some("4waSgw=="));
        let c = computed("SHA256", b"");
        assert_eq!(
            c.checksum_sha256.as_deref(),
            Some("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
        );
    }

    #[test]
    fn mismatch_is_bad_digest() {
        let sent = Checksum {
            checksum_crc32: Some("AAAAAA==".into()),
            ..Default::default()
        };
        let e = Expect::new(None, sent, None, &http::HeaderMap::new(), None).unwrap();
        let mut h = e.hasher();
        h.update(b"x");
        let err = e.check(&[0; 16], &h.finalize()).unwrap_err();
        assert_eq!(err.code().as_str(), "BadDigest");
    }

    #[test]
    fn trailer_announced() {
        let mut hm = http::HeaderMap::new();
        hm.insert("x-amz-trailer", "x-amz-checksum-sha1".parse().unwrap());
        let e = Expect::new(None, Checksum::default(), None, &hm, None).unwrap();
        let mut h = e.hasher();
        h.update(b"abc");
        assert!(h.finalize().checksum_sha1.is_some());
    }

    #[test]
    fn encode_decode() {
        let c = Checksum {
            checksum_crc32: Some("y/Q5Jg==".into()),
            checksum_sha256: Some("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".into()),
            ..Default::default()
        };
        let s = encode(&c);
        let d = decode(s.split(' '));
        assert_eq!(d.checksum_crc32, c.checksum_crc32);
        assert_eq!(d.checksum_sha256, c.checksum_sha256);
        assert!(d.checksum_sha1.is_none());
    }
}
