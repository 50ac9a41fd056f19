//! The weft-chunkd binary's contract: argument and data-dir errors, the
//! address file, the data-dir lock, a stable identity, clean exit on SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weft_testkit::chunkd::*;
use weft_testkit::wait_for_file;

fn spawn(data: &Path, addr_file: &Path, mds: &str) -> Child {
    Command::new(weft_testkit::bin("weft-chunkd"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--mds",
            mds,
            "--log-level",
            "warn",
        ])
        .arg("--data")
        .arg(data)
        .arg("--addr-file")
        .arg(addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The daemon's exit status; kills it and fails if it runs on past `secs`.
fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    weft_testkit::wait_exit(child, Duration::from_secs(secs)).unwrap_or_else(|| {
        child.kill().unwrap();
        panic!("weft-chunkd did not exit");
    })
}

fn stderr_of(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn data_dir_that_is_a_file_fails_before_serving() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let addr_file = t.path().join("addr");
    let mut child = spawn(&file, &addr_file, &dead_addr());
    let st = wait_exit(&mut child, 10);
    assert!(!st.success());
    let err = stderr_of(child);
    assert!(
        err.contains(file.to_str().unwrap()),
        "stderr names the path: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!addr_file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_locks_keeps_identity_and_exits_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data/nested"); // created on demand
    let addr_file = t.path().join("addr");
    let mds = dead_addr(); // the MDS never comes up: the daemon serves anyway
    let mut child = spawn(&data, &addr_file, &mds);
    let addr = wait_for_file(&addr_file, Duration::from_secs(10));
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let id1 = std::fs::read_to_string(data.join("chunkd.id")).unwrap();

    let mut c = client(&addr);
    c.write(write_req(0xfeed, 1, 123, b"persisted", &[]))
        .await
        .unwrap();
    assert_eq!(read(&mut c, 0xfeed, 123, 9).await.unwrap(), b"persisted");

    // A second daemon on the same dir is refused with a clear error.
    let addr_file2 = t.path().join("addr2");
    let mut second = spawn(&data, &addr_file2, &mds);
    assert!(!wait_exit(&mut second, 10).success());
    let err = stderr_of(second);
    assert!(err.contains("in use") && err.contains("LOCK"), "{err}");

    // SIGTERM: exit code 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = wait_exit(&mut child, 10);
    assert!(st.success(), "exit status {st:?}");

    // Restart (new port): same identity, same data.
    std::fs::remove_file(&addr_file).unwrap();
    let mut child = spawn(&data, &addr_file, &mds);
    let addr2 = wait_for_file(&addr_file, Duration::from_secs(10));
    assert_eq!(
        std::fs::read_to_string(data.join("chunkd.id")).unwrap(),
        id1
    );
    let mut c = client(&addr2);
    assert_eq!(read(&mut c, 0xfeed, 123, 9).await.unwrap(), b"persisted");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(wait_exit(&mut child, 10).success());
}
