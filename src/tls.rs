//! QUIC endpoints (quinn 0.11) with mutual TLS bound to Ed25519 identities.
//!
//! Every Dangan endpoint presents a self-signed X.509 certificate whose subject public key
//! *is* its [`Identity`]'s Ed25519 key, and both sides of every connection check the other:
//!
//! 1. the peer's end-entity certificate must carry an Ed25519 key (OID 1.3.101.112);
//! 2. that key, as a [`PublicId`], must be accepted by the local [`TrustPolicy`] (normally the
//!    cluster [`Membership`]), otherwise the handshake fails with a clear reason;
//! 3. the peer must prove possession of that key: the TLS 1.3 `CertificateVerify` signature
//!    is checked against exactly the key that was checked in step 2.
//!
//! Nothing else in the certificate matters: no CA, no chain, no names, no validity dates.
//! Server names are ignored (every connection uses [`SERVER_NAME`] as SNI); identities, not
//! DNS names, are what is authenticated. TLS 1.3 only, ALPN [`ALPN`] required on both sides,
//! the ring provider is configured explicitly (no process-level default needed), and session
//! resumption and 0-RTT are off so every connection runs the full check against the trust
//! policy as it is at that moment.
//!
//! A connection refused by the server never reaches the application: awaiting the
//! [`quinn::Incoming`] yields an error. On the client side TLS 1.3 lets `connect` finish
//! before the server has judged the client's certificate, so a client the server does not
//! trust sees the refusal on its first stream operation (or on
//! [`quinn::Connection::closed`]), with the server's TLS alert as the reason.
//!
//! Not for: authorisation (what a trusted peer may do is decided above this layer), closing
//! established connections when a member is removed (trust is checked at handshake time;
//! the caller closes connections of removed peers), or talking to non-Dangan TLS peers.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{Identity, PublicId, Role};

/// The one application protocol every Dangan endpoint speaks and requires.
pub const ALPN: &[u8] = b"dangan/1";

/// The SNI every client sends; servers ignore it.
pub const SERVER_NAME: &str = "dangan";

/// Requested `SO_RCVBUF` / `SO_SNDBUF` for endpoint sockets. Linux caps the request at
/// `net.core.rmem_max` / `wmem_max` (4 MiB on the machines measured) and reports twice the
/// granted value.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why building an endpoint, connecting or measuring failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("could not build the identity certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC TLS configuration: {0}")]
    QuicCrypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("peer identity {peer} is not in the trust set")]
    UntrustedPeer { peer: PublicId },
    #[error("peer certificate refused: {0}")]
    BadCertificate(&'static str),
    #[error("connection has no peer identity")]
    NoPeerIdentity,
    #[error("{context}: {reason}")]
    Transfer {
        context: &'static str,
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Trust

/// Decides which identities may talk to us. Asked once per handshake, on both sides.
pub trait TrustPolicy: Send + Sync + fmt::Debug {
    fn is_trusted(&self, id: &PublicId) -> bool;
}

/// The cluster membership as a trust set. Cheap to clone; clones share the same set, so keep
/// one to update membership after handing an `Arc` of another to [`endpoint`]. Changes apply
/// to handshakes that start afterwards.
#[derive(Clone, Default)]
pub struct Membership {
    ids: Arc<RwLock<HashSet<PublicId>>>,
}

impl Membership {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; returns whether it was new.
    pub fn add(&self, id: PublicId) -> bool {
        self.write().insert(id)
    }

    /// Removes `id`; returns whether it was present.
    pub fn remove(&self, id: &PublicId) -> bool {
        self.write().remove(id)
    }

    /// Replaces the whole set atomically.
    pub fn replace(&self, ids: impl IntoIterator<Item = PublicId>) {
        let new: HashSet<PublicId> = ids.into_iter().collect();
        *self.write() = new;
    }

    pub fn contains(&self, id: &PublicId) -> bool {
        self.read().contains(id)
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The members, sorted.
    pub fn members(&self) -> Vec<PublicId> {
        let mut v: Vec<PublicId> = self.read().iter().copied().collect();
        v.sort();
        v
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<PublicId>> {
        // A panic while holding the lock cannot leave a HashSet half-updated in a way that
        // matters here, so a poisoned lock is still usable.
        self.ids.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<PublicId>> {
        self.ids.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl FromIterator<PublicId> for Membership {
    fn from_iter<I: IntoIterator<Item = PublicId>>(iter: I) -> Self {
        Self {
            ids: Arc::new(RwLock::new(iter.into_iter().collect())),
        }
    }
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl TrustPolicy for Membership {
    fn is_trusted(&self, id: &PublicId) -> bool {
        self.contains(id)
    }
}

/// Trusts every identity that proves possession of its key. The peer is still authenticated
/// (its [`PublicId`] is known via [`peer_identity`]) but not filtered: only for endpoints that
/// authorise each request above this layer (e.g. accepting citizens), never for
/// node-to-node or validator traffic.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAny;

impl TrustPolicy for AllowAny {
    fn is_trusted(&self, _id: &PublicId) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A self-signed certificate whose subject public key is `identity`'s Ed25519 key, with the
/// key that signs for it, ready for rustls. Both the certificate's signature and every
/// handshake signature go through [`Identity::try_sign`], so a key in a PKCS#11 token signs
/// inside the token and no secret key is ever handed to rustls.
fn certified_key(identity: &Identity) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let signer = IdentitySigner {
        identity: identity.clone(),
        public: identity.public().to_bytes(),
    };
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, identity.public().to_string());
    params.distinguished_name = dn;
    let cert = params.self_signed(&signer)?;
    Ok(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        Arc::new(signer),
    ))
}

/// An identity signing for rcgen (the certificate) and rustls (the handshake): Ed25519 only.
#[derive(Debug, Clone)]
struct IdentitySigner {
    identity: Identity,
    public: [u8; 32],
}

impl rcgen::PublicKeyData for IdentitySigner {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for IdentitySigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.identity
            .try_sign(msg)
            .map(|s| s.to_vec())
            .map_err(|e| {
                tracing::error!("signing the TLS certificate: {e}");
                rcgen::Error::RemoteKeyError
            })
    }
}

impl rustls::sign::SigningKey for IdentitySigner {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(self.clone()) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ED25519
    }
}

impl rustls::sign::Signer for IdentitySigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.identity
            .try_sign(message)
            .map(|s| s.to_vec())
            .map_err(|e| rustls::Error::General(format!("signing the handshake: {e}")))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// One DER TLV.
struct Tlv<'a> {
    tag: u8,
    contents: &'a [u8],
    /// Header and contents.
    whole: &'a [u8],
    /// What follows this TLV.
    rest: &'a [u8],
}

/// Parses one DER TLV: definite lengths up to 4 length bytes, single-byte tags; `None` on
/// anything malformed.
fn der_tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&len0, mut rest) = rest.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some(Tlv {
        tag,
        contents: &rest[..len],
        whole: &input[..header + len],
        rest: &rest[len..],
    })
}

/// The SubjectPublicKeyInfo of an X.509 certificate, as DER.
fn certificate_spki(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT
    const INTEGER: u8 = 0x02;
    let outer = der_tlv(cert)?;
    if outer.tag != SEQUENCE || !outer.rest.is_empty() {
        return None;
    }
    let tbs = der_tlv(outer.contents)?;
    if tbs.tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs.contents;
    let first = der_tlv(rest)?;
    if first.tag == VERSION {
        rest = first.rest;
    }
    // serialNumber, signature, issuer, validity, subject
    for expected in [INTEGER, SEQUENCE, SEQUENCE, SEQUENCE, SEQUENCE] {
        let field = der_tlv(rest)?;
        if field.tag != expected {
            return None;
        }
        rest = field.rest;
    }
    let spki = der_tlv(rest)?;
    (spki.tag == SEQUENCE).then_some(spki.whole)
}

/// The peer's identity from its end-entity certificate: the Ed25519 SubjectPublicKeyInfo,
/// and the key as a [`PublicId`].
fn identity_from_certificate(cert: &[u8]) -> Result<(&[u8], PublicId), TlsError> {
    let spki = certificate_spki(cert).ok_or(TlsError::BadCertificate(
        "not a well-formed X.509 certificate",
    ))?;
    let key = spki
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or(TlsError::BadCertificate(
            "certificate key is not an Ed25519 key",
        ))?;
    let id = PublicId::from_bytes(key).map_err(|_| {
        TlsError::BadCertificate("certificate key is not a valid Ed25519 public key")
    })?;
    Ok((spki, id))
}

/// A refusal as a rustls error. `rustls::Error::Other` displays its cause with `Display`
/// ("other error: peer identity dgn1… is not in the trust set"), sends a `handshake_failure`
/// alert, and quinn carries the text in the CONNECTION_CLOSE reason to the peer.
fn refuse(e: TlsError) -> rustls::Error {
    rustls::Error::Other(rustls::OtherError(Arc::new(e)))
}

/// Both verifiers: the peer's certificate key must be trusted, and its handshake signature
/// must verify under exactly that key.
#[derive(Debug)]
struct IdentityVerifier {
    trust: Arc<dyn TrustPolicy>,
    algorithms: WebPkiSupportedAlgorithms,
    side: &'static str,
}

impl IdentityVerifier {
    fn check_certificate(
        &self,
        end_entity: &CertificateDer<'_>,
    ) -> Result<PublicId, rustls::Error> {
        let (_, id) = identity_from_certificate(end_entity).map_err(|e| {
            tracing::info!(side = self.side, error = %e, "refused peer certificate");
            refuse(e)
        })?;
        if !self.trust.is_trusted(&id) {
            tracing::info!(side = self.side, peer = %id, "refused untrusted peer");
            return Err(refuse(TlsError::UntrustedPeer { peer: id }));
        }
        Ok(id)
    }

    fn check_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
        }
        let (spki, _) = identity_from_certificate(cert).map_err(refuse)?;
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(spki),
            dss,
            &self.algorithms,
        )
    }

    fn tls12() -> rustls::Error {
        rustls::Error::General("TLS 1.2 is not supported".into())
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check_certificate(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for IdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check_certificate(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(Self::tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

// ---------------------------------------------------------------------------------------------
// Configs and endpoints

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn verifier(
    provider: &rustls::crypto::CryptoProvider,
    trust: Arc<dyn TrustPolicy>,
    side: &'static str,
) -> Arc<IdentityVerifier> {
    Arc::new(IdentityVerifier {
        trust,
        algorithms: provider.signature_verification_algorithms,
        side,
    })
}

/// The transport settings every Dangan connection uses, tuned for bulk shard transfer on a
/// LAN or loopback: 4 MiB stream and 8 MiB connection receive windows, an 8 MiB send window
/// (far above a LAN's bandwidth-delay product, small enough that a process with many
/// connections stays within its memory budget: measured, 32 MiB windows were no faster and
/// cost 80 MiB more peak memory in `dangan bench cluster`), 256 concurrent bidirectional and
/// unidirectional streams, a 5 s keep-alive and a 30 s idle timeout. A peer that stops
/// reading can make us buffer up to the window sizes per connection.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(4 << 20))
        .receive_window(quinn::VarInt::from_u32(8 << 20))
        .send_window(8 << 20)
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(256))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(256))
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            30_000,
        ))));
    t
}

fn server_config_with(
    identity: &Identity,
    trust: Arc<dyn TrustPolicy>,
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let certified = certified_key(identity)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier(&provider, trust, "server"))
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: every connection presents and checks certificates afresh.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn client_config_with(
    identity: &Identity,
    trust: Arc<dyn TrustPolicy>,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let certified = certified_key(identity)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier(&provider, trust, "client"))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Server side: presents `identity`, accepts only clients `trust` accepts.
pub fn server_config(
    identity: &Identity,
    trust: Arc<dyn TrustPolicy>,
) -> Result<quinn::ServerConfig, TlsError> {
    server_config_with(identity, trust, transport_config())
}

/// Client side: presents `identity`, accepts only servers `trust` accepts.
pub fn client_config(
    identity: &Identity,
    trust: Arc<dyn TrustPolicy>,
) -> Result<quinn::ClientConfig, TlsError> {
    client_config_with(identity, trust, transport_config())
}

/// How an endpoint is built; [`Tuning::DANGAN`] is what [`endpoint`] uses, the others exist
/// to measure what each setting is worth.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    /// [`transport_config`] rather than quinn's defaults.
    transport: bool,
    /// Requested socket buffer size; `None` keeps the OS default.
    socket_buffer: Option<usize>,
}

impl Tuning {
    #[cfg(test)]
    const QUINN_DEFAULT: Tuning = Tuning {
        transport: false,
        socket_buffer: None,
    };
    const DANGAN: Tuning = Tuning {
        transport: true,
        socket_buffer: Some(SOCKET_BUFFER_BYTES),
    };
}

fn bind_socket(bind: SocketAddr, buffer: Option<usize>) -> Result<std::net::UdpSocket, TlsError> {
    let io = |context: String| move |source| TlsError::Io { context, source };
    let socket = std::net::UdpSocket::bind(bind).map_err(io(format!("bind UDP {bind}")))?;
    if let Some(bytes) = buffer {
        let state = quinn::udp::UdpSocketState::new((&socket).into())
            .map_err(io(format!("configure UDP socket {bind}")))?;
        // Best effort: a smaller buffer only costs throughput.
        if let Err(e) = state.set_recv_buffer_size((&socket).into(), bytes) {
            tracing::warn!(%bind, error = %e, "could not raise UDP receive buffer");
        }
        if let Err(e) = state.set_send_buffer_size((&socket).into(), bytes) {
            tracing::warn!(%bind, error = %e, "could not raise UDP send buffer");
        }
        tracing::debug!(
            %bind,
            recv = state.recv_buffer_size((&socket).into()).ok(),
            send = state.send_buffer_size((&socket).into()).ok(),
            "UDP socket buffers"
        );
    }
    Ok(socket)
}

fn endpoint_with(
    bind: SocketAddr,
    identity: &Identity,
    trust: Arc<dyn TrustPolicy>,
    tuning: Tuning,
) -> Result<quinn::Endpoint, TlsError> {
    let transport = || {
        if tuning.transport {
            transport_config()
        } else {
            quinn::TransportConfig::default()
        }
    };
    let server = server_config_with(identity, trust.clone(), transport())?;
    let client = client_config_with(identity, trust, transport())?;
    let socket = bind_socket(bind, tuning.socket_buffer)?;
    let runtime = quinn::default_runtime().ok_or_else(|| TlsError::Io {
        context: "start QUIC endpoint".into(),
        source: std::io::Error::other("no async runtime found (call from within tokio)"),
    })?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(|source| TlsError::Io {
        context: format!("start QUIC endpoint on {bind}"),
        source,
    })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// A QUIC endpoint on `bind` that both accepts (as [`server_config`]) and connects (as
/// [`client_config`]) with `identity`, trusting peers by `trust`, with enlarged UDP socket
/// buffers ([`SOCKET_BUFFER_BYTES`]). Must be called within a tokio runtime.
pub fn endpoint(
    bind: SocketAddr,
    identity: &Identity,
    trust: Arc<dyn TrustPolicy>,
) -> Result<quinn::Endpoint, TlsError> {
    endpoint_with(bind, identity, trust, Tuning::DANGAN)
}

/// Connects `endpoint` (built by [`endpoint`]) to `addr` and returns the connection with the
/// server's identity. See the module docs for why a server refusing *us* may only show up
/// on the first stream.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<(quinn::Connection, PublicId), TlsError> {
    let conn = endpoint.connect(addr, SERVER_NAME)?.await?;
    let peer = peer_identity(&conn).ok_or(TlsError::NoPeerIdentity)?;
    Ok((conn, peer))
}

/// How long [`close`] lets connections drain before it releases the endpoint's port anyway.
pub const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Closes every connection of `endpoint` with `reason` and releases its UDP port.
///
/// A closed connection drains for three probe timeouts before quinn lets go of the socket
/// ([`quinn::Endpoint::wait_idle`]), so that the other end surely hears the close. The probe
/// timeout follows the measured round-trip time and its variance, so on a loaded machine the
/// drain was seen to take 17 to 29 s, keeping a stopping peer's port (and a process that waits
/// for it) for that long. After [`DRAIN_GRACE`] the endpoint is moved onto a throwaway socket
/// instead, twice, so that neither the socket nor its stand-in for late packets keeps the
/// original port (RFC 9000 section 10.2 lets an endpoint end draining early by closing its
/// socket); the drain goes on in the background. Returns once the port can be bound again,
/// or after a further [`DRAIN_GRACE`].
pub async fn close(endpoint: &quinn::Endpoint, reason: &[u8]) {
    endpoint.close(0u32.into(), reason);
    if tokio::time::timeout(DRAIN_GRACE, endpoint.wait_idle())
        .await
        .is_ok()
    {
        return;
    }
    let Ok(addr) = endpoint.local_addr() else {
        return;
    };
    let throwaway = SocketAddr::new(addr.ip(), 0);
    for _ in 0..2 {
        match std::net::UdpSocket::bind(throwaway).map(|s| endpoint.rebind(s)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(%addr, error = %e, "could not move a closing endpoint off its port");
                return;
            }
        }
    }
    // The connections let go of the old socket as their drivers see the rebind.
    let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
    while std::net::UdpSocket::bind(addr).is_err() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::debug!(%addr, "released the port of an endpoint whose connections still drain");
}

/// Longest [`close_ephemeral`] waits for each connection's CONNECTION_CLOSE to leave.
pub const CLOSE_FLUSH: Duration = Duration::from_millis(100);

/// Closes every connection of an endpoint bound to an ephemeral port (a client's): each
/// connection's CONNECTION_CLOSE leaves (seen as a datagram it sent after the close; at most
/// [`CLOSE_FLUSH`]), so its peer frees the connection at once, but the drain that [`close`]
/// waits for is not waited for: nobody needs the port back, and the drain goes on in the
/// background, or ends with the process (RFC 9000 section 10.2 allows it). On loopback the
/// drain is three probe timeouts, about 90 ms, which was most of a short `dangan get`.
/// `conns` are the endpoint's connections.
pub async fn close_ephemeral(
    endpoint: &quinn::Endpoint,
    conns: &[quinn::Connection],
    reason: &[u8],
) {
    let before: Vec<u64> = conns.iter().map(|c| c.stats().udp_tx.datagrams).collect();
    endpoint.close(0u32.into(), reason);
    let deadline = tokio::time::Instant::now() + CLOSE_FLUSH;
    while conns
        .iter()
        .zip(&before)
        .any(|(c, sent)| c.stats().udp_tx.datagrams <= *sent)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The authenticated identity of the other end of `conn`.
pub fn peer_identity(conn: &quinn::Connection) -> Option<PublicId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    identity_from_certificate(certs.first()?)
        .ok()
        .map(|(_, id)| id)
}

// ---------------------------------------------------------------------------------------------
// Throughput floor

/// What one transfer measured.
#[derive(Debug, Clone, Copy)]
struct Transfer {
    mb_per_s: f64,
    lost_packets: u64,
    sent_packets: u64,
    mtu: u16,
}

async fn measure_with(bytes: u64, tuning: Tuning) -> Result<Transfer, TlsError> {
    fn transfer(context: &'static str) -> impl FnOnce(String) -> TlsError {
        move |reason| TlsError::Transfer { context, reason }
    }
    let server_id = Identity::generate(Role::Node);
    let client_id = Identity::generate(Role::Node);
    let trust: Arc<dyn TrustPolicy> = Arc::new(Membership::from_iter([
        server_id.public(),
        client_id.public(),
    ]));
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server = endpoint_with(localhost, &server_id, trust.clone(), tuning)?;
    let client = endpoint_with(localhost, &client_id, trust, tuning)?;
    let addr = server.local_addr().map_err(|source| TlsError::Io {
        context: "server address".into(),
        source,
    })?;

    let sink = tokio::spawn(async move {
        let incoming = server
            .accept()
            .await
            .ok_or_else(|| transfer("accept")("endpoint closed".into()))?;
        let conn = incoming.await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut received = 0u64;
        while let Some(chunk) = recv
            .read_chunk(usize::MAX, true)
            .await
            .map_err(|e| transfer("receive")(e.to_string()))?
        {
            received += chunk.bytes.len() as u64;
        }
        send.write_all(&received.to_le_bytes())
            .await
            .map_err(|e| transfer("acknowledge")(e.to_string()))?;
        send.finish()
            .map_err(|e| transfer("acknowledge")(e.to_string()))?;
        conn.closed().await;
        server.close(0u32.into(), b"");
        Ok::<u64, TlsError>(received)
    });

    let (conn, _) = connect(&client, addr).await?;
    let buf = vec![0xa5u8; 1 << 20];
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut left = bytes;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        send.write_all(&buf[..n])
            .await
            .map_err(|e| transfer("send")(e.to_string()))?;
        left -= n as u64;
    }
    send.finish().map_err(|e| transfer("send")(e.to_string()))?;
    let ack = recv
        .read_to_end(8)
        .await
        .map_err(|e| transfer("read acknowledgement")(e.to_string()))?;
    let elapsed = start.elapsed();
    let stats = conn.stats();
    conn.close(0u32.into(), b"done");
    client.close(0u32.into(), b"");
    let received = sink
        .await
        .map_err(|e| transfer("receiver task")(e.to_string()))??;
    let acked = <[u8; 8]>::try_from(ack.as_slice())
        .map(u64::from_le_bytes)
        .map_err(|_| transfer("read acknowledgement")("malformed".into()))?;
    if received != bytes || acked != bytes {
        return Err(transfer("verify")(format!(
            "sent {bytes} bytes, receiver counted {received}, acknowledged {acked}"
        )));
    }
    Ok(Transfer {
        mb_per_s: bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9),
        lost_packets: stats.path.lost_packets,
        sent_packets: stats.path.sent_packets,
        mtu: stats.path.current_mtu,
    })
}

/// Pushes `bytes` over one bidirectional stream of one connection between two endpoints
/// built like [`endpoint`] on 127.0.0.1, in this process, and returns the throughput in
/// MB/s (10^6 bytes per second), measured from opening the stream until the receiver has
/// acknowledged the last byte. The loopback ceiling for everything that travels over QUIC.
pub async fn measure_transport_floor(bytes: u64) -> Result<f64, TlsError> {
    let t = measure_with(bytes, Tuning::DANGAN).await?;
    tracing::debug!(
        bytes,
        mb_per_s = t.mb_per_s,
        lost_packets = t.lost_packets,
        sent_packets = t.sent_packets,
        mtu = t.mtu,
        "QUIC loopback transport floor"
    );
    Ok(t.mb_per_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::timeout;

    const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    const LIMIT: Duration = Duration::from_secs(10);

    fn node() -> Identity {
        Identity::generate(Role::Node)
    }

    fn trusting(ids: &[&Identity]) -> Arc<dyn TrustPolicy> {
        Arc::new(ids.iter().map(|i| i.public()).collect::<Membership>())
    }

    #[test]
    fn certificate_carries_the_identity_key() {
        let id = node();
        let cert = certified_key(&id).unwrap().cert[0].clone();
        let (spki, got) = identity_from_certificate(&cert).unwrap();
        assert_eq!(got, id.public());
        assert_eq!(spki.len(), 44);
        assert!(identity_from_certificate(&cert[..cert.len() - 1]).is_err());
        assert!(identity_from_certificate(&[]).is_err());
        assert!(identity_from_certificate(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        // A P-256 certificate is well-formed but not ours.
        let ec = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let err = identity_from_certificate(ec.cert.der()).unwrap_err();
        assert!(err.to_string().contains("not an Ed25519 key"), "{err}");
        // Every truncation and every single-byte corruption errors or parses; never panics.
        for i in 0..cert.len() {
            let _ = identity_from_certificate(&cert[..i]);
            let mut c = cert.to_vec();
            c[i] ^= 0xff;
            let _ = identity_from_certificate(&c);
        }
    }

    #[test]
    fn membership_operations() {
        let (a, b, c) = (node().public(), node().public(), node().public());
        let m = Membership::new();
        assert!(m.is_empty());
        assert!(m.add(a));
        assert!(!m.add(a));
        let shared = m.clone();
        assert!(shared.add(b));
        assert!(m.contains(&b) && m.is_trusted(&a));
        assert!(m.remove(&a));
        assert!(!m.remove(&a));
        m.replace([c]);
        assert_eq!(shared.members(), vec![c]);
        assert!(!m.contains(&b));
        assert_eq!(m.len(), 1);
    }

    /// A client's quick close still tells the server: its connection ends closed by the
    /// application (not by the idle timeout, 30 s away), with the client's reason.
    #[tokio::test]
    async fn an_ephemeral_close_reaches_the_server_without_waiting_for_the_drain() {
        let (s, c) = (node(), node());
        let server = endpoint(LOCAL, &s, trusting(&[&c])).unwrap();
        let client = endpoint(LOCAL, &c, trusting(&[&s])).unwrap();
        let addr = server.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            conn.closed().await
        });
        let (conn, _) = timeout(LIMIT, connect(&client, addr))
            .await
            .unwrap()
            .unwrap();
        timeout(LIMIT, close_ephemeral(&client, &[conn], b"client closing"))
            .await
            .unwrap();
        match timeout(LIMIT, srv).await.unwrap().unwrap() {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(&close.reason[..], b"client closing");
            }
            other => panic!("the server saw {other:?}"),
        }
    }

    /// Server side of the refusal tests: the next incoming connection must fail its handshake.
    async fn expect_server_refuses(server: &quinn::Endpoint) -> quinn::ConnectionError {
        let incoming = timeout(LIMIT, server.accept()).await.unwrap().unwrap();
        timeout(LIMIT, incoming)
            .await
            .unwrap()
            .expect_err("server must not hand an untrusted connection to the application")
    }

    #[tokio::test]
    async fn trusted_peers_connect_and_exchange_bytes() {
        let (s, c) = (node(), node());
        let server = endpoint(LOCAL, &s, trusting(&[&c])).unwrap();
        let client = endpoint(LOCAL, &c, trusting(&[&s])).unwrap();
        let addr = server.local_addr().unwrap();
        let client_pub = c.public();
        let srv = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            assert_eq!(peer_identity(&conn), Some(client_pub));
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let got = recv.read_to_end(1 << 20).await.unwrap();
            send.write_all(&got).await.unwrap();
            send.write_all(b"!").await.unwrap();
            send.finish().unwrap();
            conn.closed().await;
        });
        let (conn, server_pub) = timeout(LIMIT, connect(&client, addr))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(server_pub, s.public());
        assert_eq!(peer_identity(&conn), Some(s.public()));
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello shard").await.unwrap();
        send.finish().unwrap();
        let back = timeout(LIMIT, recv.read_to_end(1 << 20))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, b"hello shard!");
        let alpn = conn
            .handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol;
        assert_eq!(alpn.as_deref(), Some(ALPN));
        conn.close(0u32.into(), b"bye");
        timeout(LIMIT, srv).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_closed_endpoint_releases_its_port_while_its_connections_drain() {
        let s = node();
        let server = endpoint(LOCAL, &s, trusting(&[])).unwrap();
        let addr = server.local_addr().unwrap();
        // A handshake with something that never answers has no round-trip sample, so once
        // closed it drains for three initial probe timeouts (about 3 s).
        let silent = std::net::UdpSocket::bind(LOCAL).unwrap();
        let connecting = server
            .connect(silent.local_addr().unwrap(), SERVER_NAME)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        close(&server, b"stopping").await;
        assert!(
            started.elapsed() < 4 * DRAIN_GRACE,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(server.open_connections(), 1, "still draining");
        // A restarted server takes the same port at once.
        let again = endpoint(addr, &s, trusting(&[])).unwrap();
        assert_eq!(again.local_addr().unwrap(), addr);
        assert!(timeout(LIMIT, connecting).await.unwrap().is_err());
        timeout(LIMIT, server.wait_idle()).await.unwrap();
    }

    #[tokio::test]
    async fn untrusted_client_is_refused() {
        let (s, c) = (node(), node());
        let server = endpoint(LOCAL, &s, trusting(&[])).unwrap();
        let client = endpoint(LOCAL, &c, trusting(&[&s])).unwrap();
        let addr = server.local_addr().unwrap();
        let srv = tokio::spawn(async move { expect_server_refuses(&server).await });

        // TLS 1.3: the client may finish its side first; the refusal then arrives on the
        // first stream.
        let client_err = match timeout(LIMIT, connect(&client, addr)).await.unwrap() {
            Err(e) => e.to_string(),
            Ok((conn, _)) => {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                let _ = send.write_all(b"let me in").await;
                let _ = send.finish();
                timeout(LIMIT, recv.read_to_end(1024))
                    .await
                    .unwrap()
                    .expect_err("an untrusted client must not get an answer");
                // The stream error only says "connection lost"; the reason is here.
                conn.closed().await.to_string()
            }
        };
        let server_err = timeout(LIMIT, srv).await.unwrap().unwrap();
        assert!(
            server_err.to_string().contains("not in the trust set"),
            "server: {server_err}"
        );
        println!("server saw: {server_err}\nclient saw: {client_err}");
        assert!(
            client_err.contains("not in the trust set"),
            "client: {client_err}"
        );
    }

    #[tokio::test]
    async fn untrusted_server_is_refused() {
        let (s, c) = (node(), node());
        let server = endpoint(LOCAL, &s, trusting(&[&c])).unwrap();
        let client = endpoint(LOCAL, &c, trusting(&[])).unwrap();
        let addr = server.local_addr().unwrap();
        let srv = tokio::spawn(async move { expect_server_refuses(&server).await });
        let err = timeout(LIMIT, connect(&client, addr))
            .await
            .unwrap()
            .expect_err("client must refuse an untrusted server");
        let server_err = timeout(LIMIT, srv).await.unwrap().unwrap();
        println!("client saw: {err}\nserver saw: {server_err}");
        assert!(err.to_string().contains("not in the trust set"), "{err}");
    }

    #[tokio::test]
    async fn membership_change_applies_to_new_connections() {
        let (s, c) = (node(), node());
        let members = Membership::new();
        let server = endpoint(LOCAL, &s, Arc::new(members.clone())).unwrap();
        let client = endpoint(LOCAL, &c, trusting(&[&s])).unwrap();
        let addr = server.local_addr().unwrap();
        members.add(c.public());
        let accept = {
            let server = server.clone();
            tokio::spawn(async move { server.accept().await.unwrap().await })
        };
        let (conn, _) = connect(&client, addr).await.unwrap();
        let conn_s = timeout(LIMIT, accept).await.unwrap().unwrap().unwrap();
        assert_eq!(peer_identity(&conn_s), Some(c.public()));
        conn.close(0u32.into(), b"");

        members.remove(&c.public());
        let srv = tokio::spawn(async move { expect_server_refuses(&server).await });
        let _ = connect(&client, addr).await;
        let err = timeout(LIMIT, srv).await.unwrap().unwrap();
        assert!(err.to_string().contains("not in the trust set"), "{err}");
    }

    /// A hand-built client: `cert` presented, `key` signing, `alpn` offered, trusting `server`.
    fn custom_client(
        cert: CertificateDer<'static>,
        key: &Identity,
        alpn: &[u8],
        server: &Identity,
    ) -> quinn::ClientConfig {
        let provider = provider();
        let signer = rustls::crypto::ring::sign::any_eddsa_type(
            &rustls::pki_types::PrivatePkcs8KeyDer::from(key.pkcs8_der()),
        )
        .unwrap();
        let certified = rustls::sign::CertifiedKey::new(vec![cert], signer);
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier(&provider, trusting(&[server]), "client"))
            .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        tls.alpn_protocols = vec![alpn.to_vec()];
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
    }

    #[tokio::test]
    async fn wrong_alpn_is_refused() {
        let (s, c) = (node(), node());
        let server = endpoint(LOCAL, &s, trusting(&[&c])).unwrap();
        let addr = server.local_addr().unwrap();
        let srv = tokio::spawn(async move { expect_server_refuses(&server).await });

        // Same identity checks, different protocol.
        let config = custom_client(
            certified_key(&c).unwrap().cert[0].clone(),
            &c,
            b"dangan/0",
            &s,
        );
        let client = quinn::Endpoint::client(LOCAL).unwrap();
        let err = timeout(
            LIMIT,
            client.connect_with(config, addr, SERVER_NAME).unwrap(),
        )
        .await
        .unwrap()
        .expect_err("wrong ALPN must be refused");
        let server_err = timeout(LIMIT, srv).await.unwrap().unwrap();
        println!("client saw: {err}\nserver saw: {server_err}");
        assert!(err.to_string().contains("known protocol"), "client: {err}");
        assert!(
            server_err.to_string().contains("known protocol"),
            "server: {server_err}"
        );
    }

    /// Presenting a trusted member's certificate without its private key fails: the
    /// handshake signature is checked against the certificate's key.
    #[tokio::test]
    async fn stolen_certificate_is_refused() {
        let (s, c, mallory) = (node(), node(), node());
        let server = endpoint(LOCAL, &s, trusting(&[&c])).unwrap();
        let addr = server.local_addr().unwrap();
        let srv = tokio::spawn(async move { expect_server_refuses(&server).await });

        let config = custom_client(
            certified_key(&c).unwrap().cert[0].clone(),
            &mallory,
            ALPN,
            &s,
        );
        let client = quinn::Endpoint::client(LOCAL).unwrap();
        let outcome = timeout(
            LIMIT,
            client.connect_with(config, addr, SERVER_NAME).unwrap(),
        )
        .await
        .unwrap();
        if let Ok(conn) = outcome {
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            let _ = send.write_all(b"x").await;
            timeout(LIMIT, conn.closed()).await.unwrap();
        }
        let server_err = timeout(LIMIT, srv).await.unwrap().unwrap();
        println!("server saw: {server_err}");
        assert!(
            server_err.to_string().contains("BadSignature"),
            "server: {server_err}"
        );
    }

    #[tokio::test]
    async fn floor_measures_something() {
        let mbps = measure_transport_floor(8 << 20).await.unwrap();
        assert!(mbps > 0.0);
    }

    /// `cargo test --release -- --ignored --nocapture transport_figures`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn transport_figures() {
        const BYTES: u64 = 256 << 20;
        let socket = bind_socket(LOCAL, Some(SOCKET_BUFFER_BYTES)).unwrap();
        let state = quinn::udp::UdpSocketState::new((&socket).into()).unwrap();
        println!(
            "socket buffers after requesting {SOCKET_BUFFER_BYTES}: recv {} send {}",
            state.recv_buffer_size((&socket).into()).unwrap(),
            state.send_buffer_size((&socket).into()).unwrap()
        );
        let variants = [
            ("quinn default", Tuning::QUINN_DEFAULT),
            (
                "windows only",
                Tuning {
                    transport: true,
                    socket_buffer: None,
                },
            ),
            (
                "socket buffers only",
                Tuning {
                    transport: false,
                    socket_buffer: Some(SOCKET_BUFFER_BYTES),
                },
            ),
            ("dangan (both)", Tuning::DANGAN),
        ];
        for round in 0..3 {
            for (name, tuning) in variants {
                let t = measure_with(BYTES, tuning).await.unwrap();
                println!(
                    "round {round} {name:>20}: {:8.1} MB/s, lost {:>6} of {:>7} packets, MTU {}",
                    t.mb_per_s, t.lost_packets, t.sent_packets, t.mtu
                );
            }
        }
    }
}
