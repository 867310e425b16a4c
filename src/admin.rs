//! The admin server, on its own port so that probes and scrapes never share
//! a queue with the data path: `/metrics` (Prometheus text), `/livez` (the
//! runtime is alive and not wedged), `/readyz` (every shard receiving and
//! Kafka reachable; the body names what is missing).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics;

/// A ticker older than this means the runtime is wedged.
const WEDGED_AFTER: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, cancel: CancellationToken) -> std::io::Result<()> {
    let started = Instant::now();
    let ticks = Arc::new(AtomicU64::new(0));
    tokio::spawn({
        let ticks = ticks.clone();
        let cancel = cancel.clone();
        async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = interval.tick() => ticks.store(started.elapsed().as_millis() as u64, Ordering::Relaxed),
                }
            }
        }
    });
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics().render(),
                )
            }),
        )
        .route(
            "/livez",
            get(move || async move {
                let last = Duration::from_millis(ticks.load(Ordering::Relaxed));
                if started.elapsed().saturating_sub(last) > WEDGED_AFTER {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "wedged: the runtime stopped ticking\n",
                    )
                        .into_response()
                } else {
                    (StatusCode::OK, "ok\n").into_response()
                }
            }),
        )
        .route(
            "/readyz",
            get(|| async {
                match metrics().health.not_ready() {
                    None => (StatusCode::OK, "ready\n".to_owned()),
                    Some(missing) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {missing}\n"),
                    ),
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
