//! Test harness: real weft daemons on loopback, each cluster in its own temp
//! directory, stopped by PID when the test ends (see `weft_cli::cluster`).
//!
//! Tests need the binaries built first (`cargo build --workspace`; the README's
//! test command does it) and, for mounts, /dev/fuse and root. With
//! `WEFT_TEST_TLS=1` every test cluster runs with mutual TLS (see `test_ca`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod chunkd;
pub mod http;
pub mod inproc;
pub mod mds;
pub mod proxy;
pub mod wait;

pub use wait::{
    poll_every, poll_until, poll_until_async, wait_exit, wait_for_file, wait_until,
    wait_until_async,
};

pub use weft_cli::cluster::{is_mounted, ClusterSpec, LocalCluster};

/// target/<profile>/, where cargo puts the workspace's binaries; test
/// executables live one level down in deps/.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    for bin in ["weft-mds", "weft-chunkd", "weftfs", "weft"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing from {}: build the workspace first (cargo build --workspace)",
            bin,
            dir.display()
        );
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// `weft` (the admin tool), with this process's admin certificate when the
/// test clusters run with TLS.
pub fn weft_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(bin("weft"));
    if let Some(t) = weft_proto::net::tls() {
        c.arg("--tls-dir").arg(&t.dir);
    }
    c
}

/// Fails (never skips) when FUSE is unavailable: a passing mount test must mean a real mount.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the mount tests need FUSE (modprobe fuse, or a machine/container with /dev/fuse)"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "the mount tests must run as root (they mount with mount(2))"
    );
}

/// The test cluster CA (made on first use in target/<profile>/test-ca), with the process configured to make its own
/// calls (status, fsck) with an admin certificate from it. Every TLS test
/// cluster of the process issues its daemons' certificates from this CA.
pub fn test_ca() -> PathBuf {
    static CA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        // Beside the binaries, reused by later runs (no temp dir left behind per process).
        let dir = bin_dir().join("test-ca");
        let admin = weft_cli::certs::ensure(
            &dir,
            &dir.join("test-admin"),
            weft_proto::identity::Role::Admin,
            "test-admin",
        )
        .expect("test CA");
        weft_proto::net::configure_dir(Some(&admin)).expect("admin identity");
        dir
    })
    .clone()
}

/// A cluster in a temp dir, removed (after every process is stopped) on drop.
pub struct TestCluster {
    pub cluster: LocalCluster,
    pub tmp: tempfile::TempDir,
}

/// One chunk daemon of a test cluster.
#[derive(Clone, Debug)]
pub struct ChunkdSpec {
    pub rack: &'static str,
    /// `--capacity` in bytes; None is the whole disk.
    pub capacity: Option<u64>,
}

impl Default for ChunkdSpec {
    fn default() -> Self {
        ChunkdSpec {
            rack: "default",
            capacity: None,
        }
    }
}

/// The one way tests build a cluster: an MDS and chunk daemons either as
/// real processes (`start`: a `TestCluster`, mountable) or inside the test
/// process (`start_in_process`: an `inproc::InProcCluster`, no FUSE, each
/// daemon's store at hand). Unset options keep each kind's defaults.
#[derive(Clone, Debug, Default)]
pub struct ClusterBuilder {
    chunkds: Vec<ChunkdSpec>,
    chunk_size: Option<u64>,
    replicas: Option<u32>,
    dead_after: Option<Duration>,
}

impl ClusterBuilder {
    /// `n` more chunk daemons with default specs.
    pub fn chunkds(mut self, n: usize) -> Self {
        self.chunkds
            .extend(std::iter::repeat_n(ChunkdSpec::default(), n));
        self
    }

    /// One more chunk daemon.
    pub fn chunkd(mut self, spec: ChunkdSpec) -> Self {
        self.chunkds.push(spec);
        self
    }

    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = Some(bytes);
        self
    }

    /// Replica target; default min(3, chunk daemons).
    pub fn replicas(mut self, n: u32) -> Self {
        self.replicas = Some(n);
        self
    }

    /// How long the MDS waits before declaring a silent daemon dead (also
    /// how long after its start it waits for daemons before placing chunks).
    pub fn dead_after(mut self, d: Duration) -> Self {
        self.dead_after = Some(d);
        self
    }

    /// Real processes on loopback, each in the cluster's temp dir.
    pub fn start(self) -> TestCluster {
        self.start_with(|_| {})
    }

    /// `start`, with `tweak` applied last to the process cluster's spec.
    pub fn start_with(self, tweak: impl FnOnce(&mut ClusterSpec)) -> TestCluster {
        let tmp = tempfile::Builder::new()
            .prefix("weft-test-")
            .tempdir()
            .expect("tempdir");
        let mut spec = ClusterSpec::new(tmp.path().join("cluster"), self.chunkds.len());
        spec.bin_dir = bin_dir();
        spec.heartbeat_ms = Some(200);
        spec.dead_after_ms = Some(self.dead_after.map_or(1500, |d| d.as_millis() as u64));
        spec.chunk_size = self.chunk_size;
        spec.replicas = self.replicas;
        if self.chunkds.iter().any(|c| c.rack != "default") {
            spec.racks = self.chunkds.iter().map(|c| c.rack.to_string()).collect();
        }
        if self.chunkds.iter().any(|c| c.capacity.is_some()) {
            spec.capacities = self.chunkds.iter().map(|c| c.capacity).collect();
        }
        spec.log_level = "info".into();
        if std::env::var_os("WEFT_TEST_TLS").is_some_and(|v| v == "1") {
            spec.tls_ca = Some(test_ca());
        }
        // scripts/test reruns the mount suites with an MDS group underneath.
        if let Some(n) = std::env::var("WEFT_TEST_MDS_NODES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            spec.mds_nodes = n;
        }
        tweak(&mut spec);
        let cluster = LocalCluster::start(spec).unwrap_or_else(|e| panic!("cluster start: {e:#}"));
        TestCluster { cluster, tmp }
    }

    /// The MDS and chunk daemons inside this process, on a runtime of their
    /// own (see `inproc`); returns once the MDS counts every daemon alive.
    pub async fn start_in_process(self) -> inproc::InProcCluster {
        inproc::InProcCluster::start(self).await
    }
}

impl TestCluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    pub fn start(chunkds: usize, chunk_size: u64) -> TestCluster {
        Self::builder()
            .chunkds(chunkds)
            .chunk_size(chunk_size)
            .start()
    }

    pub fn start_with(chunkds: usize, tweak: impl FnOnce(&mut ClusterSpec)) -> TestCluster {
        Self::builder().chunkds(chunkds).start_with(tweak)
    }

    /// Mounts at <tmp>/mnt<N> and returns the mount point.
    pub fn mount(&mut self) -> PathBuf {
        self.mount_with(&[])
    }

    pub fn mount_with(&mut self, options: &[&str]) -> PathBuf {
        require_fuse();
        let path = self
            .tmp
            .path()
            .join(format!("mnt{}", self.cluster.mounts.len() + 1));
        self.cluster
            .mount(&path, options)
            .unwrap_or_else(|e| panic!("mount: {e:#}"));
        self.cluster.mounts.last().unwrap().path.clone()
    }

    pub fn mds_addr(&self) -> String {
        self.cluster.mds_addr().to_string()
    }
}

impl TestCluster {
    /// A capability for `chunk_id` at `version`, signed with the cluster's
    /// key as the MDS would sign it, for tests that talk to chunk daemons
    /// directly (as an operator holding the key could); None when the
    /// cluster runs without capabilities.
    pub fn cap(&self, chunk_id: u64, version: u64, write: bool) -> Option<weft_proto::ChunkCap> {
        let ca = self
            .cluster
            .spec
            .tls_ca
            .as_ref()
            .filter(|_| self.cluster.spec.caps)?;
        let keys = weft_proto::caps::KeyFile::load(&ca.join(weft_cli::certs::CAP_KEY_FILE))
            .expect("the cluster's capability key");
        let mode = if write {
            weft_proto::caps::Mode::Write
        } else {
            weft_proto::caps::Mode::Read
        };
        let expires = weft_proto::caps::unix_ms() + 600_000;
        Some(keys.ring().sign(chunk_id, version, mode, expires))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.cluster.stop();
    }
}

/// The SHA-256 of `data` in hex: what a test compares to say two byte
/// strings (written, read back) are the same.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Corrupts one byte of a file on disk, as a bad disk would (xor 0x40, then
/// synced): what scrub, reads and replay must notice.
pub fn flip_byte(path: &Path, pos: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8];
    f.read_exact_at(&mut b, pos).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, pos).unwrap();
    f.sync_all().unwrap();
}

/// Opens an existing file for reading and writing.
pub fn open_rw(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

/// fstat(2) of an open file: the errno on failure.
pub fn fstat(f: &std::fs::File) -> Result<libc::stat, i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: stat is plain data; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(f.as_raw_fd(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(last_errno())
    }
}

/// lseek(2) (SEEK_DATA and SEEK_HOLE included): the new offset or the errno.
pub fn lseek(f: &std::fs::File, offset: i64, whence: i32) -> Result<i64, i32> {
    use std::os::fd::AsRawFd;
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset, whence) };
    if r >= 0 {
        Ok(r)
    } else {
        Err(last_errno())
    }
}

/// The errno of the last failed system call on this thread.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Bytes of all regular files under `dir` whose name ends with `suffix`.
pub fn bytes_under(dir: &Path, suffix: &str) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.is_dir() {
            total += bytes_under(&p, suffix);
        } else if p.to_string_lossy().ends_with(suffix) {
            total += md.len();
        }
    }
    total
}

/// Deterministic pseudo-random bytes (a fixed seed, so a failure reproduces).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn read_all(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    v
}

/// Runs a shell command; panics with its output if it fails.
pub fn sh(dir: &Path, script: &str) -> String {
    let out = std::process::Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "`{script}` failed in {}:\nstdout: {stdout}\nstderr: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Where mount(8)'s helpers find `weftfs`: mount.fuse3 runs it through
/// /bin/sh with no PATH, so sh's default path applies.
const HELPER_LINK: &str = "/usr/local/sbin/weftfs";
static HELPER_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// While alive, /usr/local/sbin/weftfs is a symlink to the weftfs under test,
/// so `mount -t fuse.weftfs` and `mount -o remount` run this build. Tests in
/// one process take turns; a regular file at that path is never replaced.
pub struct WeftfsInstalled {
    _turn: std::sync::MutexGuard<'static, ()>,
}

pub fn install_weftfs() -> WeftfsInstalled {
    let turn = HELPER_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let link = Path::new(HELPER_LINK);
    if let Ok(md) = std::fs::symlink_metadata(link) {
        assert!(
            md.file_type().is_symlink(),
            "{HELPER_LINK} is a real file: not replacing it"
        );
        std::fs::remove_file(link).unwrap();
    }
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(bin("weftfs"), link).unwrap();
    WeftfsInstalled { _turn: turn }
}

impl Drop for WeftfsInstalled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER_LINK);
    }
}
