//! Tests of whole-replica installs and version fencing (`install.rs`) against
//! real files in a temp dir.

use super::*;

const MIB: u64 = 1 << 20;

fn store(dir: &Path) -> Store {
    let s = Store::open(dir, u64::MAX).unwrap();
    s.set_chunk_size(4 * MIB);
    s
}

fn pieces(data: &[u8]) -> impl Iterator<Item = std::result::Result<(u64, Vec<u8>), String>> + '_ {
    data.chunks(MIB as usize)
        .enumerate()
        .map(|(i, p)| Ok((i as u64 * MIB, p.to_vec())))
}

#[test]
fn install_is_whole_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let data: Vec<u8> = (0..(3 * MIB + 5)).map(|i| (i % 251) as u8).collect();
    s.install(7, 3, data.len() as u64, pieces(&data)).unwrap();
    assert_eq!(s.read(7, 3, 0, data.len()).unwrap(), data);
    assert_eq!(s.summary(7).unwrap().version, 3);
    assert!(s.take_delta().added.iter().any(|c| c.id == 7));
    // No temp file left behind.
    let leftovers = std::fs::read_dir(s.chunk_path(7).parent().unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn a_failed_copy_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let broken = vec![
        Ok((0, vec![1u8; 1000])),
        Err("source went away".to_string()),
    ];
    assert!(s.install(9, 1, 2000, broken.into_iter()).is_err());
    assert!(s.summary(9).is_none());
    assert!(!s.chunk_path(9).exists());
    assert_eq!(s.used(), 0);
    // Reopening finds nothing either.
    drop(s);
    assert!(store(dir.path()).summary(9).is_none());
}

#[test]
fn install_never_replaces_same_or_newer_and_respects_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.write(5, 4, 4, 0, b"current").unwrap();
    let e = s.install(5, 4, 3, pieces(b"old")).unwrap_err();
    assert!(matches!(e, StoreError::StaleVersion { .. }), "{e}");
    assert_eq!(s.read(5, 4, 0, 7).unwrap(), b"current");
    // A newer version replaces an older replica.
    s.install(5, 6, 5, pieces(b"newer")).unwrap();
    assert_eq!(s.read(5, 6, 0, 5).unwrap(), b"newer");
    // A quarantined replica is not resurrected at its own version.
    s.quarantine(5).unwrap();
    let e = s.install(5, 6, 5, pieces(b"newer")).unwrap_err();
    assert!(matches!(e, StoreError::Quarantined { .. }), "{e}");
}

#[test]
fn set_version_fences_older_writes_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.write(3, 1, 1, 0, b"hello").unwrap();
    s.set_version(3, 2).unwrap();
    let e = s.write(3, 1, 1, 0, b"zombie").unwrap_err();
    assert!(matches!(e, StoreError::StaleVersion { .. }), "{e}");
    s.write(3, 2, 2, 0, b"HELLO").unwrap();
    assert!(matches!(
        s.set_version(3, 1).unwrap_err(),
        StoreError::StaleVersion { .. }
    ));
    assert!(matches!(
        s.set_version(99, 2).unwrap_err(),
        StoreError::NotFound { .. }
    ));
    drop(s);
    let s = store(dir.path());
    assert_eq!(s.summary(3).unwrap().version, 2);
    assert_eq!(s.read(3, 2, 0, 5).unwrap(), b"HELLO");
}
