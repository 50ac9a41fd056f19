//! A fault proxy: one TCP listener on loopback in front of one real server
//! (a link, e.g. a mount → MDS), whose traffic a test can pass, delay, drop
//! or cut on command, for partitions and slow links with real processes.
//!
//! - `Pass`: bytes flow both ways.
//! - `Delay(d)`: every piece read is written on `d` later (order is kept).
//! - `Drop`: connections stay open but every byte is thrown away, both ways
//!   (a black hole: the peer waits, as behind a partition without resets).
//! - `Cut`: every open connection is reset, and new ones are reset at once.
//!
//! The proxy runs on its own tokio runtime thread; dropping it stops it and
//! closes everything it opened.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Drop,
    Cut,
}

pub struct FaultProxy {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    mode: Arc<watch::Sender<Mode>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `target`.
    pub fn start(target: &str) -> FaultProxy {
        let target: SocketAddr = target
            .parse()
            .unwrap_or_else(|e| panic!("proxy target {target}: {e}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("proxy bind");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(Mode::Pass);
        let open = Arc::new(AtomicUsize::new(0));
        rt.spawn(accept_loop(listener, target, rx, open.clone()));
        FaultProxy {
            addr,
            open,
            mode: Arc::new(tx),
            rt: Some(rt),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Connections open through the proxy now (0 soon after a cut).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    open: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *mode.borrow() == Mode::Cut {
            linger_zero(client.as_raw_fd());
            drop(client);
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        let open = open.clone();
        let mode = mode.clone();
        tokio::spawn(async move {
            connection(client, target, mode).await;
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// One proxied connection: two pumps, until either side ends or a cut.
async fn connection(client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(target).await else {
        linger_zero(client.as_raw_fd());
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let fds = [client.as_raw_fd(), server.as_raw_fd()];
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let mut up = tokio::spawn(pump(cr, sw, mode.clone()));
    let mut down = tokio::spawn(pump(sr, cw, mode.clone()));
    loop {
        tokio::select! {
            _ = &mut up => break,
            _ = &mut down => break,
            changed = mode.changed() => {
                if changed.is_err() {
                    break;
                }
                if *mode.borrow() == Mode::Cut {
                    // Both sockets are still open (the pumps own them):
                    // closing them after this resets both connections.
                    for fd in fds {
                        linger_zero(fd);
                    }
                    break;
                }
            }
        }
    }
    up.abort();
    down.abort();
}

/// SO_LINGER 0: the socket's close sends a reset, as a cut link's peer sees.
fn linger_zero(fd: std::os::fd::RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: fd is an open socket owned by this proxy; the struct is sized right.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Copies one direction as the mode says, until either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let m = *mode.borrow();
        match m {
            Mode::Pass => {}
            // A duration: the delay is the fault this link injects.
            Mode::Delay(d) => tokio::time::sleep(d).await,
            // A cut is handled by the connection; until then, nothing passes.
            Mode::Drop | Mode::Cut => continue,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
