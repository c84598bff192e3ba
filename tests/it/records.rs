//! Records on real clusters (`chain::records`, docs/records.md): document types defined with
//! a majority of the validators, metadata checked against a type's schema before anything is
//! stored, a department the type does not allow refused by the chain itself, the metadata
//! sealed with the document (a grantee reads it, a stranger does not), retention and legal
//! holds as chain state shown by `dangan verify`, holds set and lifted by an archives
//! authority alone.

use std::path::{Path, PathBuf};

use crate::common;
use crate::common::cli::Cli;
use crate::common::process::{ProcessCluster, Run};
use dangan::chain::records::{DAY_MS, RecordsError, Retention, Stores, TypeDef, TypeFile};
use dangan::chain::tx::{Tx, TxBody};
use dangan::client::{Client, ClientError};
use dangan::cluster::{ClusterKeys, LocalCluster};
use dangan::identity::{Identity, Role};

fn example(name: &str) -> TypeDef {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/types/{name}.json"));
    TypeFile::load(&path).unwrap()
}

/// Good metadata for the example birth certificate.
const BIRTH: &str = r#"{"certificate_no":"B202600017","child":{"family_name":"Li","given_name":"Wei","sex":"female"},"born_on":"2026-03-14","place_of_birth":"Hangzhou","registered_by":"Xihu civil registry"}"#;

/// A cluster whose validator the test holds (to approve types), and that validator's client.
async fn cluster() -> (LocalCluster, Identity, Client) {
    let validator = Identity::generate(Role::Validator);
    let keys = ClusterKeys {
        validator: Some(validator.clone()),
        ..ClusterKeys::default()
    };
    let cluster = LocalCluster::start_with_keys(6, 3, keys).await.unwrap();
    let as_validator = common::client_as(&cluster, &validator);
    (cluster, validator, as_validator)
}

/// `def` as version `version`, sent by `sender` with the approvals of `approvers`.
async fn define(
    sender: &Client,
    who: &Identity,
    approvers: &[&Identity],
    def: TypeDef,
    version: u32,
) -> Result<(u64, u32), dangan::chain::client::ChainError> {
    let chain = sender.chain().unwrap();
    let key = chain.chain_key().await?;
    let nonce = chain
        .account(&who.public())
        .await?
        .map_or(1, |a| a.nonce + 1);
    let mut tx = Tx {
        sender: who.public(),
        nonce,
        body: TxBody::DefineType {
            def,
            version,
            approvals: vec![],
        },
    };
    let approvals = approvers.iter().map(|v| tx.approve(v, &key)).collect();
    *tx.body.approvals_mut().unwrap() = approvals;
    chain.submit_tx(&tx.sign(who, &key)).await
}

fn shards_on_peers(cluster: &LocalCluster) -> u64 {
    (0..cluster.len())
        .map(|i| cluster.shards_held(i).unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_refused_by_its_schema_names_the_field_and_stores_nothing() {
    let (cluster, validator, as_validator) = cluster().await;
    define(
        &as_validator,
        &validator,
        &[&validator],
        example("birth-certificate"),
        1,
    )
    .await
    .unwrap();
    let dept = common::department(&cluster);
    let documents = cluster.ledger().state().document_count();
    let bytes = common::data(40 << 10, 3);
    let bad = BIRTH.replace("2026-03-14", "14 March 2026");
    let refused = dept
        .put_record(
            std::io::Cursor::new(bytes.clone()),
            Some(bytes.len() as u64),
            common::info(),
            "birth-certificate",
            bad.as_bytes(),
            &|_, _| {},
        )
        .await
        .unwrap_err();
    match &refused {
        ClientError::Records(RecordsError::MetaRefused { name, errors, .. }) => {
            assert_eq!(name, "birth-certificate");
            assert_eq!(errors[0].0, "/born_on", "{refused}");
        }
        other => panic!("refused for another reason: {other}"),
    }
    assert!(refused.to_string().contains("at /born_on"), "{refused}");
    // A required field missing: named too.
    let missing = BIRTH.replace(r#""place_of_birth":"Hangzhou","#, "");
    let err = dept
        .put_record(
            std::io::Cursor::new(bytes.clone()),
            None,
            common::info(),
            "birth-certificate",
            missing.as_bytes(),
            &|_, _| {},
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"place_of_birth\""), "{err}");
    // Nothing stored, nothing registered.
    assert_eq!(shards_on_peers(&cluster), 0);
    assert_eq!(cluster.ledger().state().document_count(), documents);
    // The same document with good metadata: stored, registered with its type, and the
    // retention end computed by the chain from the registering block's time.
    define(
        &as_validator,
        &validator,
        &[&validator],
        example("business-licence"),
        1,
    )
    .await
    .unwrap();
    let licence = r#"{"credit_code":"91330106MA2GL1234X","company_name":"West Lake Tea Co.","legal_representative":"Zhang San","issued_on":"2026-12-08","business_scope":"tea"}"#;
    let put = dept
        .put_record(
            std::io::Cursor::new(bytes.clone()),
            None,
            common::info(),
            "business-licence",
            licence.as_bytes(),
            &|_, _| {},
        )
        .await
        .unwrap();
    assert!(shards_on_peers(&cluster) > 0);
    let (height, _) = put.registered.unwrap();
    let block = dept.chain().unwrap().block(height).await.unwrap().unwrap();
    let typed = dept
        .record_entry(&put.id)
        .await
        .unwrap()
        .unwrap()
        .typed
        .unwrap();
    assert_eq!(
        (
            typed.type_name.as_str(),
            typed.type_version,
            typed.class.as_str()
        ),
        ("business-licence", 1, "licensing-30y")
    );
    assert_eq!(typed.registered_ms, block.header.header.time_ms);
    assert_eq!(
        typed.retention_ends_ms,
        Some(block.header.header.time_ms + 10_950 * DAY_MS)
    );
    // What is public on chain holds no byte of the metadata.
    assert!(
        !typed
            .meta
            .windows(8)
            .any(|w| licence.as_bytes().windows(8).any(|m| m == w))
    );
    for c in [dept, as_validator] {
        c.close().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_the_type_does_not_allow_is_refused_by_the_chain_itself() {
    let (cluster, validator, as_validator) = cluster().await;
    let mut minutes = example("meeting-record");
    minutes.stores = Stores::Departments(vec![cluster.department().public()]);
    define(&as_validator, &validator, &[&validator], minutes, 1)
        .await
        .unwrap();
    let other = common::client_as(&cluster, cluster.other_department());
    let meta =
        br#"{"title":"Budget","held_on":"2026-12-01","chair":"Wang","attendees":["Wang","Zhao"]}"#;
    // The client refuses first...
    let t = other.record_type("meeting-record").await.unwrap();
    assert!(matches!(
        other.check_record(&t, meta),
        Err(ClientError::Records(RecordsError::NotForDepartment { .. }))
    ));
    // ...and a client that skips the check stores the bytes, then is refused by the chain.
    let bytes = common::data(10 << 10, 5);
    let stored = other
        .store(
            std::io::Cursor::new(bytes),
            None,
            common::info(),
            &|_, _| {},
        )
        .await
        .unwrap();
    let id = stored.id;
    let err = other.register_record(stored, &t, meta).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("may be stored only by the departments it names"),
        "{err}"
    );
    assert!(cluster.ledger().state().document(&id).is_none());
    assert!(matches!(
        other.chain().unwrap().check_registered(&id).await,
        Err(dangan::chain::client::ChainError::NotRegistered(_))
    ));
    // The department it names registers the same way.
    let dept = common::department(&cluster);
    let put = dept
        .put_record(
            std::io::Cursor::new(common::data(10 << 10, 6)),
            None,
            common::info(),
            "meeting-record",
            meta,
            &|_, _| {},
        )
        .await
        .unwrap();
    assert!(cluster.ledger().state().document(&put.id).is_some());
    for c in [dept, other, as_validator] {
        c.close().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_without_a_validator_majority_is_refused() {
    let (cluster, validator, as_validator) = cluster().await;
    let operator = common::client_as(&cluster, cluster.operator());
    let dept = common::department(&cluster);
    let outsider = Identity::generate(Role::Validator);
    // No approval, an outsider's approval, a department sending it with the validator's.
    let refusals = [
        define(
            &as_validator,
            &validator,
            &[],
            example("birth-certificate"),
            1,
        )
        .await,
        define(
            &operator,
            cluster.operator(),
            &[],
            example("birth-certificate"),
            1,
        )
        .await,
        define(
            &operator,
            cluster.operator(),
            &[&outsider],
            example("birth-certificate"),
            1,
        )
        .await,
        define(
            &dept,
            cluster.department(),
            &[&validator],
            example("birth-certificate"),
            1,
        )
        .await,
    ];
    for (n, r) in refusals.into_iter().enumerate() {
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("needs approvals of a majority")
                || e.contains("not a validator")
                || e.contains("may not define document types"),
            "refusal {n}: {e}"
        );
    }
    assert_eq!(
        dept.chain()
            .unwrap()
            .doc_type("birth-certificate", None)
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        dept.record_type("birth-certificate").await,
        Err(ClientError::NoSuchType(_))
    ));
    // With the validator's approval, the operator defines it; it is proven to every client.
    define(
        &operator,
        cluster.operator(),
        &[&validator],
        example("birth-certificate"),
        1,
    )
    .await
    .unwrap();
    let t = dept.record_type("birth-certificate").await.unwrap();
    assert_eq!((t.version, t.def.retention), (1, Retention::Permanent));
    for c in [dept, operator, as_validator] {
        c.close().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grantee_reads_the_metadata_and_a_stranger_does_not() {
    let (cluster, validator, as_validator) = cluster().await;
    define(
        &as_validator,
        &validator,
        &[&validator],
        example("birth-certificate"),
        1,
    )
    .await
    .unwrap();
    let dept = common::department(&cluster);
    let citizen = Identity::generate(Role::Citizen);
    let stranger = Identity::generate(Role::Citizen);
    let as_citizen = common::client_as(&cluster, &citizen);
    let as_stranger = common::client_as(&cluster, &stranger);
    let bytes = common::data(20 << 10, 9);
    let put = dept
        .put_record(
            std::io::Cursor::new(bytes.clone()),
            None,
            common::info(),
            "birth-certificate",
            BIRTH.as_bytes(),
            &|_, _| {},
        )
        .await
        .unwrap();
    common::grant(&dept, &put, &citizen, None).await;
    // The owner and the grantee open it.
    assert_eq!(
        dept.record_meta(&put.id, &put.key).await.unwrap().unwrap(),
        BIRTH.as_bytes()
    );
    let key = as_citizen.granted_key(&put.id).await.unwrap();
    assert_eq!(
        as_citizen
            .record_meta(&put.id, &key)
            .await
            .unwrap()
            .unwrap(),
        BIRTH.as_bytes()
    );
    assert_eq!(common::read(&as_citizen, &put.id, &key).await, bytes);
    // The stranger sees the public facts (type, class) and no key to open the rest.
    let entry = as_stranger.record_entry(&put.id).await.unwrap().unwrap();
    assert_eq!(entry.typed.as_ref().unwrap().class, "vital-records");
    assert!(matches!(
        as_stranger.granted_key(&put.id).await,
        Err(ClientError::NotGranted { .. })
    ));
    assert!(matches!(
        as_stranger
            .record_meta(&put.id, &dangan::crypto::DataKey::generate())
            .await,
        Err(ClientError::MetaSealed(_))
    ));
    for c in [dept, as_citizen, as_stranger, as_validator] {
        c.close().await;
    }
    cluster.shutdown().await;
}

/// The CLI on a cluster of processes: a type proposed, enacted, listed; a put refused by
/// the schema, then stored; verify shows type, retention and holds; a department may not set
/// a hold, the archives authority sets and lifts it.
#[test]
fn verify_shows_retention_and_holds_and_only_the_archives_authority_sets_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = ProcessCluster::start(tmp.path(), 3, 1);
    let keyring = cluster.path("keyring");
    let as_key = |key: &str| {
        Cli::new(
            &cluster,
            &cluster.path(&format!("keys/{key}.key")),
            &keyring,
        )
    };
    let (validator, dept, archives) = (
        as_key("validator"),
        as_key("department"),
        as_key("archives"),
    );
    let types = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/types");
    let proposal = cluster.path("type.proposal");
    validator
        .run(
            [
                "type".as_ref(),
                "define".as_ref(),
                types.join("business-licence.json").as_os_str(),
                "--proposal".as_ref(),
                proposal.as_os_str(),
            ],
            "type-define",
        )
        .expect_ok("type define");
    validator
        .run(
            ["chain".as_ref(), "enact".as_ref(), proposal.as_os_str()],
            "type-enact",
        )
        .expect_ok("enact");
    let list = dept
        .run(["type", "list"], "type-list")
        .expect_ok("type list");
    assert!(
        list.stdout
            .contains("business-licence v1: retention 10950 days (licensing-30y)"),
        "{}",
        list.describe()
    );
    let show = dept
        .run(["type", "show", "business-licence"], "type-show")
        .expect_ok("type show");
    assert!(
        show.stdout.contains("\"credit_code\""),
        "{}",
        show.describe()
    );

    let doc = write(&cluster, "licence.pdf", &common::data(30 << 10, 11));
    let good = r#"{"credit_code":"91330106MA2GL1234X","company_name":"West Lake Tea Co.","legal_representative":"Zhang San","issued_on":"2026-12-08","business_scope":"tea"}"#;
    let bad_meta = write(
        &cluster,
        "bad.json",
        good.replace("91330106MA2GL1234X", "not-a-code").as_bytes(),
    );
    let good_meta = write(&cluster, "good.json", good.as_bytes());
    let put = |meta: &Path, name: &str| -> Run {
        dept.run(
            [
                "put".as_ref(),
                doc.as_os_str(),
                "--type".as_ref(),
                "business-licence".as_ref(),
                "--meta".as_ref(),
                meta.as_os_str(),
            ],
            name,
        )
    };
    let refused = put(&bad_meta, "put-bad").expect_fail("put with bad metadata");
    assert!(
        refused.stderr.contains("at /credit_code") && refused.stderr.contains("nothing stored"),
        "{}",
        refused.describe()
    );
    assert_eq!(refused.code, Some(3), "refused: {}", refused.describe());
    let id = put(&good_meta, "put-good").expect_ok("put").last_line();

    let verify = |who: &Cli, name: &str| who.run(["verify", id.as_str()], name).expect_ok("verify");
    let v = verify(&dept, "verify-1");
    for line in [
        "type business-licence v1, retention class licensing-30y",
        "retention ends on ",
        "no legal hold",
        "metadata: {",
        "West Lake Tea Co.",
    ] {
        assert!(
            v.stdout.contains(line),
            "{line:?} missing: {}",
            v.describe()
        );
    }
    let hold = |who: &Cli, what: &str, name: &str| -> Run {
        who.run(
            [
                "hold",
                what,
                id.as_str(),
                "--name",
                "case-2026-17",
                "--reason",
                "litigation: Zhang v. West Lake",
            ],
            name,
        )
    };
    let refused = hold(&dept, "set", "hold-dept").expect_fail("a department's hold");
    assert!(
        refused.stderr.contains("may not set legal holds"),
        "{}",
        refused.describe()
    );
    hold(&archives, "set", "hold-set").expect_ok("hold set");
    let v = verify(&dept, "verify-2");
    assert!(
        v.stdout.contains("legal hold \"case-2026-17\"")
            && v.stdout.contains("litigation: Zhang v. West Lake"),
        "{}",
        v.describe()
    );
    hold(&dept, "lift", "lift-dept").expect_fail("a department lifting a hold");
    hold(&archives, "lift", "hold-lift").expect_ok("hold lift");
    let v = verify(&dept, "verify-3");
    assert!(v.stdout.contains("no legal hold"), "{}", v.describe());

    // `get --meta` writes the metadata the owner sealed.
    let out = cluster.path("licence.out");
    let meta_out = cluster.path("licence.meta.json");
    dept.run(
        [
            "get".as_ref(),
            id.as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
            "--meta".as_ref(),
            meta_out.as_os_str(),
        ],
        "get-meta",
    )
    .expect_ok("get --meta");
    assert_eq!(std::fs::read_to_string(&meta_out).unwrap(), good);
    cluster.assert_no_panics();
}

fn write(cluster: &ProcessCluster, name: &str, bytes: &[u8]) -> PathBuf {
    let path = cluster.path(name);
    std::fs::write(&path, bytes).unwrap();
    path
}
