//! The `dangan demo` story: a whole cluster started in this process (`cluster`), then
//! documents stored and fetched, peers lost, grants given and revoked, reads audited and
//! the layout changed, each step told with its timing and checked. [`run`] tells the
//! chapters in order, one function each, passing on what they share (`Story`).
//!
//! Not here: the embedded cluster itself (`cluster`) or measurements (`bench`).

use std::time::{Duration, Instant};

use crate::client::{Client, ClientError, ClientOptions, PutReceipt};
use crate::cluster::{
    ClusterError, LocalCluster, get_bytes, put_bytes, sample_certificate, sample_data,
};
use crate::crypto::DataKey;
use crate::identity::{Identity, Role};
use crate::manifest::CodingParams;
use crate::peer::PeerLimits;
use crate::placement::Layout;
use crate::revision::RevisionReport;

/// One line of the demo's story.
pub type Step<'a> = &'a mut (dyn FnMut(&str) + Send);

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mbps(bytes: u64, d: Duration) -> String {
    format!("{:.0} MB/s", bytes as f64 / d.as_secs_f64() / 1e6)
}

fn block_of(receipt: &PutReceipt) -> String {
    receipt
        .registered
        .map_or("(none)".into(), |(height, _)| height.to_string())
}

/// `dangan demo`: the story in chapters, each told to `step` line by line with its
/// timings and checked: 6 peers started and two documents (a certificate and a
/// `big_mib` MiB file) stored and fetched; 2 peers lost and both fetched again; the
/// certificate granted to a citizen and refused to a neighbour, then revoked and rekeyed;
/// the reads audited against the chain; a peer added, one drained, and the layout checked.
pub async fn run(big_mib: usize, step: Step<'_>) -> Result<(), ClusterError> {
    let (mut story, client) = store(big_mib, step).await?;
    lose_two_peers(&mut story, &client, step).await?;
    let grant = grant(&story, &client, step).await?;
    let (owner, rekeyed) = revoke_and_rekey(&story, client, &grant, step).await?;
    audit(&story, &owner, &grant, step).await?;

    let cert_now = PutReceipt {
        id: rekeyed.new,
        manifest: owner.manifest(&rekeyed.new).await?,
        key: rekeyed.key.clone(),
        shards_stored: 0,
        shards_missing: Vec::new(),
        shards_standing_in: Vec::new(),
        registered: Some((rekeyed.height, 0)),
        timings: Default::default(),
    };
    owner.close().await;

    let docs = [(&cert_now, &story.cert), (&story.big_put, &story.big)];
    add_and_drain(&mut story.cluster, &docs, step).await?;
    check_layout(&story.cluster, story.params, &docs, step).await?;
    story.cluster.shutdown().await;
    step("all checks passed; cluster stopped and its temporary files removed");
    Ok(())
}

/// What the chapters share: the cluster and the two documents with their receipts.
struct Story {
    cluster: LocalCluster,
    params: CodingParams,
    cert: Vec<u8>,
    big: Vec<u8>,
    cert_put: PutReceipt,
    big_put: PutReceipt,
}

/// The grant chapter's cast, for the revocation and the audit after it.
struct Grant {
    citizen: Identity,
    neighbour: Identity,
    /// The citizen's client, still open: it asks for the key again after the revocation.
    as_citizen: Client,
    /// The data key the citizen took from their grant.
    key: DataKey,
}

/// Chapter 1: starts the cluster and stores the certificate and the large file; returns
/// the story so far and the department's client.
async fn store(big_mib: usize, step: Step<'_>) -> Result<(Story, Client), ClusterError> {
    let t = Instant::now();
    // Peers commit the roots of their read records every half second, so the audit at the
    // end of the grant story is checked against the chain without a wait.
    let limits = PeerLimits {
        audit_interval: Duration::from_millis(500),
        ..PeerLimits::default()
    };
    let cluster = LocalCluster::start_with(6, 3, limits).await?;
    let params = CodingParams::default();
    step(&format!(
        "started 6 storage peers in 3 zones on 127.0.0.1 (QUIC, mutual TLS, redb) in {}",
        ms(t.elapsed())
    ));
    for i in 0..cluster.len() {
        let p = cluster.peer(i).expect("just started");
        step(&format!(
            "  peer {i}: {} at {} ({})",
            p.id(),
            p.addr(),
            cluster.zone(i).expect("just started")
        ));
    }
    let client = cluster.client(ClientOptions::default())?;
    step(&format!(
        "coding: k={} data + m={} parity shards per stripe, shards of {} KiB",
        params.k,
        params.m,
        params.full_shard_len() >> 10
    ));

    let cert = sample_certificate();
    let t = Instant::now();
    let cert_put = put_bytes(&client, cert.clone(), "birth-certificate").await?;
    step(&format!(
        "put certificate ({} bytes) -> document {} in {}, registered in block {}",
        cert.len(),
        cert_put.id,
        ms(t.elapsed()),
        block_of(&cert_put)
    ));
    let big = sample_data(big_mib << 20, 7);
    let t = Instant::now();
    let big_put = put_bytes(&client, big.clone(), "archive-scan").await?;
    let d = t.elapsed();
    step(&format!(
        "put {big_mib} MiB file -> document {} in {} ({}, {} shards), registered in block {}",
        big_put.id,
        ms(d),
        mbps(big.len() as u64, d),
        big_put.shards_stored,
        block_of(&big_put)
    ));
    let story = Story {
        cluster,
        params,
        cert,
        big,
        cert_put,
        big_put,
    };
    Ok((story, client))
}

/// Chapter 2: both documents fetched with all peers up, then with the two peers down that
/// hold the large file's first data shards (so the read rebuilds from parity); the chain's
/// status; the two peers restarted.
async fn lose_two_peers(
    story: &mut Story,
    client: &Client,
    step: Step<'_>,
) -> Result<(), ClusterError> {
    for line in fetch_both(story, client, "with all peers up").await? {
        step(&line);
    }
    // Stop the two peers holding the first data shards of the large file's first stripe,
    // so the read must rebuild from parity.
    let cluster = &mut story.cluster;
    let first = &story.big_put.manifest.stripes[0];
    let placed = cluster
        .layout()
        .place(&crate::client::stripe_key(first), first.len())?;
    let victims: Vec<usize> = placed
        .iter()
        .take(usize::from(story.params.m))
        .filter_map(|n| cluster.index_of(&n.key))
        .collect();
    for &v in &victims {
        cluster.stop_peer(v).await?;
        step(&format!("stopped peer {v}"));
    }
    for line in fetch_both(story, client, "with 2 peers down").await? {
        step(&line);
    }
    let cluster = &mut story.cluster;
    let status = cluster.ledger().status();
    step(&format!(
        "chain: {} blocks, {} documents registered, state root {}",
        status.height,
        status.documents,
        hex::encode(&status.state_root[..8])
    ));

    // Operations: the stopped peers come back, a seventh peer joins, one peer is drained.
    for &v in &victims {
        cluster.restart_peer(v).await?;
        step(&format!("restarted peer {v}"));
    }
    Ok(())
}

/// Fetches both documents and checks their bytes; returns the lines telling it, once both
/// are read.
async fn fetch_both(
    story: &Story,
    client: &Client,
    label: &'static str,
) -> Result<Vec<String>, ClusterError> {
    let (cert, big) = (&story.cert, &story.big);
    let (cert_put, big_put) = (&story.cert_put, &story.big_put);
    let mut lines = Vec::new();
    let t = Instant::now();
    let (out, _) = get_bytes(client, &cert_put.id, &cert_put.key).await?;
    if &out != cert {
        return Err(ClusterError::Check("certificate bytes differ".into()));
    }
    lines.push(format!(
        "get certificate {label}: identical, in {}",
        ms(t.elapsed())
    ));
    let t = Instant::now();
    let (out, report) = get_bytes(client, &big_put.id, &big_put.key).await?;
    let d = t.elapsed();
    if &out != big {
        return Err(ClusterError::Check("large file bytes differ".into()));
    }
    lines.push(format!(
        "get {} MiB file {label}: identical, in {} ({}), {} stripes rebuilt from parity",
        big.len() >> 20,
        ms(d),
        mbps(big.len() as u64, d),
        report.stripes_rebuilt
    ));
    Ok(lines)
}

/// Chapter 3: the department lets a citizen read the certificate; the citizen takes the
/// data key from the chain, reads the document and keeps a receipt that verifies offline.
/// A neighbour without a grant gets neither the key nor anything from the peers.
async fn grant(story: &Story, client: &Client, step: Step<'_>) -> Result<Grant, ClusterError> {
    let (cluster, cert, cert_put) = (&story.cluster, &story.cert, &story.cert_put);
    let citizen = Identity::generate(Role::Citizen);
    let neighbour = Identity::generate(Role::Citizen);
    let (height, _) = client
        .grant(
            cert_put.id,
            &cert_put.key,
            &crate::grant::GrantAddress::of(&citizen).expect("a generated key has a grant key"),
            None,
        )
        .await?;
    step(&format!(
        "granted the certificate to citizen {} (data key sealed to them with HPKE) in block {height}",
        citizen.public().short()
    ));
    let as_citizen = cluster.client_as(&citizen, ClientOptions::default())?;
    let t = Instant::now();
    let key = as_citizen.granted_key(&cert_put.id).await?;
    let (out, _) = get_bytes(&as_citizen, &cert_put.id, &key).await?;
    if &out != cert {
        return Err(ClusterError::Check("the citizen's copy differs".into()));
    }
    let receipt = as_citizen.receipt(&cert_put.id).await?.encode();
    step(&format!(
        "citizen fetched the certificate with the key from their grant in {}: identical; receipt of {} bytes",
        ms(t.elapsed()),
        receipt.len()
    ));
    let manifest = crate::receipt::Receipt::decode(&receipt)
        .and_then(|r| r.verify(&cluster.chain().validators))
        .map_err(|e| ClusterError::Check(format!("the receipt does not verify: {e}")))?;
    step(&format!(
        "receipt verified offline against the validator set: {} bytes of {}",
        manifest.size, manifest.document_type
    ));
    let as_neighbour = cluster.client_as(&neighbour, ClientOptions::default())?;
    match as_neighbour.granted_key(&cert_put.id).await {
        Err(e) => step(&format!("another citizen asks for the key: refused ({e})")),
        Ok(_) => {
            return Err(ClusterError::Check(
                "a citizen without a grant got the data key".into(),
            ));
        }
    }
    // The peers themselves serve the neighbour nothing: no manifest, no shard.
    match as_neighbour.manifest(&cert_put.id).await {
        Err(ClientError::NotFound { errors, .. }) if errors.contains("Refused") => step(
            "the neighbour asks the peers for the certificate itself: every peer refuses (no grant on chain)",
        ),
        Err(e) => return Err(e.into()),
        Ok(_) => {
            return Err(ClusterError::Check(
                "a peer served the manifest to a citizen without a grant".into(),
            ));
        }
    }
    as_neighbour.close().await;
    Ok(Grant {
        citizen,
        neighbour,
        as_citizen,
        key,
    })
}

/// Chapter 4, revocation for real: the grant is withdrawn and the certificate rekeyed, so
/// the key the citizen unwrapped opens nothing stored from then on. Closes the first
/// client and the citizen's; returns the department's new client and the rekeying.
async fn revoke_and_rekey(
    story: &Story,
    client: Client,
    grant: &Grant,
    step: Step<'_>,
) -> Result<(Client, RevisionReport), ClusterError> {
    let (cluster, cert, cert_put) = (&story.cluster, &story.cert, &story.cert_put);
    // A fresh client: the first one saw peers 3 and 5 down and would skip them a while.
    client.close().await;
    let owner = cluster.client(ClientOptions::default())?;
    let keyring = crate::keyring::Keyring::open(cluster.root().join("keyring"))?;
    keyring.save(&cert_put.id, &cert_put.key)?;
    owner.revoke(cert_put.id, grant.citizen.public()).await?;
    let t = Instant::now();
    let rekeyed = crate::revision::rekey(&owner, &cert_put.id, &keyring, &|_, _| {}).await?;
    let collected = rekeyed.collect.as_ref().map_or(0, |c| c.shards_deleted);
    step(&format!(
        "revoked the citizen's grant and rekeyed the certificate -> document {} in {} (block {}): new data key, {collected} old shards collected",
        rekeyed.new,
        ms(t.elapsed()),
        rekeyed.height
    ));
    match get_bytes(&owner, &rekeyed.new, &grant.key).await {
        Err(e) => step(&format!(
            "the citizen's old data key opens nothing of the new version ({e})"
        )),
        Ok(_) => {
            return Err(ClusterError::Check(
                "the revoked key opened the rekeyed certificate".into(),
            ));
        }
    }
    if grant.as_citizen.granted_key(&rekeyed.new).await.is_ok() {
        return Err(ClusterError::Check(
            "the revoked citizen got the new data key".into(),
        ));
    }
    grant.as_citizen.close().await;
    let (out, _) = get_bytes(&owner, &rekeyed.new, &rekeyed.key).await?;
    if &out != cert {
        return Err(ClusterError::Check(
            "the rekeyed certificate differs".into(),
        ));
    }
    step(
        "the chain holds no key of the new version for the citizen; the department reads it with the new key: identical",
    );
    Ok((owner, rekeyed))
}

/// Chapter 5, the read audit: every peer recorded the reads it served and committed their
/// Merkle root on chain; the department checks each record against those roots.
async fn audit(
    story: &Story,
    owner: &Client,
    grant: &Grant,
    step: Step<'_>,
) -> Result<(), ClusterError> {
    let (cert_put, citizen, neighbour) = (&story.cert_put, &grant.citizen, &grant.neighbour);
    let t = Instant::now();
    let report = loop {
        let report = crate::audit::audit(owner.chain()?, &owner.all_nodes(), &cert_put.id).await?;
        let verified = report
            .lines
            .iter()
            .all(|l| matches!(l.verdict, crate::audit::Verdict::Verified { .. }));
        let citizen_read = report
            .lines
            .iter()
            .any(|l| l.record.reader == citizen.public());
        if verified && citizen_read && report.unreachable.is_empty() {
            break report;
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err(ClusterError::Check(format!(
                "the audit is not verified against the chain: {:?}",
                report.lines
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    step(&format!(
        "the department's audit of the certificate: {} reads recorded by the peers, every one verified against the peer's AuditRoot on chain ({})",
        report.lines.len(),
        ms(t.elapsed())
    ));
    for (who, reader) in [
        ("citizen", citizen.public()),
        ("department", owner.public()),
    ] {
        let lines: Vec<_> = report
            .lines
            .iter()
            .filter(|l| l.record.reader == reader)
            .collect();
        let manifests = lines
            .iter()
            .filter(|l| l.record.read == crate::audit::ReadKind::Manifest)
            .count();
        let peers: std::collections::BTreeSet<_> = lines.iter().map(|l| l.peer).collect();
        step(&format!(
            "  {who} {}: {manifests} manifest and {} shard reads on {} peers, from {}",
            reader.short(),
            lines.len() - manifests,
            peers.len(),
            lines
                .first()
                .map_or("-".into(), |l| crate::audit::utc(l.record.at_ms))
        ));
    }
    if report
        .lines
        .iter()
        .any(|l| l.record.reader == neighbour.public())
    {
        return Err(ClusterError::Check(
            "the audit lists a refused reader".into(),
        ));
    }
    Ok(())
}

/// Chapter 6, operations: a seventh peer joins and the documents rebalance onto it, then
/// peer 0 is drained until it holds nothing.
async fn add_and_drain(
    cluster: &mut LocalCluster,
    docs: &[(&PutReceipt, &Vec<u8>)],
    step: Step<'_>,
) -> Result<(), ClusterError> {
    let (_, added) = cluster.add_peer("zone-0").await?;
    let change = crate::chain::tx::TxBody::AddNode {
        node: added.key,
        addr: added.addr.clone(),
        zone: added.zone.clone(),
        weight: added.weight,
    };
    let (old, new) = cluster.change_layout(change).await?;
    step(&format!(
        "added a seventh peer {} in zone-0: layout epoch {} on chain; {} shards must move (1/7 of all: {:.1})",
        added.key.short(),
        new.epoch,
        slots_moved(&old, &new, docs)?,
        docs.iter()
            .map(|(r, _)| r.manifest.stripes.len() * 6)
            .sum::<usize>() as f64
            / 7.0
    ));
    let report = rebalance(cluster, old, new, step).await?;
    step(&format!(
        "rebalance: {} shards moved, {} old copies deleted, {:.1} MB at {:.0} MB/s",
        report.shards_moved,
        report.shards_deleted,
        report.bytes as f64 / 1e6,
        report.mb_per_s()
    ));
    let drained = cluster.peer(0).ok_or(ClusterError::PeerStopped(0))?.id();
    let held = cluster.shards_held(0)?;
    let (old, new) = cluster
        .change_layout(crate::chain::tx::TxBody::DrainNode { node: drained })
        .await?;
    step(&format!(
        "draining peer 0 ({} shards): layout epoch {}; {} shards must move",
        held,
        new.epoch,
        slots_moved(&old, &new, docs)?
    ));
    let report = rebalance(cluster, old, new, step).await?;
    let left = cluster.shards_held(0)?;
    step(&format!(
        "rebalance: {} shards moved, {} old copies deleted; peer 0 now holds {} shards",
        report.shards_moved, report.shards_deleted, left
    ));
    if left != 0 {
        return Err(ClusterError::Check(
            "the drained peer still holds shards".into(),
        ));
    }
    Ok(())
}

/// Chapter 7, the check: every stripe at full redundancy on the new layout (a dry run of
/// the operator's converge) and every document read back identical without a rebuild.
async fn check_layout(
    cluster: &LocalCluster,
    params: CodingParams,
    docs: &[(&PutReceipt, &Vec<u8>)],
    step: Step<'_>,
) -> Result<(), ClusterError> {
    let operator = cluster.operator_client(
        cluster.layout().clone(),
        None,
        ClientOptions {
            params,
            ..ClientOptions::default()
        },
    )?;
    let check = crate::ops::converge(
        &operator,
        None,
        &crate::ops::OpsOptions {
            dry_run: true,
            ..Default::default()
        },
        &|_| {},
    )
    .await?;
    operator.close().await;
    if check.stripes_below != 0 {
        return Err(ClusterError::Check(format!(
            "{} stripes below full redundancy",
            check.stripes_below
        )));
    }
    let client = cluster.client(ClientOptions {
        params,
        ..ClientOptions::default()
    })?;
    for &(receipt, bytes) in docs {
        let (out, report) = get_bytes(&client, &receipt.id, &receipt.key).await?;
        if &out != bytes || report.stripes_rebuilt != 0 {
            return Err(ClusterError::Check(
                "a document differs after the layout changes".into(),
            ));
        }
    }
    step(&format!(
        "every document reads back identical on the new layout; all {} stripes at full redundancy (k + m = {} shards on placed peers)",
        check.stripes,
        params.width()
    ));
    client.close().await;
    Ok(())
}

/// How many shard slots of `docs` move from `old` to `new` (6 shards a stripe).
fn slots_moved(
    old: &Layout,
    new: &Layout,
    docs: &[(&PutReceipt, &Vec<u8>)],
) -> Result<u64, ClusterError> {
    let stripes = docs.iter().flat_map(|(r, _)| {
        r.manifest
            .stripes
            .iter()
            .map(|ids| crate::client::stripe_key(ids))
    });
    Ok(crate::placement::moved(old, new, stripes, 6)?.moved_slots)
}

/// Runs a rebalance from `old` to `new`, telling its progress in quarter steps.
async fn rebalance(
    cluster: &LocalCluster,
    old: Layout,
    new: Layout,
    step: Step<'_>,
) -> Result<crate::ops::ConvergeReport, ClusterError> {
    let journal_dir = cluster.root().join("operator");
    let journal = crate::ops::Journal::open(&journal_dir, old.epoch, new.epoch)?;
    let operator = cluster.operator_client(new, Some(old), ClientOptions::default())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = {
        let operator = operator.clone();
        tokio::spawn(async move {
            let quarter = std::sync::atomic::AtomicU64::new(0);
            let progress = move |p: crate::ops::Progress| {
                let q = (p.done * 4).checked_div(p.total).unwrap_or(4);
                if q > quarter.swap(q, std::sync::atomic::Ordering::Relaxed) || p.done == 0 {
                    let _ = tx.send(p);
                }
            };
            crate::ops::converge(
                &operator,
                Some(&journal),
                &crate::ops::OpsOptions::default(),
                &progress,
            )
            .await
        })
    };
    let started = Instant::now();
    while let Some(p) = rx.recv().await {
        let eta = if p.done == 0 {
            "-".to_string()
        } else {
            let left = started.elapsed().as_secs_f64() * (p.total - p.done) as f64 / p.done as f64;
            format!("{left:.1} s")
        };
        step(&format!(
            "  rebalance {}/{} stripes ({:.1} MB), eta {eta}",
            p.done,
            p.total,
            p.bytes as f64 / 1e6
        ));
    }
    let report = task
        .await
        .map_err(|e| ClusterError::Check(format!("rebalance task: {e}")))??;
    operator.close().await;
    if !report.failures.is_empty() {
        return Err(ClusterError::Check(report.failures.join("; ")));
    }
    Ok(report)
}

/// `dangan demo --serve`: the embedded cluster with the department's gateway on
/// 127.0.0.1:`port` (0: any free port), an admin token, and a sample citizen key file
/// (with its grant address) in the cluster's temporary directory; told to `step`, then
/// served until `shutdown` completes.
pub async fn serve(
    port: u16,
    shutdown: impl std::future::Future<Output = ()>,
    step: Step<'_>,
) -> Result<(), ClusterError> {
    let cluster = LocalCluster::start(6, 3).await?;
    let root = cluster.root().to_path_buf();
    let gateway_dir = root.join("gateway");
    let db = crate::gateway::GatewayDb::open(&gateway_dir).map_err(gateway_error)?;
    let token = db
        .add("demo-admin", &[crate::gateway::Scope::Admin])
        .map_err(gateway_error)?;
    drop(db);
    let citizen = Identity::generate(Role::Citizen);
    let citizen_key = root.join("citizen.key");
    citizen
        .save(&citizen_key)
        .map_err(|e| ClusterError::Check(format!("writing the citizen's key: {e}")))?;
    let setup = crate::gateway::GatewaySetup {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        s3_listen: None,
        client: cluster.client(ClientOptions::default())?,
        keyring: crate::keyring::Keyring::open(root.join("keyring"))?,
        data_dir: gateway_dir,
        department: "civil-registry".into(),
        metrics_listen: None,
        limits: crate::gateway::GatewayLimits::default(),
    };
    let gateway = crate::gateway::start(setup).await.map_err(gateway_error)?;
    let url = format!("http://{}", gateway.addr());
    step(&format!(
        "cluster: 6 peers in 3 zones and a validator, files in {}",
        root.display()
    ));
    step(&format!("department console: {url}/console/"));
    step(&format!("citizen portal:     {url}/portal/"));
    step(&format!("verify page:        {url}/verify/"));
    step(&format!("API token (admin, shown once): {token}"));
    step(&format!(
        "sample citizen key file: {}",
        citizen_key.display()
    ));
    step(&format!(
        "its grant address (paste it in the console to grant a document): {}",
        crate::grant::GrantAddress::of(&citizen).expect("a generated key has a grant key")
    ));
    step("press Ctrl-C to stop");
    shutdown.await;
    let stopped = gateway.stop().await;
    cluster.shutdown().await;
    stopped.map_err(gateway_error)
}

fn gateway_error(e: crate::gateway::GatewayError) -> ClusterError {
    ClusterError::Check(format!("gateway: {e}"))
}
