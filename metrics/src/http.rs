//! The HTTP side of a daemon: `/metrics` in the OpenMetrics text format
//! (after an optional refresh of the gauges that are read from state at
//! scrape time), plus any routes the daemon adds (the MDS's status page).

use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// Brings scrape-time gauges up to date before an encode.
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` and serves in the background; returns the bound address.
/// Turns recording on: a process serves metrics only if it keeps them.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    refresh: Option<Refresh>,
    extra: Router,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for HTTP: {e}"))?;
    let bound = listener.local_addr()?;
    let metrics = get(move |headers: HeaderMap| {
        let (registry, refresh) = (registry.clone(), refresh.clone());
        async move {
            if let Some(r) = refresh {
                r().await;
            }
            let mut body = String::new();
            let openmetrics = headers
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) if openmetrics => ([(CONTENT_TYPE, OPENMETRICS)], body).into_response(),
                Ok(()) => ([(CONTENT_TYPE, CLASSIC)], to_classic(&body)).into_response(),
                Err(_) => (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics encoding failed",
                )
                    .into_response(),
            }
        }
    });
    let app = extra.route("/metrics", metrics);
    crate::enable();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving metrics over HTTP");
    Ok(bound)
}

/// The Prometheus text format (0.0.4) of an OpenMetrics text: what a client
/// that does not ask for OpenMetrics (curl, promtool) reads. The differences
/// that matter: a counter's HELP and TYPE name the `_total` series, and there
/// is no `# UNIT` or `# EOF`.
pub fn to_classic(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        match meta {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn classic_names_counters_by_their_total_series() {
        let om = "# HELP a_ops ops.\n# TYPE a_ops counter\na_ops_total{op=\"x\"} 3\n# HELP g a gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            super::to_classic(om),
            "# HELP a_ops_total ops.\n# TYPE a_ops_total counter\na_ops_total{op=\"x\"} 3\n# HELP g a gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
