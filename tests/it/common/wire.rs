//! One QUIC connection to one peer, speaking the wire protocol directly, for tests that
//! control each request (per-connection state, refusals, hostile or malformed requests).
//! Not a client: no pool, no retries, no hedging; use `dangan::client` for that.

use std::net::SocketAddr;
use std::sync::Arc;

use dangan::identity::{Identity, PublicId};
use dangan::proto::{self, Request, Response};
use dangan::tls::{self, TrustPolicy};

pub struct Raw {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

impl Raw {
    /// Connects as `identity` to the peer at `addr`, accepting the peers `trust` accepts;
    /// returns the connection and who the peer is.
    pub async fn connect(
        identity: &Identity,
        addr: SocketAddr,
        trust: Arc<dyn TrustPolicy>,
    ) -> (Raw, PublicId) {
        let endpoint = tls::endpoint("127.0.0.1:0".parse().unwrap(), identity, trust).unwrap();
        let (conn, who) = tls::connect(&endpoint, addr).await.unwrap();
        (Raw { endpoint, conn }, who)
    }

    /// Sends `req` (and `body`) on a fresh stream; the answer and, when one follows (a
    /// shard, a manifest, a chain answer), its body.
    pub async fn ask(&self, req: &Request, body: Option<&[u8]>) -> (Response, Vec<u8>) {
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        proto::write_frame(&mut send, req).await.unwrap();
        if let Some(body) = body {
            // A refused request may be stopped before its body is read.
            let _ = send.write_all(body).await;
        }
        let _ = send.finish();
        let resp: Response = proto::read_frame(&mut recv).await.unwrap();
        let len = match &resp {
            Response::Shard { len } | Response::Manifest { len } | Response::ChainBody { len } => {
                *len
            }
            _ => 0,
        };
        let body = proto::read_body(&mut recv, len).await.unwrap();
        (resp, body)
    }

    /// Closes the connection and waits until the peer has been told.
    pub async fn close(self) {
        self.endpoint.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}
