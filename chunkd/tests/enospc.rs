//! A real ENOSPC from the disk (not --capacity): a 2 MiB tmpfs. Needs root to
//! mount, as the whole suite does (scripts/test runs as root).

use weft_chunkd::store::{Store, StoreError};

/// Unmounts on drop, before the temp dir holding the mount point goes.
struct Tmpfs {
    mnt: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn disk_full_is_no_space_and_the_chunk_reads_as_before() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("fs");
    std::fs::create_dir(&mnt).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=2m"),
    )
    .expect("mount tmpfs (root needed)");
    let _guard = Tmpfs {
        mnt: mnt.clone(),
        _dir: t,
    };

    // Capacity unlimited: only the disk can say no.
    let s = Store::open(&mnt, u64::MAX).unwrap();
    s.set_chunk_size(64 << 20);
    let first: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 + 1).collect();
    s.write(1, 1, 0, 0, &first).unwrap();
    let big = vec![0xabu8; 3 << 20];
    match s.write(1, 1, 0, 512 << 10, &big) {
        Err(StoreError::NoSpace { .. }) => {}
        other => panic!("expected NoSpace, got {other:?}"),
    }
    // The overlapping range still holds the old bytes and verifies.
    assert_eq!(s.read(1, 1, 0, 1 << 20).unwrap(), first);
    assert_eq!(s.summary(1).unwrap().size, 1 << 20);
    // A new chunk that cannot be created leaves nothing behind.
    match s.write(2, 1, 0, 0, &big) {
        Err(StoreError::NoSpace { .. }) => {}
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert!(!s.chunk_path(2).exists());
    drop(s);
    let s = Store::open(&mnt, u64::MAX).unwrap();
    assert_eq!(s.ids(), vec![1]);
}
