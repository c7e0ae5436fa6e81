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
//! `tests/service.rs` includes this file as a module and runs the server in process.
#![allow(dead_code)] // the integration test uses the server half only

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use herdless::store::RedisStore;
use herdless::{memoize, memoize_stampede, LeadTarget, MemoryStore, Store};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_postgres::{Client, NoTls};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_STRATEGIES: &str = "none,traditional,stampede=1,auto";

const HELP: &str = "service: the landing page over HTTP. GET / runs a heavy PostgreSQL query, memoized by herdless.

usage: service [FLAGS]            serve one strategy
       service --drive [FLAGS]    run wrk against a fresh server per strategy, print one table

  --strategy S          none | traditional | stampede=BETA | auto        [default: auto]
  --store KIND          memory | redis                                   [default: memory]
  --redis-url URL       Redis for --store redis                          [default: redis://127.0.0.1:6379/]
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

/// How the handler's query is cached.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Strategy {
    /// Every request runs the query.
    None,
    /// `memoize` with the TTL: no early refresh, no lock (every caller that misses queries).
    Traditional,
    /// `memoize_stampede` with a fixed β.
    Stampede(f64),
    /// `memoize_stampede` with automatic β.
    Auto,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "none" => Some(Strategy::None),
            "traditional" => Some(Strategy::Traditional),
            "auto" => Some(Strategy::Auto),
            _ => {
                let beta: f64 = s.strip_prefix("stampede=")?.parse().ok()?;
                (beta >= 0.0 && beta.is_finite()).then_some(Strategy::Stampede(beta))
            }
        }
    }
}

/// The server's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub strategy: Strategy,
    pub store: String,
    pub redis_url: String,
    pub database_url: String,
    pub table: String,
    pub rows: u64,
    pub ttl: Duration,
    pub db_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            strategy: Strategy::Auto,
            store: "memory".into(),
            redis_url: "redis://127.0.0.1:6379/".into(),
            database_url: DEFAULT_DATABASE_URL.into(),
            table: "herdless_orders".into(),
            rows: 1_000_000,
            ttl: Duration::from_millis(1000),
            db_connections: 16,
        }
    }
}

/// The text that marks the landing query in `pg_stat_activity`.
pub fn query_marker(table: &str) -> String {
    format!("herdless-landing:{table}")
}

/// The landing page's query: revenue per category over the whole table (a full scan and a
/// hash aggregate; one core per query, parallel workers off, so concurrent queries compete).
fn landing_query(table: &str) -> String {
    format!(
        "/* {} */ SELECT category, count(*) AS orders, sum(amount)::float8 AS revenue, \
         avg(amount)::float8 AS mean, max(created)::text AS latest \
         FROM {table} GROUP BY category ORDER BY revenue DESC LIMIT 10",
        query_marker(table)
    )
}

fn check_table_name(table: &str) -> Result<(), String> {
    let ok = !table.is_empty()
        && table.len() <= 63
        && table.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && table
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    ok.then_some(())
        .ok_or_else(|| format!("--table {table:?}: use lowercase letters, digits and _"))
}

/// Opens one connection; its driver task runs on the current runtime.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("postgres connection closed: {e}");
        }
    });
    Ok(client)
}

/// Creates and fills `table` with `rows` generated orders unless it already holds exactly that
/// (recorded in the table's comment). Serialized per table by an advisory lock.
pub async fn seed(db: &Client, table: &str, rows: u64) -> Result<(), String> {
    check_table_name(table)?;
    let e = |e: tokio_postgres::Error| format!("seeding {table}: {e}");
    let tag = format!("herdless rows={rows}");
    db.execute("SELECT pg_advisory_lock(hashtext($1))", &[&table])
        .await
        .map_err(e)?;
    let current: Option<String> = db
        .query_one(
            "SELECT obj_description(to_regclass($1), 'pg_class')",
            &[&table],
        )
        .await
        .map_err(e)?
        .get(0);
    let result = if current.as_deref() == Some(tag.as_str()) {
        Ok(())
    } else {
        eprintln!("seeding {table} with {rows} rows (once; kept for later runs)");
        db.batch_execute(&format!(
            "BEGIN;
             DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (id bigint, customer int, category int,
                                   amount numeric(12,2), created timestamptz);
             INSERT INTO {table}
               SELECT g, ((g * 7919) % 50000)::int, ((g * 31) % 200)::int,
                      ((g * 104729) % 100000) / 100.0,
                      timestamptz '2026-01-01' + (g % 525600) * interval '1 minute'
               FROM generate_series(1::bigint, {rows}::bigint) g;
             COMMENT ON TABLE {table} IS '{tag}';
             COMMIT;
             ANALYZE {table};"
        ))
        .await
        .map_err(e)
    };
    db.execute("SELECT pg_advisory_unlock(hashtext($1))", &[&table])
        .await
        .map_err(e)?;
    result
}

/// A fixed set of connections handed out one query at a time, so queries really run in
/// parallel on the server (one connection would queue them).
struct Pool {
    clients: Mutex<Vec<Client>>,
    permits: Semaphore,
}

impl Pool {
    async fn new(url: &str, n: usize) -> Result<Pool, tokio_postgres::Error> {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let c = connect(url).await?;
            c.batch_execute("SET max_parallel_workers_per_gather = 0")
                .await?;
            clients.push(c);
        }
        Ok(Pool {
            permits: Semaphore::new(clients.len()),
            clients: Mutex::new(clients),
        })
    }

    async fn query(&self, sql: &str) -> Result<Vec<tokio_postgres::Row>, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let lent = Lent {
            pool: self,
            client: self.clients.lock().unwrap_or_else(|p| p.into_inner()).pop(),
        };
        let client = lent.client.as_ref().expect("a client per permit");
        client.query(sql, &[]).await.map_err(|e| e.to_string())
    }
}

/// A client out of the pool; it goes back when dropped, also when the request that borrowed it
/// is cancelled (a load generator closing its connection drops the handler's future).
struct Lent<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            self.pool
                .clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(c);
        }
    }
}

/// What the server counts: queries run, and the most that ran at once.
#[derive(Default)]
pub struct Counters {
    pub queries: AtomicU64,
    in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
}

type Page = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

struct App {
    page: Page,
    counters: Arc<Counters>,
}

/// Runs the landing query and renders the page.
async fn render(pool: Arc<Pool>, counters: Arc<Counters>, sql: Arc<str>) -> Result<String, String> {
    counters.queries.fetch_add(1, Ordering::SeqCst);
    let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counters.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    let rows = pool.query(&sql).await;
    counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut html = String::from("<html><body><h1>Top categories</h1><table>\n");
    for r in rows? {
        let (cat, orders, revenue): (i32, i64, f64) = (r.get(0), r.get(1), r.get(2));
        let (mean, latest): (f64, String) = (r.get(3), r.get(4));
        html += &format!(
            "<tr><td>{cat}</td><td>{orders}</td><td>{revenue:.2}</td><td>{mean:.2}</td><td>{latest}</td></tr>\n"
        );
    }
    html += "</table></body></html>\n";
    Ok(html)
}

fn memoized<S: Store<(), String>>(cfg: &Config, store: S, compute: Page) -> Result<Page, String> {
    let f = move |_: ()| compute();
    let name = format!("landing:{}", cfg.table);
    let built = match cfg.strategy {
        Strategy::None => return Ok(compute_only(f)),
        Strategy::Traditional => memoize(&store, cfg.ttl).name(&name).build(f),
        Strategy::Stampede(beta) => memoize_stampede(&store, cfg.ttl)
            .name(&name)
            .beta(beta)
            .build(f),
        Strategy::Auto => memoize_stampede(&store, cfg.ttl)
            .name(&name)
            .beta_auto(LeadTarget::default())
            .build(f),
    };
    let m = built.map_err(|e| e.to_string())?;
    Ok(Arc::new(move || {
        let m = m.clone();
        Box::pin(async move { m.get(&()).await.map_err(|e| e.to_string()) })
    }))
}

fn compute_only(
    f: impl Fn(()) -> BoxFuture<'static, Result<String, String>> + Send + Sync + 'static,
) -> Page {
    Arc::new(move || f(()))
}

/// Connects, seeds the table if needed and returns the router and its counters.
pub async fn app(cfg: &Config) -> Result<(Router, Arc<Counters>), String> {
    check_table_name(&cfg.table)?;
    let db = connect(&cfg.database_url)
        .await
        .map_err(|e| format!("PostgreSQL at {}: {e}", cfg.database_url))?;
    seed(&db, &cfg.table, cfg.rows).await?;
    let pool = Arc::new(
        Pool::new(&cfg.database_url, cfg.db_connections)
            .await
            .map_err(|e| format!("PostgreSQL pool: {e}"))?,
    );
    let counters = Arc::new(Counters::default());
    let sql: Arc<str> = landing_query(&cfg.table).into();
    let c = counters.clone();
    let compute: Page = Arc::new(move || Box::pin(render(pool.clone(), c.clone(), sql.clone())));
    let page = match cfg.store.as_str() {
        "memory" => memoized(
            cfg,
            MemoryStore::new(16).map_err(|e| e.to_string())?,
            compute,
        )?,
        "redis" => {
            let store = RedisStore::builder(&cfg.redis_url)
                .prefix(&format!("herdless-service-{}", std::process::id()))
                .connect()
                .await
                .map_err(|e| format!("--store redis: {e}"))?;
            memoized(cfg, store, compute)?
        }
        other => return Err(format!("--store must be memory or redis, got {other:?}")),
    };
    let state = Arc::new(App {
        page,
        counters: counters.clone(),
    });
    let router = Router::new()
        .route("/", get(landing))
        .route("/stats", get(stats))
        .with_state(state);
    Ok((router, counters))
}

async fn landing(
    State(app): State<Arc<App>>,
) -> Result<axum::response::Html<String>, (StatusCode, String)> {
    (app.page)()
        .await
        .map(axum::response::Html)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))
}

async fn stats(State(app): State<Arc<App>>) -> String {
    format!(
        "queries={} peak_in_flight={}\n",
        app.counters.queries.load(Ordering::SeqCst),
        app.counters.peak_in_flight.load(Ordering::SeqCst)
    )
}

/// One HTTP/1.1 GET on a kept-alive connection; returns the status code and body.
pub async fn http_get(
    conn: &mut BufReader<TcpStream>,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    conn.get_mut().write_all(req.as_bytes()).await?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| bad("content-length"))?;
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Opens a connection for [`http_get`].
pub async fn http_connect(addr: std::net::SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    Ok(BufReader::new(TcpStream::connect(addr).await?))
}

// ---------------------------------------------------------------- command line and driver

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
    if a.cfg.store != "memory" && a.cfg.store != "redis" {
        return Err(format!(
            "--store must be memory or redis, got {:?}",
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
