//! The `dangan` binary as separate processes: `local-config`, three `dangan node` peers,
//! `put` and `get` of a 3 MiB document, a stranger's key refused, an unknown id, a killed
//! peer. Also: the example configs in `config/` load, `local-config` writes a coding that
//! fits the number of peers, and the operator commands (`cluster status`, `scrub`, repair)
//! find and fix a bit flipped on a peer's disk; validators removed and added again with
//! `chain remove-validator` / `add-validator` proposals, `approve` and `enact`. Key files
//! others may read are refused, and a get's output is the user's alone (0600).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use crate::common;
use crate::common::cli::{Cli, new_key};
use crate::common::process::{ProcessCluster, dangan, is_document_id, local_config, run};
use dangan::config::{ClusterFile, NodeFile};
use dangan::identity::PublicId;
use dangan::peer::PeerLimits;

const PEERS: usize = 3;

/// Three peers as separate processes, one validator (on node 1): k = 2, m = 1.
fn start_cluster(root: &Path) -> ProcessCluster {
    let cluster = ProcessCluster::start(root, PEERS, 1);
    assert!(
        cluster.local_config.contains("k = 2, m = 1"),
        "local-config with 3 peers must choose k = 2, m = 1: {}",
        cluster.local_config
    );
    let file = ClusterFile::load(&cluster.path("cluster.toml"))
        .expect("local-config writes a valid cluster");
    assert_eq!(file.layout.nodes.len(), PEERS);
    assert_eq!((file.params.k, file.params.m), (2, 1));
    cluster
}

#[test]
fn peers_as_separate_processes_put_get_lose_one_and_refuse_strangers() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut cluster = start_cluster(root);
    let logs = cluster.logs.clone();
    let dept_key = cluster.path("keys/department.key");
    let keyring = cluster.path("keyring");
    let dept = Cli::new(&cluster, &dept_key, &keyring);

    // 1. put a 3 MiB document (two stripes of 2 MiB with k = 2); the last line is its id.
    let input = root.join("input.bin");
    let bytes = common::data(3 << 20, 0xd0c);
    fs::write(&input, &bytes).unwrap();
    let id = dept.put(&input, "put");
    assert!(
        keyring.join(format!("{id}.key")).is_file(),
        "put keeps the document key in the keyring"
    );

    // 2. get it back. A stale world-readable partial output left by an earlier run does not
    // make this one readable by others: the output is the user's alone (0600).
    let out1 = root.join("out1.bin");
    let stale = out1.with_extension("dangan-partial");
    fs::write(&stale, b"stale").unwrap();
    fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();
    let get = dept.get(&id, &out1, "get").expect_ok("get");
    let mode = fs::metadata(&out1).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a get's output is readable by the user only");
    assert!(!stale.exists(), "the partial output became the output");
    assert!(
        get.stdout
            .contains(&format!("{} bytes written", bytes.len())),
        "{}",
        get.describe()
    );
    assert!(
        fs::read(&out1).unwrap() == bytes,
        "get returned other bytes"
    );

    // 3. A key that is not in the cluster file and has no account on the chain: every peer
    // refuses its writes, nothing is stored.
    let stranger_key = root.join("stranger.key");
    let stranger_id: PublicId = new_key("department", &stranger_key, &logs, "keys-new")
        .parse()
        .expect("keys new prints an id");
    let members = ClusterFile::load(&cluster.path("cluster.toml"))
        .unwrap()
        .members;
    assert!(!members.contains(&stranger_id));
    let stranger_ring = root.join("stranger-keyring");
    let stranger = Cli::new(&cluster, &stranger_key, &stranger_ring);
    let refused = stranger
        .run(["put".as_ref(), input.as_os_str()], "put-stranger")
        .expect_fail("put with a key not in the cluster");
    assert!(
        // Stripes go out in parallel, so any stripe may be the one reported.
        refused.stderr.contains("Error: stripe ")
            && refused.stderr.contains("only 0 of the 3 shard writes"),
        "the refusal must name the stripe and that no peer acknowledged a shard: {}",
        refused.describe()
    );
    assert!(
        fs::read_dir(&stranger_ring).map_or(true, |mut d| d.next().is_none()),
        "a refused put keeps no key"
    );
    // A key file that others may read is refused at load, with the fix in the message.
    fs::set_permissions(&stranger_key, fs::Permissions::from_mode(0o644)).unwrap();
    let open_key = stranger
        .run(["put".as_ref(), input.as_os_str()], "put-open-key")
        .expect_fail("put with a key file others may read");
    assert!(
        open_key
            .stderr
            .contains(&format!("chmod 600 {}", stranger_key.display())),
        "the refusal names the fix: {}",
        open_key.describe()
    );

    // 4. An id that was never stored: get asks the chain first, which does not know it.
    let unknown = blake3::hash(b"never stored").to_hex().to_string();
    let out2 = root.join("out2.bin");
    let missing = dept
        .get(&unknown, &out2, "get-unknown")
        .expect_fail("get of an unknown id");
    assert!(
        missing
            .stderr
            .contains(&format!("document {unknown} was not found on the chain")),
        "the error must say the document is not registered: {}",
        missing.describe()
    );
    assert!(!out2.exists(), "a failed get writes no output");

    // 5. An id that was never stored, with a key for it: the peers do not have it.
    fs::copy(
        keyring.join(format!("{id}.key")),
        keyring.join(format!("{unknown}.key")),
    )
    .unwrap();
    let missing = dept
        .get(&unknown, &out2, "get-unknown-with-key")
        .expect_fail("get of an unknown id");
    assert!(
        missing.stderr.contains(&unknown) && missing.stderr.contains("not found"),
        "the error must say the document was not found: {}",
        missing.describe()
    );
    assert!(!out2.exists(), "a failed get writes no output");
    assert!(
        !out2.with_extension("dangan-partial").exists(),
        "a failed get removes its partial output"
    );

    // The put was registered on the chain run by node 1's validator.
    let status = dept
        .run(["chain", "status"], "chain-status")
        .expect_ok("chain status");
    assert!(
        status.stdout.contains("documents:    1"),
        "one registered document: {}",
        status.describe()
    );

    // Anyone with the cluster file can check the registration: proof and signatures.
    let verified = dept.run(["verify", &id], "verify").expect_ok("verify");
    assert!(
        // Block 1 sealed the genesis state.
        verified.stdout.contains("is registered: block 2"),
        "{}",
        verified.describe()
    );
    // A receipt written by get verifies with no network, and only for its document.
    let receipt = root.join("receipt.bin");
    let out3 = root.join("out3.bin");
    dept.run(
        [
            "get".as_ref(),
            id.as_ref(),
            "-o".as_ref(),
            out3.as_os_str(),
            "--receipt".as_ref(),
            receipt.as_os_str(),
        ],
        "get-receipt",
    )
    .expect_ok("get --receipt");
    let offline = dept
        .run(
            ["verify".as_ref(), "--receipt".as_ref(), receipt.as_os_str()],
            "verify-receipt",
        )
        .expect_ok("verify --receipt");
    assert!(
        offline.stdout.contains("receipt verified offline") && offline.stdout.contains(id.as_str()),
        "{}",
        offline.describe()
    );
    dept.run(
        [
            "verify".as_ref(),
            unknown.as_ref(),
            "--receipt".as_ref(),
            receipt.as_os_str(),
        ],
        "verify-receipt-other",
    )
    .expect_fail("a receipt for another id");

    let refused = dept
        .run(["verify", &unknown], "verify-unknown")
        .expect_fail("verify of an unknown id");
    assert!(
        refused.stderr.contains("not registered"),
        "{}",
        refused.describe()
    );
    let block = dept
        .run(["chain", "block", "2"], "chain-block")
        .expect_ok("chain block 2");
    assert!(
        block.stdout.contains("RegisterDocument"),
        "{}",
        block.describe()
    );

    // A citizen, in no cluster file, reads the document once granted, with its own key.
    let citizen_key = root.join("citizen.key");
    new_key("citizen", &citizen_key, &logs, "keys-new-citizen");
    let citizen_ring = root.join("citizen-keyring");
    let citizen = Cli::new(&cluster, &citizen_key, &citizen_ring);
    let out4 = root.join("out4.bin");
    let refused = citizen
        .get(&id, &out4, "get-citizen-ungranted")
        .expect_fail("a citizen's get before the grant");
    assert!(refused.stderr.contains("grant"), "{}", refused.describe());
    let address = run(
        dangan(["keys".as_ref(), "address".as_ref(), citizen_key.as_os_str()]),
        &logs,
        "keys-address",
    )
    .expect_ok("keys address");
    dept.run(["grant", &id, address.stdout.trim()], "grant")
        .expect_ok("grant");
    citizen
        .get(&id, &out4, "get-citizen")
        .expect_ok("the granted citizen's get");
    assert!(
        fs::read(&out4).unwrap() == bytes,
        "the citizen read other bytes"
    );
    // The department's audit lists the citizen's read (pending or verified: the peers
    // commit their roots every 10 s); the citizen may not audit.
    let audit = dept
        .run(["audit", &id], "audit")
        .expect_ok("the owner's audit");
    assert!(
        audit.stdout.contains("(owner) read manifest")
            && audit.stdout.contains("(grantee) read shard")
            && !audit.stdout.contains("FAILED"),
        "{}",
        audit.describe()
    );
    let refused = citizen
        .run(["audit", &id], "audit-citizen")
        .expect_fail("a citizen's audit");
    assert!(
        refused.stderr.contains("may not see who read"),
        "{}",
        refused.describe()
    );

    // 6. Kill one peer (m = 1): every stripe is still readable from the other two.
    cluster.kill(2);
    let out3 = root.join("out3.bin");
    dept.get(&id, &out3, "get-one-peer-down")
        .expect_ok("get with one peer down");
    assert!(
        fs::read(&out3).unwrap() == bytes,
        "get with one peer down returned other bytes"
    );

    cluster.assert_no_panics();
    println!(
        "separate-process test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn local_config_fits_the_coding_to_the_peers_and_refuses_fewer_than_two() {
    let tmp = tempfile::tempdir().unwrap();
    for (peers, k, m) in [
        (2, 1, 1),
        (3, 2, 1),
        (4, 3, 1),
        (5, 4, 1),
        (6, 4, 2),
        (7, 4, 2),
    ] {
        let dir = tmp.path().join(format!("p{peers}"));
        let r = run(
            local_config(
                &dir,
                &["--peers", &peers.to_string(), "--base-port", "17101"],
            ),
            tmp.path(),
            &format!("lc{peers}"),
        )
        .expect_ok("local-config");
        assert!(
            r.stdout.contains(&format!("k = {k}, m = {m}")),
            "{}",
            r.describe()
        );
        let cluster = ClusterFile::load(&dir.join("cluster.toml")).unwrap_or_else(|e| {
            panic!("local-config --peers {peers} wrote an invalid cluster: {e}")
        });
        assert_eq!(
            (cluster.params.k, cluster.params.m),
            (k, m),
            "{peers} peers"
        );
        assert_eq!(cluster.layout.nodes.len(), peers);
        assert_eq!(
            cluster.members.len(),
            peers + 3,
            "peers, the department, the operator and the archives authority"
        );
        for i in 1..=peers {
            let node = NodeFile::load(&dir.join(format!("node{i}.toml"))).unwrap();
            assert_eq!(node.listen.port(), 17100 + i as u16);
            assert_eq!(node.key, dir.join(format!("keys/peer{i}.key")));
            assert!(node.key.is_file());
        }
    }
    for peers in ["0", "1"] {
        let dir = tmp.path().join(format!("refused{peers}"));
        let r = run(
            local_config(&dir, &["--peers", peers]),
            tmp.path(),
            &format!("lc-refused{peers}"),
        )
        .expect_fail("local-config with fewer than 2 peers");
        assert!(r.stderr.contains("at least 2 peers"), "{}", r.describe());
        assert!(!dir.exists(), "a refused local-config writes nothing");
    }
    let dir = tmp.path().join("past-65535");
    let r = run(
        local_config(&dir, &["--peers", "3", "--base-port", "65534"]),
        tmp.path(),
        "lc-ports",
    )
    .expect_fail("local-config past port 65535");
    assert!(r.stderr.contains("65535"), "{}", r.describe());
    assert!(!dir.exists());
}

#[test]
fn example_configs_load() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");

    let cluster = ClusterFile::load(&config.join("cluster.toml")).unwrap();
    assert_eq!(cluster.layout.epoch, 1);
    assert_eq!(cluster.layout.nodes.len(), 3, "three peers");
    assert_eq!((cluster.params.k, cluster.params.m), (2, 1));
    assert_eq!(cluster.params.width(), cluster.layout.nodes.len());
    assert_eq!(
        cluster.params.full_shard_len() >> 10,
        1024,
        "shard_kib = 1024"
    );
    assert_eq!(cluster.write_quorum, None, "write_quorum is commented out");
    assert_eq!(cluster.members.len(), 4, "three peers and one department");
    let mut addrs: Vec<String> = cluster
        .layout
        .nodes
        .iter()
        .map(|n| n.addr.clone())
        .collect();
    addrs.sort();
    assert_eq!(
        addrs,
        ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
    );
    let mut zones: Vec<&str> = cluster
        .layout
        .nodes
        .iter()
        .map(|n| n.zone.as_str())
        .collect();
    zones.sort();
    zones.dedup();
    assert_eq!(zones.len(), 3, "one zone per peer");
    assert!(cluster.layout.nodes.iter().all(|n| n.weight == 100));

    let node = NodeFile::load(&config.join("node.toml")).unwrap();
    assert_eq!(node.listen.to_string(), "127.0.0.1:7101");
    assert!(
        cluster
            .layout
            .nodes
            .iter()
            .any(|n| n.addr == node.listen.to_string()),
        "node.toml is one of the cluster's peers"
    );
    assert_eq!(node.data_dir, config.join("data/peer1"));
    assert_eq!(node.key, config.join("keys/peer1.key"));
    assert_eq!(node.cluster, config.join("cluster.toml"));
    // node.toml spells out the defaults; if they change, so must the file.
    let d = PeerLimits::default();
    assert_eq!(node.limits.max_connections, d.max_connections);
    assert_eq!(
        node.limits.max_concurrent_requests,
        d.max_concurrent_requests
    );
    assert_eq!(node.limits.queue_timeout, d.queue_timeout);
    assert_eq!(node.limits.request_timeout, d.request_timeout);
    assert_eq!(node.limits.audit_buffer, d.audit_buffer);
}

#[test]
fn operator_commands_status_scrub_and_repair_a_flipped_bit_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cluster = start_cluster(root);
    let keyring = cluster.path("keyring");
    let dept = Cli::new(&cluster, &cluster.path("keys/department.key"), &keyring);
    let operator = Cli::new(&cluster, &cluster.path("keys/operator.key"), &keyring)
        .with_data_dir(root.join("operator"));

    let input = root.join("input.bin");
    let bytes = common::data(3 << 20, 0x0b5);
    fs::write(&input, &bytes).unwrap();
    let id = dept.put(&input, "put");

    let status = |name: &str| {
        operator
            .run(["cluster", "status"], name)
            .expect_ok("cluster status")
    };
    let s = status("status1");
    assert!(s.stdout.contains("layout epoch 1"), "{}", s.describe());
    assert!(
        s.stdout
            .contains("1 documents, 2 stripes, 0 below full redundancy"),
        "{}",
        s.describe()
    );

    // Flip one bit of one shard body on peer 2's disk, behind the peer's back.
    let body_dir = cluster.path("data/peer2").join(dangan::store::BODY_DIR);
    let victim = fs::read_dir(&body_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .expect("peer 2 stores a shard body file");
    let mut body = fs::read(&victim).unwrap();
    body[1234] ^= 1;
    fs::write(&victim, body).unwrap();

    let scrub = operator
        .run(["scrub", "--rate-mb", "100"], "scrub")
        .expect_ok("scrub");
    assert!(scrub.stdout.contains("; 1 corrupt"), "{}", scrub.describe());
    assert!(
        scrub.stdout.contains("repair: 1 documents, 2 stripes (1 were below full redundancy); 0 shards moved, 1 rebuilt"),
        "{}",
        scrub.describe()
    );
    let s = status("status2");
    assert!(
        s.stdout.contains("0 below full redundancy"),
        "{}",
        s.describe()
    );

    let out = root.join("out.bin");
    dept.get(&id, &out, "get").expect_ok("get");
    assert!(fs::read(&out).unwrap() == bytes);
}

#[test]
fn rekey_and_supersede_from_the_command_line_and_get_follows_to_the_newest_version() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cluster = start_cluster(root);
    let keyring = cluster.path("keyring");
    let dept = Cli::new(&cluster, &cluster.path("keys/department.key"), &keyring);

    let input = root.join("v1.bin");
    let v1_bytes = common::data(700 << 10, 0x5e1);
    fs::write(&input, &v1_bytes).unwrap();
    let v1 = dept.put(&input, "put");
    assert!(is_document_id(&v1));

    let rekeyed = dept.run(["rekey", &v1], "rekey").expect_ok("rekey");
    let v2 = rekeyed.last_line();
    assert!(is_document_id(&v2) && v2 != v1, "{}", rekeyed.describe());
    assert!(
        rekeyed.stderr.contains(&format!("rekey of {v1}"))
            && rekeyed.stderr.contains("old version collected"),
        "{}",
        rekeyed.describe()
    );
    let verified = dept.run(["verify", &v2], "verify").expect_ok("verify");
    assert!(
        verified.stdout.contains(&format!("it is a rekey of {v1}")),
        "{}",
        verified.describe()
    );
    // A second rekey of the old id only finishes what is left: nothing.
    let again = dept
        .run(["rekey", &v1], "rekey-again")
        .expect_ok("rekey again");
    assert_eq!(again.last_line(), v2);

    let input2 = root.join("v3.bin");
    fs::write(&input2, b"reissued certificate").unwrap();
    let supersede = ["supersede".as_ref(), v2.as_ref(), input2.as_os_str()];
    let v3 = dept
        .run(supersede, "supersede")
        .expect_ok("supersede")
        .last_line();
    let refused = dept
        .run(supersede, "supersede-again")
        .expect_fail("superseding twice");
    assert!(
        refused
            .stderr
            .contains(&format!("already superseded by {v3}")),
        "{}",
        refused.describe()
    );

    // get of the first id follows to the newest version and says so; --exact reads v2.
    let out = root.join("out.bin");
    let got = dept.get(&v1, &out, "get").expect_ok("get");
    assert_eq!(fs::read(&out).unwrap(), b"reissued certificate");
    assert!(
        got.stderr
            .contains(&format!("{v1} was superseded by {v2} (rekey)"))
            && got
                .stderr
                .contains(&format!("{v2} was superseded by {v3} (reissue)")),
        "{}",
        got.describe()
    );
    dept.run(
        [
            "get".as_ref(),
            v2.as_ref(),
            "--exact".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
        ],
        "get-exact",
    )
    .expect_ok("get --exact");
    assert!(fs::read(&out).unwrap() == v1_bytes);
}

#[test]
fn validators_leave_and_join_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cluster = ProcessCluster::start(root, PEERS, 3);
    let keyring = cluster.path("keyring");
    let dept = Cli::new(&cluster, &cluster.path("keys/department.key"), &keyring);
    let admin = Cli::new(&cluster, &cluster.path("keys/validator1.key"), &keyring);
    let third = dangan::identity::Identity::load(cluster.path("keys/validator3.key"))
        .unwrap()
        .public()
        .to_string();
    let validators = |name: &str| {
        let status = dept
            .run(["chain", "status"], name)
            .expect_ok("chain status");
        status.stdout.matches("validator:").count()
    };
    let put_and_verify = |name: &str, seed: u64| {
        let input = root.join(format!("{name}.bin"));
        fs::write(&input, common::data(100 << 10, seed)).unwrap();
        let id = dept.put(&input, &format!("{name}-put"));
        let verified = dept
            .run(["verify", &id], &format!("{name}-verify"))
            .expect_ok("verify");
        assert!(
            verified.stdout.contains("is registered"),
            "{}",
            verified.describe()
        );
    };
    assert_eq!(validators("status-3"), 3);

    let second = Cli::new(&cluster, &cluster.path("keys/validator2.key"), &keyring);
    let proposal = root.join("remove.prop");
    let prop = proposal.to_str().unwrap();

    // A department may not propose a change of the validator set.
    let refused = dept
        .run(
            ["chain", "remove-validator", &third, "--proposal", prop],
            "dept-remove",
        )
        .expect_fail("a department proposing");
    assert!(
        refused.stderr.contains("not a validator"),
        "{}",
        refused.describe()
    );
    // One validator alone: its proposal is refused for want of a majority.
    admin
        .run(
            ["chain", "remove-validator", &third, "--proposal", prop],
            "propose-remove",
        )
        .expect_ok("remove-validator --proposal");
    let alone = admin
        .run(["chain", "enact", prop], "enact-alone")
        .expect_fail("enacting with one approval");
    assert!(alone.stderr.contains("majority"), "{}", alone.describe());
    assert_eq!(validators("status-still-3"), 3);

    // With the second validator's approval, a majority of three: removed.
    let approved = second
        .run(["chain", "approve", prop], "approve-remove")
        .expect_ok("approve");
    assert!(
        approved.stdout.contains("2 of the 2 approvals"),
        "{}",
        approved.describe()
    );
    let removed = admin
        .run(["chain", "enact", prop], "enact-remove")
        .expect_ok("enact");
    assert!(
        removed.stdout.contains("enacted in block"),
        "{}",
        removed.describe()
    );
    assert_eq!(validators("status-2"), 2);
    put_and_verify("two", 1);

    // Added back with its host named on chain (the same peer its cluster files name),
    // approved by both validators left.
    let file = ClusterFile::load(&cluster.path("cluster.toml")).unwrap();
    let host = file.chain.as_ref().unwrap().hosts.last().unwrap().clone();
    let peer3 = dangan::identity::Identity::load(cluster.path("keys/peer3.key")).unwrap();
    assert_eq!(host.key, peer3.public(), "node 3 hosts validator 3");
    let proposal = root.join("add.prop");
    let prop = proposal.to_str().unwrap();
    admin
        .run(
            [
                "chain",
                "add-validator",
                &third,
                "--host",
                &host.key.to_string(),
                "--addr",
                &host.addr,
                "--proposal",
                prop,
            ],
            "add",
        )
        .expect_ok("add-validator");
    second
        .run(["chain", "approve", prop], "approve-add")
        .expect_ok("approve");
    let added = admin
        .run(["chain", "enact", prop], "enact-add")
        .expect_ok("enact");
    assert!(
        added.stdout.contains("enacted in block"),
        "{}",
        added.describe()
    );
    assert_eq!(validators("status-3-again"), 3);
    put_and_verify("three", 2);

    // The third validator, with its own key, says where it is hosted (the same peer).
    let own = Cli::new(&cluster, &cluster.path("keys/validator3.key"), &keyring);
    let moved = own
        .run(
            [
                "chain",
                "set-validator-host",
                "--host",
                &host.key.to_string(),
                "--addr",
                &host.addr,
            ],
            "set-host",
        )
        .expect_ok("set-validator-host");
    assert!(
        moved
            .stdout
            .contains(&format!("validator {third} is hosted by {}", host.key)),
        "{}",
        moved.describe()
    );
    put_and_verify("moved", 3);
    cluster.assert_no_panics();
}
