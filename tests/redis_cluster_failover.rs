//! After a failover, single-flight comes back with the promotion, not with the breaker's
//! cooldown (issue 21, item 4), on a private 3 + 3 cluster (`tests/support/cluster.rs`).
//!
//! Three stores (standing for three processes) × two threads call one hot key while its master
//! is SIGKILLed. Until the replica is promoted every store computes locally (its slot range's
//! breaker opens); once it is promoted the computations must fall back to about one per TTL,
//! however long the breakers' cooldown. The cooldown here is 60 s, so a store that waited it
//! out would keep computing locally for the whole check. Every wait is bounded.
#![cfg(feature = "cluster")]

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use cluster::{cluster_or_skip, RedisCluster};
use herdless::memoize_stampede;
use herdless::store::RedisStore;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{bounded, wait_until, BOUND};

fn store(c: &RedisCluster) -> RedisStore {
    let seeds = c.seeds();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    RedisStore::cluster_builder(&seeds)
        .prefix("failover-tail")
        .op_timeout(Duration::from_millis(250))
        .circuit_breaker(3, Duration::from_secs(60))
        .build()
        .unwrap()
}

#[test]
fn single_flight_returns_with_the_promotion_not_the_cooldown() {
    let Some(mut c) = cluster_or_skip() else {
        return;
    };
    const STORES: usize = 3;
    const THREADS: usize = 2;
    let ttl = Duration::from_secs(1);
    let compute = Duration::from_millis(100);
    let runs = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stores: Vec<RedisStore> = (0..STORES).map(|_| store(&c)).collect();
    let fns: Vec<_> = stores
        .iter()
        .map(|s| {
            let runs = runs.clone();
            Arc::new(
                memoize_stampede(s, ttl)
                    .name("hot")
                    .build_blocking_infallible(move |k: &String| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(compute);
                        format!("v-{k}")
                    })
                    .unwrap(),
            )
        })
        .collect();
    let hot = "hot".to_string();
    // Every store answers (and has its connection) before the load starts.
    for f in &fns {
        wait_until("the cluster store to answer", BOUND, || f.get(&hot).is_ok());
    }
    let vk = stores[0].value_key("hot", &hot);
    let slot = c.keyslot(&vk);
    let victim = c.master_of_slot(slot);
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    for f in &fns {
        for _ in 0..THREADS {
            let (f, stop, errors, hot) = (f.clone(), stop.clone(), errors.clone(), hot.clone());
            hs.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if f.get(&hot).is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    c.kill(victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if c.try_master_of_slot(slot).is_some_and(|p| p != victim) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replica was promoted within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Settle (generous: the stores find the promoted master within a fraction of this), then
    // count the computations over a few TTL cycles.
    std::thread::sleep(Duration::from_secs(2));
    const CYCLES: u32 = 4;
    let before = runs.load(Ordering::SeqCst);
    std::thread::sleep(ttl * CYCLES);
    let tail = runs.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    bounded("the load threads", BOUND, move || {
        hs.into_iter().for_each(|h| h.join().unwrap())
    });
    let opens: u64 = stores
        .iter()
        .map(|s| s.stats().circuit_opens.load(Ordering::Relaxed))
        .sum();
    println!(
        "HERDLESS failover tail: {tail} computations in {CYCLES} TTL cycles from 2 s after the \
         promotion; circuit opens {opens}"
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no caller gets an error");
    assert!(
        opens > 0,
        "the hot range's breaker never opened: the failover was not exercised"
    );
    // About one per cycle; at most two per cycle allowed. Local computations (each store on its
    // own, one after another) would make about 3 stores × 10 per second.
    assert!(
        tail <= 2 * u64::from(CYCLES),
        "{tail} computations in {CYCLES} TTL cycles after the promotion: the stores still \
         compute locally"
    );
}
