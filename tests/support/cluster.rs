//! A private Redis Cluster per test: 3 masters and 3 replicas of the installed `redis-server` on
//! free loopback ports (`cluster-node-timeout` 1 000 ms), created with
//! `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`, ready once every node says
//! `cluster_state:ok` and every replica's link to its master is up. Kill, pause and resume one
//! node; find the master of a slot; count keys per node. Everything is torn down on drop.
//!
//! Include it beside `support` with `#[path = "support/cluster.rs"] mod cluster;` (it uses
//! `support`'s free-port, ping and signal helpers).

#![allow(dead_code)]

use crate::support::{ping, signal};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to form (create, gossip, replicas synced).
pub const FORM_BOUND: Duration = Duration::from_secs(60);
/// `cluster-node-timeout`: a master unreachable this long is failed over by its replica.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// One node of the cluster.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
    paused: bool,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is not running").id()
    }
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }
    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL, also works on a stopped process
            let _ = c.wait();
        }
        self.paused = false;
    }
}

/// A private cluster of 6 `redis-server` processes.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

/// Starts a cluster, or explains why not: with `CI` set a missing `redis-server` is a failure,
/// otherwise the test prints one line and is skipped.
pub fn cluster_or_skip() -> Option<RedisCluster> {
    let on_path = |exe: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(exe).is_file()))
    };
    if !on_path("redis-server") || !on_path("redis-cli") {
        if std::env::var_os("CI").is_some() {
            panic!("redis-server/redis-cli missing but CI is set");
        }
        crate::support::skip_notice();
        return None;
    }
    Some(RedisCluster::start())
}

/// A free port whose cluster bus port (port + 10000) is free too, never handed out before in
/// this process (see `support::claim_port`).
fn free_cluster_port() -> u16 {
    crate::support::claim_port(|p| {
        (p <= 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok())
            .then(|| vec![p, p + 10000])
    })
}

impl RedisCluster {
    /// Starts 6 nodes, creates the cluster (3 masters, 1 replica each) and waits, bounded, until
    /// it is ready.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "herdless-cluster-{}-{}",
            std::process::id(),
            free_cluster_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster's scratch dir");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        let mut ports = Vec::new();
        for _ in 0..6 {
            let (port, child) = cluster.spawn_answering();
            ports.push(port);
            cluster.nodes.push(Node {
                child: Some(child),
                port,
                paused: false,
            });
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ready(FORM_BOUND);
        cluster
    }

    /// A node on a fresh port that answers PING and is our own child (a node that exits at
    /// start, its port taken by another process meanwhile, is replaced on another port).
    fn spawn_answering(&self) -> (u16, Child) {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_cluster_port();
            let mut child = self.spawn(port);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("node on port {port} exited at start: {status}");
                    break;
                }
                if ping(port, Duration::from_millis(200)) {
                    return (port, child);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("node on port {port} did not answer PING");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start a cluster node: {last}");
    }

    fn spawn(&self, port: u16) -> Child {
        let node_dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("create a node's dir");
        Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .arg("--cluster-config-file")
            .arg(node_dir.join("nodes.conf"))
            // A replica takes over however long its link was down.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(&node_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server")
    }

    /// Waits until every live, running node says `cluster_state:ok`, knows 3 masters serving
    /// all slots, and every live replica's link to its master is up.
    pub fn wait_ready(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        loop {
            if self.ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ready within {bound:?}: {}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ready(&self) -> bool {
        self.live().all(|n| {
            let Some(state) = info(n.port, "CLUSTER", &["INFO"]) else {
                return false;
            };
            if !state.contains("cluster_state:ok") {
                return false;
            }
            let Some(repl) = info(n.port, "INFO", &["replication"]) else {
                return false;
            };
            repl.contains("role:master") || repl.contains("master_link_status:up")
        })
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.alive() && !n.paused)
    }

    fn describe(&self) -> String {
        self.live()
            .map(|n| {
                let nodes = info(n.port, "CLUSTER", &["NODES"]).unwrap_or_default();
                format!("node {}:\n{nodes}", n.port)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The URLs of every node (seeds for a cluster store).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// The ports of the masters serving slots, as a live node sees them now.
    pub fn masters(&self) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .cluster_nodes()
            .iter()
            .filter(|l| {
                l.flags.contains("master") && !l.flags.contains("fail") && !l.slots.is_empty()
            })
            .map(|l| l.port)
            .collect();
        out.sort_unstable();
        out
    }

    /// The ports of the replicas, as a live node sees them now.
    pub fn replicas(&self) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .cluster_nodes()
            .iter()
            .filter(|l| l.flags.contains("slave") && !l.flags.contains("fail"))
            .map(|l| l.port)
            .collect();
        out.sort_unstable();
        out
    }

    /// The port of the master serving `slot`, as a live node sees it now.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.try_master_of_slot(slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {}", self.describe()))
    }

    /// The port of the master serving `slot` and not flagged failed, if any.
    pub fn try_master_of_slot(&self, slot: u16) -> Option<u16> {
        self.cluster_nodes()
            .iter()
            .find(|l| {
                l.flags.contains("master")
                    && !l.flags.contains("fail")
                    && l.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
            })
            .map(|l| l.port)
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &[u8]) -> u16 {
        let port = self.live().next().expect("a live node").port;
        let mut con = crate::support::raw(port);
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut con)
            .expect("CLUSTER KEYSLOT")
    }

    /// How many keys the node on `port` holds.
    pub fn dbsize(&self, port: u16) -> u64 {
        let mut con = crate::support::raw(port);
        redis::cmd("DBSIZE").query(&mut con).expect("DBSIZE")
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// SIGKILL the node on `port`, and reap it.
    pub fn kill(&mut self, port: u16) {
        self.node_mut(port).reap();
    }

    /// SIGSTOP the node on `port`.
    pub fn pause(&mut self, port: u16) {
        let n = self.node_mut(port);
        signal(n.pid(), "STOP");
        n.paused = true;
    }

    /// SIGCONT the node on `port`.
    pub fn resume(&mut self, port: u16) {
        let n = self.node_mut(port);
        signal(n.pid(), "CONT");
        n.paused = false;
    }

    /// The cluster node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        let mut con = crate::support::raw(port);
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut con)
            .expect("CLUSTER MYID")
    }

    /// Moves `slot` from master `from` to master `to` the way `redis-cli --cluster reshard`
    /// does (`SETSLOT IMPORTING`/`MIGRATING`, `MIGRATE` of its keys in batches, `SETSLOT NODE`
    /// on every master), pausing `step` before the keys move, so that clients meet each stage
    /// (`ASK` while the keys move, `MOVED` after).
    pub fn migrate_slot(&self, slot: u16, from: u16, to: u16, step: Duration, hold: Duration) {
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let (mut src, mut dst) = (crate::support::raw(from), crate::support::raw(to));
        let setslot = |con: &mut redis::Connection, how: &str, id: &str| {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(how)
                .arg(id)
                .query(con)
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {how}: {e}"));
        };
        setslot(&mut dst, "IMPORTING", &from_id);
        std::thread::sleep(step);
        // From here until its keys are moved, a multi-key request that finds only some of its
        // keys gets TRYAGAIN: move them at once, as `redis-cli --cluster reshard` does.
        setslot(&mut src, "MIGRATING", &to_id);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut src)
                .expect("CLUSTER GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut src)
                .expect("MIGRATE");
            assert!(Instant::now() < deadline, "slot {slot} did not drain");
        }
        // Multi-key requests that do not find all their keys on the new master get TRYAGAIN
        // until the slot is assigned: `redis-cli` assigns it at once; `hold` keeps that window
        // open longer.
        std::thread::sleep(hold);
        setslot(&mut dst, "NODE", &to_id);
        setslot(&mut src, "NODE", &to_id);
        for m in self.masters() {
            if m != from && m != to {
                setslot(&mut crate::support::raw(m), "NODE", &to_id);
            }
        }
    }

    /// `CLUSTER NODES` as a live node sees it.
    fn cluster_nodes(&self) -> Vec<NodeLine> {
        for n in self.live() {
            if let Some(text) = info(n.port, "CLUSTER", &["NODES"]) {
                return text.lines().filter_map(NodeLine::parse).collect();
            }
        }
        panic!("no live node answers CLUSTER NODES");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.reap();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One line of `CLUSTER NODES`.
struct NodeLine {
    port: u16,
    flags: String,
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn parse(line: &str) -> Option<NodeLine> {
        let f: Vec<&str> = line.split_whitespace().collect();
        // <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        let addr = f.get(1)?;
        let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
        let slots = f
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => {
                    let x = s.parse().ok()?;
                    Some((x, x))
                }
            })
            .collect();
        Some(NodeLine {
            port,
            flags: f.get(2)?.to_string(),
            slots,
        })
    }
}

/// A command's text reply from the node on `port`, or `None` if it does not answer in time.
fn info(port: u16, cmd: &str, args: &[&str]) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    con.set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    redis::cmd(cmd).arg(args).query(&mut con).ok()
}
