//! The MDS's HTTP side (`--http ADDR`): Prometheus metrics at `/metrics`,
//! the cluster as JSON at `/api/status`, and at `/` a status page that
//! renders that JSON and fetches it again every two seconds.

use crate::metrics::View;
use crate::service::Mds;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;

/// Serves in the background; returns the bound address.
pub async fn serve(mds: Mds, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let m = mds.clone();
    let (registry, refresh) = crate::metrics::registry(move || {
        let m = m.clone();
        async move { m.view().await }
    });
    let routes = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/api/status",
            get(move || {
                let mds = mds.clone();
                async move { Json(to_json(&mds.view().await)).into_response() }
            }),
        );
    weft_metrics::serve(addr, Arc::new(registry), Some(refresh), routes).await
}

/// The view as the page reads it.
pub fn to_json(v: &View) -> serde_json::Value {
    let s = &v.status;
    let mut chunkds: Vec<_> = s.chunkds.iter().collect();
    chunkds.sort_by(|a, b| (&a.rack, &a.addr).cmp(&(&b.rack, &b.addr)));
    // Ids in hex as in the logs (a JSON number would lose digits in JavaScript).
    let daemons: Vec<_> = chunkds
        .iter()
        .map(|d| {
            serde_json::json!({
                "id": format!("{:016x}", d.id), "addr": d.addr, "rack": d.rack, "alive": d.alive,
                "draining": d.draining, "capacity": d.capacity, "used": d.used,
                "free": d.free, "chunks": d.chunks,
            })
        })
        .collect();
    let sessions: Vec<_> = v
        .session_list
        .iter()
        .map(|(id, ago)| serde_json::json!({"session": format!("{id:016x}"), "last_seen_ms": ago.as_millis() as u64}))
        .collect();
    let health = if s.missing > 0 || (!s.chunkds.is_empty() && s.chunkds.iter().all(|d| !d.alive)) {
        "critical"
    } else if s.under_replicated > 0 || s.chunkds.iter().any(|d| !d.alive) {
        "degraded"
    } else {
        "healthy"
    };
    serde_json::json!({
        "health": health,
        "files": s.files, "directories": s.directories, "chunks": s.chunks,
        "replicas": s.replicas, "chunk_size": s.chunk_size,
        "under_replicated": s.under_replicated, "missing": s.missing,
        "copies_in_flight": s.copies_in_flight, "copies_done": s.copies_done,
        "copied_bytes": s.copied_bytes, "rebalancing": s.rebalancing,
        "drain_remaining": s.chunkds.iter().filter(|d| d.draining).map(|d| d.chunks).sum::<u64>(),
        "log_appended_index": s.log_appended_index, "log_durable_index": s.log_durable_index,
        "locks": v.locks, "daemons": daemons, "sessions": sessions,
    })
}

const PAGE: &str = include_str!("status_page.html");
