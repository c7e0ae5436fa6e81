//! Shared helpers of the Redis integration tests: a private `redis-server` per test (start, kill,
//! pause, resume, restart on the same port), raw Redis access for inspecting what herdless wrote,
//! `INFO commandstats` parsing, and child processes that re-run this test binary in a role.
//!
//! Rules every helper follows: no server outlives its test (killed and reaped in `Drop`), the
//! shared server on 6379 is never touched, and every wait is bounded so a bug fails instead of
//! hanging.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
pub mod common;

/// How long a server may take to answer its first PING.
pub const READY_BOUND: Duration = Duration::from_secs(5);
/// The generic bound of "this must happen eventually" waits.
pub const BOUND: Duration = Duration::from_secs(20);

/// Env vars that put a re-executed test binary into a child role.
pub const ENV_PORT: &str = "HERDLESS_CHILD_PORT";
pub const ENV_ROLE: &str = "HERDLESS_CHILD_ROLE";

fn on_path(exe: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(exe))
        .find(|p| p.is_file())
}

/// Starts a private server, or explains why not: with `CI` set a missing `redis-server` is a
/// failure, otherwise the test prints one line and is skipped.
pub fn redis_or_skip() -> Option<RedisServer> {
    if on_path("redis-server").is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("redis-server missing but CI is set");
        }
        skip_notice();
        return None;
    }
    Some(RedisServer::start())
}

/// Says once per test binary, past libtest's output capture (which would hide a `println!` of
/// a passing test), that the Redis tests are skipped and why.
pub fn skip_notice() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::io::Write;
        let exe = std::env::current_exe().ok();
        let name = exe
            .as_deref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().split('-').next().unwrap_or("").to_owned())
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr().lock(),
            "skipping the Redis tests of {name}: redis-server not found on PATH (install it, or set CI=1 to make this an error)"
        );
    });
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take), never one this
/// process handed out before: tests run in parallel, and two servers started at once must not
/// race for one released port (a test would then talk to another test's server).
pub fn free_port() -> u16 {
    claim_port(|p| Some(vec![p]))
}

/// The first free port `p` for which `needs(p)` names the ports it takes (itself, and a
/// cluster node's bus port), none of them handed out before by this process; all are then
/// claimed for the rest of the process.
pub fn claim_port(needs: impl Fn(u16) -> Option<Vec<u16>>) -> u16 {
    static CLAIMED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().unwrap().port();
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        match needs(p) {
            Some(ports) if !ports.iter().any(|q| claimed.contains(q)) => {
                claimed.extend(ports);
                return p;
            }
            _ => continue,
        }
    }
    panic!("no free port");
}

/// A `redis-server` child process owned by one test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    paused: bool,
}

impl RedisServer {
    /// Starts a server on a free port (retrying another port if the first is taken meanwhile)
    /// and waits, bounded, until it answers PING.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "herdless-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the server's scratch dir");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
                paused: false,
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_BOUND;
        loop {
            if ping(self.port, Duration::from_millis(200)) {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().ok().flatten() {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                ));
            }
            if Instant::now() > deadline {
                self.reap();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {READY_BOUND:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is not running").id()
    }

    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL, also works on a stopped process
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        self.reap();
    }

    /// Starts the server again on the same port (the old one must be dead), bounded.
    pub fn restart(&mut self) {
        self.reap();
        let mut last = String::new();
        // The port was just ours; retry briefly in case the kernel needs a moment.
        for _ in 0..10 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!(
            "could not restart redis-server on port {}: {last}",
            self.port
        );
    }

    /// SIGSTOP: the server hangs (connections stay open, nothing is answered).
    pub fn pause(&mut self) {
        signal(self.pid(), "STOP");
        self.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        signal(self.pid(), "CONT");
        self.paused = false;
    }

    /// A fresh raw connection (for inspection and fault injection).
    pub fn raw(&self) -> redis::Connection {
        raw(self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.reap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends a signal with the `kill` utility (no libc in this crate).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed: {status}");
}

/// True when a server on `port` answers `PING` with `+PONG` within `timeout`.
pub fn ping(port: u16, timeout: Duration) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A raw synchronous connection with timeouts (so a hung server fails the test, not hangs it).
pub fn raw(port: u16) -> redis::Connection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("raw connection to 127.0.0.1:{port}: {e}"));
    con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    con.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    con
}

/// A raw connection whose reads may block for `read_timeout` (for `BLPOP` and friends).
pub fn raw_with_timeout(port: u16, read_timeout: Duration) -> redis::Connection {
    let con = raw(port);
    con.set_read_timeout(Some(read_timeout)).unwrap();
    con
}

/// How many pub/sub connections the server has (each `RedisStore` keeps one).
pub fn pubsub_clients(con: &mut redis::Connection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query(con)
        .expect("CLIENT LIST");
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Makes `store` connect (and load its scripts) through one ordinary call, and waits until the
/// server sees `pubsub` subscriber connections in total, so that measurements and races that
/// follow do not include connection set-up. Fails if the warm-up call hit a store error.
pub fn warm_up(store: &herdless::store::RedisStore, con: &mut redis::Connection, pubsub: usize) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let f = herdless::memoize_stampede(store, Duration::from_secs(60))
        .name("warmup")
        .build_blocking_infallible(|k: &String| k.clone())
        .unwrap();
    let k = format!(
        "warm-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    assert_eq!(f.get(&k).unwrap(), k);
    let errors = store.stats().errors.load(Ordering::Relaxed);
    assert_eq!(errors, 0, "the warm-up call hit {errors} store errors");
    wait_until("pub/sub subscriptions", BOUND, || {
        pubsub_clients(con) >= pubsub
    });
}

/// Runs `f` on its own thread and returns its result, or panics after `bound` (a hang fails the
/// test; the stuck thread is abandoned).
pub fn bounded<T: Send + 'static>(
    what: &str,
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(bound) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("{what} did not finish within {bound:?}"),
    }
}

/// The lock key that belongs to a value key (`...:v` → `...:l`, see the store's key layout).
pub fn lock_key(value_key: &[u8]) -> Vec<u8> {
    assert!(
        value_key.ends_with(b":v"),
        "not a value key: {:?}",
        String::from_utf8_lossy(value_key)
    );
    let mut k = value_key.to_vec();
    *k.last_mut().unwrap() = b'l';
    k
}

/// The pub/sub channel that belongs to a value key (`...:v` → `...:c`).
pub fn channel_key(value_key: &[u8]) -> Vec<u8> {
    let mut k = lock_key(value_key);
    *k.last_mut().unwrap() = b'c';
    k
}

pub fn exists(con: &mut redis::Connection, key: &[u8]) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<i64>(con)
        .expect("EXISTS")
        == 1
}

/// Polls `cond` until it holds; panics after `bound`.
pub fn wait_until(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out ({bound:?}) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Async flavour of [`wait_until`].
pub async fn wait_until_async(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out ({bound:?}) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `INFO commandstats` as `command → calls` (e.g. `evalsha → 3`, `client|setinfo → 2`).
pub fn commandstats(con: &mut redis::Connection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(con)
        .expect("INFO commandstats");
    parse_commandstats(&info)
}

pub fn parse_commandstats(info: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let calls = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        out.insert(name.to_string(), calls);
    }
    out
}

/// `after − before` per command, without zero entries and without the `INFO` calls of the
/// observer itself.
pub fn commandstats_delta(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    after
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Child processes: this test binary re-executed in a role.
// ---------------------------------------------------------------------------------------------

/// What a child process was asked to do, or `None` when this test runs as an ordinary test
/// (then the child test returns at once).
pub struct ChildEnv {
    pub port: u16,
    pub role: String,
}

impl ChildEnv {
    pub fn get() -> Option<ChildEnv> {
        let port = std::env::var(ENV_PORT)
            .ok()?
            .parse()
            .expect("HERDLESS_CHILD_PORT is a port");
        let role = std::env::var(ENV_ROLE).unwrap_or_default();
        Some(ChildEnv { port, role })
    }
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
    /// An extra env var of the child (panics if missing).
    pub fn var(&self, name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("child env var {name} missing"))
    }
}

/// A line a child prints for the parent: `HERDLESS <tag> <payload>`.
pub fn report(tag: &str, payload: impl std::fmt::Display) {
    println!("HERDLESS {tag} {payload}");
}

/// A child process running one test of this binary with `--exact`.
pub struct ChildProc {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Everything the child printed so far (for failure messages).
    pub log: Vec<String>,
    name: String,
}

impl ChildProc {
    /// Runs `test_name` of the current test binary with `--exact --nocapture`, in `role`,
    /// against the server on `port`, with extra env vars.
    pub fn spawn(test_name: &str, port: u16, role: &str, env: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"])
            .env(ENV_PORT, port.to_string())
            .env(ENV_ROLE, role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child test process");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("[stderr] {line}"));
            }
        });
        ChildProc {
            child: Some(child),
            lines: rx,
            log: Vec::new(),
            name: format!("{test_name}/{role}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child already reaped").id()
    }

    fn dump(&self) -> String {
        format!("child {} output:\n  {}", self.name, self.log.join("\n  "))
    }

    /// Waits (bounded) for a line `HERDLESS <tag> ...` and returns its payload.
    pub fn wait_report(&mut self, tag: &str, bound: Duration) -> String {
        let prefix = format!("HERDLESS {tag} ");
        let bare = format!("HERDLESS {tag}");
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    // libtest may print `test name ... ` on the same line before the report.
                    if let Some(at) = line.find(&prefix) {
                        return line[at + prefix.len()..].to_string();
                    }
                    if line.ends_with(&bare) {
                        return String::new();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no `{tag}` report within {bound:?}; {}", self.dump())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    panic!(
                        "child exited ({status:?}) before reporting `{tag}`; {}",
                        self.dump()
                    )
                }
            }
        }
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, ...).
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the child to exit; panics on timeout (the child is then killed).
    pub fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            // Keep draining output so the log is complete.
            while let Ok(line) = self.lines.try_recv() {
                self.log.push(line);
            }
            let c = self.child.as_mut().expect("child already reaped");
            if let Some(status) = c.try_wait().expect("try_wait") {
                // Give the reader threads a moment to deliver the tail of the output.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.log.push(line);
                }
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("child did not exit within {bound:?}; {}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a successful exit; panics with the child's output otherwise.
    pub fn expect_success(&mut self, bound: Duration) {
        let status = self.wait_exit(bound);
        assert!(status.success(), "child failed: {status}; {}", self.dump());
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = signal_quiet(c.id(), "CONT");
        }
        self.kill();
    }
}

fn signal_quiet(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Parses `a=1 b=x` into a map.
pub fn fields(payload: &str) -> HashMap<String, String> {
    payload
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn field_u64(f: &HashMap<String, String>, k: &str) -> u64 {
    f.get(k)
        .unwrap_or_else(|| panic!("report lacks `{k}`: {f:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("`{k}` is not a number: {f:?}"))
}

// ---------------------------------------------------------------------------------------------
// Network faults between a process and Redis: a userspace TCP proxy (tc netem is unavailable).
// ---------------------------------------------------------------------------------------------

pub mod proxy;
