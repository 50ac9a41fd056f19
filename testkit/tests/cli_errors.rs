//! Bad input gets a clear message and a non-zero exit, quickly.

use std::process::Command;
use std::time::{Duration, Instant};
use weft_testkit::{bin, require_fuse};

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("spawn");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn chunkd_refuses_a_data_dir_that_is_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let (code, msg) = run(Command::new(bin("weft-chunkd"))
        .args(["--listen", "127.0.0.1:0", "--mds", "127.0.0.1:1", "--data"])
        .arg(&file));
    assert_ne!(code, 0, "{msg}");
    assert!(
        msg.contains("not-a-dir"),
        "message should name the path: {msg}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"x",
        "the file must be left alone"
    );
}

#[test]
fn mds_rejects_a_bad_chunk_size() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, msg) = run(Command::new(bin("weft-mds"))
        .args(["--listen", "127.0.0.1:0", "--chunk-size", "1000", "--data"])
        .arg(tmp.path()));
    assert_ne!(code, 0);
    assert!(msg.contains("chunk-size"), "{msg}");
}

/// An address where nothing listens: bind a port, then free it.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    drop(l);
    a
}

#[test]
fn weftfs_gives_up_on_an_mds_that_does_not_answer() {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    for fg in [true, false] {
        let mut cmd = Command::new(bin("weftfs"));
        cmd.arg(dead_addr()).arg(tmp.path());
        if fg {
            cmd.arg("-f");
        }
        let t = Instant::now();
        let (code, msg) = run(&mut cmd);
        assert_ne!(code, 0, "{msg}");
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "took {:?}",
            t.elapsed()
        );
        assert!(
            msg.to_lowercase().contains("mds") || msg.contains("127.0.0.1"),
            "message should say what it could not reach: {msg}"
        );
        assert!(!weft_testkit::is_mounted(
            &std::fs::canonicalize(tmp.path()).unwrap()
        ));
    }
}

#[test]
fn weftfs_reports_a_missing_mount_point() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let (code, msg) = run(Command::new(bin("weftfs"))
        .arg("127.0.0.1:1")
        .arg(&missing)
        .arg("-f"));
    assert_ne!(code, 0);
    assert!(msg.contains("nope"), "{msg}");
}

#[test]
fn weftfs_names_an_unknown_option() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, msg) = run(Command::new(bin("weftfs"))
        .arg("127.0.0.1:1")
        .arg(tmp.path())
        .args(["-o", "rw,frobnicate=3"]));
    assert_ne!(code, 0);
    assert!(msg.contains("frobnicate"), "{msg}");
}

#[test]
fn weft_status_reports_an_unreachable_mds() {
    let (code, msg) = run(Command::new(bin("weft")).args(["status", "--mds", &dead_addr()]));
    assert_ne!(code, 0);
    assert!(msg.contains("cannot reach the MDS"), "{msg}");
}
