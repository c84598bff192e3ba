//! The `dangan` command line: parses arguments, calls the library, prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use dangan::audit::Verdict;
use dangan::bench::{self, CodecBenchOptions};
use dangan::chain::records;
use dangan::chain::tx::{ChainKey, Tx, TxBody};
use dangan::chain::workflow::{Action, ProposalId};
use dangan::client::{Client, ProposalTerms};
use dangan::codec::DocumentInfo;
use dangan::config::local::{LocalConfig, LocalOptions};
use dangan::config::profile::{ClientConfigFile, ClientEnv, ClientFlags, ClientPaths};
use dangan::config::{self, ClusterFile, NodeFile};
use dangan::grant::GrantAddress;
use dangan::id::DocumentId;
use dangan::identity::{Identity, PublicId, Role};
use dangan::keyring::{Keyring, KeyringError};
use dangan::manifest::CodingParams;
use dangan::ops::{self, Operator, OpsOptions};
use dangan::receipt::Receipt;
use dangan::revision;

#[derive(Parser)]
#[command(
    name = "dangan",
    version,
    about = "Dangan: a distributed document store",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on standard error: `human` (default) or `json` (one object a line, for
    /// log collectors). RUST_LOG sets the level (default: warnings).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum SimCommand {
    /// Placement at a province's size with the real placement function: load per peer
    /// against its weight, and the shards moved when a peer joins, a peer drains and a
    /// whole zone joins, against the minimum. Takes seconds.
    Placement {
        #[arg(long, default_value_t = 1000)]
        peers: usize,
        /// Failure zones (for example one per prefecture-level city).
        #[arg(long, default_value_t = 16)]
        zones: usize,
        #[arg(long, default_value_t = 200_000)]
        stripes: u64,
        /// Shards per stripe (k + m).
        #[arg(long, default_value_t = 6)]
        width: usize,
        /// Zones of equal size, or skewed (the biggest four times the smallest).
        #[arg(long, value_enum, default_value_t = SimZones::Equal)]
        zone_sizes: SimZones,
        /// Every weight 1, or 1, 2 and 4 in turn.
        #[arg(long, value_enum, default_value_t = SimWeights::Equal)]
        weights: SimWeights,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SimZones {
    Equal,
    Skewed,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SimWeights {
    Equal,
    Mixed,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Where a client finds its identity, the cluster and its keyring: each flag, else its
/// `DANGAN_*` environment variable, else the profile's value, else the default under
/// `config/` (`dangan profile` shows what a command would use).
#[derive(clap::Args)]
struct ClientArgs {
    /// The client profile (`[profile.NAME]` of the client config file) [env: DANGAN_PROFILE]
    #[arg(long)]
    profile: Option<String>,
    /// This client's key file [env: DANGAN_KEY] [default: config/keys/department.key]
    #[arg(long)]
    key: Option<PathBuf>,
    /// The cluster file [env: DANGAN_CLUSTER] [default: config/cluster.toml]
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Directory of document keys kept by this client [env: DANGAN_KEYRING] [default:
    /// config/keyring]
    #[arg(long)]
    keyring: Option<PathBuf>,
}

impl ClientArgs {
    /// The paths this command uses: flag, environment, profile, default.
    fn paths(&self) -> Result<ClientPaths> {
        let flags = ClientFlags {
            profile: self.profile.clone(),
            key: self.key.clone(),
            cluster: self.cluster.clone(),
            keyring: self.keyring.clone(),
        };
        Ok(ClientPaths::resolve(&flags, &ClientEnv::from_process())?)
    }

    /// This client's identity, from the resolved key file.
    fn identity(&self) -> Result<Identity> {
        Ok(Identity::load(self.paths()?.key_path()?)?)
    }

    /// The resolved cluster file, loaded.
    fn cluster(&self) -> Result<dangan::config::Cluster> {
        Ok(ClusterFile::load(self.paths()?.cluster_path()?)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster in this process and tell the put/get story on it.
    Demo {
        /// Size of the large file, MiB.
        #[arg(long, default_value_t = 64)]
        big_mib: usize,
        /// Instead of the story: start the cluster with a department gateway on
        /// 127.0.0.1, print its console and portal URLs, an admin token and a sample
        /// citizen key file, and serve until Ctrl-C.
        #[arg(long)]
        serve: bool,
        /// The gateway's TCP port with --serve (0: any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Run a department's HTTP gateway (REST API, console, portal) over a cluster, or
    /// manage its API tokens.
    Gateway {
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: Option<GatewayCommand>,
    },
    /// Run one storage peer.
    Node {
        #[arg(long, default_value = "config/node.toml")]
        config: PathBuf,
    },
    /// Manage identity keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show which identity, cluster file and keyring a client command would use and where
    /// each comes from (flag, environment, profile, default); `profile list` lists the
    /// profiles of the client config file (docs/cli.md).
    Profile {
        #[command(subcommand)]
        command: Option<ProfileCommand>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a shell completion script to standard output (docs/cli.md says where to put
    /// it).
    Completions { shell: clap_complete::Shell },
    /// Set up one node of a cluster across machines: its key (and its validator's) and its
    /// node.toml; prints the entries to add to the shared cluster file and genesis. Asks
    /// for what is missing when run in a terminal; never overwrites a key.
    Init {
        /// Directory for the node's config and keys (created if missing).
        #[arg(long, default_value = "/etc/dangan")]
        dir: PathBuf,
        /// UDP address to listen on, e.g. 0.0.0.0:7101.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The address other machines reach this node at (default: --listen).
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// Failure zone: a rack, room or site.
        #[arg(long)]
        zone: Option<String>,
        /// Relative capacity (0 takes no new shards).
        #[arg(long, default_value_t = 100)]
        weight: u32,
        /// This node also hosts one of the chain's validators.
        #[arg(long)]
        validator: bool,
        /// Where the node keeps its data (relative paths: to --dir).
        #[arg(long, default_value = "/var/lib/dangan")]
        data_dir: PathBuf,
        /// TCP address of the node's plain-HTTP metrics and health probes, e.g.
        /// 10.0.0.5:9101 on a scrape network (default: none).
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Write keys and configs for a cluster of peers on this machine.
    LocalConfig {
        /// Directory to write into (must not exist).
        dir: PathBuf,
        /// Number of peers (at least 2). The coding fits it: 2 peers 1 + 1, 3: 2 + 1,
        /// 4: 3 + 1, 5: 4 + 1, 6 or more: 4 + 2 (k + m).
        #[arg(long, default_value_t = 6)]
        peers: usize,
        /// UDP port of peer 1; peer i listens on 127.0.0.1:(base_port + i - 1).
        #[arg(long, default_value_t = 7101)]
        base_port: u16,
        /// Chain validators (1 or 3 or more, at most --peers): nodes 1..=N each host one,
        /// ordered by raft; a block is final once a majority signed it.
        #[arg(long, default_value_t = 1)]
        validators: usize,
    },
    /// Store a document; prints its id.
    Put {
        /// The file to store; `-` reads standard input.
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
        /// Owning department label recorded in the manifest.
        #[arg(long, default_value = "department")]
        department: String,
        /// Document type recorded in the manifest; with --meta, a document type on the
        /// chain (`dangan type list`) whose schema the metadata must match.
        #[arg(long = "type", default_value = "document")]
        document_type: String,
        /// A JSON file of the document's metadata: checked against the --type's schema
        /// before anything is stored, sealed with the document (docs/records.md).
        #[arg(long)]
        meta: Option<PathBuf>,
        /// Grant addresses (`dga1…`, from `dangan keys address`) that may read it.
        #[arg(long = "grant")]
        grants: Vec<GrantAddress>,
    },
    /// Let the holder of a grant address read one of your documents.
    Grant {
        id: DocumentId,
        /// The reader's grant address (`dga1…`, from `dangan keys address`).
        address: GrantAddress,
        /// The grant lapses after this many days (default: never).
        #[arg(long)]
        expires_in_days: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Workflows between departments: propose a grant or a registration that named
    /// departments approve on chain, answer one, see where one stands (docs/approvals.md).
    #[command(subcommand)]
    Approval(ApprovalCommand),
    /// Withdraw a reader's grant on one of your documents.
    Revoke {
        id: DocumentId,
        /// The reader's public id (`dgn1…`).
        reader: PublicId,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-encrypt one of your documents under a fresh data key: a new version with the
    /// live grants carried over, then the old shards removed from the peers, so a reader
    /// revoked before cannot decrypt what is stored from then on. Run it again on the old
    /// id to finish a removal that was interrupted.
    Rekey {
        id: DocumentId,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Store a new version of one of your documents (e.g. a reissued certificate): its live
    /// grants are carried over; the old version stays stored.
    Supersede {
        id: DocumentId,
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
        /// Document type recorded in the manifest (default: the old version's).
        #[arg(long = "type")]
        document_type: Option<String>,
        /// More grant addresses (`dga1…`) that may read the new version.
        #[arg(long = "grant")]
        grants: Vec<GrantAddress>,
    },
    /// Fetch a document by id (its newest version, if it was superseded).
    Get {
        id: DocumentId,
        /// Where to write the document; `-` writes it to standard output (and nothing
        /// else: messages go to standard error).
        #[arg(short, long)]
        output: PathBuf,
        /// Read exactly this version, even if it was superseded.
        #[arg(long)]
        exact: bool,
        /// Also write an offline-verifiable receipt (manifest + registration proof) here.
        #[arg(long)]
        receipt: Option<PathBuf>,
        /// With --receipt: also put in it the signed checkpoint that covers the
        /// registration, with its timestamp token (refused while none covers it yet).
        #[arg(long, requires = "receipt")]
        with_checkpoint: bool,
        /// Also write a typed document's metadata (JSON, opened with its key) here.
        #[arg(long)]
        meta: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask the chain's validator how the chain stands.
    #[command(subcommand)]
    Chain(ChainCommand),
    /// Check that a document is registered: its registration's Merkle path and the
    /// validators' signatures, verified here. With --receipt, offline: only the cluster
    /// file's validator set is used.
    Verify {
        /// The document id (optional with --receipt).
        #[arg(required_unless_present_any = ["receipt", "checkpoint"])]
        id: Option<DocumentId>,
        /// A receipt written by `dangan get --receipt`, checked with no network.
        #[arg(long)]
        receipt: Option<PathBuf>,
        /// A signed checkpoint written by `dangan chain checkpoint -o FILE`, checked with no
        /// network against the cluster file's validators (for a chain whose set changed
        /// since, verify a receipt that carries its checkpoint instead).
        #[arg(long, conflicts_with_all = ["receipt", "id"])]
        checkpoint: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Who read one of your documents (owner department or operator): every peer's read
    /// records, each checked against the Merkle root the peer committed on the chain.
    Audit {
        id: DocumentId,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Document types on the chain: define or change one (with a majority of the
    /// validators' approvals), list them, show one (docs/records.md).
    #[command(subcommand)]
    Type(TypeCommand),
    /// Legal holds on documents, set and lifted by an archives authority with a reason.
    #[command(subcommand)]
    Hold(HoldCommand),
    /// Measure this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Simulate at a size this machine cannot hold (no cluster, no I/O).
    #[command(subcommand)]
    Sim(SimCommand),
    /// Operate the cluster: status, add, drain and remove peers (layout on chain).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Move every shard to its place under the current layout (resumable: run it again
    /// after a crash), then delete the old copies.
    Rebalance {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// Rebuild every shard missing from its placed peer (a peer lost, a corrupt copy).
    Repair {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// Re-hash every shard on every peer; corrupt copies are quarantined, then repaired.
    Scrub {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        ops: OpsArgs,
        /// Only report; do not repair what is found.
        #[arg(long)]
        no_repair: bool,
    },
    /// Remove the shards and manifests of puts that never registered (killed or refused
    /// before their registration committed) once they are older than the grace period.
    /// Nothing a registered document names is touched; a peer that cannot tell keeps it.
    /// Run it again to finish an interrupted run.
    Collect {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        ops: OpsArgs,
        /// Hours a put has to register before its bytes may go (fractions allowed).
        #[arg(long, default_value_t = 24.0)]
        grace_hours: f64,
        /// Keep running as the background collector: a round every this many hours
        /// (fractions allowed) until Ctrl-C; a failed round is reported and the next one
        /// runs as planned. (`dangan maintain --no-scrub --no-repair` with metrics.)
        #[arg(long)]
        every_hours: Option<f64>,
    },
    /// The maintenance service: scrub, repair and collect every period until stopped
    /// (SIGTERM or Ctrl-C), with Prometheus metrics of what it finds: among them the
    /// stripes below k + m and each job's progress. Run one per cluster
    /// (config/dangan-maintain.service).
    Maintain {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        ops: OpsArgs,
        /// Hours between the end of a round and the start of the next (fractions allowed).
        #[arg(long, default_value_t = 24.0)]
        every_hours: f64,
        /// Collect's grace period in hours: how long a put has to register.
        #[arg(long, default_value_t = 24.0)]
        grace_hours: f64,
        /// Leave out scrub (re-hashing every shard).
        #[arg(long)]
        no_scrub: bool,
        /// Leave out repair (rebuilding stripes below k + m).
        #[arg(long)]
        no_repair: bool,
        /// Leave out collect (removing the bytes of puts that never registered).
        #[arg(long)]
        no_collect: bool,
        /// Run one round and exit: 0 if it left nothing wrong, else 1 (for a timer or cron).
        #[arg(long)]
        once: bool,
        /// Serve /metrics, /healthz and /readyz here (plain HTTP, for a scrape network).
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// The profiles of the client config file, the default marked.
    List,
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Manage the gateway's API tokens (with the gateway stopped: it holds its database).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the gateway's S3 access keys (with the gateway stopped). Secrets are derived
    /// from the department's key, never stored: `add` prints the pair once.
    #[command(subcommand, name = "s3-key")]
    S3Key(S3KeyCommand),
}

#[derive(Subcommand)]
enum S3KeyCommand {
    /// Create an access key; its secret is printed once.
    Add {
        #[arg(long)]
        name: String,
    },
    /// List the access keys (names and ids; never the secrets).
    List,
    /// Remove an access key by name or id.
    Revoke {
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; it is printed once and stored only hashed.
    Add {
        #[arg(long)]
        name: String,
        /// What it may do: store, fetch, grant, revoke, supersede, verify, audit, status,
        /// admin (everything). Repeat or separate with commas.
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<dangan::gateway::Scope>,
    },
    /// List the tokens (names and scopes; never the tokens).
    List,
    /// Remove a token by name.
    Revoke {
        #[arg(long)]
        name: String,
    },
}

/// How an operations worker runs.
#[derive(clap::Args)]
struct OpsArgs {
    /// The operator's data directory (rebalance journal, settled layout).
    #[arg(long, default_value = "config/operator")]
    data_dir: PathBuf,
    /// Throttle in MB/s (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    rate_mb: f64,
    /// Stripes (or peers, for scrub) worked on at once.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Only count; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Peers, zones, capacity, usage, health and stripes below full redundancy.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value = "config/operator")]
        data_dir: PathBuf,
    },
    /// Add a storage peer to the layout (a new epoch); then run `dangan rebalance`.
    Add {
        /// The peer's public id (dgn1…).
        id: PublicId,
        #[arg(long)]
        addr: String,
        #[arg(long)]
        zone: String,
        #[arg(long, default_value_t = 100)]
        weight: u32,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value = "config/operator")]
        data_dir: PathBuf,
    },
    /// Drain a peer (weight 0, a new epoch); then run `dangan rebalance`.
    Drain {
        id: PublicId,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value = "config/operator")]
        data_dir: PathBuf,
    },
    /// Remove a drained peer from the layout.
    Remove {
        id: PublicId,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value = "config/operator")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApprovalCommand {
    /// Propose an action; prints the proposal's id. The chain carries it out, as if you
    /// had sent it, on the last approval required.
    Propose {
        #[command(subcommand)]
        action: ProposedAction,
    },
    /// Approve a proposal that names you.
    Approve {
        id: ProposalId,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Refuse a proposal that names you, saying why.
    Refuse {
        id: ProposalId,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Who approved and refused, the expiry and the outcome, proven from the chain.
    Status {
        id: ProposalId,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The open proposals that name you and that you have not answered.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Who approves a proposal, how many, for how long; and the client.
#[derive(clap::Args)]
struct ProposalArgs {
    /// The approvers' public ids (`dgn1…`), comma-separated: departments or operators.
    #[arg(long, value_delimiter = ',', required = true)]
    approvers: Vec<PublicId>,
    /// How many of them must approve.
    #[arg(long)]
    required: u32,
    /// Blocks after the proposal's own in which answers count; then it expires and
    /// does nothing.
    #[arg(long)]
    expires_in: u64,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum ProposedAction {
    /// Grant one of your documents to another department or reader.
    Grant {
        id: DocumentId,
        /// The reader's grant address (`dga1…`, from `dangan keys address`).
        #[arg(long)]
        to: GrantAddress,
        /// The grant lapses this many days after it is carried out (default: never).
        #[arg(long)]
        expires_in_days: Option<u64>,
        #[command(flatten)]
        terms: ProposalArgs,
    },
    /// Store a document now and register it only once approved (until then nobody reads
    /// it; its key stays in your keyring).
    Register {
        /// The file to store.
        file: PathBuf,
        /// Owning department label recorded in the manifest.
        #[arg(long, default_value = "department")]
        department: String,
        /// Document type recorded in the manifest.
        #[arg(long = "type", default_value = "document")]
        document_type: String,
        #[command(flatten)]
        terms: ProposalArgs,
    },
}

#[derive(Subcommand)]
enum ChainCommand {
    /// Height, tip, state root, validators, documents registered.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One block: its header, signatures and transactions (checked against the validators).
    Block {
        height: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One transaction by id (64 hex digits), with its inclusion proof checked.
    Tx {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A signed checkpoint (C2SP signed note): the latest, or the one at --height, checked
    /// against the validators proven from the cluster file's; written to -o FILE (its
    /// RFC 3161 timestamp token, if any, to FILE.tsr), else printed.
    Checkpoint {
        #[arg(long)]
        height: Option<u64>,
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Propose to admit a validator (run with a validator's --key): writes a proposal file
    /// carrying this validator's approval. It takes effect only with approvals of a
    /// majority of the current validators: each runs `dangan chain approve FILE`, then the
    /// proposer runs `dangan chain enact FILE`. With --host and --addr, the chain also says
    /// which peer hosts the new validator, and the running validators reach and trust that
    /// peer from then on; without them, its host must already be in every validator's
    /// cluster.toml. Once it runs, the leader adds it to raft and it catches up. From the
    /// next block, a majority of the new set makes a block final.
    AddValidator {
        /// The new validator's public id (dgn1…, `dangan keys new --role validator`).
        id: PublicId,
        /// The public id of the peer that hosts it (its node key).
        #[arg(long, requires = "addr")]
        host: Option<PublicId>,
        /// That peer's address, ip:port.
        #[arg(long, requires = "host")]
        addr: Option<String>,
        /// Where to write the proposal.
        #[arg(long)]
        proposal: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move a validator to another hosting peer. Without --validator, this validator (the
    /// one whose --key runs it) moves itself, at once. With --validator, another validator
    /// is moved: that needs a majority, so a proposal file is written (see add-validator).
    SetValidatorHost {
        /// The public id of the peer that hosts it now (its node key).
        #[arg(long)]
        host: PublicId,
        /// That peer's address, ip:port.
        #[arg(long)]
        addr: String,
        /// Another validator to move (needs --proposal).
        #[arg(long, requires = "proposal")]
        validator: Option<PublicId>,
        /// Where to write the proposal.
        #[arg(long, requires = "validator")]
        proposal: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Propose to remove a validator (never the last one): writes a proposal file (see
    /// add-validator).
    RemoveValidator {
        id: PublicId,
        /// Where to write the proposal.
        #[arg(long)]
        proposal: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add this validator's approval (its --key) to a proposal file, after showing what it
    /// does; says how many approvals it has and how many it needs.
    Approve {
        proposal: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Submit a proposal that has a majority's approvals (run by its proposer's --key).
    Enact {
        proposal: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum TypeCommand {
    /// Propose a document type from a type file (config/types/*.json): writes a proposal
    /// file carrying this key's approval (a validator's or an operator's). Each validator
    /// runs `dangan chain approve FILE`; once a majority approved, the proposer runs `dangan
    /// chain enact FILE`. A type already defined gets its next version.
    Define {
        file: PathBuf,
        /// Where to write the proposal.
        #[arg(long)]
        proposal: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every document type: name, version, retention and class, who may store it.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One document type (its current version, or --version), proven against the chain,
    /// with its schema.
    Show {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum HoldCommand {
    /// Set a legal hold named --name (e.g. a case reference) on a document: it may not be
    /// destroyed while the hold stands, whatever its retention says.
    Set {
        id: DocumentId,
        #[arg(long)]
        name: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lift a legal hold, saying why.
    Lift {
        id: DocumentId,
        #[arg(long)]
        name: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A governance change waiting for approvals: the unsigned transaction (its approvals so
/// far inside) and the chain it is for. Written as `PROPOSAL_MAGIC` then postcard.
#[derive(serde::Serialize, serde::Deserialize)]
struct Proposal {
    chain: ChainKey,
    tx: Tx,
}

const PROPOSAL_MAGIC: &[u8; 8] = b"DGNPROP1";

impl Proposal {
    fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = PROPOSAL_MAGIC.to_vec();
        bytes.extend(postcard::to_allocvec(self)?);
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let body = bytes
            .strip_prefix(PROPOSAL_MAGIC)
            .with_context(|| format!("{} is not a proposal file", path.display()))?;
        Ok(postcard::from_bytes(body)?)
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new identity key file (and its .pub file).
    New {
        #[arg(long, value_parser = parse_role, default_value = "department")]
        role: Role,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public id of a key or .pub file.
    Show { file: PathBuf },
    /// Print the grant address (`dga1…`) of a key file: give it to a department so it can
    /// grant you access to documents.
    Address { file: PathBuf },
    /// Print the public id of an Ed25519 key in a PKCS#11 token (read from its public key
    /// object, no PIN needed), to list it in the cluster and genesis files; see "Keys in an
    /// HSM" in docs/deployment.md for the key file that then names it.
    Pkcs11Id {
        /// The PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so.
        #[arg(long)]
        module: PathBuf,
        /// The token's label.
        #[arg(long)]
        token: String,
        /// The label of the key pair's objects.
        #[arg(long)]
        key_label: String,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|e: dangan::identity::IdentityError| e.to_string())
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Every benchmark in one go (cluster, ops, gateway, chain with 1 and 3 validators, codec) and
    /// one table of MB/s, documents/s, p50/p99, moved/minimum and peak RSS, headed by the
    /// machine and the build, to compare releases. Takes a few minutes.
    All {
        /// Smaller sizes everywhere (a smoke run in well under a minute; not for comparing).
        #[arg(long)]
        quick: bool,
    },
    /// The chain alone: registrations per second and commit latency, with 1 or 3
    /// validators (raft) on loopback QUIC, departments submitting over the network.
    Chain {
        /// Validators, each hosted by its own peer (1 or 3; more works too).
        #[arg(long, default_value_t = 1)]
        validators: usize,
        /// Offered load in registrations per second, all departments together (default:
        /// each department submits as soon as its previous registration is answered, then a
        /// second run offers half the rate that reached).
        #[arg(long)]
        rate: Option<f64>,
        /// Departments submitting at once (each submits its registrations in sequence).
        #[arg(long, default_value_t = 256)]
        departments: usize,
        /// Registrations per department.
        #[arg(long, default_value_t = 100)]
        each: usize,
    },
    /// A local cluster: large put/get throughput against the QUIC transport floor,
    /// certificate latency, peak memory.
    Cluster {
        /// Size of the large document, MiB (streamed, never held in memory).
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Certificates to put and get.
        #[arg(long, default_value_t = 500)]
        certificates: usize,
        /// Certificates in flight at once.
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
    },
    /// A local cluster under abuse by keys with no account: a department's put and get
    /// throughput and certificate get p99, idle and while strangers (a) hold half-open
    /// streams on every peer, (b) send refused requests, (c) open connections as fast as
    /// they can.
    Abuse {
        /// Size of the document put and read back in each case, MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
        /// Certificates read back in each case.
        #[arg(long, default_value_t = 128)]
        certificates: usize,
        /// Refused requests a second the attackers offer in case (b).
        #[arg(long, default_value_t = 10_000)]
        refused_rate: u64,
    },
    /// Operations on a local cluster: shards moved against the minimum when adding and
    /// draining a peer, rebalance and repair MB/s, scrub MB/s.
    Ops {
        /// Documents stored first.
        #[arg(long, default_value_t = 8)]
        documents: usize,
        /// Size of each document, MiB.
        #[arg(long, default_value_t = 32)]
        size_mib: u64,
    },
    /// A repair over many small documents (one-stripe certificates): its time and the
    /// process's peak memory, which must not grow with the number of documents.
    OpsScale {
        /// Documents stored and registered first.
        #[arg(long, default_value_t = 10_000)]
        documents: usize,
        /// Puts in flight at once while storing them.
        #[arg(long, default_value_t = 32)]
        in_flight: usize,
    },
    /// The department gateway as its own `dangan gateway` process over a local cluster:
    /// a large fetch over HTTP against `dangan get` of the same document (and the
    /// in-process client), small stores and fetches in flight (p50, p99), and the
    /// gateway's peak memory during a very large upload and download. Every byte checked.
    Gateway {
        /// Size of the document fetched through the gateway and with `dangan get`, MiB.
        #[arg(long, default_value_t = 256)]
        fetch_mib: u64,
        /// Runs of each large fetch (alternated; medians compared).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Size of each small document, KiB.
        #[arg(long, default_value_t = 50)]
        small_kib: usize,
        /// Small documents stored, then fetched.
        #[arg(long, default_value_t = 500)]
        small: usize,
        /// Small stores or fetches in flight at once.
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
        /// Size of the document uploaded then downloaded for the gateway's peak memory,
        /// MiB (streamed from a generator and checked as it arrives; 0 skips it).
        #[arg(long, default_value_t = 4096)]
        large_mib: u64,
    },
    /// The gateway's S3 service driven by boto3 against `dangan put` and `dangan get` as
    /// processes on the same cluster (needs the venv `scripts/test-deps.sh s3` makes).
    S3 {
        /// Size of the large object, MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Runs of each large PUT and GET (alternated; medians compared).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Small objects PUT.
        #[arg(long, default_value_t = 1000)]
        small: usize,
        /// Size of each small object, KiB.
        #[arg(long, default_value_t = 50)]
        small_kib: usize,
        /// Threads putting small objects.
        #[arg(long, default_value_t = 16)]
        threads: usize,
        /// A Python with boto3 (default: the venv of `scripts/test-deps.sh s3`).
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Each codec stage alone on one core, then whole encode and decode.
    Codec {
        /// Document size in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: usize,
        /// Repetitions per figure (the median is shown).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Data shards per stripe.
        #[arg(long, default_value_t = 4)]
        k: u16,
        /// Parity shards per stripe.
        #[arg(long, default_value_t = 2)]
        m: u16,
        /// Target shard size in KiB.
        #[arg(long, default_value_t = 1024)]
        shard_kib: u64,
    },
}

fn main() -> ExitCode {
    // Usage errors exit here with clap's code 2.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Exit codes scripts can tell apart (the table in docs/cli.md and `dangan --help`).
mod exit {
    /// Any other failure.
    pub const OTHER: u8 = 1;
    /// Not allowed: no live grant, no account, a role that may not do it, a refused
    /// transaction.
    pub const REFUSED: u8 = 3;
    /// Not registered on the chain, or not found on the peers.
    pub const NOT_FOUND: u8 = 4;
    /// Not enough peers reachable, or the chain unreachable or without a leader: try again.
    pub const UNAVAILABLE: u8 = 5;
    /// Verification failed: corrupt shards, a proof or signature that does not check.
    pub const CORRUPT: u8 = 6;
    /// A key, cluster, profile or node file missing, unreadable or invalid.
    pub const CONFIG: u8 = 7;
}

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 other error, 2 usage, 3 refused (not authorised), \
4 not found (not registered, not on the peers), 5 unavailable (too few peers, chain \
unreachable: try again), 6 corrupt (verification failed), 7 configuration (key, cluster or \
profile file missing or invalid). See docs/cli.md.";

/// The exit code of a failed command: the first error in its chain that says what kind of
/// failure it is.
fn exit_code(e: &anyhow::Error) -> u8 {
    use dangan::chain::client::ChainError;
    use dangan::client::ClientError;
    use dangan::codec::CodecError;
    use dangan::net::NetError;
    use dangan::proto::ErrorCode;
    let net = |e: &NetError| match e.remote_code() {
        Some(ErrorCode::Refused) => Some(exit::REFUSED),
        Some(ErrorCode::Corrupt | ErrorCode::HashMismatch) => Some(exit::CORRUPT),
        Some(ErrorCode::Unavailable | ErrorCode::Busy | ErrorCode::Timeout) => {
            Some(exit::UNAVAILABLE)
        }
        _ if e.is_transport() => Some(exit::UNAVAILABLE),
        _ => None,
    };
    for cause in e.chain() {
        let code = if let Some(e) = cause.downcast_ref::<ClientError>() {
            match e {
                ClientError::NotGranted { .. } | ClientError::Refused { .. } => Some(exit::REFUSED),
                ClientError::NotFound { .. } => Some(exit::NOT_FOUND),
                ClientError::StripeUnavailable { corrupt, .. } if *corrupt > 0 => {
                    Some(exit::CORRUPT)
                }
                ClientError::StripeUnavailable { .. }
                | ClientError::StripeNotStored { .. }
                | ClientError::ManifestNotStored { .. }
                | ClientError::TooFewPeers { .. } => Some(exit::UNAVAILABLE),
                ClientError::NoSuchType(_) => Some(exit::NOT_FOUND),
                ClientError::Records(_) | ClientError::MetaSealed(_) => Some(exit::REFUSED),
                _ => None,
            }
        } else if let Some(e) = cause.downcast_ref::<ChainError>() {
            match e {
                ChainError::Refused(_) | ChainError::NoAccount(_) => Some(exit::REFUSED),
                ChainError::NotRegistered(_) => Some(exit::NOT_FOUND),
                ChainError::NoLeader { .. } | ChainError::NoHosts => Some(exit::UNAVAILABLE),
                ChainError::Net(e) => net(e),
                ChainError::Proof { .. }
                | ChainError::Unproven { .. }
                | ChainError::Stale { .. }
                | ChainError::History(_)
                | ChainError::OtherTransaction
                | ChainError::OtherSender(_)
                | ChainError::Checkpoint(_)
                | ChainError::Decode { .. } => Some(exit::CORRUPT),
                _ => None,
            }
        } else if let Some(e) = cause.downcast_ref::<dangan::chain::tx::TxError>() {
            match e {
                dangan::chain::tx::TxError::NoSuchProposal(_) => Some(exit::NOT_FOUND),
                _ => Some(exit::REFUSED),
            }
        } else if let Some(e) = cause.downcast_ref::<NetError>() {
            net(e)
        } else if let Some(e) = cause.downcast_ref::<CodecError>() {
            match e {
                CodecError::Auth { .. } => Some(exit::CORRUPT),
                CodecError::StripeUnrecoverable { corrupt, .. } if *corrupt > 0 => {
                    Some(exit::CORRUPT)
                }
                _ => None,
            }
        } else if cause
            .downcast_ref::<dangan::receipt::ReceiptError>()
            .is_some()
            || cause
                .downcast_ref::<dangan::chain::checkpoint::CheckpointError>()
                .is_some()
        {
            Some(exit::CORRUPT)
        } else if cause.downcast_ref::<config::ConfigError>().is_some()
            || cause
                .downcast_ref::<dangan::identity::IdentityError>()
                .is_some()
        {
            Some(exit::CONFIG)
        } else {
            None
        };
        if let Some(code) = code {
            return code;
        }
    }
    exit::OTHER
}

fn run(cli: Cli) -> Result<()> {
    // `bench` and `demo` start every validator of their cluster at once in this process,
    // and openraft reports the first election's unanswered votes and appends as errors:
    // noise in a report. Elsewhere (a `dangan node`) they say a validator is unreachable.
    // RUST_LOG overrides both.
    let quiet_raft = matches!(cli.command, Command::Bench(_) | Command::Demo { .. });
    let default_filter = if quiet_raft {
        "warn,openraft=off"
    } else {
        "warn"
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Bench(command) => bench(command),
        Command::Sim(SimCommand::Placement {
            peers,
            zones,
            stripes,
            width,
            zone_sizes,
            weights,
        }) => {
            use dangan::bench::placement::{self, PlacementSimOptions, Weights, ZoneSizes};
            let report = placement::placement(PlacementSimOptions {
                peers,
                zones,
                stripes,
                width,
                zone_sizes: match zone_sizes {
                    SimZones::Equal => ZoneSizes::Equal,
                    SimZones::Skewed => ZoneSizes::Skewed,
                },
                weights: match weights {
                    SimWeights::Equal => Weights::Equal,
                    SimWeights::Mixed => Weights::Mixed,
                },
            })?;
            print!("{}", report.table());
            Ok(())
        }
        Command::Gateway {
            config,
            command: Some(GatewayCommand::Token(command)),
        } => token(&config, command),
        Command::Gateway {
            config,
            command: Some(GatewayCommand::S3Key(command)),
        } => s3_key(&config, command),
        Command::Keys(command) => keys(command),
        Command::Profile { command, client } => profile(command, &client),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "dangan", &mut std::io::stdout());
            Ok(())
        }
        Command::Init {
            dir,
            listen,
            addr,
            zone,
            weight,
            validator,
            data_dir,
            metrics_listen,
        } => init(
            &dir,
            listen,
            addr,
            zone,
            weight,
            validator,
            data_dir,
            metrics_listen,
        ),
        Command::LocalConfig {
            dir,
            peers,
            base_port,
            validators,
        } => local_config(
            &dir,
            LocalOptions {
                peers,
                base_port,
                validators,
            },
        ),
        command => runtime()?.block_on(run_async(command)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The commands that run in the async runtime.
async fn run_async(command: Command) -> Result<()> {
    match command {
        Command::Demo {
            serve: true, port, ..
        } => demo_serve(port).await,
        Command::Demo { big_mib, .. } => demo(big_mib).await,
        Command::Gateway {
            config,
            command: None,
        } => gateway(&config).await,
        Command::Node { config } => node(&config).await,
        Command::Put {
            file,
            client,
            department,
            document_type,
            meta,
            grants,
        } => {
            put(
                &file,
                &client,
                department,
                document_type,
                meta.as_deref(),
                &grants,
            )
            .await
        }
        Command::Grant {
            id,
            address,
            expires_in_days,
            client,
        } => grant(id, &address, expires_in_days, &client).await,
        Command::Revoke { id, reader, client } => revoke(id, reader, &client).await,
        Command::Approval(command) => approval(command).await,
        Command::Get {
            id,
            output,
            exact,
            receipt,
            with_checkpoint,
            meta,
            client,
        } => {
            let receipt = receipt.map(|r| (r, with_checkpoint));
            get(
                id,
                &output,
                exact,
                receipt.as_ref(),
                meta.as_deref(),
                &client,
            )
            .await
        }
        Command::Chain(command) => chain(command).await,
        Command::Type(command) => doc_type(command).await,
        Command::Hold(command) => hold(command).await,
        Command::Audit { id, client } => audit(id, &client).await,
        Command::Verify {
            checkpoint: Some(path),
            client,
            ..
        } => verify_checkpoint(&path, &client),
        Command::Verify {
            id,
            receipt: Some(path),
            client,
            ..
        } => verify_receipt(id, &path, &client),
        Command::Verify {
            id: Some(id),
            receipt: None,
            client,
            ..
        } => verify(id, &client).await,
        Command::Cluster(command) => cluster(command).await,
        Command::Rebalance { client, ops } => rebalance(&client, &ops).await,
        Command::Repair { client, ops } => repair(&client, &ops).await,
        Command::Scrub {
            client,
            ops,
            no_repair,
        } => scrub(&client, &ops, no_repair).await,
        Command::Collect {
            client,
            ops,
            grace_hours,
            every_hours,
        } => collect(&client, &ops, grace_hours, every_hours).await,
        Command::Maintain {
            client,
            ops,
            every_hours,
            grace_hours,
            no_scrub,
            no_repair,
            no_collect,
            once,
            metrics_listen,
        } => {
            let jobs = ops::Jobs {
                scrub: !no_scrub,
                repair: !no_repair,
                collect: (!no_collect)
                    .then(|| collect_options(grace_hours))
                    .transpose()?,
            };
            maintain(&client, &ops, &jobs, every_hours, once, metrics_listen).await
        }
        Command::Rekey { id, client } => rekey(id, &client).await,
        Command::Supersede {
            id,
            file,
            client,
            document_type,
            grants,
        } => supersede(id, &file, &client, document_type, &grants).await,
        _ => unreachable!("synchronous commands are handled in main"),
    }
}

fn bench(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Codec {
            size_mib,
            reps,
            k,
            m,
            shard_kib,
        } => {
            let defaults = CodingParams::default();
            let params = CodingParams::with_shard_len(k, m, defaults.segment_size, shard_kib << 10);
            let report = bench::codec(CodecBenchOptions {
                size: size_mib << 20,
                repetitions: reps,
                params,
            })?;
            println!("{report}");
        }
        BenchCommand::Cluster {
            size_mib,
            certificates,
            in_flight,
        } => {
            let report = runtime()?.block_on(bench::cluster(bench::ClusterBenchOptions {
                document: size_mib << 20,
                certificates,
                in_flight,
                ..bench::ClusterBenchOptions::default()
            }))?;
            println!("{report}");
        }
        BenchCommand::Abuse {
            size_mib,
            certificates,
            refused_rate,
        } => {
            let report = runtime()?.block_on(bench::abuse(bench::AbuseBenchOptions {
                document: size_mib << 20,
                certificates,
                refused_rate,
                ..bench::AbuseBenchOptions::default()
            }))?;
            println!("{report}");
        }
        BenchCommand::Ops {
            documents,
            size_mib,
        } => {
            let report = runtime()?.block_on(bench::ops(bench::OpsBenchOptions {
                documents,
                document: size_mib << 20,
                ..bench::OpsBenchOptions::default()
            }))?;
            println!("{report}");
        }
        BenchCommand::OpsScale {
            documents,
            in_flight,
        } => {
            let report = runtime()?.block_on(bench::ops_scale(bench::OpsScaleOptions {
                documents,
                in_flight,
                repair_process: Some(std::env::current_exe()?),
                ..bench::OpsScaleOptions::default()
            }))?;
            println!("{report}");
        }
        BenchCommand::Gateway {
            fetch_mib,
            reps,
            small_kib,
            small,
            in_flight,
            large_mib,
        } => {
            let options = bench::gateway::GatewayBenchOptions {
                fetch: fetch_mib << 20,
                repetitions: reps,
                small: small_kib << 10,
                small_count: small,
                in_flight,
                large: large_mib << 20,
                ..bench::gateway::GatewayBenchOptions::new(std::env::current_exe()?)
            };
            let report = runtime()?.block_on(bench::gateway::run(options))?;
            println!("{report}");
        }
        BenchCommand::S3 {
            size_mib,
            reps,
            small,
            small_kib,
            threads,
            python,
        } => {
            let python = python
                .or_else(bench::s3::default_python)
                .context("no Python with boto3: run `scripts/test-deps.sh s3`, or pass --python")?;
            let options = bench::s3::S3BenchOptions {
                large: size_mib << 20,
                repetitions: reps,
                small_count: small,
                small: small_kib << 10,
                threads,
                ..bench::s3::S3BenchOptions::new(std::env::current_exe()?, python)
            };
            let report = runtime()?.block_on(bench::s3::run(options))?;
            println!("{report}");
        }
        BenchCommand::All { quick } => {
            let mut options = if quick {
                bench::AllBenchOptions::quick()
            } else {
                bench::AllBenchOptions::default()
            };
            options.gateway = Some(bench::gateway::GatewayBenchOptions::in_all(
                std::env::current_exe()?,
                quick,
            ));
            let version = format!(
                "{} ({})",
                env!("CARGO_PKG_VERSION"),
                env!("DANGAN_GIT_COMMIT")
            );
            let report = runtime()?.block_on(bench::all(options, version))?;
            println!("{report}");
        }
        BenchCommand::Chain {
            validators,
            departments,
            each,
            rate,
        } => {
            let rt = runtime()?;
            let report = rt.block_on(bench::chain(validators, departments, each, rate))?;
            println!("{report}");
            if rate.is_none() {
                // The latency target is for half the rate reached.
                let half = bench::half_load(&report);
                let report =
                    rt.block_on(bench::chain(validators, departments, each, Some(half)))?;
                println!("{report}");
            }
        }
    }
    Ok(())
}

fn keys(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::New { role, out } => {
            let identity = Identity::generate(role);
            identity
                .save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", identity.public());
        }
        KeysCommand::Show { file } => println!("{}", PublicId::load(&file)?),
        KeysCommand::Address { file } => {
            println!("{}", GrantAddress::of(&Identity::load(&file)?)?);
        }
        KeysCommand::Pkcs11Id {
            module,
            token,
            key_label,
        } => {
            let spec = dangan::identity::token::Pkcs11Key {
                module,
                token,
                key_label,
                pin_file: None,
                pin_env: None,
            };
            println!("{}", dangan::identity::token::public_id(&spec)?);
        }
    }
    Ok(())
}

/// `dangan profile [list]`.
fn profile(command: Option<ProfileCommand>, client: &ClientArgs) -> Result<()> {
    match command {
        Some(ProfileCommand::List) => {
            let env = ClientEnv::from_process();
            let Some((path, _)) = env.config_path() else {
                bail!("no client config file: neither DANGAN_CONFIG nor HOME is set");
            };
            if !path.exists() {
                println!("no client config file at {} (no profiles)", path.display());
                return Ok(());
            }
            let file = ClientConfigFile::load(&path)?;
            println!("profiles in {}:", path.display());
            let shown = |p: &Option<PathBuf>| {
                p.as_ref()
                    .map_or("-".to_owned(), |p| p.display().to_string())
            };
            for (name, entry) in &file.profile {
                let mark = if file.default.as_deref() == Some(name) {
                    " (default)"
                } else {
                    ""
                };
                println!(
                    "{name}{mark}\tkey {}\tcluster {}\tkeyring {}",
                    shown(&entry.key),
                    shown(&entry.cluster),
                    shown(&entry.keyring)
                );
            }
        }
        None => {
            let paths = client.paths()?;
            match &paths.config {
                Some((path, true)) => println!("config file: {}", path.display()),
                Some((path, false)) => println!("config file: {} (none there)", path.display()),
                None => println!("config file: none (HOME is not set)"),
            }
            match &paths.profile {
                Some((name, from)) => println!("profile:     {name} (from {from})"),
                None => println!("profile:     none"),
            }
            match paths.key_path().map(Identity::load) {
                Ok(Ok(identity)) => {
                    println!("identity:    {} ({})", identity.public(), identity.role())
                }
                Ok(Err(e)) => println!("identity:    cannot be loaded: {e}"),
                Err(e) => println!("identity:    none: {e}"),
            }
            for (what, r) in [
                ("key:        ", &paths.key),
                ("cluster:    ", &paths.cluster),
                ("keyring:    ", &paths.keyring),
            ] {
                let missing = if r.path.exists() { "" } else { " (missing)" };
                println!("{what} {}{missing} (from {})", r.path.display(), r.source);
            }
        }
    }
    Ok(())
}

async fn demo(big_mib: usize) -> Result<()> {
    let start = Instant::now();
    dangan::demo::run(big_mib, &mut |line| println!("{line}")).await?;
    println!("demo finished in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

async fn demo_serve(port: u16) -> Result<()> {
    dangan::demo::serve(port, stopped(), &mut |line| println!("{line}")).await?;
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what systemd and container runtimes send), so a
/// service stops cleanly either way. If a signal handler cannot be installed, that signal
/// is not waited for (the process then ends the default way on it) and a warning says so.
async fn stopped() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot wait for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot wait for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("Ctrl-C: stopping"),
        () = terminate => tracing::info!("SIGTERM: stopping"),
    }
}

/// Runs the gateway until Ctrl-C or SIGTERM.
async fn gateway(config: &Path) -> Result<()> {
    let config = dangan::gateway::GatewayFile::load(config)?;
    dangan::gateway::run(config, stopped()).await?;
    Ok(())
}

fn token(config: &Path, command: TokenCommand) -> Result<()> {
    let db = dangan::gateway::GatewayFile::load(config)?.db()?;
    match command {
        TokenCommand::Add { name, scopes } => {
            let token = db.add(&name, &scopes)?;
            eprintln!("token {name:?} created; it is shown only now:");
            println!("{token}");
        }
        TokenCommand::List => {
            for t in db.list()? {
                let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                println!(
                    "{}\t{}\tcreated {}",
                    t.name,
                    scopes.join(","),
                    dangan::audit::utc(t.created_ms)
                );
            }
        }
        TokenCommand::Revoke { name } => {
            if !db.revoke(&name)? {
                bail!("no token named {name:?}");
            }
            println!("token {name:?} revoked");
        }
    }
    Ok(())
}

fn s3_key(config: &Path, command: S3KeyCommand) -> Result<()> {
    let config = dangan::gateway::GatewayFile::load(config)?;
    let db = config.db()?;
    match command {
        S3KeyCommand::Add { name } => {
            let identity = dangan::identity::Identity::load(&config.key)?;
            let key = db.s3_key_add(&name)?;
            let secret = dangan::gateway::s3::secret_key(&identity, &key.access_key)?;
            eprintln!("S3 key {name:?} created; its secret is shown only now:");
            println!("AWS_ACCESS_KEY_ID={}", key.access_key);
            println!("AWS_SECRET_ACCESS_KEY={secret}");
        }
        S3KeyCommand::List => {
            for k in db.s3_keys()? {
                println!(
                    "{}\t{}\tcreated {}",
                    k.name,
                    k.access_key,
                    dangan::audit::utc(k.created_ms)
                );
            }
        }
        S3KeyCommand::Revoke { name } => {
            if !db.s3_key_revoke(&name)? {
                bail!("no S3 key named {name:?}");
            }
            println!("S3 key {name:?} revoked");
        }
    }
    Ok(())
}

/// Runs the node until Ctrl-C or SIGTERM.
async fn node(config: &Path) -> Result<()> {
    let config = NodeFile::load(config)?;
    dangan::node::run(config, stopped()).await?;
    Ok(())
}

async fn put(
    file: &Path,
    client: &ClientArgs,
    department: String,
    document_type: String,
    meta: Option<&Path>,
    grants: &[GrantAddress],
) -> Result<()> {
    let (c, keyring) = connect(client).await?;
    // A typed record: the type from the chain, the metadata checked against its schema and
    // the department against its list, before anything is stored.
    let record = match meta {
        Some(path) => {
            let meta =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let t = c.record_type(&document_type).await?;
            c.check_record(&t, &meta)
                .with_context(|| format!("{} refused, nothing stored", path.display()))?;
            Some((t, meta))
        }
        None => None,
    };
    // `-` is standard input, streamed like a file (the codec reads a stripe at a time and
    // needs no size ahead), so a pipe of any length stays in bounded memory.
    let (input, size): (Box<dyn tokio::io::AsyncRead + Unpin + Send>, Option<u64>) =
        if file == Path::new("-") {
            (Box::new(tokio::io::stdin()), None)
        } else {
            let f = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let size = f.metadata().await?.len();
            (Box::new(f), Some(size))
        };
    let bar = progress_bar(size.unwrap_or(0), "put");
    let stored = c
        .store(
            input,
            size,
            DocumentInfo {
                department,
                document_type,
                created_at_ms: None,
            },
            &advance(&bar),
        )
        .await?;
    bar.finish_and_clear();
    // The key is durable in the keyring before the registration is submitted: a put killed
    // after the commit, or a submit that times out and commits later, still leaves the key.
    keyring.save(&stored.id, &stored.key)?;
    let receipt = match &record {
        Some((t, meta)) => c.register_record(stored, t, meta).await?,
        None => c.register(stored).await?,
    };
    if !receipt.shards_missing.is_empty() {
        eprintln!(
            "warning: {} shard writes failed; the document is stored below full redundancy",
            receipt.shards_missing.len()
        );
    }
    if !receipt.shards_standing_in.is_empty() {
        eprintln!(
            "note: {} shards went to stand-ins while their peers were down; `dangan repair` brings them home",
            receipt.shards_standing_in.len()
        );
    }
    for to in grants {
        c.grant(receipt.id, &receipt.key, to, None)
            .await
            .with_context(|| format!("granting {} to {}", receipt.id, to.id))?;
        eprintln!("granted to {}", to.id);
    }
    println!("{}", receipt.id);
    c.close().await;
    Ok(())
}

async fn grant(
    id: DocumentId,
    address: &GrantAddress,
    expires_in_days: Option<u64>,
    client: &ClientArgs,
) -> Result<()> {
    let (c, keyring) = connect(client).await?;
    let key = keyring.load(&id)?;
    let expires_ms = expires_in_days.map(|d| dangan::now_ms() + d * 86_400_000);
    let (height, _) = c.grant(id, &key, address, expires_ms).await?;
    println!("granted {id} to {} in block {height}", address.id);
    c.close().await;
    Ok(())
}

async fn approval(command: ApprovalCommand) -> Result<()> {
    match command {
        ApprovalCommand::Propose { action } => {
            let args = match &action {
                ProposedAction::Grant { terms, .. } | ProposedAction::Register { terms, .. } => {
                    terms
                }
            };
            let (c, keyring) = connect(&args.client).await?;
            let terms = ProposalTerms {
                approvers: args.approvers.clone(),
                required: args.required,
                expires_in: args.expires_in,
            };
            let action = match action {
                ProposedAction::Grant {
                    id,
                    to,
                    expires_in_days,
                    ..
                } => {
                    let key = keyring.load(&id)?;
                    let expires_ms = expires_in_days.map(|d| dangan::now_ms() + d * 86_400_000);
                    Client::grant_action(id, &key, &to, expires_ms)?
                }
                ProposedAction::Register {
                    file,
                    department,
                    document_type,
                    ..
                } => {
                    let f = tokio::fs::File::open(&file)
                        .await
                        .with_context(|| format!("opening {}", file.display()))?;
                    let size = f.metadata().await?.len();
                    let info = DocumentInfo {
                        department,
                        document_type,
                        created_at_ms: None,
                    };
                    let stored = c.store(f, Some(size), info, &|_, _| {}).await?;
                    // The key is durable before the proposal can register the document.
                    keyring.save(&stored.id, &stored.key)?;
                    eprintln!(
                        "stored {} on the peers, unregistered until approved",
                        stored.id
                    );
                    Action::Register {
                        document: stored.id,
                    }
                }
            };
            eprintln!("proposing: {action}");
            let proposed = c.propose(action, terms).await?;
            eprintln!(
                "proposed in block {}; expires at height {}",
                proposed.height, proposed.expires_at
            );
            println!("{}", proposed.id);
            c.close().await;
        }
        ApprovalCommand::Approve { id, client } => {
            let (c, _) = connect(&client).await?;
            let height = c.approve(id).await?;
            println!("approved {id} in block {height}");
            match c.proposal(&id).await? {
                Some((p, at)) => println!("{}", p.status(at + 1)),
                None => bail!("proposal {id} is not on the chain"),
            }
            c.close().await;
        }
        ApprovalCommand::Refuse { id, reason, client } => {
            let (c, _) = connect(&client).await?;
            let height = c.refuse(id, reason).await?;
            println!("refused {id} in block {height}");
            if let Some((p, at)) = c.proposal(&id).await? {
                println!("{}", p.status(at + 1));
            }
            c.close().await;
        }
        ApprovalCommand::Status { id, client } => {
            let (c, _) = connect(&client).await?;
            let Some((p, at)) = c.proposal(&id).await? else {
                return Err(dangan::chain::tx::TxError::NoSuchProposal(id))
                    .context("its absence is proven against the validators' signatures");
            };
            println!("proposal  {id}");
            println!("action    {}", p.action);
            println!("proposer  {} (block {})", p.proposer, p.height);
            println!(
                "requires  {} of {}: {}",
                p.required,
                p.approvers.len(),
                p.approvers
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for a in &p.approvals {
                println!("approved  {} (block {})", a.approver, a.height);
            }
            for r in &p.refusals {
                println!(
                    "refused   {} (block {}): {}",
                    r.approver, r.height, r.reason
                );
            }
            println!("expires   at height {} (chain at {at})", p.expires_at);
            println!("outcome   {}", p.status(at + 1));
            c.close().await;
        }
        ApprovalCommand::List { client } => {
            let (c, _) = connect(&client).await?;
            let open = c.proposals_awaiting_me().await?;
            if open.is_empty() {
                eprintln!("no open proposal awaits your answer");
            }
            for (id, p, _) in open {
                println!(
                    "{id}  {}  by {}  {} of {}  expires at {}",
                    p.action,
                    p.proposer,
                    p.required,
                    p.approvers.len(),
                    p.expires_at
                );
            }
            c.close().await;
        }
    }
    Ok(())
}

async fn revoke(id: DocumentId, reader: PublicId, client: &ClientArgs) -> Result<()> {
    let (c, _) = connect(client).await?;
    let (height, _) = c.revoke(id, reader).await?;
    println!("revoked {reader}'s grant on {id} in block {height}");
    c.close().await;
    Ok(())
}

/// Creates (or truncates) `path` for a document's plaintext, readable and writable by the
/// user only (mode 0600 on unix), whatever the umask, and even if a stale file of another
/// mode was left there: the partial output of a get is the document itself.
async fn create_private(path: &Path) -> std::io::Result<tokio::fs::File> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let f = opts.open(path).await?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .await?;
    }
    Ok(f)
}

async fn get(
    id: DocumentId,
    output: &Path,
    exact: bool,
    receipt: Option<&(PathBuf, bool)>,
    meta: Option<&Path>,
    client: &ClientArgs,
) -> Result<()> {
    let (c, keyring) = connect(client).await?;
    let id = if exact { id } else { newest(&c, id).await? };
    // A department has the key in its keyring; anyone else reads through a grant.
    let key = match keyring.load(&id) {
        Err(missing @ KeyringError::Missing { .. }) => c
            .granted_key(&id)
            .await
            .with_context(|| format!("{missing}, nor a grant on the chain"))?,
        other => other?,
    };
    let bar = progress_bar(0, "get");
    // `-o -`: the document, and only the document, goes to standard output; what is said
    // about it goes to standard error.
    let to_stdout = output == Path::new("-");
    let report = if to_stdout {
        let mut out = tokio::io::stdout();
        let result = c.get(&id, &key, &mut out, &advance(&bar)).await;
        bar.finish_and_clear();
        let report = result?;
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .context("writing to standard output")?;
        report
    } else {
        let tmp = output.with_extension("dangan-partial");
        let f = create_private(&tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        let result = c.get(&id, &key, f, &advance(&bar)).await;
        bar.finish_and_clear();
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e.into());
            }
        };
        tokio::fs::rename(&tmp, output).await?;
        report
    };
    for (stripe, slot, peer) in &report.corrupt {
        eprintln!(
            "warning: corrupt shard (stripe {stripe}, slot {slot}) on peer {}; reported for repair",
            peer.short()
        );
    }
    let said = |line: String| {
        if to_stdout {
            eprintln!("{line}")
        } else {
            println!("{line}")
        }
    };
    if to_stdout {
        said(format!("{} bytes written to standard output", report.bytes));
    } else {
        said(format!(
            "{} bytes written to {}",
            report.bytes,
            output.display()
        ));
    }
    if let Some((path, with_checkpoint)) = receipt {
        let r = if *with_checkpoint {
            c.receipt_with_checkpoint(&id)
                .await?
                .context("no signed checkpoint covers the registration yet; try again later")?
        } else {
            c.receipt(&id).await?
        };
        std::fs::write(path, r.encode()).with_context(|| format!("writing {}", path.display()))?;
        said(format!("receipt written to {}", path.display()));
    }
    if let Some(path) = meta {
        let opened = c
            .record_meta(&id, &key)
            .await?
            .with_context(|| format!("{id} is not a typed document: it has no metadata"))?;
        std::fs::write(path, opened).with_context(|| format!("writing {}", path.display()))?;
        said(format!("metadata written to {}", path.display()));
    }
    c.close().await;
    Ok(())
}

async fn chain(command: ChainCommand) -> Result<()> {
    match command {
        ChainCommand::Status { client } => chain_status(&client).await,
        ChainCommand::Block { height, client } => chain_block(height, &client).await,
        ChainCommand::Tx { id, client } => chain_tx(&id, &client).await,
        ChainCommand::Checkpoint {
            height,
            output,
            client,
        } => chain_checkpoint(height, output.as_deref(), &client).await,
        ChainCommand::AddValidator {
            id,
            host,
            addr,
            proposal,
            client,
        } => {
            let body = TxBody::AddValidator {
                validator: id,
                host: host.zip(addr),
                approvals: Vec::new(),
            };
            propose(&client, body, &proposal).await
        }
        ChainCommand::SetValidatorHost {
            host,
            addr,
            validator: Some(validator),
            proposal: Some(proposal),
            client,
        } => {
            let body = TxBody::SetValidatorHost {
                validator,
                host,
                addr,
                approvals: Vec::new(),
            };
            propose(&client, body, &proposal).await
        }
        ChainCommand::SetValidatorHost {
            host, addr, client, ..
        } => {
            let me = client.identity()?.public();
            let done = format!("validator {me} is hosted by {host} at {addr}");
            let body = TxBody::SetValidatorHost {
                validator: me,
                host,
                addr,
                approvals: Vec::new(),
            };
            submit_all(&client, vec![body], &done).await
        }
        ChainCommand::RemoveValidator {
            id,
            proposal,
            client,
        } => {
            let body = TxBody::RemoveValidator {
                validator: id,
                approvals: Vec::new(),
            };
            propose(&client, body, &proposal).await
        }
        ChainCommand::Approve { proposal, client } => approve(&client, &proposal).await,
        ChainCommand::Enact { proposal, client } => enact(&client, &proposal).await,
    }
}

/// Writes a proposal of `body` by this client's key (its next nonce), approved by it.
async fn propose(client: &ClientArgs, body: TxBody, path: &Path) -> Result<()> {
    let me = client.identity()?;
    let (c, _) = connect(client).await?;
    let asked = async {
        let chain = c.chain()?;
        let key = chain.chain_key().await?;
        let account = chain.account(&me.public()).await?;
        let status = chain.status().await?;
        Ok::<_, dangan::client::ClientError>((key, account, status))
    }
    .await;
    c.close().await;
    let (chain, account, status) = asked?;
    let operator_may = matches!(body, TxBody::DefineType { .. }) && me.role() == Role::Operator;
    if !status.validators.contains(&me.public()) && !operator_may {
        bail!(
            "{} is not a validator of this chain: only validators propose changes to it (and operators document types)",
            me.public()
        );
    }
    let Some(account) = account else {
        bail!("{} has no account on the chain", me.public());
    };
    let mut tx = Tx {
        sender: me.public(),
        nonce: account.nonce + 1,
        body,
    };
    // A validator's own approval counts; an operator's proposal starts with none.
    let mine = status
        .validators
        .contains(&me.public())
        .then(|| tx.approve(&me, &chain));
    let approvals = tx
        .body
        .approvals_mut()
        .context("not a change that takes approvals")?;
    approvals.extend(mine);
    let have = approvals.len();
    Proposal { chain, tx }.save(path)?;
    let needed = status.validators.len() / 2 + 1;
    println!(
        "proposal written to {} with {have} of the {needed} approvals it needs (of {} validators);",
        path.display(),
        status.validators.len()
    );
    println!(
        "each other validator runs `dangan chain approve {}`, then this key runs `dangan chain enact {}`",
        path.display(),
        path.display()
    );
    println!("(sending any other transaction from this key first makes the proposal stale)");
    Ok(())
}

async fn approve(client: &ClientArgs, path: &Path) -> Result<()> {
    let me = client.identity()?;
    let mut proposal = Proposal::load(path)?;
    let (c, _) = connect(client).await?;
    let asked = async {
        let chain = c.chain()?;
        Ok::<_, dangan::client::ClientError>((chain.chain_key().await?, chain.status().await?))
    }
    .await;
    c.close().await;
    let (chain, status) = asked?;
    if chain != proposal.chain {
        bail!(
            "the proposal is for chain {}, and this cluster's chain is {chain}",
            proposal.chain
        );
    }
    if !status.validators.contains(&me.public()) {
        bail!("{} is not a validator of this chain", me.public());
    }
    println!(
        "proposal by {} (nonce {}): {:?}",
        proposal.tx.sender, proposal.tx.nonce, proposal.tx.body
    );
    let approval = proposal.tx.approve(&me, &chain);
    let approvals = proposal
        .tx
        .body
        .approvals_mut()
        .context("not a change that takes approvals")?;
    if approvals.iter().any(|a| a.validator == me.public()) {
        bail!("{} already approved it", me.public());
    }
    approvals.push(approval);
    let have = approvals.len();
    proposal.save(path)?;
    let needed = status.validators.len() / 2 + 1;
    println!(
        "approved: {have} of the {needed} approvals it needs{}",
        if have >= needed {
            format!(
                "; its proposer may run `dangan chain enact {}`",
                path.display()
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

async fn enact(client: &ClientArgs, path: &Path) -> Result<()> {
    let me = client.identity()?;
    let proposal = Proposal::load(path)?;
    if proposal.tx.sender != me.public() {
        bail!(
            "the proposal is sent by {}: run this with its key, not {}'s",
            proposal.tx.sender,
            me.public()
        );
    }
    let what = format!("{:?}", proposal.tx.body);
    let tx = proposal.tx.sign(&me, &proposal.chain);
    let (c, _) = connect(client).await?;
    let committed =
        async { Ok::<_, dangan::client::ClientError>(c.chain()?.submit_tx(&tx).await?) }.await;
    c.close().await;
    let (height, index) = committed?;
    println!(
        "enacted in block {height} (transaction {index}): {what}; blocks after it are final with a \
         majority of the validator set it leaves"
    );
    Ok(())
}

async fn chain_status(client: &ClientArgs) -> Result<()> {
    let (c, _) = connect(client).await?;
    let status = c.chain()?.status().await?;
    println!("chain:        {}", status.chain_id);
    println!("chain key:    {}", status.chain_key);
    println!("height:       {}", status.height);
    println!("tip:          {}", hex::encode(status.tip_hash));
    println!("state root:   {}", hex::encode(status.state_root));
    println!("documents:    {}", status.documents);
    println!("layout epoch: {}", status.layout_epoch);
    for v in &status.validators {
        println!("validator:    {v}");
    }
    c.close().await;
    Ok(())
}

async fn chain_checkpoint(
    height: Option<u64>,
    output: Option<&Path>,
    client: &ClientArgs,
) -> Result<()> {
    let (c, _) = connect(client).await?;
    let found = c.chain()?.checkpoint(height, false).await;
    c.close().await;
    let Some((stored, checkpoint)) = found? else {
        match height {
            Some(h) => bail!("no signed checkpoint at height {h}"),
            None => bail!("no signed checkpoint yet"),
        }
    };
    let Some(path) = output else {
        print!("{}", String::from_utf8_lossy(stored.note.as_bytes()));
        return Ok(());
    };
    std::fs::write(path, stored.note.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(token) = &stored.token {
        let tsr = path.with_extension("tsr");
        std::fs::write(&tsr, token).with_context(|| format!("writing {}", tsr.display()))?;
    }
    eprintln!(
        "checkpoint at height {} (block {}) verified against the validators of its height, written to {}{}",
        checkpoint.height,
        hex::encode(checkpoint.block_hash),
        path.display(),
        if stored.token.is_some() {
            " with its timestamp token"
        } else {
            ""
        }
    );
    for a in &stored.anchors {
        eprintln!("anchored in {}", a.anchor);
    }
    Ok(())
}

async fn chain_block(height: u64, client: &ClientArgs) -> Result<()> {
    let (c, _) = connect(client).await?;
    let Some(block) = c.chain()?.block(height).await? else {
        bail!("no block at height {height}");
    };
    let h = &block.header.header;
    println!("block {} (hash {})", h.height, hex::encode(h.hash()));
    println!("previous:   {}", hex::encode(h.prev));
    println!("tx root:    {}", hex::encode(h.tx_root));
    println!("state root: {}", hex::encode(h.state_root));
    println!("time (ms):  {}", h.time_ms);
    println!("proposer:   {}", h.proposer);
    println!(
        "signed by {} validator(s); final (majority checked)",
        block.header.signatures.len()
    );
    for tx in &block.txs {
        println!(
            "tx {} from {} nonce {}: {:?}",
            hex::encode(tx.id()),
            tx.tx.sender.short(),
            tx.tx.nonce,
            tx.tx.body
        );
    }
    c.close().await;
    Ok(())
}

async fn chain_tx(id: &str, client: &ClientArgs) -> Result<()> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(id.trim(), &mut raw).context("a transaction id is 64 hex digits")?;
    let (c, _) = connect(client).await?;
    let Some(proof) = c.chain()?.tx(raw).await? else {
        bail!("no committed transaction {id}");
    };
    println!(
        "transaction {} in block {} at index {}: proof verified",
        id, proof.header.header.height, proof.proof.index
    );
    println!(
        "from {} nonce {}: {:?}",
        proof.tx.tx.sender, proof.tx.tx.nonce, proof.tx.tx.body
    );
    c.close().await;
    Ok(())
}

async fn audit(id: DocumentId, client: &ClientArgs) -> Result<()> {
    let (c, _) = connect(client).await?;
    let record = c.chain()?.check_registered(&id).await?;
    let report = dangan::audit::audit(c.chain()?, &c.all_nodes(), &id).await;
    c.close().await;
    let report = report?;
    let count = |f: fn(&Verdict) -> bool| report.lines.iter().filter(|l| f(&l.verdict)).count();
    let failed = count(|v| matches!(v, Verdict::Failed(_)));
    println!(
        "document {id}: {} reads recorded ({} verified against committed roots, {} pending, {failed} failed)",
        report.lines.len(),
        count(|v| matches!(v, Verdict::Verified { .. })),
        count(|v| matches!(v, Verdict::Pending)),
    );
    for l in &report.lines {
        let who = if l.record.reader == record.owner {
            " (owner)"
        } else if record.grants.contains_key(&l.record.reader) {
            " (grantee)"
        } else {
            ""
        };
        println!(
            "{}  {}{who} read {} from peer {}: {}",
            dangan::audit::utc(l.record.at_ms),
            l.record.reader,
            l.record.read,
            l.peer.short(),
            l.verdict
        );
    }
    for (peer, e) in &report.unreachable {
        println!("peer {} could not be asked: {e}", peer.short());
    }
    if failed > 0 {
        bail!("{failed} read records failed verification against the chain");
    }
    Ok(())
}

/// `verify --checkpoint`: offline, against the cluster file's validator set.
fn verify_checkpoint(path: &Path, client: &ClientArgs) -> Result<()> {
    use dangan::chain::checkpoint::SignedCheckpoint;
    use dangan::chain::validators::ValidatorHistory;
    let cluster = client.cluster()?;
    let chain = cluster
        .chain
        .context("the cluster file names no [chain] validators to check against")?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let note = SignedCheckpoint::from_bytes(&bytes)?;
    let key = note.checkpoint()?.chain;
    let (c, signers) = note.verify(&key, &ValidatorHistory::trusted(&chain.validators))?;
    println!(
        "checkpoint verified offline: height {}, block {}, state root {}, signed by {} of {} validators",
        c.height,
        hex::encode(c.block_hash),
        hex::encode(c.state_root),
        signers.len(),
        chain.validators.len()
    );
    println!("chain key {key} (compare with `dangan chain status`)");
    Ok(())
}

/// `verify --receipt`: offline, against the cluster file's validator set.
fn verify_receipt(id: Option<DocumentId>, path: &Path, client: &ClientArgs) -> Result<()> {
    let cluster = client.cluster()?;
    let chain = cluster
        .chain
        .context("the cluster file names no [chain] validators to check against")?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let r = Receipt::decode(&bytes)?;
    if let Some(id) = id
        && id != r.document
    {
        bail!("the receipt is for document {}, not {id}", r.document);
    }
    let manifest = r.verify(&chain.validators)?;
    println!(
        "receipt verified offline: document {} ({} bytes, {}), registered in block {} by {}, signed by {} of {} validators",
        r.document,
        manifest.size,
        manifest.document_type,
        r.registration.header.header.height,
        r.registration.tx.tx.sender,
        r.registration.header.signatures.len(),
        chain.validators.len()
    );
    println!(
        "chain key {} (compare with `dangan chain status`)",
        r.chain()
    );
    if let Some(c) = r.checkpoint(&chain.validators)? {
        println!(
            "covered by the checkpoint at height {}, signed by a majority of its validators",
            c.height
        );
    }
    Ok(())
}

async fn verify(id: DocumentId, client: &ClientArgs) -> Result<()> {
    let (c, keyring) = connect(client).await?;
    let chain = c.chain()?.link().clone();
    let record = c.chain()?.check_registered(&id).await?;
    println!(
        "document {id} is registered: block {}, owner {}, inclusion proof and the signatures of a majority of {} validator(s) verified{}",
        record.height,
        record.owner,
        chain.validators.len(),
        record
            .superseded_by
            .map(|n| format!("; superseded by {n}"))
            .unwrap_or_default()
    );
    if let Some(p) = record.supersedes {
        println!("it is a {} of {}", p.kind, p.document);
    }
    // Its record entry (type, retention, holds), proven like the registration.
    let entry = c.record_entry(&id).await?;
    let typed = entry.as_ref().and_then(|e| e.typed.as_ref());
    match typed {
        Some(t) => {
            println!(
                "type {} v{}, retention class {}, registered {}",
                t.type_name,
                t.type_version,
                t.class,
                records::utc(t.registered_ms)
            );
            match t.retention_ends_ms {
                Some(ends) => println!("retention ends on {}", records::utc(ends)),
                None => println!("retention: permanent"),
            }
        }
        None => println!("untyped: no retention period"),
    }
    let holds = entry.as_ref().map(|e| &e.holds);
    if holds.is_none_or(|h| h.is_empty()) {
        println!("no legal hold");
    }
    for (name, h) in holds.into_iter().flatten() {
        println!(
            "legal hold {name:?} since {} (block {}) by {}: {}",
            records::utc(h.time_ms),
            h.height,
            h.by,
            h.reason
        );
    }
    // The metadata, for a reader holding the key (its keyring, or a grant).
    if let Some(t) = typed {
        let key = match keyring.load(&id) {
            Ok(key) => Some(key),
            Err(_) => c.granted_key(&id).await.ok(),
        };
        match key.and_then(|k| dangan::crypto::open_meta(&k, &t.meta)) {
            Some(meta) => println!("metadata: {}", String::from_utf8_lossy(&meta)),
            None => println!("metadata: sealed (this key holds no grant on it)"),
        }
    }
    c.close().await;
    Ok(())
}

async fn doc_type(command: TypeCommand) -> Result<()> {
    match command {
        TypeCommand::Define {
            file,
            proposal,
            client,
        } => {
            let def = records::TypeFile::load(&file)?;
            let (c, _) = connect(&client).await?;
            let current = c.chain()?.doc_type(&def.name, None).await;
            c.close().await;
            let version = current?.map_or(1, |t| t.version + 1);
            println!("{} version {version}", def.name);
            let body = TxBody::DefineType {
                def,
                version,
                approvals: Vec::new(),
            };
            propose(&client, body, &proposal).await
        }
        TypeCommand::List { client } => {
            let (c, _) = connect(&client).await?;
            let types = c.chain()?.doc_types().await;
            c.close().await;
            for t in types? {
                println!(
                    "{} v{}: retention {} ({}), stored by {}",
                    t.def.name,
                    t.version,
                    t.def.retention,
                    t.def.class,
                    stores(&t.def.stores)
                );
            }
            Ok(())
        }
        TypeCommand::Show {
            name,
            version,
            client,
        } => {
            let (c, _) = connect(&client).await?;
            let t = c.chain()?.doc_type(&name, version).await;
            c.close().await;
            let t = t?.with_context(|| match version {
                Some(v) => format!("type {name:?} has no version {v}"),
                None => format!("there is no document type {name:?}"),
            })?;
            println!(
                "{} v{} (block {}, {}), proven against the chain",
                t.def.name,
                t.version,
                t.height,
                records::utc(t.time_ms)
            );
            println!("retention: {} ({})", t.def.retention, t.def.class);
            println!("stored by: {}", stores(&t.def.stores));
            let schema: serde_json::Value = serde_json::from_str(&t.def.schema)?;
            println!("schema: {}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
    }
}

fn stores(s: &records::Stores) -> String {
    match s {
        records::Stores::Any => "any department".into(),
        records::Stores::Departments(d) => d
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

async fn hold(command: HoldCommand) -> Result<()> {
    let (body, client, done) = match command {
        HoldCommand::Set {
            id,
            name,
            reason,
            client,
        } => (
            TxBody::SetHold {
                document: id,
                hold: name.clone(),
                reason,
            },
            client,
            format!("legal hold {name:?} set on {id}"),
        ),
        HoldCommand::Lift {
            id,
            name,
            reason,
            client,
        } => (
            TxBody::LiftHold {
                document: id,
                hold: name.clone(),
                reason,
            },
            client,
            format!("legal hold {name:?} lifted from {id}"),
        ),
    };
    let (c, _) = connect(&client).await?;
    let committed =
        async { Ok::<_, dangan::client::ClientError>(c.chain()?.submit(body).await?) }.await;
    c.close().await;
    let (height, _) = committed?;
    println!("{done} in block {height}");
    Ok(())
}

async fn cluster(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status { client, data_dir } => cluster_status(&client, &data_dir).await,
        ClusterCommand::Add {
            id,
            addr,
            zone,
            weight,
            client,
            data_dir,
        } => {
            let op = operator(&client, &data_dir)?;
            let layout = op
                .change_layout(TxBody::AddNode {
                    node: id,
                    addr,
                    zone,
                    weight,
                })
                .await?;
            println!(
                "added {}: layout epoch {}; now run `dangan rebalance`",
                id.short(),
                layout.epoch
            );
            Ok(())
        }
        ClusterCommand::Drain {
            id,
            client,
            data_dir,
        } => {
            let op = operator(&client, &data_dir)?;
            let layout = op.change_layout(TxBody::DrainNode { node: id }).await?;
            println!(
                "draining {}: layout epoch {}; now run `dangan rebalance`",
                id.short(),
                layout.epoch
            );
            Ok(())
        }
        ClusterCommand::Remove {
            id,
            client,
            data_dir,
        } => {
            let op = operator(&client, &data_dir)?;
            let layout = op.change_layout(TxBody::RemoveNode { node: id }).await?;
            println!("removed {}: layout epoch {}", id.short(), layout.epoch);
            Ok(())
        }
    }
}

async fn cluster_status(client: &ClientArgs, data_dir: &Path) -> Result<()> {
    let op = operator(client, data_dir)?;
    let bar = ops_bar("checking stripes");
    let pb = bar.clone();
    let status = op
        .status(&move |p| {
            pb.set_length(p.total);
            pb.set_position(p.done);
        })
        .await?;
    bar.finish_and_clear();
    print!("{}", status.table());
    Ok(())
}

async fn rebalance(client: &ClientArgs, ops: &OpsArgs) -> Result<()> {
    let op = operator(client, &ops.data_dir)?;
    let bar = ops_bar("rebalance");
    let report = op.rebalance(&ops.options(), &bar_progress(&bar)).await?;
    bar.finish_and_clear();
    print_converge("rebalance", &report);
    Ok(())
}

async fn repair(client: &ClientArgs, ops: &OpsArgs) -> Result<()> {
    let op = operator(client, &ops.data_dir)?;
    let bar = ops_bar("repair");
    let report = op.repair(&ops.options(), &bar_progress(&bar)).await?;
    bar.finish_and_clear();
    print_converge("repair", &report);
    Ok(())
}

fn collect_options(grace_hours: f64) -> Result<ops::CollectOptions> {
    if !(grace_hours.is_finite() && grace_hours >= 0.0) {
        bail!("--grace-hours must be a number of hours, 0 or more");
    }
    Ok(ops::CollectOptions {
        grace: Duration::from_secs_f64(grace_hours * 3600.0),
    })
}

async fn collect(
    client: &ClientArgs,
    ops: &OpsArgs,
    grace_hours: f64,
    every_hours: Option<f64>,
) -> Result<()> {
    let options = collect_options(grace_hours)?;
    if let Some(every) = every_hours {
        let jobs = ops::Jobs {
            scrub: false,
            repair: false,
            collect: Some(options),
        };
        return maintain(client, ops, &jobs, every, false, None).await;
    }
    let op = operator(client, &ops.data_dir)?;
    let bar = ops_bar("collect");
    let report = op
        .collect(&ops.options(), &options, &bar_progress(&bar))
        .await?;
    bar.finish_and_clear();
    print_collect(&report, grace_hours, ops.dry_run);
    Ok(())
}

/// `dangan maintain` (and `collect --every-hours`): rounds of `jobs` until SIGTERM or
/// Ctrl-C, or one round with `once`.
async fn maintain(
    client: &ClientArgs,
    ops: &OpsArgs,
    jobs: &ops::Jobs,
    every_hours: f64,
    once: bool,
    metrics_listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    if !(every_hours.is_finite() && every_hours > 0.0) {
        bail!("--every-hours must be a number of hours above 0");
    }
    let op = operator(client, &ops.data_dir)?;
    let mut registry =
        dangan::metrics::prometheus_client::registry::Registry::with_prefix("dangan");
    let metrics = ops::MaintainMetrics::new(&mut registry);
    let server = match metrics_listen {
        Some(at) => {
            let m = metrics.clone();
            let ready: dangan::metrics::Ready = std::sync::Arc::new(move || {
                let problem = m.last_problem();
                Box::pin(async move { problem.map_or(Ok(()), Err) })
            });
            let server = dangan::metrics::serve(at, std::sync::Arc::new(registry), ready).await?;
            println!("metrics on http://{}/metrics", server.addr());
            Some(server)
        }
        None => None,
    };
    let names: Vec<&str> = [
        (jobs.scrub, "scrub"),
        (jobs.repair, "repair"),
        (jobs.collect.is_some(), "collect"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if names.is_empty() {
        bail!("nothing to do: every job was left out");
    }
    let grace = jobs
        .collect
        .as_ref()
        .map_or(0.0, |c| c.grace.as_secs_f64() / 3600.0);
    let print = |round: &ops::Round| {
        if let Some(r) = &round.scrub {
            match r {
                Ok(r) => println!(
                    "round {}: scrub: {} shards on {} peers, {} corrupt",
                    round.number,
                    r.shards_checked,
                    r.peers,
                    r.corrupt.len()
                ),
                Err(e) => eprintln!("round {}: scrub failed: {e}", round.number),
            }
        }
        if let Some(r) = &round.repair {
            match r {
                Ok(r) => {
                    print!("round {}: ", round.number);
                    print_converge("repair", r);
                }
                Err(e) => eprintln!("round {}: repair failed: {e}", round.number),
            }
        }
        if let Some(r) = &round.collect {
            match r {
                Ok(r) => {
                    print!("round {}: ", round.number);
                    print_collect(r, grace, ops.dry_run);
                }
                Err(e) => eprintln!(
                    "round {}: collect failed (the next round runs as planned): {e}",
                    round.number
                ),
            }
        }
    };
    if once {
        let round = op
            .maintain_once(&ops.options(), jobs, Some(&metrics), 1)
            .await;
        print(&round);
        if let Some(server) = server {
            server.stop().await;
        }
        let problems = round.problems();
        if !problems.is_empty() {
            bail!("the round left {} problems", problems.len());
        }
        return Ok(());
    }
    println!(
        "maintain: {} every {every_hours} h until stopped",
        names.join(", ")
    );
    let rounds = op
        .maintain_every(
            &ops.options(),
            jobs,
            Duration::from_secs_f64(every_hours * 3600.0),
            Some(&metrics),
            stopped(),
            &print,
        )
        .await;
    if let Some(server) = server {
        server.stop().await;
    }
    println!("maintain: stopped after {rounds} rounds");
    Ok(())
}

fn print_collect(report: &ops::CollectReport, grace_hours: f64, dry_run: bool) {
    println!(
        "collect: {} peers, {} registered documents kept; {} entries older than {grace_hours} h: \
         {} shard references and {} manifests {}, {} kept",
        report.peers,
        report.documents,
        report.stale,
        report.references_collected,
        report.manifests_collected,
        if dry_run { "would go" } else { "removed" },
        report.kept
    );
    if !report.shards_considered {
        eprintln!(
            "warning: no shard was collected: a registered document's manifest could not be read"
        );
    }
    for f in &report.failures {
        eprintln!("warning: {f}");
    }
}

async fn scrub(client: &ClientArgs, ops: &OpsArgs, no_repair: bool) -> Result<()> {
    let op = operator(client, &ops.data_dir)?;
    let bar = ops_bar("scrub");
    let report = op.scrub(&ops.options(), &bar_progress(&bar)).await?;
    bar.finish_and_clear();
    println!(
        "scrub: {} shards ({:.1} MB) re-hashed on {} peers at {:.0} MB/s; {} corrupt",
        report.shards_checked,
        report.bytes as f64 / 1e6,
        report.peers,
        report.mb_per_s(),
        report.corrupt.len()
    );
    for (peer, shard) in &report.corrupt {
        println!(
            "corrupt: shard {shard} on peer {} (quarantined)",
            peer.short()
        );
    }
    for f in &report.failures {
        eprintln!("warning: {f}");
    }
    if !report.corrupt.is_empty() && !no_repair && !ops.dry_run {
        let bar = ops_bar("repair");
        let repair = op.repair(&ops.options(), &bar_progress(&bar)).await?;
        bar.finish_and_clear();
        print_converge("repair", &repair);
    }
    Ok(())
}

async fn rekey(id: DocumentId, client: &ClientArgs) -> Result<()> {
    let (c, keyring) = connect(client).await?;
    let bar = progress_bar(0, "rekey");
    let result = revision::rekey(&c, &id, &keyring, &advance(&bar)).await;
    bar.finish_and_clear();
    let report = result.with_context(|| format!("rekeying {id}"))?;
    print_revision(&report);
    c.close().await;
    let collect = report.collect.as_ref().expect("a rekey collects");
    if !collect.complete() {
        bail!(
            "{} old shards or manifests are still stored; run `dangan rekey {id}` again once the peers are back",
            collect.remaining.len()
        );
    }
    Ok(())
}

async fn supersede(
    id: DocumentId,
    file: &Path,
    client: &ClientArgs,
    document_type: Option<String>,
    grants: &[GrantAddress],
) -> Result<()> {
    let (c, keyring) = connect(client).await?;
    let old = c.manifest(&id).await?;
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let size = f.metadata().await?.len();
    let info = DocumentInfo {
        department: old.department,
        document_type: document_type.unwrap_or(old.document_type),
        created_at_ms: None,
    };
    let bar = progress_bar(size, "supersede");
    let result = revision::supersede(
        &c,
        &id,
        f,
        Some(size),
        info,
        grants,
        &keyring,
        &advance(&bar),
    )
    .await;
    bar.finish_and_clear();
    let report = result.with_context(|| format!("superseding {id}"))?;
    print_revision(&report);
    c.close().await;
    Ok(())
}

/// The newest version of `id` (saying so when it is not `id` itself).
async fn newest(c: &Client, id: DocumentId) -> Result<DocumentId> {
    if c.chain().is_err() {
        return Ok(id);
    }
    let path = revision::latest(c, &id).await?;
    let mut at = id;
    for (next, kind) in &path {
        eprintln!("{at} was superseded by {next} ({kind})");
        at = *next;
    }
    if at != id {
        eprintln!("reading the newest version {at} (--exact reads {id} itself)");
    }
    Ok(at)
}

fn print_revision(r: &revision::RevisionReport) {
    eprintln!(
        "{} of {}: {:.1} MB stored as a new version, committed in block {} with {} grants carried over{}{}",
        r.kind,
        r.old,
        r.bytes as f64 / 1e6,
        r.height,
        r.carried.len(),
        if r.granted.is_empty() {
            String::new()
        } else {
            format!(" and {} new", r.granted.len())
        },
        if r.expired.is_empty() {
            String::new()
        } else {
            format!("; {} expired grants not carried", r.expired.len())
        },
    );
    if let Some(c) = &r.collect {
        eprintln!(
            "old version collected: {} shard references dropped, {} absent, {} done before, {} manifest copies removed{}",
            c.shards_deleted,
            c.shards_absent,
            c.shards_resumed,
            c.manifests_deleted,
            if c.complete() { "" } else { "; incomplete" }
        );
        for (stripe, slot, what, reason) in &c.remaining {
            if *stripe == u64::MAX {
                eprintln!("still stored: {what}: {reason}");
            } else {
                eprintln!("still stored: stripe {stripe} slot {slot}, shard {what}: {reason}");
            }
        }
    }
    println!("{}", r.new);
}

/// Commits `bodies` in order, signed by the client's key, and says where the last went.
async fn submit_all(client: &ClientArgs, bodies: Vec<TxBody>, done: &str) -> Result<()> {
    let (c, _) = connect(client).await?;
    let committed = async {
        let mut at = None;
        for body in bodies {
            at = Some(c.chain()?.submit(body).await?);
        }
        Ok::<_, dangan::client::ClientError>(at)
    }
    .await;
    c.close().await;
    if let Some((height, index)) = committed? {
        println!(
            "{done} in block {height} (transaction {index}); blocks after it are final with a \
             majority of the new set"
        );
    }
    Ok(())
}

/// A client placing by the chain's layout (the cluster file's if the chain has none; reads
/// fall back to the file's).
async fn connect(args: &ClientArgs) -> Result<(Client, Keyring)> {
    let paths = args.paths()?;
    let identity = Identity::load(paths.key_path()?)?;
    let client = ClusterFile::load(paths.cluster_path()?)?
        .connect(&identity)
        .await?;
    Ok((client, Keyring::open(&paths.keyring.path)?))
}

impl OpsArgs {
    fn options(&self) -> OpsOptions {
        OpsOptions {
            rate: (self.rate_mb > 0.0).then_some(self.rate_mb * 1e6),
            parallel: self.parallel.max(1),
            dry_run: self.dry_run,
            ..OpsOptions::default()
        }
    }
}

fn operator(args: &ClientArgs, data_dir: &Path) -> Result<Operator> {
    let identity = args.identity()?;
    let cluster = args.cluster()?;
    Ok(Operator::new(
        &identity,
        cluster.trust(),
        cluster.layout.clone(),
        cluster.options(),
        data_dir,
    ))
}

fn ops_bar(verb: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{verb} [{{elapsed_precise}}] [{{bar:40}}] {{pos}}/{{len}} {{msg}} eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn bar_progress(bar: &ProgressBar) -> impl Fn(ops::Progress) + Send + Sync + use<> {
    let bar = bar.clone();
    move |p: ops::Progress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
        bar.set_message(format!("{:.1} MB", p.bytes as f64 / 1e6));
    }
}

fn print_converge(what: &str, r: &ops::ConvergeReport) {
    println!(
        "{what}: {} documents, {} stripes ({} were below full redundancy); {} shards moved, {} rebuilt, {} old copies deleted, {} resumed from the journal; {} manifests written, {} deleted; {:.1} MB in {:.1} s ({:.0} MB/s)",
        r.documents,
        r.stripes,
        r.stripes_below,
        r.shards_moved,
        r.shards_rebuilt,
        r.shards_deleted,
        r.shards_resumed,
        r.manifests_written,
        r.manifests_deleted,
        r.bytes as f64 / 1e6,
        r.elapsed.as_secs_f64(),
        r.mb_per_s()
    );
    for f in &r.failures {
        eprintln!("warning: {f}");
    }
    if !r.failures.is_empty() {
        eprintln!(
            "{} problems left; run the command again once the peers are back",
            r.failures.len()
        );
    }
}

/// The progress callback of a client operation, moving `bar`.
fn advance(bar: &ProgressBar) -> impl Fn(u64, u64) + Send + Sync + 'static {
    let bar = bar.clone();
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }
}

fn progress_bar(len: u64, verb: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{verb} [{{elapsed_precise}}] [{{bar:40}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn local_config(dir: &Path, options: LocalOptions) -> Result<()> {
    let written = config::local::write(dir, options)?;
    let LocalConfig {
        peers,
        base_port,
        last_port,
        k,
        m,
    } = written;
    let d = dir.display();
    println!(
        "wrote {peers} peers (127.0.0.1:{base_port}-{last_port}) and a department key to {d}\n\
         coding: k = {k}, m = {m} (each stripe on {} peers; any {m} may be lost)\n\
         start each peer:  dangan node --config {d}/node1.toml   (… node{peers}.toml)\n\
         then:             dangan put FILE --key {d}/keys/department.key --cluster {d}/cluster.toml --keyring {d}/keyring",
        k + m
    );
    Ok(())
}

/// `dangan init`: asks in a terminal for what the flags left out, refuses elsewhere.
#[allow(clippy::too_many_arguments)] // one per flag of `dangan init`
fn init(
    dir: &Path,
    listen: Option<std::net::SocketAddr>,
    addr: Option<std::net::SocketAddr>,
    zone: Option<String>,
    weight: u32,
    validator: bool,
    data_dir: PathBuf,
    metrics_listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    let listen = match listen {
        Some(listen) => listen,
        None => ask("UDP address to listen on", "0.0.0.0:7101", "--listen")?
            .parse()
            .context("the listen address (host:port)")?,
    };
    let addr = match addr {
        Some(addr) => Some(addr),
        None if listen.ip().is_unspecified() => Some(
            ask(
                "Address other machines reach this node at (host:port)",
                "",
                "--addr",
            )?
            .parse()
            .context("the node's address (host:port)")?,
        ),
        None => None,
    };
    let zone = match zone {
        Some(zone) => zone,
        None => ask("Failure zone (rack, room or site)", "zone-1", "--zone")?,
    };
    let done = config::init::write(
        dir,
        &config::init::InitOptions {
            listen,
            addr,
            zone,
            weight,
            validator,
            data_dir,
            metrics_listen,
        },
    )?;
    let d = dir.display();
    println!("node {}", done.node);
    if let Some(v) = done.validator {
        println!("validator {v}");
    }
    println!(
        "wrote {} and its keys under {d}/keys (keep them secret; back them up)\n\n\
         Add to the consortium's cluster.toml, on every machine:\n\n{}\n\
         Add to the genesis (before the chain starts; afterwards `dangan cluster add` / \
         `dangan chain add-validator`):\n\n{}\n\
         Then put cluster.toml{} in {d} and start: dangan node --config {}",
        done.config.display(),
        done.cluster_entry,
        done.genesis_entry,
        if done.validator.is_some() {
            " and genesis.toml"
        } else {
            ""
        },
        done.config.display(),
    );
    Ok(())
}

/// Asks `question` on the terminal (`default` on an empty answer); without a terminal, says
/// which flag to give instead.
fn ask(question: &str, default: &str, flag: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("{flag} is required (no terminal to ask on)");
    }
    let shown = if default.is_empty() {
        String::new()
    } else {
        format!(" [{default}]")
    };
    eprint!("{question}{shown}: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let answer = line.trim();
    if answer.is_empty() {
        if default.is_empty() {
            bail!("{flag} is required");
        }
        return Ok(default.to_string());
    }
    Ok(answer.to_string())
}
