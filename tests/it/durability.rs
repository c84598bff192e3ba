//! Nothing acknowledged is lost: a rebalance deletes an old copy only once the destination
//! verified its own, a put onto a corrupt stored body rewrites it before it is acknowledged,
//! and `dangan put` killed at any moment leaves no registered document without its key.
//! Real peers on 127.0.0.1 (QUIC, mutual TLS, redb in temp dirs); the corruption is done to
//! the peers' real body files and redb rows.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::cli::Cli;
use crate::common::process::{ProcessCluster, signal};
use dangan::client::{Client, ClientOptions, stripe_key};
use dangan::cluster::LocalCluster;
use dangan::config::ClusterFile;
use dangan::crypto::DataKey;
use dangan::id::{DocumentId, ShardId};
use dangan::identity::Identity;
use dangan::keyring::Keyring;
use dangan::manifest::Manifest;
use dangan::ops::{self, Journal, OpsOptions};
use dangan::placement::NodeInfo;
use dangan::store::BODY_DIR;
use dangan::tls::Membership;

struct Doc {
    id: DocumentId,
    key: DataKey,
    bytes: Vec<u8>,
    manifest: Manifest,
}

async fn store(client: &Client, len: usize, seed: u64) -> Doc {
    let bytes = common::data(len, seed);
    let receipt = common::put(client, &bytes).await.unwrap();
    Doc {
        id: receipt.id,
        key: receipt.key,
        bytes,
        manifest: receipt.manifest,
    }
}

/// Every document reads back whole with no shard reported corrupt.
async fn read_intact(client: &Client, docs: &[Doc]) {
    for doc in docs {
        let (bytes, report) = common::get(client, &doc.id, &doc.key).await.unwrap();
        assert!(bytes == doc.bytes, "document {} differs", doc.id);
        assert!(
            report.corrupt.is_empty(),
            "document {} read with corrupt shards {:?}",
            doc.id,
            report.corrupt
        );
    }
}

/// The store of the running peer `node`.
fn store_of<'a>(cluster: &'a LocalCluster, node: &NodeInfo) -> &'a dangan::store::ShardStore {
    let peer = cluster.peer(cluster.index_of(&node.key).unwrap()).unwrap();
    peer.store()
}

/// Removes the body file of `id` from `node`'s store directory, as a lost write would.
fn remove_body_file(cluster: &LocalCluster, node: &NodeInfo, id: &ShardId) {
    let path = store_of(cluster, node)
        .dir()
        .join(BODY_DIR)
        .join(id.to_string());
    std::fs::remove_file(&path).unwrap();
}

/// A new peer in `zone`, added to the layout on chain; (old layout, new layout, the peer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_deletes_the_old_copy_only_after_the_destination_verified_its_own() {
    let (mut cluster, client) = common::start_cluster(6, 1).await;
    let mut docs = Vec::new();
    for seed in 0..4 {
        docs.push(store(&client, (1 << 20) - 1000 * seed as usize, seed).await);
    }
    let (old, new, added) = common::add_node(&mut cluster, "zone-0").await;
    // (document, shard, its peer under the old layout) of every slot the new peer takes.
    let mut moving = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        for ids in &doc.manifest.stripes {
            let before = old.place(&stripe_key(ids), ids.len()).unwrap();
            let after = new.place(&stripe_key(ids), ids.len()).unwrap();
            for slot in 0..ids.len() {
                if after[slot].key == added.key {
                    moving.push((d, ids[slot], before[slot].clone()));
                }
            }
        }
    }
    let floor = moving.len() as u64;
    assert!(floor >= 3, "only {floor} shards move to the new peer");

    // A first rebalance copied three shards to the new peer and died; since then, one copy
    // lost a bit in its body file and another lost its body file altogether (its redb row
    // and the document's reference are still there).
    let op = common::operator(&cluster, &new, Some(&old));
    for (d, id, from) in &moving[..3] {
        let bytes = store_of(&cluster, from).get(id).unwrap().unwrap();
        op.net()
            .shard_put(&added, id, &bytes.into(), &docs[*d].id)
            .await
            .unwrap();
    }
    let dest = store_of(&cluster, &added);
    let (corrupt, missing) = (moving[1].1, moving[2].1);
    assert!(dest.corrupt_for_test(&corrupt, 4321).unwrap());
    remove_body_file(&cluster, &added, &missing);
    for id in [corrupt, missing] {
        assert!(dest.has(&id).unwrap());
        assert!(dest.get(&id).is_err(), "the destination's copy is damaged");
    }

    let journal_dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(journal_dir.path(), old.epoch, new.epoch).unwrap();
    let report = ops::converge(&op, Some(&journal), &OpsOptions::default(), &|_| {})
        .await
        .unwrap();
    println!("{report:?}");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    // The intact copy is kept; the damaged two are written again before their old copies go.
    assert_eq!(report.shards_moved, floor - 1);
    assert_eq!(report.shards_deleted, floor);
    for (d, id, from) in &moving {
        assert_eq!(
            dest.get(id).unwrap().map(|b| ShardId::of(&b)),
            Some(*id),
            "the new peer's copy of {id} verifies"
        );
        assert!(dest.has_ref(id, &docs[*d].id).unwrap());
        assert!(
            !store_of(&cluster, from).has_ref(id, &docs[*d].id).unwrap(),
            "the old copy of {id} was dropped once the new one verified"
        );
    }
    op.close().await;
    // A client that knows only the new layout reads everything, no shard corrupt.
    let after = common::department(&cluster);
    read_intact(&after, &docs).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_onto_a_corrupt_stored_body_rewrites_it_before_it_is_acknowledged() {
    let (cluster, client) = common::start_cluster(6, 3).await;
    // A certificate (one stripe, shards small enough to live inline in redb) and a document
    // of four stripes (shards in body files).
    let docs = vec![
        store(&client, 50 << 10, 1).await,
        store(&client, 1 << 20, 2).await,
    ];
    let layout = cluster.layout().clone();
    let mut damaged = BTreeSet::new();
    for doc in &docs {
        let ids = &doc.manifest.stripes[0];
        let placed = layout.place(&stripe_key(ids), ids.len()).unwrap();
        for slot in [0, 5] {
            let (node, id) = (placed[slot].clone(), ids[slot]);
            let peer_store = store_of(&cluster, &node);
            let bytes = peer_store.get(&id).unwrap().unwrap();
            if slot == 5 && doc.manifest.stripes.len() > 1 {
                remove_body_file(&cluster, &node, &id);
            } else {
                assert!(peer_store.corrupt_for_test(&id, 99).unwrap());
            }
            assert!(peer_store.get(&id).is_err());
            // The department's put of this shard again (a retry after a lost answer): the
            // peer already holds the id, and acknowledges it only with a good body behind.
            client
                .net()
                .shard_put(&node, &id, &bytes.clone().into(), &doc.id)
                .await
                .unwrap();
            assert_eq!(peer_store.get(&id).unwrap(), Some(bytes));
            assert_eq!(peer_store.refcount(&id).unwrap(), Some(1));
            damaged.insert(id);
        }
    }
    assert_eq!(damaged.len(), 4);
    read_intact(&client, &docs).await;
    cluster.shutdown().await;
}

/// A library client of the process cluster in `dir` as the key in `key_file` (the same
/// wiring as `dangan`'s own: the chain's layout, the cluster file's coding).
async fn process_client(cluster: &ProcessCluster, key_file: &str) -> Client {
    let identity = Identity::load(cluster.path(key_file)).unwrap();
    let file = ClusterFile::load(&cluster.path("cluster.toml")).unwrap();
    let membership = Membership::new();
    membership.replace(file.members.iter().copied());
    Client::with_chain_layout(
        &identity,
        Arc::new(membership),
        file.layout,
        ClientOptions {
            params: file.params,
            write_quorum: file.write_quorum,
            chain: file.chain,
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap()
}

#[test]
fn a_put_killed_at_any_moment_leaves_every_registered_document_readable_with_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cluster = ProcessCluster::start(root, 3, 1);
    let keyring = cluster.path("keyring");
    let dept = Cli::new(&cluster, &cluster.path("keys/department.key"), &keyring);
    // A certificate-sized document: its store takes about as long as its registration, so
    // the kills below land in every phase (connecting, storing, saving the key, submitting,
    // waiting for the commit).
    let input = root.join("certificate.bin");
    let bytes = common::data(60 << 10, 0xce47);
    std::fs::write(&input, &bytes).unwrap();
    // How long a whole put takes here (the quickest of three: the first pays for cold caches).
    let whole = (0..3)
        .map(|i| {
            let started = Instant::now();
            dept.put(&input, &format!("put-whole-{i}"));
            started.elapsed()
        })
        .min()
        .unwrap();

    // Puts killed (SIGKILL, no cleanup) after delays spread from the start of a whole put to
    // a little past its end, denser early (a put's own work is done well before its process
    // has closed its connections). Each is first stopped (SIGSTOP) for a moment before the
    // kill, so a registration it already submitted commits while it can no longer save
    // anything.
    const KILLS: u32 = 24;
    for i in 0..KILLS {
        let delay = whole.mul_f64(1.1 * (f64::from(i) / f64::from(KILLS)).powi(2));
        let name = format!("put-killed-{i}");
        let mut child = dept
            .command(["put".as_ref(), input.as_os_str()])
            .stdout(std::fs::File::create(cluster.logs.join(format!("{name}.stdout"))).unwrap())
            .stderr(std::fs::File::create(cluster.logs.join(format!("{name}.stderr"))).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            signal(child.id(), "STOP");
            std::thread::sleep(Duration::from_millis(300));
            let _ = child.kill();
        }
        child.wait().unwrap();
    }
    // One more whole put: its registration commits after every submission above reached
    // the chain, so the list below holds every document that will ever register.
    dept.put(&input, "put-last");

    // The operator collects what the killed puts left unregistered (grace 0: no put is
    // under way); every registered document must still read back below.
    let operator = Cli::new(
        &cluster,
        &cluster.path("keys/operator.key"),
        &root.join("operator-keyring"),
    )
    .with_data_dir(root.join("operator"));
    let collect = operator
        .run(["collect", "--grace-hours", "0"], "collect")
        .expect_ok("collect");
    println!("{}", collect.stdout.trim());
    assert!(
        collect.stdout.contains("collect: 3 peers"),
        "{}",
        collect.describe()
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (registered, keys) = rt.block_on(async {
        let operator = process_client(&cluster, "keys/operator.key").await;
        let registered = ops::documents(&operator).await.unwrap();
        operator.close().await;
        let owner = process_client(&cluster, "keys/department.key").await;
        let ring = Keyring::open(&keyring).unwrap();
        // Every registered document has its key on disk, and reads back with it.
        for id in &registered {
            let key = ring
                .load(id)
                .unwrap_or_else(|e| panic!("registered document {id} has no key: {e}"));
            let got = common::read(&owner, id, &key).await;
            assert!(got == bytes, "document {id} differs");
        }
        // A put killed after it saved the key and before it submitted the registration.
        let never = owner
            .store(
                std::io::Cursor::new(bytes.clone()),
                Some(bytes.len() as u64),
                common::info(),
                &|_, _| {},
            )
            .await
            .unwrap();
        ring.save(&never.id, &never.key).unwrap();
        owner.close().await;
        let keys: Vec<DocumentId> = std::fs::read_dir(&keyring)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".key")?.parse().ok()
            })
            .collect();
        (registered, keys)
    });
    let pending: Vec<&DocumentId> = keys.iter().filter(|k| !registered.contains(k)).collect();
    println!(
        "a whole put took {whole:?}; {KILLS} puts killed: {} documents registered, {} keys \
         saved, {} of them for documents that never registered (one stored and never \
         submitted on purpose)",
        registered.len(),
        keys.len(),
        pending.len()
    );
    assert!(registered.len() >= 4, "the four whole puts registered");
    // A key whose document never registered is harmless: a get says so and writes nothing.
    assert!(!pending.is_empty());
    for id in &pending {
        let out = root.join("pending.out");
        let get = dept
            .get(&id.to_string(), &out, &format!("get-pending-{id}"))
            .expect_fail("get of a document that never registered");
        assert!(get.stderr.contains("not registered"), "{}", get.describe());
        assert!(!out.exists());
    }
    cluster.assert_no_panics();
}
