//! A lone weft-mds process for tests that drive the `Meta` API directly:
//! started on a data directory the test owns, stopped or SIGKILLed by PID,
//! restartable on the same address. Plus a small async client that sends
//! requests with an explicit (session, seq), so a test can replay a request
//! exactly as a client retrying after a lost reply would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use weft_proto::pb;
use weft_proto::pb::meta_reply::Result as R;
use weft_proto::pb::meta_request::Op;

pub struct MdsProc {
    pub child: Option<Child>,
    pub data: PathBuf,
    pub addr: String,
    pub log: PathBuf,
    pub args: Vec<String>,
}

impl MdsProc {
    /// Starts weft-mds on `data` (created if missing) on a free port, with
    /// `args` added to its command line; returns once it serves.
    pub fn start(data: &Path, args: &[&str]) -> MdsProc {
        let mut m = MdsProc {
            child: None,
            data: data.to_path_buf(),
            addr: "127.0.0.1:0".into(),
            log: data.with_extension("log"),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        m.restart().unwrap_or_else(|e| panic!("{e}"));
        m
    }

    /// (Re)starts on the same address (a free one the first time).
    pub fn restart(&mut self) -> Result<(), String> {
        let addr_file = self.data.with_extension("addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(crate::bin("weft-mds"))
            .arg("--listen")
            .arg(&self.addr)
            .arg("--data")
            .arg(&self.data)
            .arg("--addr-file")
            .arg(&addr_file)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn weft-mds: {e}"))?;
        let mut served = String::new();
        let mut exited = None;
        crate::poll_until(Duration::from_secs(60), || {
            served = std::fs::read_to_string(&addr_file).unwrap_or_default();
            exited = child.try_wait().ok().flatten();
            !served.is_empty() || exited.is_some()
        });
        if !served.is_empty() {
            self.addr = served.trim().to_string();
            self.child = Some(child);
            return Ok(());
        }
        if let Some(st) = exited {
            return Err(format!(
                "weft-mds exited ({st}) before serving:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("weft-mds did not start within 60 s".into())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a clean stop: the MDS checkpoints) and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if crate::wait_exit(&mut c, Duration::from_secs(60)).is_some() {
                return;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for MdsProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `weft-mds` with `args` (e.g. `--check`) and returns (exit code, stdout + stderr).
pub fn mds_tool(args: &[&str]) -> (i32, String) {
    let out = Command::new(crate::bin("weft-mds"))
        .args(args)
        .output()
        .expect("run weft-mds");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A `Meta` client that sends exactly the (session, seq) it is told.
#[derive(Clone)]
pub struct RawMeta {
    client: pb::meta_client::MetaClient<tonic::transport::Channel>,
}

/// What one call got: the result, or the errno.
pub type Answer = Result<R, i32>;

impl RawMeta {
    pub async fn connect(addr: &str) -> RawMeta {
        // Over TLS when this process has a certificate (net::configure).
        let ep = weft_proto::net::endpoint(addr).expect("endpoint");
        let mut conn = None;
        crate::wait_until_async(
            &format!("a connection to the MDS at {addr}"),
            Duration::from_secs(30),
            async || {
                conn = ep.connect().await.ok();
                conn.is_some()
            },
        )
        .await;
        RawMeta {
            client: pb::meta_client::MetaClient::new(conn.expect("connected")),
        }
    }

    pub async fn call(&self, session: u64, seq: u64, op: Op) -> Answer {
        self.call_as(pb::Caller::default(), session, seq, op).await
    }

    /// `call` on behalf of `caller` (uid, gid, groups) instead of root.
    pub async fn call_as(&self, caller: pb::Caller, session: u64, seq: u64, op: Op) -> Answer {
        let req = pb::MetaRequest {
            session,
            seq,
            caller: Some(caller),
            op: Some(op),
            wait_durable: false,
        };
        let reply = self
            .client
            .clone()
            .call(req)
            .await
            .unwrap_or_else(|s| panic!("MDS call failed in transport: {s}"))
            .into_inner();
        if reply.errno != 0 {
            Err(reply.errno)
        } else {
            Ok(reply.result.expect("a reply without errno has a result"))
        }
    }
}

pub fn create(parent: u64, name: &str, flags: i32) -> Op {
    Op::Create(pb::CreateReq {
        parent,
        name: name.as_bytes().to_vec(),
        mode: 0o644,
        umask: 0o022,
        flags: (flags | libc::O_CREAT | libc::O_RDWR) as u32,
    })
}

pub fn mkdir(parent: u64, name: &str) -> Op {
    Op::Mkdir(pb::MkdirReq {
        parent,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        umask: 0o022,
    })
}

pub fn lookup(parent: u64, name: &str) -> Op {
    Op::Lookup(pb::LookupReq {
        parent,
        name: name.as_bytes().to_vec(),
    })
}

pub fn getattr(ino: u64) -> Op {
    Op::Getattr(pb::GetAttrReq { ino })
}

pub fn unlink(parent: u64, name: &str) -> Op {
    Op::Unlink(pb::UnlinkReq {
        parent,
        name: name.as_bytes().to_vec(),
    })
}

pub fn rename(parent: u64, name: &str, new_parent: u64, new_name: &str) -> Op {
    Op::Rename(pb::RenameReq {
        parent,
        name: name.as_bytes().to_vec(),
        new_parent,
        new_name: new_name.as_bytes().to_vec(),
        flags: 0,
    })
}

/// The inode number of an Attr answer (panics on anything else).
pub fn ino_of(a: &Answer) -> u64 {
    match a {
        Ok(R::Attr(a)) => a.ino,
        other => panic!("expected an Attr, got {other:?}"),
    }
}
