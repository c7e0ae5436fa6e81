//! The single-flight core under shuttle's randomized schedulers (random and PCT), which explore
//! thread interleavings a real machine rarely produces.
//!
//! Run with `RUSTFLAGS="--cfg shuttle" cargo test --lib shuttle_checks` (CI does, in its own
//! target dir). Two environment variables steer it:
//! - `HERDLESS_SHUTTLE_ITERATIONS`: schedules per check (default 2000);
//! - `HERDLESS_SHUTTLE_SEED`: run the random scheduler from this seed (to reproduce a run);
//! - `HERDLESS_SHUTTLE_REPLAY`: replay the one schedule a failing check printed.

use crate::flight::{Begin, FlightMap, Joined, RefreshSlots, Waited};
use crate::wait::{block_on, WaitMode};
use shuttle::sync::atomic::{AtomicUsize, Ordering};
use shuttle::thread;
use std::sync::Arc;

fn iterations() -> usize {
    std::env::var("HERDLESS_SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

/// Runs `f` under the random scheduler and PCT (depth 3), or replays / reseeds on request.
fn check(f: impl Fn() + Send + Sync + 'static) {
    let f = Arc::new(f);
    if let Ok(schedule) = std::env::var("HERDLESS_SHUTTLE_REPLAY") {
        let f = f.clone();
        shuttle::replay(move || f(), &schedule);
        return;
    }
    if let Some(seed) = std::env::var("HERDLESS_SHUTTLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let scheduler = shuttle::scheduler::RandomScheduler::new_from_seed(seed, iterations());
        let g = f.clone();
        shuttle::Runner::new(scheduler, shuttle::Config::new()).run(move || g());
        return;
    }
    let g = f.clone();
    shuttle::check_random(move || g(), iterations());
    shuttle::check_pct(move || f(), iterations(), 3);
}

/// Joins `key` until this thread either leads (and then `lead` decides: Some(v) finishes with
/// v, None abandons) or follows a flight to its end.
fn call(
    map: &Arc<FlightMap<u32, u64>>,
    leaders: &AtomicUsize,
    lead: impl Fn() -> Option<u64>,
) -> Option<u64> {
    loop {
        match map.join(&7) {
            Joined::Leader(l) => {
                let now = leaders.fetch_add(1, Ordering::SeqCst) + 1;
                assert_eq!(now, 1, "two leaders of one key at once");
                let out = lead();
                leaders.fetch_sub(1, Ordering::SeqCst);
                match out {
                    Some(v) => {
                        l.finish(v);
                        return Some(v);
                    }
                    None => {
                        drop(l); // abandoned: a panic or a cancelled future
                        return None;
                    }
                }
            }
            Joined::Follower(f) => match block_on(f.wait(WaitMode::Blocking, None)) {
                Waited::Done(v) => return Some(v),
                Waited::Abandoned => continue, // take over
                Waited::TimedOut => unreachable!("no deadline"),
            },
        }
    }
}

fn scenario(abandoning: usize, finishing: usize) {
    let map = Arc::new(FlightMap::<u32, u64>::new());
    let leaders = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..abandoning + finishing {
        let (map, leaders) = (map.clone(), leaders.clone());
        let abandons = i < abandoning;
        handles.push(thread::spawn(move || {
            let got = call(&map, &leaders, || (!abandons).then_some(42));
            (abandons, got)
        }));
    }
    for h in handles {
        let (abandons, got) = h.join().unwrap();
        if !abandons {
            // A caller that would compute always ends with the value, whoever computed it.
            assert_eq!(got, Some(42));
        }
    }
    assert_eq!(map.len(), 0, "no flight is left behind");
}

#[test]
fn shuttle_checks_one_leader_everyone_gets_the_value() {
    check(|| scenario(0, 3));
}

#[test]
fn shuttle_checks_abandoned_flights_hand_over() {
    check(|| scenario(1, 2));
    check(|| scenario(2, 2));
}

#[test]
fn shuttle_checks_refresh_slot_is_exclusive() {
    check(|| {
        let slots = Arc::new(RefreshSlots::<u32>::new());
        let running = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (slots, running) = (slots.clone(), running.clone());
                thread::spawn(move || {
                    if slots.try_begin(&1, 0) == Begin::Started {
                        assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0);
                        running.fetch_sub(1, Ordering::SeqCst);
                        slots.clear(&1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(
            slots.try_begin(&1, 0) == Begin::Started,
            "a cleared slot can be claimed again"
        );
    });
}

/// The refresh-slot hand-over: a background refresh holds the key's slot *and* its flight;
/// hard misses arriving meanwhile follow that flight. When the refresh fails it abandons the
/// flight (its error is nobody's answer) and backs off; the hard misses then take over, exactly
/// one computes at a time, every one ends with a value and no flight is left behind.
#[test]
fn shuttle_checks_failed_refresh_hands_over_to_hard_misses() {
    check(|| {
        let map = Arc::new(FlightMap::<u32, u64>::new());
        let slots = Arc::new(RefreshSlots::<u32>::new());
        let leaders = Arc::new(AtomicUsize::new(0));
        let refresher = {
            let (map, slots, leaders) = (map.clone(), slots.clone(), leaders.clone());
            thread::spawn(move || {
                if slots.try_begin(&7, 0) != Begin::Started {
                    return;
                }
                match map.join(&7) {
                    Joined::Leader(l) => {
                        assert_eq!(leaders.fetch_add(1, Ordering::SeqCst), 0);
                        leaders.fetch_sub(1, Ordering::SeqCst);
                        drop(l); // the refresh failed
                        slots.back_off(&7, 0, 100);
                    }
                    Joined::Follower(_) => slots.clear(&7), // a hard miss is computing
                }
            })
        };
        let misses: Vec<_> = (0..2)
            .map(|_| {
                let (map, slots, leaders) = (map.clone(), slots.clone(), leaders.clone());
                thread::spawn(move || {
                    let got = call(&map, &leaders, || Some(42));
                    slots.clear_backoff(&7);
                    got
                })
            })
            .collect();
        refresher.join().unwrap();
        for m in misses {
            assert_eq!(m.join().unwrap(), Some(42));
        }
        assert_eq!(map.len(), 0, "no flight is left behind");
    });
}

/// A leader whose own contention policy gives up hands the flight back: the callers waiting
/// behind it join again, one of them leads, and all end with the value; a handed-back flight
/// is told apart from an abandoned one, and no flight is left behind.
#[test]
fn shuttle_checks_handed_back_flights_are_joined_again() {
    check(|| {
        let map = Arc::new(FlightMap::<u32, u64>::new());
        let impatient = {
            let map = map.clone();
            thread::spawn(move || match map.join(&7) {
                Joined::Leader(l) => l.hand_back(),
                Joined::Follower(_) => {} // fail-fast: gives up at once
            })
        };
        let patient: Vec<_> = (0..2)
            .map(|_| {
                let map = map.clone();
                thread::spawn(move || loop {
                    match map.join(&7) {
                        Joined::Leader(l) => {
                            l.finish(42);
                            return 42;
                        }
                        Joined::Follower(f) => match block_on(f.wait(WaitMode::Blocking, None)) {
                            Waited::Done(v) => return v,
                            Waited::Abandoned => assert!(f.handed_back(), "nobody abandoned"),
                            Waited::TimedOut => unreachable!("no deadline"),
                        },
                    }
                })
            })
            .collect();
        for p in patient {
            assert_eq!(p.join().unwrap(), 42);
        }
        impatient.join().unwrap();
        assert_eq!(map.len(), 0, "no flight is left behind");
    });
}

/// The per-thread tier's protocol (`hot`): a writer writes the store, then bumps the key's
/// version, then says the write returned; readers serve their own tier entry while its version
/// is unchanged, else read the store and admit it (version first, then the store). A read that
/// starts after a write returned never gets an older value, whatever the interleaving.
#[test]
fn shuttle_checks_a_tier_never_serves_a_value_older_than_a_returned_write() {
    use crate::entry::Entry;
    use crate::hot::{HotTier, Versions};
    use shuttle::sync::atomic::AtomicU64;
    use shuttle::sync::Mutex;
    check(|| {
        let versions = Arc::new(Versions::default());
        let store = Arc::new(Mutex::new(0u64));
        let tier = Arc::new(HotTier::<u32, u64>::new());
        let done = Arc::new(AtomicU64::new(0));
        let writer = {
            let (versions, store, done) = (versions.clone(), store.clone(), done.clone());
            thread::spawn(move || {
                for gen in 1..=2 {
                    *store.lock().unwrap() = gen;
                    versions.bump(&7u32);
                    done.store(gen, Ordering::SeqCst);
                }
            })
        };
        let readers: Vec<_> = (0..2)
            .map(|index| {
                let (versions, store, tier, done) =
                    (versions.clone(), store.clone(), tier.clone(), done.clone());
                thread::spawn(move || {
                    let read = || {
                        Some(Entry {
                            value: *store.lock().unwrap(),
                            delta_us: 0,
                            expires_at: u64::MAX,
                            write_id: 0,
                        })
                    };
                    for _ in 0..3 {
                        let floor = done.load(Ordering::SeqCst);
                        // SAFETY: each reader thread owns its own index.
                        let hit = unsafe { tier.with(index, |e| e.current().then_some(e.value)) };
                        let value = match hit {
                            Some(v) => v,
                            None => {
                                let v = read().map_or(0, |e| e.value);
                                // SAFETY: as above.
                                unsafe { tier.admit(index, &versions, &7u32, read) };
                                v
                            }
                        };
                        assert!(
                            value >= floor,
                            "served {value} after write {floor} returned"
                        );
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    });
}
