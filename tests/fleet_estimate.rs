//! Issue 21 item 5: automatic β multiplies the local rate by every store on the prefix. With one
//! process serving a hot key and nine idle stores on the same prefix, that overstates the key's
//! rate tenfold; without a bound, β comes out too small and refreshes land after expiry (hard
//! misses every few cycles). The guard on the local rate keeps refreshes early.

mod support;

use herdless::memoize_stampede;
use herdless::store::{RedisStore, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::redis_or_skip;

const TTL: Duration = Duration::from_secs(1);
const BODY: Duration = Duration::from_millis(200);

#[test]
fn nine_idle_stores_on_the_prefix_do_not_make_refreshes_late() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let store = |_: usize| {
        RedisStore::builder(&url)
            .prefix("fleet-est")
            .build()
            .unwrap()
    };
    // Nine idle stores: each announces itself in the fleet set (what automatic β starts on a
    // shared store's first near-expiry decision) and then serves nothing.
    let idle: Vec<_> = (0..9)
        .map(|i| {
            let s = store(i);
            Store::<u32, u32>::fleet_size(&s);
            s
        })
        .collect();
    let serving = store(99);
    let page = memoize_stampede(&serving, TTL)
        .name("page")
        .build_blocking_infallible(|k: &u32| {
            std::thread::sleep(BODY);
            *k
        })
        .unwrap();
    // Wait until the serving store counts the idle ones (its fleet estimate is 10).
    let deadline = Instant::now() + Duration::from_secs(20);
    while Store::<u32, u32>::fleet_size(&serving) < 10.0 {
        assert!(
            Instant::now() < deadline,
            "the fleet never reached 10 stores"
        );
        page.get(&1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    // Warm up the rate meter for two cycles, then count hard misses over eight.
    let stop = Arc::new(AtomicBool::new(false));
    let run = |secs: u64| {
        let end = Instant::now() + Duration::from_secs(secs);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (page, stop) = (page.clone(), stop.clone());
                std::thread::spawn(move || {
                    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                        page.get(&1).unwrap();
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    };
    run(2);
    let before = page.stats();
    run(8);
    let after = page.stats();
    let hard = after.hard_misses - before.hard_misses;
    let refreshed = after.early_refreshes_completed - before.early_refreshes_completed;
    eprintln!("fleet estimate: 8 s, {hard} hard misses, {refreshed} background refreshes stored");
    // Eight expiries: each should be met by a background refresh before it. A late cycle costs
    // one or two hard misses (two calling threads); allow two such cycles (the guard bounds a
    // late refresh at 5 % of cycles; three or more of eight: under 1 %). Before the guard: 12
    // hard misses in each of two runs; with it, 0 to 2 in four.
    assert!(
        hard <= 4,
        "{hard} hard misses in 8 cycles ({refreshed} refreshes stored): refreshes landed late"
    );
    assert!(
        refreshed >= 6,
        "only {refreshed} background refreshes in 8 cycles"
    );
    drop(idle);
}
