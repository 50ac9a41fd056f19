//! A whole weft cluster on one machine, as child processes: one weft-mds,
//! N weft-chunkd and any number of weftfs mounts, each with its own
//! directory under one root, each on a free loopback port. `weft up` runs
//! one for a user; the tests run many side by side.
//!
//! Every process is started here and stopped here by its PID (SIGTERM, then
//! SIGKILL if it lingers), never by name, so parallel clusters never touch
//! each other's processes.

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft_proto::identity::Role;
use weft_proto::pb;

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Root for all state: `mds/`, `chunkd-N/`, `run/` (addresses), `logs/`.
    pub dir: PathBuf,
    pub chunkds: usize,
    pub chunk_size: Option<u64>,
    /// Replica target; default min(3, chunkds).
    pub replicas: Option<u32>,
    /// Where weft-mds, weft-chunkd and weftfs live.
    pub bin_dir: PathBuf,
    pub heartbeat_ms: Option<u64>,
    pub dead_after_ms: Option<u64>,
    /// Per-daemon `--capacity`, if set.
    pub capacity: Option<u64>,
    /// Racks by daemon index (cycled); empty for none.
    pub racks: Vec<String>,
    pub log_level: String,
    /// Per-daemon `--capacity` by index, winning over `capacity`.
    pub capacities: Vec<Option<u64>>,
    /// MDS `--lease-ms`.
    pub lease_ms: Option<u64>,
    /// Chunk daemons' `--scrub-interval` (seconds).
    pub scrub_interval: Option<u64>,
    /// Further weft-mds flags (e.g. `--lock-expiry-secs 2` in tests).
    pub mds_args: Vec<String>,
    /// Addresses listed before the MDS's own wherever the cluster names the
    /// MDS (chunk daemons' --mds, mount sources, status): tests of clients
    /// that move past MDS nodes that do not answer.
    pub extra_mds_addrs: Vec<String>,
    /// Every process serves metrics over HTTP on a free loopback port
    /// (`Proc::http`); the MDS also its status page.
    pub http: bool,
    /// Mutual TLS with certificates from the CA in this directory (made if
    /// missing); each process gets its own under `dir/certs/`. The caller's
    /// own admin calls need this process configured with an admin
    /// certificate of the same CA (`weft_proto::net::configure`).
    pub tls_ca: Option<PathBuf>,
    /// MDS nodes: 1 runs a single MDS as before; 3 or 5 run an MDS group
    /// (`--node-id`, `--peers`), node 1 being `LocalCluster::mds` and the
    /// others `LocalCluster::mds_peers`.
    pub mds_nodes: usize,
    /// With `tls_ca`: chunk capabilities too (the CA's `cap.key`). On by default.
    pub caps: bool,
}

impl ClusterSpec {
    pub fn new(dir: impl Into<PathBuf>, chunkds: usize) -> Self {
        ClusterSpec {
            dir: dir.into(),
            chunkds,
            chunk_size: None,
            replicas: None,
            bin_dir: default_bin_dir(),
            heartbeat_ms: None,
            dead_after_ms: None,
            capacity: None,
            racks: Vec::new(),
            log_level: "info".into(),
            capacities: Vec::new(),
            lease_ms: None,
            scrub_interval: None,
            mds_args: Vec::new(),
            extra_mds_addrs: Vec::new(),
            http: false,
            tls_ca: None,
            mds_nodes: 1,
            caps: true,
        }
    }
}

/// The directory of the running executable: the binaries are built side by side.
pub fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub addr: String,
    pub data: PathBuf,
    pub log: PathBuf,
    /// Its HTTP address (metrics), when the cluster serves them.
    pub http: Option<String>,
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `sig` to this process only.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL, as a crash would.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

pub struct Mount {
    pub proc: Proc,
    pub path: PathBuf,
}

pub struct LocalCluster {
    pub spec: ClusterSpec,
    /// The MDS, or node 1 of the MDS group.
    pub mds: Proc,
    /// Nodes 2.. of the MDS group (empty for a single MDS).
    pub mds_peers: Vec<Proc>,
    /// MDS group nodes removed from the group (`retire_mds_node`): left out
    /// of every list the cluster names the group by.
    pub retired_mds: Vec<u64>,
    pub chunkds: Vec<Proc>,
    pub mounts: Vec<Mount>,
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if t.elapsed() > timeout {
            bail!("timed out after {:?} waiting for {what}", timeout);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits for a daemon to write the address it listens on.
fn wait_addr_file(proc: &mut Proc, path: &Path) -> Result<String> {
    let t = Instant::now();
    loop {
        if let Ok(s) = fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return Ok(s.trim().to_string());
            }
        }
        if !proc.running() {
            bail!("{} exited during startup:\n{}", proc.name, proc.log_tail());
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("{} did not start listening within 30 s", proc.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl LocalCluster {
    /// Starts the MDS and chunk daemons and waits until every daemon has registered.
    pub fn start(spec: ClusterSpec) -> Result<Self> {
        for d in ["run", "logs"] {
            fs::create_dir_all(spec.dir.join(d))
                .with_context(|| format!("cannot create {}", spec.dir.join(d).display()))?;
        }
        let mut c = LocalCluster {
            mds: Proc {
                name: "weft-mds".into(),
                child: None,
                addr: String::new(),
                data: spec.dir.join("mds"),
                log: spec.dir.join("logs/mds.log"),
                http: None,
            },
            mds_peers: Vec::new(),
            retired_mds: Vec::new(),
            chunkds: Vec::new(),
            mounts: Vec::new(),
            spec,
        };
        if c.spec.mds_nodes > 1 {
            c.start_group()?;
        } else {
            c.start_mds(None)?;
        }
        for i in 0..c.spec.chunkds {
            let p = Proc {
                name: format!("weft-chunkd-{}", i + 1),
                child: None,
                addr: String::new(),
                data: c.spec.dir.join(format!("chunkd-{}", i + 1)),
                log: c.spec.dir.join(format!("logs/chunkd-{}.log", i + 1)),
                http: None,
            };
            c.chunkds.push(p);
            c.start_chunkd(i)?;
        }
        c.wait_alive(c.spec.chunkds, Duration::from_secs(30))?;
        Ok(c)
    }

    fn bin(&self, name: &str) -> PathBuf {
        let p = self.spec.bin_dir.join(name);
        if p.exists() {
            p
        } else {
            PathBuf::from(name)
        }
    }

    /// `--tls-dir DIR` for process `name` of `role`, when TLS is on; for
    /// the MDS and chunk daemons also `--cap-key` (the CA's `cap.key`):
    /// with TLS, chunk capabilities are on too.
    fn tls_args(&self, role: Role, name: &str) -> Result<Vec<String>> {
        let Some(ca) = &self.spec.tls_ca else {
            return Ok(Vec::new());
        };
        let dir = crate::certs::ensure(ca, &self.spec.dir.join("certs").join(name), role, name)?;
        let mut args = vec!["--tls-dir".into(), dir.display().to_string()];
        if matches!(role, Role::Mds | Role::Chunkd) && self.spec.caps {
            let key = crate::certs::ensure_cap_key(ca)?;
            args.extend(["--cap-key".into(), key.display().to_string()]);
        }
        Ok(args)
    }

    fn spawn(&self, bin: &str, args: &[String], log: &Path) -> Result<Child> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        Command::new(self.bin(bin))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (looked in {})",
                    bin,
                    self.spec.bin_dir.display()
                )
            })
    }

    /// Picks a port for every MDS node (kept across restarts: it is the
    /// node's address in the group) and starts them all.
    fn start_group(&mut self) -> Result<()> {
        let n = self.spec.mds_nodes;
        // The group's addresses are part of its state: kept for the next start.
        let saved = self.spec.dir.join("mds-group.addrs");
        let mut addrs: Vec<String> = fs::read_to_string(&saved)
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default();
        if addrs.len() != n {
            addrs.clear();
            for _ in 0..n {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                addrs.push(l.local_addr()?.to_string());
            }
            fs::write(&saved, addrs.join("\n"))?;
        }
        self.mds.addr = addrs[0].clone();
        for (i, addr) in addrs.iter().enumerate().skip(1) {
            self.mds_peers.push(Proc {
                name: format!("weft-mds-{}", i + 1),
                child: None,
                addr: addr.clone(),
                data: self.spec.dir.join(format!("mds-{}", i + 1)),
                log: self.spec.dir.join(format!("logs/mds-{}.log", i + 1)),
                http: None,
            });
        }
        for id in 1..=n as u64 {
            self.start_mds_node(id)?;
        }
        wait_for("an MDS group leader", Duration::from_secs(30), || {
            Ok(self.leader_id())
        })?;
        Ok(())
    }

    /// The MDS group's `--peers` value (its nodes not retired).
    pub fn peers_arg(&self) -> String {
        self.mds_ids()
            .into_iter()
            .map(|id| format!("{id}={}", self.mds_node_ref(id).addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ids of the MDS nodes (1 for a single MDS), retired ones left out.
    pub fn mds_ids(&self) -> Vec<u64> {
        (1..=1 + self.mds_peers.len() as u64)
            .filter(|id| !self.retired_mds.contains(id))
            .collect()
    }

    fn mds_node_ref(&self, id: u64) -> &Proc {
        if id <= 1 {
            &self.mds
        } else {
            &self.mds_peers[id as usize - 2]
        }
    }

    /// Starts a new MDS node, the next id, on a free port with an empty data
    /// directory and `--join` (it waits to be added: `weft mds add`);
    /// returns its id and address.
    pub fn add_mds_node(&mut self) -> Result<(u64, String)> {
        let id = self.mds_peers.len() as u64 + 2;
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?.to_string();
        drop(l);
        self.mds_peers.push(Proc {
            name: format!("weft-mds-{id}"),
            child: None,
            addr: addr.clone(),
            data: self.spec.dir.join(format!("mds-{id}")),
            log: self.spec.dir.join(format!("logs/mds-{id}.log")),
            http: None,
        });
        self.start_mds_node_with(id, &["--join"])?;
        Ok((id, addr))
    }

    /// Node `id`, removed from the group (`weft mds remove`), is stopped
    /// (SIGTERM: it must exit on its own, promptly and cleanly, with mounts
    /// still attached) and its data deleted, as an operator retiring the
    /// machine would.
    pub fn retire_mds_node(&mut self, id: u64) -> Result<()> {
        let node = self.mds_node(id);
        node.signal(Signal::SIGTERM);
        let t = Instant::now();
        while node.running() {
            if t.elapsed() > Duration::from_secs(30) {
                node.crash();
                bail!("{} did not stop within 30 s of SIGTERM", node.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut child) = node.child.take() {
            let status = child.wait()?;
            if !status.success() {
                bail!("{} stopped with {status}:\n{}", node.name, node.log_tail());
            }
        }
        let data = node.data.clone();
        if data.exists() {
            fs::remove_dir_all(&data)
                .with_context(|| format!("cannot delete {}", data.display()))?;
        }
        self.retired_mds.push(id);
        Ok(())
    }

    /// MDS node `id` (1-based).
    pub fn mds_node(&mut self, id: u64) -> &mut Proc {
        if id <= 1 {
            &mut self.mds
        } else {
            &mut self.mds_peers[id as usize - 2]
        }
    }

    /// Starts (or restarts) MDS group node `id` on its address with its data dir.
    pub fn start_mds_node(&mut self, id: u64) -> Result<()> {
        self.start_mds_node_with(id, &[])
    }

    /// `start_mds_node` with further flags (e.g. `--join`).
    pub fn start_mds_node_with(&mut self, id: u64, extra: &[&str]) -> Result<()> {
        let peers = self.peers_arg();
        let node = self.mds_node(id);
        let (addr, data, log) = (node.addr.clone(), node.data.clone(), node.log.clone());
        let mut args = vec![
            "--listen".into(),
            addr.clone(),
            "--data".into(),
            data.display().to_string(),
            "--node-id".into(),
            id.to_string(),
            "--peers".into(),
            peers,
            "--log-level".into(),
            self.spec.log_level.clone(),
            "--replicas".into(),
            self.spec
                .replicas
                .unwrap_or(3.min(self.spec.chunkds.max(1) as u32))
                .to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(cs) = self.spec.chunk_size {
            args.extend(["--chunk-size".into(), cs.to_string()]);
        }
        if let Some(h) = self.spec.heartbeat_ms {
            args.extend(["--heartbeat-ms".into(), h.to_string()]);
        }
        if let Some(d) = self.spec.dead_after_ms {
            args.extend(["--dead-after-ms".into(), d.to_string()]);
        }
        if let Some(l) = self.spec.lease_ms {
            args.extend(["--lease-ms".into(), l.to_string()]);
        }
        args.extend(self.spec.mds_args.iter().cloned());
        let name = if id == 1 {
            "mds".to_string()
        } else {
            format!("mds-{id}")
        };
        let http_file = self.http_args(&mut args, &name);
        args.extend(self.tls_args(Role::Mds, &name)?);
        let child = self.spawn("weft-mds", &args, &log)?;
        let node = self.mds_node(id);
        node.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if !node.running() {
                bail!("{} exited during startup:\n{}", node.name, node.log_tail());
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("{} did not start listening within 30 s", node.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(f) = http_file {
            let node = self.mds_node(id);
            node.http = Some(wait_addr_file(node, &f)?);
        }
        Ok(())
    }

    /// The MDS group's leader as its members report it: one that a majority
    /// of the nodes hears from (None while there is none, or for a single
    /// MDS that does not answer).
    pub fn leader_id(&self) -> Option<u64> {
        // Each node on its own, briefly: one may be paused or cut off.
        let addrs: Vec<String> = self
            .mds_ids()
            .into_iter()
            .map(|id| self.mds_node_ref(id).addr.clone())
            .collect();
        addrs.iter().find_map(|a| {
            let s = crate::admin::block_on(async {
                tokio::time::timeout(Duration::from_millis(1500), crate::admin::status(a)).await
            })
            .ok()?
            .ok()?;
            let leader = s
                .mds
                .iter()
                .find(|n| n.role == "leader" && n.id == s.leader)?;
            // A "leader" that no majority hears from is none: one cut off,
            // or a leader just restarted (openraft restores it as leader of
            // its old term until it hears of a newer one).
            let heard = s
                .mds
                .iter()
                .filter(|n| n.role == "leader" || n.role == "follower")
                .count();
            (heard * 2 > s.mds.len()).then_some(leader.id)
        })
    }

    /// Starts (or restarts) the MDS; `listen` pins the address, else a free port.
    pub fn start_mds(&mut self, listen: Option<&str>) -> Result<()> {
        let addr_file = self.spec.dir.join("run/mds.addr");
        let _ = fs::remove_file(&addr_file);
        let mut args = vec![
            "--listen".into(),
            listen.unwrap_or("127.0.0.1:0").to_string(),
            "--data".into(),
            self.mds.data.display().to_string(),
            "--addr-file".into(),
            addr_file.display().to_string(),
            "--log-level".into(),
            self.spec.log_level.clone(),
            "--replicas".into(),
            self.spec
                .replicas
                .unwrap_or(3.min(self.spec.chunkds.max(1) as u32))
                .to_string(),
        ];
        if let Some(cs) = self.spec.chunk_size {
            args.extend(["--chunk-size".into(), cs.to_string()]);
        }
        if let Some(h) = self.spec.heartbeat_ms {
            args.extend(["--heartbeat-ms".into(), h.to_string()]);
        }
        if let Some(d) = self.spec.dead_after_ms {
            args.extend(["--dead-after-ms".into(), d.to_string()]);
        }
        if let Some(l) = self.spec.lease_ms {
            args.extend(["--lease-ms".into(), l.to_string()]);
        }
        args.extend(self.spec.mds_args.iter().cloned());
        let http_file = self.http_args(&mut args, "mds");
        args.extend(self.tls_args(Role::Mds, "mds")?);
        let child = self.spawn("weft-mds", &args, &self.mds.log.clone())?;
        self.mds.child = Some(child);
        self.mds.addr = wait_addr_file(&mut self.mds, &addr_file)?;
        if let Some(f) = http_file {
            self.mds.http = Some(wait_addr_file(&mut self.mds, &f)?);
        }
        Ok(())
    }

    /// Starts (or restarts) chunk daemon `i` on a fresh port with its same data dir.
    pub fn start_chunkd(&mut self, i: usize) -> Result<()> {
        let addr_file = self.spec.dir.join(format!("run/chunkd-{}.addr", i + 1));
        let _ = fs::remove_file(&addr_file);
        let mut args = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data".into(),
            self.chunkds[i].data.display().to_string(),
            "--mds".into(),
            self.mds_list(),
            "--addr-file".into(),
            addr_file.display().to_string(),
            "--log-level".into(),
            self.spec.log_level.clone(),
        ];
        if !self.spec.racks.is_empty() {
            args.extend([
                "--rack".into(),
                self.spec.racks[i % self.spec.racks.len()].clone(),
            ]);
        }
        if let Some(cap) = self
            .spec
            .capacities
            .get(i)
            .copied()
            .flatten()
            .or(self.spec.capacity)
        {
            args.extend(["--capacity".into(), cap.to_string()]);
        }
        if let Some(s) = self.spec.scrub_interval {
            args.extend(["--scrub-interval".into(), s.to_string()]);
        }
        if let Some(h) = self.spec.heartbeat_ms {
            args.extend(["--heartbeat-ms".into(), h.to_string()]);
        }
        let http_file = self.http_args(&mut args, &format!("chunkd-{}", i + 1));
        args.extend(self.tls_args(Role::Chunkd, &format!("chunkd-{}", i + 1))?);
        let log = self.chunkds[i].log.clone();
        let child = self.spawn("weft-chunkd", &args, &log)?;
        self.chunkds[i].child = Some(child);
        self.chunkds[i].addr = wait_addr_file(&mut self.chunkds[i], &addr_file)?;
        if let Some(f) = http_file {
            self.chunkds[i].http = Some(wait_addr_file(&mut self.chunkds[i], &f)?);
        }
        Ok(())
    }

    /// `--http 127.0.0.1:0 --http-addr-file run/NAME.http` when the cluster
    /// serves metrics; the file to wait for.
    fn http_args(&self, args: &mut Vec<String>, name: &str) -> Option<PathBuf> {
        if !self.spec.http {
            return None;
        }
        let f = self.spec.dir.join(format!("run/{name}.http"));
        let _ = fs::remove_file(&f);
        args.extend([
            "--http".into(),
            "127.0.0.1:0".into(),
            "--http-addr-file".into(),
            f.display().to_string(),
        ]);
        Some(f)
    }

    pub fn mds_addr(&self) -> &str {
        &self.mds.addr
    }

    /// How clients name the MDS: its address (every node's, for a group),
    /// after `extra_mds_addrs`.
    pub fn mds_list(&self) -> String {
        let mut l = self.spec.extra_mds_addrs.clone();
        l.extend(
            self.mds_ids()
                .into_iter()
                .map(|id| self.mds_node_ref(id).addr.clone()),
        );
        l.join(",")
    }

    pub fn status(&self) -> Result<pb::StatusReply> {
        crate::admin::block_on(crate::admin::status(&self.mds_list()))
    }

    pub fn fsck(&self) -> Result<pb::FsckReply> {
        crate::admin::block_on(crate::admin::fsck(&self.mds_list()))
    }

    /// Waits until `n` chunk daemons are registered and alive.
    pub fn wait_alive(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_for(&format!("{n} live chunk daemons"), timeout, || {
            Ok(self
                .status()
                .ok()
                .filter(|s| s.chunkds.iter().filter(|d| d.alive).count() >= n)
                .map(|_| ()))
        })
    }

    /// Waits until fsck reports every chunk fully replicated.
    pub fn wait_replicated(&self, timeout: Duration) -> Result<pb::FsckReply> {
        wait_for("full replication", timeout, || {
            Ok(self.fsck().ok().filter(|f| f.problems.is_empty()))
        })
    }

    /// Mounts the cluster at `path` with weftfs in the foreground (so its PID is ours)
    /// and waits until the kernel shows the mount.
    pub fn mount(&mut self, path: &Path, options: &[&str]) -> Result<()> {
        let source = self.mds_list();
        self.mount_source(path, &source, options)
    }

    /// Like `mount`, naming the MDS as `source` (e.g. a proxy in front of it).
    pub fn mount_source(&mut self, path: &Path, source: &str, options: &[&str]) -> Result<()> {
        if !Path::new("/dev/fuse").exists() {
            bail!("/dev/fuse does not exist: weft needs FUSE (load the fuse module, or run where /dev/fuse is available)");
        }
        fs::create_dir_all(path)?;
        let n = self.mounts.len() + 1;
        let log = self.spec.dir.join(format!("logs/weftfs-{n}.log"));
        let mut args = vec![source.to_string(), path.display().to_string(), "-f".into()];
        let mut opts: Vec<String> = options.iter().map(|s| s.to_string()).collect();
        opts.push(format!("log={}", log.display()));
        let http_file = self.spec.dir.join(format!("run/weftfs-{n}.http"));
        if self.spec.http {
            let _ = fs::remove_file(&http_file);
            opts.push("http=127.0.0.1:0".into());
            opts.push(format!("http_addr_file={}", http_file.display()));
        }
        if let [_, dir] = &self.tls_args(Role::Client, &format!("client-{n}"))?[..] {
            opts.push(format!("tls_dir={dir}"));
        }
        args.extend(["-o".into(), opts.join(",")]);
        let child = self.spawn("weftfs", &args, &log)?;
        let mut proc = Proc {
            name: format!("weftfs-{n}"),
            child: Some(child),
            addr: source.to_string(),
            data: path.to_path_buf(),
            log,
            http: None,
        };
        let canon = fs::canonicalize(path)?;
        let t = Instant::now();
        while !is_mounted(&canon) {
            if !proc.running() {
                bail!(
                    "weftfs exited before the mount was ready:\n{}",
                    proc.log_tail()
                );
            }
            if t.elapsed() > Duration::from_secs(30) {
                proc.stop(Duration::from_secs(2));
                bail!("weftfs did not mount {} within 30 s", path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.spec.http {
            proc.http = Some(wait_addr_file(&mut proc, &http_file)?);
        }
        self.mounts.push(Mount { proc, path: canon });
        Ok(())
    }

    /// Unmounts mount `i` (like `umount`) and waits for its weftfs to exit.
    pub fn unmount(&mut self, i: usize) -> Result<()> {
        let mut m = self.mounts.remove(i);
        unmount_path(&m.path)?;
        let t = Instant::now();
        while m.proc.running() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        m.proc.stop(Duration::from_secs(2));
        Ok(())
    }

    /// Stops everything this cluster started: mounts first, then daemons.
    pub fn stop(&mut self) {
        for mut m in self.mounts.drain(..) {
            if is_mounted(&m.path) {
                let _ = unmount_path(&m.path);
            }
            m.proc.stop(Duration::from_secs(5));
            if is_mounted(&m.path) {
                let _ = nix::mount::umount2(&m.path, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        for c in &mut self.chunkds {
            c.stop(Duration::from_secs(5));
        }
        for p in &mut self.mds_peers {
            p.stop(Duration::from_secs(5));
        }
        self.mds.stop(Duration::from_secs(5));
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `path` (canonical) is a mount point, per /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo")
        .map(|s| {
            s.lines()
                .any(|l| l.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(&*want))
        })
        .unwrap_or(false)
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn unmount_path(path: &Path) -> Result<()> {
    nix::mount::umount(path).map_err(|e| anyhow!("umount {}: {e}", path.display()))
}
