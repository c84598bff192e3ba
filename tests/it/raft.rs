//! Three validators, each in its own peer on 127.0.0.1, ordering blocks with raft over real
//! QUIC, with real redb files: the leader is killed while departments register documents,
//! and everything is restarted from disk.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::chain::{approved, register, registered_document, tx};
use crate::common::process::free_port_range;
use dangan::chain::block::BlockError;
use dangan::chain::client::ChainLink;
use dangan::chain::ledger::{Ledger, RaftTuning, ValidatorNet};
use dangan::chain::raft::node_id;
use dangan::chain::state::{Genesis, GenesisAccount};
use dangan::chain::tx::{ChainKey, SignedTx, TxBody};
use dangan::client::{Client, ClientOptions};
use dangan::id::DocumentId;
use dangan::identity::{Identity, PublicId, Role};
use dangan::peer::{self, PeerHandle};
use dangan::placement::{Layout, NodeInfo};
use dangan::tls::Membership;

struct Validator {
    ledger: Arc<Ledger>,
    peer: PeerHandle,
}

struct Net {
    genesis: Genesis,
    validators: Vec<Identity>,
    nodes: Vec<Identity>,
    addrs: Vec<SocketAddr>,
    dirs: Vec<PathBuf>,
    membership: Membership,
    departments: Vec<Identity>,
    tuning: RaftTuning,
}

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

impl Net {
    fn new(root: &Path, departments: usize) -> Self {
        Self::with(root, departments, 3, 3, RaftTuning::default())
    }

    /// `hosts` validator hosts, of which the first `genesis` are the genesis validators (the
    /// others are configured everywhere but join later through the chain).
    fn with(
        root: &Path,
        departments: usize,
        hosts: usize,
        genesis: usize,
        tuning: RaftTuning,
    ) -> Self {
        let validators: Vec<Identity> = (0..hosts)
            .map(|_| Identity::generate(Role::Validator))
            .collect();
        let nodes: Vec<Identity> = (0..hosts).map(|_| Identity::generate(Role::Node)).collect();
        let departments: Vec<Identity> = (0..departments)
            .map(|_| Identity::generate(Role::Department))
            .collect();
        let membership = Membership::new();
        for id in nodes.iter().chain(&departments) {
            membership.add(id.public());
        }
        let genesis = Genesis {
            chain_id: "raft-test".into(),
            validators: validators[..genesis]
                .iter()
                .map(|v| GenesisAccount::of(v, Role::Validator))
                .collect(),
            accounts: departments
                .iter()
                .map(|d| GenesisAccount::of(d, Role::Department))
                .collect(),
            nodes: Vec::new(),
        };
        let dirs = (0..hosts)
            .map(|i| {
                let d = root.join(format!("v{i}"));
                std::fs::create_dir_all(&d).unwrap();
                d
            })
            .collect();
        Self {
            genesis,
            validators,
            addrs: (0..hosts)
                .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port_range(1))))
                .collect(),
            nodes,
            dirs,
            membership,
            departments,
            tuning,
        }
    }

    fn hosts(&self) -> Vec<NodeInfo> {
        (0..self.nodes.len())
            .map(|i| NodeInfo {
                key: self.nodes[i].public(),
                zone: "validators".into(),
                weight: 0,
                addr: self.addrs[i].to_string(),
            })
            .collect()
    }

    /// The key this chain's transactions are signed for.
    fn key(&self) -> ChainKey {
        self.genesis.key()
    }

    /// Which validator (its index) has raft node id `node`.
    fn validator_of(&self, node: u64) -> Option<usize> {
        (0..self.validators.len()).find(|&i| node_id(&self.validators[i].public()) == node)
    }

    /// The chain as a client's cluster file names it: every validator host, and the
    /// genesis validators (later ones are proven from them, `chain::validators`).
    fn link(&self) -> ChainLink {
        ChainLink {
            hosts: self.hosts(),
            validators: self.genesis.validators.iter().map(|v| v.id).collect(),
        }
    }

    /// Starts validators `0..n` and waits until they agree on the tip.
    async fn start_converged(&self, n: usize) -> Vec<Option<Validator>> {
        let mut vs = Vec::new();
        for i in 0..n {
            vs.push(Some(self.start(i).await));
        }
        converged(&vs.iter().flatten().collect::<Vec<_>>()).await;
        vs
    }

    async fn start(&self, i: usize) -> Validator {
        self.start_knowing(i, self.validators.len()).await
    }

    /// Starts validator `i` with a cluster file that names (and trusts) only the first
    /// `known` validator hosts.
    async fn start_knowing(&self, i: usize, known: usize) -> Validator {
        let trust = Membership::new();
        trust.replace(
            self.departments
                .iter()
                .chain(&self.nodes[..known])
                .map(|id| id.public()),
        );
        let net = ValidatorNet {
            host_identity: self.nodes[i].clone(),
            trust: Arc::new(trust),
            hosts: self
                .validators
                .iter()
                .map(|v| v.public())
                .zip(self.hosts())
                .take(known)
                .collect(),
        };
        let ledger = Arc::new(
            Ledger::open_tuned(
                &self.dirs[i].join("chain.redb"),
                &self.genesis,
                self.validators[i].clone(),
                Some(net),
                self.tuning,
            )
            .await
            .unwrap(),
        );
        let peer = peer::start(
            &self.nodes[i],
            Arc::new(self.membership.clone()),
            self.addrs[i],
            &self.dirs[i].join("store"),
            Default::default(),
            Some(ledger.clone()),
            &mut Default::default(),
        )
        .await
        .unwrap();
        Validator { ledger, peer }
    }

    fn client(&self, dept: &Identity) -> Client {
        self.client_on(
            dept,
            self.link(),
            ClientOptions {
                request_timeout: Duration::from_secs(10),
                down_for: Duration::from_millis(500),
                ..ClientOptions::default()
            },
        )
    }

    /// A client of `who` that reaches the chain through `link` alone (no storage layout),
    /// with `options` otherwise.
    fn client_on(&self, who: &Identity, link: ChainLink, options: ClientOptions) -> Client {
        Client::new(
            who,
            Arc::new(self.membership.clone()),
            Layout::new(0, Vec::new()).unwrap(),
            ClientOptions {
                bind: "127.0.0.1:0".parse().unwrap(),
                chain: Some(link),
                ..options
            },
        )
        .unwrap()
    }
}

async fn stop(v: Validator) {
    v.peer.shutdown().await;
    v.ledger.shutdown().await;
}

/// Stops the validators one after another.
async fn stop_all(vs: impl IntoIterator<Item = Validator>) {
    for v in vs {
        stop(v).await;
    }
}

/// Waits until some validator of `vs` is leader and every one of them has the same tip.
async fn converged(vs: &[&Validator]) -> (u64, [u8; 32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statuses: Vec<_> = vs.iter().map(|v| v.ledger.status()).collect();
        let leader = vs
            .iter()
            .any(|v| v.ledger.leader() == Some(v.ledger.node_id()));
        if leader
            && statuses
                .windows(2)
                .all(|w| w[0].tip_hash == w[1].tip_hash && w[0].state_root == w[1].state_root)
        {
            return (statuses[0].height, statuses[0].state_root);
        }
        assert!(
            Instant::now() < deadline,
            "validators did not converge: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every height has one block: the same hash on every validator that has it.
fn one_block_per_height(vs: &[&Validator], upto: u64) {
    for height in 1..=upto {
        let mut seen: Option<[u8; 32]> = None;
        for v in vs {
            if let Some(b) = v.ledger.block(height).unwrap() {
                let h = b.header.header.hash();
                assert_eq!(*seen.get_or_insert(h), h, "two blocks at height {height}");
            }
        }
        assert!(seen.is_some(), "no validator has block {height}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_validators_survive_the_leader_being_killed_and_a_restart_from_disk() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let net = Arc::new(Net::new(tmp.path(), 4));
    let mut vs = net.start_converged(3).await;

    // Four departments register documents concurrently, each in nonce order.
    const EACH: u64 = 40;
    let committed = Arc::new(std::sync::Mutex::new(Vec::<(DocumentId, u64)>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for d in 0..net.departments.len() {
        let (net, committed) = (net.clone(), committed.clone());
        tasks.spawn(async move {
            let dept = net.departments[d].clone();
            let client = net.client(&dept);
            let mut errors = 0;
            for nonce in 1..=EACH {
                let tx = register(&net.key(), &dept, nonce);
                // A submit that failed may have committed after all: retry the same
                // transaction until it is committed or refused as already used.
                for attempt in 0.. {
                    match client.chain().unwrap().submit_tx(&tx).await {
                        Ok((height, _)) => {
                            committed
                                .lock()
                                .unwrap()
                                .push((registered_document(&tx), height));
                            break;
                        }
                        Err(e) if e.to_string().contains("nonce") => break,
                        Err(e) => {
                            errors += 1;
                            assert!(attempt < 20, "department {d} nonce {nonce}: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            client.close().await;
            errors
        });
    }

    // Kill the leader once some documents are committed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed.lock().unwrap().len() < 30 {
        assert!(Instant::now() < deadline, "no progress before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = vs
        .iter()
        .flatten()
        .find_map(|v| v.ledger.leader())
        .expect("a leader");
    let killed = net
        .validator_of(leader)
        .expect("the leader is one of the validators");
    let before_kill = committed.lock().unwrap().len();
    stop(vs[killed].take().unwrap()).await;

    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        errors += r.unwrap();
    }
    let committed: Vec<(DocumentId, u64)> = committed.lock().unwrap().clone();
    assert!(
        committed.len() > before_kill,
        "the survivors went on committing ({before_kill} before the kill, {} in all)",
        committed.len()
    );

    // No acknowledged registration is lost; one block per height on every survivor.
    let (height, root) = {
        let survivors: Vec<&Validator> = vs.iter().flatten().collect();
        let (height, root) = converged(&survivors).await;
        for v in &survivors {
            let state = v.ledger.state();
            for (doc, _) in &committed {
                assert!(state.document(doc).is_some(), "{doc} lost");
            }
        }
        one_block_per_height(&survivors, height);
        (height, root)
    };
    eprintln!(
        "{} registrations acknowledged ({before_kill} before the leader was killed), {errors} \
         retried submits, {height} blocks",
        committed.len()
    );

    // Restart everything from disk: the same tip and state root on all three, and the old
    // leader's blocks agree with the others'.
    stop_all(vs.into_iter().flatten()).await;
    let mut vs = Vec::new();
    for i in 0..3 {
        vs.push(net.start(i).await);
    }
    let all: Vec<&Validator> = vs.iter().collect();
    let (h2, root2) = converged(&all).await;
    assert_eq!((h2, root2), (height, root));
    one_block_per_height(&all, height);

    // And the restarted chain goes on.
    let client = net.client(&net.departments[0]);
    let (h3, _) = client
        .chain()
        .unwrap()
        .submit_tx(&register(&net.key(), &net.departments[0], EACH + 1))
        .await
        .unwrap();
    assert!(h3 > height);
    client.close().await;
    stop_all(vs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_and_outsiders_cannot_speak_raft() {
    use dangan::proto::{ErrorCode, RaftKind, Request, Response};
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::new(tmp.path(), 1);
    let vs: Vec<Validator> = net.start_converged(3).await.into_iter().flatten().collect();
    let follower = vs
        .iter()
        .position(|v| v.ledger.leader() != Some(v.ledger.node_id()))
        .unwrap();
    // A client that only knows a follower still gets its registration committed.
    let dept = &net.departments[0];
    let mut link = net.link();
    link.hosts = vec![link.hosts[follower].clone()];
    let client = net.client_on(dept, link, ClientOptions::default());
    let (height, _) = client
        .chain()
        .unwrap()
        .submit_tx(&register(&net.key(), dept, 1))
        .await
        .unwrap();
    assert!(height >= 1);

    // A department may not send consensus messages, nor endorsement requests.
    let node = net.hosts()[follower].clone();
    for req in [
        Request::Raft {
            kind: RaftKind::Vote,
            len: 3,
        },
        Request::Endorse { len: 3 },
    ] {
        let body = bytes::Bytes::from_static(b"abc");
        let err = client
            .net()
            .fetch(&node, &req, Some(&body), dangan::proto::MAX_CHAIN_BODY)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("hosts no validator"),
            "{req:?}: {err}"
        );
    }
    let _ = (ErrorCode::Refused, Response::Pong);
    client.close().await;
    let _: HashMap<PublicId, ()> = HashMap::new();
    stop_all(vs).await;
}

/// Submits `tx` until it is committed (retrying through elections and membership changes);
/// returns the height of its block.
async fn commit(client: &Client, tx: &SignedTx) -> u64 {
    for attempt in 0.. {
        match client.chain().unwrap().submit_tx(tx).await {
            Ok((height, _)) => return height,
            Err(e) if attempt > 0 && e.to_string().contains("nonce") => {
                // An earlier attempt committed after all.
                let proof = client
                    .chain()
                    .unwrap()
                    .tx(tx.id())
                    .await
                    .unwrap()
                    .expect("committed");
                return proof.header.header.height;
            }
            Err(e) => {
                assert!(attempt < 30, "{:?}: {e}", tx.tx.body);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    unreachable!()
}

/// Registers `n` more documents of `dept` (its nonces after `nonce`, which follows them),
/// each committed.
async fn register_more(client: &Client, dept: &Identity, nonce: &mut u64, n: u64) {
    for _ in 0..n {
        *nonce += 1;
        let chain = client.chain().unwrap().chain_key().await.unwrap();
        commit(client, &register(&chain, dept, *nonce)).await;
    }
}

/// The index of a running validator of `vs` that is not the raft leader.
fn a_follower(vs: &[Option<Validator>]) -> usize {
    (0..vs.len())
        .find(|&i| {
            vs[i]
                .as_ref()
                .is_some_and(|v| v.ledger.leader() != Some(v.ledger.node_id()))
        })
        .expect("a running follower")
}

/// Waits until `check` holds (20 s at most).
async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn leader_of<'a>(vs: &[&'a Validator]) -> Option<&'a Validator> {
    vs.iter()
        .find(|v| v.ledger.leader() == Some(v.ledger.node_id()))
        .copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_join_and_leave_through_the_chain() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    // Four validator hosts are configured; the chain starts with the first three.
    let net = Net::with(tmp.path(), 1, 4, 3, RaftTuning::default());
    let mut vs = net.start_converged(3).await;
    let dept = &net.departments[0];
    let client = net.client(dept);
    let mut nonce = 0;
    register_more(&client, dept, &mut nonce, 5).await;

    // A validator adds the fourth: once the block is applied, the leader adds it to raft.
    let admin = &net.validators[0];
    let newcomer = net.validators[3].public();
    // Approved by a majority of the three (off chain), sent by one of them.
    let add = approved(
        &net.key(),
        &[admin, &net.validators[1]],
        1,
        TxBody::AddValidator {
            validator: newcomer,
            host: None,
            approvals: vec![],
        },
    );
    let added_at = commit(&client, &add).await;
    vs.push(Some(net.start(3).await));
    {
        let all: Vec<&Validator> = vs.iter().flatten().collect();
        until("the newcomer is a raft voter", || {
            leader_of(&all).is_some_and(|l| l.ledger.raft_voters().len() == 4)
        })
        .await;
        converged(&all).await;
    }

    // Stop an old follower (not the admin): a majority of four now needs the newcomer's
    // endorsement and its raft vote.
    let leader = leader_of(&vs.iter().flatten().collect::<Vec<_>>())
        .unwrap()
        .ledger
        .node_id();
    let stopped = (1..3)
        .find(|&i| node_id(&net.validators[i].public()) != leader)
        .unwrap();
    stop(vs[stopped].take().unwrap()).await;
    register_more(&client, dept, &mut nonce, 5).await;
    let four: Vec<PublicId> = net.validators.iter().map(|v| v.public()).collect();
    let three: Vec<PublicId> = four[..3].to_vec();
    let newest = vs[3].as_ref().unwrap();
    let tip = newest.ledger.status().height;
    for h in 1..=tip {
        let header = newest.ledger.block(h).unwrap().unwrap().header;
        // The validators of block h are those after block h - 1.
        let set = if h <= added_at { &three } else { &four };
        header
            .verify_final(set)
            .unwrap_or_else(|e| panic!("block {h}: {e}"));
    }
    let last = newest.ledger.block(tip).unwrap().unwrap().header;
    assert!(
        last.signatures.iter().any(|(w, _)| *w == newcomer),
        "with one of four stopped, the newcomer endorsed block {tip}"
    );
    // A client that trusts only the genesis three checks that block through the chain's
    // set changes (the newcomer's signature means nothing to the genesis set alone).
    assert!(matches!(
        last.verify_final(&three),
        Err(BlockError::NotValidator { .. })
    ));
    let fresh = net.client(dept);
    let block = fresh
        .chain()
        .unwrap()
        .block(tip)
        .await
        .unwrap()
        .expect("block at the tip");
    assert_eq!(block.header, last);
    let history = fresh.chain().unwrap().prove_validators().await.unwrap();
    let sorted = |v: &[PublicId]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    assert_eq!(history.at(added_at), sorted(&three));
    assert_eq!(history.at(added_at + 1), sorted(&four));
    fresh.close().await;

    // Remove the stopped validator: the three left go on alone.
    // Three of the four approve (the stopped one's key still signs its approval).
    let remove = approved(
        &net.key(),
        &[admin, &net.validators[1], &net.validators[2]],
        2,
        TxBody::RemoveValidator {
            validator: net.validators[stopped].public(),
            approvals: vec![],
        },
    );
    let removed_at = commit(&client, &remove).await;
    let left: Vec<PublicId> = (0..4)
        .filter(|&i| i != stopped)
        .map(|i| net.validators[i].public())
        .collect();
    {
        let live: Vec<&Validator> = vs.iter().flatten().collect();
        until("the removed validator left the raft voters", || {
            leader_of(&live).is_some_and(|l| l.ledger.raft_voters().len() == 3)
        })
        .await;
    }
    register_more(&client, dept, &mut nonce, 5).await;
    let live: Vec<&Validator> = vs.iter().flatten().collect();
    let (height, _) = converged(&live).await;
    assert!(height > removed_at);
    one_block_per_height(&live, height);
    for v in &live {
        let state = v.ledger.state();
        assert_eq!(state.validators().iter().copied().collect::<Vec<_>>(), {
            let mut l = left.clone();
            l.sort();
            l
        });
        assert_eq!(state.document_count() as u64, nonce);
    }
    for h in removed_at + 1..=height {
        live[0]
            .ledger
            .block(h)
            .unwrap()
            .unwrap()
            .header
            .verify_final(&left)
            .unwrap_or_else(|e| panic!("block {h}: {e}"));
    }
    // The client's history follows the removal too, and registrations after it verify.
    let history = client.chain().unwrap().prove_validators().await.unwrap();
    assert_eq!(history.at(height), sorted(&left));
    let last_registration = register(&net.key(), dept, nonce);
    let proof = client
        .chain()
        .unwrap()
        .tx(last_registration.id())
        .await
        .unwrap();
    assert!(proof.is_some_and(|p| p.header.header.height > removed_at));
    client.close().await;
    stop_all(vs.into_iter().flatten()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_whose_host_the_chain_names_joins_without_new_cluster_files() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::with(tmp.path(), 1, 4, 3, RaftTuning::default());
    // The three genesis validators' cluster files know nothing of the fourth host.
    let mut vs = Vec::new();
    for i in 0..3 {
        vs.push(Some(net.start_knowing(i, 3).await));
    }
    converged(&vs.iter().flatten().collect::<Vec<_>>()).await;
    let dept = &net.departments[0];
    let client = net.client(dept);
    let mut nonce = 0;
    register_more(&client, dept, &mut nonce, 3).await;
    let admin = &net.validators[0];
    let newcomer = net.validators[3].public();
    let host = net.nodes[3].public();
    assert!(!vs[0].as_ref().unwrap().ledger.is_validator_host(&host));
    let add = |addr: String| TxBody::AddValidator {
        validator: newcomer,
        host: Some((host, addr)),
        approvals: vec![],
    };
    let majority = [admin, &net.validators[1]];
    let bad = approved(&net.key(), &majority, 1, add("not an address".into()));
    let refused = client.chain().unwrap().submit_tx(&bad).await.unwrap_err();
    assert!(refused.to_string().contains("ip:port"), "{refused}");
    // Nor may one validator alone redirect another sitting validator's traffic.
    let redirect = tx(
        &net.key(),
        admin,
        1,
        TxBody::SetValidatorHost {
            validator: net.validators[1].public(),
            host,
            addr: net.addrs[3].to_string(),
            approvals: vec![],
        },
    );
    let refused = client
        .chain()
        .unwrap()
        .submit_tx(&redirect)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("majority"), "{refused}");
    commit(
        &client,
        &approved(&net.key(), &majority, 1, add(net.addrs[3].to_string())),
    )
    .await;
    vs.push(Some(net.start(3).await));
    let all: Vec<&Validator> = vs.iter().flatten().collect();
    until("the old validators know the newcomer's host", || {
        all[..3].iter().all(|v| v.ledger.is_validator_host(&host))
    })
    .await;
    until("the newcomer is a raft voter", || {
        leader_of(&all).is_some_and(|l| l.ledger.raft_voters().len() == 4)
    })
    .await;
    converged(&all).await;
    // With an old follower stopped, every block needs the newcomer's endorsement.
    let leader = leader_of(&all).unwrap().ledger.node_id();
    let stopped = (1..3)
        .find(|&i| node_id(&net.validators[i].public()) != leader)
        .unwrap();
    drop(all);
    stop(vs[stopped].take().unwrap()).await;
    register_more(&client, dept, &mut nonce, 3).await;
    let live: Vec<&Validator> = vs.iter().flatten().collect();
    let (height, _) = converged(&live).await;
    let last = live[0].ledger.block(height).unwrap().unwrap().header;
    assert!(
        last.signatures.iter().any(|(w, _)| *w == newcomer),
        "the newcomer endorsed block {height}"
    );
    client.close().await;
    stop_all(vs.into_iter().flatten()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_behind_the_purged_log_catches_up_from_a_snapshot() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let tuning = RaftTuning {
        snapshot_every: 8,
        keep_after_snapshot: 0,
    };
    let net = Net::with(tmp.path(), 1, 3, 3, tuning);
    let mut vs = net.start_converged(3).await;
    let dept = &net.departments[0];
    let client = net.client(dept);
    commit(&client, &register(&net.key(), dept, 1)).await;
    let follower = a_follower(&vs);
    let behind = vs[follower]
        .as_ref()
        .unwrap()
        .ledger
        .raft_metrics()
        .last_applied
        .map_or(0, |l| l.index);
    stop(vs[follower].take().unwrap()).await;

    // One block per registration: many log entries, snapshots, and the log purged.
    const DOCS: u64 = 40;
    for nonce in 2..=DOCS {
        commit(&client, &register(&net.key(), dept, nonce)).await;
    }
    {
        let live: Vec<&Validator> = vs.iter().flatten().collect();
        until(
            "the leader purged its log past the stopped follower",
            || {
                leader_of(&live).is_some_and(|l| {
                    l.ledger
                        .raft_metrics()
                        .purged
                        .is_some_and(|p| p.index > behind)
                })
            },
        )
        .await;
    }

    vs[follower] = Some(net.start(follower).await);
    let all: Vec<&Validator> = vs.iter().flatten().collect();
    let (height, root) = converged(&all).await;
    let back = vs[follower].as_ref().unwrap();
    assert!(
        back.ledger.snapshots_installed() >= 1,
        "the follower caught up from a snapshot"
    );
    let state = back.ledger.state();
    for nonce in 1..=DOCS {
        assert!(
            state
                .document(&registered_document(&register(&net.key(), dept, nonce)))
                .is_some()
        );
    }
    one_block_per_height(&all, height);

    // What the snapshot installed is on disk: a restart reopens (and re-verifies) it.
    stop(vs[follower].take().unwrap()).await;
    vs[follower] = Some(net.start(follower).await);
    let all: Vec<&Validator> = vs.iter().flatten().collect();
    assert_eq!(converged(&all).await, (height, root));
    client.close().await;
    stop_all(vs.into_iter().flatten()).await;
}

/// A validator that is behind (restarted while the others are away) answers queries
/// `Unavailable` rather than from its stale state, so a client never reads a nonce, a
/// layout or a document list older than what it saw; once it has caught up it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_behind_the_chain_does_not_answer_from_stale_state() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::new(tmp.path(), 1);
    let mut vs = net.start_converged(3).await;
    let lagging = a_follower(&vs);
    stop(vs[lagging].take().unwrap()).await;
    let dept = &net.departments[0];
    let client = net.client(dept);
    for nonce in 1..=5 {
        commit(&client, &register(&net.key(), dept, nonce)).await;
    }
    client.close().await;
    futures::future::join_all(vs.iter_mut().filter_map(Option::take).map(stop)).await;

    // Restarted alone, it has nobody to catch up from.
    let behind = net.start(lagging).await;
    assert_eq!(behind.ledger.account(&dept.public()).unwrap().nonce, 0);
    let mut link = net.link();
    link.hosts = vec![link.hosts[lagging].clone()];
    // Listing every document is for nodes and operators: a node's key asks for that.
    let client_of = |who: &Identity| {
        let options = ClientOptions {
            request_timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        };
        net.client_on(who, link.clone(), options)
    };
    let only = client_of(dept);
    let node = client_of(&net.nodes[0]);
    let err = only
        .chain()
        .unwrap()
        .account(&dept.public())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("behind"), "{err}");
    let err = node
        .chain()
        .unwrap()
        .documents(None, 100)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("behind"), "{err}");

    // With the others back it catches up, and then answers the current state.
    let mut vs = vec![behind];
    for i in (0..3).filter(|&i| i != lagging) {
        vs.push(net.start(i).await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match only.chain().unwrap().account(&dept.public()).await {
            Ok(Some(account)) => {
                assert_eq!(account.nonce, 5, "an answer from stale state");
                break;
            }
            other => {
                assert!(Instant::now() < deadline, "never answered: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(
        node.chain()
            .unwrap()
            .documents(None, 100)
            .await
            .unwrap()
            .len(),
        5
    );
    only.close().await;
    node.close().await;
    futures::future::join_all(vs.into_iter().map(stop)).await;
}

/// Removing the validator that is the raft leader: it drops itself from the voters, the
/// other two elect a leader among themselves and go on, and later blocks are final for the
/// two that are left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_can_be_removed_through_the_chain() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::new(tmp.path(), 1);
    let vs = net.start_converged(3).await;
    let vs: Vec<Validator> = vs.into_iter().flatten().collect();
    let dept = &net.departments[0];
    let client = net.client(dept);
    let mut nonce = 0;
    register_more(&client, dept, &mut nonce, 3).await;
    let all: Vec<&Validator> = vs.iter().collect();
    let leader = leader_of(&all).unwrap().ledger.node_id();
    let removed = net.validator_of(leader).unwrap();
    // Another validator signs the removal.
    let admin = &net.validators[(removed + 1) % 3];
    let remove = approved(
        &net.key(),
        &[admin, &net.validators[(removed + 2) % 3]],
        1,
        TxBody::RemoveValidator {
            validator: net.validators[removed].public(),
            approvals: vec![],
        },
    );
    let removed_at = commit(&client, &remove).await;
    let left: Vec<&Validator> = (0..3).filter(|&i| i != removed).map(|i| &vs[i]).collect();
    until("the two left lead themselves", || {
        leader_of(&left)
            .is_some_and(|l| l.ledger.node_id() != leader && l.ledger.raft_voters().len() == 2)
    })
    .await;
    register_more(&client, dept, &mut nonce, 3).await;
    let (height, _) = converged(&left).await;
    assert!(height > removed_at);
    one_block_per_height(&left, height);
    let set: Vec<PublicId> = (0..3)
        .filter(|&i| i != removed)
        .map(|i| net.validators[i].public())
        .collect();
    for h in removed_at + 1..=height {
        left[0]
            .ledger
            .block(h)
            .unwrap()
            .unwrap()
            .header
            .verify_final(&set)
            .unwrap_or_else(|e| panic!("block {h}: {e}"));
    }
    for v in &left {
        assert_eq!(v.ledger.state().document_count() as u64, nonce);
    }
    client.close().await;
    futures::future::join_all(vs.into_iter().map(stop)).await;
}

/// A UDP relay in front of a peer that can go silent: it then drops every datagram both
/// ways, as a host whose process was killed does (and the goodbye of a process stopped
/// meanwhile never arrives).
struct Relay {
    addr: SocketAddr,
    silent: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(target: SocketAddr) -> Relay {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let quiet = silent.clone();
        let task = tokio::spawn(async move {
            let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
            let mut client = None;
            let drop_all = || quiet.load(std::sync::atomic::Ordering::SeqCst);
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut a) => {
                        client = Some(from);
                        if !drop_all() {
                            let _ = back.send_to(&a[..n], target).await;
                        }
                    }
                    Ok((n, _)) = back.recv_from(&mut b) => {
                        if let (false, Some(c)) = (drop_all(), client) {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        Relay { addr, silent, task }
    }

    fn set_silent(&self, silent: bool) {
        self.silent
            .store(silent, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A validator host whose process dies and comes back on the same port leaves the client's
/// pooled connection looking open (nothing says goodbye, and the new process cannot reset
/// it): the client takes it for dead once it has heard nothing for a second, dials again,
/// and its submission commits, well before QUIC's 30 s idle timeout would have closed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_redials_a_validator_host_whose_process_was_replaced() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::with(tmp.path(), 1, 1, 1, RaftTuning::default());
    let v = net.start(0).await;
    converged(&[&v]).await;
    let relay = Relay::to(net.addrs[0]).await;
    let mut link = net.link();
    link.hosts[0].addr = relay.addr.to_string();
    let dept = &net.departments[0];
    let options = ClientOptions {
        // Shorter than the idle timeout: waiting on the dead connection fails the test.
        request_timeout: Duration::from_secs(20),
        down_for: Duration::from_millis(200),
        ..ClientOptions::default()
    };
    let client = net.client_on(dept, link, options);
    commit(&client, &register(&net.key(), dept, 1)).await;

    relay.set_silent(true);
    stop(v).await;
    let v = net.start(0).await;
    converged(&[&v]).await;
    relay.set_silent(false);
    let (height, _) = client
        .chain()
        .unwrap()
        .submit_tx(&register(&net.key(), dept, 2))
        .await
        .unwrap();
    assert_eq!(height, v.ledger.status().height);
    client.close().await;
    relay.task.abort();
    stop(v).await;
}

/// A validator host's peer whose own ledger is behind the chain authorises by asking the
/// other validators (issue 4). First the fourth host, configured everywhere but not (yet) a
/// validator on chain, so its ledger stays at genesis and is never current: a document
/// registered and granted since is served to its grantee (as the owner's store of it was
/// allowed), and a reader without a grant is still refused. Then a genesis validator
/// stopped while a document is registered and granted, and restarted: its peer serves the
/// grantee before its ledger has caught up. Last, with the other validators gone, the
/// fourth host serves nothing and answers `Unavailable`, not `Refused`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_host_behind_the_chain_authorises_reads_by_the_others() {
    use bytes::Bytes;
    use dangan::crypto::DataKey;
    use dangan::grant::GrantAddress;
    use dangan::proto::ErrorCode;

    logs();
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::with(tmp.path(), 1, 4, 3, RaftTuning::default());
    let mut vs = net.start_converged(3).await;
    let behind = net.start(3).await;
    behind
        .peer
        .access()
        .link(&net.nodes[3], net.link(), "127.0.0.1:0".parse().unwrap())
        .unwrap();
    let reader = Identity::generate(Role::Citizen);
    let stranger = Identity::generate(Role::Citizen);
    net.membership.add(reader.public());
    net.membership.add(stranger.public());

    let owner = &net.departments[0];
    let client = net.client(owner);
    let manifest = Bytes::from_static(b"the manifest of a document registered after genesis");
    let id = DocumentId::of(&manifest);
    client
        .chain()
        .unwrap()
        .submit(TxBody::RegisterDocument { document: id })
        .await
        .unwrap();
    client
        .grant(
            id,
            &DataKey::generate(),
            &GrantAddress::of(&reader).unwrap(),
            None,
        )
        .await
        .unwrap();
    assert!(!behind.ledger.is_current(), "the fourth host's ledger lags");
    assert!(
        behind.ledger.record(&id).is_none(),
        "its own ledger does not know the document"
    );

    let host = net.hosts()[3].clone();
    let start = Instant::now();
    client
        .net()
        .manifest_put(&host, &id, &manifest)
        .await
        .unwrap();
    let as_reader = net.client(&reader);
    assert_eq!(
        as_reader.net().manifest_get(&host, &id).await.unwrap(),
        Some(manifest.clone()),
        "the grantee is served"
    );
    println!(
        "stored and read through the other validators in {:?}",
        start.elapsed()
    );
    let as_stranger = net.client(&stranger);
    let code = |e: dangan::net::NetError| match e.remote_code() {
        Some(code) => code,
        None => panic!("not a peer's answer: {e}"),
    };
    let refused = as_stranger
        .net()
        .manifest_get(&host, &id)
        .await
        .unwrap_err();
    assert_eq!(code(refused), ErrorCode::Refused, "no grant, no manifest");

    // A genesis validator stopped while the chain moves on, then restarted: until its
    // ledger has caught up its peer asks the others, so a grant made meanwhile counts at
    // once. Its answer may be `Unavailable` while the others elect (a reader asks again),
    // never `Refused`.
    let follower = a_follower(&vs);
    stop(vs[follower].take().unwrap()).await;
    let later = Bytes::from_static(b"the manifest of a document registered while a host was down");
    let later_id = DocumentId::of(&later);
    client
        .chain()
        .unwrap()
        .submit(TxBody::RegisterDocument { document: later_id })
        .await
        .unwrap();
    client
        .grant(
            later_id,
            &DataKey::generate(),
            &GrantAddress::of(&reader).unwrap(),
            None,
        )
        .await
        .unwrap();
    let restarted = net.start(follower).await;
    restarted
        .peer
        .access()
        .link(
            &net.nodes[follower],
            net.link(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
    let lagged = !restarted.ledger.is_current();
    let start = Instant::now();
    let at = net.hosts()[follower].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        let done = match client.net().manifest_put(&at, &later_id, &later).await {
            Ok(_) => as_reader.net().manifest_get(&at, &later_id).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(served) => break served,
            // The client's pooled connection to the stopped process fails first.
            Err(e) => {
                let why = e.to_string();
                assert!(!why.contains("(Refused)"), "refused: {why}");
                assert!(Instant::now() < deadline, "still not served: {why}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        served,
        Some(later),
        "the grantee is served by the restarted host"
    );
    println!(
        "a restarted host (its ledger lagging at first: {lagged}) served the grantee in {:?}",
        start.elapsed()
    );
    vs[follower] = Some(restarted);

    // With the other validators gone, it cannot check: nothing is served, and the answer
    // says to ask again, not that the reader may not read.
    futures::future::join_all(vs.iter_mut().filter_map(Option::take).map(stop)).await;
    tokio::time::sleep(dangan::access::ACCESS_TTL + Duration::from_millis(200)).await;
    let started = Instant::now();
    let err = as_reader.net().manifest_get(&host, &id).await.unwrap_err();
    assert!(
        err.to_string().contains("behind") || err.to_string().contains("within"),
        "a clear reason: {err}"
    );
    assert_eq!(code(err), ErrorCode::Unavailable);
    assert!(
        started.elapsed() < dangan::peer::AUTHORISE_TIMEOUT + Duration::from_secs(1),
        "answered within the authorisation time limit: {:?}",
        started.elapsed()
    );
    for c in [client, as_reader, as_stranger] {
        c.close().await;
    }
    stop(behind).await;
}

/// Governance needs a majority: one validator alone can neither seat a new validator, nor
/// remove one, nor move another's host, and a key whose raft node id is a sitting
/// validator's is refused even with a majority; with approvals of a majority each change
/// commits and raft follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_validator_alone_cannot_seat_remove_or_move_another_and_a_majority_can() {
    logs();
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::with(tmp.path(), 1, 4, 3, RaftTuning::default());
    let mut vs = net.start_converged(3).await;
    let dept = &net.departments[0];
    let client = net.client(dept);
    let chain = client.chain().unwrap();
    assert_eq!(chain.chain_key().await.unwrap(), net.key());
    let (admin, other, third) = (&net.validators[0], &net.validators[1], &net.validators[2]);
    let newcomer = net.validators[3].public();
    let host = (net.nodes[3].public(), net.addrs[3].to_string());
    let seat = TxBody::AddValidator {
        validator: newcomer,
        host: Some(host.clone()),
        approvals: vec![],
    };
    let remove = |v: &Identity| TxBody::RemoveValidator {
        validator: v.public(),
        approvals: vec![],
    };
    let move_other = TxBody::SetValidatorHost {
        validator: other.public(),
        host: net.nodes[3].public(),
        addr: net.addrs[3].to_string(),
        approvals: vec![],
    };
    let first = &vs[0].as_ref().unwrap().ledger;
    first.sealed(Duration::from_secs(10)).await.unwrap();
    let (height, root) = (first.status().height, first.status().state_root);
    // Alone: each refused for want of a majority, and nothing changes.
    for (what, t) in [
        ("seat", approved(&net.key(), &[admin], 1, seat.clone())),
        ("remove", approved(&net.key(), &[admin], 1, remove(other))),
        ("move", tx(&net.key(), admin, 1, move_other.clone())),
    ] {
        let err = chain.submit_tx(&t).await.unwrap_err();
        assert!(err.to_string().contains("majority"), "{what}: {err}");
    }
    // A key with a sitting validator's raft node id: refused even with a majority.
    let mut twin = other.public().to_bytes();
    let twin = (0u8..=255)
        .find_map(|b| {
            twin[31] = b;
            PublicId::from_bytes(twin)
                .ok()
                .filter(|k| *k != other.public())
        })
        .unwrap();
    assert_eq!(node_id(&twin), node_id(&other.public()));
    let collide = TxBody::AddValidator {
        validator: twin,
        host: Some(host.clone()),
        approvals: vec![],
    };
    let err = chain
        .submit_tx(&approved(&net.key(), &[admin, third], 1, collide))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("raft node id"), "{err}");
    let status = vs[0].as_ref().unwrap().ledger.status();
    assert_eq!((status.height, status.state_root), (height, root));

    // With a majority: seated, and raft takes it in once it runs.
    let seated_at = commit(&client, &approved(&net.key(), &[admin, other], 1, seat)).await;
    vs.push(Some(net.start(3).await));
    {
        let all: Vec<&Validator> = vs.iter().flatten().collect();
        until("the newcomer is a raft voter", || {
            leader_of(&all).is_some_and(|l| l.ledger.raft_voters().len() == 4)
        })
        .await;
        converged(&all).await;
    }
    // The client proves the new set from the approved change.
    let history = chain.prove_validators().await.unwrap();
    assert!(history.at(seated_at + 1).contains(&newcomer));
    // Four validators: moving another's host takes three approvals.
    let two = approved(&net.key(), &[admin, third], 2, move_other.clone());
    let err = chain.submit_tx(&two).await.unwrap_err();
    assert!(err.to_string().contains("majority"), "{err}");
    let stay = TxBody::SetValidatorHost {
        validator: other.public(),
        host: net.nodes[1].public(),
        addr: net.addrs[1].to_string(),
        approvals: vec![],
    };
    let three = [admin, third, &net.validators[3]];
    commit(&client, &approved(&net.key(), &three, 2, stay)).await;
    // And removing one takes three too.
    let removed_at = commit(
        &client,
        &approved(&net.key(), &three, 3, remove(&net.validators[3])),
    )
    .await;
    // The removed validator gets no more blocks: stopped, the three others go on.
    stop(vs[3].take().unwrap()).await;
    let live: Vec<&Validator> = vs.iter().flatten().collect();
    until("the removed validator left the raft voters", || {
        leader_of(&live).is_some_and(|l| l.ledger.raft_voters().len() == 3)
    })
    .await;
    let mut nonce = 0;
    register_more(&client, dept, &mut nonce, 2).await;
    let (height, _) = converged(&live).await;
    assert!(height > removed_at);
    one_block_per_height(&live, height);
    let state = live[0].ledger.state();
    assert!(!state.validators().contains(&newcomer));
    assert_eq!(state.retired_nonce(&newcomer), Some(0));
    assert_eq!(
        state.validator_hosts()[&other.public()].addr,
        net.addrs[1].to_string()
    );
    client.close().await;
    stop_all(vs.into_iter().flatten()).await;
}

/// Asks validator `to` of `net` to endorse `block`, as the peer hosting validator `from`
/// (real QUIC, the validators' own request).
async fn ask_endorsement(
    net: &Net,
    from: usize,
    to: usize,
    block: &dangan::chain::block::Block,
) -> dangan::chain::ledger::Endorsement {
    let trust = Membership::new();
    trust.replace(net.nodes.iter().map(|n| n.public()));
    let link = dangan::net::Net::new(
        &net.nodes[from],
        Arc::new(trust),
        dangan::net::NetOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    let body = bytes::Bytes::from(postcard::to_allocvec(block).unwrap());
    let req = dangan::proto::Request::Endorse {
        len: body.len() as u64,
    };
    let answer = link
        .fetch(
            &net.hosts()[to],
            &req,
            Some(&body),
            dangan::proto::MAX_CHAIN_BODY,
        )
        .await
        .unwrap()
        .expect("an endorsement answer");
    link.close().await;
    postcard::from_bytes(&answer).unwrap()
}

/// A validator (here: the test, holding its key and its host's key) proposes two different
/// blocks at one height to the two other validators over QUIC: they endorse the first, and
/// refuse the second, also after a restart, naming the block they signed; so the second
/// never becomes final. A block whose proposer signature is forged is refused. The chain
/// then goes on with the first block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_proposer_never_gets_two_final_blocks_at_one_height() {
    use dangan::chain::block::Block;
    use dangan::chain::ledger::Endorsement;

    logs();
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::new(tmp.path(), 1);
    let mut vs = net.start_converged(3).await;
    let dept = &net.departments[0];
    let client = net.client(dept);
    commit(&client, &register(&net.key(), dept, 1)).await;
    let (tip, _) = converged(&vs.iter().flatten().collect::<Vec<_>>()).await;
    let (p, endorsers) = (0, [1, 2]);
    let attacker = &net.validators[p];
    let ledger = &vs[p].as_ref().unwrap().ledger;
    let prev = ledger.block(tip).unwrap().unwrap().header.header;
    let state = ledger.state();
    let validators: Vec<PublicId> = state.validators().iter().copied().collect();
    let next = register(&net.key(), dept, 2);
    let other = tx(
        &net.key(),
        dept,
        2,
        TxBody::RegisterDocument {
            document: DocumentId::of(b"another document at the same nonce"),
        },
    );
    let propose = |t: SignedTx| {
        let mut s = state.clone();
        Block::propose(&mut s, &prev, vec![t], attacker, 1_700_000_000_000).0
    };
    let (mut x, y) = (propose(next.clone()), propose(other));
    assert_ne!(x.header.header.hash(), y.header.header.hash());

    // A forged proposer signature: refused before anything else.
    let mut forged = x.clone();
    forged.header.signatures = vec![(attacker.public(), forged.header.signatures[0].1)];
    forged.header.header.time_ms += 1;
    for &e in &endorsers {
        match ask_endorsement(&net, p, e, &forged).await {
            Endorsement::Refused(why) => assert!(why.contains("signature"), "{why}"),
            other => panic!("a forged proposer signature was endorsed: {other:?}"),
        }
    }
    // The first block: both endorse it, and it is final.
    for &e in &endorsers {
        match ask_endorsement(&net, p, e, &x).await {
            Endorsement::Signed(who, sig) => x.header.signatures.push((who, sig)),
            other => panic!("the first block was not endorsed: {other:?}"),
        }
    }
    x.header.verify_final(&validators).unwrap();
    // The second block at the same height: refused, naming the first; and again after
    // both endorsers restart from disk.
    for round in ["before", "after"] {
        if round == "after" {
            for &e in &endorsers {
                stop(vs[e].take().unwrap()).await;
            }
            for &e in &endorsers {
                vs[e] = Some(net.start(e).await);
            }
            converged(&vs.iter().flatten().collect::<Vec<_>>()).await;
        }
        for &e in &endorsers {
            match ask_endorsement(&net, p, e, &y).await {
                Endorsement::SignedOther(signed) => {
                    assert_eq!(signed.header.header, x.header.header, "{round} restart")
                }
                Endorsement::Signed(..) => {
                    panic!(
                        "{round} restart: a second block at height {} was endorsed",
                        tip + 1
                    )
                }
                Endorsement::Refused(why) => panic!("{round} restart: {why}"),
            }
        }
        assert!(matches!(
            y.header.verify_final(&validators),
            Err(BlockError::NotFinal { signed: 1, .. })
        ));
    }
    // The chain goes on: the next block at that height is the one the validators signed.
    commit(&client, &next).await;
    let all: Vec<&Validator> = vs.iter().flatten().collect();
    let (height, _) = converged(&all).await;
    one_block_per_height(&all, height);
    let at = all[0].ledger.block(tip + 1).unwrap().unwrap();
    assert_eq!(at.header.header, x.header.header);
    commit(&client, &register(&net.key(), dept, 3)).await;
    client.close().await;
    stop_all(vs.into_iter().flatten()).await;
}
