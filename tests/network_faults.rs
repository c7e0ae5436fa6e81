//! Real network faults between the application and Redis (issue 21, item 8): a fleet of stores
//! serving the same hot keys, each reaching a private `redis-server` through its own
//! fault-injecting TCP proxy (tests/support/proxy.rs), under four faults:
//!
//! 1. **latency**: 50 ms added on every chunk in each direction (45 ms + up to 10 ms of jitter)
//!    for every process;
//! 2. **stalls**: one chunk in 20, on every connection of every process, holds its connection
//!    for 300 ms (longer than `op_timeout`, so the requests behind it time out);
//! 3. **partition**: one process cut off from Redis for 3 s (old and new connections), then
//!    healed;
//! 4. **black-holed subscription**: one process's pub/sub connection silently swallows
//!    everything for 3 s while its data connection works.
//!
//! Each case asserts the four properties of the issue, with bounds derived from the configured
//! settings (constants below), never from how fast this machine is:
//! - **call wait**: no call takes longer than [`max_call`]: `op_timeout` plus the time a
//!   waiter may spend behind another process's lock whose holder went silent (its lease,
//!   [`LEASE_MIN`]) plus the computation, plus scheduling slack (the same 1 s slack as
//!   `tests/redis_outage.rs`: it catches stacked timeouts and hangs, not jitter). Every call
//!   also succeeds (fail-open).
//! - **one computation per key per cycle**: the hot keys are never invalidated, so each is
//!   computed once per TTL for the whole fleet; two computations of one key less than `TTL/2`
//!   apart are a duplicate. None is allowed while the network is healthy (before the fault and
//!   from [`RECOVERY_BOUND`] after it ends), nor during the fault where the fault leaves Redis
//!   reachable (latency; a black-holed subscription; the processes a partition does not cut
//!   off); after such a fault the fleet settles with at most [`SETTLING_EXTRA`] extra
//!   computations per key (no refresh stampede when the fault ends); duplicates stop within [`RECOVERY_BOUND`] of
//!   the fault's end (the printed recovery time), and every hot key is recomputed at least once
//!   per cycle after that. A duplicate right after a store error of one of its two processes
//!   (within [`RECOVER`]) outside an injected fault is fail-open at work (a timeout the
//!   machine's load caused), and one after [`STALL_EXCUSES`] of scheduling stalls is the
//!   machine's too: counted and printed, not a failure.
//! - **staleness**: a writer in process 0 bumps a ground-truth counter and then calls
//!   `invalidate`; the computation returns the counter. A read called more than its allowance
//!   after an `invalidate` returned must not return a value older than that invalidation. The
//!   allowance is the documented near-tier bound of the reading process at that moment (see
//!   [`allowance`]): one message delay while its channel is healthy, `max_stale` while its
//!   subscription is slowed, stalled or silent, the entry's own expiry while its Redis is
//!   unreachable (the `NearStore` docs: "Redis down: near entries serve until their own
//!   expiry"), each until [`RECOVER`] after the fault ended.
//! - **memory**: RSS of the test process (`/proc/self/statm`) after warm-up and at the end
//!   differ by at most [`RSS_GROWTH`]; the near tiers hold at most their capacity; each proxy
//!   ends with a bounded number of live connections (no connection leak behind the reconnects)
//!   and the server with a bounded number of clients.
//!
//! Time bounds are stretched by the time this process was not scheduled meanwhile, as a 5 ms
//! sleeper thread measures it (the machine is shared: a 1.6 s stall of the whole process was
//! seen here); the figures print that time.
//!
//! The "processes" are separate `RedisStore` instances in this test process, each with its own
//! private runtime, connections, subscription, circuit breaker and near tier, each connected
//! through its own proxy: exactly what a separate process has towards Redis, so a fault can hit
//! one of them or one of its connections. Threads instead of child processes keep one clock
//! (`Instant`) and one ground truth (atomics) for the checks, and make RSS one number; the
//! price is that RSS also counts the proxies' threads and the histories, which are therefore
//! preallocated (touched) before the baseline is taken.
//!
//! The cases run one at a time (a lock: RSS is per process, and the 2-core machine must not run
//! four fleets at once), about 15 s each. Without `redis-server` and without `CI` they print one
//! line and pass; with `CI` set a missing server fails. Each case prints its figures
//! (`network <case>: ...`) past libtest's capture.

mod support;

use herdless::store::{NearStore, RedisStore};
use herdless::{memoize_stampede, BlockingMemoized};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::proxy::{Proxy, Which};
use support::{redis_or_skip, wait_until, BOUND};

/// The function's TTL: one cycle.
const TTL: Duration = Duration::from_secs(1);
/// How long a computation takes.
const COMPUTE: Duration = Duration::from_millis(20);
/// `RedisStoreBuilder::op_timeout` (the default, set explicitly).
const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// The circuit breaker (the defaults, set explicitly): failures to open, cool-down.
const BREAKER: (u32, Duration) = (3, Duration::from_secs(1));
/// The lower lease bound (`Builder::lease_bounds`, the default): a 20 ms computation takes
/// locks for this long, so a waiter behind a holder that went silent waits at most this.
const LEASE_MIN: Duration = Duration::from_millis(500);
/// `NearStoreBuilder::max_stale` of every process.
const MAX_STALE: Duration = Duration::from_millis(300);
/// Near-tier capacity of every process.
const CAPACITY: usize = 1000;
/// The allowance for "one message delay" while a channel is healthy (the README's measured
/// p99 is a few ms; room for a loaded 2-core machine, as in the coherence checker).
const NEAR_HEALTHY: Duration = Duration::from_millis(200);
/// How long after a fault ends a process may still be recovering: a subscription given up
/// after 1 s without an answer and re-made, a breaker cooling down (1 s), then one probe.
const RECOVER: Duration = Duration::from_secs(2);
/// Scheduling slack on top of the documented wait (2 shared cores; as `tests/redis_outage.rs`).
const SLACK: Duration = Duration::from_secs(1);
/// How long after the fault ends the fleet must be back to one computation per key per cycle:
/// [`RECOVER`], then one cycle (values computed locally during the fault expire), plus slack.
const RECOVERY_BOUND: Duration = Duration::from_millis(
    RECOVER.as_millis() as u64 + TTL.as_millis() as u64 + SLACK.as_millis() as u64,
);
/// Two computations of one hot key closer than this are a duplicate (XFetch's lead for a 20 ms
/// computation is far shorter).
const DUPLICATE_GAP: Duration = Duration::from_millis(TTL.as_millis() as u64 / 2);
/// Extra computations of one hot key allowed while the fleet settles after a fault that left
/// Redis reachable. Before the fix in `src/auto.rs` the end of 50 ms of latency set off 4 to 9
/// back-to-back refreshes of one key (a rate window stretched by the slow spell published its
/// low average just as traffic returned); since, 0 to 2 were measured.
const SETTLING_EXTRA: usize = 2;
/// Scheduling stalls of this process adding up to this much within [`RECOVER`] before a
/// duplicate excuse it like a store error (a refresh that was not scheduled in time).
const STALL_EXCUSES: Duration = Duration::from_millis(100);
/// The most RSS may grow from the end of warm-up to the end of a case.
const RSS_GROWTH: u64 = 32 << 20;

/// The processes; process 0 also runs the writer, process [`VICTIM`] takes the
/// one-process faults.
const PROCS: usize = 4;
const VICTIM: usize = 1;
/// Reader threads per process.
const READERS: usize = 2;
/// Keys 0..HOT are read only (computations counted); HOT..KEYS are also invalidated.
const HOT: u32 = 4;
const KEYS: u32 = 7;

/// Phases of a case.
const WARM: Duration = Duration::from_millis(2000);
const BEFORE: Duration = Duration::from_millis(3000);
const FAULT: Duration = Duration::from_millis(3000);
const AFTER: Duration = Duration::from_millis(3000);

/// The monitor's sleep, and the lateness of it worth noting as time this process was not
/// scheduled.
const TICK: Duration = Duration::from_millis(5);
const LAG_NOTED: Duration = Duration::from_millis(20);

/// Events each reader thread may record (preallocated: the history must not grow RSS).
const CAP: usize = 40_000;

fn max_call() -> Duration {
    OP_TIMEOUT + LEASE_MIN + COMPUTE + SLACK
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Latency,
    Stalls,
    Partition,
    BlackholeSubscription,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Latency => "50 ms latency",
            Fault::Stalls => "1-in-20 stalls of 300 ms",
            Fault::Partition => "3 s partition of one process",
            Fault::BlackholeSubscription => "black-holed subscription",
        }
    }
    /// The processes the fault hits.
    fn hits(self, p: usize) -> bool {
        match self {
            Fault::Latency | Fault::Stalls => true,
            Fault::Partition | Fault::BlackholeSubscription => p == VICTIM,
        }
    }
    /// Redis stays reachable for every process hit: the fleet must keep one computation per
    /// key per cycle during the fault.
    fn keeps_redis(self) -> bool {
        matches!(self, Fault::Latency | Fault::BlackholeSubscription)
    }
}

/// One call, times in ns since the case's epoch.
#[derive(Clone, Copy, Default)]
struct Rec {
    proc: u8,
    key: u32,
    value: u64,
    start: u64,
    end: u64,
    ok: bool,
}

/// One computation.
#[derive(Clone, Copy)]
struct Comp {
    proc: usize,
    key: u32,
    start: u64,
    /// Run by a reader thread (a hard miss), not in the background (a refresh).
    by_reader: bool,
}

struct Truth {
    epoch: Instant,
    counters: Vec<AtomicU64>,
    computations: Mutex<Vec<Comp>>,
    per_key: Vec<AtomicU64>,
}

impl Truth {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

type Func = BlockingMemoized<u32, u64, std::convert::Infallible, NearStore<u32, u64>>;

struct Process {
    proxy: Proxy,
    shared: RedisStore,
    near: NearStore<u32, u64>,
    f: Func,
}

fn process(i: usize, upstream: u16, truth: &Arc<Truth>) -> Process {
    let proxy = Proxy::start(upstream);
    let shared = RedisStore::builder(&proxy.url(None))
        .prefix("nf")
        .op_timeout(OP_TIMEOUT)
        .circuit_breaker(BREAKER.0, BREAKER.1)
        .build()
        .unwrap();
    let near = NearStore::builder(&shared)
        .capacity(CAPACITY)
        .max_stale(MAX_STALE)
        .build::<u32, u64>()
        .unwrap();
    let t = truth.clone();
    let f = memoize_stampede(&near, TTL)
        .name("nf")
        .lease_bounds(LEASE_MIN, Duration::from_secs(60))
        .build_blocking_infallible(move |k: &u32| {
            let start = t.now();
            let truth = t.counters[*k as usize].load(Ordering::SeqCst);
            // A hot key's value is its computation's sequence number (its truth never moves),
            // an invalidated key's the ground truth.
            let seq = t.per_key[*k as usize].fetch_add(1, Ordering::Relaxed) + 1;
            let v = if *k < HOT { seq } else { truth };
            t.computations.lock().unwrap().push(Comp {
                proc: i,
                key: *k,
                start,
                by_reader: std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("reader")),
            });
            std::thread::sleep(COMPUTE);
            v
        })
        .unwrap();
    Process {
        proxy,
        shared,
        near,
        f,
    }
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn threads() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn connected_clients(con: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("clients").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// When the fault was in force for which processes (ns since the epoch).
struct Window {
    fault: Fault,
    start: u64,
    end: u64,
}

/// The documented staleness allowance of a read by `proc` called at `at`.
fn allowance(w: &Window, proc: usize, at: u64) -> u64 {
    let during = w.fault.hits(proc) && at >= w.start && at <= w.end + ns(RECOVER);
    if !during {
        return ns(NEAR_HEALTHY);
    }
    match w.fault {
        // Redis unreachable: near entries serve until their own expiry, at most one TTL after
        // they were read, which was before the invalidation returned.
        Fault::Partition => ns(TTL) + ns(NEAR_HEALTHY),
        // The channel slowed, stalled or silent: max_stale.
        _ => ns(MAX_STALE) + ns(NEAR_HEALTHY),
    }
}

/// One case: the figures it measured, and the list of broken properties.
fn run_case(fault: Fault) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(server) = redis_or_skip() else {
        return;
    };
    let truth = Arc::new(Truth {
        epoch: Instant::now(),
        counters: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        computations: Mutex::new(Vec::with_capacity(100_000)),
        per_key: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
    });
    let procs: Vec<Process> = (0..PROCS)
        .map(|i| process(i, server.port(), &truth))
        .collect();
    // Connected and subscribed: one call each, then a subscriber connection on each proxy.
    for p in &procs {
        assert_eq!(p.f.get(&HOT).unwrap(), 0); // an invalidated key: its truth
    }
    wait_until("every process subscribed", BOUND, || {
        procs
            .iter()
            .all(|p| p.proxy.connections().iter().any(|c| c.subscriber))
    });

    let stop = Arc::new(AtomicBool::new(false));
    // Readers: every process, every key, one call per millisecond or so.
    let mut readers = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        for _ in 0..READERS {
            let (f, stop, truth) = (p.f.clone(), stop.clone(), truth.clone());
            let mut hist = vec![Rec::default(); CAP]; // touched now, before the baseline
            readers.push(
                std::thread::Builder::new()
                    .name(format!("reader-{i}"))
                    .spawn(move || {
                        let mut n = 0;
                        let mut k = rand::random_range(0..KEYS);
                        while !stop.load(Ordering::Relaxed) && n < CAP {
                            k = (k + 1) % KEYS;
                            let start = truth.now();
                            let r = f.get(&k);
                            let end = truth.now();
                            hist[n] = Rec {
                                proc: i as u8,
                                key: k,
                                value: *r.as_ref().unwrap_or(&u64::MAX),
                                start,
                                end,
                                ok: r.is_ok(),
                            };
                            n += 1;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        hist.truncate(n);
                        hist
                    })
                    .unwrap(),
            );
        }
    }
    // The writer (process 0): bump the truth, then invalidate; every 100-200 ms.
    let writer = {
        let (f, stop, truth) = (procs[0].f.clone(), stop.clone(), truth.clone());
        let mut hist = vec![Rec::default(); CAP];
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < CAP {
                let k = rand::random_range(HOT..KEYS);
                let v = truth.counters[k as usize].fetch_add(1, Ordering::SeqCst) + 1;
                let start = truth.now();
                let ok = f.invalidate(&k).is_ok();
                let end = truth.now();
                hist[n] = Rec {
                    proc: 0,
                    key: k,
                    value: v,
                    start,
                    end,
                    ok,
                };
                n += 1;
                std::thread::sleep(Duration::from_millis(rand::random_range(100..200)));
            }
            hist.truncate(n);
            hist
        })
    };

    // Store errors per process over time: a duplicate that follows one is fail-open at work
    // (a timeout the machine's load caused, outside any injected fault), not a broken promise.
    let monitor = {
        let stop = stop.clone();
        let truth = truth.clone();
        let stores: Vec<RedisStore> = procs.iter().map(|p| p.shared.clone()).collect();
        std::thread::spawn(move || {
            let mut seen = vec![0u64; stores.len()];
            let mut events: Vec<(u64, usize)> = Vec::new();
            let mut lags: Vec<(u64, u64)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (i, s) in stores.iter().enumerate() {
                    let n = s.stats().errors.load(Ordering::Relaxed);
                    if n > seen[i] {
                        seen[i] = n;
                        events.push((truth.now(), i));
                    }
                }
                let before = truth.now();
                std::thread::sleep(TICK);
                let late = (truth.now() - before).saturating_sub(ns(TICK));
                if late > ns(LAG_NOTED) {
                    lags.push((truth.now(), late));
                }
            }
            (events, lags)
        })
    };
    std::thread::sleep(WARM);
    let warm_end = truth.now();
    let (rss_before, threads_before) = (rss(), threads());
    std::thread::sleep(BEFORE);

    // The fault.
    let start = truth.now();
    let mut resubscribed_after = None;
    match fault {
        Fault::Latency => {
            for p in &procs {
                p.proxy
                    .set_latency(Duration::from_millis(45), Duration::from_millis(10));
            }
            std::thread::sleep(FAULT);
            for p in &procs {
                p.proxy.set_latency(Duration::ZERO, Duration::ZERO);
            }
        }
        Fault::Stalls => {
            for p in &procs {
                p.proxy.set_stall_chance(20, Duration::from_millis(300));
            }
            std::thread::sleep(FAULT);
            for p in &procs {
                p.proxy.set_stall_chance(0, Duration::ZERO);
            }
        }
        Fault::Partition => {
            procs[VICTIM].proxy.partition();
            std::thread::sleep(FAULT);
            procs[VICTIM].proxy.heal();
        }
        Fault::BlackholeSubscription => {
            let p = &procs[VICTIM].proxy;
            let holed: Vec<u64> = p
                .connections()
                .iter()
                .filter(|c| c.subscriber)
                .map(|c| c.id)
                .collect();
            assert_eq!(p.blackhole(Which::Subscriber), holed.len());
            assert!(!holed.is_empty(), "no subscription to black-hole");
            // The store must notice by itself (an unanswered PING) and subscribe anew.
            let until = Instant::now() + FAULT;
            while Instant::now() < until {
                if resubscribed_after.is_none()
                    && p.connections()
                        .iter()
                        .any(|c| c.subscriber && !holed.contains(&c.id))
                {
                    resubscribed_after = Some(truth.now() - start);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // The middlebox forgets the flow (if the store still holds it, it works again).
            for id in holed {
                p.forward(Which::Id(id));
            }
        }
    }
    let end = truth.now();
    let window = Window { fault, start, end };
    std::thread::sleep(RECOVERY_BOUND + AFTER);
    let after_start = end + ns(RECOVERY_BOUND);
    let case_end = truth.now();
    stop.store(true, Ordering::Relaxed);

    let reads: Vec<Rec> = readers
        .into_iter()
        .flat_map(|t| t.join().expect("reader thread"))
        .collect();
    let writes = writer.join().expect("writer thread");
    let (store_errors, lags) = monitor.join().expect("monitor thread");
    // How long this process was not scheduled between `from` and `to`, as a 5 ms sleeper saw
    // it (other jobs on a shared 2-core machine): time bounds are stretched by that much, so
    // they assert behaviour, not the machine's speed.
    let lag = |from: u64, to: u64| -> u64 {
        lags.iter()
            .filter(|&&(at, late)| at + late >= from && at <= to + ns(TICK))
            .map(|&(_, late)| late)
            .sum()
    };
    // Process `p` saw a store error within RECOVER before `t`.
    // Errors of a process the fault hits, from its start until RECOVER after its end, are the
    // fault's: they excuse nothing.
    let erred = |p: usize, t: u64| {
        store_errors.iter().any(|&(at, q)| {
            let the_faults = fault.hits(q) && at >= start && at <= end + ns(RECOVER);
            q == p && !the_faults && at <= t + ns(Duration::from_millis(10)) && t < at + ns(RECOVER)
        })
    };
    let (rss_after, threads_after) = (rss(), threads());
    let clients = connected_clients(&mut server.raw());
    let live: Vec<usize> = procs.iter().map(|p| p.proxy.connections().len()).collect();
    let near_len: Vec<usize> = procs.iter().map(|p| p.near.len()).collect();

    let mut broken: Vec<String> = Vec::new();
    // Every process is back: its breaker closed and a subscription on its proxy (bounded).
    let back = Instant::now() + BOUND;
    while procs
        .iter()
        .any(|p| p.shared.circuit_open() || !p.proxy.connections().iter().any(|c| c.subscriber))
    {
        if Instant::now() > back {
            broken.push(format!(
                "a process did not recover within {BOUND:?} of the case's end"
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    // 1. Call wait, and fail-open.
    let failed = reads.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        broken.push(format!("{failed} calls failed (fail-open: none may)"));
    }
    let worst = reads.iter().max_by_key(|r| r.end - r.start).unwrap();
    let worst_wait = worst.end - worst.start;
    let over = reads
        .iter()
        .filter(|r| r.end - r.start > ns(max_call()) + lag(r.start, r.end))
        .count();
    if over > 0 {
        broken.push(format!(
            "{over} calls waited longer than {:?} (worst {:.1} ms: process {} key {} called at {:.0} ms)",
            max_call(),
            ms(worst_wait),
            worst.proc,
            worst.key,
            ms(worst.start)
        ));
    }
    let worst_in = |from: u64, to: u64| {
        reads
            .iter()
            .filter(|r| r.start >= from && r.start < to)
            .map(|r| r.end - r.start)
            .max()
            .unwrap_or(0)
    };
    // Calls over the literal `op_timeout + computation` (a figure: several round trips of a
    // slow network add up within one call, each below `op_timeout`).
    let literal = ns(OP_TIMEOUT + COMPUTE);
    let over_literal = |hot: bool| {
        reads
            .iter()
            .filter(|r| (r.key < HOT) == hot && r.end - r.start > literal)
            .count()
    };
    let hot_worst = reads
        .iter()
        .filter(|r| r.key < HOT)
        .map(|r| r.end - r.start)
        .max()
        .unwrap_or(0);

    // 2. Computations per hot key per cycle.
    let comps = truth.computations.lock().unwrap().clone();
    // The later one of each close pair, and whether a process of the pair had just seen a
    // store error.
    let mut duplicates: Vec<(Comp, bool)> = Vec::new();
    let mut healthy_dups = Vec::new();
    let mut excused = 0;
    for k in 0..HOT {
        // Counted for the processes the fault leaves healthy, plus the others outside it.
        let mut starts: Vec<&Comp> = comps.iter().filter(|c| c.key == k).collect();
        starts.sort_by_key(|c| c.start);
        for pair in starts.windows(2) {
            if pair[1].start - pair[0].start < ns(DUPLICATE_GAP) {
                let c = *pair[1];
                let t = c.start;
                let after_error = pair.iter().any(|c| erred(c.proc, t))
                    || lag(t.saturating_sub(ns(RECOVER)), t) > ns(STALL_EXCUSES);
                duplicates.push((c, after_error));
                let in_fault = t >= start && t < end;
                let by_hit = pair.iter().any(|c| fault.hits(c.proc));
                let healthy = t >= warm_end && t < start
                    || t >= after_start
                    || in_fault && (fault.keeps_redis() || !by_hit);
                if healthy && after_error {
                    excused += 1;
                } else if healthy {
                    healthy_dups.push(c);
                }
            }
        }
    }
    if !healthy_dups.is_empty() {
        let shown: Vec<String> = healthy_dups
            .iter()
            .take(5)
            .map(|c| {
                format!(
                    "key {} by process {} at {:.0} ms",
                    c.key,
                    c.proc,
                    ms(c.start)
                )
            })
            .collect();
        broken.push(format!(
            "{} duplicate computations while the network was healthy for them ({})",
            healthy_dups.len(),
            shown.join(", ")
        ));
    }
    let count_in = |from: u64, to: u64| {
        comps
            .iter()
            .filter(|c| c.key < HOT && c.start >= from && c.start < to)
            .count() as f64
    };
    let per_cycle = |from: u64, to: u64| {
        count_in(from, to) / HOT as f64 / ((to - from) as f64 / ns(TTL) as f64)
    };
    let (before_rate, fault_rate, after_rate) = (
        per_cycle(warm_end, start),
        per_cycle(start, end),
        per_cycle(after_start, case_end),
    );
    // Alive: every hot key recomputed in every full cycle after recovery.
    let full_cycles = (case_end - after_start) / ns(TTL);
    for k in 0..HOT {
        let n = comps
            .iter()
            .filter(|c| c.key == k && c.start >= after_start)
            .count() as u64;
        if n + 1 < full_cycles {
            broken.push(format!(
                "hot key {k} computed {n} times in the {full_cycles} cycles after recovery"
            ));
        }
    }
    // A fault that leaves Redis reachable must not set off a stampede of refreshes when it
    // ends: at most SETTLING_EXTRA extra computations per key while the fleet settles.
    if fault.keeps_redis() {
        for k in 0..HOT {
            let settling: Vec<&Comp> = duplicates
                .iter()
                .filter(|(c, erred)| {
                    !erred && c.key == k && c.start >= end && c.start < after_start
                })
                .map(|(c, _)| c)
                .collect();
            if settling.len() > SETTLING_EXTRA {
                let shown: Vec<String> = settling
                    .iter()
                    .map(|c| {
                        format!(
                            "{} by process {} at {:.0} ms",
                            if c.by_reader { "hard miss" } else { "refresh" },
                            c.proc,
                            ms(c.start)
                        )
                    })
                    .collect();
                broken.push(format!(
                    "hot key {k}: {} extra computations after the fault ended ({})",
                    settling.len(),
                    shown.join(", ")
                ));
            }
        }
    }
    let dup_during = duplicates
        .iter()
        .filter(|(c, _)| c.start >= start && c.start < end)
        .count();
    // Back to one computation per key per cycle: the last duplicate not excused by the
    // machine (a process that never recovers is caught below: its breaker stays open or its
    // subscription is never re-made), and the last of any kind, printed.
    let last_after = |all: bool| {
        duplicates
            .iter()
            .filter(|(c, excused)| c.start >= end && (all || !excused))
            .map(|(c, _)| c.start - end)
            .max()
            .unwrap_or(0)
    };
    let (recovery, recovery_all) = (last_after(false), last_after(true));
    if recovery > ns(RECOVERY_BOUND) + lag(end, end + recovery) {
        broken.push(format!(
            "duplicate computations went on until {:.0} ms after the fault (bound {RECOVERY_BOUND:?})",
            ms(recovery)
        ));
    }

    // 3. Staleness after invalidations.
    let mut ok_writes: Vec<&Rec> = writes.iter().filter(|w| w.ok).collect();
    ok_writes.sort_by_key(|w| w.end);
    let mut stale = Vec::new();
    let mut checked = 0u64;
    for r in reads.iter().filter(|r| r.ok && r.key >= HOT) {
        checked += 1;
        let allowed = allowance(&window, r.proc as usize, r.start);
        // The newest invalidation of the key that returned more than `allowed` before the call
        // (plus the time this process was not scheduled in between).
        let due = ok_writes
            .iter()
            .filter(|w| w.key == r.key && w.end + allowed + lag(w.end, r.start) < r.start)
            .map(|w| w.value)
            .max();
        if let Some(v) = due {
            if r.value < v {
                stale.push((*r, v, allowed));
            }
        }
    }
    if !stale.is_empty() {
        let shown: Vec<String> = stale
            .iter()
            .take(5)
            .map(|(r, v, a)| {
                format!(
                    "process {} key {} read {} at {:.0} ms, invalidated to {v} (allowed {:.0} ms)",
                    r.proc,
                    r.key,
                    r.value,
                    ms(r.start),
                    ms(*a)
                )
            })
            .collect();
        broken.push(format!(
            "{} stale reads past the documented bound: {}",
            stale.len(),
            shown.join("; ")
        ));
    }
    let writes_ok = ok_writes.len();

    // 4. Memory and connections.
    let growth = rss_after.saturating_sub(rss_before);
    if growth > RSS_GROWTH {
        broken.push(format!(
            "RSS grew by {} KiB (bound {} KiB)",
            growth >> 10,
            RSS_GROWTH >> 10
        ));
    }
    if near_len.iter().any(|&n| n > CAPACITY) {
        broken.push(format!(
            "a near tier holds more than {CAPACITY}: {near_len:?}"
        ));
    }
    // Each store keeps one data and one subscription connection (plus one being replaced).
    if live.iter().any(|&n| n > 4) {
        broken.push(format!("live connections per proxy: {live:?} (bound 4)"));
    }
    if clients > (PROCS as u64) * 4 + 2 {
        broken.push(format!("the server has {clients} clients"));
    }

    let st = &procs[VICTIM].shared.stats();
    let nst = procs[VICTIM].near.stats();
    say(&format!(
        "network {}: max call wait {:.1} ms (before {:.1}, fault {:.1}, after {:.1}; hot keys {:.1}; bound {:.0} ms); \
         calls over op_timeout + computation: {} of hot keys, {} of invalidated keys; \
         computations per hot key per cycle before {before_rate:.2}, during {fault_rate:.2}, after {after_rate:.2}; \
         duplicates during the fault {dup_during}, outside it after a store error or a machine stall {excused}, recovery {:.0} ms after the fault ({:.0} ms counting excused ones; bound {:.0} ms); \
         {checked} reads of invalidated keys checked against {writes_ok} invalidations, {} stale past the bound; \
         machine stalls {:.0} ms in all (longest {:.0} ms); RSS {} -> {} KiB, threads {threads_before} -> {threads_after}, live connections {live:?}, server clients {clients}, near entries {near_len:?}; \
         victim: timeouts {}, circuit opens {}, connects {}, stale revalidations {}, resyncs {}{}",
        fault.name(),
        ms(worst_wait),
        ms(worst_in(warm_end, start)),
        ms(worst_in(start, end + ns(RECOVER))),
        ms(worst_in(after_start, case_end)),
        ms(hot_worst),
        max_call().as_secs_f64() * 1e3,
        over_literal(true),
        over_literal(false),
        ms(recovery),
        ms(recovery_all),
        RECOVERY_BOUND.as_secs_f64() * 1e3,
        stale.len(),
        ms(lags.iter().map(|l| l.1).sum()),
        ms(lags.iter().map(|l| l.1).max().unwrap_or(0)),
        rss_before >> 10,
        rss_after >> 10,
        st.timeouts.load(Ordering::Relaxed),
        st.circuit_opens.load(Ordering::Relaxed),
        st.connects.load(Ordering::Relaxed),
        nst.stale_revalidations.load(Ordering::Relaxed),
        nst.resyncs.load(Ordering::Relaxed),
        match resubscribed_after {
            Some(t) => format!(", resubscribed {:.0} ms into the black hole", ms(t)),
            None => String::new(),
        },
    ));

    // The run must have exercised what it checks.
    assert!(
        checked >= 1000,
        "too few reads of invalidated keys: {checked}"
    );
    assert!(
        writes_ok >= 20,
        "too few successful invalidations: {writes_ok}"
    );
    if fault == Fault::BlackholeSubscription && resubscribed_after.is_none() {
        broken.push("the black-holed subscription was never replaced".into());
    }
    assert!(
        broken.is_empty(),
        "under `{}`:\n  {}",
        fault.name(),
        broken.join("\n  ")
    );
}

#[test]
fn latency_of_50_ms() {
    run_case(Fault::Latency);
}

#[test]
fn stalls_of_300_ms_one_in_20() {
    run_case(Fault::Stalls);
}

#[test]
fn partition_of_one_process_for_3_s() {
    run_case(Fault::Partition);
}

#[test]
fn black_holed_subscription() {
    run_case(Fault::BlackholeSubscription);
}
