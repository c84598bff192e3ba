//! Records: document types, the type and retention of each typed document, and legal holds.
//! The part of the chain state that makes a stored file an official record.
//!
//! A **type** ([`TypeDef`]) names a JSON Schema for its documents' metadata, a retention
//! period (days, or permanent) with a retention class label, and who may store it (named
//! departments, or any). It is defined and changed by `TxBody::DefineType`, which carries the
//! approvals of a majority of the validators (`Tx::check_majority`, the governance of
//! `state`); each change is a new version, and every version stays on chain under its own
//! key, so a document keeps the version it was stored under. The schema is checked to be a
//! valid JSON Schema (the `jsonschema` crate, no remote references) when it is defined.
//!
//! A **typed document** is registered by `TxBody::RegisterRecord`: the chain checks that the
//! type's current version is the one named and that the sending department may store it,
//! and computes the retention end from the type and the registering block's time. Public on
//! chain: the type (name, version), the retention class and the retention end. The
//! metadata travels sealed with a key derived from the document's data key
//! (`crypto::seal_meta`): the chain keeps it and cannot read it, and never checks it against
//! the schema (the client does, before anything is stored).
//!
//! A **legal hold** is set and lifted by an archives authority (`Role::Archives`) with a
//! reason (`TxBody::SetHold`, `TxBody::LiftHold`); several may stand on one document, each
//! under its own name (a case reference). [`Records::destruction_blocked`] is the one check
//! destruction asks: the retention not ended, or a hold standing.
//!
//! Both maps are [`RootedMap`]s in the state root (`state::StateTop::records`, a leaf added
//! only once a type exists, so older chains keep their roots), so a type or a document's
//! entry is proven against a final header like the rest (`chain::proof::ProvenType`,
//! `chain::proof::ProvenRecordEntry`).
//!
//! Not for: who sent a transaction, its nonce and role (`state::State::apply`), reading the
//! metadata (the client, with the data key), or destruction itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::merkle::Hash;
use super::rooted::{RootedKey, RootedMap};
use super::tx::TxError;
use crate::id::DocumentId;
use crate::identity::PublicId;

/// Longest type name, in bytes.
pub const MAX_TYPE_NAME: usize = 64;
/// Longest retention class label, in bytes.
pub const MAX_CLASS: usize = 64;
/// Largest metadata schema (compact JSON), in bytes.
pub const MAX_SCHEMA: usize = 16 << 10;
/// Most departments a type may name.
pub const MAX_TYPE_DEPARTMENTS: usize = 256;
/// Longest retention: 200 years of days.
pub const MAX_RETENTION_DAYS: u32 = 200 * 366;
/// Most bytes of sealed metadata a typed document carries.
pub const MAX_RECORD_META: usize = super::names::MAX_NAME_META;
/// Most holds standing on one document at once.
pub const MAX_HOLDS: usize = 64;
/// Longest hold name (a case reference), in bytes.
pub const MAX_HOLD_NAME: usize = 128;
/// Longest hold reason, in bytes.
pub const MAX_HOLD_REASON: usize = 1024;
/// Milliseconds in a day: retention is counted in days of 86 400 s from the registering
/// block's time.
pub const DAY_MS: u64 = 86_400_000;

/// How long a type's documents are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// This many days from the registering block's time (1 ..= [`MAX_RETENTION_DAYS`]).
    Days(u32),
    /// Never destroyed.
    Permanent,
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retention::Days(d) => write!(f, "{d} days"),
            Retention::Permanent => f.write_str("permanent"),
        }
    }
}

/// Who may store documents of a type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stores {
    /// Any department.
    Any,
    /// Only these departments (in key order, each once).
    Departments(Vec<PublicId>),
}

impl Stores {
    /// Whether `department` may store documents of a type that says this.
    pub fn allows(&self, department: &PublicId) -> bool {
        match self {
            Stores::Any => true,
            Stores::Departments(d) => d.binary_search(department).is_ok(),
        }
    }
}

/// A document type, as a `DefineType` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeDef {
    /// 1 to [`MAX_TYPE_NAME`] lower-case letters, digits and hyphens.
    pub name: String,
    /// The metadata's JSON Schema, as compact JSON text.
    pub schema: String,
    pub retention: Retention,
    /// The retention class label (e.g. "vital-records"), public with each document.
    pub class: String,
    pub stores: Stores,
}

/// A type file (`config/types/*.json`, `dangan type define FILE`): a [`TypeDef`] with its
/// schema as a JSON object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeFile {
    pub name: String,
    pub retention: Retention,
    pub class: String,
    pub stores: Stores,
    pub schema: serde_json::Value,
}

impl TypeFile {
    /// Reads and checks a type file (the same checks the chain makes).
    pub fn load(path: &std::path::Path) -> Result<TypeDef, RecordsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RecordsError::File(format!("{}: {e}", path.display())))?;
        let file: TypeFile = serde_json::from_str(&text)
            .map_err(|e| RecordsError::File(format!("{}: {e}", path.display())))?;
        let def = file.into_def();
        def.check()
            .map_err(|e| RecordsError::File(format!("{}: {e}", path.display())))?;
        Ok(def)
    }

    /// The definition, with its schema as compact JSON and its departments in key order.
    pub fn into_def(self) -> TypeDef {
        let stores = match self.stores {
            Stores::Departments(mut d) => {
                d.sort();
                d.dedup();
                Stores::Departments(d)
            }
            any => any,
        };
        TypeDef {
            name: self.name,
            schema: self.schema.to_string(),
            retention: self.retention,
            class: self.class,
            stores,
        }
    }
}

/// Why a type file or a document's metadata was refused (outside the chain).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordsError {
    #[error("type file {0}")]
    File(String),
    #[error("the metadata is not JSON: {0}")]
    NotJson(String),
    /// `errors`: each failing place as a JSON pointer (`/child/name`; empty for the whole
    /// document) with why.
    #[error("the metadata does not match the schema of type {name} v{version}: {}", .errors.iter().map(|(at, why)| format!("at {}: {why}", if at.is_empty() { "the top level" } else { at })).collect::<Vec<_>>().join("; "))]
    MetaRefused {
        name: String,
        version: u32,
        errors: Vec<(String, String)>,
    },
    #[error(
        "type {name} may be stored only by the departments it names, and {department} is not one"
    )]
    NotForDepartment { name: String, department: PublicId },
}

/// Most schema errors one refusal lists.
const MAX_META_ERRORS: usize = 8;

impl TypeDef {
    /// Refused unless every field is within its bounds and the schema is a valid JSON
    /// Schema. Deterministic: validators run it in `State::apply`.
    pub fn check(&self) -> Result<(), TxError> {
        check_type_name(&self.name)?;
        if self.class.is_empty()
            || self.class.len() > MAX_CLASS
            || self.class.chars().any(char::is_control)
        {
            return Err(TxError::Invalid(format!(
                "a retention class is 1 to {MAX_CLASS} bytes without control characters"
            )));
        }
        if let Retention::Days(d) = self.retention
            && !(1..=MAX_RETENTION_DAYS).contains(&d)
        {
            return Err(TxError::Invalid(format!(
                "a retention is 1 to {MAX_RETENTION_DAYS} days, or permanent; not {d}"
            )));
        }
        if let Stores::Departments(d) = &self.stores {
            if d.is_empty() || d.len() > MAX_TYPE_DEPARTMENTS {
                return Err(TxError::Invalid(format!(
                    "a type names 1 to {MAX_TYPE_DEPARTMENTS} departments, or any"
                )));
            }
            if d.windows(2).any(|w| w[0] >= w[1]) {
                return Err(TxError::Invalid(
                    "a type's departments are in key order, each once".into(),
                ));
            }
        }
        self.validator().map(drop)
    }

    /// The compiled schema; refused if it is too large, not JSON or not a valid schema.
    fn validator(&self) -> Result<jsonschema::Validator, TxError> {
        if self.schema.len() > MAX_SCHEMA {
            return Err(TxError::Invalid(format!(
                "a metadata schema is at most {MAX_SCHEMA} bytes, this one {}",
                self.schema.len()
            )));
        }
        let schema: serde_json::Value = serde_json::from_str(&self.schema)
            .map_err(|e| TxError::Invalid(format!("the metadata schema is not JSON: {e}")))?;
        if !schema.is_object() {
            return Err(TxError::Invalid(
                "the metadata schema is not a JSON object".into(),
            ));
        }
        jsonschema::validator_for(&schema).map_err(|e| {
            TxError::Invalid(format!(
                "the metadata schema is not a valid JSON Schema: {e}"
            ))
        })
    }

    /// Checks `meta` (JSON text) against this type's schema, version `version`: every
    /// failing place named by its JSON pointer (at most a few), nothing else looked at.
    pub fn check_meta(&self, version: u32, meta: &[u8]) -> Result<(), RecordsError> {
        let value: serde_json::Value =
            serde_json::from_slice(meta).map_err(|e| RecordsError::NotJson(e.to_string()))?;
        let validator = self.validator().map_err(|e| RecordsError::MetaRefused {
            name: self.name.clone(),
            version,
            errors: vec![(String::new(), e.to_string())],
        })?;
        let errors: Vec<(String, String)> = validator
            .iter_errors(&value)
            .take(MAX_META_ERRORS)
            .map(|e| (e.instance_path().to_string(), e.to_string()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RecordsError::MetaRefused {
                name: self.name.clone(),
                version,
                errors,
            })
        }
    }
}

/// Refused unless `name` is 1 to [`MAX_TYPE_NAME`] lower-case ASCII letters, digits and
/// hyphens, starting with a letter.
pub fn check_type_name(name: &str) -> Result<(), TxError> {
    let b = name.as_bytes();
    let ok = (1..=MAX_TYPE_NAME).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(TxError::Invalid(format!(
            "type name {name:?}: 1 to {MAX_TYPE_NAME} lower-case letters, digits and '-', starting with a letter"
        )))
    }
}

/// A type's version as the chain holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeRecord {
    pub def: TypeDef,
    /// 1 for the first definition, one more for each change.
    pub version: u32,
    /// Height and time of the block that defined this version.
    pub height: u64,
    pub time_ms: u64,
}

/// The address of a type version in the types map: BLAKE3 (derive-key mode) of the name
/// and the version; version 0 is the type's current version (a copy of the newest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TypeKey(pub [u8; 32]);

const TYPE_CONTEXT: &str = "dangan 2026 document type v1";

impl TypeKey {
    /// The key of `name`'s version `version` (0: its current version).
    pub fn of(name: &str, version: u32) -> Self {
        let bytes =
            postcard::to_allocvec(&(name, version)).expect("encoding into memory cannot fail");
        Self(blake3::derive_key(TYPE_CONTEXT, &bytes))
    }

    /// The key of `name`'s current version.
    pub fn current(name: &str) -> Self {
        Self::of(name, 0)
    }
}

impl RootedKey for TypeKey {
    fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// What the chain says of one document as a record: its type and retention (if it was
/// registered with a type) and the holds standing on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEntry {
    pub typed: Option<Typed>,
    /// Standing holds by name.
    pub holds: BTreeMap<String, Hold>,
}

/// A typed document's public facts, fixed at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typed {
    pub type_name: String,
    pub type_version: u32,
    pub class: String,
    pub retention: Retention,
    /// The registering block's time.
    pub registered_ms: u64,
    /// When the retention ends (`None`: permanent).
    pub retention_ends_ms: Option<u64>,
    /// The metadata sealed with the document's data key (`crypto::seal_meta`).
    pub meta: Vec<u8>,
}

/// A legal hold standing on a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub reason: String,
    /// The archives authority that set it.
    pub by: PublicId,
    /// Height and time of the block that set it.
    pub height: u64,
    pub time_ms: u64,
}

/// Why a document may not be destroyed now ([`Records::destruction_blocked`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Why {
    /// The chain does not know the document.
    NotRegistered,
    /// Kept: its retention has not ended (`retained`), or holds stand (`holds`, by name), or
    /// both.
    Kept {
        retained: Option<Retained>,
        holds: Vec<(String, Hold)>,
    },
}

/// A retention that has not ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained {
    pub class: String,
    /// `None`: permanent.
    pub ends_ms: Option<u64>,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::NotRegistered => f.write_str("the document is not registered"),
            Why::Kept { retained, holds } => {
                let mut parts = Vec::new();
                match retained {
                    Some(Retained {
                        class,
                        ends_ms: Some(ends),
                    }) => parts.push(format!("its retention ({class}) ends on {}", utc(*ends))),
                    Some(Retained {
                        class,
                        ends_ms: None,
                    }) => parts.push(format!("it is kept permanently ({class})")),
                    None => {}
                }
                for (name, hold) in holds {
                    parts.push(format!(
                        "hold {name:?} by {} stands: {}",
                        hold.by, hold.reason
                    ));
                }
                f.write_str(&parts.join("; "))
            }
        }
    }
}

/// `ms` (Unix milliseconds) as an RFC 7231 date in UTC, e.g. "Tue, 08 Dec 2026 00:00:00 GMT";
/// past what a `SystemTime` holds, the milliseconds themselves.
pub fn utc(ms: u64) -> String {
    std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_millis(ms))
        .filter(|t| *t < std::time::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_799))
        .map_or_else(|| format!("{ms} ms since 1970"), httpdate::fmt_http_date)
}

/// Document types and documents' record entries: two rooted maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    types: RootedMap<TypeKey, TypeRecord>,
    entries: RootedMap<DocumentId, RecordEntry>,
}

impl Records {
    pub fn is_empty(&self) -> bool {
        self.types.is_empty() && self.entries.is_empty()
    }

    /// The roots of the types' and the entries' maps.
    pub fn roots(
        &self,
        type_leaf: impl Fn(&TypeKey, &TypeRecord) -> Hash,
        entry_leaf: impl Fn(&DocumentId, &RecordEntry) -> Hash,
    ) -> (Hash, Hash) {
        (self.types.root(type_leaf), self.entries.root(entry_leaf))
    }

    pub(super) fn type_map(&self) -> &RootedMap<TypeKey, TypeRecord> {
        &self.types
    }

    pub(super) fn entry_map(&self) -> &RootedMap<DocumentId, RecordEntry> {
        &self.entries
    }

    /// `name`'s current version (`version` 0 or `None`), or the version asked.
    pub fn type_version(&self, name: &str, version: Option<u32>) -> Option<&TypeRecord> {
        self.types.get(&TypeKey::of(name, version.unwrap_or(0)))
    }

    /// The current version of every type, by name.
    pub fn current_types(&self) -> Vec<TypeRecord> {
        let mut out: Vec<TypeRecord> = self
            .types
            .iter()
            .filter(|(k, t)| **k == TypeKey::current(&t.def.name))
            .map(|(_, t)| t.clone())
            .collect();
        out.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        out
    }

    /// A document's entry, if it is typed or held.
    pub fn entry(&self, document: &DocumentId) -> Option<&RecordEntry> {
        self.entries.get(document)
    }

    /// The version a new definition of `def.name` must carry, once `def` is checked.
    pub(super) fn check_define(&self, def: &TypeDef, version: u32) -> Result<(), TxError> {
        def.check()?;
        let expected = self
            .type_version(&def.name, None)
            .map_or(1, |t| t.version.saturating_add(1));
        if version != expected {
            return Err(TxError::TypeVersion {
                name: def.name.clone(),
                expected,
                got: version,
            });
        }
        Ok(())
    }

    pub(super) fn define(&mut self, record: TypeRecord) {
        self.types.insert(
            TypeKey::of(&record.def.name, record.version),
            record.clone(),
        );
        self.types
            .insert(TypeKey::current(&record.def.name), record);
    }

    /// The record entry of a document `department` registers as `name` version `version`
    /// at `time_ms`, with `meta` sealed; refused if that is not the type's current version
    /// or the department may not store it.
    pub(super) fn check_register(
        &self,
        department: &PublicId,
        name: &str,
        version: u32,
        meta: &[u8],
        time_ms: u64,
    ) -> Result<RecordEntry, TxError> {
        let t = self
            .type_version(name, None)
            .ok_or_else(|| TxError::NoSuchType(name.to_string()))?;
        if t.version != version {
            return Err(TxError::TypeVersion {
                name: name.to_string(),
                expected: t.version,
                got: version,
            });
        }
        if !t.def.stores.allows(department) {
            return Err(TxError::TypeNotForDepartment {
                name: name.to_string(),
                department: *department,
            });
        }
        if meta.len() > MAX_RECORD_META {
            return Err(TxError::Invalid(format!(
                "a record's sealed metadata is at most {MAX_RECORD_META} bytes"
            )));
        }
        let retention_ends_ms = match t.def.retention {
            Retention::Days(d) => Some(time_ms.saturating_add(u64::from(d) * DAY_MS)),
            Retention::Permanent => None,
        };
        Ok(RecordEntry {
            typed: Some(Typed {
                type_name: name.to_string(),
                type_version: version,
                class: t.def.class.clone(),
                retention: t.def.retention,
                registered_ms: time_ms,
                retention_ends_ms,
                meta: meta.to_vec(),
            }),
            holds: BTreeMap::new(),
        })
    }

    pub(super) fn insert_entry(&mut self, document: DocumentId, entry: RecordEntry) {
        self.entries.insert(document, entry);
    }

    /// Refused unless `hold` may be set on `document` now: a new name, within bounds.
    pub(super) fn check_set_hold(
        &self,
        document: &DocumentId,
        hold: &str,
        reason: &str,
    ) -> Result<(), TxError> {
        if hold.is_empty() || hold.len() > MAX_HOLD_NAME || hold.chars().any(char::is_control) {
            return Err(TxError::Invalid(format!(
                "a hold's name is 1 to {MAX_HOLD_NAME} bytes without control characters"
            )));
        }
        if reason.trim().is_empty() || reason.len() > MAX_HOLD_REASON {
            return Err(TxError::Invalid(format!(
                "a hold's reason is 1 to {MAX_HOLD_REASON} bytes, not blank"
            )));
        }
        let holds = self.entries.get(document).map(|e| &e.holds);
        if holds.is_some_and(|h| h.contains_key(hold)) {
            return Err(TxError::HoldExists {
                document: *document,
                hold: hold.to_string(),
            });
        }
        if holds.is_some_and(|h| h.len() >= MAX_HOLDS) {
            return Err(TxError::Invalid(format!(
                "a document holds at most {MAX_HOLDS} holds"
            )));
        }
        Ok(())
    }

    pub(super) fn set_hold(&mut self, document: DocumentId, name: String, hold: Hold) {
        match self.entries.get_mut(&document) {
            Some(e) => {
                e.holds.insert(name, hold);
            }
            None => {
                let mut e = RecordEntry::default();
                e.holds.insert(name, hold);
                self.entries.insert(document, e);
            }
        }
    }

    /// Refused unless `hold` stands on `document`.
    pub(super) fn check_lift_hold(
        &self,
        document: &DocumentId,
        hold: &str,
        reason: &str,
    ) -> Result<(), TxError> {
        if reason.trim().is_empty() || reason.len() > MAX_HOLD_REASON {
            return Err(TxError::Invalid(format!(
                "a hold's lifting reason is 1 to {MAX_HOLD_REASON} bytes, not blank"
            )));
        }
        match self.entries.get(document) {
            Some(e) if e.holds.contains_key(hold) => Ok(()),
            _ => Err(TxError::NoSuchHold {
                document: *document,
                hold: hold.to_string(),
            }),
        }
    }

    pub(super) fn lift_hold(&mut self, document: &DocumentId, hold: &str) {
        let empty = match self.entries.get_mut(document) {
            Some(e) => {
                e.holds.remove(hold);
                e.typed.is_none() && e.holds.is_empty()
            }
            None => false,
        };
        if empty {
            self.entries.remove(document);
        }
    }

    /// Why `document` (registered if `registered`) may not be destroyed at `now_ms`, or
    /// `None` if nothing here keeps it: an untyped document has no retention, a typed one
    /// is kept until its retention ends (never, if permanent), and any standing hold keeps
    /// it whatever the retention says.
    pub fn destruction_blocked(
        &self,
        document: &DocumentId,
        registered: bool,
        now_ms: u64,
    ) -> Option<Why> {
        if !registered {
            return Some(Why::NotRegistered);
        }
        let entry = self.entries.get(document)?;
        let retained = entry
            .typed
            .as_ref()
            .and_then(|t| match t.retention_ends_ms {
                Some(ends) if now_ms >= ends => None,
                ends_ms => Some(Retained {
                    class: t.class.clone(),
                    ends_ms,
                }),
            });
        let holds: Vec<(String, Hold)> = entry
            .holds
            .iter()
            .map(|(n, h)| (n.clone(), h.clone()))
            .collect();
        if retained.is_none() && holds.is_empty() {
            return None;
        }
        Some(Why::Kept { retained, holds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str) -> TypeDef {
        TypeDef {
            name: name.into(),
            schema: r#"{"type":"object","required":["child"],"properties":{"child":{"type":"string","minLength":1},"born":{"type":"string","pattern":"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}}"#.into(),
            retention: Retention::Days(10),
            class: "vital-records".into(),
            stores: Stores::Any,
        }
    }

    #[test]
    fn a_type_is_checked_field_by_field_and_its_schema_must_be_a_schema() {
        def("birth-certificate").check().unwrap();
        for bad in ["", "Birth", "1st", "a b", &"x".repeat(MAX_TYPE_NAME + 1)] {
            assert!(def(bad).check().is_err(), "{bad:?}");
        }
        let mut d = def("t");
        d.schema = r#"{"type":"no-such-type"}"#.into();
        assert!(
            matches!(d.check(), Err(TxError::Invalid(m)) if m.contains("not a valid JSON Schema"))
        );
        d.schema = "{not json".into();
        assert!(d.check().is_err());
        d.schema = "[]".into();
        assert!(d.check().is_err());
        d.schema = format!(r#"{{"description":"{}"}}"#, "x".repeat(MAX_SCHEMA));
        assert!(d.check().is_err());
        let mut d = def("t");
        d.retention = Retention::Days(0);
        assert!(d.check().is_err());
        d.retention = Retention::Permanent;
        d.check().unwrap();
        d.stores = Stores::Departments(vec![]);
        assert!(d.check().is_err());
        d.class = String::new();
        assert!(d.check().is_err());
    }

    #[test]
    fn metadata_is_refused_with_the_failing_field_named() {
        let d = def("birth-certificate");
        d.check_meta(1, br#"{"child":"Li Wei","born":"2026-01-02"}"#)
            .unwrap();
        let err = d
            .check_meta(1, br#"{"child":"Li Wei","born":"yesterday"}"#)
            .unwrap_err();
        match &err {
            RecordsError::MetaRefused { errors, .. } => assert_eq!(errors[0].0, "/born"),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("at /born"), "{err}");
        let err = d.check_meta(1, br#"{"born":"2026-01-02"}"#).unwrap_err();
        assert!(err.to_string().contains("\"child\""), "{err}");
        assert!(matches!(
            d.check_meta(1, b"{oops"),
            Err(RecordsError::NotJson(_))
        ));
    }

    #[test]
    fn destruction_is_blocked_until_retention_ends_and_while_a_hold_stands() {
        let mut r = Records::default();
        let doc = DocumentId::of(b"certificate");
        let registered_ms = 1_000_000;
        r.define(TypeRecord {
            def: def("birth-certificate"),
            version: 1,
            height: 1,
            time_ms: 0,
        });
        let dept = crate::identity::Identity::generate(crate::identity::Role::Department).public();
        let entry = r
            .check_register(&dept, "birth-certificate", 1, b"sealed", registered_ms)
            .unwrap();
        r.insert_entry(doc, entry);
        let ends = registered_ms + 10 * DAY_MS;
        // Not registered at all: blocked, whatever the time.
        assert_eq!(
            r.destruction_blocked(&doc, false, u64::MAX),
            Some(Why::NotRegistered)
        );
        // Before the end (and one millisecond before it): kept by retention alone.
        for now in [registered_ms, ends - 1] {
            assert_eq!(
                r.destruction_blocked(&doc, true, now),
                Some(Why::Kept {
                    retained: Some(Retained {
                        class: "vital-records".into(),
                        ends_ms: Some(ends)
                    }),
                    holds: vec![]
                })
            );
        }
        // From the end on: nothing blocks.
        assert_eq!(r.destruction_blocked(&doc, true, ends), None);
        // A hold keeps it after the retention ended; two holds both show; lifting one
        // leaves the other; lifting both frees it.
        let by = crate::identity::Identity::generate(crate::identity::Role::Archives).public();
        let hold = |reason: &str| Hold {
            reason: reason.into(),
            by,
            height: 3,
            time_ms: 5,
        };
        r.check_set_hold(&doc, "case-1", "litigation").unwrap();
        r.set_hold(doc, "case-1".into(), hold("litigation"));
        assert!(matches!(
            r.check_set_hold(&doc, "case-1", "again"),
            Err(TxError::HoldExists { .. })
        ));
        r.set_hold(doc, "audit-7".into(), hold("audit"));
        let Some(Why::Kept { retained, holds }) = r.destruction_blocked(&doc, true, ends + 1)
        else {
            panic!("held")
        };
        assert_eq!(retained, None);
        assert_eq!(
            holds.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["audit-7", "case-1"]
        );
        // Under hold and within retention: both reasons.
        let Some(Why::Kept { retained, holds }) = r.destruction_blocked(&doc, true, ends - 1)
        else {
            panic!("kept")
        };
        assert!(retained.is_some() && holds.len() == 2);
        r.check_lift_hold(&doc, "case-1", "settled").unwrap();
        r.lift_hold(&doc, "case-1");
        assert!(r.destruction_blocked(&doc, true, ends + 1).is_some());
        r.lift_hold(&doc, "audit-7");
        assert_eq!(r.destruction_blocked(&doc, true, ends + 1), None);
        assert!(matches!(
            r.check_lift_hold(&doc, "audit-7", "again"),
            Err(TxError::NoSuchHold { .. })
        ));
        // An untyped document: only holds keep it; once its last hold goes, so does its entry.
        let plain = DocumentId::of(b"plain");
        assert_eq!(r.destruction_blocked(&plain, true, 0), None);
        r.set_hold(plain, "case-2".into(), hold("inquiry"));
        assert!(r.destruction_blocked(&plain, true, u64::MAX).is_some());
        r.lift_hold(&plain, "case-2");
        assert!(r.entry(&plain).is_none());
    }

    #[test]
    fn a_permanent_type_is_never_destroyed_and_a_type_may_name_its_departments() {
        let mut r = Records::default();
        let allowed =
            crate::identity::Identity::generate(crate::identity::Role::Department).public();
        let other = crate::identity::Identity::generate(crate::identity::Role::Department).public();
        let mut d = def("meeting-record");
        d.retention = Retention::Permanent;
        d.stores = Stores::Departments(vec![allowed]);
        r.check_define(&d, 1).unwrap();
        assert!(matches!(
            r.check_define(&d, 2),
            Err(TxError::TypeVersion {
                expected: 1,
                got: 2,
                ..
            })
        ));
        r.define(TypeRecord {
            def: d.clone(),
            version: 1,
            height: 1,
            time_ms: 0,
        });
        assert!(matches!(
            r.check_register(&other, "meeting-record", 1, b"", 0),
            Err(TxError::TypeNotForDepartment { .. })
        ));
        assert!(matches!(
            r.check_register(&allowed, "no-such", 1, b"", 0),
            Err(TxError::NoSuchType(_))
        ));
        let entry = r
            .check_register(&allowed, "meeting-record", 1, b"", 0)
            .unwrap();
        let doc = DocumentId::of(b"minutes");
        r.insert_entry(doc, entry);
        assert!(matches!(
            r.destruction_blocked(&doc, true, u64::MAX),
            Some(Why::Kept {
                retained: Some(Retained { ends_ms: None, .. }),
                ..
            })
        ));
        // A change is version 2; the version-1 record stays, and so does the document's.
        r.check_define(&d, 2).unwrap();
        d.retention = Retention::Days(30);
        r.define(TypeRecord {
            def: d,
            version: 2,
            height: 2,
            time_ms: 0,
        });
        assert_eq!(r.type_version("meeting-record", None).unwrap().version, 2);
        assert_eq!(
            r.type_version("meeting-record", Some(1))
                .unwrap()
                .def
                .retention,
            Retention::Permanent
        );
        assert_eq!(r.current_types().len(), 1);
        assert!(matches!(
            r.check_register(&allowed, "meeting-record", 1, b"", 0),
            Err(TxError::TypeVersion {
                expected: 2,
                got: 1,
                ..
            })
        ));
        assert_eq!(
            r.entry(&doc).unwrap().typed.as_ref().unwrap().type_version,
            1
        );
    }

    /// A chain of three validators, two departments, an archives authority and an operator.
    struct Chain {
        v: Vec<crate::identity::Identity>,
        dept: crate::identity::Identity,
        other: crate::identity::Identity,
        archives: crate::identity::Identity,
        operator: crate::identity::Identity,
        state: crate::chain::state::State,
    }

    fn chain() -> Chain {
        use crate::chain::state::{Genesis, GenesisAccount, State};
        use crate::identity::{Identity, Role};
        let v: Vec<Identity> = (0..3)
            .map(|_| Identity::generate(Role::Validator))
            .collect();
        let dept = Identity::generate(Role::Department);
        let other = Identity::generate(Role::Department);
        let archives = Identity::generate(Role::Archives);
        let operator = Identity::generate(Role::Operator);
        let genesis = Genesis {
            chain_id: "records".into(),
            validators: v
                .iter()
                .map(|i| GenesisAccount::of(i, Role::Validator))
                .collect(),
            accounts: vec![
                GenesisAccount::of(&dept, Role::Department),
                GenesisAccount::of(&other, Role::Department),
                GenesisAccount::of(&archives, Role::Archives),
                GenesisAccount::of(&operator, Role::Operator),
            ],
            nodes: vec![],
        };
        let state = State::genesis(&genesis).unwrap();
        Chain {
            v,
            dept,
            other,
            archives,
            operator,
            state,
        }
    }

    impl Chain {
        fn send(
            &mut self,
            who: &crate::identity::Identity,
            body: crate::chain::tx::TxBody,
            approvers: &[&crate::identity::Identity],
            height: u64,
            time_ms: u64,
        ) -> Result<(), TxError> {
            let key = self.state.chain_key();
            let nonce = self.state.account(&who.public()).map_or(1, |a| a.nonce + 1);
            let mut tx = crate::chain::tx::Tx {
                sender: who.public(),
                nonce,
                body,
            };
            let approvals = approvers.iter().map(|a| tx.approve(a, &key)).collect();
            if let Some(slot) = tx.body.approvals_mut() {
                *slot = approvals;
            }
            self.state.apply(&tx.sign(who, &key), height, time_ms)
        }
    }

    fn define(def: TypeDef, version: u32) -> crate::chain::tx::TxBody {
        crate::chain::tx::TxBody::DefineType {
            def,
            version,
            approvals: vec![],
        }
    }

    fn register(document: DocumentId, name: &str, version: u32) -> crate::chain::tx::TxBody {
        crate::chain::tx::TxBody::RegisterRecord {
            document,
            type_name: name.into(),
            type_version: version,
            meta: b"sealed".to_vec(),
        }
    }

    #[test]
    fn a_type_takes_a_majority_of_the_validators_and_changes_nothing_without() {
        let mut c = chain();
        let root = c.state.root();
        let (v0, v1, v2) = (c.v[0].clone(), c.v[1].clone(), c.v[2].clone());
        // One approval of three, none, a department's: refused, nothing changed.
        for approvers in [vec![&v0], vec![]] {
            assert!(matches!(
                c.send(&v0, define(def("birth-certificate"), 1), &approvers, 1, 0),
                Err(TxError::NoMajority { .. })
            ));
        }
        let dept = c.dept.clone();
        assert!(matches!(
            c.send(
                &dept,
                define(def("birth-certificate"), 1),
                &[&v0, &v1],
                1,
                0
            ),
            Err(TxError::Forbidden { .. })
        ));
        assert_eq!(c.state.root(), root);
        assert!(c.state.records().is_empty());
        // A majority: defined, by a validator or by an operator.
        c.send(&v0, define(def("birth-certificate"), 1), &[&v0, &v2], 1, 7)
            .unwrap();
        let operator = c.operator.clone();
        c.send(
            &operator,
            define(def("business-licence"), 1),
            &[&v1, &v2],
            2,
            8,
        )
        .unwrap();
        assert_ne!(c.state.root(), root);
        let t = c
            .state
            .records()
            .type_version("birth-certificate", None)
            .unwrap();
        assert_eq!((t.version, t.height, t.time_ms), (1, 1, 7));
        // Defined again as version 1 (a replay of the change): refused; version 2: a change.
        assert!(matches!(
            c.send(&v0, define(def("birth-certificate"), 1), &[&v0, &v1], 3, 9),
            Err(TxError::TypeVersion { expected: 2, .. })
        ));
        let mut changed = def("birth-certificate");
        changed.retention = Retention::Permanent;
        c.send(&v0, define(changed, 2), &[&v0, &v1], 3, 9).unwrap();
        assert_eq!(
            c.state
                .records()
                .type_version("birth-certificate", None)
                .unwrap()
                .def
                .retention,
            Retention::Permanent
        );
        // An invalid schema is refused by the chain whatever the approvals.
        let mut bad = def("bad");
        bad.schema = r#"{"type":12}"#.into();
        assert!(matches!(
            c.send(&v0, define(bad, 1), &[&v0, &v1, &v2], 4, 9),
            Err(TxError::Invalid(_))
        ));
    }

    #[test]
    fn a_record_is_registered_with_its_retention_from_the_block_time_by_an_allowed_department() {
        let mut c = chain();
        let (v0, v1) = (c.v[0].clone(), c.v[1].clone());
        let (dept, other) = (c.dept.clone(), c.other.clone());
        let mut only = def("meeting-record");
        only.stores = Stores::Departments(vec![dept.public()]);
        c.send(&v0, define(only, 1), &[&v0, &v1], 1, 0).unwrap();
        c.send(&v0, define(def("birth-certificate"), 1), &[&v0, &v1], 1, 0)
            .unwrap();
        let root = c.state.root();
        let minutes = DocumentId::of(b"minutes");
        // Another department, an unknown type, a stale version: refused, nothing changed.
        assert!(matches!(
            c.send(
                &other,
                register(minutes, "meeting-record", 1),
                &[],
                2,
                1_000
            ),
            Err(TxError::TypeNotForDepartment { .. })
        ));
        assert!(matches!(
            c.send(&dept, register(minutes, "no-such-type", 1), &[], 2, 1_000),
            Err(TxError::NoSuchType(_))
        ));
        assert!(matches!(
            c.send(&dept, register(minutes, "meeting-record", 2), &[], 2, 1_000),
            Err(TxError::TypeVersion { .. })
        ));
        assert_eq!(c.state.root(), root);
        assert!(c.state.document(&minutes).is_none());
        c.send(&dept, register(minutes, "meeting-record", 1), &[], 2, 1_000)
            .unwrap();
        let t = c
            .state
            .records()
            .entry(&minutes)
            .unwrap()
            .typed
            .clone()
            .unwrap();
        assert_eq!(t.retention_ends_ms, Some(1_000 + 10 * DAY_MS));
        assert_eq!(t.class, "vital-records");
        assert_eq!(c.state.document(&minutes).unwrap().owner, dept.public());
        // Registered once only, whichever way.
        assert!(matches!(
            c.send(&dept, register(minutes, "meeting-record", 1), &[], 3, 2_000),
            Err(TxError::AlreadyRegistered(_))
        ));
        // Any department stores a type that allows any.
        let cert = DocumentId::of(b"cert");
        c.send(
            &other,
            register(cert, "birth-certificate", 1),
            &[],
            3,
            2_000,
        )
        .unwrap();
        // The destruction check through the state: kept until the end, free after.
        assert!(
            c.state
                .destruction_blocked(&cert, 2_000 + 10 * DAY_MS - 1)
                .is_some()
        );
        assert_eq!(
            c.state.destruction_blocked(&cert, 2_000 + 10 * DAY_MS),
            None
        );
        assert_eq!(
            c.state.destruction_blocked(&DocumentId::of(b"nothing"), 0),
            Some(Why::NotRegistered)
        );
    }

    #[test]
    fn only_an_archives_authority_sets_and_lifts_holds() {
        let mut c = chain();
        let (v0, v1) = (c.v[0].clone(), c.v[1].clone());
        let (dept, archives, operator) = (c.dept.clone(), c.archives.clone(), c.operator.clone());
        c.send(&v0, define(def("birth-certificate"), 1), &[&v0, &v1], 1, 0)
            .unwrap();
        let cert = DocumentId::of(b"cert");
        c.send(&dept, register(cert, "birth-certificate", 1), &[], 2, 0)
            .unwrap();
        let set = |hold: &str| crate::chain::tx::TxBody::SetHold {
            document: cert,
            hold: hold.into(),
            reason: "litigation 2026-17".into(),
        };
        let lift = |hold: &str| crate::chain::tx::TxBody::LiftHold {
            document: cert,
            hold: hold.into(),
            reason: "settled".into(),
        };
        let root = c.state.root();
        // The owning department, an operator, a validator: refused.
        for who in [&dept, &operator, &v0] {
            assert!(matches!(
                c.send(who, set("case-1"), &[], 3, 5),
                Err(TxError::Forbidden { .. })
            ));
        }
        assert_eq!(c.state.root(), root);
        // A hold on a document the chain does not know: refused.
        assert!(matches!(
            c.send(
                &archives,
                crate::chain::tx::TxBody::SetHold {
                    document: DocumentId::of(b"nothing"),
                    hold: "case-1".into(),
                    reason: "x".into()
                },
                &[],
                3,
                5
            ),
            Err(TxError::NotRegistered(_))
        ));
        c.send(&archives, set("case-1"), &[], 3, 5).unwrap();
        c.send(&archives, set("case-2"), &[], 3, 5).unwrap();
        let after = DAY_MS * 11;
        let Some(Why::Kept {
            retained: None,
            holds,
        }) = c.state.destruction_blocked(&cert, after)
        else {
            panic!("held after its retention")
        };
        assert_eq!(holds.len(), 2);
        assert_eq!(holds[0].1.by, archives.public());
        assert_eq!(holds[0].1.reason, "litigation 2026-17");
        assert!(matches!(
            c.send(&dept, lift("case-1"), &[], 4, 6),
            Err(TxError::Forbidden { .. })
        ));
        c.send(&archives, lift("case-1"), &[], 4, 6).unwrap();
        assert!(c.state.destruction_blocked(&cert, after).is_some());
        c.send(&archives, lift("case-2"), &[], 4, 6).unwrap();
        assert_eq!(c.state.destruction_blocked(&cert, after), None);
        assert!(matches!(
            c.send(&archives, lift("case-2"), &[], 5, 7),
            Err(TxError::NoSuchHold { .. })
        ));
    }
}
