//! Issue 9, the race: `invalidate`, `invalidate_all` and `insert` while computations of the same
//! key are in flight, on a `MemoryStore`, explored by proptest.
//!
//! Every case runs on a current-thread Tokio runtime with a `ManualClock` and a seeded XFetch
//! RNG. The closure reads the key's "truth" (the version of the data the value is computed
//! from) when it starts, then waits on a gate that only the test opens, so a computation stays
//! in flight across any number of other operations. Callers (`get`, `get_with`, `refresh`) are
//! spawned tasks that run when the test yields; the generated operations decide when gates open,
//! when the clock moves and when tasks run. Nothing depends on wall-clock timing.
//!
//! The data changes the way an application changes it: the truth is bumped first, then the
//! cache is told (`invalidate`, `invalidate_all`, or `insert` of the new value). Once that call
//! has returned, the key's *floor* is the new truth.
//!
//! Invariants, checked after every step:
//! - `peek` never returns a value computed from a truth below the floor at the time of the peek
//!   (the store never holds a stale value after an invalidation returned);
//! - a `get`/`refresh` that started after the floor was raised never returns a value below it,
//!   except (in the default, documented mode) a value it received by *joining* a computation
//!   that was already in flight when it started. [`joining_a_computation_started_before_invalidate`]
//!   checks that exception strictly and is ignored: it fails on the current code (see there).

use herdless::{memoize_stampede, Contention, Error, ManualClock, Memoized, MemoryStore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

const KEYS: u8 = 2;
const TTL: Duration = Duration::from_millis(100);
const BETAS: [f64; 3] = [0.0, 1.0, f64::INFINITY];

/// A cached value: which key, which truth it was computed from, and where it came from.
#[derive(Clone, Debug, PartialEq)]
struct Val {
    key: u8,
    truth: u64,
    /// `Some(id)` for a computation, `None` for an inserted value.
    computation: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
enum Policy {
    /// Wait for the running computation (bounded; every gate opens at the end of a case).
    Wait,
    /// Do not wait: compute unlocked at once, beside the running computation.
    ComputeNow,
    FailFast,
}

#[derive(Clone, Debug)]
enum Op {
    Get(u8, Policy),
    Refresh(u8),
    Peek(u8),
    Invalidate(u8),
    InvalidateAll,
    Insert(u8),
    /// Opens the gate of the pending computation at this index (modulo their number).
    Release(usize),
    Advance(u64),
    /// Lets the spawned tasks run this many times.
    Settle(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let policy = prop_oneof![
        3 => Just(Policy::Wait),
        2 => Just(Policy::ComputeNow),
        1 => Just(Policy::FailFast),
    ];
    prop_oneof![
        6 => (0..KEYS, policy).prop_map(|(k, p)| Op::Get(k, p)),
        1 => (0..KEYS).prop_map(Op::Refresh),
        2 => (0..KEYS).prop_map(Op::Peek),
        3 => (0..KEYS).prop_map(Op::Invalidate),
        1 => Just(Op::InvalidateAll),
        2 => (0..KEYS).prop_map(Op::Insert),
        5 => any::<usize>().prop_map(Op::Release),
        2 => prop_oneof![1u64..20, 60u64..150].prop_map(Op::Advance),
        4 => (1u8..6).prop_map(Op::Settle),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    beta: f64,
    seed: u64,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..BETAS.len(),
        any::<u64>(),
        prop::collection::vec(op(), 10..60),
    )
        .prop_map(|(b, seed, ops)| Case {
            beta: BETAS[b],
            seed,
            ops,
        })
}

/// A computation waiting for its gate.
struct Pending {
    id: u64,
    open: oneshot::Sender<()>,
}

/// What a finished caller saw.
struct Outcome {
    what: &'static str,
    key: u8,
    /// The key's floor when the call started.
    floor: u64,
    /// Computations in flight when the call started (a value from one of them was joined).
    in_flight: HashSet<u64>,
    result: Result<Val, String>,
}

/// The data and what the test knows about it.
#[derive(Default)]
struct World {
    truth: Mutex<[u64; KEYS as usize]>,
    floor: Mutex<[u64; KEYS as usize]>,
    pending: Mutex<Vec<Pending>>,
    /// Ids of computations that started and have not returned.
    running: Mutex<HashSet<u64>>,
    next_id: AtomicU64,
    outcomes: Mutex<Vec<Outcome>>,
}

impl World {
    fn compute(self: &Arc<Self>, key: u8) -> impl std::future::Future<Output = Val> + Send {
        // Read the data at the start, like a database query would.
        let truth = self.truth.lock().unwrap()[key as usize];
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().push(Pending { id, open: tx });
        self.running.lock().unwrap().insert(id);
        let world = self.clone();
        async move {
            let _ = rx.await; // a dropped sender opens the gate too
            world.running.lock().unwrap().remove(&id);
            Val {
                key,
                truth,
                computation: Some(id),
            }
        }
    }

    /// Data changed: bump the truth first (the write), then tell the cache.
    fn write(&self, key: u8) -> u64 {
        let mut t = self.truth.lock().unwrap();
        t[key as usize] += 1;
        t[key as usize]
    }

    fn raise_floor(&self, key: u8, to: u64) {
        let mut f = self.floor.lock().unwrap();
        f[key as usize] = f[key as usize].max(to);
    }
}

type Fun = Memoized<u8, Val, Infallible, MemoryStore<u8, Val>>;

/// Spawns a caller. Its start (floor, computations in flight) is recorded when it first runs,
/// which is when its call starts.
fn spawn_call(
    world: &Arc<World>,
    f: &Fun,
    key: u8,
    what: &'static str,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) {
    let (world, f) = (world.clone(), f.clone());
    tasks.push(tokio::spawn(async move {
        let floor = world.floor.lock().unwrap()[key as usize];
        let in_flight = world.running.lock().unwrap().clone();
        let result = match what {
            "refresh" => f.refresh(&key).await,
            "get" => f.get(&key).await,
            "get_compute_now" => {
                f.get_with(&key, Contention::ComputeAfter(Duration::ZERO))
                    .await
            }
            "get_fail_fast" => f.get_with(&key, Contention::FailFast).await,
            _ => unreachable!(),
        };
        let result = match result {
            Ok(v) => Ok(v),
            Err(Error::Busy) if what == "get_fail_fast" => return,
            Err(e) => Err(format!("{e:?}")),
        };
        world.outcomes.lock().unwrap().push(Outcome {
            what,
            key,
            floor,
            in_flight,
            result,
        });
    }));
}

async fn settle(n: u8) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// Counters summed over all cases, to show that the races actually happened.
#[derive(Default, Debug)]
struct Totals {
    fenced_writes: AtomicU64,
    stale_joins: AtomicU64,
    invalidations: AtomicU64,
    calls_checked: AtomicU64,
}

/// Runs one case; `strict` also forbids the stale value of a joined computation.
fn run_case(case: &Case, strict: bool, totals: &Totals) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let world = Arc::new(World::default());
        let clock = ManualClock::new();
        let store = MemoryStore::<u8, Val>::new(64).unwrap();
        let w = world.clone();
        let f: Fun = memoize_stampede(&store, TTL)
            .name("race")
            .beta(case.beta)
            .clock(clock.clone())
            .rng_seed(case.seed)
            .contention(Contention::Wait(Duration::from_secs(20)))
            .build_infallible(move |k: u8| w.compute(k))
            .unwrap();
        let mut tasks = Vec::new();
        let mut ops = case.ops.clone();
        ops.push(Op::Settle(5)); // the last operation's callers run before the final checks

        for op in &ops {
            match *op {
                Op::Get(k, Policy::Wait) => spawn_call(&world, &f, k, "get", &mut tasks),
                Op::Get(k, Policy::ComputeNow) => {
                    spawn_call(&world, &f, k, "get_compute_now", &mut tasks)
                }
                Op::Get(k, Policy::FailFast) => {
                    spawn_call(&world, &f, k, "get_fail_fast", &mut tasks)
                }
                Op::Refresh(k) => spawn_call(&world, &f, k, "refresh", &mut tasks),
                Op::Peek(_) => {} // every step peeks every key below
                Op::Invalidate(k) => {
                    let t = world.write(k);
                    f.invalidate(&k).await.unwrap();
                    world.raise_floor(k, t);
                    totals.invalidations.fetch_add(1, Ordering::Relaxed);
                }
                Op::InvalidateAll => {
                    let ts: Vec<u64> = (0..KEYS).map(|k| world.write(k)).collect();
                    f.invalidate_all().await.unwrap();
                    for k in 0..KEYS {
                        world.raise_floor(k, ts[k as usize]);
                    }
                    totals.invalidations.fetch_add(1, Ordering::Relaxed);
                }
                Op::Insert(k) => {
                    let t = world.write(k);
                    let v = Val {
                        key: k,
                        truth: t,
                        computation: None,
                    };
                    f.insert(&k, v).await.unwrap();
                    world.raise_floor(k, t);
                    totals.invalidations.fetch_add(1, Ordering::Relaxed);
                }
                Op::Release(i) => {
                    let p = {
                        let mut pending = world.pending.lock().unwrap();
                        if pending.is_empty() {
                            None
                        } else {
                            let n = pending.len();
                            Some(pending.remove(i % n))
                        }
                    };
                    if let Some(p) = p {
                        let _ = p.open.send(());
                        let _ = p.id;
                    }
                }
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                Op::Settle(n) => settle(n).await,
            }
            check(&world, &f, strict, totals).await?;
        }

        // Open every gate until every caller has finished (bounded: a hang fails the case).
        let mut rounds = 0;
        while !tasks.iter().all(|t| t.is_finished()) {
            rounds += 1;
            prop_assert!(
                rounds < 10_000,
                "callers still running after every gate opened"
            );
            let pending: Vec<Pending> = world.pending.lock().unwrap().drain(..).collect();
            for p in pending {
                let _ = p.open.send(());
            }
            settle(3).await;
            check(&world, &f, strict, totals).await?;
        }
        for t in tasks {
            prop_assert!(t.await.is_ok(), "a caller panicked");
        }
        check(&world, &f, strict, totals).await?;
        totals
            .fenced_writes
            .fetch_add(f.stats().fenced_writes, Ordering::Relaxed);
        Ok(())
    })
}

/// Peeks every key and checks every caller that finished since the last step.
async fn check(
    world: &Arc<World>,
    f: &Fun,
    strict: bool,
    totals: &Totals,
) -> Result<(), TestCaseError> {
    for k in 0..KEYS {
        let floor = world.floor.lock().unwrap()[k as usize];
        if let Some(v) = f.peek(&k).await {
            prop_assert_eq!(v.key, k);
            prop_assert!(
                v.truth >= floor,
                "peek({}) returned {:?}, computed from truth {} although an invalidation or \
                 insert at truth {} had returned",
                k,
                v,
                v.truth,
                floor
            );
        }
    }
    let outcomes: Vec<Outcome> = world.outcomes.lock().unwrap().drain(..).collect();
    for o in outcomes {
        totals.calls_checked.fetch_add(1, Ordering::Relaxed);
        let v = match o.result {
            Ok(v) => v,
            Err(e) => return Err(TestCaseError::fail(format!("{} failed: {e}", o.what))),
        };
        prop_assert_eq!(v.key, o.key);
        if v.truth >= o.floor {
            continue;
        }
        let joined = v.computation.is_some_and(|id| o.in_flight.contains(&id));
        if joined {
            totals.stale_joins.fetch_add(1, Ordering::Relaxed);
        }
        prop_assert!(
            joined && !strict,
            "{}({}) started after an invalidation or insert at truth {} returned, and got {:?} \
             (truth {}){}",
            o.what,
            o.key,
            o.floor,
            v,
            v.truth,
            if joined {
                ": a computation already in flight when the call started"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Runs `f` on its own thread, failing if it does not finish within `bound`.
fn bounded<T: Send + 'static>(bound: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(bound) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("did not finish within {bound:?}"),
    }
}

fn run_all(cases: u32, strict: bool) -> Totals {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let totals = Totals::default();
    let result = runner.run(&case(), |c| run_case(&c, strict, &totals));
    if let Err(e) = result {
        panic!("{e}");
    }
    totals
}

/// The store never serves (or keeps) a value computed before an invalidation, `invalidate_all`
/// or `insert` that returned, however computations, callers, gates and the clock interleave.
#[test]
fn invalidate_insert_and_invalidate_all_race_computations() {
    let totals = bounded(Duration::from_secs(120), || run_all(128, false));
    eprintln!("{totals:?}");
    let t = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert!(t(&totals.calls_checked) > 1000, "{totals:?}");
    assert!(t(&totals.invalidations) > 500, "{totals:?}");
    assert!(
        t(&totals.fenced_writes) > 50,
        "the cases should make computations race invalidations: {totals:?}"
    );
}

/// Strict form: a caller that starts after `invalidate` returned must not get the result of a
/// computation that started before it, not even by joining that computation as a coalesced
/// waiter. Fails on the current code: the in-process flight of the key outlives the
/// invalidation, and a hard miss after it joins the flight and returns the stale value (the
/// store itself stays clean). Minimal reproduction: `get(k)` computes (gate closed, truth 0);
/// truth := 1; `invalidate(k)` returns; a second `get(k)` joins the flight; the gate opens; the
/// second `get` returns the value computed from truth 0.
#[test]
#[ignore = "fails on the current code: a get after invalidate joins the stale in-flight computation"]
fn joining_a_computation_started_before_invalidate() {
    let totals = bounded(Duration::from_secs(120), || run_all(128, true));
    eprintln!("{totals:?}");
}
