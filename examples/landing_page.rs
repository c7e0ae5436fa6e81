//! DiskCache's landing-page case study, in Rust.
//!
//! Worker threads call a slow `generate_landing_page()` (sleeps `--compute-ms`) in a tight loop
//! for `--duration` seconds, through each caching strategy in turn, and we count how often the
//! body really ran, how many ran at once, and how long callers waited.
//!
//! ```text
//! cargo run --release --example landing_page                  # every strategy, auto included
//! cargo run --release --example landing_page -- --help        # every flag and its default
//! cargo run --release --example landing_page -- --duration 10 --threads 10 --json
//! ```
//!
//! The table starts with a one-line key of its columns and ends with a one-line summary. With
//! `--store redis`, a Redis that does not answer gets a warning above and below the table and
//! exit status 1: herdless fails open, so the figures would otherwise look normal.

#[path = "support/measure.rs"]
mod measure;
#[path = "support/plot.rs"]
mod plot;
#[path = "support/redis_admin.rs"]
mod redis_admin;

use measure::{Histogram, Raw};

use herdless::store::{NearStore, RedisStore};
use herdless::{barrier, memoize, memoize_stampede, LocalLock, MemoryStore};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
struct Args {
    duration: f64,
    threads: usize,
    compute_ms: u64,
    ttl_ms: u64,
    strategies: Vec<String>,
    json: bool,
    store: String,
    redis_url: String,
    procs: usize,
    /// The disk store's directory (`--store disk`); each strategy gets a fresh subdirectory.
    disk_path: std::path::PathBuf,
    /// Internal: run one strategy's threads and print raw measurements (used by --procs).
    worker: bool,
    prefix: String,
    /// Write concurrency and latency charts (SVG) per strategy into this directory.
    plot: Option<std::path::PathBuf>,
}

const DEFAULT_STRATEGIES: &str =
    "none,traditional,barrier,stampede=1,stampede=0.5,stampede=0.3,auto";

fn help() -> String {
    format!(
        "landing_page: DiskCache's landing-page case study. Worker threads call a slow function in a
tight loop through each caching strategy in turn; the table counts how often its body ran.

usage: landing_page [FLAGS]

  --duration SECS       seconds per strategy                          [default: 10]
  --threads N           worker threads per process                    [default: 10]
  --compute-ms MS       how long one run of the body sleeps           [default: 200]
  --ttl-ms MS           how long a computed page stays valid          [default: 1000]
  --strategies LIST     comma-separated, run in this order            [default: {DEFAULT_STRATEGIES}]
                        none | traditional | barrier | stampede=BETA | auto
  --store KIND          where the cache lives                         [default: memory]
                        memory | redis | near (near cache over redis) | redis-cluster |
                        near-cluster (near cache over a cluster) |
                        disk (one LMDB file for all processes, no server; feature `disk`)
  --redis-url URL       Redis for the redis stores     [default: redis://127.0.0.1:6379/]
                        use a private one; for a cluster, any seed node(s), comma-separated
                        (the example does not start a cluster)
  --disk-path DIR       the disk store's directory     [default: <temp dir>/herdless-landing]
  --procs N             worker processes (needs a redis or disk store) [default: 1]
  --plot DIR            write concurrency and latency charts (SVG)    [default: none]
  --json                one JSON object per strategy instead of a table [default: off]
  --prefix P            Redis key prefix                              [default: landing<pid>]
  --worker              internal: run one strategy, print raw JSON (used by --procs) [default: off]
  -h, --help            print this help and exit
"
    )
}

/// Bad command line: says what is wrong, points at --help, exits 2.
fn fail(msg: &str) -> ! {
    eprintln!(
        "landing_page: error: {msg}\nrun `landing_page --help` for the flags and their defaults"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        duration: 10.0,
        threads: 10,
        compute_ms: 200,
        ttl_ms: 1000,
        strategies: DEFAULT_STRATEGIES.split(',').map(String::from).collect(),
        json: false,
        store: "memory".into(),
        redis_url: "redis://127.0.0.1:6379/".into(),
        procs: 1,
        disk_path: std::env::temp_dir().join("herdless-landing"),
        worker: false,
        prefix: format!("landing{}", std::process::id()),
        plot: None,
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
            "--threads" => a.threads = num(&flag, val()),
            "--compute-ms" => a.compute_ms = num(&flag, val()),
            "--ttl-ms" => a.ttl_ms = num(&flag, val()),
            "--strategies" => a.strategies = val().split(',').map(String::from).collect(),
            "--json" => a.json = true,
            "--store" => a.store = val(),
            "--redis-url" => a.redis_url = val(),
            "--procs" => a.procs = num(&flag, val()),
            "--disk-path" => a.disk_path = val().into(),
            "--worker" => a.worker = true,
            "--prefix" => a.prefix = val(),
            "--plot" => a.plot = Some(val().into()),
            "-h" | "--help" => {
                print!("{}", help());
                std::process::exit(0)
            }
            _ => fail(&format!("unknown flag {flag:?}")),
        }
    }
    if ![
        "memory",
        "redis",
        "near",
        "redis-cluster",
        "near-cluster",
        "disk",
    ]
    .contains(&a.store.as_str())
    {
        fail(&format!(
            "--store must be memory, redis, near, redis-cluster, near-cluster or disk, got {:?}",
            a.store
        ));
    }
    if a.procs > 1 && a.store == "memory" {
        fail("--procs needs a redis or disk store (processes share nothing in memory)");
    }
    if a.store == "disk" && !cfg!(feature = "disk") {
        fail("--store disk needs the `disk` feature: cargo run --features disk --example landing_page");
    }
    if a.threads == 0 || a.procs == 0 || a.duration <= 0.0 || a.compute_ms == 0 || a.ttl_ms == 0 {
        fail("--threads, --procs, --duration, --compute-ms and --ttl-ms must be positive");
    }
    for s in &a.strategies {
        if Strategy::parse(s).is_none() {
            fail(&format!(
                "unknown strategy {s:?} (none, traditional, barrier, stampede=BETA with BETA ≥ 0, auto)"
            ));
        }
    }
    a
}

#[derive(Clone, Copy, Debug)]
enum Strategy {
    None,
    Traditional,
    Barrier,
    Stampede(f64),
    /// memoize_stampede with automatic β (lead ≈ 1.25 δ from the measured rate).
    Auto,
}

impl Strategy {
    fn parse(s: &str) -> Option<Strategy> {
        match s {
            "none" => Some(Strategy::None),
            "traditional" => Some(Strategy::Traditional),
            "barrier" => Some(Strategy::Barrier),
            "auto" => Some(Strategy::Auto),
            _ => {
                let beta: f64 = s.strip_prefix("stampede=")?.parse().ok()?;
                (beta >= 0.0).then_some(Strategy::Stampede(beta))
            }
        }
    }
}

/// The function under test: sleeps `compute` and records when it ran.
#[derive(Clone)]
struct Body {
    compute: Duration,
    running: Arc<AtomicU64>,
    intervals: Arc<Mutex<Vec<(u64, u64)>>>,
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Body {
    fn new(compute: Duration) -> Self {
        Body {
            compute,
            running: Arc::default(),
            intervals: Arc::default(),
        }
    }
    fn generate_landing_page(&self, key: &str) -> String {
        let start = wall_ns();
        if std::env::var_os("LP_DEBUG").is_some() {
            eprintln!(
                "run starts at {:.3} s (wall clock)",
                start as f64 / 1e9 % 1000.0
            );
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.compute);
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.intervals.lock().unwrap().push((start, wall_ns()));
        format!("<html><body>{key} rendered at {start}</body></html>")
    }
}

type Call = Arc<dyn Fn(&String) -> String + Send + Sync>;

/// The memoized function, and the Redis store behind it (to count its errors afterwards).
fn build(args: &Args, strategy: Strategy, body: &Body) -> (Call, Option<RedisStore>) {
    let ttl = Duration::from_millis(args.ttl_ms);
    if args.store == "disk" {
        return (build_disk(args, strategy, body, ttl), None);
    }
    if args.store != "memory" {
        let store = redis_admin::builder(&args.redis_url, args.store.ends_with("cluster"))
            .prefix(&args.prefix)
            .build()
            .unwrap_or_else(|e| fail(&format!("--redis-url {}: {e}", args.redis_url)));
        let lock = store.lock("landing");
        let call = if args.store.starts_with("near") {
            let near = NearStore::builder(&store)
                .capacity(1024)
                .build::<String, String>()
                .expect("near config");
            build_with(strategy, body, ttl, near, lock)
        } else {
            build_with(strategy, body, ttl, store.clone(), lock)
        };
        (call, Some(store))
    } else {
        let store = MemoryStore::<String, String>::new(1024).expect("capacity");
        (
            build_with(strategy, body, ttl, store, LocalLock::new()),
            None,
        )
    }
}

/// The memoized function over the disk store in `--disk-path`/`--prefix` (one fresh directory
/// per strategy, shared by the `--procs` processes), with its cross-process lock for barrier.
#[cfg(feature = "disk")]
fn build_disk(args: &Args, strategy: Strategy, body: &Body, ttl: Duration) -> Call {
    let dir = args.disk_path.join(&args.prefix);
    let store = herdless::store::DiskStore::open(&dir)
        .unwrap_or_else(|e| fail(&format!("--disk-path: {e}")));
    let lock = store.lock("landing");
    build_with(strategy, body, ttl, store, lock)
}

#[cfg(not(feature = "disk"))]
fn build_disk(_: &Args, _: Strategy, _: &Body, _: Duration) -> Call {
    fail("--store disk needs the `disk` feature")
}

/// Whether the store is a Redis one (checked, and its commands counted).
fn is_redis(store: &str) -> bool {
    !matches!(store, "memory" | "disk")
}

fn warn_store(msg: &str) {
    let bar = "!".repeat(100);
    eprintln!("{bar}\nWARNING: {msg}\n{bar}");
}

fn build_with<S, L>(strategy: Strategy, body: &Body, ttl: Duration, store: S, lock: L) -> Call
where
    S: herdless::Store<String, String>,
    L: herdless::Lock<String>,
{
    let b = body.clone();
    let f = move |k: &String| b.generate_landing_page(k);
    match strategy {
        Strategy::None => Arc::new(move |k: &String| f(k)),
        Strategy::Traditional => {
            let m = memoize(&store, ttl)
                .name("landing")
                .build_blocking_infallible(f)
                .expect("config");
            Arc::new(move |k: &String| m.get(k).expect("infallible"))
        }
        Strategy::Barrier => {
            let inner = memoize(&store, ttl)
                .name("landing")
                .build_blocking_infallible(f)
                .expect("config");
            let locked = barrier(lock).wrap_blocking(inner);
            let outer = memoize(&store, Duration::ZERO)
                .name("landing")
                .wrap_blocking(locked)
                .expect("config");
            Arc::new(move |k: &String| outer.get(k).expect("barrier call"))
        }
        Strategy::Stampede(beta) => {
            let m = memoize_stampede(&store, ttl)
                .name("landing")
                .beta(beta)
                .build_blocking_infallible(f)
                .expect("config");
            Arc::new(move |k: &String| m.get(k).expect("stampede call"))
        }
        Strategy::Auto => {
            let m = memoize_stampede(&store, ttl)
                .name("landing")
                .beta_auto(herdless::LeadTarget::default())
                .build_blocking_infallible(f)
                .expect("config");
            Arc::new(move |k: &String| m.get(k).expect("auto call"))
        }
    }
}

/// Runs one strategy's worker threads in this process.
fn run_local(args: &Args, name: &str) -> Raw {
    let strategy = Strategy::parse(name).expect("validated");
    let compute = Duration::from_millis(args.compute_ms);
    let body = Body::new(compute);
    let (call, redis) = build(args, strategy, &body);
    let slow_ns = u64::try_from(compute.as_nanos()).unwrap_or(u64::MAX) / 10 * 9;
    let stop = Arc::new(AtomicBool::new(false));
    let key = "landing".to_string();
    let started = Instant::now();
    let started_ns = wall_ns();
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (call, stop, key) = (call.clone(), stop.clone(), key.clone());
            std::thread::spawn(move || {
                let mut hist = Histogram::new();
                let mut slow = 0u64;
                let mut sink = 0usize;
                // The slowest call per 1 ms bucket, for the latency chart.
                let mut timeline: Vec<(u64, u64)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let page = call(&key);
                    let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    sink = sink.wrapping_add(page.len());
                    hist.record(ns);
                    let bucket = started_ns
                        + u64::try_from((t0 - started).as_millis())
                            .unwrap_or(u64::MAX)
                            .saturating_mul(1_000_000);
                    match timeline.last_mut() {
                        Some((b, worst)) if *b == bucket => *worst = (*worst).max(ns),
                        _ => timeline.push((bucket, ns)),
                    }
                    if ns >= slow_ns {
                        slow += 1;
                        if std::env::var_os("LP_DEBUG").is_some() {
                            eprintln!(
                                "slow call {:.1} ms ending at {:.1} ms",
                                ns as f64 / 1e6,
                                started.elapsed().as_secs_f64() * 1e3
                            );
                        }
                    }
                }
                std::hint::black_box(sink);
                (hist, slow, timeline)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::new();
    let mut slow = 0;
    let mut timeline = Vec::new();
    for w in workers {
        let (h, s, t) = w.join().expect("worker panicked");
        hist.merge(&h);
        slow += s;
        timeline.extend(t);
    }
    let duration_s = started.elapsed().as_secs_f64();
    // Background refreshes still running finish before we count.
    let wait_until = Instant::now() + compute * 5;
    while body.running.load(Ordering::SeqCst) > 0 && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let intervals = body.intervals.lock().unwrap().clone();
    let store_errors = redis.map_or(0, |r| r.stats().errors.load(Ordering::Relaxed));
    Raw {
        store_errors,
        hist,
        slow,
        intervals,
        duration_s,
        started_ns,
        timeline,
    }
}

/// Writes `<dir>/<strategy>_concurrency.svg` and `<dir>/<strategy>_latency.svg`.
fn write_plots(dir: &std::path::Path, name: &str, raw: &Raw, args: &Args) {
    let t0 = raw.started_ns;
    let secs = |ns: u64| ns.saturating_sub(t0) as f64 / 1e9;
    let intervals: Vec<(f64, f64)> = raw
        .intervals
        .iter()
        .map(|&(a, b)| (secs(a), secs(b)))
        .collect();
    let samples: Vec<(f64, f64)> = raw
        .timeline
        .iter()
        .map(|&(t, l)| (secs(t), l as f64 / 1e6))
        .collect();
    let file = name.replace('=', "_");
    let shape = format!(
        "{} × {} threads, {} ms compute, {} ms TTL, {} store",
        args.procs, args.threads, args.compute_ms, args.ttl_ms, args.store
    );
    let results = [
        plot::plot_concurrency(
            &dir.join(format!("{file}_concurrency.svg")),
            &format!("{name}: concurrent executions ({shape})"),
            &intervals,
            raw.duration_s,
        ),
        plot::plot_latency(
            &dir.join(format!("{file}_latency.svg")),
            &format!("{name}: call latency ({shape})"),
            "slowest call per thread per ms",
            &samples,
            raw.duration_s,
        ),
    ];
    for r in results {
        if let Err(e) = r {
            eprintln!("could not write a chart for {name}: {e}");
        }
    }
}

/// Runs one strategy in `--procs` worker processes and merges what they measured.
fn run_procs(args: &Args, name: &str, prefix: &str) -> Raw {
    let exe = std::env::current_exe().expect("own path");
    let children: Vec<_> = (0..args.procs)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--worker", "--strategies", name, "--store", &args.store])
                .args(["--redis-url", &args.redis_url, "--prefix", prefix])
                .arg("--disk-path")
                .arg(&args.disk_path)
                .args(["--duration", &args.duration.to_string()])
                .args(["--threads", &args.threads.to_string()])
                .args(["--compute-ms", &args.compute_ms.to_string()])
                .args(["--ttl-ms", &args.ttl_ms.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn worker process")
        })
        .collect();
    let mut merged: Option<Raw> = None;
    for child in children {
        let out = child.wait_with_output().expect("worker process");
        let text = String::from_utf8_lossy(&out.stdout);
        let raw = text
            .lines()
            .find_map(Raw::from_json)
            .unwrap_or_else(|| panic!("worker printed no measurements (status {})", out.status));
        match &mut merged {
            Some(m) => m.merge(raw),
            None => merged = Some(raw),
        }
    }
    merged.expect("at least one process")
}

fn main() {
    let args = parse_args();
    if args.worker {
        let name = args.strategies.first().expect("one strategy").clone();
        println!("{}", run_local(&args, &name).to_json());
        return;
    }
    let unreachable = if is_redis(&args.store) {
        redis_admin::check_redis(
            &args.redis_url,
            &args.prefix,
            args.store.ends_with("cluster"),
        )
        .err()
    } else {
        None
    };
    if let Some(e) = &unreachable {
        warn_store(&format!(
            "Redis at {} is unreachable ({e}).\n\
             herdless fails open: every process computes on its own, so the figures below do NOT \
             show coordination through Redis. Start redis-server or fix --redis-url.",
            args.redis_url
        ));
    }
    if !args.json {
        println!(
            "landing page: {} process(es) x {} threads, {} ms compute, {} ms TTL, {} s per strategy, {} store",
            args.procs, args.threads, args.compute_ms, args.ttl_ms, args.duration, args.store
        );
        println!(
            "key: calls = calls served; runs = times the body really ran (background refreshes \
             included); peak = most runs at once; slow = calls >= {} ms (90 % of the body); \
             p50/p99/max = call latency",
            args.compute_ms * 9 / 10
        );
        if is_redis(&args.store) {
            println!(
                "store cmds = commands the Redis server ran during the strategy (all processes)"
            );
        }
        println!(
            "{:<14} {:>10} {:>6} {:>5} {:>6} {:>9} {:>9} {:>9} {:>10}",
            "strategy", "calls", "runs", "peak", "slow", "p50 ms", "p99 ms", "max ms", "store cmds"
        );
    }
    // (name, runs, slow) per strategy, for the summary line.
    let mut results: Vec<(String, usize, u64)> = Vec::new();
    let mut store_errors = 0;
    for (i, name) in args.strategies.iter().enumerate() {
        // A fresh key space per strategy, so no run inherits the previous one's value or lock.
        let prefix = format!("{}s{}", args.prefix, i);
        let commands_before = is_redis(&args.store)
            .then(|| redis_admin::commands_so_far(&args.redis_url, args.store.ends_with("cluster")))
            .flatten();
        let raw = if args.procs > 1 {
            run_procs(&args, name, &prefix)
        } else {
            let mut a = args.clone();
            a.prefix = prefix;
            run_local(&a, name)
        };
        let (p50, p99, max) = (
            raw.hist.quantile_ms(0.50),
            raw.hist.quantile_ms(0.99),
            raw.hist.max_ns as f64 / 1e6,
        );
        if let Some(dir) = &args.plot {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("could not create {}: {e}", dir.display());
            } else {
                write_plots(dir, name, &raw, &args);
            }
        }
        let (calls, runs, peak) = (raw.hist.total, raw.intervals.len(), raw.peak());
        // Commands the strategy caused on the server (the example's own INFO calls excluded).
        let store_commands = commands_before.and_then(|b| {
            let after =
                redis_admin::commands_so_far(&args.redis_url, args.store.ends_with("cluster"))?;
            Some(after.saturating_sub(b))
        });
        store_errors += raw.store_errors;
        if args.json {
            println!(
                "{{\"strategy\":\"{name}\",\"calls\":{calls},\"runs\":{runs},\"peak_concurrent_runs\":{peak},\"slow_calls\":{},\"p50_ms\":{p50:.6},\"p99_ms\":{p99:.6},\"max_ms\":{max:.3},\"duration_s\":{:.3},\"store_errors\":{},\"store_commands\":{}}}",
                raw.slow,
                raw.duration_s,
                raw.store_errors,
                store_commands.map_or("null".to_string(), |n| n.to_string())
            );
        } else {
            let flag = if raw.store_errors > 0 {
                format!("  <- {} Redis errors", raw.store_errors)
            } else {
                String::new()
            };
            let cmds = store_commands.map_or("-".to_string(), |n| n.to_string());
            println!(
                "{name:<14} {calls:>10} {runs:>6} {peak:>5} {:>6} {p50:>9.4} {p99:>9.4} {max:>9.1} {cmds:>10}{flag}",
                raw.slow
            );
        }
        results.push((name.clone(), runs, raw.slow));
    }
    if !args.json {
        println!("{}", summary(&results));
    }
    if unreachable.is_some() || store_errors > 0 {
        warn_store(&format!(
            "the Redis store at {} failed {store_errors} request(s){}: the rows above include \
             local computations that Redis did not coordinate.",
            args.redis_url,
            if unreachable.is_some() {
                " and was unreachable at the start"
            } else {
                ""
            }
        ));
        std::process::exit(1);
    }
}

/// One line: which strategy ran the body least, which had the fewest slow calls, and which
/// did best: fewest slow calls, and among those the fewest runs.
fn summary(results: &[(String, usize, u64)]) -> String {
    let names = |pick: &dyn Fn(&(String, usize, u64)) -> bool| {
        results
            .iter()
            .filter(|r| pick(r))
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (Some(min_runs), Some(min_slow)) = (
        results.iter().map(|r| r.1).min(),
        results.iter().map(|r| r.2).min(),
    ) else {
        return "summary: no strategy ran".into();
    };
    let best = results
        .iter()
        .min_by_key(|r| (r.2, r.1))
        .expect("non-empty");
    format!(
        "summary: fewest runs: {} ({min_runs}); fewest slow calls: {} ({min_slow}); \
         fewest slow calls, then runs: {} ({} runs, {} slow)",
        names(&|r| r.1 == min_runs),
        names(&|r| r.2 == min_slow),
        best.0,
        best.1,
        best.2
    )
}
