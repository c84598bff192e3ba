//! The sealed fetch: a gateway fetches a document's ciphertext for a citizen, under the
//! citizen's read delegation (`delegation`), and relays it to the citizen's browser, which
//! unwraps the key and decrypts. The gateway never holds the data key: it proves the
//! registration (the record showing the citizen's grant alone, `GetDelegatedDocument`),
//! takes the citizen's wrapped key from it, fetches the manifest and per stripe any k
//! shards under the delegation (hedged, as a get does), checks their hashes, erasure-decodes
//! to the stripe's sealed segments (`codec::rebuild_sealed`) and writes the `DGNSEAL1`
//! stream (`docs/formats.md`) in order, a few stripes in memory at a time.
//!
//! Not for: decrypting (the browser does), or deciding who may read (the peers check the
//! delegation and the citizen's grant, `access`).

use super::get::{Decode, Reading};
use super::*;
use crate::codec::{SealedStripe, rebuild_sealed};
use crate::erasure::Erasure;
use crate::grant::SEALED_LEN;

/// First bytes of a sealed stream.
pub const SEALED_MAGIC: &[u8; 8] = b"DGNSEAL1";

/// A document ready to be streamed sealed to a citizen: everything checked that can be
/// before the first byte goes out.
#[derive(Debug, Clone)]
pub struct SealedDocument {
    pub delegation: Delegation,
    /// The manifest and the verified proof of its registration.
    pub receipt: Receipt,
    /// The citizen's wrapped data key, from its live grant, proven on chain.
    pub wrapped: WrappedKey,
    pub manifest: Arc<Manifest>,
}

impl SealedDocument {
    /// The stream's head: [`SEALED_MAGIC`], the receipt's length (u32 big-endian) and
    /// bytes, then the wrapped key's `enc` (32 bytes) and `sealed` (48 bytes).
    pub fn head(&self) -> Vec<u8> {
        let receipt = self.receipt.encode();
        let mut head = Vec::with_capacity(8 + 4 + receipt.len() + 32 + SEALED_LEN);
        head.extend_from_slice(SEALED_MAGIC);
        head.extend_from_slice(&(receipt.len() as u32).to_be_bytes());
        head.extend_from_slice(&receipt);
        head.extend_from_slice(&self.wrapped.enc);
        head.extend_from_slice(&self.wrapped.sealed);
        head
    }

    /// Bytes of the whole stream: the head and every stripe's sealed segments.
    pub fn len(&self) -> u64 {
        let body: u64 = (0..self.manifest.stripe_count())
            .map(|i| self.manifest.stripe(i).cipher_len)
            .sum();
        self.head().len() as u64 + body
    }

    /// Never: a stream has at least its head.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Client {
    /// Checks what can be checked before streaming `delegation.document` sealed to the
    /// citizen who signed `delegation` (naming this client as the gateway): the registration
    /// proven with the citizen's live grant (its wrapped key), the manifest from the peers
    /// under the delegation, and the receipt.
    pub async fn prepare_sealed(
        &self,
        delegation: &Delegation,
    ) -> Result<SealedDocument, ClientError> {
        let id = delegation.document;
        let not_granted = ClientError::NotGranted {
            id,
            reader: delegation.citizen,
        };
        let (record, registration) = match self.chain()?.delegated_registration(delegation).await {
            Err(ChainError::Refused(reason)) => return Err(ClientError::Refused { id, reason }),
            other => other?,
        };
        let grant = record
            .live_grant(&delegation.citizen, crate::now_ms())
            .ok_or(not_granted)?;
        let wrapped = grant.wrapped.clone();
        if wrapped.sealed.len() != SEALED_LEN {
            return Err(crate::grant::GrantError::Unwrap.into());
        }
        let manifest = self.manifest_delegated(delegation).await?;
        let receipt = self.receipt_of(id, manifest.encode(), registration).await?;
        Ok(SealedDocument {
            delegation: *delegation,
            receipt,
            wrapped,
            manifest: Arc::new(manifest),
        })
    }

    /// Writes `doc`'s sealed stream to `writer` (see [`SealedDocument::head`], then every
    /// stripe's sealed segments in order, rebuilt from any k shards fetched under the
    /// delegation, `stripes_in_flight` at a time); returns the bytes written. An error after
    /// the first byte leaves the stream short: the reader detects it (STREAM's last-segment
    /// flag never comes).
    pub async fn stream_sealed<W>(
        &self,
        doc: &SealedDocument,
        mut writer: W,
    ) -> Result<u64, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        let head = doc.head();
        writer.write_all(&head).await.map_err(ClientError::Write)?;
        let mut written = head.len() as u64;
        let manifest = doc.manifest.clone();
        let erasure = Erasure::new(manifest.params.k.into(), manifest.params.m.into())
            .map_err(CodecError::from)?;
        let decode: Decode<SealedStripe> = Arc::new(move |m, i, shards| {
            let stripe = rebuild_sealed(m, &erasure, i, shards)?;
            let corrupt = stripe.corrupt.clone();
            Ok((stripe, corrupt))
        });
        let reading = Arc::new(Reading {
            id: doc.delegation.document,
            manifest: Bytes::from(doc.receipt.manifest.clone()),
            delegation: Some(doc.delegation),
        });
        let in_flight = self.inner.options.stripes_in_flight.max(1);
        let mut stripes = futures::stream::iter(0..manifest.stripe_count())
            .map(|i| {
                let (manifest, decode, reading) =
                    (manifest.clone(), decode.clone(), reading.clone());
                async move { self.fetch_and_decode(manifest, decode, &reading, i).await }
            })
            .buffered(in_flight);
        while let Some(res) = stripes.next().await {
            let (stripe, corrupt) = res?;
            for (index, slot, peer) in corrupt {
                warn!(document = %doc.delegation.document, stripe = index, slot, peer = %peer.short(), "corrupt shard reported for repair");
            }
            writer
                .write_all(&stripe.sealed)
                .await
                .map_err(ClientError::Write)?;
            written += stripe.sealed.len() as u64;
        }
        writer.flush().await.map_err(ClientError::Write)?;
        Ok(written)
    }

    /// [`Client::prepare_sealed`] then [`Client::stream_sealed`].
    pub async fn fetch_sealed<W>(
        &self,
        delegation: &Delegation,
        writer: W,
    ) -> Result<u64, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        let doc = self.prepare_sealed(delegation).await?;
        self.stream_sealed(&doc, writer).await
    }

    /// The manifest of `delegation.document`, fetched under the delegation from the first
    /// peer (in [`Client::manifest_candidates`] order) whose bytes hash to the id.
    pub async fn manifest_delegated(
        &self,
        delegation: &Delegation,
    ) -> Result<Manifest, ClientError> {
        let id = delegation.document;
        let nodes = self.manifest_candidates(&id)?;
        let order = (0..nodes.len()).collect();
        let net = &self.inner.net;
        let req = &Request::GetDelegatedManifest {
            delegation: *delegation,
        };
        let hedged = net
            .hedged_retrying(&nodes, order, 1, |node, _| async move {
                match net
                    .fetch(&node, req, None, proto::MAX_MANIFEST_BODY)
                    .await?
                {
                    Some(body) if id.verifies(&body) => Ok(Bytes::from(body)),
                    Some(_) => Err(net.peer_error(
                        &node,
                        proto::ProtoError::Unexpected("manifest does not match its id".into()),
                    )),
                    None => Err(net.unexpected(&node, Response::NotFound)),
                }
            })
            .await;
        match hedged.results.iter().flatten().next() {
            Some(body) => Ok(Manifest::decode(body)?),
            None => Err(ClientError::NotFound {
                id,
                errors: hedged.errors(),
            }),
        }
    }
}
