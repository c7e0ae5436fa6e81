//! Deterministic Monte-Carlo simulator of one cached key, in virtual time.
//!
//! Callers arrive as a Poisson process at `rate_per_s`; a computation takes the configured
//! [`ComputeTime`]; a value written at time `t` expires at `t + ttl`. The early-refresh decision of
//! the XFetch strategies is [`crate::xfetch::decide`] fed with [`crate::xfetch::exp1_from_bits`],
//! i.e. the very law the engine runs. Everything is driven by one seeded
//! [`StdRng`]: the same [`SimConfig`] always gives the same [`SimReport`].
//! There are no threads and no sleeping.
//!
//! **Cycle.** The simulation starts warm (a value has just been written, nothing in flight) and
//! counts *cycles*: a cycle opens when a computation starts while none has started since the last
//! write, and closes at the next write (the next landing of any computation). Its *stampede* is the
//! number of computations started while it was open — with a constant compute time, exactly the
//! recomputations started from the first trigger until its result lands. Every computation belongs
//! to exactly one cycle, so runs per cycle and the mean stampede are the same number. Its *lead*
//! is `max(0, expiry − first start)`; it is a *hard miss* when the first start came at or after
//! expiry, and a *late refresh* when the write came after expiry. These are the quantities
//! [`crate::tune::advise`] predicts. Its model starts each cycle from a write at gap `ttl` with
//! nothing in flight. That always holds with coordination; without it, the stampede's other
//! computations keep landing for up to `δ` after the first write, so the model needs
//! `ttl − δ ≫ δβ` (a trigger that early is then negligible) — keep it in mind for short TTLs.
//!
//! **Speed: only calls that can act are simulated, exactly.** Before `expiry − δβ·E_MAX` no
//! XFetch draw can trigger (see [`crate::xfetch::draw_needed`]); plain TTL and the barrier act only
//! at expiry, and neither does a coordinated strategy while its refresh is in flight: such
//! stretches are crossed in one step. Inside the XFetch window the calls are *thinned*: over a
//! stretch of gaps `[lo, lo + δβ]` a call can only trigger if its draw is `e ≥ lo/(δβ)`, which
//! happens with probability `p = e^(−lo/(δβ))`; those calls form a Poisson process of rate `r·p`,
//! and because `Exp(1)` is memoryless their draw is `lo/(δβ) + Exp(1)`, which is then fed to
//! [`crate::xfetch::decide`] as usual. The result has the same law as drawing for every call (set
//! [`SimConfig::thinning`] to `false` to do that; the tests check that both agree), at a cost of a
//! few dozen steps per cycle whatever the rate. Calls that could not act are still counted, with
//! one Poisson draw at the end.
//!
//! ```
//! use herdless::sim::{simulate, SimConfig, Strategy};
//! use std::time::Duration;
//!
//! let mut cfg = SimConfig::new(
//!     1000.0,
//!     Duration::from_millis(20),
//!     Duration::from_secs(60),
//!     Strategy::XFetchCoordinated { beta: 1.0 },
//! );
//! cfg.cycles = 200;
//! let report = simulate(&cfg)?;
//! assert_eq!(report.cycles, 200);
//! assert_eq!(report.runs, 200); // coordination: one run per cycle
//! assert_eq!(report.stampede_histogram[1], 200);
//! # Ok::<(), herdless::tune::TuneError>(())
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rand_distr::{Distribution, Exp1, Poisson};

use crate::tune::{check_beta, check_nonzero, check_rate, TuneError};
use crate::xfetch::{decide, draw_needed, exp1_from_bits, Decision, E_MAX};

/// How long one computation takes.
///
/// The XFetch strategies use the measured duration of the computation that produced the current
/// value as their `delta`, as the engine does.
///
/// ```
/// use herdless::sim::ComputeTime;
/// use std::time::Duration;
/// let jittery = ComputeTime::Uniform { min: Duration::from_millis(150), max: Duration::from_millis(250) };
/// assert_ne!(jittery, ComputeTime::Constant(Duration::from_millis(200)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ComputeTime {
    /// Always the same duration (the closed forms of [`crate::tune`] assume this).
    Constant(Duration),
    /// Uniform on `[min, max)`, drawn per computation.
    Uniform {
        /// Shortest computation.
        min: Duration,
        /// Upper bound of the computation time.
        max: Duration,
    },
}

/// How callers decide to recompute. "Uncoordinated" strategies let every trigger recompute, as
/// the peers without a refresh lock do; on a hard miss every caller of an uncoordinated strategy
/// recomputes too, while the coordinated ones ([`Strategy::Barrier`],
/// [`Strategy::XFetchCoordinated`]) let one caller compute and the others wait for it.
///
/// ```
/// use herdless::sim::Strategy;
/// let s = Strategy::XFetch { beta: 1.0 };
/// assert!(!s.is_coordinated());
/// assert!(Strategy::Barrier.is_coordinated());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    /// No early refresh; every caller that finds the value expired (and no write yet) recomputes.
    PlainTtl,
    /// XFetch without coordination: every call that triggers recomputes.
    XFetch {
        /// XFetch's β (finite, ≥ 0).
        beta: f64,
    },
    /// XFetch with a try-lock: a trigger starts a refresh only when none is in flight (herdless).
    /// On a hard miss one caller computes and the others wait.
    XFetchCoordinated {
        /// XFetch's β (finite, ≥ 0).
        beta: f64,
    },
    /// No early refresh; on a hard miss one caller computes, the others wait for its result.
    Barrier,
    /// Early expiry drawn per call: each call within `window` of expiry picks its own uniform
    /// early-expiry point in `[expiry − window, expiry]` and recomputes if it is past it, i.e.
    /// with probability `1 − gap/window`. Uncoordinated.
    FixedWindow {
        /// Length of the early-expiry window before expiry (non-zero).
        window: Duration,
    },
    /// Each call within `window` of expiry recomputes with the same probability `p`.
    /// Uncoordinated.
    ConstantProbability {
        /// Per-call refresh probability inside the window, in `[0, 1]`.
        p: f64,
        /// Length of the window before expiry (non-zero).
        window: Duration,
    },
}

impl Strategy {
    /// True for the strategies where at most one computation is in flight.
    ///
    /// ```
    /// use herdless::sim::Strategy;
    /// assert!(Strategy::XFetchCoordinated { beta: 1.0 }.is_coordinated());
    /// ```
    pub fn is_coordinated(&self) -> bool {
        matches!(self, Strategy::Barrier | Strategy::XFetchCoordinated { .. })
    }
}

/// One simulation run: workload, strategy, length and seed.
///
/// ```
/// use herdless::sim::{ComputeTime, SimConfig, Strategy};
/// use std::time::Duration;
/// let mut cfg = SimConfig::new(100.0, Duration::from_millis(200), Duration::from_secs(1), Strategy::Barrier);
/// cfg.compute = ComputeTime::Uniform { min: Duration::from_millis(100), max: Duration::from_millis(300) };
/// cfg.seed = 7;
/// assert_eq!(cfg.cycles, 10_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Poisson arrival rate, calls per second (positive, finite).
    pub rate_per_s: f64,
    /// Computation time.
    pub compute: ComputeTime,
    /// Life of a written value (non-zero).
    pub ttl: Duration,
    /// Who recomputes when.
    pub strategy: Strategy,
    /// How many cycles to simulate (at least 1).
    pub cycles: u64,
    /// Seed of the [`StdRng`].
    pub seed: u64,
    /// Simulate only the calls that can act (default `true`, exact; see the module docs).
    /// `false` draws for every call that needs a draw, as the engine does: slower, for checking.
    pub thinning: bool,
}

impl SimConfig {
    /// A configuration with a constant computation time, 10 000 cycles and seed 1.
    ///
    /// ```
    /// use herdless::sim::{ComputeTime, SimConfig, Strategy};
    /// use std::time::Duration;
    /// let cfg = SimConfig::new(10.0, Duration::from_millis(1), Duration::from_secs(1), Strategy::PlainTtl);
    /// assert_eq!(cfg.compute, ComputeTime::Constant(Duration::from_millis(1)));
    /// assert_eq!(cfg.seed, 1);
    /// ```
    pub fn new(rate_per_s: f64, delta: Duration, ttl: Duration, strategy: Strategy) -> Self {
        SimConfig {
            rate_per_s,
            compute: ComputeTime::Constant(delta),
            ttl,
            strategy,
            cycles: 10_000,
            seed: 1,
            thinning: true,
        }
    }
}

/// Running mean and variance (Welford).
#[derive(Debug, Clone, Copy, Default)]
struct Moments {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    fn std_error(&self) -> f64 {
        if self.n < 2 {
            return f64::INFINITY;
        }
        (self.m2 / (self.n - 1) as f64 / self.n as f64).sqrt()
    }
}

/// What a run measured; see the [module docs](self) for the definitions. Means come with their
/// standard errors, so that a comparison can check its own power.
///
/// ```
/// use herdless::sim::{simulate, SimConfig, Strategy};
/// use std::time::Duration;
/// let mut cfg = SimConfig::new(100.0, Duration::from_millis(100), Duration::from_secs(1), Strategy::PlainTtl);
/// cfg.cycles = 500;
/// let r = simulate(&cfg)?;
/// assert_eq!(r.hard_miss_fraction, 1.0); // plain TTL never refreshes early
/// assert!(r.mean_stampede > 5.0); // 1 + rδ = 11 on average
/// assert!((r.runs_per_cycle - r.mean_stampede).abs() < 1e-9);
/// assert_eq!(r.mean_lead, Duration::ZERO);
/// // Without coordination every waiter computes itself: it waits exactly δ.
/// assert!((r.mean_wait.as_secs_f64() - 0.1).abs() < 1e-9);
/// # Ok::<(), herdless::tune::TuneError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Cycles simulated.
    pub cycles: u64,
    /// Computations started.
    pub runs: u64,
    /// Calls (arrivals), skipped ones included.
    pub calls: u64,
    /// Cycles whose first computation started at or after expiry.
    pub hard_misses: u64,
    /// Cycles whose first write came after expiry.
    pub late_refreshes: u64,
    /// Calls that found no unexpired value and waited (for their own computation or another's).
    pub waiters: u64,
    /// `stampede_histogram[k]` = number of cycles with `k` computations (index 0 stays 0).
    pub stampede_histogram: Vec<u64>,
    /// Virtual time simulated.
    pub virtual_time: Duration,
    /// Mean computations per cycle: the stampede size.
    pub mean_stampede: f64,
    /// Standard error of `mean_stampede`.
    pub stampede_std_error: f64,
    /// `runs / cycles`; the same number as `mean_stampede`, every run belonging to one cycle.
    pub runs_per_cycle: f64,
    /// `runs / virtual_time`.
    pub runs_per_second: f64,
    /// Mean lead: how long before expiry a cycle's first computation started (0 on a hard miss).
    pub mean_lead: Duration,
    /// Standard error of `mean_lead`.
    pub lead_std_error: Duration,
    /// `hard_misses / cycles`.
    pub hard_miss_fraction: f64,
    /// `late_refreshes / cycles`.
    pub late_refresh_fraction: f64,
    /// Mean time a waiter waited (zero when nobody did).
    pub mean_wait: Duration,
}

/// Runs the simulation described by `cfg`.
///
/// # Errors
/// [`TuneError::InvalidField`] naming the field: a non-positive or non-finite `rate_per_s`, a zero
/// `ttl`, a zero or inverted `compute`, a negative, NaN or infinite `beta`, a zero `window`, a `p`
/// outside `[0, 1]`, or `cycles == 0`.
///
/// ```
/// use herdless::sim::{simulate, SimConfig, Strategy};
/// use herdless::tune::TuneError;
/// use std::time::Duration;
/// let cfg = SimConfig::new(10.0, Duration::from_millis(1), Duration::ZERO, Strategy::PlainTtl);
/// assert!(matches!(simulate(&cfg), Err(TuneError::InvalidField { field: "ttl", .. })));
/// ```
pub fn simulate(cfg: &SimConfig) -> Result<SimReport, TuneError> {
    validate(cfg)?;
    let mut sim = Sim::new(cfg);
    sim.run();
    Ok(sim.finish())
}

fn validate(cfg: &SimConfig) -> Result<(), TuneError> {
    let invalid = |field, reason| Err(TuneError::InvalidField { field, reason });
    check_rate(cfg.rate_per_s)?;
    check_nonzero("ttl", cfg.ttl)?;
    if cfg.cycles == 0 {
        return invalid("cycles", "must be at least 1");
    }
    use Strategy::{ConstantProbability as Cp, FixedWindow as Fw};
    match (cfg.compute, cfg.strategy) {
        (ComputeTime::Constant(d), _) if d.is_zero() => invalid("compute", "must be non-zero"),
        (ComputeTime::Uniform { min, max }, _) if min >= max => {
            invalid("compute", "Uniform needs min < max")
        }
        (_, Strategy::XFetch { beta } | Strategy::XFetchCoordinated { beta }) => {
            check_beta(beta).map(drop)
        }
        (_, Fw { window } | Cp { window, .. }) if window.is_zero() => {
            invalid("window", "must be non-zero")
        }
        (_, Cp { p, .. }) if !(0.0..=1.0).contains(&p) => invalid("p", "must be in [0, 1]"),
        _ => Ok(()),
    }
}

/// Calls in `[now, until)` act only with probability `p` ("candidates"); an XFetch candidate's
/// draw is conditioned on `e ≥ floor`.
#[derive(Debug, Clone, Copy)]
struct Block {
    p: f64,
    until: f64,
    floor: f64,
}

impl Block {
    const EVERY_CALL: Block = Block {
        p: 1.0,
        until: f64::INFINITY,
        floor: 0.0,
    };
}

/// The stored value: expiry (absolute, seconds) and the measured `delta` of its computation.
#[derive(Debug, Clone, Copy)]
struct Value {
    expiry: f64,
    delta: f64,
}

/// The open cycle: when its first computation started, the expiry it raced, how many started.
#[derive(Debug, Clone, Copy)]
struct Open {
    first_start: f64,
    expiry: f64,
    starts: usize,
}

struct Sim {
    cfg: SimConfig,
    rate: f64,
    ttl: f64,
    strategy: Strategy,
    rng: StdRng,
    t: f64,
    value: Option<Value>,
    /// Computations in flight as `(lands at, took)`, seconds as bits: non-negative `f64`s order
    /// like their bit patterns, so the min-heap needs no float ordering.
    in_flight: BinaryHeap<Reverse<(u64, u64)>>,
    open: Option<Open>,
    counts: Counts,
}

/// What [`Sim`] accumulates; [`Sim::finish`] turns it into a [`SimReport`].
#[derive(Debug, Default)]
struct Counts {
    cycles: u64,
    runs: u64,
    calls: u64,
    hard_misses: u64,
    late_refreshes: u64,
    waiters: u64,
    histogram: Vec<u64>,
    stampede: Moments,
    lead: Moments,
    wait_sum: f64,
}

impl Sim {
    fn new(cfg: &SimConfig) -> Self {
        let ttl = cfg.ttl.as_secs_f64();
        Sim {
            cfg: *cfg,
            rate: cfg.rate_per_s,
            ttl,
            strategy: cfg.strategy,
            rng: StdRng::seed_from_u64(cfg.seed),
            t: 0.0,
            // Warm start: a value was just written by a computation of mean length.
            value: Some(Value {
                expiry: ttl,
                delta: match cfg.compute {
                    ComputeTime::Constant(d) => d,
                    ComputeTime::Uniform { min, max } => (min + max) / 2,
                }
                .as_secs_f64(),
            }),
            in_flight: BinaryHeap::new(),
            open: None,
            counts: Counts::default(),
        }
    }

    fn run(&mut self) {
        // Time-change form of the (thinned) arrival process: `budget` is the cumulative candidate
        // intensity left until the next candidate call, an Exp(1) draw.
        let mut budget: f64 = self.rng.sample(Exp1);
        let mut skipped_mass = 0.0;
        while self.counts.cycles < self.cfg.cycles {
            let land = self.next_landing();
            let block = self.block();
            let end = block.until.min(land);
            let lambda = self.rate * block.p;
            if lambda > 0.0 && budget <= lambda * (end - self.t) {
                let at = self.t + budget / lambda;
                skipped_mass += self.rate * (1.0 - block.p) * (at - self.t);
                self.t = at;
                self.counts.calls += 1;
                self.arrive(&block);
                budget = self.rng.sample(Exp1);
            } else {
                budget -= lambda * (end - self.t);
                skipped_mass += self.rate * (1.0 - block.p) * (end - self.t);
                self.t = end;
                if end == land {
                    let Reverse((_, took)) = self.in_flight.pop().expect("peeked");
                    self.land(f64::from_bits(took));
                }
            }
        }
        // Calls that could not act, counted in one draw: a sum of Poisson counts is Poisson.
        self.counts.calls += match Poisson::new(skipped_mass) {
            Ok(p) => p.sample(&mut self.rng) as u64,
            Err(_) => skipped_mass.max(0.0) as u64, // zero, or too large to sample: the mean
        };
    }

    fn finish(self) -> SimReport {
        let c = self.counts;
        let secs = self.t.max(0.0);
        let per_cycle = |n: u64| n as f64 / c.cycles as f64;
        SimReport {
            cycles: c.cycles,
            runs: c.runs,
            calls: c.calls,
            hard_misses: c.hard_misses,
            late_refreshes: c.late_refreshes,
            waiters: c.waiters,
            stampede_histogram: c.histogram,
            virtual_time: Duration::from_secs_f64(secs),
            mean_stampede: c.stampede.mean,
            stampede_std_error: c.stampede.std_error(),
            runs_per_cycle: per_cycle(c.runs),
            runs_per_second: c.runs as f64 / secs,
            mean_lead: Duration::from_secs_f64(c.lead.mean.max(0.0)),
            lead_std_error: Duration::from_secs_f64(c.lead.std_error().min(1e9)),
            hard_miss_fraction: per_cycle(c.hard_misses),
            late_refresh_fraction: per_cycle(c.late_refreshes),
            mean_wait: if c.waiters == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(c.wait_sum / c.waiters as f64)
            },
        }
    }

    /// Which calls from now on can act, and until when that holds (exact, not a heuristic).
    fn block(&self) -> Block {
        let t = self.t;
        let v = match self.value {
            Some(v) if t < v.expiry => v,
            _ => return Block::EVERY_CALL, // hard miss: every call computes or waits
        };
        let quiet = |until| Block {
            p: 0.0,
            until,
            floor: 0.0,
        };
        if self.strategy.is_coordinated() && !self.in_flight.is_empty() {
            return quiet(v.expiry); // the lock is taken: only waiting after expiry can happen
        }
        let gap = v.expiry - t;
        let window = |w: Duration, p: f64| {
            let w = w.as_secs_f64();
            if gap > w && v.expiry - w > t {
                quiet(v.expiry - w)
            } else {
                Block {
                    p,
                    until: v.expiry,
                    floor: 0.0,
                }
            }
        };
        match self.strategy {
            Strategy::PlainTtl | Strategy::Barrier => quiet(v.expiry),
            Strategy::XFetch { beta } | Strategy::XFetchCoordinated { beta } => {
                let s = v.delta * beta;
                if s <= 0.0 {
                    return quiet(v.expiry);
                }
                if !draw_needed(gap, v.delta, beta) && v.expiry - s * E_MAX > t {
                    return quiet(v.expiry - s * E_MAX);
                }
                if !self.cfg.thinning {
                    return Block {
                        until: v.expiry,
                        ..Block::EVERY_CALL
                    };
                }
                // Calls with gap ≥ lo trigger only if their draw is ≥ lo/s.
                let mut lo = (gap - s).max(0.0);
                let mut until = v.expiry - lo;
                if until <= t {
                    (lo, until) = (0.0, v.expiry);
                }
                let floor = lo / s;
                Block {
                    p: (-floor).exp(),
                    until,
                    floor,
                }
            }
            Strategy::FixedWindow { window: w } => window(w, 1.0),
            Strategy::ConstantProbability { p, window: w } => {
                window(w, if self.cfg.thinning { p } else { 1.0 })
            }
        }
    }

    /// A candidate call arrives at `self.t`.
    fn arrive(&mut self, block: &Block) {
        let t = self.t;
        match self.value {
            Some(v) if t < v.expiry => {
                let gap = v.expiry - t;
                let trigger = match self.strategy {
                    Strategy::PlainTtl | Strategy::Barrier => false,
                    Strategy::XFetch { beta } | Strategy::XFetchCoordinated { beta } => {
                        // Exp(1) is memoryless: a draw conditioned on e ≥ floor is floor + Exp(1).
                        let e = block.floor + exp1_from_bits(self.rng.next_u64());
                        decide(gap, v.delta, beta, e) == Decision::RefreshEarly
                    }
                    Strategy::FixedWindow { window } => {
                        gap <= window.as_secs_f64() * self.rng.random::<f64>()
                    }
                    // Thinned, only the calls whose coin came up are simulated.
                    Strategy::ConstantProbability { p, .. } => {
                        self.cfg.thinning || self.rng.random_bool(p)
                    }
                };
                // A coordinated trigger must win the lock. (While it is taken, `block` skips the
                // calls anyway: they can neither refresh nor wait.)
                let lock_free = !self.strategy.is_coordinated() || self.in_flight.is_empty();
                if trigger && lock_free {
                    self.start();
                }
            }
            _ => {
                // Hard miss: no unexpired value.
                self.counts.waiters += 1;
                let waited = if self.strategy.is_coordinated() && !self.in_flight.is_empty() {
                    self.next_landing() - t
                } else {
                    self.start()
                };
                self.counts.wait_sum += waited;
            }
        }
    }

    /// Starts a computation now; returns how long it takes.
    fn start(&mut self) -> f64 {
        let took = match self.cfg.compute {
            ComputeTime::Constant(d) => d.as_secs_f64(),
            ComputeTime::Uniform { min, max } => {
                self.rng.random_range(min.as_secs_f64()..max.as_secs_f64())
            }
        };
        let t = self.t;
        let expiry = self.value.map_or(t, |v| v.expiry);
        let open = self.open.get_or_insert(Open {
            first_start: t,
            expiry,
            starts: 0,
        });
        open.starts += 1;
        self.counts.runs += 1;
        self.in_flight
            .push(Reverse(((t + took).to_bits(), took.to_bits())));
        took
    }

    fn next_landing(&self) -> f64 {
        self.in_flight
            .peek()
            .map_or(f64::INFINITY, |Reverse((at, _))| f64::from_bits(*at))
    }

    /// The computation that took `took` writes its value now; the open cycle, if any, closes.
    fn land(&mut self, took: f64) {
        let at = self.t;
        self.value = Some(Value {
            expiry: at + self.ttl,
            delta: took,
        });
        let Some(open) = self.open.take() else {
            return;
        };
        let r = &mut self.counts;
        r.cycles += 1;
        if r.histogram.len() <= open.starts {
            r.histogram.resize(open.starts + 1, 0);
        }
        r.histogram[open.starts] += 1;
        r.stampede.push(open.starts as f64);
        r.lead.push((open.expiry - open.first_start).max(0.0));
        if open.first_start >= open.expiry {
            r.hard_misses += 1;
        }
        if at > open.expiry {
            r.late_refreshes += 1;
        }
    }
}
