//! Soak: the landing-page case on Redis for a long time, with churned keys, invalidations and
//! Redis restarts, watching for anything that grows without bound (issue 21 item 9).
//!
//! ```text
//! cargo run --release --example soak -- --secs 600 --every 30 --restart-every 120
//! cargo run --release --example soak -- --help
//! ```
//!
//! It starts its own `redis-server` on a free port (never the shared 6379) and, for `--secs`:
//! - `--tasks` async callers read the hot landing page (one key) and keys from a window that
//!   slides every `--churn-secs` (old keys are abandoned: their flights, meters and backoffs
//!   must not pile up); each computation sleeps `--compute-ms`;
//! - one task invalidates a random key of the window every 100 ms and the whole function every
//!   10 s;
//! - Redis is killed and restarted on the same port every `--restart-every` seconds.
//!
//! Every `--every` seconds it prints one row: RSS, open file descriptors, sockets, the clients
//! Redis sees, Tokio tasks alive, calls, computations and errors in the interval.
//!
//! **The check** (exit status 1 if it fails): the rows are split into thirds (the first row,
//! warm-up, is left out); for each of RSS, fds, sockets, Redis clients and tasks, the last
//! third's maximum may exceed the first third's maximum by at most `--growth-pct` percent plus
//! a small absolute slack (8 MiB, 8 fds, 4 clients, 32 tasks: noise at small counts). Errors
//! returned to callers must be zero (the store fails open: a Redis restart makes calls compute
//! locally, never fail). Needs at least 6 rows.

#[path = "../tests/support/mod.rs"]
mod support;

use herdless::store::RedisStore;
use herdless::{memoize_stampede, Memoized};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    secs: u64,
    every: u64,
    restart_every: u64,
    tasks: usize,
    keys: u64,
    churn_secs: u64,
    compute_ms: u64,
    ttl_ms: u64,
    growth_pct: f64,
}

const HELP: &str = "soak: the landing-page case on a private Redis with churned keys, invalidations
and Redis restarts; prints resource use every --every seconds and fails if any grows without bound.

usage: soak [--secs N] [--every N] [--restart-every N] [--tasks N] [--keys N] [--churn-secs N]
            [--compute-ms N] [--ttl-ms N] [--growth-pct X]

defaults: --secs 120 --every 10 --restart-every 30 --tasks 16 --keys 500 --churn-secs 5
          --compute-ms 20 --ttl-ms 1000 --growth-pct 50";

fn parse_args() -> Args {
    let mut a = Args {
        secs: 120,
        every: 10,
        restart_every: 30,
        tasks: 16,
        keys: 500,
        churn_secs: 5,
        compute_ms: 20,
        ttl_ms: 1000,
        growth_pct: 50.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{HELP}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        let num = |v: &str| -> u64 {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{flag}: not a number: {v}")))
        };
        match flag.as_str() {
            "--secs" => a.secs = num(&value),
            "--every" => a.every = num(&value).max(1),
            "--restart-every" => a.restart_every = num(&value),
            "--tasks" => a.tasks = num(&value).max(1) as usize,
            "--keys" => a.keys = num(&value).max(1),
            "--churn-secs" => a.churn_secs = num(&value).max(1),
            "--compute-ms" => a.compute_ms = num(&value),
            "--ttl-ms" => a.ttl_ms = num(&value).max(1),
            "--growth-pct" => {
                a.growth_pct = value
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("--growth-pct: not a number: {value}")))
            }
            _ => fail(&format!("unknown flag {flag}\n\n{HELP}")),
        }
    }
    a
}

fn fail(msg: &str) -> ! {
    eprintln!("soak: {msg}");
    std::process::exit(2);
}

/// Counters shared by the callers.
#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    errors: AtomicU64,
    computations: AtomicU64,
}

/// One row of the table.
#[derive(Clone, Copy, Default)]
struct Row {
    t: u64,
    rss_kib: u64,
    fds: u64,
    sockets: u64,
    clients: u64,
    tasks: u64,
    calls: u64,
    computations: u64,
    errors: u64,
    restarts: u64,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Open file descriptors, and how many of them are sockets.
fn fds() -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return (0, 0);
    };
    let (mut all, mut sockets) = (0, 0);
    for e in dir.flatten() {
        all += 1;
        if std::fs::read_link(e.path())
            .map(|p| p.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false)
        {
            sockets += 1;
        }
    }
    (all, sockets)
}

/// `connected_clients` as Redis sees them, minus this probe's own connection (0 when down).
fn redis_clients(port: u16) -> u64 {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
        return 0;
    };
    let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
        return 0;
    };
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut con)
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |n| n.saturating_sub(1))
}

type Page = Memoized<String, String, std::convert::Infallible, RedisStore>;

fn main() {
    let args = parse_args();
    // Without redis-server: one line and exit 0, unless CI is set (then it panics).
    let Some(mut server) = support::redis_or_skip() else {
        return;
    };
    let port = server.port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let store = RedisStore::builder(&server.url())
        .prefix("soak")
        .runtime(rt.handle().clone())
        .build()
        .expect("a valid URL");
    let counts = Arc::new(Counts::default());
    let compute = Duration::from_millis(args.compute_ms);
    let f: Page = {
        let counts = counts.clone();
        memoize_stampede(&store, Duration::from_millis(args.ttl_ms))
            .name("soak::landing")
            .build_infallible(move |key: String| {
                let counts = counts.clone();
                async move {
                    counts.computations.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(compute).await;
                    format!("<html>{key}</html>")
                }
            })
            .expect("a valid configuration")
    };

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let window = {
        let (keys, churn) = (args.keys, args.churn_secs);
        move || start.elapsed().as_secs() / churn * keys
    };
    let mut jobs = Vec::new();
    for i in 0..args.tasks {
        let (f, counts, stop) = (f.clone(), counts.clone(), stop.clone());
        let keys = args.keys;
        jobs.push(rt.spawn(async move {
            let mut n = i as u64;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Half the calls read the landing page, half a key of the sliding window.
                let key = if n >> 63 == 0 {
                    "landing".to_string()
                } else {
                    format!("k{}", window() + (n >> 20) % keys)
                };
                counts.calls.fetch_add(1, Ordering::Relaxed);
                if f.get(&key).await.is_err() {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    {
        let (f, stop) = (f.clone(), stop.clone());
        let keys = args.keys;
        jobs.push(rt.spawn(async move {
            let mut tick = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tick += 1;
                let key = format!("k{}", window() + tick * 7919 % keys);
                // Errors of the store while Redis restarts are expected here (not the callers').
                let _ = f.invalidate(&key).await;
                if tick % 100 == 0 {
                    let _ = f.invalidate_all().await;
                }
            }
        }));
    }

    println!(
        "soak: {}s on redis port {port}, {} tasks, {} churned keys (window slides every {}s), \
         Redis restarted every {}s",
        args.secs, args.tasks, args.keys, args.churn_secs, args.restart_every
    );
    println!(
        "{:>6} {:>9} {:>5} {:>7} {:>7} {:>6} {:>8} {:>7} {:>6} {:>8}",
        "t(s)",
        "RSS(MiB)",
        "fds",
        "sockets",
        "clients",
        "tasks",
        "calls",
        "computes",
        "errors",
        "restarts"
    );
    let mut rows: Vec<Row> = Vec::new();
    let (mut last_calls, mut last_comp, mut last_err) = (0, 0, 0);
    let mut restarts = 0;
    let mut next_restart = args.restart_every;
    let mut next_row = args.every;
    while start.elapsed().as_secs() < args.secs {
        std::thread::sleep(Duration::from_millis(200));
        let now = start.elapsed().as_secs();
        if now >= next_row {
            next_row += args.every;
            let (fds, sockets) = fds();
            let (calls, comp, err) = (
                counts.calls.load(Ordering::Relaxed),
                counts.computations.load(Ordering::Relaxed),
                counts.errors.load(Ordering::Relaxed),
            );
            let row = Row {
                t: now,
                rss_kib: rss_kib(),
                fds,
                sockets,
                clients: redis_clients(port),
                tasks: rt.metrics().num_alive_tasks() as u64,
                calls: calls - last_calls,
                computations: comp - last_comp,
                errors: err - last_err,
                restarts,
            };
            (last_calls, last_comp, last_err) = (calls, comp, err);
            println!(
                "{:>6} {:>9.1} {:>5} {:>7} {:>7} {:>6} {:>8} {:>7} {:>6} {:>8}",
                row.t,
                row.rss_kib as f64 / 1024.0,
                row.fds,
                row.sockets,
                row.clients,
                row.tasks,
                row.calls,
                row.computations,
                row.errors,
                row.restarts
            );
            rows.push(row);
        }
        // After the row: a row taken in the same tick sees the steady state, not the restart.
        if args.restart_every > 0 && now >= next_restart {
            next_restart += args.restart_every;
            server.kill();
            std::thread::sleep(Duration::from_millis(500));
            server.restart();
            restarts += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for j in jobs {
            let _ = tokio::time::timeout(Duration::from_secs(5), j).await;
        }
    });
    let redis = store.stats();
    println!(
        "redis store: {} connects, {} errors, {} timeouts, {} circuit opens",
        redis.connects.load(Ordering::Relaxed),
        redis.errors.load(Ordering::Relaxed),
        redis.timeouts.load(Ordering::Relaxed),
        redis.circuit_opens.load(Ordering::Relaxed)
    );
    let failures = check(&rows, args.growth_pct);
    if failures.is_empty() {
        println!(
            "soak: OK (no resource grew past the first third's max by more than {}%, no errors)",
            args.growth_pct
        );
    } else {
        for f in &failures {
            eprintln!("soak: FAIL: {f}");
        }
        std::process::exit(1);
    }
}

/// A watched column: its name, how to read it from a row, and its absolute slack.
type Metric = (&'static str, fn(&Row) -> u64, u64);

/// The growth check (see the module docs); returns what failed.
fn check(rows: &[Row], growth_pct: f64) -> Vec<String> {
    let rows = rows.get(1..).unwrap_or_default();
    if rows.len() < 6 {
        return vec![format!(
            "{} rows after warm-up: too few to judge growth (run longer or lower --every)",
            rows.len()
        )];
    }
    let third = rows.len() / 3;
    let (first, last) = (&rows[..third], &rows[rows.len() - third..]);
    let metrics: [Metric; 5] = [
        ("RSS (KiB)", |r| r.rss_kib, 8 * 1024),
        ("open fds", |r| r.fds, 8),
        ("sockets", |r| r.sockets, 8),
        ("redis clients", |r| r.clients, 4),
        ("tokio tasks", |r| r.tasks, 32),
    ];
    let mut failures = Vec::new();
    for (name, get, slack) in metrics {
        let a = first.iter().map(get).max().unwrap_or(0);
        let b = last.iter().map(get).max().unwrap_or(0);
        let bound = (a as f64 * (1.0 + growth_pct / 100.0)) as u64 + slack;
        if b > bound {
            failures.push(format!(
                "{name}: last third's max {b} > first third's max {a} + {growth_pct}% + {slack}"
            ));
        }
    }
    let errors: u64 = rows.iter().map(|r| r.errors).sum();
    if errors > 0 {
        failures.push(format!("{errors} errors returned to callers"));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(rss: impl Fn(u64) -> u64) -> Vec<Row> {
        (0..12)
            .map(|i| Row {
                t: i,
                rss_kib: rss(i),
                fds: 14,
                sockets: 5,
                clients: 2,
                tasks: 40,
                ..Row::default()
            })
            .collect()
    }

    #[test]
    fn flat_use_passes_and_growth_fails() {
        assert!(check(&rows(|_| 13_000), 50.0).is_empty());
        // A leak: 4 MiB more every row, past 50 % + 8 MiB by the last third.
        let leak = check(&rows(|i| 13_000 + i * 4096), 50.0);
        assert_eq!(leak.len(), 1, "{leak:?}");
        assert!(leak[0].starts_with("RSS"), "{leak:?}");
    }

    #[test]
    fn errors_and_short_runs_fail() {
        let mut r = rows(|_| 13_000);
        r[7].errors = 1;
        assert_eq!(
            check(&r, 50.0),
            vec!["1 errors returned to callers".to_string()]
        );
        assert_eq!(check(&r[..5], 50.0).len(), 1);
    }
}
