//! Grants on a real local cluster: a department stores a certificate and grants it to a
//! citizen, who unwraps the data key from the chain and reads the document; anyone without
//! a live grant gets no key.

use crate::common;
use dangan::client::ClientError;
use dangan::grant::GrantAddress;
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
            .grant(id, &key, &GrantAddress::of(&stranger), None)
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
