//! The landing page over HTTP: an axum server whose `/` runs a heavy PostgreSQL query, memoized
//! by herdless, and a driver that loads it with `wrk` for each strategy.
//!
//! ```text
//! # serve one strategy (PostgreSQL 15 at 127.0.0.1:5432, trust auth, database `test`)
//! cargo run --release --example service -- --strategy auto --port 3000
//! # load every strategy with wrk (apt-get install -y wrk) and print one table
//! cargo run --release --example service -- --drive
//! cargo run --release --example service -- --help
//! ```
//!
//! The table (`--drive`): requests/s and p50/p99/max latency from wrk; `queries` = times the
//! handler ran the query (counted inside the memoized closure); `peak` = the most executions of
//! the query that PostgreSQL showed as active at once in `pg_stat_activity`, sampled every
//! 2 ms by the driver while wrk runs.
//!
//! The server lives in `support/landing_service.rs`; `tests/service.rs` runs it in process.

#[path = "support/landing_service.rs"]
mod landing_service;

use landing_service::{
    app, check_table_name, connect, http_connect, http_get, landing_query, query_marker, seed,
    Config, Strategy,
};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio_postgres::Client;

const DEFAULT_STRATEGIES: &str = "none,traditional,stampede=1,auto";

const HELP: &str = "service: the landing page over HTTP. GET / runs a heavy PostgreSQL query, memoized by herdless.

usage: service [FLAGS]            serve one strategy
       service --drive [FLAGS]    run wrk against a fresh server per strategy, print one table

  --strategy S          none | traditional | stampede=BETA | auto        [default: auto]
  --store KIND          memory | redis | near | disk (one LMDB file)      [default: memory]
  --redis-url URL       Redis for --store redis|near                     [default: redis://127.0.0.1:6379/]
  --database-url URL    PostgreSQL                                       [default: postgres://postgres@127.0.0.1:5432/test]
  --table NAME          the generated table (created and seeded if needed) [default: herdless_orders]
  --rows N              rows to seed (1 000 000: ~100-300 ms a query)    [default: 1000000]
  --ttl-ms MS           how long a rendered page stays valid             [default: 1000]
  --db-connections N    PostgreSQL connections in the server's pool      [default: 16]
  --port N              port to listen on (0: any free port)             [default: 3000]
  --drive               driver mode (below)                              [default: off]
  --strategies LIST     driver: strategies to run, in order              [default: none,traditional,stampede=1,auto]
  --duration SECS       driver: wrk run per strategy                     [default: 10]
  --connections N       driver: wrk connections                          [default: 50]
  --threads N           driver: wrk threads                              [default: 2]
  -h, --help            print this help and exit

GET /stats answers `queries=N peak_in_flight=M` (counted in the server).
";

struct Args {
    cfg: Config,
    port: u16,
    drive: bool,
    strategies: Vec<String>,
    duration: u64,
    connections: u32,
    threads: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        cfg: Config::default(),
        port: 3000,
        drive: false,
        strategies: DEFAULT_STRATEGIES.split(',').map(String::from).collect(),
        duration: 10,
        connections: 50,
        threads: 2,
    };
    fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
        v.parse()
            .map_err(|_| format!("{flag}: cannot read {v:?} as a number"))
    }
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        if flag == "--drive" {
            a.drive = true;
            continue;
        }
        const VALUED: &[&str] = &[
            "--strategy",
            "--store",
            "--redis-url",
            "--database-url",
            "--table",
            "--rows",
            "--ttl-ms",
            "--db-connections",
            "--port",
            "--strategies",
            "--duration",
            "--connections",
            "--threads",
        ];
        if !VALUED.contains(&flag.as_str()) {
            return Err(format!("unknown flag {flag:?}"));
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--strategy" => {
                a.cfg.strategy = Strategy::parse(&v).ok_or_else(|| {
                    format!("--strategy {v:?}: none, traditional, stampede=BETA or auto")
                })?
            }
            "--store" => a.cfg.store = v,
            "--redis-url" => a.cfg.redis_url = v,
            "--database-url" => a.cfg.database_url = v,
            "--table" => a.cfg.table = v,
            "--rows" => a.cfg.rows = num(&flag, &v)?,
            "--ttl-ms" => a.cfg.ttl = Duration::from_millis(num(&flag, &v)?),
            "--db-connections" => a.cfg.db_connections = num(&flag, &v)?,
            "--port" => a.port = num(&flag, &v)?,
            "--strategies" => a.strategies = v.split(',').map(String::from).collect(),
            "--duration" => a.duration = num(&flag, &v)?,
            "--connections" => a.connections = num(&flag, &v)?,
            "--threads" => a.threads = num(&flag, &v)?,
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    if !["memory", "redis", "near", "disk"].contains(&a.cfg.store.as_str()) {
        return Err(format!(
            "--store must be memory, redis, near or disk, got {:?}",
            a.cfg.store
        ));
    }
    if a.cfg.ttl.is_zero() || a.cfg.rows == 0 || a.cfg.db_connections == 0 {
        return Err("--ttl-ms, --rows and --db-connections must be positive".into());
    }
    check_table_name(&a.cfg.table)?;
    for s in &a.strategies {
        if Strategy::parse(s).is_none() {
            return Err(format!("--strategies: unknown strategy {s:?}"));
        }
    }
    Ok(a)
}

/// What wrk reported for one run.
#[derive(Default)]
struct WrkReport {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    non_2xx: u64,
    /// Requests wrk gave up on (its timeout is 2 s).
    timeouts: u64,
}

/// wrk prints durations as `812.00us`, `1.23ms`, `2.01s` or `1.00m`.
fn wrk_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    for (unit, scale) in [("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 60e3)] {
        if let Some(n) = s.strip_suffix(unit) {
            if let Ok(v) = n.parse::<f64>() {
                return Some(v * scale);
            }
        }
    }
    None
}

fn parse_wrk(out: &str) -> Option<WrkReport> {
    let mut r = WrkReport::default();
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["Latency", _avg, _stdev, max, ..] => r.max_ms = wrk_ms(max)?,
            ["50%", v] => r.p50_ms = wrk_ms(v)?,
            ["99%", v] => r.p99_ms = wrk_ms(v)?,
            ["Requests/sec:", v] => r.requests_per_s = v.parse().ok()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse().ok()?,
            ["Socket", "errors:", .., "timeout", n] => r.timeouts = n.parse().ok()?,
            _ => {}
        }
    }
    (r.requests_per_s > 0.0).then_some(r)
}

const ACTIVE_SQL: &str = "SELECT count(*) FROM pg_stat_activity \
    WHERE state = 'active' AND pid <> pg_backend_pid() AND position($1 in query) > 0";

/// Waits until no landing query is running any more: a killed server's backends finish the
/// query they were running, and would be counted in the next strategy's peak. After 10 s they
/// are terminated.
async fn drain(db: &Client, marker: &str) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let n: i64 = db
            .query_one(ACTIVE_SQL, &[&marker])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if n == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND position($1 in query) > 0",
                &[&marker],
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("{n} landing queries still running after 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples how many executions of the landing query PostgreSQL shows as active, until `stop`.
async fn sample_peak(db: Client, marker: String, stop: Arc<tokio::sync::Notify>) -> u64 {
    let sql = ACTIVE_SQL;
    let mut peak = 0i64;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&marker];
    loop {
        tokio::select! {
            _ = stop.notified() => return peak as u64,
            row = db.query_one(sql, &params) => {
                if let Ok(row) = row {
                    peak = peak.max(row.get::<_, i64>(0));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
}

/// One strategy: a fresh server process, wrk against it, pg_stat_activity sampled meanwhile.
async fn drive_one(a: &Args, db: &Client, name: &str) -> Result<String, String> {
    drain(db, &query_marker(&a.cfg.table)).await?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .args(["--strategy", name, "--port", "0", "--store", &a.cfg.store])
        .args([
            "--redis-url",
            &a.cfg.redis_url,
            "--database-url",
            &a.cfg.database_url,
        ])
        .args(["--table", &a.cfg.table, "--rows", &a.cfg.rows.to_string()])
        .args(["--ttl-ms", &a.cfg.ttl.as_millis().to_string()])
        .args(["--db-connections", &a.cfg.db_connections.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting the server: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let url = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .map_err(|_| "the server did not start within 120 s".to_string())?
        .map_err(|e| e.to_string())?
        .and_then(|l| l.strip_prefix("listening on ").map(String::from))
        .ok_or("the server exited before listening")?;
    let sampler_db = connect(&a.cfg.database_url)
        .await
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let sampler = tokio::spawn(sample_peak(
        sampler_db,
        query_marker(&a.cfg.table),
        stop.clone(),
    ));
    let wrk = tokio::process::Command::new("wrk")
        .args(["--latency", "-t", &a.threads.to_string()])
        .args([
            "-c",
            &a.connections.to_string(),
            "-d",
            &format!("{}s", a.duration),
        ])
        .arg(format!("{url}/"))
        .output()
        .await
        .map_err(|e| format!("running wrk ({e}); install it with `apt-get install -y wrk`"))?;
    stop.notify_one();
    let peak = sampler.await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&wrk.stdout);
    let report = parse_wrk(&text).ok_or_else(|| format!("could not read wrk's output:\n{text}"))?;
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("{url}: {e}"))?;
    let mut conn = http_connect(addr).await.map_err(|e| e.to_string())?;
    let (_, stats) = http_get(&mut conn, "/stats")
        .await
        .map_err(|e| e.to_string())?;
    let queries = stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("queries="))
        .unwrap_or("?")
        .to_string();
    let _ = child.kill().await;
    let errors = if report.non_2xx > 0 {
        format!("  <- {} non-2xx responses", report.non_2xx)
    } else {
        String::new()
    };
    Ok(format!(
        "{name:<14} {:>10.0} {:>9.2} {:>9.2} {:>9.1} {:>8} {queries:>8} {peak:>5}{errors}",
        report.requests_per_s, report.p50_ms, report.p99_ms, report.max_ms, report.timeouts
    ))
}

async fn drive(a: &Args) -> Result<(), String> {
    let db = connect(&a.cfg.database_url)
        .await
        .map_err(|e| format!("PostgreSQL at {}: {e}", a.cfg.database_url))?;
    seed(&db, &a.cfg.table, a.cfg.rows).await?;
    db.batch_execute("SET max_parallel_workers_per_gather = 0")
        .await
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    db.query(&landing_query(&a.cfg.table), &[])
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "service: wrk -t{} -c{} -d{}s per strategy; {} store, TTL {} ms; one query alone: {:.0} ms ({} rows)",
        a.threads,
        a.connections,
        a.duration,
        a.cfg.store,
        a.cfg.ttl.as_millis(),
        t0.elapsed().as_secs_f64() * 1e3,
        a.cfg.rows
    );
    println!(
        "key: req/s, p50/p99/max latency, timeouts (requests past wrk's 2 s) = wrk; queries = \
         times the query ran (counted in the handler); peak = most executions of it active at \
         once in pg_stat_activity"
    );
    println!(
        "{:<14} {:>10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>5}",
        "strategy", "req/s", "p50 ms", "p99 ms", "max ms", "timeouts", "queries", "peak"
    );
    for name in &a.strategies {
        println!("{}", drive_one(a, &db, name).await?);
    }
    Ok(())
}

async fn serve(a: &Args) -> Result<(), String> {
    let (router, _) = app(&a.cfg).await?;
    let listener = TcpListener::bind(("127.0.0.1", a.port))
        .await
        .map_err(|e| format!("port {}: {e}", a.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The driver reads this line to find the port.
    println!("listening on http://{addr}");
    axum::serve(listener, router)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(msg) if msg.is_empty() => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!(
                "service: error: {msg}\nrun `service --help` for the flags and their defaults"
            );
            return ExitCode::from(2);
        }
    };
    let result = if a.drive {
        drive(&a).await
    } else {
        serve(&a).await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("service: {e}");
            ExitCode::FAILURE
        }
    }
}
