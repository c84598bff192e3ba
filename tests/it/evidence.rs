//! Evidence outside the cluster, as separate processes: three `dangan node`s, each hosting a
//! validator that makes a signed checkpoint every 2 blocks (`checkpoint_every`), one of
//! them anchoring each in an append-only file. `dangan chain checkpoint -o` exports the
//! signed note; `dangan verify --checkpoint` checks it offline and refuses it once a
//! signature is forged or only a minority is left; a receipt carries its checkpoint.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::cli::Cli;
use crate::common::process::ProcessCluster;
use dangan::chain::anchor::FileAnchor;
use dangan::chain::checkpoint::SignedCheckpoint;
use dangan::chain::validators::ValidatorHistory;
use dangan::config::ClusterFile;
use dangan::receipt::Receipt;

/// Three peers, three validators checkpointing every 2 blocks; node 1 also anchors.
fn start(root: &Path) -> ProcessCluster {
    ProcessCluster::start_with(root, 3, 3, |dir| {
        for i in 1..=3 {
            let path = dir.join(format!("node{i}.toml"));
            let mut text = fs::read_to_string(&path).unwrap();
            // `[validator]` is the node file's last section.
            assert!(text.contains("[validator]"));
            text.push_str("checkpoint_every = 2\n");
            if i == 1 {
                text.push_str("anchor_file = \"anchor.log\"\n");
            }
            fs::write(&path, text).unwrap();
        }
    })
}

/// Runs `what` until it succeeds (a checkpoint is made after its block is applied).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn checkpoints_every_n_blocks_are_signed_by_a_majority_anchored_and_verify_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cluster = start(root);
    let dept = Cli::new(
        &cluster,
        &cluster.path("keys/department.key"),
        &root.join("keyring"),
    );
    let input = root.join("doc.bin");
    fs::write(&input, common::data(20_000, 7)).unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(dept.put(&input, &format!("put{n}")));
    }

    let file = root.join("checkpoint.txt");
    let note = eventually("a checkpoint is served", || {
        let run = dept.run(
            [
                "chain",
                "checkpoint",
                "--height",
                "2",
                "-o",
                file.to_str().unwrap(),
            ],
            "checkpoint",
        );
        run.ok.then(|| fs::read(&file).unwrap())
    });
    // The note, checked here as a stranger would: the genesis set, the chain key.
    let cluster_file = ClusterFile::load(&cluster.path("cluster.toml")).unwrap();
    let validators = cluster_file.chain.unwrap().validators;
    let signed = SignedCheckpoint::from_bytes(&note).unwrap();
    let key = signed.checkpoint().unwrap().chain;
    let (checkpoint, signers) = signed
        .verify(&key, &ValidatorHistory::trusted(&validators))
        .unwrap();
    assert_eq!(checkpoint.height, 2);
    assert!(signers.len() >= 2, "signed by {} of 3", signers.len());
    let text = String::from_utf8(note.clone()).unwrap();
    assert!(
        text.starts_with(&format!("dangan.chain/{key}\n2\n")),
        "{text}"
    );

    // Offline with the CLI.
    let ok = dept
        .run(
            ["verify", "--checkpoint", file.to_str().unwrap()],
            "verify-checkpoint",
        )
        .expect_ok("verify a checkpoint offline");
    assert!(ok.stdout.contains("checkpoint verified offline: height 2"));

    // A minority (one signature left) and a forged signature are refused.
    let (body, sigs) = text.split_once("\n\n").unwrap();
    let sig_lines: Vec<&str> = sigs.lines().collect();
    let minority = root.join("minority.txt");
    fs::write(&minority, format!("{body}\n\n{}\n", sig_lines[0])).unwrap();
    let forged = root.join("forged.txt");
    let mut lines = sig_lines.clone();
    // The last base64 character before the padding of the first signature, changed.
    let first = lines[0].to_string();
    let cut = first.trim_end_matches('=');
    let last = cut.chars().last().unwrap();
    let swapped = format!(
        "{}{}{}",
        &cut[..cut.len() - 1],
        if last == 'A' { 'Q' } else { 'A' },
        &first[cut.len()..]
    );
    lines[0] = &swapped;
    fs::write(&forged, format!("{body}\n\n{}\n", lines.join("\n"))).unwrap();
    for (bad, name) in [(&minority, "minority"), (&forged, "forged")] {
        let refused = dept
            .run(["verify", "--checkpoint", bad.to_str().unwrap()], name)
            .expect_fail(name);
        assert!(
            refused.stderr.contains("majority") || refused.stderr.contains("signature"),
            "{name}: {}",
            refused.stderr
        );
    }

    // The anchor recorded the checkpoint's digest, each line linked to the one before.
    let anchor = cluster.path("anchor.log");
    eventually("the anchor records the checkpoint", || {
        let entries = FileAnchor::entries(&anchor).ok()?;
        entries
            .iter()
            .any(|(d, _)| *d == checkpoint.digest())
            .then_some(())
    });

    // A receipt with the checkpoint that covers its registration verifies offline.
    let receipt = root.join("receipt.bin");
    let out = root.join("out.bin");
    eventually("a receipt with its checkpoint", || {
        let run = dept.run(
            [
                "get",
                ids[2].as_str(),
                "-o",
                out.to_str().unwrap(),
                "--receipt",
                receipt.to_str().unwrap(),
                "--with-checkpoint",
            ],
            "get-receipt",
        );
        run.ok.then_some(())
    });
    let r = Receipt::decode(&fs::read(&receipt).unwrap()).unwrap();
    r.verify(&validators).unwrap();
    let covering = r.checkpoint(&validators).unwrap().unwrap();
    assert!(covering.height >= r.registration.header.header.height);
    let verified = dept
        .run(
            ["verify", "--receipt", receipt.to_str().unwrap()],
            "verify-receipt",
        )
        .expect_ok("verify a receipt with its checkpoint");
    assert!(
        verified
            .stdout
            .contains("covered by the checkpoint at height"),
        "{}",
        verified.stdout
    );
}
