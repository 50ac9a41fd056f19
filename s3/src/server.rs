//! The HTTP side: s3s's service (auth, virtual hosts) on hyper, one task
//! per connection, until `shutdown` resolves; then open connections get a
//! few seconds to finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::host::MultiDomain;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

use crate::config::Keys;
use crate::service::Gateway;

pub fn service(
    gateway: Gateway,
    keys: Keys,
    domains: &[String],
) -> Result<s3s::service::S3Service, String> {
    let mut b = S3ServiceBuilder::new(gateway);
    b.set_auth(keys);
    if !domains.is_empty() {
        let host = MultiDomain::new(domains).map_err(|e| format!("bad --domain: {e}"))?;
        b.set_host(host);
    }
    Ok(b.build())
}

pub async fn serve(
    listener: TcpListener,
    service: s3s::service::S3Service,
    shutdown: impl Future<Output = ()>,
) {
    let http = Arc::new(ConnBuilder::new(TokioExecutor::new()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let _ = socket.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(socket), service.clone());
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => {
            tracing::warn!("connections still open after 5 s: closing them");
        }
    }
}
