//! The landing page over a Redis Cluster whose hot key's master is SIGKILLed mid-run: how fast
//! single-flight comes back after the failover (issue 21, item 4).
//!
//! Starts a private cluster of 3 masters + 3 replicas (`redis-server` and `redis-cli` from
//! `PATH`, free loopback ports, never 6379, `cluster-node-timeout` `--node-timeout-ms`), runs
//! `landing_page --store redis-cluster` in `--procs` worker processes × `--threads` threads for
//! `--duration` seconds, SIGKILLs the master owning the hot key `--kill-at` seconds in, and
//! prints the runs of the body (by start) and the slow calls (calls ≥ 90 % of `--compute-ms`,
//! by end) per second, and per phase: before the kill, from the kill to the replica's
//! promotion (seen in `CLUSTER NODES` of a live node, polled every 10 ms), and after it.
//!
//! ```text
//! cargo build --release --example landing_page --example failover
//! target/release/examples/failover                  # 5 × 2, auto, 14 s, kill at 4 s
//! target/release/examples/failover --repeat 3 --strategy stampede=1
//! ```

#[path = "support/measure.rs"]
#[allow(dead_code)]
mod measure;

use measure::Raw;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Args {
    duration: f64,
    kill_at: f64,
    procs: usize,
    threads: usize,
    strategy: String,
    compute_ms: u64,
    ttl_ms: u64,
    node_timeout_ms: u64,
    repeat: usize,
    landing: PathBuf,
}

fn fail(msg: &str) -> ! {
    eprintln!("failover: error: {msg}\nrun `failover --help` for the flags and their defaults");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        duration: 14.0,
        kill_at: 4.0,
        procs: 5,
        threads: 2,
        strategy: "auto".into(),
        compute_ms: 200,
        ttl_ms: 1000,
        node_timeout_ms: 1000,
        repeat: 1,
        landing: std::env::current_exe()
            .expect("own path")
            .with_file_name("landing_page"),
    };
    fn num<T: std::str::FromStr>(flag: &str, v: String) -> T {
        v.parse()
            .unwrap_or_else(|_| fail(&format!("{flag}: cannot read {v:?} as a number")))
    }
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--duration" => a.duration = num(&flag, val()),
            "--kill-at" => a.kill_at = num(&flag, val()),
            "--procs" => a.procs = num(&flag, val()),
            "--threads" => a.threads = num(&flag, val()),
            "--strategy" => a.strategy = val(),
            "--compute-ms" => a.compute_ms = num(&flag, val()),
            "--ttl-ms" => a.ttl_ms = num(&flag, val()),
            "--node-timeout-ms" => a.node_timeout_ms = num(&flag, val()),
            "--repeat" => a.repeat = num(&flag, val()),
            "--landing-page" => a.landing = val().into(),
            "-h" | "--help" => {
                print!(
                    "failover: the landing page on a private 3 + 3 Redis Cluster whose hot key's
master is SIGKILLed mid-run; runs and slow calls per second and per phase.

usage: failover [FLAGS]   (build landing_page first: cargo build --release --example landing_page)

  --duration SECS        seconds of load                                [default: 14]
  --kill-at SECS         SIGKILL the hot key's master this far in       [default: 4]
  --procs N              landing_page worker processes                  [default: 5]
  --threads N            threads per process                            [default: 2]
  --strategy S           landing_page strategy                          [default: auto]
  --compute-ms MS        how long one run of the body sleeps            [default: 200]
  --ttl-ms MS            TTL of the page                                [default: 1000]
  --node-timeout-ms MS   the servers' cluster-node-timeout              [default: 1000]
  --repeat N             runs, each on a fresh cluster                  [default: 1]
  --landing-page PATH    the landing_page binary     [default: landing_page beside this one]
  -h, --help             print this help and exit
"
                );
                std::process::exit(0)
            }
            _ => fail(&format!("unknown flag {flag:?}")),
        }
    }
    if a.kill_at <= 0.0 || a.kill_at >= a.duration || a.procs == 0 || a.threads == 0 {
        fail("need 0 < --kill-at < --duration and positive --procs and --threads");
    }
    if !a.landing.is_file() {
        fail(&format!(
            "{} not found: cargo build --release --example landing_page",
            a.landing.display()
        ));
    }
    a
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A command's reply from the node on `port`, or `None` if it does not answer within 500 ms.
fn ask<T: redis::FromRedisValue>(port: u16, cmd: &str, args: &[&str]) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    con.set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    redis::cmd(cmd).arg(args).query(&mut con).ok()
}

/// A private cluster: 6 `redis-server` children, killed on drop.
struct Cluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
}

/// A free port (never 6379) whose cluster bus port (port + 10000) is free too.
fn free_port(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let p = l.local_addr().expect("local addr").port();
        if p != 6379
            && p <= 55000
            && !taken.contains(&p)
            && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
        {
            return p;
        }
    }
    panic!("no free port pair found")
}

impl Cluster {
    fn start(node_timeout_ms: u64) -> Cluster {
        let dir = std::env::temp_dir().join(format!("herdless-failover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let mut c = Cluster {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..6 {
            let taken: Vec<u16> = c.nodes.iter().map(|n| n.0).collect();
            let port = free_port(&taken);
            let node_dir = c.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-node-timeout", &node_timeout_ms.to_string()])
                .arg("--cluster-config-file")
                .arg(node_dir.join("nodes.conf"))
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--loglevel", "warning"])
                .arg("--dir")
                .arg(&node_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| fail(&format!("cannot start redis-server: {e}")));
            c.nodes.push((port, Some(child)));
            let deadline = Instant::now() + Duration::from_secs(10);
            while ask::<String>(port, "PING", &[]).is_none() {
                assert!(Instant::now() < deadline, "node {port} did not answer PING");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(c.nodes.iter().map(|n| format!("127.0.0.1:{}", n.0)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| fail(&format!("cannot run redis-cli: {e}")));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.ready() {
            assert!(
                Instant::now() < deadline,
                "the cluster did not form in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().filter(|n| n.1.is_some()).map(|n| n.0)
    }

    fn ready(&self) -> bool {
        self.live().all(|p| {
            ask::<String>(p, "CLUSTER", &["INFO"]).is_some_and(|s| s.contains("cluster_state:ok"))
                && ask::<String>(p, "INFO", &["replication"]).is_some_and(|s| {
                    s.contains("role:master") || s.contains("master_link_status:up")
                })
        })
    }

    fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.0))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master serving `slot`, not flagged failed, as the first answering live node sees it.
    fn master_of(&self, slot: u16) -> Option<u16> {
        let text = self
            .live()
            .find_map(|p| ask::<String>(p, "CLUSTER", &["NODES"]))?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = f.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let serves = f.iter().skip(8).any(|s| {
                let (a, b) = s.split_once('-').unwrap_or((s, s));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
            });
            serves.then(|| f[1].split('@').next()?.rsplit(':').next()?.parse().ok())?
        })
    }

    fn kill(&mut self, port: u16) {
        for n in &mut self.nodes {
            if n.0 == port {
                if let Some(mut c) = n.1.take() {
                    let _ = c.kill(); // SIGKILL
                    let _ = c.wait();
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.0).collect();
        for p in ports {
            self.kill(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One run's figures, for the summary over `--repeat`.
struct Outcome {
    rates: [f64; 3],
    /// Runs per second from 1 s after the promotion to the end (the steady tail).
    tail_rate: f64,
    runs: [usize; 3],
    slow: [usize; 3],
    failover_s: f64,
    /// Seconds from the promotion to the last run that started less than `--compute-ms` after
    /// the one before it (the end of the processes' local computations); 0 if none.
    burst_end_s: f64,
    store_errors: u64,
}

fn run_once(args: &Args, n: usize) -> Outcome {
    let mut cluster = Cluster::start(args.node_timeout_ms);
    let seeds = cluster.seeds();
    let prefix = format!("failover{}r{n}", std::process::id());
    // The hot key: landing_page's function "landing", key "landing", under our prefix.
    let probe = herdless::store::RedisStore::cluster_builder(&seeds.split(',').collect::<Vec<_>>())
        .prefix(&prefix)
        .connect_blocking()
        .unwrap_or_else(|e| fail(&format!("the cluster does not answer: {e}")));
    let key = probe.value_key("landing", &"landing".to_string());
    drop(probe);
    let port0 = cluster.live().next().expect("a live node");
    let slot: u16 = {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port0}/")).unwrap();
        let mut con = client.get_connection().expect("connect");
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query(&mut con)
            .expect("CLUSTER KEYSLOT")
    };
    let victim = cluster
        .master_of(slot)
        .expect("a master serves the hot slot");
    let spawned = Instant::now();
    let kids: Vec<Child> = (0..args.procs)
        .map(|_| {
            Command::new(&args.landing)
                .args(["--worker", "--strategies", &args.strategy])
                .args(["--store", "redis-cluster", "--redis-url", &seeds])
                .args(["--prefix", &prefix])
                .args(["--duration", &args.duration.to_string()])
                .args(["--threads", &args.threads.to_string()])
                .args(["--compute-ms", &args.compute_ms.to_string()])
                .args(["--ttl-ms", &args.ttl_ms.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn landing_page")
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.kill_at).saturating_sub(spawned.elapsed()));
    let killed_ns = wall_ns();
    cluster.kill(victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    let promoted_ns = loop {
        match cluster.master_of(slot) {
            Some(p) if p != victim => break wall_ns(),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no replica promoted within 30 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut raw: Option<Raw> = None;
    for kid in kids {
        let out = kid.wait_with_output().expect("landing_page worker");
        let text = String::from_utf8_lossy(&out.stdout);
        let r = text
            .lines()
            .find_map(Raw::from_json)
            .unwrap_or_else(|| panic!("worker printed no measurements ({})", out.status));
        match &mut raw {
            Some(m) => m.merge(r),
            None => raw = Some(r),
        }
    }
    let raw = raw.expect("one worker");
    let t0 = raw.started_ns;
    let end = t0 + (args.duration * 1e9) as u64;
    let slow_ns = args.compute_ms * 1_000_000 / 10 * 9;
    let starts: Vec<u64> = raw.intervals.iter().map(|r| r.0).collect();
    // The timeline holds each thread's slowest call per 1 ms of call starts; a slow call lasts
    // far more than 1 ms, so each entry at or above the threshold is one slow call. A slow call
    // counts where it ends (the calls in flight at the kill end after it).
    let slows: Vec<u64> = raw
        .timeline
        .iter()
        .filter(|t| t.1 >= slow_ns)
        .map(|t| t.0 + t.1)
        .collect();
    let s = |ns: u64| ns.saturating_sub(t0) as f64 / 1e9;
    println!(
        "run {}: cluster-node-timeout {} ms; hot slot {slot}, master {victim} SIGKILLed at {:.2} s, \
         replica promoted at {:.2} s (failover {:.2} s); {} runs, {} slow calls, {} store errors",
        n + 1,
        args.node_timeout_ms,
        s(killed_ns),
        s(promoted_ns),
        (promoted_ns - killed_ns) as f64 / 1e9,
        starts.len(),
        slows.len(),
        raw.store_errors
    );
    println!("  second  runs  slow");
    let secs = args.duration.ceil() as u64;
    for i in 0..secs {
        let (a, b) = (t0 + i * 1_000_000_000, t0 + (i + 1) * 1_000_000_000);
        let within = |v: &[u64]| v.iter().filter(|&&t| a <= t && t < b).count();
        let mark = if (a..b).contains(&killed_ns) {
            "  <- kill"
        } else if (a..b).contains(&promoted_ns) {
            "  <- promotion"
        } else {
            ""
        };
        println!(
            "  {i:>6} {:>5} {:>5}{mark}",
            within(&starts),
            within(&slows)
        );
    }
    let phases = [
        (t0, killed_ns),
        (killed_ns, promoted_ns),
        (promoted_ns, end),
    ];
    let mut o = Outcome {
        rates: [0.0; 3],
        tail_rate: 0.0,
        runs: [0; 3],
        slow: [0; 3],
        failover_s: (promoted_ns - killed_ns) as f64 / 1e9,
        burst_end_s: 0.0,
        store_errors: raw.store_errors,
    };
    for (i, &(a, b)) in phases.iter().enumerate() {
        // Runs after the end (background refreshes finishing) count in the last phase.
        let b = if i == 2 { u64::MAX } else { b };
        o.runs[i] = starts.iter().filter(|&&t| a <= t && t < b).count();
        o.slow[i] = slows.iter().filter(|&&t| a <= t && t < b).count();
        o.rates[i] = o.runs[i] as f64 / ((phases[i].1.max(a + 1) - a) as f64 / 1e9);
    }
    let tail_from = promoted_ns + 1_000_000_000;
    if tail_from < end {
        let n = starts
            .iter()
            .filter(|&&t| tail_from <= t && t < end)
            .count();
        o.tail_rate = n as f64 / ((end - tail_from) as f64 / 1e9);
    }
    let mut sorted = starts.clone();
    sorted.sort_unstable();
    let close = args.compute_ms * 1_000_000;
    if let Some(w) = sorted
        .windows(2)
        .rfind(|w| w[1] >= promoted_ns && w[1] - w[0] < close)
    {
        o.burst_end_s = (w[1] - promoted_ns) as f64 / 1e9;
    }
    println!(
        "  local runs (< {} ms apart) end {:.2} s after the promotion",
        args.compute_ms, o.burst_end_s
    );
    println!(
        "  runs/s: before the kill {:.2} ({} runs, {} slow); kill to promotion {:.2} ({} runs, {} slow); after promotion {:.2} ({} runs, {} slow); from 1 s after promotion {:.2}",
        o.rates[0], o.runs[0], o.slow[0], o.rates[1], o.runs[1], o.slow[1], o.rates[2], o.runs[2], o.slow[2], o.tail_rate
    );
    o
}

fn main() {
    let args = parse_args();
    println!(
        "failover: {} process(es) x {} threads, {}, {} ms compute, {} ms TTL, {} s, hot master \
         SIGKILLed at {} s, cluster-node-timeout {} ms, 3 masters + 3 replicas",
        args.procs,
        args.threads,
        args.strategy,
        args.compute_ms,
        args.ttl_ms,
        args.duration,
        args.kill_at,
        args.node_timeout_ms
    );
    let outcomes: Vec<Outcome> = (0..args.repeat).map(|n| run_once(&args, n)).collect();
    println!("| run | failover s | runs/s before | runs/s during | runs/s after | runs/s from promotion + 1 s | local runs end, s after promotion | runs (before/during/after) | slow (before/during/after) | store errors |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, o) in outcomes.iter().enumerate() {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {}/{}/{} | {}/{}/{} | {} |",
            i + 1,
            o.failover_s,
            o.rates[0],
            o.rates[1],
            o.rates[2],
            o.tail_rate,
            o.burst_end_s,
            o.runs[0],
            o.runs[1],
            o.runs[2],
            o.slow[0],
            o.slow[1],
            o.slow[2],
            o.store_errors
        );
    }
}
