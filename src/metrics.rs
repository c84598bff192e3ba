//! Prometheus metrics and health probes over plain HTTP: one small axum server per process
//! (a node or a gateway) on its configured `metrics_listen`, serving
//!
//! - `/metrics`: the process's own [`Registry`] in the Prometheus text format (0.0.4);
//! - `/healthz`: 200 while the process runs (alive);
//! - `/readyz`: 200 when the process says it serves ([`Ready`]), else 503 with a short
//!   plain-text reason.
//!
//! There is no global registry: whoever starts a process makes one [`Registry`], hands it
//! to the parts that count (`peer`, `gateway`, the ledger's commit histogram), then to
//! [`serve`]. Names follow Prometheus conventions: a `dangan_` prefix, `_total` counters,
//! base units (`_seconds`, `_bytes`), labels of low cardinality only (a request's kind, an
//! outcome, a route; never a document id or a key). The list: `docs/operations.md`.
//!
//! Not for: anything an untrusted network may reach. It is plain HTTP without
//! authentication, for a scrape network; every byte between the cluster's machines goes
//! over QUIC with mutual TLS (`dangan cluster status` asks the peers there).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use prometheus_client;

/// Upper bounds of the latency histograms, in seconds: 1 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Longest `/readyz` waits for the chain to answer before it says the chain is unreachable.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A latency histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A peer request's labels: its kind (the `proto::Request` variant, snake case) and what
/// became of it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// A label set of one request kind (latency histograms).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// An HTTP request's labels: its route (a fixed name, never the path with its ids) and its
/// status class (`2xx` … `5xx`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub status: &'static str,
}

/// A route's label set (latency histograms).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

/// A direction of bytes through a gateway: `in` (request bodies) or `out` (responses).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

/// The class label of an HTTP status: `1xx` … `5xx`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Whether a process serves now: `Err` says why not, in a few words (`/readyz`'s body).
pub type Ready = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync + 'static,
>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    #[error("listening for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The running metrics listener. Dropping it does not stop it; call [`MetricsServer::stop`].
pub struct MetricsServer {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Where it listens (the bound port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and waits for the server to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Encodes `registry` in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String fails only if a metric's own encoding does.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        warn!(error = %e, "encoding the metrics failed");
    }
    text
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listen` until stopped.
pub async fn serve(
    listen: SocketAddr,
    registry: Arc<Registry>,
    ready: Ready,
) -> Result<MetricsServer, MetricsError> {
    let bind = |source| MetricsError::Bind {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let app = router(registry, ready);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = served.await {
            warn!(error = %e, "the metrics listener failed");
        }
    });
    info!(%addr, "metrics and health probes served (plain HTTP)");
    Ok(MetricsServer { addr, stop, task })
}

fn router(registry: Arc<Registry>, ready: Ready) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    // Collectors read the store (redb): off the async workers.
                    match tokio::task::spawn_blocking(move || encode(&registry)).await {
                        Ok(text) => (
                            [(
                                header::CONTENT_TYPE,
                                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                            )],
                            text,
                        )
                            .into_response(),
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(|| async { plain(StatusCode::OK, "ok") }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = ready.clone();
                async move {
                    match ready().await {
                        Ok(()) => plain(StatusCode::OK, "ready"),
                        Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, &why),
                    }
                }
            }),
        )
}

fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (status, body)
    }

    #[tokio::test]
    async fn probes_and_exposition() {
        let mut registry = Registry::with_prefix("dangan");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("test_requests", "Requests", requests.clone());
        requests
            .get_or_create(&RequestLabels {
                kind: "get_shard",
                outcome: "served",
            })
            .inc_by(3);
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = up.clone();
        let ready: Ready = Arc::new(move || {
            let up = flag.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if up {
                    Ok(())
                } else {
                    Err("chain unreachable".into())
                }
            })
        });
        let server = serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry), ready)
            .await
            .unwrap();
        let (status, body) = get(server.addr(), "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("dangan_test_requests_total{kind=\"get_shard\",outcome=\"served\"} 3"),
            "{body}"
        );
        assert_eq!(get(server.addr(), "/healthz").await.0, 200);
        let (status, body) = get(server.addr(), "/readyz").await;
        assert_eq!((status, body.trim()), (503, "chain unreachable"));
        up.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(get(server.addr(), "/readyz").await.0, 200);
        assert_eq!(get(server.addr(), "/nothing").await.0, 404);
        server.stop().await;
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(999), "5xx");
    }
}
