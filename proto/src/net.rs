//! Every weft gRPC connection and server is made here, with one set of
//! HTTP/2 settings (windows, keepalive, frame size) and, when this process was
//! given a certificate directory, mutual TLS: clients verify the server's
//! certificate against the cluster CA and the name [`SERVER_NAME`] and present
//! their own; servers require a client certificate from the same CA and put
//! each call through the [`gate`](crate::gate).
//!
//! The TLS setting is per process (a daemon or client has one identity), set
//! once at start by [`configure`] from `--tls-dir`; without it every link is
//! plaintext.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server};

use crate::gate::GateLayer;
use crate::identity::{TlsDir, SERVER_NAME};

static TLS: OnceLock<Option<Arc<TlsDir>>> = OnceLock::new();

/// Sets this process's TLS identity (None: plaintext). Only the first call
/// counts; a later different one is an error.
pub fn configure(tls: Option<TlsDir>) -> Result<(), String> {
    let want = tls.map(Arc::new);
    let same =
        |a: &Option<Arc<TlsDir>>| a.as_ref().map(|t| &t.dir) == want.as_ref().map(|t| &t.dir);
    let got = TLS.get_or_init(|| want.clone());
    if same(got) {
        Ok(())
    } else {
        Err("TLS was already configured differently in this process".into())
    }
}

/// Loads `--tls-dir` (if given) and makes it this process's identity.
pub fn configure_dir(dir: Option<&std::path::Path>) -> Result<(), String> {
    let tls = dir.map(TlsDir::load).transpose()?;
    configure(tls)
}

/// This process's TLS identity, if TLS is on.
pub fn tls() -> Option<&'static TlsDir> {
    TLS.get().and_then(|t| t.as_deref())
}

/// Refuses a plaintext listener on a non-loopback address unless `insecure`,
/// and logs how the daemon is exposed.
pub fn check_listen(addr: SocketAddr, insecure: bool) -> Result<(), String> {
    match tls() {
        Some(t) => {
            tracing::info!(identity = %t.me, dir = %t.dir.display(), "mutual TLS on");
            Ok(())
        }
        None if addr.ip().is_loopback() => {
            tracing::warn!(%addr, "TLS off (no --tls-dir): plaintext, unauthenticated; listening on loopback only");
            Ok(())
        }
        None if insecure => {
            tracing::warn!(%addr, "TLS off and --insecure: anyone who can reach this address can do anything");
            Ok(())
        }
        None => Err(format!(
            "refusing to listen on {addr} without TLS: give --tls-dir (see `weft certs`), listen on 127.0.0.1, or pass --insecure"
        )),
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily usable endpoint for `addr` ("host:port" or an http(s):// URI)
/// with weft's settings and, if configured, TLS.
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    let hostport = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    let scheme = if tls().is_some() { "https" } else { "http" };
    let ep = Endpoint::from_shared(format!("{scheme}://{hostport}"))
        .map_err(|e| format!("bad address '{addr}': {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // Notice a hung peer (and retry) rather than wait on a dead socket.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        // Big receive windows: with HTTP/2's default 64 KiB a 128 KiB chunk
        // read stalls on window updates every time.
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(64 << 20));
    match tls() {
        None => Ok(ep),
        Some(t) => ep
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&t.ca_pem))
                    .identity(Identity::from_pem(&t.cert_pem, &t.key_pem))
                    .domain_name(SERVER_NAME),
            )
            .map_err(|e| format!("TLS for {addr}: {e}")),
    }
}

/// A tonic server with weft's settings, TLS if configured, and the gate.
pub fn server(
) -> Result<Server<tower::layer::util::Stack<GateLayer, tower::layer::util::Identity>>, String> {
    // Checked now, so a bad certificate directory stops the daemon at start.
    if let Some(t) = tls() {
        crate::accept::server_config(t)?;
    }
    let b = Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(64 << 20)
        .max_frame_size(Some(1 << 20));
    Ok(b.layer(GateLayer {
        tls: tls().is_some(),
    }))
}

/// The accepted connections of `listener` (TLS handshakes done, failures
/// refused) with TCP_NODELAY set on each; pass to the server from [`server`].
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<crate::accept::Conn>> {
    let cfg = tls().map(|t| crate::accept::server_config(t).expect("checked by server()"));
    crate::accept::incoming(listener, cfg)
}

/// A lazily connected channel to `addr` with weft's settings (see [`endpoint`]).
pub fn lazy(addr: &str) -> Result<Channel, String> {
    Ok(Channel::from(endpoint(addr)?.connect_lazy()))
}

/// A tonic channel that stamps every call with the caller's request id
/// ([`reqid`](crate::reqid)); every weft client talks through one.
#[derive(Clone, Debug)]
pub struct Channel(tonic::transport::Channel);

impl From<tonic::transport::Channel> for Channel {
    fn from(c: tonic::transport::Channel) -> Channel {
        Channel(c)
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::transport::channel::ResponseFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(id) = crate::reqid::current() {
            if let Ok(v) = http::HeaderValue::from_str(&crate::reqid::format(id)) {
                req.headers_mut().insert(crate::reqid::HEADER, v);
            }
        }
        tower::Service::call(&mut self.0, req)
    }
}

/// One lazily connected channel per address, reused by every call to it.
pub struct Pool {
    channels: Mutex<HashMap<String, Channel>>,
    call_timeout: Option<Duration>,
}

impl Pool {
    /// `call_timeout` bounds each call made on the pool's channels.
    pub fn new(call_timeout: Option<Duration>) -> Pool {
        Pool {
            channels: Mutex::new(HashMap::new()),
            call_timeout,
        }
    }

    /// Must be called inside the tokio runtime (a new channel spawns its worker).
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock();
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let mut ep = endpoint(addr)?;
        if let Some(t) = self.call_timeout {
            ep = ep.timeout(t);
        }
        let c = Channel::from(ep.connect_lazy());
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
