//! Grants on a real local cluster: a department stores a certificate and grants it to a
//! citizen, who unwraps the data key from the chain and reads the document; anyone without
//! a live grant gets no key.

use crate::common;
use dangan::chain::client::ChainError;
use dangan::chain::state::DocumentRecord;
use dangan::client::ClientError;
use dangan::grant::GrantAddress;
use dangan::id::DocumentId;
use dangan::identity::{Identity, Role};
use dangan::receipt::Receipt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_citizen_reads_and_others_get_no_key() {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    let citizen = Identity::generate(Role::Citizen);
    let stranger = Identity::generate(Role::Citizen);
    let as_citizen = common::client_as(&cluster, &citizen);
    let as_stranger = common::client_as(&cluster, &stranger);

    let bytes = common::data(50 << 10, 7);
    let put = common::put(&dept, &bytes).await.unwrap();
    let id = put.id;
    assert!(matches!(
        as_citizen.granted_key(&id).await,
        Err(ClientError::NotGranted { .. })
    ));

    common::grant(&dept, &put, &citizen, None).await;
    let key = as_citizen.granted_key(&id).await.unwrap();
    let got = common::read(&as_citizen, &id, &key).await;
    assert_eq!(got, bytes);
    assert!(matches!(
        as_stranger.granted_key(&id).await,
        Err(ClientError::NotGranted { .. })
    ));

    // A citizen cannot grant, and a grant can't be copied to another reader.
    assert!(
        as_citizen
            .grant(id, &key, &GrantAddress::of(&stranger).unwrap(), None)
            .await
            .is_err()
    );

    dept.revoke(id, citizen.public()).await.unwrap();
    assert!(matches!(
        as_citizen.granted_key(&id).await,
        Err(ClientError::NotGranted { .. })
    ));
    // An expired grant counts for nothing.
    common::grant(&dept, &put, &citizen, Some(1)).await;
    assert!(matches!(
        as_citizen.granted_key(&id).await,
        Err(ClientError::NotGranted { .. })
    ));
    for c in [dept, as_citizen, as_stranger] {
        c.close().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_verifies_offline_and_fails_after_any_change() {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    let put = common::put(&dept, &common::data(50 << 10, 9))
        .await
        .unwrap();
    let receipt = dept.receipt(&put.id).await.unwrap();
    dept.close().await;
    let validators = cluster.chain().validators.clone();
    cluster.shutdown().await;

    // No network from here on.
    let bytes = receipt.encode();
    let decoded = Receipt::decode(&bytes).unwrap();
    let manifest = decoded.verify(&validators).unwrap();
    assert_eq!(manifest, put.manifest);
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = bytes.clone();
            bad[i] ^= bit;
            let refused = Receipt::decode(&bad).and_then(|r| r.verify(&validators));
            assert!(refused.is_err(), "byte {i} bit {bit:#x} went unnoticed");
        }
    }
    // Another validator set does not vouch for it.
    let stranger = Identity::generate(Role::Validator).public();
    assert!(decoded.verify(&[stranger]).is_err());
}

/// `ListGranted`: the department sees its documents granted to a citizen, whole; the
/// citizen sees its own grants alone; a stranger is refused; a revoked grant is no longer
/// listed. Every record comes with its proof (checked by the chain client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documents_granted_to_a_citizen_are_listed_to_it_and_its_departments_only() {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    let citizen = Identity::generate(Role::Citizen);
    let other = Identity::generate(Role::Citizen);
    let as_citizen = common::client_as(&cluster, &citizen);
    let as_other = common::client_as(&cluster, &other);
    let mut granted = Vec::new();
    for seed in 0..3 {
        let put = common::put(&dept, &common::data(4 << 10, seed))
            .await
            .unwrap();
        if seed < 2 {
            common::grant(&dept, &put, &citizen, None).await;
            granted.push(put.id);
        }
        common::grant(&dept, &put, &other, None).await;
    }
    granted.sort();

    let by_dept = granted_to(&dept, citizen.public()).await.unwrap();
    assert_eq!(
        by_dept.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        granted
    );
    assert!(
        by_dept.iter().all(|(_, r)| r.grants.len() == 2),
        "the owner sees whole records"
    );
    let by_citizen = granted_to(&as_citizen, citizen.public()).await.unwrap();
    assert_eq!(
        by_citizen.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        granted
    );
    assert!(
        by_citizen
            .iter()
            .all(|(_, r)| r.grants.keys().eq([&citizen.public()])),
        "a grantee sees its own grant alone"
    );
    let refused = granted_to(&as_other, citizen.public()).await;
    assert!(
        refused.is_err(),
        "another citizen may not list someone's grants: {refused:?}"
    );

    dept.revoke(granted[0], citizen.public()).await.unwrap();
    let after_revoke = granted_to(&as_citizen, citizen.public()).await.unwrap();
    assert_eq!(
        after_revoke.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![granted[1]]
    );
    for c in [dept, as_citizen, as_other] {
        c.close().await;
    }
    cluster.shutdown().await;
}

/// Every document `client` may see granted to `who`, page after page.
async fn granted_to(
    client: &dangan::client::Client,
    who: dangan::identity::PublicId,
) -> Result<Vec<(DocumentId, DocumentRecord)>, ChainError> {
    let chain = client.chain().unwrap();
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = chain.granted(&who, after).await?;
        all.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => return Ok(all),
        }
    }
}
