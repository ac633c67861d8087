//! The operator's own HTTP server: `/metrics` (Prometheus text), `/healthz` (the process runs)
//! and `/readyz` (it reached the API server and found the CRDs; followers are ready too, so a
//! rolling update of the operator is not blocked by the election).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};

use crate::metrics::Metrics;

/// Shared state of the server.
#[derive(Clone, Default)]
pub struct Health {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Set once the operator has checked the API server and CRDs.
    pub ready: Arc<AtomicBool>,
}

/// The routes.
pub fn app(h: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(h)
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: API server or CRDs not checked yet",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).await.unwrap();
        s
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let h = Health::default();
        h.metrics.rollout("rolled_back");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = app(h.clone());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        h.ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("kinfer_rollbacks_total 1"), "{m}");
    }
}
