//! A private network for `dangan node` processes: one Linux network namespace per node,
//! joined by a bridge in a namespace of its own, and a veth from the test's (root)
//! namespace into that bridge for the test's clients and commands. Everything lives in one
//! `10.218.X.0/24` subnet that no other run holds: node i is `10.218.X.i`, the test is
//! `10.218.X.254`. Needs root and `ip` (iproute2); congestion also needs `tc`.
//!
//! Faults are made with nothing but routes and qdiscs, so that no firewall tool is needed:
//! - [`Lab::cut`] drops, silently, what one host sends to another: a /32 route in the
//!   sender's namespace through a neighbour whose MAC no interface has, so the bridge floods
//!   the frame and every port discards it (no ICMP, no send error: a timeout, as in a real
//!   partition). Cut both ways for a partition, one way for asymmetric loss.
//! - [`Lab::congest`] puts a token bucket (`tc tbf`) on both ends of a node's link: a slow
//!   link whose queue delays packets and drops what overflows it.
//! - [`Lab::heal`] removes every cut and every congestion.
//!
//! Not for: starting processes (`process`); deciding which faults to make (the tests).
//!
//! Names carry the subnet number (`dgXb` the bridge, `dgXnI` node I, `dgXc` the test's
//! veth), and the bridge namespace is created first, atomically, so two runs never share a
//! subnet and a leftover of a killed run never breaks the next one. [`Lab`]'s `Drop`
//! deletes the namespaces (the veths go with them), also when a test fails.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Where [`Lab::cut`] sends what it drops: an address of the subnet no host takes...
const SINK: u8 = 253;
/// ...resolved, permanently, to a MAC address no interface has.
const SINK_MAC: &str = "02:00:00:00:da:fd";
/// The test's own address in the subnet.
const CLIENT: u8 = 254;
/// A slow link: rate, bucket, longest queueing delay (`tc tbf`).
const CONGESTION: [&str; 6] = ["rate", "8mbit", "burst", "32kb", "latency", "200ms"];

/// One end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    /// Node i (1-based) in its namespace.
    Node(usize),
    /// The test process and the commands it runs, in the root namespace.
    Client,
}

/// The namespaces of one run, deleted on drop.
pub struct Lab {
    /// X in 10.218.X.0/24.
    subnet: u8,
    nodes: usize,
    /// Namespaces created so far (the bridge's first), for `Drop`.
    created: Vec<String>,
    /// (from, to) pairs cut now.
    cuts: BTreeSet<(Host, Host)>,
    /// Nodes whose link is congested now.
    congested: BTreeSet<usize>,
}

/// `ip ARGS`: Ok, or the command and its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// Namespaces for `nodes` nodes on a subnet no other run holds. `Err` says why they
    /// could not be made (not root, no `ip`, no namespace support); what was made is
    /// deleted again.
    pub fn create(nodes: usize) -> Result<Lab, String> {
        assert!(nodes < usize::from(SINK), "too many nodes for one /24");
        // Start from a subnet that depends on the process and the time, so parallel runs
        // rarely even try the same one.
        let start = (std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::from(d.subsec_nanos())))
            % 250;
        let mut last = String::new();
        for i in 0..250 {
            let subnet = ((start + i) % 250 + 1) as u8;
            let mut lab = Lab {
                subnet,
                nodes,
                created: Vec::new(),
                cuts: BTreeSet::new(),
                congested: BTreeSet::new(),
            };
            // Atomic: fails if another run holds this subnet.
            match ip(&["netns", "add", &lab.bridge_ns()]) {
                Ok(()) => lab.created.push(lab.bridge_ns()),
                Err(e) if e.contains("File exists") => {
                    last = e;
                    continue;
                }
                Err(e) => return Err(e),
            }
            lab.build()?;
            return Ok(lab);
        }
        Err(format!(
            "every subnet 10.218.1-250.0/24 is taken; last: {last}"
        ))
    }

    fn build(&mut self) -> Result<(), String> {
        let bridge = self.bridge_ns();
        let sink = self.ip_of(SINK).to_string();
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for i in 1..=self.nodes {
            let ns = self.netns(i);
            ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &bridge, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", self.node_addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "neigh",
                "add",
                &sink,
                "lladdr",
                SINK_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
        }
        let client = self.client_dev();
        ip(&[
            "link", "add", &client, "type", "veth", "peer", "name", "pc", "netns", &bridge,
        ])?;
        ip(&["-n", &bridge, "link", "set", "pc", "master", "br0", "up"])?;
        let addr = format!("{}/24", self.client_addr());
        ip(&["addr", "add", &addr, "dev", &client])?;
        ip(&["link", "set", &client, "up"])?;
        ip(&[
            "neigh",
            "add",
            &sink,
            "lladdr",
            SINK_MAC,
            "dev",
            &client,
            "nud",
            "permanent",
        ])?;
        Ok(())
    }

    fn ip_of(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 218, self.subnet, host)
    }

    fn bridge_ns(&self) -> String {
        format!("dg{}b", self.subnet)
    }

    fn client_dev(&self) -> String {
        format!("dg{}c", self.subnet)
    }

    /// The namespace of node `i`.
    pub fn netns(&self, i: usize) -> String {
        assert!((1..=self.nodes).contains(&i), "node {i} has no namespace");
        format!("dg{}n{i}", self.subnet)
    }

    pub fn node_addr(&self, i: usize) -> Ipv4Addr {
        assert!((1..=self.nodes).contains(&i), "node {i} has no namespace");
        self.ip_of(i as u8)
    }

    /// The test's address (in the root namespace): bind clients here.
    pub fn client_addr(&self) -> Ipv4Addr {
        self.ip_of(CLIENT)
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// `ip netns exec NS PROGRAM`: the program runs in node `i`'s namespace (`ip` execs it,
    /// so the child's pid is the program's).
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns(i), program]);
        cmd
    }

    fn addr_of(&self, host: Host) -> Ipv4Addr {
        match host {
            Host::Node(i) => self.node_addr(i),
            Host::Client => self.client_addr(),
        }
    }

    /// `ip ARGS` in `host`'s namespace, on its link into the bridge.
    fn route(&self, host: Host, verb: &str, to: Ipv4Addr) -> Result<(), String> {
        let dst = format!("{to}/32");
        let sink = self.ip_of(SINK).to_string();
        match host {
            Host::Node(i) => ip(&[
                "-n",
                &self.netns(i),
                "route",
                verb,
                &dst,
                "via",
                &sink,
                "dev",
                "eth0",
            ]),
            Host::Client => ip(&["route", verb, &dst, "via", &sink, "dev", &self.client_dev()]),
        }
    }

    /// From now on every packet `from` sends to `to` is lost (and nothing tells `from`).
    pub fn cut(&mut self, from: Host, to: Host) {
        assert_ne!(from, to, "a host cannot be cut from itself");
        if self.cuts.insert((from, to)) {
            self.route(from, "add", self.addr_of(to))
                .unwrap_or_else(|e| panic!("cutting {from:?} -> {to:?}: {e}"));
        }
    }

    /// Cuts every link between a host of `a` and a host of `b`, both ways.
    pub fn partition(&mut self, a: &[Host], b: &[Host]) {
        for &x in a {
            for &y in b {
                self.cut(x, y);
                self.cut(y, x);
            }
        }
    }

    /// Every host but `host`: the other nodes and the client.
    pub fn others(&self, host: Host) -> Vec<Host> {
        (1..=self.nodes)
            .map(Host::Node)
            .chain([Host::Client])
            .filter(|&h| h != host)
            .collect()
    }

    /// A slow link for node `i`, both ways: [`CONGESTION`].
    pub fn congest(&mut self, i: usize) {
        if self.congested.insert(i) {
            let (ns, bridge, port) = (self.netns(i), self.bridge_ns(), format!("p{i}"));
            for (ns, dev) in [(&ns, "eth0"), (&bridge, port.as_str())] {
                let mut args = vec!["-n", ns, "qdisc", "add", "dev", dev, "root", "tbf"];
                args.extend(CONGESTION);
                run("tc", &args).unwrap_or_else(|e| panic!("congesting node {i}: {e}"));
            }
        }
    }

    /// Ends every cut and every congestion.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.cuts) {
            self.route(from, "del", self.addr_of(to))
                .unwrap_or_else(|e| panic!("healing {from:?} -> {to:?}: {e}"));
        }
        for i in std::mem::take(&mut self.congested) {
            let (ns, bridge, port) = (self.netns(i), self.bridge_ns(), format!("p{i}"));
            for (ns, dev) in [(&ns, "eth0"), (&bridge, port.as_str())] {
                run("tc", &["-n", ns, "qdisc", "del", "dev", dev, "root"])
                    .unwrap_or_else(|e| panic!("uncongesting node {i}: {e}"));
            }
        }
    }

    /// What is cut or congested now, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "cut: {:?}; congested: {:?}",
            self.cuts.iter().collect::<Vec<_>>(),
            self.congested
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces, and a veth's peer with it: the
        // bridge's namespace takes the test's veth (and its routes) along.
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}
