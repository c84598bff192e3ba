//! The transport: one QUIC endpoint (mutual TLS, `tls`), a pool of connections to peers,
//! and requests of the one wire protocol (`proto`) sent over it with time limits.
//!
//! - [`Net::call`] sends one request and takes out the response it names ([`Expect`]): any
//!   other answer is one error ([`NetError::Peer`] with `ProtoError::Unexpected`, or the
//!   peer's `Error` as `ProtoError::Remote`). [`Net::fetch`] does the same for the answers
//!   that carry a body (a shard, a manifest, a chain record), checked against its limit.
//! - A peer that fails to connect (or closed its connection) is marked down and skipped for
//!   `down_for`: one connection attempt per period. A pooled connection to a peer whose
//!   process died looks open until QUIC's idle timeout: if not one datagram came back on it
//!   while a request waited for [`SILENCE`], it is dropped from the pool and dialled afresh.
//! - [`Net::hedged`] asks several peers for one thing until enough answered (one more
//!   whenever one fails or `hedge_after` passes); [`Net::hedged_retrying`] also asks again
//!   the peers that answered `Unavailable` or `Busy`, for up to `unavailable_retry`.
//!
//! `storage` has the one-request helpers of the storage protocol (shards, manifests,
//! usage, scrub) for the operations workers and revisions.
//!
//! Not for: what to ask (the document client, the chain client, the workers), who may ask
//! (`access`, on the serving side), or serving (`peer`).

mod storage;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use quinn::RecvStream;
use tracing::debug;

use crate::identity::{Identity, PublicId};
use crate::placement::NodeInfo;
use crate::proto::{self, ErrorCode, Expect, ProtoError, Request, Response};
use crate::tls::{self, TrustPolicy};

/// How long a peer with requests waiting may send nothing at all on its connection (not
/// even an acknowledgement) before the connection is taken for dead and dialled again.
pub const SILENCE: Duration = Duration::from_secs(1);

/// How the transport behaves; the defaults suit a LAN cluster.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Where the QUIC endpoint binds.
    pub bind: SocketAddr,
    pub connect_timeout: Duration,
    /// Time limit of one request ([`Net::call_within`] takes its own).
    pub request_timeout: Duration,
    /// Ask one more peer if the ones asked have not all answered by then ([`Net::hedged`]).
    pub hedge_after: Duration,
    /// How long a peer that failed to connect (or closed its connection) is skipped.
    pub down_for: Duration,
    /// How long [`Net::hedged_retrying`] keeps asking again the peers that answered
    /// `Unavailable` or `Busy`, pausing 0.1 s, doubling up to 1 s.
    pub unavailable_retry: Duration,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(60),
            hedge_after: Duration::from_millis(500),
            down_for: Duration::from_secs(5),
            unavailable_retry: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("starting the endpoint: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("peer {peer} at {addr}: {source}")]
    Peer {
        peer: String,
        addr: String,
        #[source]
        source: ProtoError,
    },
}

impl NetError {
    /// The code of the peer's `Error` answer, if that is what this is.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            NetError::Peer {
                source: ProtoError::Remote { code, .. },
                ..
            } => Some(*code),
            _ => None,
        }
    }

    /// The peer's refusal (`Refused`) and its reason, if that is what this is.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            NetError::Peer {
                source:
                    ProtoError::Remote {
                        code: ErrorCode::Refused,
                        message,
                    },
                ..
            } => Some(message),
            _ => None,
        }
    }

    /// The request did not reach the peer or its answer did not come back (as opposed to
    /// a definite answer).
    pub fn is_transport(&self) -> bool {
        matches!(self, NetError::Peer { source, .. } if source.is_transport())
    }

    /// An answer another try may change: `Unavailable` (the peer could not check access
    /// now, or has no chain leader) or `Busy`.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.remote_code(),
            Some(ErrorCode::Unavailable | ErrorCode::Busy)
        )
    }
}

/// A pooled QUIC client of the cluster's peers, as one identity. Cheap to clone.
#[derive(Clone)]
pub struct Net {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    options: NetOptions,
    conns: Mutex<HashMap<PublicId, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
    down: Mutex<HashMap<PublicId, Instant>>,
    /// Per peer, the last connection a request timed out on: its stable id, its datagram
    /// count then, and since when the peer was heard from last (see [`Net::call_within`]).
    silent: Mutex<HashMap<PublicId, (usize, u64, Instant)>>,
}

/// What [`Net::hedged`] gathered: a result per slot that answered, the failures, and the
/// slots never asked.
pub struct Hedged<T> {
    pub results: Vec<Option<T>>,
    pub failures: Vec<(usize, NetError)>,
    pub untried: Vec<usize>,
}

impl<T> Hedged<T> {
    /// Every failure, for an error message.
    pub fn errors(&self) -> String {
        let all: Vec<String> = self.failures.iter().map(|(_, e)| e.to_string()).collect();
        all.join("; ")
    }
}

impl Net {
    /// An endpoint as `identity`, trusting peers by `trust`. Must be called within a tokio
    /// runtime.
    pub fn new(
        identity: &Identity,
        trust: Arc<dyn TrustPolicy>,
        options: NetOptions,
    ) -> Result<Self, NetError> {
        let endpoint = tls::endpoint(options.bind, identity, trust)?;
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                options,
                conns: Mutex::new(HashMap::new()),
                down: Mutex::new(HashMap::new()),
                silent: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn options(&self) -> &NetOptions {
        &self.inner.options
    }

    /// Closes every connection. An endpoint bound to a chosen port waits until the port is
    /// released (see [`tls::close`]); one on an ephemeral port (a client's) returns once each
    /// connection's close has left ([`tls::close_ephemeral`]).
    pub async fn close(&self) {
        let slots: Vec<_> = self
            .inner
            .conns
            .lock()
            .expect("connection pool lock")
            .iter()
            .map(|(id, slot)| (*id, slot.clone()))
            .collect();
        let mut open = Vec::new();
        for (id, slot) in slots {
            // A slot held by a connection attempt to a dead peer has no statistics to give.
            if let Ok(guard) = slot.try_lock()
                && let Some(conn) = guard.as_ref()
            {
                let stats = conn.stats();
                debug!(
                    peer = %id.short(),
                    sent_packets = stats.path.sent_packets,
                    lost_packets = stats.path.lost_packets,
                    congestion_events = stats.path.congestion_events,
                    rtt = ?stats.path.rtt,
                    "connection statistics"
                );
                open.push(conn.clone());
            }
        }
        if self.inner.options.bind.port() == 0 {
            tls::close_ephemeral(&self.inner.endpoint, &open, b"client closing").await;
        } else {
            tls::close(&self.inner.endpoint, b"client closing").await;
        }
    }

    /// Sends `req` (and its `body`) to `node` and takes out the response it names.
    pub async fn call<T: Expect>(
        &self,
        node: &NodeInfo,
        req: &Request,
        body: Option<&Bytes>,
    ) -> Result<T, NetError> {
        let (resp, _) = self.exchange(node, req, body).await?;
        T::take(resp).map_err(|other| self.unexpected(node, other))
    }

    /// Sends `req` to `node` and reads the body its answer carries (a shard, a manifest, a
    /// chain record), refused over `max` bytes; `None` if the peer answered `NotFound`.
    pub async fn fetch(
        &self,
        node: &NodeInfo,
        req: &Request,
        body: Option<&Bytes>,
        max: u64,
    ) -> Result<Option<Vec<u8>>, NetError> {
        self.fetch_within(node, req, body, max, self.inner.options.request_timeout)
            .await
    }

    /// [`Net::fetch`] answered, body included, within `timeout`.
    pub async fn fetch_within(
        &self,
        node: &NodeInfo,
        req: &Request,
        body: Option<&Bytes>,
        max: u64,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, NetError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (resp, mut recv) = self.exchange_within(node, req, body, timeout).await?;
        let len = match resp {
            Response::Shard { len } | Response::Manifest { len } | Response::ChainBody { len } => {
                len
            }
            Response::NotFound => return Ok(None),
            other => return Err(self.unexpected(node, other)),
        };
        let read = async {
            proto::check_body_len("body", len, max)?;
            proto::read_body(&mut recv, len).await
        };
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(bytes)) => Ok(Some(bytes)),
            Ok(Err(e)) => Err(self.peer_error(node, e)),
            Err(_) => Err(self.timed_out(node, timeout)),
        }
    }

    /// Sends one request (and its body) on a fresh stream and reads the answer's header:
    /// the answer, and the stream its body (if any) follows on. An `Error` answer is an
    /// error.
    pub async fn exchange(
        &self,
        node: &NodeInfo,
        req: &Request,
        body: Option<&Bytes>,
    ) -> Result<(Response, RecvStream), NetError> {
        self.exchange_within(node, req, body, self.inner.options.request_timeout)
            .await
    }

    /// [`Net::exchange`] with its own time limit. A peer whose process died (kill -9, a
    /// restart) leaves its pooled connection looking open until QUIC's idle timeout: if not
    /// one datagram came back on it while the request waited, the connection is dropped
    /// from the pool (and the peer asked last for a while), so the next request dials
    /// afresh.
    pub async fn exchange_within(
        &self,
        node: &NodeInfo,
        req: &Request,
        body: Option<&Bytes>,
        timeout: Duration,
    ) -> Result<(Response, RecvStream), NetError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = match tokio::time::timeout_at(deadline, self.connection(node)).await {
            Ok(conn) => conn?,
            Err(_) => return Err(self.timed_out(node, timeout)),
        };
        let heard = conn.stats().udp_rx.datagrams;
        let exchange = async {
            // A stream error says little ("connection lost"); the connection's close reason
            // says why (e.g. the peer refused our identity during the handshake).
            let io = |e: &dyn std::fmt::Display| {
                let why = match conn.close_reason() {
                    Some(reason) => format!("{e}: {reason}"),
                    None => e.to_string(),
                };
                self.peer_error(node, ProtoError::Io(std::io::Error::other(why)))
            };
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
            proto::write_frame(&mut send, req)
                .await
                .map_err(|e| io(&e))?;
            if let Some(body) = body {
                // Hands the buffer to quinn without a copy.
                send.write_chunk(body.clone()).await.map_err(|e| io(&e))?;
            }
            let _ = send.finish();
            let resp: Response = match proto::read_frame(&mut recv).await {
                Ok(resp) => resp,
                Err(e) if e.is_transport() => return Err(io(&e)),
                Err(e) => return Err(self.peer_error(node, e)),
            };
            Ok((resp, recv))
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok((Response::Error { code, message }, _))) => {
                Err(self.peer_error(node, ProtoError::Remote { code, message }))
            }
            Ok(res) => res,
            Err(_) => {
                if self.silent_for(node, &conn, heard, deadline - timeout) >= SILENCE {
                    debug!(peer = %node.key.short(), "no datagram from the peer for a while; dropping its connection");
                    self.forget_connection(node, &conn);
                }
                Err(self.timed_out(node, timeout))
            }
        }
    }

    /// A live connection to `node`, reusing the pooled one.
    pub async fn connection(&self, node: &NodeInfo) -> Result<quinn::Connection, NetError> {
        let peer = node.key;
        let slot = self
            .inner
            .conns
            .lock()
            .expect("connection pool lock")
            .entry(peer)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
            // The peer closed the connection (it stopped or restarted): fail fast so the
            // caller asks another peer now, and ask this one last for a while.
            let reason = conn
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_default();
            self.mark_down(peer);
            *slot = None;
            return Err(self.peer_error(
                node,
                ProtoError::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    format!("connection closed: {reason}"),
                )),
            ));
        }
        let err = |source: ProtoError| self.peer_error(node, source);
        if self.is_down(&peer) {
            // One failed attempt per `down_for`: callers move on to other peers at once.
            return Err(err(ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "peer is down (a recent connection attempt failed)",
            ))));
        }
        let addr: SocketAddr = node.addr.parse().map_err(|_| {
            err(ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad peer address {:?}", node.addr),
            )))
        })?;
        let connect = tls::connect(&self.inner.endpoint, addr);
        let (conn, who) =
            match tokio::time::timeout(self.inner.options.connect_timeout, connect).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    self.mark_down(peer);
                    return Err(err(ProtoError::Io(std::io::Error::other(e))));
                }
                Err(_) => {
                    self.mark_down(peer);
                    return Err(err(ProtoError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))));
                }
            };
        if who != peer {
            conn.close(1u32.into(), b"unexpected identity");
            return Err(err(ProtoError::Unexpected(format!(
                "address {addr} answered as {}, expected {}",
                who.short(),
                peer.short()
            ))));
        }
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `request` against the slots of `order` until `want` succeed: `want` at first
    /// (peers marked down last), one more whenever one fails, and one more each time
    /// `hedge_after` passes without enough answers.
    pub async fn hedged<T, F, Fut>(
        &self,
        nodes: &[NodeInfo],
        mut order: Vec<usize>,
        want: usize,
        request: F,
    ) -> Hedged<T>
    where
        T: Clone,
        F: Fn(NodeInfo, usize) -> Fut,
        Fut: std::future::Future<Output = Result<T, NetError>>,
    {
        order.sort_by_key(|&slot| self.is_down(&nodes[slot].key));
        let mut order = order.into_iter();
        let mut results = vec![None; nodes.len()];
        let mut failures = Vec::new();
        let mut pending = FuturesUnordered::new();
        let launch = |slot: usize| {
            let fut = request(nodes[slot].clone(), slot);
            async move { (slot, fut.await) }
        };
        for slot in order.by_ref().take(want) {
            pending.push(launch(slot));
        }
        let mut got = 0;
        let hedge_after = self.inner.options.hedge_after;
        let hedge = tokio::time::sleep(hedge_after);
        tokio::pin!(hedge);
        while got < want && !pending.is_empty() {
            tokio::select! {
                Some((slot, res)) = pending.next() => match res {
                    Ok(value) => {
                        results[slot] = Some(value);
                        got += 1;
                    }
                    Err(e) => {
                        failures.push((slot, e));
                        if let Some(next) = order.next() {
                            pending.push(launch(next));
                        }
                    }
                },
                () = &mut hedge => {
                    if let Some(next) = order.next() {
                        pending.push(launch(next));
                    }
                    hedge.as_mut().reset(tokio::time::Instant::now() + hedge_after);
                }
            }
        }
        Hedged {
            results,
            failures,
            untried: order.collect(),
        }
    }

    /// [`Net::hedged`], then, while fewer than `want` succeeded, the slots that answered
    /// `Unavailable` or `Busy` (the peer could not check access now, or was full) are asked
    /// again after a pause (0.1 s, doubling up to 1 s) until `unavailable_retry` has passed
    /// since the first try; results are merged (the first `want` to arrive count).
    pub async fn hedged_retrying<T, F, Fut>(
        &self,
        nodes: &[NodeInfo],
        order: Vec<usize>,
        want: usize,
        request: F,
    ) -> Hedged<T>
    where
        T: Clone,
        F: Fn(NodeInfo, usize) -> Fut,
        Fut: std::future::Future<Output = Result<T, NetError>>,
    {
        let deadline = Instant::now() + self.inner.options.unavailable_retry;
        let mut all = self.hedged(nodes, order, want, &request).await;
        let mut pause = Duration::from_millis(100);
        loop {
            let got = all.results.iter().filter(|r| r.is_some()).count();
            let again: Vec<usize> = all
                .failures
                .iter()
                .filter(|(_, e)| e.is_retryable())
                .map(|(slot, _)| *slot)
                .filter(|slot| all.results[*slot].is_none())
                .collect();
            if got >= want || again.is_empty() || Instant::now() + pause > deadline {
                return all;
            }
            debug!(slots = ?again, ?pause, "peers could not answer now; asking them again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            all.failures.retain(|(slot, _)| !again.contains(slot));
            let more = self.hedged(nodes, again, want - got, &request).await;
            for (slot, value) in more.results.into_iter().enumerate() {
                if value.is_some() && all.results[slot].is_none() {
                    all.results[slot] = value;
                }
            }
            all.failures.extend(more.failures);
            all.untried.extend(more.untried);
        }
    }

    /// Whether `peer` failed to connect within the last `down_for`.
    fn is_down(&self, peer: &PublicId) -> bool {
        let down = self.inner.down.lock().expect("down map lock");
        down.get(peer).is_some_and(|until| Instant::now() < *until)
    }

    fn mark_down(&self, peer: PublicId) {
        let until = Instant::now() + self.inner.options.down_for;
        self.inner
            .down
            .lock()
            .expect("down map lock")
            .insert(peer, until);
    }

    /// `source` as an error of `node`.
    pub fn peer_error(&self, node: &NodeInfo, source: ProtoError) -> NetError {
        NetError::Peer {
            peer: node.key.short(),
            addr: node.addr.clone(),
            source,
        }
    }

    /// An answer that is not the one the request names (an `Error` answer included).
    pub fn unexpected(&self, node: &NodeInfo, resp: Response) -> NetError {
        let source = match proto::expect_ok(resp) {
            Err(e) => e,
            Ok(other) => ProtoError::Unexpected(format!("{other:?}")),
        };
        self.peer_error(node, source)
    }

    fn timed_out(&self, node: &NodeInfo, timeout: Duration) -> NetError {
        self.peer_error(
            node,
            ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            )),
        )
    }

    /// After a request on `conn` timed out: how long the peer has sent nothing at all on it
    /// (`heard`: its datagram count when the request started at `started`), as far as the
    /// timed-out requests of the last while tell.
    fn silent_for(
        &self,
        node: &NodeInfo,
        conn: &quinn::Connection,
        heard: u64,
        started: tokio::time::Instant,
    ) -> Duration {
        let now = Instant::now();
        let rx = conn.stats().udp_rx.datagrams;
        let since = if rx == heard {
            now - started.elapsed()
        } else {
            now
        };
        let mut silent = self.inner.silent.lock().expect("silence map lock");
        let entry = silent
            .entry(node.key)
            .or_insert((conn.stable_id(), rx, since));
        if entry.0 != conn.stable_id() || entry.1 != rx {
            *entry = (conn.stable_id(), rx, since);
        }
        now.saturating_duration_since(entry.2)
    }

    /// Closes `conn` and takes it out of the pool if it is still `node`'s pooled connection.
    fn forget_connection(&self, node: &NodeInfo, conn: &quinn::Connection) {
        let peer = node.key;
        let slot = self
            .inner
            .conns
            .lock()
            .expect("connection pool lock")
            .get(&peer)
            .cloned();
        if let Some(slot) = slot
            && let Ok(mut slot) = slot.try_lock()
            && slot
                .as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            *slot = None;
        }
        conn.close(0u32.into(), b"unresponsive");
        self.mark_down(peer);
    }
}
