//! Typed documents (`chain::records`) from the client's side: the type fetched from the
//! chain with its proof, the metadata checked against the type's schema and the department
//! against the type's list *before* anything is stored, the metadata sealed with the
//! document's data key (`crypto::seal_meta`, the S3 gateway's one way) and registered with
//! the document in one `RegisterRecord`; and, for a reader holding the key, the metadata
//! opened again.
//!
//! Not for: deciding (the chain checks the department and the type version again, and the
//! schema was checked when the type was defined), or holds (chain transactions of an
//! archives authority, `ChainClient::submit`).

use super::*;
use crate::chain::records::{RecordEntry, RecordsError, TypeRecord};

impl Client {
    /// The current version of document type `name`, proven against a final header.
    pub async fn record_type(&self, name: &str) -> Result<TypeRecord, ClientError> {
        self.chain()?
            .doc_type(name, None)
            .await?
            .ok_or_else(|| ClientError::NoSuchType(name.to_string()))
    }

    /// Refused unless this client's department may store type `t` and `meta` (JSON) matches
    /// its schema: the failing places named by their JSON pointers.
    pub fn check_record(&self, t: &TypeRecord, meta: &[u8]) -> Result<(), ClientError> {
        let me = self.public();
        if !t.def.stores.allows(&me) {
            return Err(RecordsError::NotForDepartment {
                name: t.def.name.clone(),
                department: me,
            }
            .into());
        }
        t.def.check_meta(t.version, meta)?;
        Ok(())
    }

    /// Registers a document [`Client::store`] stored as a record of type `t` (checked with
    /// [`Client::check_record`] before it was stored), its metadata `meta` sealed with the
    /// document's data key. As [`Client::register`] otherwise.
    pub async fn register_record(
        &self,
        mut receipt: PutReceipt,
        t: &TypeRecord,
        meta: &[u8],
    ) -> Result<PutReceipt, ClientError> {
        let chain = self.chain()?;
        let start = Instant::now();
        let id = receipt.id;
        let body = TxBody::RegisterRecord {
            document: id,
            type_name: t.def.name.clone(),
            type_version: t.version,
            meta: crate::crypto::seal_meta(&receipt.key, meta),
        };
        receipt.registered = Some(
            chain
                .submit(body)
                .await
                .map_err(|e| ClientError::Register {
                    id,
                    source: Box::new(e),
                })?,
        );
        receipt.timings.registered = start.elapsed();
        Ok(receipt)
    }

    /// Stores and registers a record of type `type_name` with metadata `meta` (JSON): the
    /// type and the metadata are checked first, and nothing is stored if they fail.
    pub async fn put_record<R>(
        &self,
        reader: R,
        size: Option<u64>,
        info: DocumentInfo,
        type_name: &str,
        meta: &[u8],
        progress: Progress<'_>,
    ) -> Result<PutReceipt, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let t = self.record_type(type_name).await?;
        self.check_record(&t, meta)?;
        let stored = self.store(reader, size, info, progress).await?;
        self.register_record(stored, &t, meta).await
    }

    /// `id`'s record entry (type, retention, holds), proven; `None` for a document with
    /// neither a type nor a hold.
    pub async fn record_entry(&self, id: &DocumentId) -> Result<Option<RecordEntry>, ClientError> {
        Ok(self.chain()?.record_entry(id).await?)
    }

    /// The metadata of typed document `id` opened with its data `key` (JSON text); `None`
    /// if it is not typed. A key that does not open it is `ClientError::MetaSealed`.
    pub async fn record_meta(
        &self,
        id: &DocumentId,
        key: &DataKey,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let Some(typed) = self.record_entry(id).await?.and_then(|e| e.typed) else {
            return Ok(None);
        };
        crate::crypto::open_meta(key, &typed.meta)
            .map(Some)
            .ok_or(ClientError::MetaSealed(*id))
    }
}
