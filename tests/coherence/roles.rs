//! The child processes of the checker: readers (with or without a near tier) and writers, each
//! recording every operation with `CLOCK_MONOTONIC` start and end times into its own history
//! file. Every child runs until a deadline given by the parent (same clock), so no child needs
//! to be killed and no history is cut short.

use crate::checker::{Event, Kind};
use crate::support::ChildEnv;
use herdless::store::{NearStore, RedisStore};
use herdless::{memoize_stampede, BlockingMemoized, Store};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The function's TTL: short enough that near entries are re-read every few seconds, long
/// enough that a stale value outliving the bounds shows as a gap far above them.
pub const TTL: Duration = Duration::from_secs(2);
/// How long the computation takes (reads the counter, then sleeps): a window in which an
/// invalidation can race it.
pub const COMPUTE: Duration = Duration::from_millis(30);
/// The function's name on the shared store (the same in every process).
pub const NAME: &str = "ctr";
/// Key prefix on the shared store.
pub const PREFIX: &str = "chk";

pub const ENV_TRUTH: &str = "CHK_TRUTH_PORT";
pub const ENV_KEYS: &str = "CHK_KEYS";
pub const ENV_ALL_KEYS: &str = "CHK_ALL_KEYS";
pub const ENV_END: &str = "CHK_END_NS";
pub const ENV_OUT: &str = "CHK_OUT";
pub const ENV_PROC: &str = "CHK_PROC";
pub const ENV_USER: &str = "CHK_USER";
pub const ENV_MAX_STALE_MS: &str = "CHK_MAX_STALE_MS";

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of this machine (unlike
/// `Instant`, whose value cannot leave the process, and unlike the wall clock, which may step).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The ground-truth counter of key `k`.
pub fn truth_key(k: u32) -> String {
    format!("truth:{k}")
}

fn keys(var: &str) -> Vec<u32> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("a key number"))
        .collect()
}

struct Child {
    url: String,
    truth: redis::Client,
    end: u64,
    proc: u32,
    out: String,
}

impl Child {
    fn from_env(env: &ChildEnv) -> Child {
        let url = match std::env::var(ENV_USER) {
            Ok(cred) if !cred.is_empty() => format!("redis://{cred}@127.0.0.1:{}/", env.port),
            _ => env.url(),
        };
        let truth_port = env.var(ENV_TRUTH);
        Child {
            url,
            truth: redis::Client::open(format!("redis://127.0.0.1:{truth_port}/")).unwrap(),
            end: env.var(ENV_END).parse().unwrap(),
            proc: env.var(ENV_PROC).parse().unwrap(),
            out: env.var(ENV_OUT),
        }
    }

    fn shared(&self) -> RedisStore {
        RedisStore::builder(&self.url)
            .prefix(PREFIX)
            .build()
            .unwrap()
    }

    fn save(&self, events: &[Event]) {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&self.out).unwrap());
        for e in events {
            writeln!(f, "{}", e.line()).unwrap();
        }
        f.flush().unwrap();
    }
}

/// The memoized function every process builds: its computation returns the key's counter.
fn counter_fn<S: Store<u32, u64>>(
    store: &S,
    truth: redis::Client,
) -> BlockingMemoized<u32, u64, String, S> {
    let pool: Arc<Mutex<Vec<redis::Connection>>> = Arc::default();
    memoize_stampede(store, TTL)
        .name(NAME)
        .build_blocking(move |k: &u32| {
            let pooled = pool.lock().unwrap().pop();
            let mut con = match pooled {
                Some(c) => c,
                None => truth
                    .get_connection_with_timeout(Duration::from_secs(2))
                    .map_err(|e| e.to_string())?,
            };
            let v: Option<u64> = redis::cmd("GET")
                .arg(truth_key(*k))
                .query(&mut con)
                .map_err(|e| e.to_string())?;
            pool.lock().unwrap().push(con);
            std::thread::sleep(COMPUTE);
            Ok(v.unwrap_or(0))
        })
        .unwrap()
}

/// Runs the role named in the environment; returns the number of operations recorded.
pub fn run(env: &ChildEnv) -> usize {
    let c = Child::from_env(env);
    let events = match env.role.as_str() {
        "reader" => {
            let shared = c.shared();
            read_loop(&c, &counter_fn(&shared, c.truth.clone()), false)
        }
        "near-reader" => {
            let max_stale: u64 = env.var(ENV_MAX_STALE_MS).parse().unwrap();
            let shared = c.shared();
            let near = NearStore::builder(&shared)
                .capacity(1000)
                .max_stale(Duration::from_millis(max_stale))
                .build::<u32, u64>()
                .unwrap();
            read_loop(&c, &counter_fn(&near, c.truth.clone()), true)
        }
        "writer" => write_loop(&c),
        other => panic!("unknown role {other}"),
    };
    c.save(&events);
    events.len()
}

fn read_loop<S: Store<u32, u64>>(
    c: &Child,
    f: &BlockingMemoized<u32, u64, String, S>,
    near: bool,
) -> Vec<Event> {
    let all = keys(ENV_ALL_KEYS);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (f, all, end, proc) = (f.clone(), all.clone(), c.end, c.proc);
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut i = rand::random_range(0..all.len());
                while now_ns() < end {
                    i = (i + 1) % all.len();
                    let k = all[i];
                    // One call in 50 is a `refresh`, which must return a value computed
                    // after it was called.
                    let kind = if rand::random_range(0..50) == 0 {
                        Kind::Refresh
                    } else {
                        Kind::Read
                    };
                    let start = now_ns();
                    let r = match kind {
                        Kind::Refresh => f.refresh(&k),
                        _ => f.get(&k),
                    };
                    let stop = now_ns();
                    out.push(Event {
                        kind,
                        proc,
                        near,
                        key: k,
                        value: *r.as_ref().unwrap_or(&0),
                        start,
                        end: stop,
                        ok: r.is_ok(),
                    });
                    std::thread::sleep(Duration::from_millis(1));
                }
                out
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("reader thread"))
        .collect()
}

fn write_loop(c: &Child) -> Vec<Event> {
    let own = keys(ENV_KEYS);
    let all = keys(ENV_ALL_KEYS);
    let shared = c.shared();
    let f = counter_fn(&shared, c.truth.clone());
    let mut truth = c
        .truth
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let mut out = Vec::new();
    let event = |kind, key, value, start, end, ok| Event {
        kind,
        proc: c.proc,
        near: false,
        key,
        value,
        start,
        end,
        ok,
    };
    while now_ns() < c.end {
        let dice = rand::random_range(0..100u32);
        if dice < 4 {
            // Bump every key, then drop them all.
            let mut pipe = redis::pipe();
            pipe.atomic();
            for k in &all {
                pipe.cmd("INCR").arg(truth_key(*k));
            }
            let values: Vec<u64> = pipe.query(&mut truth).unwrap();
            let start = now_ns();
            let ok = f.invalidate_all().is_ok();
            let end = now_ns();
            for (k, v) in all.iter().zip(values) {
                out.push(event(Kind::InvalidateAll, *k, v, start, end, ok));
            }
        } else {
            let k = own[rand::random_range(0..own.len())];
            let v: u64 = redis::cmd("INCR")
                .arg(truth_key(k))
                .query(&mut truth)
                .unwrap();
            let start = now_ns();
            let (kind, ok) = if dice < 70 {
                (Kind::Invalidate, f.invalidate(&k).is_ok())
            } else {
                (Kind::Insert, f.insert(&k, v).is_ok())
            };
            out.push(event(kind, k, v, start, now_ns(), ok));
        }
        std::thread::sleep(Duration::from_millis(rand::random_range(5..20)));
    }
    out
}
