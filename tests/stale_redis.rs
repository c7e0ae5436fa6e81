//! `stale_if_error` on Redis (issue 22 item 1): the record outlives its logical expiry by the
//! grace, reads report the logical expiry, and a failing recomputation after expiry serves the
//! last value until the grace ends, then errors, in this store and in another store on the same
//! server (as another process would be).

mod support;

use herdless::memoize_stampede;
use herdless::store::RedisStore;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::common::acl;
use support::*;

const TTL: Duration = Duration::from_millis(300);
const GRACE: Duration = Duration::from_secs(4);

type Fn = herdless::BlockingMemoized<String, String, String, RedisStore>;

/// A function on `s` whose backend fails while `down` is set.
fn function(s: &RedisStore, down: Arc<AtomicBool>, runs: Arc<AtomicUsize>, tag: &str) -> Fn {
    let tag = tag.to_string();
    memoize_stampede(s, TTL)
        .name("page")
        .beta(0.0)
        .stale_if_error(GRACE)
        .build_blocking(move |k: &String| {
            runs.fetch_add(1, Ordering::SeqCst);
            if down.load(Ordering::SeqCst) {
                Err("backend down".to_string())
            } else {
                Ok(format!("{tag}-{k}"))
            }
        })
        .unwrap()
}

fn pttl(con: &mut redis::Connection, key: &[u8]) -> i64 {
    redis::cmd("PTTL").arg(key).query(con).unwrap()
}

#[test]
fn failing_backend_serves_the_redis_record_until_the_grace_ends() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let mut con = server.raw();
    let (a, b, c) = (
        RedisStore::new(&url).unwrap(),
        RedisStore::new(&url).unwrap(),
        RedisStore::new(&url).unwrap(),
    );
    let down = Arc::new(AtomicBool::new(false));
    let (runs_a, runs_b, runs_c) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let fa = function(&a, down.clone(), runs_a.clone(), "a");
    // B's backend is down from the start: whatever it returns came from Redis.
    let fb = function(&b, Arc::new(AtomicBool::new(true)), runs_b.clone(), "b");
    let fc = function(&c, Arc::new(AtomicBool::new(false)), runs_c.clone(), "c");
    let k = "home".to_string();
    let vk = a.value_key("page", &k);

    assert_eq!(fa.get(&k).unwrap(), "a-home");
    let written = Instant::now();
    // The key physically lives ttl + grace.
    let left = pttl(&mut con, &vk);
    assert!(
        left > TTL.as_millis() as i64,
        "the record must outlive its logical expiry (PTTL {left} ms)"
    );
    // Fresh: another store reads it as a hit.
    if written.elapsed() < TTL / 2 {
        assert_eq!(fb.get(&k).unwrap(), "a-home");
        assert_eq!(runs_b.load(Ordering::SeqCst), 0, "a fresh record is a hit");
    }

    // Past the logical expiry (the record is still in Redis): a failing backend serves it.
    down.store(true, Ordering::SeqCst);
    std::thread::sleep(TTL + Duration::from_millis(200));
    assert!(exists(&mut con, &vk), "still within the grace");
    assert_eq!(fa.get(&k).unwrap(), "a-home", "A: stale within the grace");
    assert!(runs_a.load(Ordering::SeqCst) >= 2, "A tried to recompute");
    assert_eq!(fa.stats().stale_served_on_error, 1);
    // Another store whose backend fails: the last value, from Redis.
    assert_eq!(fb.get(&k).unwrap(), "a-home", "B: stale from Redis");
    assert!(runs_b.load(Ordering::SeqCst) >= 1, "B tried to recompute");
    assert_eq!(fb.stats().stale_served_on_error, 1);
    // Reads report the logical expiry: a store whose backend works recomputes (no hit on a
    // record past its expiry, though it is still in Redis).
    assert_eq!(fc.get(&k).unwrap(), "c-home", "C: expired, recomputed");
    assert_eq!(runs_c.load(Ordering::SeqCst), 1);

    // Past the grace, with every backend down: errors. C's write restarted the record's life;
    // take it away and write A's value again, then let ttl + grace pass.
    let _: () = redis::cmd("DEL").arg(&vk).query(&mut con).unwrap();
    down.store(false, Ordering::SeqCst);
    let fa2 = function(&a, down.clone(), Arc::new(AtomicUsize::new(0)), "a2");
    assert_eq!(fa2.get(&k).unwrap(), "a2-home");
    down.store(true, Ordering::SeqCst);
    wait_until("the record to expire physically", BOUND, || {
        !exists(&mut con, &vk)
    });
    let fb2 = function(
        &b,
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicUsize::new(0)),
        "b2",
    );
    assert!(fb2.get(&k).is_err(), "B: past the grace, the error");
    assert!(fa2.get(&k).is_err(), "A: past the grace, the error");
}

/// In plain-command mode (no scripting) the record carries the same expiry and the key the
/// same extra life.
#[test]
fn plain_command_mode_keeps_the_grace() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    acl(
        &mut con,
        &["noscript", "on", ">pw", "~*", "&*", "+@all", "-@scripting"],
    );
    let url = format!("redis://noscript:pw@127.0.0.1:{}/", server.port());
    let s = RedisStore::new(&url).unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let f = function(&s, down.clone(), runs.clone(), "p");
    let k = "home".to_string();
    // The first calls may run before the store knows it cannot script; wait until it does.
    wait_until("plain-command mode", BOUND, || {
        let _ = f.get(&k);
        s.stats().scripts_refused.load(Ordering::SeqCst) == 1
    });
    let _: () = redis::cmd("DEL")
        .arg(s.value_key("page", &k))
        .query(&mut con)
        .unwrap();
    assert_eq!(f.get(&k).unwrap(), "p-home");
    let vk = s.value_key("page", &k);
    let left = pttl(&mut con, &vk);
    assert!(left > TTL.as_millis() as i64, "PTTL {left} ms");
    let before = runs.load(Ordering::SeqCst);
    assert_eq!(f.get(&k).unwrap(), "p-home", "a hit");
    assert_eq!(runs.load(Ordering::SeqCst), before);
    down.store(true, Ordering::SeqCst);
    std::thread::sleep(TTL + Duration::from_millis(200));
    assert!(exists(&mut con, &vk), "still within the grace");
    assert_eq!(f.get(&k).unwrap(), "p-home", "stale within the grace");
    assert!(f.stats().stale_served_on_error >= 1);
}
