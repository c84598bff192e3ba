//! The `dangan` binary as separate processes: commands run to completion with their output
//! in files, `dangan node` peers that can be killed (SIGKILL), stopped (SIGSTOP), continued
//! and restarted from their data directory, and a cluster written by `dangan local-config`.

use std::fs::{self, File};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::Lab;

pub const BIN: &str = env!("CARGO_BIN_EXE_dangan");
/// Longest any one command may take before the test fails.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// Longest a peer may take to print "serving on".
pub const START_LIMIT: Duration = Duration::from_secs(15);

/// What a finished command left behind.
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    pub fn expect_ok(self, what: &str) -> Run {
        assert!(self.ok, "{what} failed: {}", self.describe());
        self
    }

    pub fn expect_fail(self, what: &str) -> Run {
        assert!(
            !self.ok,
            "{what} should have failed but succeeded: {}",
            self.describe()
        );
        self
    }

    /// The last line of stdout, trimmed (where `put`, `rekey` and `supersede` print the id).
    pub fn last_line(&self) -> String {
        self.stdout
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

/// `dangan ARGS` with a quiet, deterministic environment (no backtraces in error output).
pub fn dangan<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = quiet(Command::new(BIN));
    cmd.args(args);
    cmd
}

/// `cmd` with a quiet, deterministic environment and no input.
fn quiet(mut cmd: Command) -> Command {
    cmd.env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// `dangan local-config DIR ARGS` (`--peers N`, `--base-port P`, ...).
pub fn local_config(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = dangan(["local-config".as_ref(), dir.as_os_str()]);
    cmd.args(args);
    cmd
}

/// Runs `cmd` to completion with its output in files under `logs` (no pipe to fill up),
/// killing it and failing the test if it takes longer than [`COMMAND_LIMIT`].
pub fn run(cmd: Command, logs: &Path, name: &str) -> Run {
    run_within(cmd, logs, name, COMMAND_LIMIT)
}

/// [`run`] with another time limit.
pub fn run_within(mut cmd: Command, logs: &Path, name: &str, limit: Duration) -> Run {
    let out = logs.join(format!("{name}.stdout"));
    let err = logs.join(format!("{name}.stderr"));
    cmd.stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    let mut child = cmd.spawn().expect("spawning dangan");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} did not finish within {limit:?}; stderr:\n{}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("{name}: {:.2} s", start.elapsed().as_secs_f64());
    Run {
        ok: status.success(),
        code: status.code(),
        stdout: fs::read_to_string(&out).unwrap(),
        stderr: fs::read_to_string(&err).unwrap(),
    }
}

/// Sends `signal` (a `kill` signal name: STOP, CONT, KILL) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// A running `dangan node`, killed (and reaped) when dropped, so no peer outlives the test
/// even when an assertion panics. Each start of the same node writes its own log files
/// (`NAME.N.stdout`, `NAME.N.stderr`).
pub struct Node {
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    stopped: bool,
}

impl Node {
    /// Starts `dangan node --config CONFIG` and waits until it prints "serving on".
    /// `Err` carries the peer's stderr if it exited first.
    pub fn start(config: &Path, logs: &Path, name: &str) -> Result<Node, String> {
        Node::start_command(Command::new(BIN), config, logs, name)
    }

    /// [`Node::start`] with `program` (the `dangan` binary, or a command that execs it,
    /// such as `ip netns exec NS dangan`) as the first words of the command line.
    pub fn start_command(
        program: Command,
        config: &Path,
        logs: &Path,
        name: &str,
    ) -> Result<Node, String> {
        let mut n = 1;
        while logs.join(format!("{name}.{n}.stdout")).exists() {
            n += 1;
        }
        let stdout = logs.join(format!("{name}.{n}.stdout"));
        let stderr = logs.join(format!("{name}.{n}.stderr"));
        let mut cmd = quiet(program);
        cmd.args([Path::new("node"), Path::new("--config"), config]);
        cmd.stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        let mut node = Node {
            child: cmd.spawn().expect("spawning dangan node"),
            stdout,
            stderr,
            stopped: false,
        };
        let start = Instant::now();
        loop {
            let out = fs::read_to_string(&node.stdout).unwrap_or_default();
            if out.contains("serving on") {
                return Ok(node);
            }
            if let Some(status) = node.child.try_wait().unwrap() {
                return Err(format!(
                    "{name} exited ({status}) before serving; stderr:\n{}",
                    fs::read_to_string(&node.stderr).unwrap_or_default()
                ));
            }
            if start.elapsed() > START_LIMIT {
                return Err(format!(
                    "{name} did not print \"serving on\" within {START_LIMIT:?}; stderr:\n{}",
                    fs::read_to_string(&node.stderr).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn serving_line(&self) -> String {
        fs::read_to_string(&self.stdout)
            .unwrap()
            .lines()
            .find(|l| l.contains("serving on"))
            .unwrap()
            .to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: the process stays, its sockets stay bound, nothing it receives is answered
    /// (its traffic is dropped, as in a network partition) until [`Node::resume`].
    pub fn pause(&mut self) {
        signal(self.pid(), "STOP");
        self.stopped = true;
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&mut self) {
        signal(self.pid(), "CONT");
        self.stopped = false;
    }

    pub fn is_paused(&self) -> bool {
        self.stopped
    }

    /// SIGTERM, as a service manager stops a node, and the way it ended (waits up to 30 s,
    /// then kills it and panics).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        signal(self.pid(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the node did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node's stderr so far (every start's own file).
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A base port such that `base..base + n` are all free UDP ports on 127.0.0.1 right now
/// (`local-config` gives peer i the port `base + i - 1`). The probe sockets are closed on
/// return, so another process could still take a port before the peers bind it; the caller
/// retries on "address in use".
pub fn free_port_range(n: u16) -> u16 {
    for _ in 0..100 {
        let first = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        if base.checked_add(n - 1).is_none() {
            continue;
        }
        let rest: Result<Vec<UdpSocket>, _> = (1..n)
            .map(|i| UdpSocket::bind(("127.0.0.1", base + i)))
            .collect();
        if rest.is_ok() {
            return base;
        }
    }
    panic!("no range of {n} consecutive free UDP ports found on 127.0.0.1");
}

/// A local cluster written by `dangan local-config` with one `dangan node` process per peer.
pub struct ProcessCluster {
    pub dir: PathBuf,
    pub logs: PathBuf,
    pub base_port: u16,
    /// Peer i (1-based) is `nodes[i - 1]`; `None` while it is down.
    pub nodes: Vec<Option<Node>>,
    /// What `local-config` printed.
    pub local_config: String,
    /// The namespaces the peers run in, if any (dropped after the peers: it is the last
    /// field).
    pub lab: Option<Lab>,
}

impl ProcessCluster {
    /// `local-config --peers PEERS --validators VALIDATORS` into `root/clusterN` on free
    /// ports, then one `dangan node` per peer; logs go to `root/logs`. Retries with new
    /// ports if a port was taken between probing and binding.
    pub fn start(root: &Path, peers: usize, validators: usize) -> ProcessCluster {
        Self::start_with(root, peers, validators, |_| {})
    }

    /// [`ProcessCluster::start`], calling `prepare(dir)` after `local-config` and before
    /// the peers start (to edit the files it wrote).
    pub fn start_with(
        root: &Path,
        peers: usize,
        validators: usize,
        prepare: impl Fn(&Path),
    ) -> ProcessCluster {
        Self::start_in(root, peers, validators, None, prepare)
    }

    /// [`ProcessCluster::start_with`], each peer i in `lab`'s namespace for node i when
    /// there is a lab (`prepare` must then make the configs listen on `lab`'s addresses).
    pub fn start_in(
        root: &Path,
        peers: usize,
        validators: usize,
        mut lab: Option<Lab>,
        prepare: impl Fn(&Path),
    ) -> ProcessCluster {
        let logs = root.join("logs");
        fs::create_dir_all(&logs).unwrap();
        let mut last_failure = String::new();
        for attempt in 1..=3 {
            let dir = root.join(format!("cluster{attempt}"));
            let base = free_port_range(peers as u16);
            let lc = run(
                local_config(
                    &dir,
                    &[
                        "--peers",
                        &peers.to_string(),
                        "--validators",
                        &validators.to_string(),
                        "--base-port",
                        &base.to_string(),
                    ],
                ),
                &logs,
                &format!("local-config{attempt}"),
            )
            .expect_ok("local-config");
            prepare(&dir);
            let mut cluster = ProcessCluster {
                dir,
                logs: logs.clone(),
                base_port: base,
                nodes: Vec::new(),
                local_config: lc.stdout,
                lab: lab.take(),
            };
            let mut failed = None;
            for i in 1..=peers {
                match cluster.spawn(i) {
                    Ok(node) => {
                        let line = node.serving_line();
                        let port = base + i as u16 - 1;
                        let host = cluster
                            .lab
                            .as_ref()
                            .map_or("127.0.0.1".into(), |lab| lab.node_addr(i).to_string());
                        assert!(
                            line.ends_with(&format!("serving on {host}:{port}")),
                            "node{i}: {line}"
                        );
                        cluster.nodes.push(Some(node));
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => return cluster,
                Some(e) if e.to_lowercase().contains("in use") => {
                    lab = cluster.lab.take();
                    last_failure = e
                }
                Some(e) => panic!("{e}"),
            }
        }
        panic!("peers could not bind their ports in 3 attempts; last: {last_failure}");
    }

    fn spawn(&self, i: usize) -> Result<Node, String> {
        let config = self.dir.join(format!("node{i}.toml"));
        let program = match &self.lab {
            Some(lab) => lab.command(i, BIN),
            None => Command::new(BIN),
        };
        Node::start_command(program, &config, &self.logs, &format!("node{i}"))
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `--key KEY --cluster DIR/cluster.toml --keyring KEYRING`
    pub fn client_args(&self, key: &Path, keyring: &Path) -> Vec<PathBuf> {
        vec![
            "--key".into(),
            key.to_owned(),
            "--cluster".into(),
            self.path("cluster.toml"),
            "--keyring".into(),
            keyring.to_owned(),
        ]
    }

    pub fn node(&mut self, i: usize) -> &mut Node {
        self.nodes[i - 1]
            .as_mut()
            .unwrap_or_else(|| panic!("peer {i} is down"))
    }

    /// Kills peer `i` (1-based), as a crash would: SIGKILL, no shutdown.
    pub fn kill(&mut self, i: usize) {
        let node = self.nodes[i - 1].take().expect("peer already stopped");
        drop(node);
    }

    /// Starts peer `i` again from its data directory (after [`ProcessCluster::kill`]).
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i - 1].is_none(), "peer {i} is running");
        let node = self
            .spawn(i)
            .unwrap_or_else(|e| panic!("restarting peer {i}: {e}"));
        self.nodes[i - 1] = Some(node);
    }

    /// Starts a peer whose `nodeI.toml` was written after `local-config` (index past the
    /// others), and keeps it as peer `i`.
    pub fn start_extra(&mut self, i: usize) {
        while self.nodes.len() < i {
            self.nodes.push(None);
        }
        self.restart(i);
    }

    /// Panics if any peer's stderr, of any of its starts, mentions a panic.
    pub fn assert_no_panics(&self) {
        for entry in fs::read_dir(&self.logs).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("node") && name.ends_with(".stderr") {
                let err = fs::read_to_string(&path).unwrap_or_default();
                assert!(!err.contains("panicked"), "{name} shows a panic:\n{err}");
            }
        }
    }
}

/// True if `s` is a document id's text form (64 lowercase hex digits).
pub fn is_document_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
