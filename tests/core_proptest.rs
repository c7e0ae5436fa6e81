//! Model-based property test of the engine: random interleavings of calls, concurrent bursts of
//! callers, clock advances, failures and keys.
//!
//! Everything runs on a current-thread Tokio runtime with a `ManualClock` and a seeded XFetch
//! RNG, so each case is deterministic: background refreshes are spawned tasks that run when the
//! test yields (`Settle`, a burst, or a computation that yields half-way). The closure tags every
//! value with its key, a generation number and the clock readings at its start and end, and
//! counts the computations of each key that are running at once.
//!
//! Properties checked after every step:
//! - a returned value is one the closure produced, for the key that was asked for;
//! - it is never past its expiry (`computed_at + ttl > now` when the call returns);
//! - an error is the closure's error for that key, and only a caller whose computation (or the
//!   one it waited for) failed sees it; a call made while the key does not fail succeeds;
//! - no two computations of one key run at once (strictly: not even a hard miss and a refresh);
//! - every stored record holds `delta` (µs, rounded up) and `expiry` consistent with the value.

use herdless::{memoize_stampede, Clock, Error, ManualClock, Memoized, MemoryStore, Store};
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEYS: u8 = 3;
const TTL_US: u64 = 1000;
const TTL_NS: u64 = TTL_US * 1000;
const BETAS: [f64; 5] = [0.0, 0.5, 1.0, 4.0, f64::INFINITY];
const DELTAS_US: [u64; 4] = [0, 10, 50, 100];

tokio::task_local! {
    /// Set around every caller's `get`; absent in the engine's background refresh tasks.
    static CALLER: ();
}

#[derive(Clone, Debug, PartialEq)]
struct Val {
    key: u8,
    gen: u64,
    started: u64,
    computed_at: u64,
}

#[derive(Clone, Debug, PartialEq)]
struct Fail {
    key: u8,
    gen: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Call(u8),
    Advance(u64),
    SetFail(u8, bool),
    Settle,
    Burst(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Params {
    beta: f64,
    deltas_us: [u64; KEYS as usize],
    yield_inside: bool,
    seed: u64,
}

fn params() -> impl Strategy<Value = Params> {
    (
        0..BETAS.len(),
        prop::array::uniform3(0..DELTAS_US.len()),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(b, d, y, seed)| Params {
            beta: BETAS[b],
            deltas_us: d.map(|i| DELTAS_US[i]),
            yield_inside: y,
            seed,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..KEYS).prop_map(Op::Call),
        4 => prop_oneof![1u64..50, 50u64..400, 400u64..1500].prop_map(Op::Advance),
        1 => (0..KEYS, prop::bool::weighted(0.4)).prop_map(|(k, f)| Op::SetFail(k, f)),
        1 => Just(Op::Settle),
        2 => prop::collection::vec(0..KEYS, 2..=6).prop_map(Op::Burst),
    ]
}

/// What the closure sees and records.
struct Model {
    clock: ManualClock,
    params: Params,
    failing: [AtomicBool; KEYS as usize],
    next_gen: AtomicU64,
    /// running[key][role]: role 0 = a caller's hard miss, 1 = a background refresh.
    running: Mutex<[[u64; 2]; KEYS as usize]>,
    max_total: Mutex<[u64; KEYS as usize]>,
    max_role: Mutex<[[u64; 2]; KEYS as usize]>,
    produced: Mutex<HashMap<u64, Result<Val, Fail>>>,
}

impl Model {
    fn new(params: Params) -> Arc<Self> {
        Arc::new(Model {
            clock: ManualClock::new(),
            params,
            failing: Default::default(),
            next_gen: AtomicU64::new(0),
            running: Mutex::new([[0; 2]; KEYS as usize]),
            max_total: Mutex::new([0; KEYS as usize]),
            max_role: Mutex::new([[0; 2]; KEYS as usize]),
            produced: Mutex::new(HashMap::new()),
        })
    }

    async fn compute(self: Arc<Self>, key: u8) -> Result<Val, Fail> {
        let k = key as usize;
        let role = if CALLER.try_with(|_| ()).is_ok() {
            0
        } else {
            1
        };
        let started = self.clock.now();
        let gen = self.next_gen.fetch_add(1, Ordering::SeqCst);
        let fail = self.failing[k].load(Ordering::SeqCst);
        {
            let mut r = self.running.lock().unwrap();
            r[k][role] += 1;
            let total = r[k][0] + r[k][1];
            let mut mt = self.max_total.lock().unwrap();
            mt[k] = mt[k].max(total);
            let mut mr = self.max_role.lock().unwrap();
            mr[k][role] = mr[k][role].max(r[k][role]);
        }
        if self.params.yield_inside {
            tokio::task::yield_now().await;
        }
        self.clock
            .advance(Duration::from_micros(self.params.deltas_us[k]));
        if self.params.yield_inside {
            tokio::task::yield_now().await;
        }
        self.running.lock().unwrap()[k][role] -= 1;
        // No await after this reading: the engine reads its end time in the same poll.
        let computed_at = self.clock.now();
        let out = if fail {
            Err(Fail { key, gen })
        } else {
            Ok(Val {
                key,
                gen,
                started,
                computed_at,
            })
        };
        self.produced.lock().unwrap().insert(gen, out.clone());
        out
    }
}

type F = Memoized<u8, Val, Fail, MemoryStore<u8, Val>>;

/// What a finished case exercised, to show the model is not vacuous.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    early_refreshes: u64,
    coalesced: u64,
    errors: u64,
    hard_misses: u64,
    hits: u64,
}

struct Checker<'a> {
    model: &'a Model,
    violations: Vec<String>,
}

impl Checker<'_> {
    fn check_result(&mut self, what: &str, key: u8, r: &Result<Val, Error<Fail>>, now: u64) {
        let produced = self.model.produced.lock().unwrap();
        match r {
            Ok(v) => {
                if v.key != key {
                    self.violations.push(format!(
                        "{what}: asked {key}, got a value of {}: {v:?}",
                        v.key
                    ));
                }
                if produced.get(&v.gen) != Some(&Ok(v.clone())) {
                    self.violations
                        .push(format!("{what}: {v:?} was never produced by the closure"));
                }
                if v.computed_at + TTL_NS <= now {
                    self.violations.push(format!(
                        "{what}: key {key} returned {v:?} past its expiry {} at now {now}",
                        v.computed_at + TTL_NS
                    ));
                }
            }
            Err(Error::Compute(e)) => {
                if e.key != key {
                    self.violations
                        .push(format!("{what}: asked {key}, got the error of {}", e.key));
                }
                if produced.get(&e.gen) != Some(&Err((**e).clone())) {
                    self.violations
                        .push(format!("{what}: error {e:?} was never produced"));
                }
            }
            Err(other) => self
                .violations
                .push(format!("{what}: unexpected error {other:?}")),
        }
    }

    fn check_store(&mut self, store: &MemoryStore<u8, Val>, f: &F) {
        let ns = Store::<u8, Val>::namespace(store, f.name());
        for key in 0..KEYS {
            if let herdless::store::Lookup::Found(e) = Store::get_now(store, &ns, &key) {
                let v = &e.value;
                let want_delta = (v.computed_at - v.started).div_ceil(1000);
                if v.key != key
                    || e.expires_at != v.computed_at + TTL_NS
                    || e.delta_us != want_delta
                {
                    self.violations.push(format!(
                        "stored record of key {key} inconsistent: {e:?} (want delta {want_delta} µs, expiry {})",
                        v.computed_at + TTL_NS
                    ));
                }
            }
        }
    }

    fn check_overlap(&mut self, strict: bool) {
        let mt = *self.model.max_total.lock().unwrap();
        let mr = *self.model.max_role.lock().unwrap();
        for k in 0..KEYS as usize {
            if mr[k][0] > 1 {
                self.violations.push(format!(
                    "key {k}: {} hard-miss computations at once",
                    mr[k][0]
                ));
            }
            if mr[k][1] > 1 {
                self.violations
                    .push(format!("key {k}: {} refreshes at once", mr[k][1]));
            }
            if strict && mt[k] > 1 {
                self.violations.push(format!(
                    "key {k}: {} computations at once (hard miss + refresh)",
                    mt[k]
                ));
            }
        }
    }
}

const STEP_BOUND: Duration = Duration::from_secs(10);

/// Waits (bounded) until every spawned task (background refreshes) has finished.
async fn settle(ck: &mut Checker<'_>) {
    let h = tokio::runtime::Handle::current();
    let deadline = std::time::Instant::now() + STEP_BOUND;
    while std::time::Instant::now() < deadline {
        if h.metrics().num_alive_tasks() == 0 {
            return;
        }
        tokio::task::yield_now().await;
        if h.metrics().num_workers() > 1 {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }
    ck.violations.push(format!(
        "{} tasks never finished",
        h.metrics().num_alive_tasks()
    ));
}

/// Runs one case. `parallel` uses a 2-worker runtime: real parallel interleavings, at the
/// price of a clock that only moves between steps with nothing running (computations take no
/// time on the clock), which keeps every check exact.
fn run_case(params: Params, ops: &[Op], strict: bool, parallel: bool) -> Result<Coverage, String> {
    let rt = if parallel {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .unwrap();
    let params = if parallel {
        Params {
            deltas_us: [0; KEYS as usize],
            ..params
        }
    } else {
        params
    };
    rt.block_on(async move {
        let model = Model::new(params.clone());
        let store = MemoryStore::<u8, Val>::new(64).unwrap();
        let m = model.clone();
        let f: F = memoize_stampede(&store, Duration::from_micros(TTL_US))
            .name("prop")
            .beta(params.beta)
            .clock(model.clock.clone())
            .rng_seed(params.seed)
            .build(move |k: u8| m.clone().compute(k))
            .map_err(|e| e.to_string())?;
        let mut ck = Checker {
            model: &model,
            violations: Vec::new(),
        };

        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Call(k) => {
                    let r = tokio::time::timeout(STEP_BOUND, CALLER.scope((), f.get(k))).await;
                    let now = model.clock.now();
                    match r {
                        Err(_) => ck.violations.push(format!("step {i}: call of {k} hung")),
                        Ok(r) => {
                            ck.check_result(&format!("step {i} call"), *k, &r, now);
                            if r.is_err() && !model.failing[*k as usize].load(Ordering::SeqCst) {
                                ck.violations.push(format!(
                                    "step {i}: key {k} does not fail, yet the call failed: {r:?}"
                                ));
                            }
                        }
                    }
                }
                Op::Advance(us) => {
                    if parallel {
                        settle(&mut ck).await;
                    }
                    model.clock.advance(Duration::from_micros(*us))
                }
                Op::SetFail(k, on) => model.failing[*k as usize].store(*on, Ordering::SeqCst),
                Op::Settle => settle(&mut ck).await,
                Op::Burst(keys) => {
                    let tasks: Vec<_> = keys
                        .iter()
                        .map(|&k| {
                            let (f, clock) = (f.clone(), model.clock.clone());
                            tokio::spawn(CALLER.scope((), async move {
                                let r = f.get(&k).await;
                                (k, r, clock.now())
                            }))
                        })
                        .collect();
                    let all =
                        tokio::time::timeout(STEP_BOUND, futures::future::join_all(tasks)).await;
                    match all {
                        Err(_) => ck.violations.push(format!("step {i}: burst hung")),
                        Ok(all) => {
                            for t in all {
                                match t {
                                    Ok((k, r, now)) => {
                                        ck.check_result(&format!("step {i} burst"), k, &r, now)
                                    }
                                    Err(e) => ck
                                        .violations
                                        .push(format!("step {i}: caller task failed: {e}")),
                                }
                            }
                        }
                    }
                }
            }
            ck.check_store(&store, &f);
            ck.check_overlap(strict);
            if !ck.violations.is_empty() {
                return Err(format!("after step {i} ({op:?}): {:#?}", ck.violations));
            }
        }
        settle(&mut ck).await;
        ck.check_store(&store, &f);
        ck.check_overlap(strict);
        let s = f.stats();
        // Counters agree with the model.
        if s.computations != model.next_gen.load(Ordering::SeqCst) {
            ck.violations.push(format!(
                "computations {} != closure runs {}",
                s.computations,
                model.next_gen.load(Ordering::SeqCst)
            ));
        }
        if s.calls != s.hits + s.hard_misses {
            ck.violations
                .push(format!("calls != hits + hard misses: {s:?}"));
        }
        if s.early_refreshes_started != s.early_refreshes_completed + s.early_refreshes_failed {
            ck.violations.push(format!(
                "refresh counters do not add up after settling: {s:?}"
            ));
        }
        if params.beta == 0.0 && s.early_refreshes_started + s.early_refreshes_skipped > 0 {
            ck.violations.push(format!("beta 0 refreshed early: {s:?}"));
        }
        if !ck.violations.is_empty() {
            return Err(format!("at the end: {:#?}", ck.violations));
        }
        Ok(Coverage {
            early_refreshes: s.early_refreshes_started,
            coalesced: s.coalesced_waiters,
            errors: s.errors,
            hard_misses: s.hard_misses,
            hits: s.hits,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Values are the right key's, never expired; errors never cached; stored records exact;
    /// at most one hard-miss computation and at most one refresh per key at a time.
    #[test]
    fn random_interleavings_respect_the_contract(
        p in params(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        if let Err(e) = run_case(p, &ops, false, false) {
            prop_assert!(false, "{}", e);
        }
    }

    /// The same on a multi-thread runtime: callers, waiters and refreshes run in parallel.
    #[test]
    fn parallel_interleavings_respect_the_contract(
        p in params(),
        ops in prop::collection::vec(op(), 1..30),
    ) {
        if let Err(e) = run_case(p, &ops, false, true) {
            prop_assert!(false, "{}", e);
        }
    }

    /// The same, and no hard miss computes while a refresh of the same key runs.
    #[test]
    fn random_interleavings_never_run_two_computations_of_one_key(
        p in params(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        if let Err(e) = run_case(p, &ops, true, false) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// The model reaches every path it checks (early refreshes, coalesced waiters, errors, hits and
/// misses), so the property above is not vacuous.
#[test]
fn the_model_exercises_refreshes_waiters_errors_and_expiry() {
    let params = Params {
        beta: 4.0,
        deltas_us: [100, 50, 10],
        yield_inside: true,
        seed: 11,
    };
    let mut ops = Vec::new();
    for round in 0..6u64 {
        ops.push(Op::Burst(vec![0, 0, 0, 1, 1, 2]));
        ops.push(Op::Advance(700 + round));
        for k in 0..KEYS {
            ops.push(Op::Call(k));
        }
        ops.push(Op::Settle);
        ops.push(Op::SetFail(round as u8 % KEYS, round % 2 == 0));
        ops.push(Op::Advance(1200));
        ops.push(Op::Burst(vec![0, 1, 2, 0, 1, 2]));
        ops.push(Op::Settle);
    }
    let cov = run_case(params.clone(), &ops, false, false).unwrap_or_else(|e| panic!("{e}"));
    assert!(cov.early_refreshes > 0, "{cov:?}");
    assert!(cov.coalesced > 0, "{cov:?}");
    assert!(cov.errors > 0, "{cov:?}");
    assert!(cov.hard_misses > 0 && cov.hits > 0, "{cov:?}");
    // In parallel, computations take no clock time: beta = ∞ still refreshes on every hit.
    let params = Params {
        beta: f64::INFINITY,
        ..params
    };
    let cov = run_case(params, &ops, false, true).unwrap_or_else(|e| panic!("{e}"));
    // (Whether a burst's callers overlap is up to the scheduler here, so waiters are not
    // required.)
    assert!(cov.early_refreshes > 0, "{cov:?}");
    assert!(cov.errors > 0, "{cov:?}");
    assert!(cov.hard_misses > 0 && cov.hits > 0, "{cov:?}");
}

/// Found by the proptest in CI: with β = ∞ a refresh that started while the key was failing
/// was still running when the value expired; a hard miss joined it and used to receive its
/// (background) error although the key no longer failed. A failed refresh now hands its
/// waiters over: they compute for themselves.
#[test]
fn a_hard_miss_never_inherits_a_failed_background_refresh() {
    let params = Params {
        beta: f64::INFINITY,
        deltas_us: [0, 0, 0],
        yield_inside: true,
        seed: 0,
    };
    let ops = [
        Op::Burst(vec![0, 2]),
        Op::SetFail(0, true),
        Op::Call(1),
        Op::Burst(vec![0, 0]),
        Op::SetFail(0, false),
        Op::Advance(476),
        Op::Advance(133),
        Op::Advance(391),
        Op::Call(0),
    ];
    run_case(params, &ops, false, false).expect("the contract holds");
}

// ---------------------------------------------------------------------------------------------
// The per-thread tier (issue 19): once a write (insert, invalidate, invalidate_all, a computed
// value) returned, no thread's tier serves the older value. Real threads, each with its own
// tier, run the operations one at a time against a model of what the store holds; the system
// clock and a one-hour TTL keep every value fresh, so the tier (which needs the coarse clock)
// serves most hits. Two functions share the store: one fixed β, one automatic.

mod tier_model {
    use super::*;
    use herdless::BlockingMemoized;
    use std::sync::mpsc;

    type F = BlockingMemoized<u8, (u8, u64), std::convert::Infallible, MemoryStore<u8, (u8, u64)>>;

    #[derive(Clone, Debug)]
    pub(super) enum TierOp {
        /// `n` calls of `get` (or `read`) on one thread: enough to fill its tier and pass the
        /// periodic store touch.
        Hits {
            thread: usize,
            fun: usize,
            key: u8,
            n: u16,
            read: bool,
        },
        Insert {
            thread: usize,
            fun: usize,
            key: u8,
        },
        Invalidate {
            thread: usize,
            fun: usize,
            key: u8,
        },
        InvalidateAll {
            thread: usize,
            fun: usize,
        },
    }

    pub(super) fn tier_op() -> impl Strategy<Value = TierOp> {
        prop_oneof![
            6 => (0..2usize, 0..2usize, 0..KEYS, prop_oneof![1u16..4, 250u16..520], any::<bool>())
                .prop_map(|(thread, fun, key, n, read)| TierOp::Hits { thread, fun, key, n, read }),
            2 => (0..2usize, 0..2usize, 0..KEYS)
                .prop_map(|(thread, fun, key)| TierOp::Insert { thread, fun, key }),
            2 => (0..2usize, 0..2usize, 0..KEYS)
                .prop_map(|(thread, fun, key)| TierOp::Invalidate { thread, fun, key }),
            1 => (0..2usize, 0..2usize).prop_map(|(thread, fun)| TierOp::InvalidateAll { thread, fun }),
        ]
    }

    type Job = Box<dyn FnOnce() -> Result<(), String> + Send>;

    /// Runs the ops; each op runs on its thread and the next starts after it returned.
    pub(super) fn run_tier_case(ops: &[TierOp]) -> Result<(), String> {
        let store = MemoryStore::<u8, (u8, u64)>::new(100).unwrap();
        let gens = Arc::new(AtomicU64::new(1));
        let fun = |fixed: bool| -> F {
            let gens = gens.clone();
            let b = memoize_stampede(&store, Duration::from_secs(3600));
            let b = if fixed { b.beta(1.0) } else { b };
            b.build_blocking_infallible(move |k: &u8| (*k, gens.fetch_add(1, Ordering::SeqCst)))
                .unwrap()
        };
        let fs = [fun(true), fun(false)];
        // model[fun][key]: the generation the store holds, if any.
        let model = Arc::new(Mutex::new([[None::<u64>; KEYS as usize]; 2]));
        let (workers, replies): (Vec<_>, Vec<_>) = (0..2)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Job>();
                let (rtx, rrx) = mpsc::channel();
                let handle = std::thread::spawn(move || {
                    for job in rx {
                        if rtx.send(job()).is_err() {
                            break;
                        }
                    }
                });
                ((tx, handle), rrx)
            })
            .unzip();
        let mut out = Ok(());
        for op in ops {
            let (thread, job): (usize, Job) = match op.clone() {
                TierOp::Hits {
                    thread,
                    fun,
                    key,
                    n,
                    read,
                } => {
                    let (f, model, gens) = (fs[fun].clone(), model.clone(), gens.clone());
                    (
                        thread,
                        Box::new(move || {
                            for _ in 0..n {
                                let issued = gens.load(Ordering::SeqCst);
                                let (k, gen) = if read {
                                    f.read(&key, |v| *v).unwrap()
                                } else {
                                    f.get(&key).unwrap()
                                };
                                if k != key {
                                    return Err(format!("key {k} for {key}"));
                                }
                                let mut m = model.lock().unwrap();
                                match m[fun][key as usize] {
                                    Some(held) if held != gen => {
                                        return Err(format!(
                                            "fun {fun} key {key}: {gen}, store holds {held}"
                                        ))
                                    }
                                    Some(_) => {}
                                    None if gen < issued => {
                                        return Err(format!(
                                            "fun {fun} key {key}: old {gen} after a miss"
                                        ))
                                    }
                                    None => m[fun][key as usize] = Some(gen),
                                }
                            }
                            Ok(())
                        }),
                    )
                }
                TierOp::Insert { thread, fun, key } => {
                    let (f, model, gens) = (fs[fun].clone(), model.clone(), gens.clone());
                    (
                        thread,
                        Box::new(move || {
                            let gen = gens.fetch_add(1, Ordering::SeqCst);
                            f.insert(&key, (key, gen)).unwrap();
                            model.lock().unwrap()[fun][key as usize] = Some(gen);
                            Ok(())
                        }),
                    )
                }
                TierOp::Invalidate { thread, fun, key } => {
                    let (f, model) = (fs[fun].clone(), model.clone());
                    (
                        thread,
                        Box::new(move || {
                            f.invalidate(&key).unwrap();
                            model.lock().unwrap()[fun][key as usize] = None;
                            Ok(())
                        }),
                    )
                }
                TierOp::InvalidateAll { thread, fun } => {
                    let (f, model) = (fs[fun].clone(), model.clone());
                    (
                        thread,
                        Box::new(move || {
                            f.invalidate_all().unwrap();
                            model.lock().unwrap()[fun] = [None; KEYS as usize];
                            Ok(())
                        }),
                    )
                }
            };
            workers[thread].0.send(job).unwrap();
            let done = replies[thread]
                .recv_timeout(Duration::from_secs(30))
                .map_err(|e| format!("{op:?}: no answer ({e})"))
                .and_then(|r| r.map_err(|e| format!("{op:?}: {e}")));
            if let Err(e) = done {
                out = Err(e);
                break;
            }
        }
        for (tx, handle) in workers {
            drop(tx);
            handle.join().unwrap();
        }
        let hits: u64 = fs.iter().map(|f| f.stats().hits).sum();
        if out.is_ok()
            && ops
                .iter()
                .any(|o| matches!(o, TierOp::Hits { n, .. } if *n > 100))
            && hits == 0
        {
            return Err("no hits".into());
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// No thread's tier serves a value older than a write that returned, on the thread that
    /// wrote or another, with `get` and `read`, fixed and automatic β.
    #[test]
    fn no_tier_serves_a_value_older_than_a_returned_write(
        ops in prop::collection::vec(tier_model::tier_op(), 1..40),
    ) {
        if let Err(e) = tier_model::run_tier_case(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}
