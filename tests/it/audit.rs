//! Read audit: peers record every read they serve, commit Merkle roots of their records to
//! the chain, and the owner's audit lists exactly the reads that happened, each checked
//! against the chain. Real peers, real QUIC, real redb, a short audit interval.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common;
use dangan::audit::{self, AuditError, AuditReport, ReadKind, Verdict};
use dangan::client::{Client, ClientOptions};
use dangan::cluster::LocalCluster;
use dangan::id::DocumentId;
use dangan::identity::{Identity, PublicId, Role};
use dangan::peer::PeerLimits;

const INTERVAL: Duration = Duration::from_millis(300);

/// Client options with no hedged second request, so each get reads exactly one manifest;
/// a restarted peer is asked again soon.
fn unhedged() -> ClientOptions {
    ClientOptions {
        hedge_after: Duration::from_secs(30),
        down_for: Duration::from_millis(200),
        ..common::options()
    }
}

/// Audits until every record is covered by a committed root (or fails the test).
async fn audited(client: &Client, id: &DocumentId) -> AuditReport {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let report = audit::audit(client.chain().unwrap(), &client.all_nodes(), id)
            .await
            .unwrap();
        if report.unreachable.is_empty()
            && report
                .lines
                .iter()
                .all(|l| matches!(l.verdict, Verdict::Verified { .. }))
        {
            return report;
        }
        assert!(
            report
                .lines
                .iter()
                .all(|l| !matches!(l.verdict, Verdict::Failed(_))),
            "{:?}",
            report.lines
        );
        assert!(
            Instant::now() < deadline,
            "records stayed pending or peers unreachable: {:?}",
            report.unreachable
        );
        tokio::time::sleep(INTERVAL).await;
    }
}

/// (manifest reads, shard reads) per reader.
fn reads_by_reader(report: &AuditReport) -> BTreeMap<PublicId, (usize, usize)> {
    let mut by = BTreeMap::new();
    for l in &report.lines {
        let e = by.entry(l.record.reader).or_insert((0, 0));
        match l.record.read {
            ReadKind::Manifest | ReadKind::ManifestVia { .. } => e.0 += 1,
            ReadKind::Shard(_) | ReadKind::ShardVia { .. } => e.1 += 1,
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_sees_exactly_the_reads_that_happened_checked_against_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = PeerLimits {
        audit_interval: INTERVAL,
        ..PeerLimits::default()
    };
    let mut cluster = LocalCluster::start_in(tmp.path(), 6, 3, limits)
        .await
        .unwrap();
    let dept = cluster.client(unhedged()).unwrap();
    let citizen = Identity::generate(Role::Citizen);
    let neighbour = Identity::generate(Role::Citizen);
    let cert = common::data(50 << 10, 1);
    let put = common::put(&dept, &cert).await.unwrap();
    common::grant(&dept, &put, &citizen, None).await;
    let before = common::shards_served(&cluster);

    // The granted citizen, the department itself and an operator read; the neighbour is
    // refused everywhere.
    let as_citizen = cluster.client_as(&citizen, unhedged()).unwrap();
    let key = as_citizen.granted_key(&put.id).await.unwrap();
    assert_eq!(common::read(&as_citizen, &put.id, &key).await, cert);
    assert_eq!(common::read(&dept, &put.id, &put.key).await, cert);
    let operator = common::operator(&cluster, cluster.layout(), None);
    let node = dept.manifest_nodes(&put.id).unwrap()[0].clone();
    assert!(
        operator
            .net()
            .manifest_get(&node, &put.id)
            .await
            .unwrap()
            .is_some()
    );
    let as_neighbour = common::client_as(&cluster, &neighbour);
    assert!(as_neighbour.manifest(&put.id).await.is_err());
    let shard_reads = (common::shards_served(&cluster) - before) as usize;
    assert!(shard_reads >= 2 * 4, "two whole reads of k = 4 shards");

    let report = audited(&dept, &put.id).await;
    let by = reads_by_reader(&report);
    assert_eq!(
        by.keys().copied().collect::<Vec<_>>().len(),
        3,
        "citizen, department, operator and nobody else: {by:?}"
    );
    assert_eq!(by[&citizen.public()].0, 1, "one manifest read");
    assert_eq!(by[&dept.public()].0, 1);
    assert_eq!(by[&cluster.operator().public()], (1, 0));
    assert!(!by.contains_key(&neighbour.public()));
    assert!(by[&citizen.public()].1 >= 4 && by[&dept.public()].1 >= 4);
    assert_eq!(
        by.values().map(|(_, s)| s).sum::<usize>(),
        shard_reads,
        "every shard served is recorded, once"
    );
    let times_ok = report
        .lines
        .iter()
        .all(|l| l.record.at_ms > 0 && l.record.document == put.id);
    assert!(times_ok);

    // An operator may audit too; the citizen and another department may not.
    let op_report = audit::audit(operator.chain().unwrap(), &operator.all_nodes(), &put.id)
        .await
        .unwrap();
    assert_eq!(op_report.lines.len(), report.lines.len());
    for who in [&citizen, cluster.other_department()] {
        let c = common::client_as(&cluster, who);
        match audit::audit(c.chain().unwrap(), &c.all_nodes(), &put.id).await {
            Err(AuditError::Refused(reason)) => {
                assert!(reason.contains("may not see who read"), "{reason}")
            }
            other => panic!("a non-owner's audit was answered: {other:?}"),
        }
        c.close().await;
    }

    // A peer that alters a record, or its proof, is caught.
    let holder = report
        .lines
        .iter()
        .find(|l| matches!(l.record.read, ReadKind::Manifest))
        .unwrap()
        .peer;
    let node = cluster
        .layout()
        .nodes
        .iter()
        .find(|n| n.key == holder)
        .unwrap()
        .clone();
    let page = audit::fetch_page(dept.net(), &node, &put.id, None)
        .await
        .unwrap();
    let entry = page.entries[0].clone();
    let proof = entry.proof.clone().unwrap();
    let root = dept.chain().unwrap().tx(proof.tx).await.unwrap().unwrap();
    assert!(matches!(
        audit::check(&holder, &put.id, &entry, Some(&root)),
        Verdict::Verified { .. }
    ));
    let failed = |e: &audit::AuditEntry| {
        matches!(
            audit::check(&holder, &put.id, e, Some(&root)),
            Verdict::Failed(_)
        )
    };
    let mut t = entry.clone();
    t.record.reader = neighbour.public();
    assert!(failed(&t), "another reader");
    let mut t = entry.clone();
    t.record.at_ms += 1;
    assert!(failed(&t), "another time");
    let mut t = entry.clone();
    t.record.seq += 1;
    assert!(failed(&t), "another position");
    let mut t = entry.clone();
    if let Some(p) = t.proof.as_mut() {
        match p.path.path.first_mut() {
            Some(h) => h[0] ^= 1,
            None => p.path.leaf_count += 1,
        }
    }
    assert!(failed(&t), "a forged path");
    let other_peer = cluster
        .layout()
        .nodes
        .iter()
        .find(|n| n.key != holder)
        .unwrap()
        .key;
    assert!(matches!(
        audit::check(&other_peer, &put.id, &entry, Some(&root)),
        Verdict::Failed(_)
    ));
    assert!(matches!(
        audit::check(&holder, &put.id, &entry, None),
        Verdict::Failed(_)
    ));

    // Records survive a restart of the peer that holds them, still verified.
    let i = cluster.index_of(&holder).unwrap();
    let held = report.lines.iter().filter(|l| l.peer == holder).count();
    cluster.stop_peer(i).await.unwrap();
    cluster.restart_peer(i).await.unwrap();
    let again = audited(&dept, &put.id).await;
    assert_eq!(again.lines.len(), report.lines.len());
    assert_eq!(
        again.lines.iter().filter(|l| l.peer == holder).count(),
        held
    );

    for c in [as_citizen, as_neighbour, operator, dept] {
        c.close().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_no_new_reads_commits_no_root() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = PeerLimits {
        audit_interval: Duration::from_millis(200),
        ..PeerLimits::default()
    };
    let cluster = LocalCluster::start_in(tmp.path(), 3, 3, limits)
        .await
        .unwrap();
    let dept = cluster.client(ClientOptions {
        params: dangan::manifest::CodingParams {
            k: 2,
            m: 1,
            segment_size: 64 << 10,
            segments_per_stripe: 1,
        },
        ..common::options()
    });
    let dept = dept.unwrap();
    let put = common::put(&dept, &common::data(10_000, 2)).await.unwrap();
    let height = cluster.ledger().status().height;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        cluster.ledger().status().height,
        height,
        "no reads, no audit roots, no blocks"
    );
    common::read(&dept, &put.id, &put.key).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.ledger().status().height == height {
        assert!(Instant::now() < deadline, "no audit root after reads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dept.close().await;
    cluster.shutdown().await;
}

/// A peer that cannot record a read in its audit log (here: its log may hold no record,
/// `PeerLimits::audit_buffer = 0`; a full buffer or a failing disk refuse the same way)
/// refuses the read `Unavailable`, sends no document byte and records nothing; the same
/// requests are served by a peer that can record them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_cannot_record_a_read_refuses_it_unavailable_and_sends_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use crate::common::wire::Raw;
    use dangan::client::stripe_key;
    use dangan::proto::{ErrorCode, Request, Response};
    use dangan::tls::AllowAny;

    for (bound, served) in [(0, false), (PeerLimits::default().audit_buffer, true)] {
        let tmp = tempfile::tempdir().unwrap();
        let limits = PeerLimits {
            audit_buffer: bound,
            ..PeerLimits::default()
        };
        let cluster = LocalCluster::start_in(tmp.path(), 6, 3, limits)
            .await
            .unwrap();
        let dept = common::department(&cluster);
        let put = common::put(&dept, &common::data(10_000, 5)).await.unwrap();
        let manifest = put.manifest.encode();
        // A peer holding both the manifest and a shard, asked directly by the owner.
        let replicas = dept.manifest_nodes(&put.id).unwrap();
        let ids = &put.manifest.stripes[0];
        let placed = cluster.layout().place(&stripe_key(ids), ids.len()).unwrap();
        let (node, shard) = placed
            .iter()
            .zip(ids)
            .find(|(n, _)| replicas.iter().any(|r| r.key == n.key))
            .map(|(n, s)| ((*n).clone(), *s))
            .unwrap();
        let peer = cluster.peer(cluster.index_of(&node.key).unwrap()).unwrap();
        let (raw, _) = Raw::connect(
            cluster.department(),
            node.addr.parse().unwrap(),
            Arc::new(AllowAny),
        )
        .await;
        let open = Request::OpenDocument {
            document: put.id,
            len: manifest.len() as u64,
        };
        let (resp, _) = raw.ask(&open, Some(&manifest)).await;
        assert!(matches!(resp, Response::Opened { .. }), "{resp:?}");
        for req in [
            Request::GetManifest { id: put.id },
            Request::GetShard { id: shard },
        ] {
            let (resp, body) = raw.ask(&req, None).await;
            if served {
                assert!(!body.is_empty(), "{req:?} → {resp:?}");
                continue;
            }
            match &resp {
                Response::Error {
                    code: ErrorCode::Unavailable,
                    message,
                } => assert!(
                    message.contains("cannot record the read in its audit log"),
                    "{message}"
                ),
                other => panic!("{req:?} must be refused Unavailable, got {other:?}"),
            }
            assert!(body.is_empty(), "no document byte");
        }
        raw.close().await;
        let recorded = peer.audit().recorded();
        let shards = peer.stats().shards_served.load(Ordering::Relaxed);
        if served {
            assert_eq!((recorded, shards), (2, 1));
        } else {
            assert_eq!(
                (recorded, shards),
                (0, 0),
                "nothing served, nothing recorded"
            );
            // Every peer is like it: the document cannot be read at all.
            let short = ClientOptions {
                unavailable_retry: Duration::from_millis(300),
                ..common::options()
            };
            let reader = cluster.client(short).unwrap();
            assert!(common::get(&reader, &put.id, &put.key).await.is_err());
            assert_eq!(common::shards_served(&cluster), 0);
            reader.close().await;
        }
        dept.close().await;
        cluster.shutdown().await;
    }
}
