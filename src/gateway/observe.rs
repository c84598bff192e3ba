//! The gateway's metrics: every HTTP and S3 request counted by route and status class, its
//! time to the response head, and the body bytes that went in and out, in one axum layer
//! over both listeners. A route is its template (`/api/v1/documents/{id}`), never the path
//! with its ids; the S3 listener is one route, `s3`. Readiness: the chain answers.
//!
//! Not for: the gateway's limits or errors (`mod.rs`), or anything a request may see.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::client::Client;
use crate::metrics::{
    DirectionLabel, HttpLabels, READY_TIMEOUT, Ready, RouteLabel, latency_histogram, status_class,
};

/// The route label of the S3 listener's requests.
pub const S3_ROUTE: &str = "s3";

/// The gateway's request metrics (one per gateway, registered in its registry).
#[derive(Clone)]
pub struct GatewayMetrics {
    requests: Family<HttpLabels, Counter>,
    latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    bytes: Family<DirectionLabel, Counter>,
}

impl GatewayMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            bytes: Family::default(),
        };
        registry.register(
            "gateway_http_requests",
            "HTTP and S3 requests the gateway answered, by route and status class",
            m.requests.clone(),
        );
        registry.register(
            "gateway_http_request_duration_seconds",
            "Seconds from a request's arrival to its response head, by route",
            m.latency.clone(),
        );
        registry.register(
            "gateway_http_body_bytes",
            "Body bytes through the gateway: in (requests) and out (responses)",
            m.bytes.clone(),
        );
        m
    }

    fn counter(&self, direction: &'static str) -> Counter {
        self.bytes
            .get_or_create(&DirectionLabel { direction })
            .clone()
    }
}

/// The axum middleware (`from_fn_with_state`) that counts one request.
pub async fn count(
    State((metrics, fixed)): State<(GatewayMetrics, Option<&'static str>)>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = match fixed {
        Some(route) => route.to_string(),
        None => request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "other".to_string(), |p| p.as_str().to_string()),
    };
    let request = request.map(|b| Body::new(Counted::new(b, metrics.counter("in"))));
    let response = next.run(request).await;
    let status = status_class(response.status().as_u16());
    metrics
        .requests
        .get_or_create(&HttpLabels {
            route: route.clone(),
            status,
        })
        .inc();
    metrics
        .latency
        .get_or_create(&RouteLabel { route })
        .observe(started.elapsed().as_secs_f64());
    response.map(|b| Body::new(Counted::new(b, metrics.counter("out"))))
}

/// A body that counts its data bytes as they pass, keeping its size hint (so a response
/// keeps its `Content-Length`).
struct Counted {
    inner: Body,
    counter: Counter,
}

impl Counted {
    fn new(inner: Body, counter: Counter) -> Self {
        Self { inner, counter }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The gateway is ready when the chain answers its client within [`READY_TIMEOUT`].
pub fn ready_probe(client: Client) -> Ready {
    let client = Arc::new(client);
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            let chain = client.chain().map_err(|e| e.to_string())?;
            match tokio::time::timeout(READY_TIMEOUT, chain.status()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("chain unreachable: {e}")),
                Err(_) => Err(format!(
                    "chain unreachable: no answer within {READY_TIMEOUT:?}"
                )),
            }
        })
    })
}
