//! ListObjects (V1 and V2) over a directory tree, in S3's order (keys by
//! their UTF-8 bytes), with prefix, delimiter, a resume point (start-after,
//! marker, continuation token) and max-keys.
//!
//! The walk is depth first over children sorted by `name` for files and
//! `name/` for directories: every key below a directory `d/` starts with
//! `d/`, so that order is S3's order of the whole bucket. Subtrees that
//! cannot hold a key past the resume point or under the prefix are not read;
//! with a delimiter, a directory whose key already holds it becomes a common
//! prefix without being read (so an empty directory made on a mount shows as
//! a common prefix, where S3 would show nothing).

use std::time::SystemTime;

use s3s::{s3_error, S3Result};

/// One entry of a directory.
#[derive(Debug, Clone)]
pub struct Child {
    pub name: String,
    pub ino: u64,
    pub dir: bool,
    pub size: u64,
    pub mtime: SystemTime,
}

/// Where the walk reads directories from (the gateway's store, or a model in
/// the tests).
#[async_trait::async_trait]
pub trait Tree: Sync {
    async fn children(&self, dir: u64) -> S3Result<Vec<Child>>;
}

/// What a listing asks for.
#[derive(Debug, Clone, Default)]
pub struct Query<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    /// Only keys (and common prefixes) after this one.
    pub after: Option<&'a str>,
    pub max: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Object {
        key: String,
        ino: u64,
        size: u64,
        mtime: SystemTime,
    },
    Prefix(String),
}

impl Item {
    /// The key the item sorts and resumes by.
    pub fn key(&self) -> &str {
        match self {
            Item::Object { key, .. } => key,
            Item::Prefix(p) => p,
        }
    }
}

#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<Item>,
    /// More items follow the last one.
    pub truncated: bool,
}

impl Page {
    /// The resume point after this page (None when it is the last).
    pub fn next(&self) -> Option<&str> {
        if self.truncated {
            self.items.last().map(Item::key)
        } else {
            None
        }
    }
}

struct Frame {
    key: String,
    entries: Vec<Child>,
    next: usize,
}

fn sorted(mut entries: Vec<Child>) -> Vec<Child> {
    let sort_key = |c: &Child| {
        let mut k = c.name.clone().into_bytes();
        if c.dir {
            k.push(b'/');
        }
        k
    };
    entries.sort_by_key(sort_key);
    entries
}

/// The deepest directory the prefix names whole (`a/b/` of `a/b/c`), as
/// components: the walk starts there.
pub fn start_dir(prefix: &str) -> Vec<&str> {
    match prefix.rfind('/') {
        Some(i) => prefix[..i].split('/').collect(),
        None => Vec::new(),
    }
}

/// The common prefix `key` rolls up into, if any.
fn rolled_up<'k>(key: &'k str, prefix: &str, delimiter: Option<&str>) -> Option<&'k str> {
    let d = delimiter.filter(|d| !d.is_empty())?;
    let rest = key.get(prefix.len()..)?;
    rest.find(d).map(|i| &key[..prefix.len() + i + d.len()])
}

/// Lists from directory `start` (whose key is `start_key`, ending in `/` or
/// empty for the bucket) according to `q`.
pub async fn list(tree: &dyn Tree, start: u64, start_key: &str, q: &Query<'_>) -> S3Result<Page> {
    let mut page = Page::default();
    if q.max == 0 {
        return Ok(page);
    }
    let after_ok = |k: &str| q.after.is_none_or(|a| k > a);
    let mut stack = vec![Frame {
        key: start_key.to_owned(),
        entries: sorted(tree.children(start).await?),
        next: 0,
    }];
    while let Some(f) = stack.last_mut() {
        let Some(e) = f.entries.get(f.next).cloned() else {
            stack.pop();
            continue;
        };
        f.next += 1;
        let mut key = format!("{}{}", f.key, e.name);
        let item = if e.dir {
            key.push('/');
            if !(key.starts_with(q.prefix) || q.prefix.starts_with(&key)) {
                continue;
            }
            // Every key below sorts before the resume point.
            if q.after
                .is_some_and(|a| key.as_str() < a && !a.starts_with(&key))
            {
                continue;
            }
            match rolled_up(&key, q.prefix, q.delimiter) {
                Some(cp) => Item::Prefix(cp.to_owned()),
                None => {
                    let entries = sorted(tree.children(e.ino).await?);
                    stack.push(Frame {
                        key,
                        entries,
                        next: 0,
                    });
                    continue;
                }
            }
        } else {
            if !key.starts_with(q.prefix) {
                continue;
            }
            match rolled_up(&key, q.prefix, q.delimiter) {
                Some(cp) => Item::Prefix(cp.to_owned()),
                None => Item::Object {
                    key,
                    ino: e.ino,
                    size: e.size,
                    mtime: e.mtime,
                },
            }
        };
        if !after_ok(item.key()) || page.items.last().is_some_and(|l| l == &item) {
            continue;
        }
        if page.items.len() == q.max {
            page.truncated = true;
            break;
        }
        page.items.push(item);
    }
    Ok(page)
}

/// A continuation token: the resume key, hex-encoded (opaque to clients).
pub fn token(key: &str) -> String {
    hex::encode(key)
}

pub fn untoken(t: &str) -> S3Result<String> {
    hex::decode(t)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "The continuation token provided is incorrect"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A tree from a list of keys (directories made as needed).
    struct Model {
        dirs: HashMap<u64, Vec<Child>>,
    }

    impl Model {
        fn new(keys: &[&str]) -> Model {
            let mut m = Model {
                dirs: HashMap::from([(1, vec![])]),
            };
            let mut next = 2;
            for k in keys {
                let parts: Vec<&str> = k.split('/').collect();
                let mut dir = 1;
                for (i, p) in parts.iter().enumerate() {
                    let last = i + 1 == parts.len();
                    let found = m.dirs[&dir].iter().find(|c| c.name == *p).map(|c| c.ino);
                    let ino = found.unwrap_or_else(|| {
                        next += 1;
                        m.dirs.get_mut(&dir).unwrap().push(Child {
                            name: p.to_string(),
                            ino: next,
                            dir: !last,
                            size: 1,
                            mtime: SystemTime::UNIX_EPOCH,
                        });
                        if !last {
                            m.dirs.insert(next, vec![]);
                        }
                        next
                    });
                    dir = ino;
                }
            }
            m
        }
    }

    #[async_trait::async_trait]
    impl Tree for Model {
        async fn children(&self, dir: u64) -> S3Result<Vec<Child>> {
            Ok(self.dirs[&dir].clone())
        }
    }

    const KEYS: &[&str] = &[
        "a.txt",
        "a/b/c",
        "a/b/d",
        "a/e",
        "a-z",
        "b",
        "photos/2024/jan.jpg",
        "photos/2024/jun.jpg",
        "photos/2025/feb.jpg",
    ];

    /// What S3 answers, computed the plain way: sort every key, filter, roll up.
    fn reference(q: &Query) -> (Vec<String>, bool) {
        let mut keys: Vec<&str> = KEYS.to_vec();
        keys.sort();
        let mut out: Vec<String> = vec![];
        for k in keys {
            if !k.starts_with(q.prefix) {
                continue;
            }
            let item = rolled_up(k, q.prefix, q.delimiter).unwrap_or(k).to_owned();
            if q.after.is_some_and(|a| item.as_str() <= a) || out.last() == Some(&item) {
                continue;
            }
            out.push(item);
        }
        let truncated = out.len() > q.max;
        out.truncate(q.max);
        (out, truncated)
    }

    fn run(q: &Query) -> (Vec<String>, bool) {
        let m = Model::new(KEYS);
        let p = futures::executor::block_on(list(&m, 1, "", q)).unwrap();
        (
            p.items.iter().map(|i| i.key().to_owned()).collect(),
            p.truncated,
        )
    }

    #[test]
    fn matches_the_plain_definition() {
        for prefix in ["", "a", "a/", "a/b", "photos/", "photos/2024/j", "zzz"] {
            for delimiter in [None, Some("/"), Some("-"), Some("/2")] {
                for after in [
                    None,
                    Some("a"),
                    Some("a/"),
                    Some("a/b/c"),
                    Some("photos/2024/"),
                ] {
                    for max in [1, 2, 3, 1000] {
                        let q = Query {
                            prefix,
                            delimiter,
                            after,
                            max,
                        };
                        assert_eq!(run(&q), reference(&q), "{q:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn paging_visits_every_key_once() {
        for delimiter in [None, Some("/")] {
            let mut seen = vec![];
            let mut after: Option<String> = None;
            loop {
                let q = Query {
                    prefix: "",
                    delimiter,
                    after: after.as_deref(),
                    max: 2,
                };
                let m = Model::new(KEYS);
                let p = futures::executor::block_on(list(&m, 1, "", &q)).unwrap();
                seen.extend(p.items.iter().map(|i| i.key().to_owned()));
                match p.next() {
                    Some(n) => after = Some(untoken(&token(n)).unwrap()),
                    None => break,
                }
            }
            let q = Query {
                delimiter,
                max: 1000,
                ..Default::default()
            };
            assert_eq!(seen, reference(&q).0);
        }
    }

    #[test]
    fn start_dirs() {
        assert!(start_dir("abc").is_empty());
        assert_eq!(start_dir("a/b/c"), ["a", "b"]);
        assert_eq!(start_dir("a/"), ["a"]);
    }
}
