//! Fault injection on real processes in a real network: six `dangan node` peers (k + m =
//! 4 + 2, three zones), nodes 1–3 hosting the chain's three validators, each peer in a
//! Linux network namespace of its own, joined by a bridge; the test and the operator's
//! commands reach them through a veth of their own (`common::netns`: a private
//! 10.218.X.0/24, created per run, deleted when the test ends, even when it fails). Each
//! seeded round injects faults, puts and gets documents of mixed sizes (700 B to 5 MiB)
//! through the library client while the faults last, heals, lets `dangan scrub` (re-hash,
//! repair what is corrupt) and `dangan repair` deal with the damage, and checks the
//! invariants:
//! - every document whose put returned is readable and byte-identical;
//! - every registered document has at least k (and, after the repair, all k + m) verified
//!   shards per stripe on the peers the chain's layout places them on;
//! - no two validators disagree on any committed block (block hashes compared per height,
//!   each validator asked on its own), and all reach the same height.
//!
//! **Faults.** Odd rounds hit processes and files: a peer killed with SIGKILL and restarted
//! from the same data directory, cut off with SIGSTOP and later SIGCONT, a shard body file
//! corrupted, or a value of the `inline-v1` table of a killed peer's redb corrupted before
//! it restarts. Even rounds cut the network, as Jepsen's nemeses do: two peers partitioned
//! from the rest (the client on the majority's side), the raft leader isolated from
//! everyone, a validator partitioned from the other validators (clients and peers still
//! reach it), one-way loss (all a peer sends lost, or all sent to it), a congested link
//! (`tc tbf`: slow, queueing, dropping; this kernel has no `netem`). A cut is silent, as
//! in a real partition: packets vanish, nobody is told.
//!
//! **Fault budget per round:** at most m = 2 distinct peers are faulty, so every stripe
//! keeps k shards whatever the faults hit; at most one of them hosts a validator (a
//! minority of three). A layout change (a spare peer added, or a peer drained and removed;
//! `rebalance` after each step) is made every third round after the faults are healed.
//!
//! If the namespaces cannot be created (not root, no `ip`), the test fails and says so.
//!
//! `DANGAN_FAULT_SEED` (decimal or 0x-hex) replays a run, `DANGAN_FAULT_ROUNDS` sets the
//! number of rounds, `DANGAN_FAULT_KEEP=1` keeps the temporary directory. On failure the
//! seed, the round and its faults are printed and the temporary directory (configs, data,
//! every process's logs) is kept.
//!
//! The short form (two rounds: one of process faults, one network partition) runs in
//! `cargo test`; the soak is `cargo test --release --test it -- --ignored soak` (see
//! `docs/faults.md`).

use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::cli::Cli;
use crate::common::netns::{Host, Lab};
use crate::common::process::ProcessCluster;
use dangan::chain::client::ChainLink;
use dangan::client::{Client, ClientOptions, stripe_key};
use dangan::config::{Cluster, ClusterFile};
use dangan::crypto::DataKey;
use dangan::id::DocumentId;
use dangan::identity::{Identity, PublicId, Role};
use dangan::proto::{Request, Response};
use dangan::tls::Membership;

const PEERS: usize = 6;
const VALIDATORS: usize = 3;
const K: usize = 4;
const M: usize = 2;
/// Documents put per round while the faults last.
const PUTS: usize = 3;
/// Sizes a document is drawn from: certificates (shards inline in redb) to multi-stripe.
const SIZES: [usize; 7] = [
    700,
    6 << 10,
    50 << 10,
    200 << 10,
    1 << 20,
    (5 << 20) / 2,
    5 << 20,
];
/// Longest a restarted or cut-off validator may take to catch up with the others.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);
/// Longest the scrub / rebalance commands may take.
const OPS_LIMIT: Duration = Duration::from_secs(180);
/// The port spare peers listen on (each in a namespace of its own).
const SPARE_PORT: u16 = 7400;

/// splitmix64: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, restarted from its data directory after the round's puts and gets.
    Kill(usize),
    /// SIGSTOP (its traffic goes unanswered), SIGCONT after the round's puts and gets.
    CutOff(usize),
    /// One bit flipped in one shard body file while the peer runs.
    CorruptBody(usize),
    /// Killed, one bit flipped in one inline shard value in its redb, restarted.
    CorruptInline(usize),
    /// A network partition: the two peers (at most one hosting a validator) and the rest of
    /// the cluster with the client on the other side; the two still reach each other.
    Minority(usize, usize),
    /// The raft leader's node (found when the fault starts) cut off from every other node
    /// and from the client, both ways.
    IsolateLeader,
    /// A validator's host cut off from the other validators' hosts, both ways; the client
    /// and the storage peers still reach it (and it them).
    SplitValidator(usize),
    /// Everything the peer sends is lost; it hears everyone (one-way loss).
    Mute(usize),
    /// Nothing sent to the peer arrives; what it sends does (one-way loss).
    Deaf(usize),
    /// A slow, lossy link both ways (`tc tbf`: 8 Mbit/s, packets queued up to 200 ms,
    /// the overflow dropped).
    Congest(usize),
}

impl Fault {
    /// The peers it makes faulty, as far as the plan knows ([`Fault::IsolateLeader`]'s is
    /// found when it starts: a validator host).
    fn peers(self) -> Vec<usize> {
        match self {
            Fault::Kill(p)
            | Fault::CutOff(p)
            | Fault::CorruptBody(p)
            | Fault::CorruptInline(p)
            | Fault::SplitValidator(p)
            | Fault::Mute(p)
            | Fault::Deaf(p)
            | Fault::Congest(p) => vec![p],
            Fault::Minority(a, b) => vec![a, b],
            Fault::IsolateLeader => Vec::new(),
        }
    }

    /// How many validator hosts it makes faulty.
    fn validator_hosts(self) -> usize {
        match self {
            Fault::IsolateLeader => 1,
            f => f.peers().iter().filter(|&&p| p <= VALIDATORS).count(),
        }
    }

    /// Made in the network (healed by [`Lab::heal`]), not to a process or its files.
    fn is_network(self) -> bool {
        !matches!(
            self,
            Fault::Kill(_) | Fault::CutOff(_) | Fault::CorruptBody(_) | Fault::CorruptInline(_)
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(p) => write!(f, "kill -9 peer {p}"),
            Fault::CutOff(p) => write!(f, "SIGSTOP peer {p}"),
            Fault::CorruptBody(p) => write!(f, "corrupt a body file on peer {p}"),
            Fault::CorruptInline(p) => write!(f, "corrupt an inline shard in peer {p}'s redb"),
            Fault::Minority(a, b) => write!(f, "partition peers {a} and {b} from the rest"),
            Fault::IsolateLeader => write!(f, "isolate the raft leader's node"),
            Fault::SplitValidator(p) => {
                write!(f, "partition validator host {p} from the other validators")
            }
            Fault::Mute(p) => write!(f, "lose everything peer {p} sends"),
            Fault::Deaf(p) => write!(f, "lose everything sent to peer {p}"),
            Fault::Congest(p) => write!(f, "congest peer {p}'s link"),
        }
    }
}

/// A document whose put returned: its bytes are `common::data(len, seed)`.
struct Doc {
    id: DocumentId,
    key: DataKey,
    len: usize,
    seed: u64,
}

struct Harness {
    rng: Rng,
    cluster: ProcessCluster,
    rt: tokio::runtime::Runtime,
    department: Identity,
    operator: Identity,
    /// The operator's `dangan` commands (scrub, repair, cluster changes).
    operator_cli: Cli,
    /// Public id of node i at `ids[i - 1]` (peers, then spares).
    ids: Vec<PublicId>,
    /// Nodes placed by the current layout (weight > 0).
    active: Vec<usize>,
    /// Spare nodes not yet added (in trust, not in the layout).
    spares: Vec<usize>,
    docs: Vec<Doc>,
    /// Heights up to this one were compared across validators already.
    compared: u64,
    /// What the harness is doing, for the failure message.
    doing: String,
    /// The test's address in the namespaces' network: its clients bind here.
    client_addr: Ipv4Addr,
}

/// `DANGAN_FAULT_SEED`, else `default`, else a random seed.
fn seed_from_env(default: Option<u64>) -> u64 {
    match std::env::var("DANGAN_FAULT_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("DANGAN_FAULT_SEED={s} is not a number"))
        }
        Err(_) => default.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_nanos() as u64 ^ u64::from(std::process::id())
        }),
    }
}

fn rounds_from_env(default: usize) -> usize {
    std::env::var("DANGAN_FAULT_ROUNDS")
        .ok()
        .map(|s| s.trim().parse().expect("DANGAN_FAULT_ROUNDS is a number"))
        .unwrap_or(default)
}

/// After `local-config`: each node listens on its namespace's address in `lab` (in the
/// cluster file, the genesis and its own file), write quorum k + 1 (so puts go on with one
/// peer down), and `spares` more peers (keys, `nodeN.toml`) that every peer trusts as
/// clients but the layout does not place yet, for `cluster add`.
fn prepare(dir: &Path, spares: usize, addrs: &[Ipv4Addr]) {
    let cluster = dir.join("cluster.toml");
    let genesis = dir.join("genesis.toml");
    let mut text = fs::read_to_string(&cluster).unwrap();
    let mut genesis_text = fs::read_to_string(&genesis).unwrap();
    for (i, addr) in addrs.iter().enumerate().take(PEERS) {
        let node = dir.join(format!("node{}.toml", i + 1));
        let node_text = fs::read_to_string(&node).unwrap();
        let listen = node_text
            .lines()
            .find_map(|l| l.strip_prefix("listen = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("a listen line");
        let port = listen
            .strip_prefix("127.0.0.1:")
            .expect("local-config's address");
        let (old, new) = (format!("\"{listen}\""), format!("\"{addr}:{port}\""));
        assert!(
            text.contains(&old) && genesis_text.contains(&old),
            "{old} not found"
        );
        text = text.replace(&old, &new);
        genesis_text = genesis_text.replace(&old, &new);
        fs::write(&node, node_text.replace(&old, &new)).unwrap();
    }
    fs::write(&genesis, genesis_text).unwrap();
    text = text.replacen(
        "shard_kib = 1024\n",
        &format!("shard_kib = 1024\nwrite_quorum = {}\n", K + 1),
        1,
    );
    assert!(text.contains("write_quorum"), "no [coding] section to edit");
    for s in 1..=spares {
        let n = PEERS + s;
        let key = Identity::generate(Role::Node);
        key.save(dir.join(format!("keys/peer{n}.key"))).unwrap();
        let addr = addrs[n - 1];
        fs::write(
            dir.join(format!("node{n}.toml")),
            format!(
                "listen = \"{addr}:{SPARE_PORT}\"\ndata_dir = \"data/peer{n}\"\nkey = \"keys/peer{n}.key\"\ncluster = \"cluster.toml\"\n"
            ),
        )
        .unwrap();
        text.push_str(&format!(
            "\n[[client]]\nid = \"{}\"\nname = \"spare peer {n}\"\n",
            key.public()
        ));
    }
    fs::write(&cluster, text).unwrap();
}

impl Harness {
    fn start(root: &Path, seed: u64, spares: usize) -> Harness {
        let lab = Lab::create(PEERS + spares).unwrap_or_else(|e| {
            panic!(
                "the fault test runs its peers in network namespaces of its own and could not \
                 create them (it needs root, `ip` and `tc` from iproute2): {e}"
            )
        });
        let addrs: Vec<Ipv4Addr> = (1..=PEERS + spares).map(|i| lab.node_addr(i)).collect();
        let client_addr = lab.client_addr();
        println!(
            "network: node 1 at {}, node i at .i, the client at {client_addr}",
            lab.node_addr(1)
        );
        let cluster = ProcessCluster::start_in(root, PEERS, VALIDATORS, Some(lab), |dir| {
            prepare(dir, spares, &addrs)
        });
        let ids = (1..=PEERS + spares)
            .map(|i| {
                Identity::load(cluster.path(&format!("keys/peer{i}.key")))
                    .unwrap()
                    .public()
            })
            .collect();
        let operator_cli = Cli::new(
            &cluster,
            &cluster.path("keys/operator.key"),
            &cluster.path("operator-keyring"),
        )
        .with_data_dir(cluster.path("operator"));
        Harness {
            rng: Rng(seed),
            department: Identity::load(cluster.path("keys/department.key")).unwrap(),
            operator: Identity::load(cluster.path("keys/operator.key")).unwrap(),
            operator_cli,
            cluster,
            rt: tokio::runtime::Runtime::new().unwrap(),
            ids,
            active: (1..=PEERS).collect(),
            spares: (PEERS + 1..=PEERS + spares).collect(),
            docs: Vec::new(),
            compared: 0,
            doing: "starting".into(),
            client_addr,
        }
    }

    fn lab(&mut self) -> &mut Lab {
        self.cluster
            .lab
            .as_mut()
            .expect("the peers run in namespaces")
    }

    fn file(&self) -> Cluster {
        ClusterFile::load(&self.cluster.path("cluster.toml")).unwrap()
    }

    fn options(&self, file: &Cluster, chain: Option<ChainLink>) -> ClientOptions {
        ClientOptions {
            bind: SocketAddr::from((self.client_addr, 0)),
            params: file.params,
            write_quorum: file.write_quorum,
            chain,
            connect_timeout: Duration::from_secs(1),
            // Short, so a request stuck on a stale connection (see docs/faults.md) costs little.
            request_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        }
    }

    /// A client of `identity` placing by the chain's layout (as `dangan put|get` make one).
    fn client(&self, identity: &Identity) -> Client {
        let file = self.file();
        let membership = Membership::new();
        membership.replace(file.members.iter().copied());
        let options = self.options(&file, file.chain.clone());
        self.rt
            .block_on(Client::with_chain_layout(
                identity,
                Arc::new(membership),
                file.layout,
                options,
            ))
            .expect("client")
    }

    /// `dangan ARGS` with the operator's arguments; must succeed.
    fn operator_command(&self, args: &[&str], name: &str) -> String {
        self.operator_cli
            .run_within(args, name, OPS_LIMIT)
            .expect_ok(name)
            .stdout
    }

    fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(p) => self.cluster.kill(p),
            Fault::CutOff(p) => self.cluster.node(p).pause(),
            Fault::CorruptBody(p) => {
                let dir = self
                    .cluster
                    .path(&format!("data/peer{p}"))
                    .join(dangan::store::BODY_DIR);
                let mut files: Vec<PathBuf> = fs::read_dir(&dir)
                    .map(|d| {
                        d.map(|e| e.unwrap().path())
                            .filter(|p| p.is_file())
                            .collect()
                    })
                    .unwrap_or_default();
                files.sort();
                if files.is_empty() {
                    println!("  (peer {p} has no body file yet: nothing corrupted)");
                    return;
                }
                let victim = files[self.rng.below(files.len())].clone();
                let mut body = fs::read(&victim).unwrap();
                let at = self.rng.below(body.len());
                body[at] ^= 1 << self.rng.below(8);
                fs::write(&victim, body).unwrap();
                println!("  flipped a bit at byte {at} of {}", victim.display());
            }
            Fault::CorruptInline(p) => {
                self.cluster.kill(p);
                let path = self.cluster.path(&format!("data/peer{p}/shards.redb"));
                let flipped = corrupt_inline(&path, &mut self.rng);
                println!("  {flipped}");
                self.cluster.restart(p);
            }
            Fault::Minority(a, b) => {
                let minority = [Host::Node(a), Host::Node(b)];
                let rest: Vec<Host> = self
                    .lab()
                    .others(Host::Node(a))
                    .into_iter()
                    .filter(|h| !minority.contains(h))
                    .collect();
                self.lab().partition(&minority, &rest);
            }
            Fault::IsolateLeader => {
                let leader = self.leader();
                println!("  the leader is on node {leader}");
                let others = self.lab().others(Host::Node(leader));
                self.lab().partition(&[Host::Node(leader)], &others);
            }
            Fault::SplitValidator(v) => {
                let others: Vec<Host> = (1..=VALIDATORS)
                    .filter(|&o| o != v)
                    .map(Host::Node)
                    .collect();
                self.lab().partition(&[Host::Node(v)], &others);
            }
            Fault::Mute(p) => {
                for h in self.lab().others(Host::Node(p)) {
                    self.lab().cut(Host::Node(p), h);
                }
            }
            Fault::Deaf(p) => {
                for h in self.lab().others(Host::Node(p)) {
                    self.lab().cut(h, Host::Node(p));
                }
            }
            Fault::Congest(p) => self.lab().congest(p),
        }
    }

    /// The node whose validator leads: the one the other validators' hosts send a
    /// transaction to (a follower names the leader before it reads the transaction).
    fn leader(&mut self) -> usize {
        self.doing = "finding the raft leader".into();
        let client = self.client(&self.department.clone());
        let hosts = self.file().chain.expect("the cluster has a chain").hosts;
        let garbage = bytes::Bytes::from_static(b"not a transaction");
        let req = Request::SubmitTx {
            len: garbage.len() as u64,
        };
        let deadline = Instant::now() + CATCH_UP_LIMIT;
        let leader = 'found: loop {
            for host in &hosts {
                if let Ok((Response::Leader(node), _)) =
                    self.rt
                        .block_on(client.net().exchange(host, &req, Some(&garbage)))
                    && let Some(i) = self.ids.iter().position(|id| *id == node.key)
                {
                    break 'found i + 1;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no validator named a leader within {CATCH_UP_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        self.rt.block_on(client.close());
        leader
    }

    fn heal(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(p) => self.cluster.restart(p),
            Fault::CutOff(p) => self.cluster.node(p).resume(),
            Fault::CorruptBody(_) | Fault::CorruptInline(_) => {}
            Fault::Minority(..)
            | Fault::IsolateLeader
            | Fault::SplitValidator(_)
            | Fault::Mute(_)
            | Fault::Deaf(_)
            | Fault::Congest(_) => self.lab().heal(),
        }
    }

    /// Puts `n` documents of random sizes; keeps the ones whose put returned.
    fn put_some(&mut self, n: usize, round: usize) {
        let client = self.client(&self.department.clone());
        for _ in 0..n {
            let len = self.rng.pick(&SIZES) + self.rng.below(4096);
            let seed = self.rng.next();
            let bytes = common::data(len, seed);
            let started = Instant::now();
            match self.rt.block_on(common::put(&client, &bytes)) {
                Ok(r) => {
                    println!(
                        "  put {len} B: {} ({:.2} s)",
                        r.id,
                        started.elapsed().as_secs_f64()
                    );
                    self.docs.push(Doc {
                        id: r.id,
                        key: r.key,
                        len,
                        seed,
                    });
                }
                Err(e) => println!(
                    "  put {len} B refused in round {round} ({:.2} s): {e}",
                    started.elapsed().as_secs_f64()
                ),
            }
        }
        self.rt.block_on(client.close());
    }

    /// Reads the documents at `which` back; each must be byte-identical.
    fn get_all(&mut self, which: &[usize], what: &str) {
        let client = self.client(&self.department.clone());
        for &i in which {
            let d = &self.docs[i];
            self.doing = format!("{what}: get {}", d.id);
            let (bytes, _) = self
                .rt
                .block_on(common::get(&client, &d.id, &d.key))
                .unwrap_or_else(|e| panic!("{what}: get of {} ({} B) failed: {e}", d.id, d.len));
            assert!(
                bytes == common::data(d.len, d.seed),
                "{what}: {} read back different bytes",
                d.id
            );
        }
        self.rt.block_on(client.close());
    }

    /// Every registered document: its manifest, and per stripe the verified shards on the
    /// peers the current layout places them on. Returns (documents, stripes, stripes below
    /// k + m); panics if a stripe has fewer than k.
    fn check_shards(&mut self) -> (usize, usize, usize) {
        self.doing = "listing registered documents".into();
        let client = self.client(&self.operator.clone());
        let mut registered = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .rt
                .block_on(client.chain().unwrap().documents(after, 256))
                .expect("listing registered documents");
            let Some(last) = page.last().copied() else {
                break;
            };
            registered.extend(page);
            after = Some(last);
        }
        for d in &self.docs {
            assert!(
                registered.contains(&d.id),
                "{} was put but is not registered",
                d.id
            );
        }
        let layout = client.layout().clone();
        let (mut stripes, mut below) = (0, 0);
        for id in &registered {
            self.doing = format!("checking the shards of {id}");
            let manifest = self
                .rt
                .block_on(client.manifest(id))
                .unwrap_or_else(|e| panic!("registered document {id} has no manifest: {e}"));
            for (s, ids) in manifest.stripes.iter().enumerate() {
                let placed = layout.place(&stripe_key(ids), ids.len()).unwrap();
                let mut good = 0;
                for (node, shard) in placed.iter().zip(ids) {
                    // shard_get verifies the bytes against the shard's id.
                    if let Ok(Some(_)) = self.rt.block_on(client.net().shard_get(node, shard)) {
                        good += 1;
                    }
                }
                assert!(
                    good >= K,
                    "document {id} stripe {s}: only {good} verified shards on its placed peers"
                );
                stripes += 1;
                below += usize::from(good < K + M);
            }
        }
        self.rt.block_on(client.close());
        (registered.len(), stripes, below)
    }

    /// Asks each validator on its own: all reach the same height within 60 s, and every
    /// block not compared yet has the same hash on all of them.
    fn check_validators(&mut self) -> u64 {
        let file = self.file();
        let link = file.chain.clone().expect("the cluster has a chain");
        let membership = Membership::new();
        membership.replace(file.members.iter().copied());
        let trust = Arc::new(membership);
        let _runtime = self.rt.enter();
        let clients: Vec<Client> = link
            .hosts
            .iter()
            .map(|host| {
                let one = ChainLink {
                    hosts: vec![host.clone()],
                    validators: link.validators.clone(),
                };
                Client::new(
                    &self.operator,
                    trust.clone(),
                    file.layout.clone(),
                    self.options(&file, Some(one)),
                )
                .expect("client")
            })
            .collect();
        let deadline = Instant::now() + CATCH_UP_LIMIT;
        let height = loop {
            let heights: Vec<Option<u64>> = clients
                .iter()
                .map(|c| {
                    self.rt
                        .block_on(c.chain().unwrap().status())
                        .ok()
                        .map(|s| s.height)
                })
                .collect();
            if let Some(Some(h)) = heights.first()
                && heights.iter().all(|x| *x == Some(*h))
            {
                break *h;
            }
            assert!(
                Instant::now() < deadline,
                "validators did not reach one height within {CATCH_UP_LIMIT:?}: {heights:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        for h in self.compared + 1..=height {
            self.doing = format!("comparing block {h} across validators");
            let hashes: Vec<[u8; 32]> = clients
                .iter()
                .map(|c| {
                    self.rt
                        .block_on(c.chain().unwrap().block(h))
                        .unwrap_or_else(|e| panic!("block {h}: {e}"))
                        .unwrap_or_else(|| panic!("a validator at height {height} lacks block {h}"))
                        .header
                        .header
                        .hash()
                })
                .collect();
            assert!(
                hashes.iter().all(|x| *x == hashes[0]),
                "validators disagree on block {h}"
            );
        }
        self.compared = height;
        for c in &clients {
            self.rt.block_on(c.close());
        }
        height
    }

    /// A spare joins (`cluster add`) when fewer than k + m + 1 peers are placed; otherwise
    /// a peer that hosts no validator is drained and removed. `rebalance` after each change.
    fn change_layout(&mut self, round: usize) {
        if self.active.len() <= K + M
            && let Some(spare) = self.spares.first().copied()
        {
            self.spares.remove(0);
            self.cluster.start_extra(spare);
            let addr = self
                .cluster
                .node(spare)
                .serving_line()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned();
            let id = self.ids[spare - 1].to_string();
            let zone = format!("zone-{}", self.rng.below(3));
            println!("  layout: add peer {spare} ({addr}, {zone}), rebalance");
            self.doing = format!("adding peer {spare}");
            self.operator_command(
                &["cluster", "add", &id, "--addr", &addr, "--zone", &zone],
                &format!("r{round}-cluster-add"),
            );
            let out = self.operator_command(&["rebalance"], &format!("r{round}-rebalance"));
            println!("  {}", out.lines().last().unwrap_or_default());
            self.active.push(spare);
        } else {
            let candidates: Vec<usize> = self
                .active
                .iter()
                .copied()
                .filter(|&p| p > VALIDATORS)
                .collect();
            let peer = self.rng.pick(&candidates);
            let id = self.ids[peer - 1].to_string();
            println!("  layout: drain peer {peer}, rebalance, remove it, rebalance");
            self.doing = format!("draining peer {peer}");
            self.operator_command(&["cluster", "drain", &id], &format!("r{round}-drain"));
            let out = self.operator_command(&["rebalance"], &format!("r{round}-rebalance1"));
            println!("  {}", out.lines().last().unwrap_or_default());
            self.doing = format!("removing peer {peer}");
            self.operator_command(&["cluster", "remove", &id], &format!("r{round}-remove"));
            let out = self.operator_command(&["rebalance"], &format!("r{round}-rebalance2"));
            println!("  {}", out.lines().last().unwrap_or_default());
            self.active.retain(|&p| p != peer);
            // It holds nothing now; it stays trusted but is not needed.
            self.cluster.kill(peer);
        }
    }

    fn round(&mut self, round: usize) {
        let started = Instant::now();
        let faults = plan(&mut self.rng, &self.active, round);
        let plan: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
        println!(
            "round {round}: faults [{}] (budget: {M} peers, 1 validator host)",
            plan.join(", ")
        );
        for &f in &faults {
            self.doing = format!("round {round}: injecting {f}");
            self.inject(f);
        }
        self.doing = format!("round {round}: puts under [{}]", plan.join(", "));
        let before = self.docs.len();
        self.put_some(PUTS, round);
        // Reads under the faults: the new documents and a few older ones.
        let mut which: Vec<usize> = (before..self.docs.len()).collect();
        for _ in 0..3.min(before) {
            which.push(self.rng.below(before));
        }
        self.get_all(
            &which,
            &format!("round {round} under [{}]", plan.join(", ")),
        );
        for &f in &faults {
            self.doing = format!("round {round}: healing {f}");
            self.heal(f);
        }
        println!(
            "  faults healed at {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // One more put with every peer back (a restarted peer takes its shards at once).
        self.doing = format!("round {round}: a put after healing");
        self.put_some(1, round);
        // The operator's workers list documents and layouts from whichever validator
        // answers first: wait until a validator that was down has caught up.
        self.doing = format!("round {round}: validators catching up");
        self.check_validators();
        if round % 3 == 2 {
            self.change_layout(round);
        }
        println!(
            "  validators caught up (and layout changed) at {:.1} s",
            started.elapsed().as_secs_f64()
        );
        self.doing = format!("round {round}: scrub");
        let out = self.operator_command(&["scrub"], &format!("r{round}-scrub"));
        for line in out
            .lines()
            .filter(|l| l.contains("scrub") || l.contains("repair"))
        {
            println!("  {line}");
        }
        // Scrub repairs only when it found corrupt copies; shards a peer missed while it was
        // down or cut off need a repair of their own.
        self.doing = format!("round {round}: repair");
        let out = self.operator_command(&["repair"], &format!("r{round}-repair"));
        println!("  {}", out.lines().last().unwrap_or_default());
        println!(
            "  scrubbed and repaired at {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let all: Vec<usize> = (0..self.docs.len()).collect();
        self.get_all(&all, &format!("round {round} after healing"));
        let (docs, stripes, below) = self.check_shards();
        assert_eq!(
            below, 0,
            "round {round}: {below} of {stripes} stripes below k + m after scrub and repair"
        );
        let height = self.check_validators();
        self.cluster.assert_no_panics();
        println!(
            "round {round} ok in {:.1} s: {docs} documents ({} put by this run), {stripes} stripes at k + m, \
             validators agree up to height {height}",
            started.elapsed().as_secs_f64(),
            self.docs.len()
        );
    }
}

/// Up to `M` faulty placed peers (`active`), at most one of them hosting a validator. Odd
/// rounds stop, kill and corrupt: one or two peers, kinds taken in turn (kill, cut off,
/// corrupt body, corrupt inline), so every kind comes up every four rounds. Even rounds cut
/// the network, in turn: a minority of two peers partitioned from the rest; the leader
/// isolated (alone); a validator partitioned from the others and one peer's link
/// congested; one peer congested and another mute or deaf.
fn plan(rng: &mut Rng, active: &[usize], round: usize) -> Vec<Fault> {
    if round.is_multiple_of(2) {
        return network_plan(rng, active, round / 2);
    }
    let turn = round.div_ceil(2);
    // Two faults a round (one every third of these rounds).
    let count = if turn.is_multiple_of(3) { 1 } else { 2 }.min(M);
    let mut faults: Vec<Fault> = Vec::new();
    let mut validators_hit = 0;
    while faults.len() < count {
        let peer = rng.pick(active);
        let hosts_validator = peer <= VALIDATORS;
        if faults.iter().any(|f| f.peers().contains(&peer))
            || (hosts_validator && validators_hit == (VALIDATORS - 1) / 2)
        {
            continue;
        }
        validators_hit += usize::from(hosts_validator);
        faults.push(match (2 * turn + faults.len()) % 4 {
            0 => Fault::Kill(peer),
            1 => Fault::CutOff(peer),
            2 => Fault::CorruptBody(peer),
            _ => Fault::CorruptInline(peer),
        });
    }
    faults
}

/// The `turn`th network round's faults (see [`plan`]).
fn network_plan(rng: &mut Rng, active: &[usize], turn: usize) -> Vec<Fault> {
    let storage: Vec<usize> = active.iter().copied().filter(|&p| p > VALIDATORS).collect();
    let validators: Vec<usize> = active
        .iter()
        .copied()
        .filter(|&p| p <= VALIDATORS)
        .collect();
    let one_way = |rng: &mut Rng, p| {
        if rng.below(2) == 0 {
            Fault::Mute(p)
        } else {
            Fault::Deaf(p)
        }
    };
    // Two distinct peers of `active`, at most one of them a validator host.
    let two = |rng: &mut Rng| loop {
        let (a, b) = (rng.pick(active), rng.pick(active));
        if a != b && (a > VALIDATORS || b > VALIDATORS) {
            break (a, b);
        }
    };
    match turn % 4 {
        1 => {
            let (a, b) = two(rng);
            vec![Fault::Minority(a.min(b), a.max(b))]
        }
        // Alone, so that puts go on (k + 1 placed peers reachable) and their registrations
        // must find the new leader.
        2 => vec![Fault::IsolateLeader],
        3 => vec![
            Fault::SplitValidator(rng.pick(&validators)),
            Fault::Congest(rng.pick(&storage)),
        ],
        _ => {
            let (a, b) = two(rng);
            vec![Fault::Congest(a), one_way(rng, b)]
        }
    }
}

/// Flips one bit of one value in the `inline-v1` table of a stopped peer's redb.
fn corrupt_inline(path: &Path, rng: &mut Rng) -> String {
    use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
    const INLINE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("inline-v1");
    let db = redb::Database::open(path).expect("opening the peer's redb");
    let keys: Vec<[u8; 32]> = {
        let read = db.begin_read().unwrap();
        match read.open_table(INLINE) {
            Ok(table) => table
                .iter()
                .unwrap()
                .map(|r| *r.unwrap().0.value())
                .collect(),
            Err(_) => Vec::new(),
        }
    };
    if keys.is_empty() {
        return format!(
            "{} holds no inline shard: nothing corrupted",
            path.display()
        );
    }
    let key = rng.pick(&keys);
    let write = db.begin_write().unwrap();
    let at;
    {
        let mut table = write.open_table(INLINE).unwrap();
        let mut value = table.get(&key).unwrap().unwrap().value().to_vec();
        at = rng.below(value.len());
        value[at] ^= 1 << rng.below(8);
        table.insert(&key, value.as_slice()).unwrap();
    }
    write.commit().unwrap();
    format!(
        "flipped a bit at byte {at} of inline shard {} in {}",
        hex::encode(key),
        path.display()
    )
}

fn run_rounds(rounds: usize, default_name: &str, default_seed: Option<u64>) {
    let seed = seed_from_env(default_seed);
    println!(
        "{default_name}: seed {seed:#x} ({rounds} rounds); replay with DANGAN_FAULT_SEED={seed:#x} DANGAN_FAULT_ROUNDS={rounds}"
    );
    let tmp = tempfile::Builder::new()
        .prefix("dangan-faults-")
        .tempdir()
        .unwrap();
    let started = Instant::now();
    let spares = rounds / 3 + 1;
    let mut harness = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let h = harness.insert(Harness::start(tmp.path(), seed, spares));
        // One document before any fault, so the first round reads an old one too.
        h.put_some(1, 0);
        for round in 1..=rounds {
            h.round(round);
        }
    }));
    if let Err(panic) = result {
        let doing = harness
            .as_ref()
            .map_or("starting".into(), |h| h.doing.clone());
        drop(harness);
        let kept = tmp.keep();
        eprintln!(
            "FAULT TEST FAILED with seed {seed:#x} while {doing}\n\
             replay: DANGAN_FAULT_SEED={seed:#x} DANGAN_FAULT_ROUNDS={rounds}\n\
             kept {} (configs, data, logs/ of every process)",
            kept.display()
        );
        resume_unwind(panic);
    }
    println!(
        "{rounds} rounds in {:.1} s (seed {seed:#x})",
        started.elapsed().as_secs_f64()
    );
    if std::env::var_os("DANGAN_FAULT_KEEP").is_some() {
        println!("kept {} (DANGAN_FAULT_KEEP)", tmp.keep().display());
    }
}

/// The seed `cargo test` uses, so that CI is repeatable (the 60-round soak of 2026-11-27,
/// before the network faults, ran clean with it; its round 2 is now a minority partition).
/// `DANGAN_FAULT_SEED` picks another; the soak picks a random one.
const SHORT_FORM_SEED: u64 = 0x18ec_08ac_15e6_f133;

#[test]
fn seeded_fault_rounds_keep_every_document_and_the_chain_consistent() {
    run_rounds(rounds_from_env(2), "short form", Some(SHORT_FORM_SEED));
}

/// Issue 4, fixed: in round 1 of this seed a validator host's peer (node 1) is killed and
/// restarted (to corrupt a value in its redb), and every document put in that round still
/// reads back (it failed before the fix, in about 7 s; it passes in about 5 s). The restarted peer used to
/// authorise from its own ledger while that was still behind the chain ("not registered"),
/// and other peers' authorisation queries to the validators, stalled by the election,
/// outlasted the reader's 5 s limit. Now a peer whose ledger is not current asks the other
/// validators (each within `access::ACCESS_QUERY_TIMEOUT`), authorisation that cannot be
/// decided within `peer::AUTHORISE_TIMEOUT` is answered `Unavailable`, and the reader asks
/// such peers again (`ClientOptions::unavailable_retry`).
#[test]
fn reads_go_on_while_a_validator_host_restarts() {
    run_rounds(1, "a validator host restarts", Some(0x18ec_1302_d392_eeb3));
}

/// The soak: `cargo test --release --test it -- --ignored --nocapture soak`.
#[test]
#[ignore]
fn soak_seeded_fault_rounds() {
    run_rounds(rounds_from_env(60), "soak", None);
}

#[test]
fn a_fault_plan_stays_within_its_budget() {
    // The plans alone (no processes): at most m distinct peers, all placed, at most one
    // validator host, and every kind of fault within a few rounds.
    let mut rng = Rng(7);
    let mut kinds = std::collections::HashSet::new();
    for round in 1..=40 {
        let active: Vec<usize> = (1..=PEERS + round % 2).filter(|&p| p != 5).collect();
        let faults = plan(&mut rng, &active, round);
        let mut peers: Vec<usize> = faults.iter().flat_map(|f| f.peers()).collect();
        let faulty = peers.len() + usize::from(faults.contains(&Fault::IsolateLeader));
        assert!(!faults.is_empty() && faulty <= M, "{faults:?}");
        assert!(peers.iter().all(|p| active.contains(p)), "{faults:?}");
        assert!(
            faults.iter().map(|f| f.validator_hosts()).sum::<usize>() <= 1,
            "{faults:?}"
        );
        assert_eq!(
            faults.iter().all(|f| f.is_network()),
            round % 2 == 0,
            "{faults:?}"
        );
        peers.sort();
        peers.dedup();
        assert_eq!(
            peers.len() + usize::from(faults.contains(&Fault::IsolateLeader)),
            faulty,
            "{faults:?}"
        );
        for f in faults {
            kinds.insert(std::mem::discriminant(&f));
        }
    }
    assert_eq!(kinds.len(), 10, "every kind of fault came up");
}
