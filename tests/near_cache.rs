//! The near cache on a real redis-server: hits from process memory, coherence through the
//! store's announcements, the staleness bound while the channel is down, a restart dropping the
//! tier, and one refresh per cycle across real processes.

mod support;

use herdless::store::{NearStore, RedisStore};
use herdless::{memoize_stampede, BlockingMemoized};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::common::{self, acl, near_tier, set_truth};
use support::*;

const TTL: Duration = Duration::from_secs(60);

fn near(url: &str, max_stale: Duration) -> NearStore<String, String> {
    let shared = RedisStore::builder(url).prefix("near").build().unwrap();
    near_tier(&shared, max_stale)
}

/// A function whose closure returns the Redis key `truth` (or "none") and counts its runs.
fn truth_fn<S: herdless::Store<String, String>>(
    s: &S,
    url: &str,
    runs: Arc<AtomicUsize>,
) -> BlockingMemoized<String, String, String, S> {
    common::truth_fn(s, url, TTL, move || {
        runs.fetch_add(1, Ordering::SeqCst);
    })
}

#[test]
fn near_hits_cost_no_redis_command() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let mut con = server.raw();
    set_truth(&mut con, "v1");
    let s = near(&url, Duration::from_secs(1));
    let runs = Arc::new(AtomicUsize::new(0));
    let f = truth_fn(&s, &url, runs.clone());
    let k = "home".to_string();
    assert_eq!(f.get(&k).unwrap(), "v1");
    // The write's own announcement drops the near copy; one read brings it back.
    wait_until("the value is near", Duration::from_secs(5), || {
        let _ = f.get(&k);
        !s.is_empty()
    });
    let before = commandstats(&mut con);
    for _ in 0..10_000 {
        assert_eq!(f.get(&k).unwrap(), "v1");
    }
    let d = commandstats_delta(&before, &commandstats(&mut con));
    let sent: u64 = d
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(sent, 0, "near hits sent commands to Redis: {d:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn invalidate_and_insert_reach_every_near_tier() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let mut con = server.raw();
    set_truth(&mut con, "v1");
    let (sa, sb) = (
        near(&url, Duration::from_secs(1)),
        near(&url, Duration::from_secs(1)),
    );
    let runs = Arc::new(AtomicUsize::new(0));
    let (a, b) = (
        truth_fn(&sa, &url, runs.clone()),
        truth_fn(&sb, &url, runs.clone()),
    );
    let k = "home".to_string();
    assert_eq!(a.get(&k).unwrap(), "v1");
    wait_until("B holds the value near", Duration::from_secs(5), || {
        let _ = b.get(&k);
        !sb.is_empty()
    });
    // A write elsewhere (the truth changes) and an invalidation in A: B recomputes.
    set_truth(&mut con, "v2");
    a.invalidate(&k).unwrap();
    wait_until("B drops its copy", Duration::from_secs(5), || sb.is_empty());
    assert_eq!(b.get(&k).unwrap(), "v2");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // An insert in A reaches B.
    wait_until("B holds v2 near", Duration::from_secs(5), || {
        let _ = b.get(&k);
        !sb.is_empty()
    });
    a.insert(&k, "inserted".to_string()).unwrap();
    wait_until("B sees the insert", Duration::from_secs(5), || {
        b.get(&k).unwrap() == "inserted"
    });
    // invalidate_all in B reaches A.
    wait_until("A holds the insert near", Duration::from_secs(5), || {
        a.get(&k).unwrap() == "inserted" && !sa.is_empty()
    });
    set_truth(&mut con, "v3");
    b.invalidate_all().unwrap();
    wait_until("A sees invalidate_all", Duration::from_secs(5), || {
        a.get(&k).unwrap() == "v3"
    });
    assert!(sa.stats().invalidations_received.load(Ordering::Relaxed) > 0);
}

/// The channel is down for B (its user's channel permission revoked, which also disconnects its
/// subscription) while A writes: B serves its near copy only up to `max_stale`, then re-reads.
#[test]
fn a_lost_channel_bounds_staleness() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let mut con = server.raw();
    acl(&mut con, &["nearb", "on", ">pw", "~*", "&*", "+@all"]);
    let b_url = format!("redis://nearb:pw@127.0.0.1:{}/", server.port());
    set_truth(&mut con, "v1");
    let max_stale = Duration::from_millis(300);
    let (sa, sb) = (near(&url, max_stale), near(&b_url, max_stale));
    let runs = Arc::new(AtomicUsize::new(0));
    let (a, b) = (
        truth_fn(&sa, &url, runs.clone()),
        truth_fn(&sb, &b_url, runs.clone()),
    );
    let k = "home".to_string();
    assert_eq!(a.get(&k).unwrap(), "v1");
    wait_until("B holds the value near", Duration::from_secs(5), || {
        let _ = b.get(&k);
        !sb.is_empty()
    });
    acl(&mut con, &["nearb", "resetchannels"]);
    wait_until("B's channel is down", Duration::from_secs(10), || {
        sb.shared().stats().pubsub_refused.load(Ordering::Relaxed) == 1
    });
    a.insert(&k, "v2".to_string()).unwrap();
    let written = Instant::now();
    let mut stale_after_bound = 0;
    let deadline = written + Duration::from_secs(5);
    loop {
        let v = b.get(&k).unwrap();
        if v == "v2" {
            break;
        }
        // A stale read is allowed within max_stale of B's last read from Redis, which was
        // before the write; reads well past the bound must not be stale.
        if written.elapsed() > max_stale + Duration::from_millis(200) {
            stale_after_bound += 1;
        }
        assert!(
            Instant::now() < deadline,
            "B never re-validated its near copy"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(stale_after_bound, 0, "stale near hits past the bound");
    assert!(sb.stats().stale_revalidations.load(Ordering::Relaxed) > 0);
}

/// A Redis restart loses every message published meanwhile (and the data): the near tier is
/// dropped when the subscription comes back, so B does not keep serving its old copy.
#[test]
fn a_redis_restart_drops_the_near_tier() {
    let Some(mut server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let mut con = server.raw();
    set_truth(&mut con, "v1");
    let s = near(&url, Duration::from_secs(30));
    let runs = Arc::new(AtomicUsize::new(0));
    let f = truth_fn(&s, &url, runs.clone());
    let k = "home".to_string();
    assert_eq!(f.get(&k).unwrap(), "v1");
    wait_until("the value is near", Duration::from_secs(5), || {
        let _ = f.get(&k);
        !s.is_empty()
    });
    server.restart();
    let mut con = server.raw();
    set_truth(&mut con, "v2");
    wait_until(
        "the tier is dropped after the restart",
        Duration::from_secs(10),
        || s.stats().resyncs.load(Ordering::Relaxed) >= 1 && s.is_empty(),
    );
    wait_until("the new value is served", Duration::from_secs(10), || {
        f.get(&k).map(|v| v == "v2").unwrap_or(false)
    });
}

/// One refresh per cycle across 4 real processes, each with a near tier and automatic β: the
/// closure counts its runs with INCR in Redis, and its concurrency with INCR/DECR.
#[test]
fn one_refresh_per_cycle_across_processes() {
    if let Some(env) = ChildEnv::get() {
        if env.role != "near-worker" {
            return;
        }
        let url = env.url();
        let s = near(&url, Duration::from_secs(1));
        let client = redis::Client::open(url.as_str()).unwrap();
        let f = memoize_stampede(&s, Duration::from_millis(1000))
            .name("cycle")
            .beta_auto(herdless::LeadTarget::default())
            .build_blocking(move |_k: &String| {
                let mut con = client.get_connection().map_err(|e| e.to_string())?;
                let running: i64 = redis::cmd("INCR").arg("running").query(&mut con).unwrap();
                let _: () = redis::cmd("EVAL")
                    .arg("if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then redis.call('SET', KEYS[1], ARGV[1]) end")
                    .arg(1)
                    .arg("peak")
                    .arg(running)
                    .query(&mut con)
                    .unwrap();
                let _: i64 = redis::cmd("INCR").arg("runs").query(&mut con).unwrap();
                std::thread::sleep(Duration::from_millis(100));
                let _: i64 = redis::cmd("DECR").arg("running").query(&mut con).unwrap();
                Ok::<_, String>("page".to_string())
            })
            .unwrap();
        let start: u64 = env.var("NEAR_START_MS").parse().unwrap();
        let until = start + 4500;
        let now_ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        while now_ms() < start {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut calls = 0u64;
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let f = f.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while now_ms() < until {
                        f.get(&"home".to_string()).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for t in threads {
            calls += t.join().unwrap();
        }
        report("calls", calls);
        return;
    }
    let Some(server) = redis_or_skip() else {
        return;
    };
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1500;
    let mut children: Vec<ChildProc> = (0..4)
        .map(|_| {
            ChildProc::spawn(
                "one_refresh_per_cycle_across_processes",
                server.port(),
                "near-worker",
                &[("NEAR_START_MS", start.to_string())],
            )
        })
        .collect();
    let mut calls = 0u64;
    for c in &mut children {
        calls += c
            .wait_report("calls", Duration::from_secs(60))
            .trim()
            .parse::<u64>()
            .unwrap();
        c.expect_success(Duration::from_secs(30));
    }
    let mut con = server.raw();
    let runs: u64 = redis::cmd("GET").arg("runs").query(&mut con).unwrap();
    let peak: u64 = redis::cmd("GET").arg("peak").query(&mut con).unwrap();
    eprintln!("4 processes × 2 threads, 4.5 s, TTL 1 s: calls {calls}, runs {runs}, peak {peak}");
    assert_eq!(peak, 1, "one computation at a time across the fleet");
    // One cold computation plus about one refresh per 1 s cycle (4.5 s): at most 7 allows for
    // a cycle boundary and a slow start; an uncoordinated fleet of 4 would run several per cycle.
    assert!(runs <= 7, "runs {runs}: more than one refresh per cycle");
    assert!(calls > 10_000, "the fleet served few calls ({calls})");
}

/// Automatic β aims at the fleet's rate: every store counts the processes sharing its prefix
/// (a heartbeat scored with the server's clock), and a silent one drops out.
#[test]
fn the_fleet_size_counts_the_processes_sharing_a_prefix() {
    use herdless::store::Store;
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let stores: Vec<RedisStore> = (0..3)
        .map(|_| RedisStore::builder(&url).prefix("fleet").build().unwrap())
        .collect();
    let other = RedisStore::builder(&url)
        .prefix("elsewhere")
        .build()
        .unwrap();
    let size = |s: &RedisStore| Store::<String, String>::fleet_size(s);
    assert_eq!(size(&stores[0]), 1.0, "1 until the first count");
    wait_until("every store counts 3", Duration::from_secs(15), || {
        let sizes: Vec<f64> = stores.iter().map(size).collect(); // asks every store
        sizes.iter().all(|&n| n == 3.0)
    });
    wait_until(
        "another prefix is another fleet",
        Duration::from_secs(15),
        || size(&other) == 1.0,
    );
}

/// An invalidation in one process reaches the near tier of every other process: three child
/// processes hold the value near, this process changes the truth and invalidates, and each child
/// reports the new value (counted with INCR: one recomputation per child at most, bounded wait).
#[test]
fn invalidation_reaches_every_process() {
    if let Some(env) = ChildEnv::get() {
        if env.role != "near-reader" {
            return;
        }
        let url = env.url();
        let s = near(&url, Duration::from_secs(30));
        let runs = Arc::new(AtomicUsize::new(0));
        let f = truth_fn(&s, &url, runs);
        let k = "home".to_string();
        wait_until("the value is near", Duration::from_secs(10), || {
            f.get(&k).unwrap() == "v1" && !s.is_empty()
        });
        report("near", "v1");
        wait_until("the invalidation arrives", Duration::from_secs(10), || {
            f.get(&k).unwrap() == "v2"
        });
        report("saw", "v2");
        return;
    }
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let mut con = server.raw();
    set_truth(&mut con, "v1");
    let mut children: Vec<ChildProc> = (0..3)
        .map(|_| {
            ChildProc::spawn(
                "invalidation_reaches_every_process",
                server.port(),
                "near-reader",
                &[],
            )
        })
        .collect();
    for c in &mut children {
        assert_eq!(c.wait_report("near", Duration::from_secs(60)).trim(), "v1");
    }
    let s = near(&url, Duration::from_secs(30));
    let f = truth_fn(&s, &url, Arc::new(AtomicUsize::new(0)));
    set_truth(&mut con, "v2");
    f.invalidate(&"home".to_string()).unwrap();
    for c in &mut children {
        assert_eq!(c.wait_report("saw", Duration::from_secs(30)).trim(), "v2");
        c.expect_success(Duration::from_secs(30));
    }
}

/// Glob characters in a prefix match only themselves (issue 8, item 3): a near tier under the
/// prefix `a*` does not hear the announcements of a store under `ab` for the same function and
/// key. Ordering makes it exact: one subscription delivers messages in the order the server
/// published them, so once the marker published after `ab`'s invalidation has arrived, so
/// would have `ab`'s, had the pattern matched it.
#[test]
fn a_glob_prefix_hears_only_its_own_channels() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let mut con = server.raw();
    set_truth(&mut con, "v1");
    let on = |prefix: &str| RedisStore::builder(&url).prefix(prefix).build().unwrap();
    let shared = on("a*");
    let near = NearStore::builder(&shared)
        .capacity(100)
        .max_stale(Duration::from_secs(30))
        .build::<String, String>()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let reader = truth_fn(&near, &url, runs.clone());
    let k = "home".to_string();
    wait_until("the value is near", Duration::from_secs(10), || {
        reader.get(&k).unwrap() == "v1" && near.len() == 1
    });
    let received = || near.stats().invalidations_received.load(Ordering::Relaxed);
    let before = received();
    // Another service, prefix `ab`: the same function name and key.
    let other_store = on("ab");
    let other = truth_fn(&other_store, &url, Arc::new(AtomicUsize::new(0)));
    other.invalidate(&k).unwrap();
    // The marker: an invalidation of another key under `a*` itself.
    let own_store = on("a*");
    let own = truth_fn(&own_store, &url, Arc::new(AtomicUsize::new(0)));
    own.invalidate(&"marker".to_string()).unwrap();
    wait_until("the marker arrives", Duration::from_secs(10), || {
        received() > before
    });
    assert_eq!(received(), before + 1, "only the marker was heard");
    assert_eq!(near.len(), 1, "ab's invalidation did not drop a*'s entry");
    assert_eq!(reader.get(&k).unwrap(), "v1");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
