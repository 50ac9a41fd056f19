//! Mutual TLS with real processes: a cluster started with certificates from
//! one CA serves a mount, and refuses — logging and counting who and why —
//! a plaintext client, a certificate from another CA, an expired one, a role
//! that may not make the call (a client asking for status, a client
//! certificate registering as a chunk daemon). Outside callers drive the
//! documented contract: `weft certs init|issue` and `--tls-dir`.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use weft_testkit::{bin, pattern, read_all, test_ca, wait_until, TestCluster};

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("spawn");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn status(mds: &str, tls_dir: Option<&Path>) -> (bool, String) {
    let mut c = Command::new(bin("weft"));
    c.args(["status", "--mds", mds]);
    if let Some(d) = tls_dir {
        c.arg("--tls-dir").arg(d);
    }
    run(&mut c)
}

fn tls_cluster() -> TestCluster {
    TestCluster::start_with(3, |s| {
        s.chunk_size = Some(1 << 20);
        s.tls_ca = Some(test_ca());
    })
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand::random::<u32>())
}

fn mds_log(c: &TestCluster) -> String {
    std::fs::read_to_string(&c.cluster.mds.log).unwrap_or_default()
}

fn refusals_in(log: &str, needle: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("refused") && l.contains(needle))
        .count()
}

fn handshake_refusals(log: &str, why: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("connection refused") && l.contains(why))
        .count()
}

#[test]
fn a_tls_cluster_serves_its_mount_and_refuses_strangers() {
    let mut c = tls_cluster();
    let mds = c.mds_addr();
    let certs = c.cluster.spec.dir.join("certs");

    // The mount works over TLS, data and metadata alike.
    let mnt = c.mount();
    let data = pattern(3 << 20, 7);
    std::fs::write(mnt.join("f"), &data).unwrap();
    assert_eq!(
        Sha256::digest(read_all(&mnt.join("f"))),
        Sha256::digest(&data)
    );

    // An admin certificate of the cluster's CA may ask for status.
    let admin = test_ca().join("test-admin");
    let (ok, out) = status(&mds, Some(&admin));
    assert!(ok, "admin status failed: {out}");

    // Plaintext: the TLS handshake never happens, so nothing is served.
    let (ok, out) = status(&mds, None);
    assert!(!ok, "a plaintext status must fail: {out}");
    wait_until(
        "the MDS to log the plaintext refusal",
        Duration::from_secs(10),
        || handshake_refusals(&mds_log(&c), "corrupt message") > 0,
    );

    // The mount's client certificate is valid but not an admin's.
    let (ok, out) = status(&mds, Some(&certs.join("client-1")));
    assert!(!ok, "a client certificate must not get status: {out}");
    assert!(out.contains("refused"), "{out}");
    wait_until(
        "the MDS to log the refusal",
        Duration::from_secs(10),
        || refusals_in(&mds_log(&c), "client/client-1") > 0,
    );

    // A certificate from another CA, even with the admin role.
    let other = c.tmp.path().join("other-ca");
    let (ok, out) = run(Command::new(bin("weft"))
        .args(["certs", "init"])
        .arg(&other));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new(bin("weft"))
        .args(["certs", "issue"])
        .arg(&other)
        .args(["--role", "admin", "--name", "intruder"]));
    assert!(ok, "{out}");
    // It trusts the cluster's CA (ca.pem is no secret), so only the MDS's
    // check of its certificate stands in the way.
    std::fs::copy(certs.join("mds/ca.pem"), other.join("intruder/ca.pem")).unwrap();
    let (ok, out) = status(&mds, Some(&other.join("intruder")));
    assert!(!ok, "a certificate from another CA must be refused: {out}");
    wait_until(
        "the MDS to log the foreign certificate",
        Duration::from_secs(10),
        || {
            // Both CAs are named alike, so rustls checks the signature against
            // the wrong issuer (BadSignature); named apart, it is UnknownIssuer.
            let log = mds_log(&c);
            handshake_refusals(&log, "BadSignature") + handshake_refusals(&log, "UnknownIssuer") > 0
        },
    );

    // An expired admin certificate from the right CA.
    let expired = unique("expired");
    let (ok, out) = run(Command::new(bin("weft"))
        .args(["certs", "issue"])
        .arg(test_ca())
        .args(["--role", "admin", "--name", &expired, "--days", "-1"]));
    assert!(ok, "{out}");
    let (ok, out) = status(&mds, Some(&test_ca().join(&expired)));
    assert!(!ok, "an expired certificate must be refused: {out}");
    wait_until(
        "the MDS to log the expired certificate",
        Duration::from_secs(10),
        || handshake_refusals(&mds_log(&c), "expired") > 0,
    );

    // After all that the cluster is unchanged and still serves the mount.
    assert_eq!(
        Sha256::digest(read_all(&mnt.join("f"))),
        Sha256::digest(&data)
    );
}

/// A chunk daemon process we started, killed by its PID when dropped.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_client_certificate_cannot_register_a_chunk_daemon() {
    let mut c = tls_cluster();
    let mds = c.mds_addr();
    // Issue the mount's client certificate by mounting once.
    c.mount();
    let client_cert: PathBuf = c.cluster.spec.dir.join("certs/client-1");
    let data = c.tmp.path().join("rogue-data");
    let log = c.tmp.path().join("rogue.log");
    let out = std::fs::File::create(&log).unwrap();
    let _rogue = Spawned(
        Command::new(bin("weft-chunkd"))
            .args(["--listen", "127.0.0.1:0", "--mds", &mds, "--data"])
            .arg(&data)
            .arg("--tls-dir")
            .arg(&client_cert)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    wait_until(
        "the MDS to refuse the rogue registration",
        Duration::from_secs(20),
        || {
            mds_log(&c).lines().any(|l| {
                l.contains("refused") && l.contains("client/client-1") && l.contains("Register")
            })
        },
    );
    let s = c.cluster.status().unwrap();
    assert_eq!(
        s.chunkds.len(),
        3,
        "the rogue daemon must not be registered: {:?}",
        s.chunkds
    );
}

#[test]
fn a_plaintext_daemon_will_not_listen_beyond_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    // Refused before it binds, so nothing listens on the wildcard address.
    let (ok, out) = run(Command::new(bin("weft-mds"))
        .args(["--listen", "0.0.0.0:0", "--data"])
        .arg(tmp.path()));
    assert!(!ok, "{out}");
    assert!(out.contains("without TLS"), "{out}");
}
