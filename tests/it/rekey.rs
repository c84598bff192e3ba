//! Rekey and supersede on a real local cluster (peers on 127.0.0.1, QUIC, redb, the
//! embedded validator): a rekey re-encrypts under a fresh key, carries the live grants in
//! the same transaction, and removes the old shards from every peer; a supersede carries
//! grants and adds more; only the owner may do either.

use std::collections::HashSet;

use crate::common;
use bytes::Bytes;
use dangan::chain::tx::VersionKind;
use dangan::client::{Client, ClientError};
use dangan::codec::StripeCodec;
use dangan::crypto::DataKey;
use dangan::grant::GrantAddress;
use dangan::id::ShardId;
use dangan::identity::{Identity, Role};
use dangan::keyring::Keyring;
use dangan::manifest::Manifest;
use dangan::revision::{self, RevisionError};

/// Every shard of `manifest`, fetched raw from its placed peer (after opening the document
/// there, as peers serve shards only of documents opened on the connection).
async fn raw_shards(client: &Client, manifest: &Manifest) -> Vec<Vec<Option<Bytes>>> {
    let bytes = Bytes::from(manifest.encode());
    let mut stripes = Vec::new();
    for ids in &manifest.stripes {
        let nodes = client
            .layout()
            .place(&dangan::client::stripe_key(ids), ids.len())
            .unwrap();
        let mut shards = Vec::new();
        for (id, node) in ids.iter().zip(nodes) {
            client
                .open_on(node, manifest.id(), bytes.clone())
                .await
                .unwrap();
            shards.push(Some(
                client.net().shard_get(node, id).await.unwrap().unwrap(),
            ));
        }
        stripes.push(shards);
    }
    stripes
}

/// Whether `key` opens any stripe of `manifest` from `stripes`.
fn opens_any(manifest: &Manifest, key: &DataKey, stripes: &[Vec<Option<Bytes>>]) -> bool {
    let Ok(codec) = StripeCodec::for_manifest(manifest, key) else {
        return false;
    };
    stripes
        .iter()
        .enumerate()
        .any(|(i, s)| codec.open(manifest, i as u64, s.clone()).is_ok())
}

/// How many peers hold shard `id`.
async fn holders(client: &Client, id: &ShardId) -> usize {
    let mut n = 0;
    for node in &client.layout().nodes {
        n += usize::from(client.net().shard_has(node, id).await.unwrap());
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_locks_out_a_revoked_reader_and_collects_the_old_shards() {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let keyring = Keyring::open(dir.path()).unwrap();
    let (kept, revoked, expired) = (
        Identity::generate(Role::Citizen),
        Identity::generate(Role::Citizen),
        Identity::generate(Role::Citizen),
    );
    for c in [&kept, &revoked, &expired] {
        cluster.membership().add(c.public());
    }
    let as_kept = common::client_as(&cluster, &kept);
    let as_revoked = common::client_as(&cluster, &revoked);

    // Three stripes and a bit; another document shares the store (and its zero padding
    // shards, refcounted) and must not lose a reference.
    let bytes = common::data(3 * (256 << 10) + 5000, 21);
    let put = common::put(&dept, &bytes).await.unwrap();
    let old = put.id;
    keyring.save(&old, &put.key).unwrap();
    let other = common::put(&dept, &common::data(40 << 10, 22))
        .await
        .unwrap();
    let expiry = dangan::now_ms() + 86_400_000;
    common::grant(&dept, &put, &kept, Some(expiry)).await;
    common::grant(&dept, &put, &revoked, None).await;
    common::grant(&dept, &put, &expired, Some(1)).await;
    // The revoked reader unwrapped the old data key while it could.
    let stolen = as_revoked.granted_key(&old).await.unwrap();
    dept.revoke(old, revoked.public()).await.unwrap();

    // Not the owner: refused before anything is stored.
    let err = revision::rekey(&as_kept, &old, &keyring, &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, RevisionError::NotOwner { .. }), "{err}");

    let report = revision::rekey(&dept, &old, &keyring, &|_, _| {})
        .await
        .unwrap();
    let new = report.new;
    assert_ne!(new, old);
    assert_eq!(report.kind, VersionKind::Rekey);
    assert_eq!(report.carried, vec![kept.public()]);
    assert_eq!(report.expired, vec![expired.public()]);
    let collect = report.collect.as_ref().unwrap();
    assert!(collect.complete(), "{collect:?}");
    assert!(collect.shards_deleted > 0);
    assert_eq!(
        keyring.load(&new).unwrap().as_bytes(),
        report.key.as_bytes()
    );

    // The chain: the old record points at the new one, which says it is a rekey and holds
    // exactly the kept reader's grant, with its expiry.
    let old_record = dept.chain().unwrap().check_registered(&old).await.unwrap();
    assert_eq!(old_record.superseded_by, Some(new));
    let record = dept.chain().unwrap().check_registered(&new).await.unwrap();
    let previous = record.supersedes.unwrap();
    assert_eq!(
        (previous.document, previous.kind),
        (old, VersionKind::Rekey)
    );
    assert_eq!(record.grants.len(), 1);
    assert_eq!(record.grants[&kept.public()].expires_ms, Some(expiry));
    assert_eq!(
        revision::latest(&as_kept, &old).await.unwrap(),
        vec![(new, VersionKind::Rekey)]
    );

    // The old key opens none of the new shards, fetched raw; the new key opens them all.
    let manifest = dept.manifest(&new).await.unwrap();
    let stripes = raw_shards(&dept, &manifest).await;
    assert_eq!(stripes.len(), 4);
    assert!(!opens_any(&manifest, &stolen, &stripes));
    let mut with_old_nonce = manifest.clone();
    with_old_nonce.pieces[0].nonce_prefix = put.manifest.pieces[0].nonce_prefix;
    assert!(!opens_any(&with_old_nonce, &stolen, &stripes));
    assert!(opens_any(&manifest, &report.key, &stripes));
    let new_ids: HashSet<ShardId> = manifest.stripes.iter().flatten().copied().collect();

    // The old shards are gone from every peer (a shard the new version or the other
    // document also holds keeps their references), and so is the old manifest.
    for id in put.manifest.stripes.iter().flatten() {
        if !new_ids.contains(id) && !other.manifest.stripes.iter().flatten().any(|o| o == id) {
            assert_eq!(holders(&dept, id).await, 0, "old shard {id} still stored");
        }
    }
    for ids in &other.manifest.stripes {
        for id in ids {
            assert!(
                holders(&dept, id).await >= 1,
                "the other document lost {id}"
            );
        }
    }
    let got = common::read(&dept, &other.id, &other.key).await;
    assert_eq!(got, common::data(40 << 10, 22));
    for node in &dept.layout().nodes {
        assert!(dept.net().manifest_get(node, &old).await.unwrap().is_none());
    }
    assert!(matches!(
        common::get(&dept, &old, &put.key).await,
        Err(ClientError::NotFound { .. })
    ));

    // The kept reader reads the new version with its own key; the revoked one gets no key.
    let key = as_kept.granted_key(&new).await.unwrap();
    let got = common::read(&as_kept, &new, &key).await;
    assert_eq!(got, bytes);
    assert!(matches!(
        as_revoked.granted_key(&new).await,
        Err(ClientError::NotGranted { .. })
    ));

    // Running it again on the old id finds nothing left to do; on the new id, a new rekey.
    let again = revision::rekey(&dept, &old, &keyring, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(again.new, new);
    assert!(again.collect.unwrap().complete());
    for c in [dept, as_kept, as_revoked] {
        c.close().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supersede_carries_grants_and_adds_more_and_a_rekey_resumes_its_collect() {
    let (mut cluster, dept) = common::start_cluster(6, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let keyring = Keyring::open(dir.path()).unwrap();
    let (citizen, newcomer) = (
        Identity::generate(Role::Citizen),
        Identity::generate(Role::Citizen),
    );
    for c in [&citizen, &newcomer] {
        cluster.membership().add(c.public());
    }
    let as_citizen = common::client_as(&cluster, &citizen);
    let as_newcomer = common::client_as(&cluster, &newcomer);
    let v1 = common::put(&dept, b"certificate v1").await.unwrap();
    keyring.save(&v1.id, &v1.key).unwrap();
    common::grant(&dept, &v1, &citizen, None).await;

    let v2_bytes = common::data(300 << 10, 5);
    let report = revision::supersede(
        &dept,
        &v1.id,
        std::io::Cursor::new(v2_bytes.clone()),
        Some(v2_bytes.len() as u64),
        common::info(),
        &[GrantAddress::of(&newcomer).unwrap()],
        &keyring,
        &|_, _| {},
    )
    .await
    .unwrap();
    let v2 = report.new;
    assert_eq!(report.kind, VersionKind::Reissue);
    assert_eq!(report.carried, vec![citizen.public()]);
    assert_eq!(report.granted, vec![newcomer.public()]);
    assert!(report.collect.is_none());
    for (c, who) in [(&as_citizen, "citizen"), (&as_newcomer, "newcomer")] {
        let key = c.granted_key(&v2).await.unwrap();
        let got = common::read(c, &v2, &key).await;
        assert_eq!(got, v2_bytes, "{who}");
    }
    // A reissue keeps the old version; the citizen's old grant still reads it.
    let key = as_citizen.granted_key(&v1.id).await.unwrap();
    let got = common::read(&as_citizen, &v1.id, &key).await;
    assert_eq!(got, b"certificate v1");
    // Superseding the old version again is refused, before anything is stored.
    let err = revision::supersede(
        &dept,
        &v1.id,
        std::io::Cursor::new(b"v3".to_vec()),
        Some(2),
        common::info(),
        &[],
        &keyring,
        &|_, _| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RevisionError::AlreadySuperseded { by, .. } if by == v2),
        "{err}"
    );
    // A newcomer (no department) can neither rekey nor supersede.
    let err = revision::rekey(&as_newcomer, &v2, &keyring, &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, RevisionError::NotOwner { .. }), "{err}");

    // A rekey whose collect meets a stopped peer reports the shards left on it, and a
    // second run, with the peer back, removes them.
    let v2_manifest = dept.manifest(&v2).await.unwrap();
    let stopped = 0;
    let held: Vec<ShardId> = v2_manifest.stripes.iter().flatten().copied().collect();
    let rekeyed = {
        // The rekey reads v2 with a peer down (parity covers it) and stores v3 on the rest.
        cluster.stop_peer(stopped).await.unwrap();
        let dept = cluster
            .client(dangan::client::ClientOptions {
                write_quorum: Some(5),
                ..common::options()
            })
            .unwrap();
        let r = revision::rekey(&dept, &v2, &keyring, &|_, _| {})
            .await
            .unwrap();
        dept.close().await;
        r
    };
    let collect = rekeyed.collect.as_ref().unwrap();
    assert!(!collect.complete());
    assert!(!collect.remaining.is_empty());
    assert!(!collect.manifest_done, "the manifest goes last");
    cluster.restart_peer(stopped).await.unwrap();
    let dept2 = common::department(&cluster);
    let again = revision::rekey(&dept2, &v2, &keyring, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(again.new, rekeyed.new);
    let c = again.collect.as_ref().unwrap();
    assert!(c.complete(), "{c:?}");
    assert_eq!(c.shards_deleted as usize, collect.remaining.len());
    assert!(c.shards_resumed > 0);
    let v3_ids: HashSet<ShardId> = dept2
        .manifest(&rekeyed.new)
        .await
        .unwrap()
        .stripes
        .into_iter()
        .flatten()
        .collect();
    for id in held.iter().filter(|id| !v3_ids.contains(id)) {
        assert_eq!(holders(&dept2, id).await, 0, "old shard {id} still stored");
    }
    // Both readers were carried again.
    for c in [&as_citizen, &as_newcomer] {
        let key = c.granted_key(&rekeyed.new).await.unwrap();
        let got = common::read(c, &rekeyed.new, &key).await;
        assert_eq!(got, v2_bytes);
    }
    for c in [dept, dept2, as_citizen, as_newcomer] {
        c.close().await;
    }
    cluster.shutdown().await;
}
