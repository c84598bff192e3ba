//! Metrics and health probes on a running cluster: every node (the validator's too) and a
//! gateway serve `/metrics` on 127.0.0.1, checked by `promtool check metrics` (Debian's
//! prometheus package, installed by `scripts/test-deps.sh metrics`); the figures move by at
//! least the work done (puts, a get, a refused request, a scrub, gateway requests);
//! `/healthz` and `/readyz` answer; `dangan cluster status` (`Operator::status`) shows what
//! the metrics show; and a peer whose chain is gone says it is not ready.

use std::net::SocketAddr;
use std::sync::Arc;

use dangan::cluster::LocalCluster;
use dangan::gateway::{self, GatewayLimits, GatewaySetup};
use dangan::keyring::Keyring;
use dangan::net::NetError;
use dangan::ops::{self, OpsOptions};
use dangan::proto::ErrorCode;

use crate::common;

/// `promtool`, installed once per test binary by `scripts/test-deps.sh metrics`.
fn promtool() -> &'static str {
    common::test_deps(
        Some("metrics"),
        "promtool is needed to check the exposition",
    );
    "promtool"
}

/// `promtool check metrics` on `text`: must find no problem at all.
fn check_exposition(what: &str, text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {what}: {said}\n--- exposition:\n{text}"
    );
}

async fn http(addr: SocketAddr, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, text) = http(addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text
}

/// The sum of the samples of `name` whose labels include every pair of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The sum of `name` over all the cluster's storage peers.
async fn over_peers(cluster: &LocalCluster, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for i in 0..cluster.len() {
        total += sum(
            &scrape(cluster.metrics_addr(i).unwrap()).await,
            name,
            labels,
        );
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_exposes_metrics_that_move_with_work_and_says_when_it_is_not_ready() {
    let mut cluster = LocalCluster::start_observed(6, 3).await.unwrap();
    let dept = common::department(&cluster);
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway::start(GatewaySetup {
        listen: "127.0.0.1:0".parse().unwrap(),
        s3_listen: None,
        client: common::department(&cluster),
        keyring: Keyring::open(dir.path().join("keyring")).unwrap(),
        data_dir: dir.path().join("gateway"),
        department: "civil-registry".into(),
        limits: GatewayLimits::default(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
    })
    .await
    .unwrap();
    let validator = cluster.validator_metrics_addr().unwrap();
    let gw_metrics = gateway.metrics_addr().unwrap();

    // Every exposition is clean, and every node is alive and ready.
    let mut nodes: Vec<SocketAddr> = (0..cluster.len())
        .map(|i| cluster.metrics_addr(i).unwrap())
        .collect();
    nodes.push(validator);
    for addr in &nodes {
        assert_eq!(http(*addr, "/healthz").await.0, 200);
        let (status, why) = http(*addr, "/readyz").await;
        assert_eq!(status, 200, "{addr}: {why}");
    }
    assert_eq!(http(gw_metrics, "/readyz").await.0, 200);

    let served = [("outcome", "served")];
    let gets = [("kind", "get_shard"), ("outcome", "served")];
    let refused = [("outcome", "refused")];
    let shards0 = over_peers(&cluster, "dangan_store_shards", &[]).await;
    let bytes0 = over_peers(&cluster, "dangan_store_bytes", &[]).await;
    let gets0 = over_peers(&cluster, "dangan_peer_requests_total", &gets).await;
    let refused0 = over_peers(&cluster, "dangan_peer_requests_total", &refused).await;
    let checked0 = over_peers(&cluster, "dangan_scrub_shards_checked_total", &[]).await;
    let v0 = scrape(validator).await;
    let height0 = sum(&v0, "dangan_chain_height", &[]);
    let commits0 = sum(&v0, "dangan_chain_commit_duration_seconds_count", &[]);
    let served0 = sum(&v0, "dangan_peer_requests_total", &served);

    // The work: two documents of two stripes each, one read back, one refused request, a
    // scrub, and three gateway requests.
    let params = common::small_params();
    // A stripe holds `segments_per_stripe` segments, cut into k shards.
    let stripe = params.segment_size as usize * params.segments_per_stripe as usize;
    let mut stored = 0;
    let mut puts = Vec::new();
    for seed in 0..2 {
        let put = common::put(&dept, &common::data(stripe + 1000, seed))
            .await
            .unwrap();
        stored += put.shards_stored;
        puts.push(put);
    }
    assert_eq!(stored, 2 * 2 * u64::from(params.k + params.m));
    let bytes = common::read(&dept, &puts[0].id, &puts[0].key).await;
    assert_eq!(bytes, common::data(stripe + 1000, 0));
    let node = cluster.layout().nodes[0].clone();
    let err = dept.net().node_status(&node).await.unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::Refused), "{err}");
    let ops_dir = tempfile::tempdir().unwrap();
    let scrub = cluster
        .operator_ops(ops_dir.path())
        .scrub(&OpsOptions::default(), &|_| {})
        .await
        .unwrap();
    assert!(scrub.corrupt.is_empty() && scrub.failures.is_empty());
    let gw = gateway.addr();
    assert_eq!(http(gw, "/openapi.json").await.0, 200);
    assert_eq!(http(gw, "/api/v1/documents").await.0 / 100, 4);

    // Every figure moved by at least what was done.
    let shards1 = over_peers(&cluster, "dangan_store_shards", &[]).await;
    assert!(shards1 - shards0 >= stored as f64, "{shards0} -> {shards1}");
    let bytes1 = over_peers(&cluster, "dangan_store_bytes", &[]).await;
    // The store counts shards' true lengths: at least the two documents' bytes (parity more).
    assert!(
        bytes1 - bytes0 >= (2 * (stripe + 1000)) as f64,
        "{bytes0} -> {bytes1}"
    );
    let gets1 = over_peers(&cluster, "dangan_peer_requests_total", &gets).await;
    assert!(
        gets1 - gets0 >= 2.0 * f64::from(params.k),
        "{gets0} -> {gets1}"
    );
    let refused1 = over_peers(&cluster, "dangan_peer_requests_total", &refused).await;
    assert!(refused1 > refused0, "{refused0} -> {refused1}");
    let checked1 = over_peers(&cluster, "dangan_scrub_shards_checked_total", &[]).await;
    assert!(checked1 - checked0 >= scrub.shards_checked as f64);
    assert!(scrub.shards_checked >= stored);
    let v1 = scrape(validator).await;
    assert!(sum(&v1, "dangan_chain_height", &[]) >= height0 + 2.0);
    assert!(sum(&v1, "dangan_chain_commit_duration_seconds_count", &[]) >= commits0 + 2.0);
    assert!(sum(&v1, "dangan_peer_requests_total", &served) >= served0 + 2.0);
    assert_eq!(sum(&v1, "dangan_raft_role", &[("role", "leader")]), 1.0);
    let latency = over_peers(
        &cluster,
        "dangan_peer_request_duration_seconds_count",
        &[("kind", "get_shard")],
    )
    .await;
    assert!(latency >= gets1, "every request timed: {latency} < {gets1}");
    let g = scrape(gw_metrics).await;
    let route = [("route", "/openapi.json"), ("status", "2xx")];
    assert!(sum(&g, "dangan_gateway_http_requests_total", &route) >= 1.0);
    assert!(
        sum(
            &g,
            "dangan_gateway_http_requests_total",
            &[("status", "4xx")]
        ) >= 1.0
    );
    assert!(
        sum(
            &g,
            "dangan_gateway_http_body_bytes_total",
            &[("direction", "out")]
        ) > 0.0
    );

    // The expositions, now that every family has samples, pass promtool.
    for (i, addr) in nodes.iter().enumerate() {
        check_exposition(&format!("node {i}"), &scrape(*addr).await);
    }
    check_exposition("the gateway", &g);

    // `dangan cluster status` shows, per peer, what its metrics show.
    let status = cluster
        .operator_ops(ops_dir.path())
        .status(&|_| {})
        .await
        .unwrap();
    let table = status.table();
    assert_eq!(status.peers.len(), cluster.len());
    for (i, p) in status.peers.iter().enumerate() {
        let s = p.status.as_ref().unwrap();
        let text = scrape(cluster.metrics_addr(i).unwrap()).await;
        assert_eq!(s.shards as f64, sum(&text, "dangan_store_shards", &[]));
        assert_eq!(s.bytes as f64, sum(&text, "dangan_store_bytes", &[]));
        assert_eq!(s.not_ready, None);
        let line = table
            .lines()
            .find(|l| l.starts_with(&p.node.key.short()))
            .unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols[3..6],
            ["up", &s.shards.to_string(), &s.bytes.to_string()]
        );
    }
    assert!(
        table.contains("2 documents, 4 stripes, 0 below full redundancy"),
        "{table}"
    );

    // With the chain gone, a peer is alive but not ready, and says why.
    cluster.stop_validator().await;
    let peer = cluster.metrics_addr(0).unwrap();
    assert_eq!(http(peer, "/healthz").await.0, 200);
    let (status, why) = http(peer, "/readyz").await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("chain unreachable"), "{why}");
    let (status, _) = http(gw_metrics, "/readyz").await;
    assert_eq!(status, 503);

    gateway.stop().await.unwrap();
    cluster.shutdown().await;
}

/// Only operators see a node's status; what they see is what the store holds.
#[tokio::test]
async fn node_status_is_for_operators() {
    let cluster = LocalCluster::start(3, 3).await.unwrap();
    let node = cluster.layout().nodes[0].clone();
    let operator = common::client_as(&cluster, cluster.operator());
    let status = operator.net().node_status(&node).await.unwrap();
    let held = cluster.peer(0).unwrap().store().usage().unwrap();
    assert_eq!((status.shards, status.bytes), (held.shards, held.bytes));
    assert_eq!(status.not_ready, None);
    assert!(status.validator.is_none());
    let dept = common::department(&cluster);
    let err: NetError = dept.net().node_status(&node).await.unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::Refused), "{err}");
    cluster.shutdown().await;
}

/// The maintenance service (`dangan maintain`) owns the walks that count what no peer can
/// see: a round of scrub and repair over corrupt copies shows them found, the stripes they
/// left below k + m, the shards rebuilt and each job's progress at its end; with a peer
/// down, the stripes repair could not bring back show, and `/readyz` says what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_maintenance_service_counts_stripes_below_redundancy_and_shows_its_progress() {
    let (mut cluster, client) = common::start_cluster(6, 3).await;
    for seed in 0..3 {
        common::put(&client, &common::data(300 << 10, seed))
            .await
            .unwrap();
    }
    client.close().await;
    // Three corrupt copies on one peer: three stripes (a stripe has one shard per peer).
    let store = cluster.peer(0).unwrap().store();
    let held = store.list().unwrap();
    assert!(held.len() >= 3, "{} shards on peer 0", held.len());
    for (i, id) in held.iter().take(3).enumerate() {
        assert!(store.corrupt_for_test(id, 7 + i).unwrap());
    }

    let mut registry =
        dangan::metrics::prometheus_client::registry::Registry::with_prefix("dangan");
    let metrics = ops::MaintainMetrics::new(&mut registry);
    let m = metrics.clone();
    let ready: dangan::metrics::Ready = Arc::new(move || {
        let problem = m.last_problem();
        Box::pin(async move { problem.map_or(Ok(()), Err) })
    });
    let server = dangan::metrics::serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry), ready)
        .await
        .unwrap();
    let addr = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let op = cluster.operator_ops(dir.path());
    let jobs = ops::Jobs {
        scrub: true,
        repair: true,
        collect: None,
    };

    let round = op
        .maintain_once(&OpsOptions::default(), &jobs, Some(&metrics), 1)
        .await;
    assert!(round.problems().is_empty(), "{:?}", round.problems());
    let repair = round.repair.as_ref().unwrap().as_ref().unwrap();
    let text = scrape(addr).await;
    check_exposition("the maintenance service", &text);
    assert_eq!(
        sum(&text, "dangan_scrub_corrupt_shards_found_total", &[]),
        3.0
    );
    assert_eq!(sum(&text, "dangan_stripes_below_redundancy", &[]), 3.0);
    assert_eq!(sum(&text, "dangan_repair_shards_rebuilt_total", &[]), 3.0);
    assert_eq!(sum(&text, "dangan_stripes_unrepaired", &[]), 0.0);
    assert_eq!(sum(&text, "dangan_stripes", &[]), repair.stripes as f64);
    assert_eq!(sum(&text, "dangan_documents", &[]), 3.0);
    for job in ["scrub", "repair"] {
        let j = [("job", job)];
        let done = sum(&text, "dangan_maintenance_units_done", &j);
        assert!(done > 0.0, "{job}: nothing done\n{text}");
        assert_eq!(
            done,
            sum(&text, "dangan_maintenance_units_planned", &j),
            "{job}"
        );
        assert_eq!(sum(&text, "dangan_maintenance_running", &j), 0.0);
        assert_eq!(
            sum(
                &text,
                "dangan_maintenance_runs_total",
                &[("job", job), ("outcome", "ok")]
            ),
            1.0
        );
        assert!(
            sum(
                &text,
                "dangan_maintenance_last_success_timestamp_seconds",
                &j
            ) > 1.7e9
        );
    }
    assert!(
        sum(&text, "dangan_maintenance_bytes_total", &[("job", "scrub")]) > 0.0,
        "{text}"
    );
    assert_eq!(http(addr, "/readyz").await.0, 200);

    // A peer down: every stripe has a shard there, none can be brought back to k + m.
    cluster.stop_peer(5).await.unwrap();
    let round = op
        .maintain_once(&OpsOptions::default(), &jobs, Some(&metrics), 2)
        .await;
    assert!(!round.problems().is_empty());
    let text = scrape(addr).await;
    check_exposition("the maintenance service, a peer down", &text);
    assert_eq!(
        sum(&text, "dangan_stripes_below_redundancy", &[]),
        repair.stripes as f64
    );
    assert!(sum(&text, "dangan_stripes_unrepaired", &[]) > 0.0, "{text}");
    assert_eq!(
        sum(
            &text,
            "dangan_maintenance_runs_total",
            &[("job", "repair"), ("outcome", "incomplete")]
        ),
        1.0
    );
    let (status, why) = http(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(why.contains("repair"), "{why}");
    server.stop().await;
    cluster.shutdown().await;
}
