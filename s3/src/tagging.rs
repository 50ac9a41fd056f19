//! Object tags: a set of at most 10 key/value pairs, kept in the xattr
//! `user.s3.tagging` in the form of the `x-amz-tagging` header
//! (`k1=v1&k2=v2`, URL-encoded). A PUT or multipart upload may set them with
//! that header, Put/Get/DeleteObjectTagging work on them, a copy keeps the
//! source's, and a PUT over a key replaces them like the bytes.

use s3s::dto::{Tag, TagSet};
use s3s::{s3_error, S3Result};

/// S3's limits.
const MAX_TAGS: usize = 10;
const MAX_KEY: usize = 128;
const MAX_VALUE: usize = 256;

/// Checks S3's rules: at most 10 tags, keys of 1 to 128 characters and
/// values of at most 256, no key twice (InvalidTag otherwise).
pub fn validate(tags: &[(String, String)]) -> S3Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(s3_error!(
            InvalidTag,
            "Object tags cannot be greater than {}",
            MAX_TAGS
        ));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        if k.is_empty() || k.chars().count() > MAX_KEY {
            return Err(s3_error!(
                InvalidTag,
                "The TagKey you have provided is invalid"
            ));
        }
        if v.chars().count() > MAX_VALUE {
            return Err(s3_error!(
                InvalidTag,
                "The TagValue you have provided is invalid"
            ));
        }
        if tags[..i].iter().any(|(k2, _)| k2 == k) {
            return Err(s3_error!(
                InvalidTag,
                "Cannot provide multiple Tags with the same key"
            ));
        }
    }
    Ok(())
}

/// Parses and checks `k1=v1&k2=v2` (the header's and the xattr's form).
pub fn parse(s: &str) -> S3Result<Vec<(String, String)>> {
    let mut tags = vec![];
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |x: &str| {
            urlencoding::decode(&x.replace('+', " "))
                .map(|c| c.into_owned())
                .map_err(|_| s3_error!(InvalidTag, "The tag is not valid URL-encoded UTF-8"))
        };
        tags.push((dec(k)?, dec(v)?));
    }
    validate(&tags)?;
    Ok(tags)
}

/// The stored form of `tags`.
pub fn encode(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// From PutObjectTagging's XML body; checked.
pub fn from_set(set: TagSet) -> S3Result<Vec<(String, String)>> {
    let tags: Vec<(String, String)> = set
        .into_iter()
        .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
        .collect();
    validate(&tags)?;
    Ok(tags)
}

/// For GetObjectTagging's XML body.
pub fn to_set(tags: Vec<(String, String)>) -> TagSet {
    tags.into_iter()
        .map(|(k, v)| Tag {
            key: Some(k),
            value: Some(v),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_form_round_trips() {
        let tags = parse("Environment=Test&Project=S3S&a%20b=c%26d").unwrap();
        assert_eq!(
            tags,
            [
                ("Environment".into(), "Test".into()),
                ("Project".into(), "S3S".into()),
                ("a b".into(), "c&d".into())
            ]
        );
        assert_eq!(parse(&encode(&tags)).unwrap(), tags);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn s3s_limits() {
        let code = |r: S3Result<Vec<(String, String)>>| r.unwrap_err().code().as_str().to_owned();
        assert_eq!(code(parse("a=1&a=2")), "InvalidTag");
        assert_eq!(code(parse("=1")), "InvalidTag");
        let many: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
        assert_eq!(code(parse(&many.join("&"))), "InvalidTag");
        assert_eq!(code(parse(&format!("k={}", "v".repeat(257)))), "InvalidTag");
        assert!(parse(&format!("{}=v", "k".repeat(128))).is_ok());
    }
}
