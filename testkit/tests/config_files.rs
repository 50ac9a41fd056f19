//! `--config FILE` (TOML) for weft-mds, weft-chunkd and weftfs: the
//! commented examples in dist/config/ are valid and start real daemons,
//! flags win over the file, and an unknown key or a bad value stops the
//! program (exit 2) with an error naming the key and the file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use weft_testkit::mds::MdsProc;
use weft_testkit::{bin, wait_until};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("dist/config")
        .join(name)
}

fn status(addr: &str) -> weft_proto::pb::StatusReply {
    weft_cli::admin::block_on(weft_cli::admin::status(addr)).expect("status")
}

/// Runs `bin args` to completion: (exit code, stderr).
fn fails(bin_name: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin(bin_name)).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_examples_start_real_daemons_and_flags_win_over_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let http_file = tmp.path().join("mds.http");
    let mds_cfg = example("weft-mds.toml");
    // The example listens on 0.0.0.0 and named ports: the test's flags win.
    let mds = MdsProc::start(
        &tmp.path().join("mds"),
        &[
            "--config",
            mds_cfg.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--http-addr-file",
            http_file.to_str().unwrap(),
            "--replicas",
            "2",
        ],
    );
    let s = status(&mds.addr);
    assert_eq!(s.replicas, 2, "the flag wins over the file's replicas = 3");
    wait_until("the MDS's HTTP address", Duration::from_secs(10), || {
        http_file.exists()
    });

    let chunkd_cfg = example("weft-chunkd.toml");
    let addr_file = tmp.path().join("c.addr");
    let mut chunkd = Command::new(bin("weft-chunkd"))
        .args(["--config", chunkd_cfg.to_str().unwrap()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--mds",
            &mds.addr,
        ])
        .arg("--data")
        .arg(tmp.path().join("c"))
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--capacity")
        .arg("1G")
        .stderr(std::fs::File::create(tmp.path().join("c.log")).unwrap())
        .spawn()
        .unwrap();
    wait_until(
        "the chunk daemon to register",
        Duration::from_secs(30),
        || status(&mds.addr).chunkds.iter().any(|d| d.alive),
    );
    let d = status(&mds.addr).chunkds.remove(0);
    assert_eq!(d.rack, "rack1", "rack from the example file");
    assert_eq!(d.capacity, 1 << 30, "--capacity wins");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(chunkd.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    chunkd.wait().unwrap();

    // weftfs parses its example before anything else (-h then exits 0).
    let weftfs_cfg = example("weftfs.toml");
    let (code, err) = fails("weftfs", &["--config", weftfs_cfg.to_str().unwrap(), "-h"]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("x.toml");
    let f = file.to_str().unwrap();
    let data = tmp.path().join("d");
    let data = data.to_str().unwrap();
    let cases: [(&str, &str, &[&str], &str); 6] = [
        (
            "weft-mds",
            "replica = 2\n",
            &["--data", data],
            "unknown key 'replica'",
        ),
        (
            "weft-mds",
            "replicas = \"three\"\n",
            &["--data", data],
            "key 'replicas'",
        ),
        (
            "weft-chunkd",
            "scrub_intervall = 5\n",
            &[],
            "unknown key 'scrub_intervall'",
        ),
        (
            "weft-chunkd",
            "capacity = \"lots\"\n",
            &[],
            "key 'capacity'",
        ),
        (
            "weftfs",
            "data_cach = 1\n",
            &["h:1", "/mnt"],
            "unknown key 'data_cach'",
        ),
        (
            "weftfs",
            "readahead = \"far\"\n",
            &["h:1", "/mnt"],
            "key 'readahead'",
        ),
    ];
    for (program, text, args, want) in cases {
        std::fs::write(&file, text).unwrap();
        let mut all = vec!["--config", f];
        all.extend_from_slice(args);
        let (code, err) = fails(program, &all);
        assert_eq!(code, Some(2), "{program} with {text:?}: {err}");
        assert!(
            err.contains(f) && err.contains(want),
            "{program} with {text:?}: {err}"
        );
    }
    let (code, err) = fails(
        "weft-mds",
        &["--config", "/nonexistent/x.toml", "--data", data],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/x.toml"), "{err}");
}
