//! Reads spread over a chunk's replicas: through a real mount of a
//! 3-replica cluster, the pieces of one chunk are fetched from more than one
//! daemon, and a read survives a daemon killed in the middle of it.

use std::fs;
use std::io::{Read, Write};

use weft_testkit::{pattern, sha256_hex, TestCluster};

const MIB: u64 = 1 << 20;

/// Bytes a process has read with read(2)/pread(2) (`rchar` in /proc/PID/io):
/// a chunk daemon serves a read by pread'ing the replica file.
fn rchar(pid: u32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn write_file(path: &std::path::Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// One 16 MiB chunk read sequentially through a fresh mount (empty caches):
/// the kernel's readahead asks for it in 1 MiB pieces, and they go to every
/// replica, not all to the first.
#[test]
fn one_chunk_is_read_from_several_replicas() {
    let mut tc = TestCluster::start(3, 16 * MIB);
    let m = tc.mount();
    let data = pattern(16 * MIB as usize, 6);
    write_file(&m.join("big"), &data);
    // A second mount: its data cache and the kernel's page cache are empty.
    let m2 = tc.mount();
    let pids: Vec<u32> = tc
        .cluster
        .chunkds
        .iter()
        .map(|c| c.pid().unwrap())
        .collect();
    let before: Vec<u64> = pids.iter().map(|p| rchar(*p)).collect();
    let got = fs::read(m2.join("big")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    let served: Vec<u64> = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| rchar(*p) - b)
        .collect();
    println!("bytes read per chunk daemon: {served:?}");
    let busy = served.iter().filter(|n| **n >= 2 * MIB).count();
    assert!(
        busy >= 2,
        "a 16 MiB chunk was read from one replica only: bytes read per daemon {served:?}"
    );
}

/// A file of many chunks read back while one of the three daemons holding
/// every chunk is killed half way: the pieces that went to it are read from
/// the others, and the bytes hash right.
#[test]
fn read_survives_a_replica_killed_mid_read() {
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    let data = pattern(24 * MIB as usize, 7);
    write_file(&m.join("f"), &data);
    let m2 = tc.mount();
    let mut f = fs::File::open(m2.join("f")).unwrap();
    let mut got = vec![0u8; data.len()];
    let half = data.len() / 2;
    f.read_exact(&mut got[..half]).unwrap();
    tc.cluster.chunkds[1].crash();
    f.read_exact(&mut got[half..]).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    // And a fresh open on a third mount, with the daemon still down.
    let m3 = tc.mount();
    assert_eq!(
        sha256_hex(&fs::read(m3.join("f")).unwrap()),
        sha256_hex(&data)
    );
}
