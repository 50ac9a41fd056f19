//! The access gate in front of every weft gRPC server: with TLS on, each call
//! is let through only if the peer certificate's role may call that method
//! (the table in [`allowed`]); the verified [`Peer`] is put into the request's
//! extensions for the service to use. A refusal is logged with who, from where,
//! what and why, counted, and answered PERMISSION_DENIED before any handler runs,
//! so it changes nothing.
//!
//! With TLS off there is no identity to check and the gate lets all through;
//! such a daemon listens on loopback only unless told `--insecure`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use tracing::Instrument;

use crate::accept::ConnInfo;
use crate::reqid;

use crate::identity::{Peer, Role};

static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Why something was refused, for the `refused` metric of each daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A TLS handshake failed (plaintext, another CA, expired, no certificate).
    Connection,
    /// The certificate's role may not make the call (this gate).
    Role,
    /// The MDS's export rules (no rule, outside the subtree, read-only, ...).
    Export,
    /// A chunk daemon found no valid capability for the chunk and mode.
    Capability,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::Connection,
        Refusal::Role,
        Refusal::Export,
        Refusal::Capability,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Connection => "connection",
            Refusal::Role => "role",
            Refusal::Export => "export",
            Refusal::Capability => "capability",
        }
    }
}

static BY_KIND: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// Calls refused by this process's gate (and capability checks) since it started.
pub fn refused_count() -> u64 {
    REFUSED.load(Relaxed)
}

/// Refusals of one kind since this process started (the `refused` metric).
pub fn refused(kind: Refusal) -> u64 {
    BY_KIND[kind as usize].load(Relaxed)
}

fn count(kind: Refusal) -> u64 {
    BY_KIND[kind as usize].fetch_add(1, Relaxed);
    REFUSED.fetch_add(1, Relaxed) + 1
}

/// Logs and counts one refusal by this gate (a role that may not call).
pub fn refuse(peer: Option<&Peer>, what: &str, why: &str) -> tonic::Status {
    refuse_as(Refusal::Role, peer, what, why)
}

/// Logs (who, what, why) and counts one refusal of `kind`; used by the gate
/// and by services that refuse a call on their own grounds (a bad
/// capability, an export rule). The status to answer, if the service answers
/// with one (the MDS answers an export refusal with an errno instead).
pub fn refuse_as(kind: Refusal, peer: Option<&Peer>, what: &str, why: &str) -> tonic::Status {
    let n = count(kind);
    let who = peer.map_or_else(|| "unauthenticated".to_string(), |p| p.to_string());
    tracing::warn!(peer = %who, call = what, kind = kind.as_str(), reason = why, refused_total = n, "refused");
    tonic::Status::permission_denied(format!("{what} refused for {who}: {why}"))
}

/// Logs and counts a connection refused before any call (a failed handshake).
pub fn refuse_connection(remote: std::net::SocketAddr, why: &str) {
    let n = count(Refusal::Connection);
    tracing::warn!(peer = %remote, reason = why, refused_total = n, "connection refused");
}

/// The roles that may call gRPC method `path` ("/weft.Service/Method").
/// Anything not listed is refused.
pub fn allowed(path: &str) -> &'static [Role] {
    use Role::*;
    const USERS: &[Role] = &[Client, Gateway, Admin];
    const DATA: &[Role] = &[Client, Gateway, Admin, Chunkd];
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return &[];
    };
    match (service, method) {
        ("weft.Meta", _) | ("weft.Coherence", _) => USERS,
        ("weft.Master", "Register" | "Heartbeat" | "ReportCorrupt") => &[Chunkd],
        ("weft.Master", "Status" | "Fsck") => &[Admin],
        ("weft.Admin", _) => &[Admin],
        // Clients and the pipeline's upstream daemon; chunk capabilities then
        // say which chunks a client may touch.
        // The MDS copies a packed file's needle into its own chunk.
        // The compactor reads needle headers and copies needles.
        ("weft.Chunk", "Copy" | "Read") => &[Client, Gateway, Admin, Chunkd, Mds],
        ("weft.Chunk", _) | ("weft.ChunkSpace", _) => DATA,
        ("weft.ChunkAdmin", _) => &[Mds],
        // MDS-to-MDS replication.
        (s, _) if s.starts_with("weft.Raft") => &[Mds],
        _ => &[],
    }
}

/// The decision for one call, given who the connection's certificate names
/// (or why it names no one): the peer, or why the call is refused.
pub fn check(
    path: &str,
    peer: Option<&Result<Peer, String>>,
) -> Result<Peer, (Option<Peer>, String)> {
    let peer = match peer {
        None => return Err((None, "no client certificate".to_string())),
        Some(Err(e)) => return Err((None, e.clone())),
        Some(Ok(p)) => p,
    };
    if allowed(path).contains(&peer.role) {
        Ok(peer.clone())
    } else {
        let why = format!("role {} may not call this", peer.role);
        Err((Some(peer.clone()), why))
    }
}

/// Layer adding the gate to a tonic `Server`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GateLayer {
    pub tls: bool,
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;
    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            tls: self.tls,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Gate<S> {
    inner: S,
    tls: bool,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Gate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let id = req
            .headers()
            .get(reqid::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(reqid::parse)
            .unwrap_or_else(reqid::new_id);
        let span = tracing::info_span!("rpc", req = %reqid::Id(id), call = %req.uri().path());
        if self.tls {
            let info = req.extensions().get::<ConnInfo>();
            let peer = info.and_then(|i| i.peer.clone());
            let remote = info.and_then(|i| i.remote);
            let path = req.uri().path();
            match check(path, peer.as_deref()) {
                Ok(peer) => {
                    req.extensions_mut().insert(peer);
                }
                Err((peer, why)) => {
                    let why = match remote {
                        Some(a) => format!("{why} (from {a})"),
                        None => why,
                    };
                    let status = span.in_scope(|| refuse(peer.as_ref(), path, &why));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        let handler = reqid::scope(id, self.inner.call(req));
        Box::pin(reqid::log_if_slow("rpc", handler).instrument(span))
    }
}

/// The verified peer of a call, if TLS is on.
pub fn peer_of<T>(req: &tonic::Request<T>) -> Option<&Peer> {
    req.extensions().get::<Peer>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::*;

    #[test]
    fn policy() {
        let may = |p: &str, r: Role| allowed(p).contains(&r);
        assert!(may("/weft.Meta/Call", Client));
        assert!(!may("/weft.Meta/Call", Chunkd));
        assert!(may("/weft.Master/Register", Chunkd));
        assert!(!may("/weft.Master/Register", Client));
        assert!(!may("/weft.Master/Register", Admin));
        assert!(!may("/weft.Master/Heartbeat", Mds));
        assert!(may("/weft.Master/Status", Admin));
        assert!(!may("/weft.Master/Status", Client));
        assert!(may("/weft.Admin/Drain", Admin));
        assert!(!may("/weft.Admin/Drain", Client));
        assert!(may("/weft.Chunk/Write", Chunkd));
        assert!(may("/weft.Chunk/Copy", Mds));
        assert!(may("/weft.Chunk/Read", Mds));
        assert!(!may("/weft.Chunk/Write", Mds));
        assert!(may("/weft.ChunkAdmin/Replicate", Mds));
        assert!(!may("/weft.ChunkAdmin/Replicate", Client));
        assert!(!may("/weft.ChunkAdmin/SetVersion", Chunkd));
        assert!(!may("/weft.Unknown/X", Admin));
        assert!(!may("garbage", Admin));
    }

    #[test]
    fn no_or_unreadable_certificate_is_refused() {
        assert!(check("/weft.Meta/Call", None).is_err());
        let bad = crate::identity::peer_from_der(b"not a cert");
        assert!(check("/weft.Meta/Call", Some(&bad)).is_err());
        let client = Ok(Peer {
            role: Client,
            name: "c".into(),
        });
        assert!(check("/weft.Meta/Call", Some(&client)).is_ok());
        let (who, why) = check("/weft.Master/Register", Some(&client)).unwrap_err();
        assert_eq!(who.unwrap().name, "c");
        assert!(why.contains("client"), "{why}");
    }
}
