//! Small files written whole or not at all, durably: temp file, fsync,
//! rename, fsync of the directory. The format file, the term, address
//! files and the Raft vote, purge point and snapshot metadata all use it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` as `dir/name`: after a crash the file holds either its
/// old contents or all of `bytes`. Errors name the path that failed.
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let at = |p: &Path| {
        let p = p.display().to_string();
        move |e: io::Error| io::Error::new(e.kind(), format!("{p}: {e}"))
    };
    let mut f = File::create(&tmp).map_err(at(&tmp))?;
    f.write_all(bytes).map_err(at(&tmp))?;
    f.sync_all().map_err(at(&tmp))?;
    let dest = dir.join(name);
    fs::rename(&tmp, &dest).map_err(at(&dest))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        write_durably(dir.path(), "f", b"one").unwrap();
        write_durably(dir.path(), "f", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"two");
        assert!(!dir.path().join("f.tmp").exists());
        let err = write_durably(&dir.path().join("missing"), "f", b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("missing/f.tmp"), "{err}");
    }
}
