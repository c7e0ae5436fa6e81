//! Issue 9 on a real `redis-server`, with real processes: `invalidate`, `insert` and
//! `invalidate_all` racing computations in other processes, and the cross-process contract of
//! invalidate / insert checked with an `INCR` counter inside the closure (no timing).
//!
//! Children are this test binary re-executed (`--exact <child test>`) with
//! `HERDLESS_CHILD_PORT`/`HERDLESS_CHILD_ROLE` set; the `child_*` tests return at once when run
//! as ordinary tests. Children report on stdout (`HERDLESS <tag> <payload>`). Every wait is
//! bounded, so a bug fails the test instead of hanging it.

mod support;

use herdless::store::RedisStore;
use herdless::{memoize_stampede, Contention};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{
    field_u64, fields, raw, raw_with_timeout, redis_or_skip, report, warm_up, ChildEnv, ChildProc,
    BOUND,
};

const TTL: Duration = Duration::from_secs(60);
const KEYS: [&str; 2] = ["alpha", "beta"];
/// How long the invalidating process races the callers.
const RUN: Duration = Duration::from_secs(4);
/// After `invalidate_all`, the other processes switch generations when its announcement
/// arrives (one pub/sub message, well under a millisecond on one host; see
/// `src/store/redis/generation.rs`). The writer lets this much time pass before it declares the
/// invalidation done, as generous slack for that message on a busy machine.
const ALL_SLACK: Duration = Duration::from_millis(100);

fn store(url: &str) -> RedisStore {
    // Generous timeouts: these tests are about coordination, not about a slow machine failing
    // open.
    RedisStore::builder(url)
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn truth_key(k: &str) -> String {
    format!("truth:{k}")
}

fn done_key(k: &str) -> String {
    format!("inv_done:{k}")
}

/// A small xorshift generator: the children need cheap randomness, not a crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ (u64::from(std::process::id()) << 32)
}

// =============================================================================================
// 1. The race: several processes call while another one invalidates, inserts, clears.
// =============================================================================================

/// What one caller process counted.
#[derive(Default)]
struct Tally {
    calls: u64,
    violations: u64,
    errors: u64,
    examples: Vec<String>,
}

impl Tally {
    /// `got` was returned by a call that started after the writer declared truth `done`.
    fn check(&mut self, k: &str, done: u64, got: Result<u64, String>) {
        self.calls += 1;
        match got {
            Ok(v) if v < done => {
                self.violations += 1;
                if self.examples.len() < 5 {
                    self.examples.push(format!("{k}:got{v}<done{done}"));
                }
            }
            Ok(_) => {}
            Err(e) => {
                self.errors += 1;
                if self.examples.len() < 5 {
                    self.examples
                        .push(format!("{k}:error:{}", e.replace(char::is_whitespace, "_")));
                }
            }
        }
    }
}

/// Reads the writer's progress for `k` and whether to stop, in one round trip.
fn progress(con: &mut redis::Connection, k: &str) -> (u64, bool) {
    let (done, stop): (Option<u64>, Option<u64>) = redis::cmd("MGET")
        .arg(done_key(k))
        .arg("stop")
        .query(con)
        .expect("MGET");
    (done.unwrap_or(0), stop == Some(1))
}

/// Child of [`invalidations_race_computations_across_processes`]: calls the function in a loop
/// (async or blocking facade by `HERDLESS_MODE`) until the parent says stop. The closure reads
/// the truth from Redis, sleeps 0–10 ms and returns the truth it read. Half of the calls wait
/// for a running computation, half give up after 1 ms and compute unlocked beside it.
#[test]
fn child_race_caller() {
    let Some(env) = ChildEnv::get() else { return };
    let blocking = env.var("HERDLESS_MODE") == "blocking";
    let tasks: usize = std::env::var("HERDLESS_TASKS").map_or(1, |t| t.parse().unwrap());
    let port = env.port;
    let s = store(&env.url());
    warm_up(&s, &mut raw(port), 1);
    let mut con = raw(port);
    let mut rng = Rng::new(seed());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tally = Tally::default();
    let (fenced_engine, computations, st_errors);
    let builder = || {
        memoize_stampede(&s, TTL)
            .name("race")
            .beta(0.0)
            .contention(Contention::Wait(BOUND))
    };
    if blocking {
        let truth_con = Mutex::new(raw(port));
        let sleeps = Mutex::new(Rng::new(seed() ^ 0x9e37));
        let f = builder()
            .build_blocking(move |k: &String| {
                let t: Option<u64> = redis::cmd("GET")
                    .arg(truth_key(k))
                    .query(&mut *truth_con.lock().unwrap())
                    .map_err(|e| e.to_string())?;
                let us = sleeps.lock().unwrap().below(10_000);
                std::thread::sleep(Duration::from_micros(us));
                Ok::<u64, String>(t.unwrap_or(0))
            })
            .unwrap();
        f.get(&"warm".to_string()).unwrap();
        report("READY", std::process::id());
        wait_for_go(port);
        let mut i = 0u64;
        while Instant::now() < deadline {
            i += 1;
            let k = KEYS[rng.below(KEYS.len() as u64) as usize];
            let (done, stop) = progress(&mut con, k);
            if stop {
                break;
            }
            let key = k.to_string();
            let got = if i % 2 == 0 {
                f.get(&key)
            } else {
                f.get_with(&key, Contention::ComputeAfter(Duration::from_millis(1)))
            };
            tally.check(k, done, got.map_err(|e| e.to_string()));
            std::thread::sleep(Duration::from_micros(rng.below(2_000)));
        }
        let st = f.stats();
        (fenced_engine, computations, st_errors) = (st.fenced_writes, st.computations, st.errors);
    } else {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let client = redis::Client::open(env.url()).unwrap();
        let truth_con = rt
            .block_on(client.get_multiplexed_async_connection())
            .unwrap();
        let sleeps = Arc::new(Mutex::new(Rng::new(seed() ^ 0x9e37)));
        let f = builder()
            .build(move |k: String| {
                let mut c = truth_con.clone();
                let us = sleeps.lock().unwrap().below(10_000);
                async move {
                    let t: Option<u64> = redis::cmd("GET")
                        .arg(truth_key(&k))
                        .query_async(&mut c)
                        .await
                        .map_err(|e| e.to_string())?;
                    tokio::time::sleep(Duration::from_micros(us)).await;
                    Ok::<u64, String>(t.unwrap_or(0))
                }
            })
            .unwrap();
        rt.block_on(f.get(&"warm".to_string())).unwrap();
        report("READY", std::process::id());
        wait_for_go(port);
        // `tasks` callers in this process, each in its own loop (one by default).
        let shared = Arc::new(Mutex::new(std::mem::take(&mut tally)));
        let loops: Vec<_> = (0..tasks)
            .map(|t| {
                let (f, shared, client) = (f.clone(), shared.clone(), client.clone());
                let mut rng = Rng::new(seed() ^ (t as u64 + 1).wrapping_mul(0x2545_f491));
                rt.spawn(async move {
                    let mut con = client.get_multiplexed_async_connection().await.unwrap();
                    let mut i = t as u64;
                    while Instant::now() < deadline {
                        i += 1;
                        let k = KEYS[rng.below(KEYS.len() as u64) as usize];
                        let (done, stop): (Option<u64>, Option<u64>) = redis::cmd("MGET")
                            .arg(done_key(k))
                            .arg("stop")
                            .query_async(&mut con)
                            .await
                            .expect("MGET");
                        if stop == Some(1) {
                            break;
                        }
                        let key = k.to_string();
                        let call = async {
                            if i % 2 == 0 {
                                f.get(&key).await
                            } else {
                                f.get_with(&key, Contention::ComputeAfter(Duration::from_millis(1)))
                                    .await
                            }
                        };
                        let got = match tokio::time::timeout(BOUND, call).await {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(_) => Err(format!("no answer within {BOUND:?}")),
                        };
                        shared.lock().unwrap().check(k, done.unwrap_or(0), got);
                        tokio::time::sleep(Duration::from_micros(rng.below(2_000))).await;
                    }
                })
            })
            .collect();
        rt.block_on(async {
            for l in loops {
                tokio::time::timeout(Duration::from_secs(90), l)
                    .await
                    .expect("a caller loop hung")
                    .expect("a caller loop panicked");
            }
        });
        tally = std::mem::take(&mut *shared.lock().unwrap());
        let st = f.stats();
        (fenced_engine, computations, st_errors) = (st.fenced_writes, st.computations, st.errors);
    }
    report(
        "RESULT",
        format!(
            "calls={} violations={} errors={} call_errors={st_errors} computations={computations} \
             fenced_engine={fenced_engine} fenced_store={} examples={}",
            tally.calls,
            tally.violations,
            tally.errors,
            s.stats().fenced_writes.load(Ordering::Relaxed),
            tally.examples.join("|"),
        ),
    );
}

fn wait_for_go(port: u16) {
    let mut con = raw_with_timeout(port, Duration::from_secs(30));
    let go: Option<(String, String)> = redis::cmd("BLPOP")
        .arg("go")
        .arg(20)
        .query(&mut con)
        .unwrap();
    assert!(go.is_some(), "no go from the parent");
}

/// Three processes (two async, one blocking) call a memoized function whose closure returns
/// the truth it read, while this process changes the truth and then invalidates the key
/// (sometimes inserts the new value, sometimes invalidates every key) and only then publishes
/// `inv_done`. A call that starts after it read `inv_done = d` must get a value ≥ d: anything
/// older was computed before the invalidation and must have been fenced.
#[test]
fn invalidations_race_computations_across_processes() {
    race(&[("async", 1), ("async", 1), ("blocking", 1)]);
}

/// Like [`invalidations_race_computations_across_processes`] with three concurrent callers in
/// each of two processes. Fails on the current code: a call that starts after the invalidation
/// returned joins a computation another task of its process started before it (the in-process
/// flight outlives the invalidation) and returns that computation's stale value, although the
/// store fenced its write. The same bug as `joining_a_computation_started_before_invalidate` in
/// tests/invalidate_race_memory.rs, seen across processes.
#[test]

fn concurrent_callers_in_one_process_race_invalidations() {
    race(&[("async", 3), ("async", 3)]);
}

/// Runs the race with one child per `(mode, tasks)`.
fn race(spec: &[(&str, usize)]) {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let port = server.port();
    let mut con = server.raw();
    for k in KEYS {
        let _: () = redis::cmd("MSET")
            .arg(truth_key(k))
            .arg(0)
            .arg(done_key(k))
            .arg(0)
            .query(&mut con)
            .unwrap();
    }
    let mut children: Vec<ChildProc> = spec
        .iter()
        .map(|(m, tasks)| {
            ChildProc::spawn(
                "child_race_caller",
                port,
                m,
                &[
                    ("HERDLESS_MODE", m.to_string()),
                    ("HERDLESS_TASKS", tasks.to_string()),
                ],
            )
        })
        .collect();
    for c in &mut children {
        c.wait_report("READY", BOUND);
    }
    let s = store(&server.url());
    let writer = memoize_stampede(&s, TTL)
        .name("race")
        .beta(0.0)
        .build_blocking_infallible(|_k: &String| 0u64) // never called: this process only writes
        .unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg("go")
        .arg(vec!["go"; children.len()])
        .query(&mut con)
        .unwrap();

    let mut rng = Rng::new(seed());
    let (mut rounds, mut alls, mut inserts) = (0u64, 0u64, 0u64);
    // Which operation published each `inv_done` value, to name it in a failure.
    let mut kinds: HashMap<(String, u64), &str> = HashMap::new();
    let start = Instant::now();
    while start.elapsed() < RUN {
        rounds += 1;
        let k = KEYS[rng.below(KEYS.len() as u64) as usize];
        let key = k.to_string();
        let incr = |con: &mut redis::Connection, k: &str| -> u64 {
            redis::cmd("INCR").arg(truth_key(k)).query(con).unwrap()
        };
        match rng.below(20) {
            0 => {
                // Every key's data changes at once.
                let ts: Vec<u64> = KEYS.iter().map(|k| incr(&mut con, k)).collect();
                writer.invalidate_all().unwrap();
                std::thread::sleep(ALL_SLACK);
                for (k, t) in KEYS.iter().zip(ts) {
                    kinds.insert((k.to_string(), t), "invalidate_all");
                    let _: () = redis::cmd("SET")
                        .arg(done_key(k))
                        .arg(t)
                        .query(&mut con)
                        .unwrap();
                }
                alls += 1;
            }
            1..=7 => {
                let t = incr(&mut con, k);
                writer.insert(&key, t).unwrap();
                kinds.insert((key.clone(), t), "insert");
                let _: () = redis::cmd("SET")
                    .arg(done_key(k))
                    .arg(t)
                    .query(&mut con)
                    .unwrap();
                inserts += 1;
            }
            _ => {
                let t = incr(&mut con, k);
                writer.invalidate(&key).unwrap();
                kinds.insert((key.clone(), t), "invalidate");
                let _: () = redis::cmd("SET")
                    .arg(done_key(k))
                    .arg(t)
                    .query(&mut con)
                    .unwrap();
            }
        }
        std::thread::sleep(Duration::from_micros(rng.below(8_000)));
    }
    let _: () = redis::cmd("SET")
        .arg("stop")
        .arg(1)
        .query(&mut con)
        .unwrap();

    let (mut violations, mut fenced_engine, mut fenced_store) = (0, 0, 0);
    let mut summary = Vec::new();
    for (c, (mode, _)) in children.iter_mut().zip(spec) {
        let line = c.wait_report("RESULT", BOUND);
        let r = fields(&line);
        c.expect_success(BOUND);
        summary.push(format!("{mode}: {line}"));
        violations += field_u64(&r, "violations");
        fenced_engine += field_u64(&r, "fenced_engine");
        fenced_store += field_u64(&r, "fenced_store");
        assert_eq!(field_u64(&r, "errors"), 0, "{mode} child: {line}");
        assert!(
            field_u64(&r, "calls") > 100,
            "{mode} child made too few calls to race anything: {line}"
        );
        assert!(field_u64(&r, "computations") > 10, "{mode} child: {line}");
    }
    let summary = summary.join("\n  ");
    eprintln!(
        "writer: {rounds} rounds ({inserts} inserts, {alls} invalidate_all)\n  {summary}\n  \
         fenced writes: {fenced_engine} (engine), {fenced_store} of them by the store's version"
    );
    // Name the operation behind each example (`alpha:got58<done61`).
    let named: Vec<String> = summary
        .split(|c: char| c.is_whitespace() || c == '|' || c == '=')
        .filter_map(|ex| {
            let (k, rest) = ex.split_once(":got")?;
            let done: u64 = rest.split_once("<done")?.1.parse().ok()?;
            let kind = kinds.get(&(k.to_string(), done)).copied().unwrap_or("?");
            Some(format!("{ex} (after {kind})"))
        })
        .collect();
    assert_eq!(
        violations, 0,
        "calls returned values computed before an invalidation that had returned:\n  {summary}\n  \
         examples: {named:?}"
    );
    assert!(rounds > 100, "the writer ran {rounds} rounds");
    assert!(
        fenced_store > 0,
        "no computation raced an invalidation, so nothing was tested:\n  {summary}"
    );
}

// =============================================================================================
// 2. Cross-process contract, counted: A invalidates, B computes; A inserts, B reads it.
// =============================================================================================

/// Child B of [`invalidate_and_insert_reach_another_process`] (async facade): at each step the
/// parent pushes, calls `get` once and reports the value and the computation counter.
#[test]
fn child_b() {
    let Some(env) = ChildEnv::get() else { return };
    let port = env.port;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = store(&env.url());
    warm_up(&s, &mut raw(port), 1);
    let client = redis::Client::open(env.url()).unwrap();
    let c = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    let f = memoize_stampede(&s, TTL)
        .name("xproc")
        .build(move |k: String| {
            let mut c = c.clone();
            async move {
                let n: u64 = redis::cmd("INCR")
                    .arg("runs")
                    .query_async(&mut c)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<String, String>(format!("{k}#{n}"))
            }
        })
        .unwrap();
    let mut con = raw_with_timeout(port, Duration::from_secs(30));
    let k = "home".to_string();
    // Registers this function's generation (and its announcements) before the parent starts.
    assert_eq!(rt.block_on(f.peek(&k)), None);
    report("READY", std::process::id());
    for step in 1..=4 {
        let go: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("step")
            .arg(20)
            .query(&mut con)
            .unwrap();
        assert!(go.is_some(), "no step {step} from the parent");
        let mut waited_ms = 0;
        if step == 4 {
            // After `invalidate_all`: the old entry goes when the announcement arrives.
            let t0 = Instant::now();
            while rt.block_on(f.peek(&k)).is_some() {
                assert!(
                    t0.elapsed() < BOUND,
                    "invalidate_all never reached this process"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            waited_ms = t0.elapsed().as_millis();
        }
        let v = rt.block_on(f.get(&k)).unwrap();
        let runs: u64 = redis::cmd("GET").arg("runs").query(&mut con).unwrap();
        report(
            &format!("S{step}"),
            format!(
                "value={v} runs={runs} computations={} waited_ms={waited_ms}",
                f.stats().computations
            ),
        );
    }
}

/// Process A (this one, blocking facade) and process B (a child, async facade) share a
/// function. Each closure `INCR`s one counter in Redis, so "B computed" is a count, not a time.
#[test]
fn invalidate_and_insert_reach_another_process() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    let mut b = ChildProc::spawn("child_b", server.port(), "b", &[]);
    b.wait_report("READY", BOUND);
    let s = store(&server.url());
    let counter = Mutex::new(server.raw());
    let a = memoize_stampede(&s, TTL)
        .name("xproc")
        .build_blocking(move |k: &String| {
            let n: u64 = redis::cmd("INCR")
                .arg("runs")
                .query(&mut *counter.lock().unwrap())
                .map_err(|e| e.to_string())?;
            Ok::<String, String>(format!("{k}#{n}"))
        })
        .unwrap();
    let k = "home".to_string();
    let mut step = |b: &mut ChildProc, n: u32| {
        let _: i64 = redis::cmd("RPUSH")
            .arg("step")
            .arg("go")
            .query(&mut con)
            .unwrap();
        fields(&b.wait_report(&format!("S{n}"), BOUND))
    };

    assert_eq!(a.get(&k).unwrap(), "home#1", "A computes");
    let r = step(&mut b, 1);
    assert_eq!(r["value"], "home#1", "B reads A's value: {r:?}");
    assert_eq!(field_u64(&r, "runs"), 1, "B did not compute: {r:?}");

    a.invalidate(&k).unwrap();
    let r = step(&mut b, 2);
    assert_eq!(
        field_u64(&r, "runs"),
        2,
        "B's next call after A's invalidate computes: {r:?}"
    );
    assert_eq!(r["value"], "home#2", "{r:?}");
    assert_eq!(field_u64(&r, "computations"), 1, "{r:?}");
    assert_eq!(a.get(&k).unwrap(), "home#2", "A reads B's value");

    a.insert(&k, "inserted".to_string()).unwrap();
    let r = step(&mut b, 3);
    assert_eq!(r["value"], "inserted", "B reads A's inserted value: {r:?}");
    assert_eq!(field_u64(&r, "runs"), 2, "nobody computed: {r:?}");

    a.invalidate_all().unwrap();
    let r = step(&mut b, 4);
    assert_eq!(
        field_u64(&r, "runs"),
        3,
        "B computes after A's invalidate_all: {r:?}"
    );
    assert_eq!(r["value"], "home#3", "{r:?}");
    eprintln!(
        "B saw invalidate_all {} ms after A's call returned",
        r["waited_ms"]
    );
    b.expect_success(BOUND);
    assert_eq!(a.get(&k).unwrap(), "home#3");
    assert_eq!(a.stats().computations, 1, "A computed once, at the start");
}
