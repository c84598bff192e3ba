//! Deployment from the binary: `dangan init` on each machine of a real cluster, the
//! consortium's shared files assembled from what it printed, the peers started as
//! processes; and the systemd units in `config/`.

use std::fs;
use std::path::Path;

use redb::ReadableTable;

use crate::common::cli::new_key;
use crate::common::process::{BIN, Node, ProcessCluster, dangan, free_port_range, run};

/// The text of `out` between `from` and `to`.
fn between<'a>(out: &'a str, from: &str, to: &str) -> &'a str {
    let start = out
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} in:\n{out}"))
        + from.len();
    let end = out[start..]
        .find(to)
        .unwrap_or_else(|| panic!("no {to:?} in:\n{out}"));
    &out[start..start + end]
}

#[test]
fn three_machines_set_up_with_init_form_a_cluster_that_stores_and_reads() {
    let root = tempfile::tempdir().unwrap();
    let logs = root.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let base = free_port_range(3);
    let (mut peers, mut chain, mut nodes, mut validators) =
        (String::new(), String::new(), String::new(), String::new());
    let machines: Vec<_> = (0..3)
        .map(|i| root.path().join(format!("machine{i}")))
        .collect();
    for (i, dir) in machines.iter().enumerate() {
        let listen = format!("127.0.0.1:{}", base + i as u16);
        let zone = format!("room {i}");
        let mut args = vec![
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            &listen,
            "--zone",
            &zone,
            "--data-dir",
            "data",
        ];
        if i == 0 {
            args.push("--validator");
        }
        let out = run(dangan(&args), &logs, &format!("init{i}"))
            .expect_ok("init")
            .stdout;
        let cluster_entry = between(&out, "on every machine:\n\n", "\nAdd to the genesis");
        let genesis_entry = between(&out, "add-validator`):\n\n", "\nThen put");
        let (peer, validator) = cluster_entry
            .split_once("[[chain.validator]]")
            .unwrap_or((cluster_entry, ""));
        peers.push_str(peer);
        if !validator.is_empty() {
            chain.push_str(&format!("[[chain.validator]]{validator}"));
        }
        let (node, validator) = genesis_entry
            .split_once("[[validator]]")
            .unwrap_or((genesis_entry, ""));
        nodes.push_str(node);
        if !validator.is_empty() {
            validators.push_str(&format!("[[validator]]{validator}"));
        }
    }
    let keys = root.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let dept = new_key(
        "department",
        &keys.join("department.key"),
        &logs,
        "dept-key",
    );
    let operator = new_key("operator", &keys.join("operator.key"), &logs, "op-key");
    let cluster = format!(
        "epoch = 1\n\n[coding]\nk = 2\nm = 1\nshard_kib = 1024\n\n{peers}\n\
         [[client]]\nid = \"{dept}\"\nname = \"department\"\n\n\
         [[client]]\nid = \"{operator}\"\nname = \"operator\"\n\n{chain}"
    );
    let genesis = format!(
        "chain_id = \"init-test\"\n\n{validators}\n\
         [[account]]\nid = \"{dept}\"\nrole = \"department\"\nname = \"department\"\n\n\
         [[account]]\nid = \"{operator}\"\nrole = \"operator\"\nname = \"operator\"\n\n{nodes}"
    );
    fs::write(root.path().join("cluster.toml"), &cluster).unwrap();
    for dir in &machines {
        fs::write(dir.join("cluster.toml"), &cluster).unwrap();
    }
    fs::write(machines[0].join("genesis.toml"), &genesis).unwrap();

    // Machine 0 logs JSON, as for a log collector (`env` execs the node with RUST_LOG set).
    let program = |i: usize| {
        let mut program = std::process::Command::new("env");
        program.arg("RUST_LOG=info").arg(BIN);
        if i == 0 {
            program.args(["--log-format", "json"]);
        }
        program
    };
    let running: Vec<Node> = machines
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            Node::start_command(
                program(i),
                &dir.join("node.toml"),
                &logs,
                &format!("node{i}"),
            )
            .unwrap_or_else(|e| panic!("{e}\ncluster.toml:\n{cluster}\ngenesis.toml:\n{genesis}"))
        })
        .collect();
    let input = root.path().join("certificate.pdf");
    fs::write(&input, crate::common::data(300 << 10, 5)).unwrap();
    let client = |cmd: &str, more: &[&Path]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![cmd.as_ref()];
        args.extend(more.iter().map(|p| p.as_os_str()));
        let mut c = dangan(args);
        c.arg("--key")
            .arg(keys.join("department.key"))
            .arg("--cluster")
            .arg(root.path().join("cluster.toml"))
            .arg("--keyring")
            .arg(root.path().join("keyring"));
        c
    };
    let put = run(client("put", &[&input]), &logs, "put").expect_ok("put on the init cluster");
    let id = put.last_line();
    let output = root.path().join("back.pdf");
    run(
        client("get", &[Path::new(&id), Path::new("-o"), &output]),
        &logs,
        "get",
    )
    .expect_ok("get on the init cluster");
    assert_eq!(fs::read(&output).unwrap(), fs::read(&input).unwrap());
    let json = running[0].stderr_text();
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.iter().any(|l| l.contains("peer serving")), "{json}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(
        !running[1].stderr_text().starts_with('{'),
        "human logs by default"
    );

    // Run again on a machine, it refuses and the key stays; without a terminal, a missing
    // flag is named instead of asked for.
    let key = fs::read(machines[1].join("keys/node.key")).unwrap();
    let again = dangan([
        "init",
        "--dir",
        machines[1].to_str().unwrap(),
        "--listen",
        "127.0.0.1:7000",
        "--zone",
        "z",
    ]);
    let refused = run(again, &logs, "init-again").expect_fail("init over a node");
    assert!(
        refused.stderr.contains("already exists"),
        "{}",
        refused.describe()
    );
    assert_eq!(fs::read(machines[1].join("keys/node.key")).unwrap(), key);
    let fresh = root.path().join("machine9");
    // (`dangan` runs every command with no input.)
    let asked = dangan(["init", "--dir", fresh.to_str().unwrap(), "--zone", "z"]);
    let refused = run(asked, &logs, "init-no-listen").expect_fail("init without --listen");
    assert!(
        refused.stderr.contains("--listen is required"),
        "{}",
        refused.describe()
    );
    assert!(!fresh.exists());
}

/// The units in `config/` are what `systemd-analyze verify` accepts without a warning
/// (with ExecStart pointing at this build's binary), and keep the service user, its state
/// directory, restart on failure and the hardening docs/deployment.md promises.
#[test]
fn the_systemd_units_verify_and_keep_their_hardening() {
    let Some(analyze) = which("systemd-analyze") else {
        println!("systemd-analyze is not installed here: units not verified");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for unit in [
        "dangan-node.service",
        "dangan-gateway.service",
        "dangan-maintain.service",
    ] {
        let text = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(unit),
        )
        .unwrap();
        for needed in [
            "User=dangan",
            "StateDirectory=",
            "Restart=on-failure",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "ExecStart=/usr/local/bin/dangan ",
        ] {
            assert!(text.contains(needed), "{unit} lacks {needed}");
        }
        let here = text.replace("/usr/local/bin/dangan", BIN);
        fs::write(dir.path().join(unit), here).unwrap();
        let out = std::process::Command::new(&analyze)
            .arg("verify")
            .arg(dir.path().join(unit))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {unit}: {}\n{stderr}",
            out.status
        );
    }
}

/// A service manager stops a node with SIGTERM (systemd's default, and the units'
/// `KillSignal`): the node shuts down cleanly (its stores closed, its audit records
/// written) and exits 0, rather than dying on the signal.
#[test]
fn a_node_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = ProcessCluster::start(tmp.path(), 2, 1);
    for i in [2, 1] {
        let node = cluster.nodes[i - 1].take().unwrap();
        let stdout = node.stdout.clone();
        let status = node.terminate();
        let out = fs::read_to_string(&stdout).unwrap();
        assert!(status.success(), "peer {i} ended with {status}:\n{out}");
        assert!(out.contains("stopped cleanly"), "peer {i}:\n{out}");
    }
}

/// The path of `program` on PATH.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Sets `key` of redb table `table` (`&str` → `&[u8]`) in the file at `path`; the old value.
fn swap_bytes(path: &Path, table: &'static str, key: &str, value: &[u8]) -> Vec<u8> {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    let old = {
        let mut t = txn
            .open_table(redb::TableDefinition::<&str, &[u8]>::new(table))
            .unwrap();
        let old = t
            .get(key)
            .unwrap()
            .expect("the format is recorded")
            .value()
            .to_vec();
        t.insert(key, value).unwrap();
        old
    };
    txn.commit().unwrap();
    old
}

/// Sets `key` of redb table `table` (`&str` → `u64`) in the file at `path`; the old value.
fn swap_u64(path: &Path, table: &'static str, key: &str, value: u64) -> u64 {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    let old = {
        let mut t = txn
            .open_table(redb::TableDefinition::<&str, u64>::new(table))
            .unwrap();
        let old = t.get(key).unwrap().expect("the format is recorded").value();
        t.insert(key, value).unwrap();
        old
    };
    txn.commit().unwrap();
    old
}

#[test]
fn a_node_refuses_a_store_or_chain_written_by_a_newer_format_and_starts_once_it_is_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = ProcessCluster::start(tmp.path(), 2, 1);
    cluster.kill(1);
    let data = cluster.path("data");
    let config = cluster.path("node1.toml");
    let refused = |name: &str, says: &str| {
        let err = match Node::start(&config, &cluster.logs, name) {
            Ok(_) => panic!("{name}: a node started on a format newer than it reads"),
            Err(e) => e,
        };
        assert!(
            err.contains(says) && err.contains("upgrade this binary"),
            "{name}: {err}"
        );
    };

    // The chain (validator node 1's): meta-v1 "format".
    let chain = data.join("chain1.redb");
    let old = swap_u64(&chain, "meta-v1", "format", 3);
    refused(
        "newer-chain",
        "written by a newer Dangan (chain format 3; this build reads up to 2)",
    );
    swap_u64(&chain, "meta-v1", "format", old);
    // Its raft log.
    let raft = data.join("chain1.raft");
    let old = swap_bytes(&raft, "raft-meta-v1", "format", &2u64.to_le_bytes());
    refused(
        "newer-raft",
        "written by a newer Dangan (raft log format 2; this build reads up to 1)",
    );
    swap_bytes(&raft, "raft-meta-v1", "format", &old);
    // The peer's shard store: a postcard format record (record format 1, store format).
    let store = data.join("peer1").join("shards.redb");
    let old = swap_bytes(&store, "meta-v1", "format", &[1, 99]);
    refused(
        "newer-store",
        "written by a newer Dangan (store format 99; this build reads up to 4)",
    );
    swap_bytes(&store, "meta-v1", "format", &old);
    // Its audit log.
    let audit = data.join("peer1").join(dangan::audit::AUDIT_FILE);
    let old = swap_u64(&audit, "audit-meta-v1", "format", 2);
    refused(
        "newer-audit",
        "written by a newer Dangan (audit format 2; this build reads up to 1)",
    );
    swap_u64(&audit, "audit-meta-v1", "format", old);

    // Nothing was changed by the refusals: the node starts on its files as they were.
    cluster.restart(1);
    cluster.assert_no_panics();
}
