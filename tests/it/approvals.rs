//! Workflows between departments (`chain::workflow`) through `dangan approval`, against
//! peers and a validator as separate processes: a grant approved by 2 of 3 departments
//! runs on the second approval and the grantee reads; a registration happens only once
//! approved (and `collect` keeps the bytes meanwhile); an expired proposal does nothing;
//! an approver not named, an approval given twice, an approval in another's name, and a
//! proposal refused by enough of its approvers are all refused with a clear message.

use std::fs;
use std::path::PathBuf;

use crate::common;
use crate::common::cli::{Cli, new_key};
use crate::common::process::{ProcessCluster, dangan, run};
use dangan::chain::tx::{Tx, TxBody};
use dangan::chain::workflow::ProposalId;
use dangan::config::ClusterFile;
use dangan::identity::Identity;

/// Exit code of a refusal (docs/cli.md).
const REFUSED: i32 = 3;

/// Three peers, one validator, the cluster's department `a` and four more departments
/// `b`, `c`, `d`, `e` in the genesis, each with its key and keyring.
struct World {
    root: PathBuf,
    cluster: ProcessCluster,
    a: Cli,
    depts: Vec<Dept>,
    _tmp: tempfile::TempDir,
}

struct Dept {
    id: String,
    key: PathBuf,
    cli: Cli,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let logs = root.join("logs");
    fs::create_dir_all(root.join("keys")).unwrap();
    fs::create_dir_all(&logs).unwrap();
    let keys: Vec<(String, PathBuf)> = ["b", "c", "d", "e"]
        .iter()
        .map(|n| {
            let key = root.join(format!("keys/{n}.key"));
            (new_key("department", &key, &logs, &format!("key-{n}")), key)
        })
        .collect();
    let accounts: String = keys
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            format!("[[account]]\nid = \"{id}\"\nrole = \"department\"\nname = \"dept{i}\"\n\n")
        })
        .collect();
    let cluster = ProcessCluster::start_with(&root, 3, 1, |dir| {
        let path = dir.join("genesis.toml");
        let text = fs::read_to_string(&path).unwrap();
        let at = text.find("[[").expect("the genesis has tables");
        fs::write(&path, format!("{}{accounts}{}", &text[..at], &text[at..])).unwrap();
    });
    let a = Cli::new(
        &cluster,
        &cluster.path("keys/department.key"),
        &cluster.path("keyring"),
    );
    let depts = keys
        .into_iter()
        .enumerate()
        .map(|(i, (id, key))| {
            let cli = Cli::new(&cluster, &key, &root.join(format!("keyring{i}")));
            Dept { id, key, cli }
        })
        .collect();
    World {
        root,
        cluster,
        a,
        depts,
        _tmp: tmp,
    }
}

impl World {
    fn input(&self, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let path = self.root.join(name);
        let bytes = common::data(len, seed);
        fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }

    /// The grant address of department `i` (`dangan keys address`).
    fn address(&self, i: usize) -> String {
        let key = self.depts[i].key.as_os_str();
        let r = run(
            dangan(["keys".as_ref(), "address".as_ref(), key]),
            &self.cluster.logs,
            "address",
        )
        .expect_ok("keys address");
        r.last_line()
    }

    /// The public ids of departments `which`, comma-separated.
    fn approvers(&self, which: &[usize]) -> String {
        which
            .iter()
            .map(|i| self.depts[*i].id.clone())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `dangan approval ARGS` as `who`, which must fail as a refusal whose message holds
/// `says`.
fn refused(who: &Cli, args: &[&str], name: &str, says: &str) {
    let mut all = vec!["approval"];
    all.extend_from_slice(args);
    let r = who.run(&all, name).expect_fail(name);
    assert_eq!(r.code, Some(REFUSED), "{}", r.describe());
    assert!(
        r.stderr.contains(says),
        "expected {says:?}: {}",
        r.describe()
    );
}

fn approval(who: &Cli, args: &[&str], name: &str) -> String {
    let mut all = vec!["approval"];
    all.extend_from_slice(args);
    let r = who.run(&all, name).expect_ok(name);
    r.stdout
}

fn propose(who: &Cli, args: &[&str], name: &str) -> String {
    let mut all = vec!["propose"];
    all.extend_from_slice(args);
    let out = approval(who, &all, name);
    let id = out.lines().last().unwrap_or_default().trim().to_owned();
    id.parse::<ProposalId>()
        .unwrap_or_else(|e| panic!("propose must print the proposal id last ({e}): {out}"));
    id
}

#[test]
fn a_grant_approved_by_two_of_three_departments_runs_on_the_second_approval() {
    let w = world();
    let (b, c, d, e) = (&w.depts[0], &w.depts[1], &w.depts[2], &w.depts[3]);
    let (input, bytes) = w.input("licence.bin", 40 << 10, 21);
    let doc = w.a.put(&input, "put");
    let to = w.address(0);
    let approvers = w.approvers(&[0, 1, 2]);
    let id = propose(
        &w.a,
        &[
            "grant",
            &doc,
            "--to",
            &to,
            "--approvers",
            &approvers,
            "--required",
            "2",
            "--expires-in",
            "1000",
        ],
        "propose",
    );
    // b lists it; the grantee reads nothing yet.
    assert!(approval(&b.cli, &["list"], "list-b").contains(&id));
    let out = w.root.join("out.bin");
    b.cli
        .get(&doc, &out, "get-before")
        .expect_fail("read before approval");

    // A department not named, and an approval in c's name signed by b: refused.
    refused(
        &e.cli,
        &["approve", &id],
        "approve-e",
        "is not one of the approvers",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let forged = rt.block_on(async {
        let b_key = Identity::load(&b.key).unwrap();
        let client = ClusterFile::load(&w.cluster.path("cluster.toml"))
            .unwrap()
            .connect(&b_key)
            .await
            .unwrap();
        let chain = client.chain().unwrap();
        let c_id = c.id.parse().unwrap();
        let nonce = chain.account(&c_id).await.unwrap().unwrap().nonce + 1;
        let mut tx = Tx {
            sender: b_key.public(),
            nonce,
            body: TxBody::Approve {
                proposal: id.parse().unwrap(),
            },
        }
        .sign(&b_key, &chain.chain_key().await.unwrap());
        tx.tx.sender = c_id;
        let result = chain.submit_tx(&tx).await;
        client.close().await;
        result
    });
    let err = forged
        .expect_err("an approval in another's name")
        .to_string();
    assert!(err.contains("signature does not verify"), "{err}");

    // The first approval: recorded, nothing carried out; the same approver again: refused.
    let first = approval(&b.cli, &["approve", &id], "approve-b");
    assert!(first.contains("open"), "{first}");
    refused(
        &b.cli,
        &["approve", &id],
        "approve-b-again",
        "already approved",
    );
    b.cli
        .get(&doc, &out, "get-after-one")
        .expect_fail("read after one approval");

    // The second: carried out in the same transaction; the grantee reads.
    let second = approval(&c.cli, &["approve", &id], "approve-c");
    assert!(second.contains("carried out in block"), "{second}");
    b.cli
        .get(&doc, &out, "get-after")
        .expect_ok("read once approved");
    assert!(
        fs::read(&out).unwrap() == bytes,
        "the grantee read other bytes"
    );

    // Decided: the third approver is refused; the status says who and what, proven.
    refused(&d.cli, &["approve", &id], "approve-d", "is closed");
    let status = approval(&w.a, &["status", &id], "status");
    for line in [
        format!("approved  {}", b.id),
        format!("approved  {}", c.id),
        "outcome   carried out in block".to_string(),
    ] {
        assert!(status.contains(&line), "{line:?} missing: {status}");
    }
    assert!(!approval(&d.cli, &["list"], "list-d").contains(&id));
}

#[test]
fn a_registration_happens_only_once_approved() {
    let w = world();
    let (b, c) = (&w.depts[0], &w.depts[1]);
    let (input, bytes) = w.input("business-licence.bin", 30 << 10, 22);
    let approvers = w.approvers(&[0, 1]);
    let run =
        w.a.run(
            [
                "approval",
                "propose",
                "register",
                input.to_str().unwrap(),
                "--approvers",
                &approvers,
                "--required",
                "2",
                "--expires-in",
                "1000",
            ],
            "propose",
        )
        .expect_ok("propose register");
    let id = run.last_line();
    let doc = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("stored "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("propose says what it stored: {}", run.describe()))
        .to_owned();

    let out = w.root.join("out.bin");
    let before =
        w.a.get(&doc, &out, "get-before")
            .expect_fail("read before approval");
    assert!(
        before.stderr.contains("not registered"),
        "{}",
        before.describe()
    );

    // The operator collects orphans with no grace: the waiting document's bytes stay.
    let operator = Cli::new(
        &w.cluster,
        &w.cluster.path("keys/operator.key"),
        &w.root.join("operator-keyring"),
    )
    .with_data_dir(w.root.join("operator"));
    operator
        .run(["collect", "--grace-hours", "0"], "collect")
        .expect_ok("collect");

    approval(&b.cli, &["approve", &id], "approve-b");
    w.a.get(&doc, &out, "get-half")
        .expect_fail("read after one of two approvals");
    let second = approval(&c.cli, &["approve", &id], "approve-c");
    assert!(second.contains("carried out in block"), "{second}");
    // Registered now, owned by the proposer: its record proven from the chain's state.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (record, a) = rt.block_on(async {
        let a_key = Identity::load(w.cluster.path("keys/department.key")).unwrap();
        let client = ClusterFile::load(&w.cluster.path("cluster.toml"))
            .unwrap()
            .connect(&a_key)
            .await
            .unwrap();
        let record = client.chain().unwrap().record(&doc.parse().unwrap()).await;
        client.close().await;
        (record.unwrap(), a_key.public())
    });
    assert_eq!(record.expect("registered once approved").owner, a);
    // NOT YET: `get` after an approved registration still fails, because a read proves the
    // registration by the inclusion of a transaction naming the document
    // (`TxInclusion::verify_registration`), and here the `Approve` carried it out (see
    // docs/approvals.md, "Not built yet"). Once that is built, this reads back `bytes`:
    // w.a.get(&doc, &out, "get-after").expect_ok("read once registered");
    drop(bytes);
}

#[test]
fn a_workflow_that_expires_does_nothing() {
    let w = world();
    let (b, c) = (&w.depts[0], &w.depts[1]);
    let (input, _) = w.input("record.bin", 8 << 10, 23);
    let doc = w.a.put(&input, "put");
    let to = w.address(0);
    let approvers = w.approvers(&[0, 1]);
    let id = propose(
        &w.a,
        &[
            "grant",
            &doc,
            "--to",
            &to,
            "--approvers",
            &approvers,
            "--required",
            "2",
            "--expires-in",
            "1",
        ],
        "propose",
    );
    // Two more blocks: the proposal's one block for answers has passed.
    for i in 0..2 {
        let (more, _) = w.input(&format!("more{i}.bin"), 1 << 10, 30 + i);
        w.a.put(&more, &format!("put-more{i}"));
    }
    refused(&b.cli, &["approve", &id], "approve-b", "expired at height");
    refused(&c.cli, &["approve", &id], "approve-c", "expired at height");
    let status = approval(&w.a, &["status", &id], "status");
    assert!(status.contains("outcome   expired"), "{status}");
    assert!(!status.contains("approved  "), "{status}");
    let out = w.root.join("out.bin");
    b.cli
        .get(&doc, &out, "get")
        .expect_fail("an expired grant proposal grants nothing");
}

#[test]
fn refusals_that_make_the_approvals_unreachable_end_the_workflow() {
    let w = world();
    let (b, c, d) = (&w.depts[0], &w.depts[1], &w.depts[2]);
    let (input, _) = w.input("minutes.bin", 8 << 10, 24);
    let doc = w.a.put(&input, "put");
    let to = w.address(2);
    let approvers = w.approvers(&[0, 1, 2]);
    let id = propose(
        &w.a,
        &[
            "grant",
            &doc,
            "--to",
            &to,
            "--approvers",
            &approvers,
            "--required",
            "2",
            "--expires-in",
            "1000",
        ],
        "propose",
    );
    let one = approval(&b.cli, &["refuse", &id, "--reason", "not ours"], "refuse-b");
    assert!(one.contains("open"), "{one}");
    let two = approval(&c.cli, &["refuse", &id, "--reason", "no basis"], "refuse-c");
    assert!(two.contains("refused in block"), "{two}");
    refused(&d.cli, &["approve", &id], "approve-d", "is closed");
    let status = approval(&w.a, &["status", &id], "status");
    assert!(status.contains(&format!("refused   {}", b.id)), "{status}");
    assert!(status.contains("not ours"), "{status}");
    let out = w.root.join("out.bin");
    d.cli
        .get(&doc, &out, "get")
        .expect_fail("a refused grant grants nothing");
}
