//! A big directory lists completely through a real mount: every entry that
//! exists throughout the listing shows exactly once, nothing shows twice,
//! while other entries are added and removed concurrently, and a readdir
//! offset (d_off) taken from one descriptor stays valid in another opened
//! later (seekdir after the directory changed).
//!
//! The entries are made through the MDS's gRPC API (creating them through
//! FUSE one by one is slow), concurrently; the listing is getdents64 on the
//! mount. CI runs 20,000 entries; `cargo test --release -p weft-testkit
//! --test big_dir -- --ignored` runs the million.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use weft_proto::pb;
use weft_proto::pb::meta_request::Op;
use weft_testkit::mds::RawMeta;
use weft_testkit::TestCluster;

const MIB: u64 = 1 << 20;
/// Concurrent gRPC creators.
const WORKERS: usize = 32;

fn mknod(parent: u64, name: &str) -> Op {
    Op::Mknod(pb::MknodReq {
        parent,
        name: name.as_bytes().to_vec(),
        mode: libc::S_IFREG | 0o644,
        rdev: 0,
        umask: 0o022,
    })
}

fn unlink(parent: u64, name: &str) -> Op {
    weft_testkit::mds::unlink(parent, name)
}

/// Reads directory entries with getdents64 until `stop_after` names (or the
/// end); returns (name, d_off) pairs.
fn getdents(fd: i32, stop_after: usize) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while out.len() < stop_after {
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd,
                buf.as_mut_ptr(),
                buf.len() as libc::c_uint,
            )
        };
        assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        let mut at = 0usize;
        while at < n as usize {
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            let d_off = i64::from_ne_bytes(buf[at + 8..at + 16].try_into().unwrap());
            let reclen = u16::from_ne_bytes(buf[at + 16..at + 18].try_into().unwrap()) as usize;
            let name_bytes = &buf[at + 19..at + reclen];
            let len = name_bytes.iter().position(|&b| b == 0).unwrap();
            let name = String::from_utf8(name_bytes[..len].to_vec()).unwrap();
            out.push((name, d_off));
            at += reclen;
            if out.len() >= stop_after {
                // The rest of this buffer is re-read after the lseek below.
                break;
            }
        }
    }
    out
}

fn open_dir(p: &Path) -> i32 {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(
        fd >= 0,
        "open {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    fd
}

fn list_completely_while_changing(n: usize) {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let dir = m.join("big");
    std::fs::create_dir(&dir).unwrap();
    let dir_ino = std::fs::metadata(&dir).unwrap().ino();
    let addr = tc.mds_addr();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let t = Instant::now();
    rt.block_on(async {
        let c = RawMeta::connect(&addr).await;
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..n).step_by(WORKERS) {
                    let r = c.call(0, 0, mknod(dir_ino, &format!("e{i:07}"))).await;
                    assert!(r.is_ok(), "mknod e{i}: {r:?}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    eprintln!("created {n} entries through gRPC in {:?}", t.elapsed());

    // Churn: add and remove other names for as long as the listing runs.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, addr) = (stop.clone(), addr.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = RawMeta::connect(&addr).await;
                let mut made = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    c.call(0, 0, mknod(dir_ino, &format!("churn{made:07}")))
                        .await
                        .unwrap();
                    if made >= 2 {
                        c.call(0, 0, unlink(dir_ino, &format!("churn{:07}", made - 2)))
                            .await
                            .unwrap();
                    }
                    made += 1;
                }
                made
            })
        })
    };

    // First half through one descriptor; remember the last d_off, close it,
    // and continue from that offset in a new descriptor.
    let t = Instant::now();
    let fd = open_dir(&dir);
    let first = getdents(fd, n / 2);
    unsafe { libc::close(fd) };
    let resume_at = first.last().unwrap().1;
    let fd = open_dir(&dir);
    assert_eq!(
        unsafe { libc::lseek(fd, resume_at, libc::SEEK_SET) },
        resume_at
    );
    let rest = getdents(fd, usize::MAX);
    unsafe { libc::close(fd) };
    stop.store(true, Ordering::Relaxed);
    let churned = churn.join().unwrap();
    eprintln!(
        "listed {} names in {:?} while {churned} others were created and removed",
        first.len() + rest.len(),
        t.elapsed()
    );
    assert!(
        churned > 2,
        "the directory did not change during the listing"
    );

    let mut seen: HashMap<String, usize> = HashMap::new();
    for (name, _) in first.iter().chain(rest.iter()) {
        *seen.entry(name.clone()).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, &c)| c > 1).take(10).collect();
    assert!(dups.is_empty(), "names listed more than once: {dups:?}");
    let stable: HashSet<String> = (0..n).map(|i| format!("e{i:07}")).collect();
    let missing: Vec<_> = stable
        .iter()
        .filter(|s| !seen.contains_key(*s))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "entries never listed (first 10): {missing:?}"
    );
    let strange: Vec<_> = seen
        .keys()
        .filter(|k| !stable.contains(*k) && !k.starts_with("churn") && *k != "." && *k != "..")
        .take(10)
        .collect();
    assert!(strange.is_empty(), "names that never existed: {strange:?}");
    assert!(seen.contains_key(".") && seen.contains_key(".."));
}

#[test]
fn big_directory_lists_completely_while_changing() {
    list_completely_while_changing(20_000);
}

#[test]
#[ignore = "a million entries: run on demand with --ignored"]
fn million_entry_directory_lists_completely_while_changing() {
    list_completely_while_changing(1_000_000);
}
