//! Object keys as paths: a key `a/b/c.txt` in bucket `x` is the file
//! `/x/a/b/c.txt`. Pure functions; the S3 names of their refusals.
//!
//! Refused (nothing is written): a NUL, a `.` or `..` component, an empty
//! component (`a//b`, a leading `/`), a component over 255 bytes, a key over
//! 1024 bytes. A key ending in `/` names a directory ("folder" objects).

use s3s::{s3_error, S3Error};

/// S3's longest key, bytes.
pub const MAX_KEY: usize = 1024;
/// The longest name weft (like ext4) takes.
pub const NAME_MAX: usize = 255;

/// A key split into path components, and whether it named a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath<'a> {
    pub parts: Vec<&'a str>,
    pub dir: bool,
}

impl KeyPath<'_> {
    /// The directories above the object.
    pub fn parents(&self) -> &[&str] {
        if self.dir {
            &self.parts
        } else {
            &self.parts[..self.parts.len() - 1]
        }
    }

    /// The object's own name (None for a directory key).
    pub fn name(&self) -> Option<&str> {
        if self.dir {
            None
        } else {
            self.parts.last().copied()
        }
    }
}

/// Splits `key` into the path it names, or S3's error for a key weft cannot
/// store.
pub fn split(key: &str) -> Result<KeyPath<'_>, S3Error> {
    if key.is_empty() {
        return Err(s3_error!(InvalidArgument, "empty key"));
    }
    if key.len() > MAX_KEY {
        return Err(s3_error!(KeyTooLongError));
    }
    if key.contains('\0') {
        return Err(s3_error!(InvalidArgument, "a key may not contain NUL"));
    }
    let (body, dir) = match key.strip_suffix('/') {
        Some(b) => (b, true),
        None => (key, false),
    };
    let mut parts = Vec::new();
    for p in body.split('/') {
        match p {
            "" => return Err(s3_error!(InvalidArgument, "empty path component in key")),
            "." | ".." => {
                return Err(s3_error!(
                    InvalidArgument,
                    "a key may not have a '.' or '..' component"
                ))
            }
            p if p.len() > NAME_MAX => return Err(s3_error!(KeyTooLongError)),
            p => parts.push(p),
        }
    }
    Ok(KeyPath { parts, dir })
}

/// Whether a top-level directory name is a bucket S3 allows (the gateway's
/// own hidden directory is not).
pub fn is_bucket_name(name: &str) -> bool {
    s3s::path::check_bucket_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_nested_keys() {
        let k = split("a/b/c.txt").unwrap();
        assert_eq!(k.parts, ["a", "b", "c.txt"]);
        assert_eq!(k.parents(), ["a", "b"]);
        assert_eq!(k.name(), Some("c.txt"));
        let d = split("a/b/").unwrap();
        assert!(d.dir);
        assert_eq!(d.parents(), ["a", "b"]);
        assert_eq!(d.name(), None);
    }

    #[test]
    fn refusals() {
        for bad in ["", "a/../b", "..", "./a", "a//b", "/a", "a\0b", "a/./"] {
            assert!(split(bad).is_err(), "{bad:?} accepted");
        }
        assert!(split(&"x".repeat(256)).is_err());
        assert!(split(&"x/".repeat(600)).is_err());
        assert!(split("a..b/c").is_ok());
    }

    #[test]
    fn bucket_names() {
        assert!(is_bucket_name("photos-2024"));
        assert!(!is_bucket_name(".weft-s3"));
        assert!(!is_bucket_name("Bad_Name"));
    }
}
