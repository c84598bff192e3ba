//! The gateway's S3 service against real clients: a local cluster (six peers, a validator,
//! real QUIC and redb), the gateway started with `s3_listen` on 127.0.0.1:0, and boto3 and
//! botocore from PyPI (in the venv `scripts/test-deps.sh s3` makes) running
//! `tests/s3/clients.py`. The Rust side checks what the clients cannot: that an object
//! stored through S3 is an ordinary document (read with `Client::get`, its versions on
//! chain), and that the chain refuses another department's writes into a bucket.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;

use dangan::chain::tx::TxBody;
use dangan::client::Client;
use dangan::cluster::LocalCluster;
use dangan::gateway::{self, Gateway, GatewayDb, GatewayLimits, GatewaySetup};
use dangan::id::DocumentId;
use dangan::keyring::Keyring;

use crate::common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python, made once per test binary by `scripts/test-deps.sh s3`.
fn python() -> PathBuf {
    static DONE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let done = DONE.get_or_init(|| {
        common::test_deps(Some("s3"), "the S3 tests' clients are missing");
        let venv = std::env::var_os("DANGAN_S3_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/dangan/s3-venv")
            });
        Ok(venv.join("bin/python"))
    });
    match done {
        Ok(p) => p.clone(),
        Err(e) => panic!("the S3 tests' clients are missing: {e}"),
    }
}

struct S3Gw {
    cluster: LocalCluster,
    gateway: Gateway,
    endpoint: String,
    access_key: String,
    secret: String,
    keyring: Keyring,
    /// The department's own client, for checks from outside the gateway.
    dept: Client,
}

async fn start() -> S3Gw {
    let cluster = LocalCluster::start(6, 3).await.unwrap();
    let root = cluster.root().to_path_buf();
    let data_dir = root.join("gateway");
    let db = GatewayDb::open(&data_dir).unwrap();
    let access_key = db.s3_key_add("tests").unwrap().access_key;
    drop(db);
    let secret = gateway::s3::secret_key(cluster.department(), &access_key).unwrap();
    let keyring = Keyring::open(root.join("keyring")).unwrap();
    let gateway = gateway::start(GatewaySetup {
        listen: "127.0.0.1:0".parse().unwrap(),
        s3_listen: Some("127.0.0.1:0".parse().unwrap()),
        client: common::department(&cluster),
        keyring: keyring.clone(),
        data_dir,
        department: "civil-registry".into(),
        limits: GatewayLimits::default(),
        metrics_listen: None,
    })
    .await
    .unwrap();
    S3Gw {
        endpoint: format!("http://{}", gateway.s3_addr().unwrap()),
        dept: common::department(&cluster),
        cluster,
        gateway,
        access_key,
        secret,
        keyring,
    }
}

impl S3Gw {
    /// Runs `clients.py scenario` against this gateway; its stdout, or a panic with both
    /// outputs if it failed.
    async fn run(&self, scenario: &str, bucket: &str, extra: &[(&str, &str)]) -> String {
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg(root().join("tests/s3/clients.py"))
            .arg(scenario)
            .env("S3_ENDPOINT", &self.endpoint)
            .env("S3_BUCKET", bucket)
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().await.expect("python runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && stdout.lines().last() == Some("done"),
            "clients.py {scenario} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    async fn stop(self) {
        self.gateway.stop().await.unwrap();
        drop(self.cluster);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_stores_reads_ranges_versions_and_deletes_and_each_object_is_a_document() {
    let gw = start().await;
    let out = gw.run("basic", "records", &[]).await;
    // The object the clients named: its current version is an ordinary document, read with
    // the library's client and the department's keyring, superseding the first PUT.
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("object: "))
        .expect("clients.py names its object");
    let parts: Vec<&str> = line.split(' ').collect();
    let (bucket, key) = (parts[0], parts[1]);
    let new = DocumentId::from_str(parts[2]).unwrap();
    let old = DocumentId::from_str(parts[3]).unwrap();
    let bytes = common::read(&gw.dept, &new, &gw.keyring.load(&new).unwrap()).await;
    assert_eq!(bytes, b"the second version");
    let chain = gw.dept.chain().unwrap();
    let record = chain.check_registered(&new).await.unwrap();
    assert_eq!(record.owner, gw.dept.public());
    assert_eq!(record.supersedes.map(|p| p.document), Some(old));
    let first = chain.check_registered(&old).await.unwrap();
    assert_eq!(first.superseded_by, Some(new));
    assert_eq!(
        common::read(&gw.dept, &old, &gw.keyring.load(&old).unwrap())
            .await
            .len(),
        3 * 1024 * 1024 + 12345
    );
    // The name is on chain: any client of the department (any gateway) sees it.
    let other_client = common::department(&gw.cluster);
    let name = other_client
        .chain()
        .unwrap()
        .name(bucket, key)
        .await
        .unwrap();
    // clients.py put a third version after naming the second.
    let name = name.expect("the name is bound");
    assert_eq!(name.versions, 3);
    let third = chain.check_registered(&name.document).await.unwrap();
    assert_eq!(third.supersedes.map(|p| p.document), Some(new));
    gw.stop().await;
}

/// Runs the `multipart` scenario with `mib` MiB objects and checks the boto3 one from Rust:
/// an ordinary document (manifest version 2, one piece a part), registered by the
/// department, read back byte-identical with the library's client.
async fn multipart(mib: u32) {
    let gw = start().await;
    let mib = mib.to_string();
    let out = gw.run("multipart", "parts", &[("S3_MP_MIB", &mib)]).await;
    // The clients' figures (upload time), shown with `--nocapture`.
    println!("{out}");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("object: "))
        .expect("clients.py names its object");
    let parts: Vec<&str> = line.split(' ').collect();
    let id = DocumentId::from_str(parts[2]).unwrap();
    let record = gw
        .dept
        .chain()
        .unwrap()
        .check_registered(&id)
        .await
        .unwrap();
    assert_eq!(record.owner, gw.dept.public());
    let manifest = gw.dept.manifest(&id).await.unwrap();
    assert_eq!(manifest.version, dangan::manifest::MANIFEST_VERSION_PIECES);
    let size: u64 = (mib.parse::<u64>().unwrap() << 20) + 12345;
    assert_eq!(manifest.size, size);
    assert_eq!(manifest.pieces.len() as u64, size.div_ceil(8 << 20));
    let bytes = common::read(&gw.dept, &id, &gw.keyring.load(&id).unwrap()).await;
    use md5::Digest;
    assert_eq!(hex::encode(md5::Md5::digest(&bytes)), parts[3]);
    gw.stop().await;
}

/// 200 MiB, the size, each way (boto3 and the AWS CLI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_the_cli_upload_in_parallel_parts_and_each_upload_is_a_document() {
    multipart(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_lists_1500_objects_by_prefix_delimiter_and_continuation() {
    let gw = start().await;
    gw.run("listing", "many", &[]).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_refuses_wrong_secrets_skew_expired_presigns_and_another_departments_bucket() {
    let gw = start().await;
    let other = common::client_as(&gw.cluster, gw.cluster.other_department());
    other
        .chain()
        .unwrap()
        .submit(TxBody::CreateBucket {
            bucket: "other-dept".into(),
        })
        .await
        .unwrap();
    gw.run("auth", "mine", &[("S3_OTHER_BUCKET", "other-dept")])
        .await;
    // The chain itself refuses another department's names in this department's bucket,
    // and another department's listing of them.
    let refused = other
        .chain()
        .unwrap()
        .submit(TxBody::PutName {
            bucket: "mine".into(),
            key: "planted".into(),
            document: DocumentId::of(b"planted"),
            size: 1,
            meta: vec![],
        })
        .await;
    assert!(
        matches!(refused, Err(dangan::chain::client::ChainError::Refused(_))),
        "{refused:?}"
    );
    let listed = other
        .chain()
        .unwrap()
        .names("mine", "", None, b"", 10)
        .await;
    assert!(listed.is_err(), "{listed:?}");
    gw.stop().await;
}

/// `dangan bench s3` at a tiny size, so it keeps working: the gateway as its own process
/// with its S3 service, boto3 putting and getting (the bench checks the MD5 of every GET
/// and `dangan get`'s file: a mismatch is an error), `dangan put`/`get` alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_s3_runs_and_checks_what_it_reads() {
    use dangan::bench::s3::{self as bench, S3BenchOptions};
    let options = S3BenchOptions {
        peers: 6,
        large: (3 << 20) + 4321,
        repetitions: 1,
        small_count: 24,
        small: 6 << 10,
        threads: 4,
        ..S3BenchOptions::new(common::process::BIN.into(), python())
    };
    let report = bench::run(options.clone()).await.unwrap();
    for runs in [
        &report.put_s3,
        &report.put_cli,
        &report.get_s3,
        &report.get_cli,
    ] {
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].bytes, options.large);
    }
    assert!(report.small.per_second > 0.0 && report.small.p99 >= report.small.p50);
    assert!(report.peak_put.is_some_and(|b| b > 0));
    let text = report.to_string();
    assert!(text.contains("S3 / CLI"), "{text}");
}
