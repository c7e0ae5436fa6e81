//! The landing page as an HTTP service: an axum router whose `/` runs a heavy PostgreSQL
//! query memoized by herdless (strategy and store configurable), the generated table behind
//! it, and a minimal HTTP/1.1 client.
//!
//! Included with `#[path = ...] mod landing_service;` by `examples/service.rs` (the command
//! line and the wrk driver) and by `tests/service.rs` (the server in process).
#![allow(dead_code)] // each includer uses a different part

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use herdless::store::RedisStore;
use herdless::{memoize, memoize_stampede, LeadTarget, MemoryStore, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_postgres::{Client, NoTls};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

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
pub fn landing_query(table: &str) -> String {
    format!(
        "/* {} */ SELECT category, count(*) AS orders, sum(amount)::float8 AS revenue, \
         avg(amount)::float8 AS mean, max(created)::text AS latest \
         FROM {table} GROUP BY category ORDER BY revenue DESC LIMIT 10",
        query_marker(table)
    )
}

pub fn check_table_name(table: &str) -> Result<(), String> {
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
        "near" => {
            let shared = RedisStore::builder(&cfg.redis_url)
                .prefix(&format!("herdless-service-{}", std::process::id()))
                .connect()
                .await
                .map_err(|e| format!("--store near: {e}"))?;
            let near = herdless::store::NearStore::builder(&shared)
                .capacity(16)
                .build::<(), String>()
                .map_err(|e| e.to_string())?;
            memoized(cfg, near, compute)?
        }
        #[cfg(feature = "disk")]
        "disk" => {
            // One LMDB file per server process (like the Redis prefix): strategies never share.
            let dir = std::env::temp_dir().join(format!("herdless-service-{}", std::process::id()));
            let store =
                herdless::store::DiskStore::open(&dir).map_err(|e| format!("--store disk: {e}"))?;
            memoized(cfg, store, compute)?
        }
        other => {
            return Err(format!(
                "--store must be memory, redis, near or disk (feature `disk`), got {other:?}"
            ))
        }
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
