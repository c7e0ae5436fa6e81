//! Circuit breakers: one for a single-node store, one per slot range for a cluster store, so
//! that one sick shard does not send the callers of every other shard into local computation.
// The per-range half is used only by cluster stores.
#![cfg_attr(not(feature = "cluster"), allow(dead_code))]

use crate::clock::saturating_nanos;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Hash slots in a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;
/// Slots per breaker on a cluster store: 64 ranges of 256 slots. A range, not a node, because
/// redis-rs owns the slot-to-node map (and changes it under us on failover and resharding); a
/// master owns whole runs of slots (`redis-cli --cluster create` gives each of 3 masters about
/// 5461), so a range lies within one master except the few that straddle a boundary. Smaller
/// ranges would isolate more precisely, but each range pays `threshold` failures before it opens.
pub(crate) const SLOTS_PER_RANGE: u16 = 256;

/// Trips after `threshold` consecutive failures; while open, calls fail at once instead of
/// paying a timeout each. After `cooldown` one probe is let through (half-open); its success
/// closes the circuit, its failure re-opens it. A cluster store also probes an open range in
/// the background (see `Conn::watch`), closing it as soon as the range's master answers.
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    origin: Instant,
    failures: AtomicU32,
    /// Nanoseconds since `origin` until which the circuit is open; 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
    /// A background prober watches this (open) breaker.
    watched: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            origin: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            watched: AtomicBool::new(false),
        }
    }
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
    /// May a call go to the server now?
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.now() < until {
            return false;
        }
        // Half-open: exactly one probe at a time.
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
    pub(crate) fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }
    /// Returns true when this failure opened the circuit.
    pub(crate) fn failure(&self) -> bool {
        let f = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        if f >= self.threshold || was_probe {
            let until = self.now().saturating_add(saturating_nanos(self.cooldown));
            self.open_until.store(until.max(1), Ordering::Release);
            return true;
        }
        false
    }
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
    /// Claims the watch of this breaker for one background prober: true when open and nobody
    /// else watches it.
    pub(crate) fn claim_watch(&self) -> bool {
        self.is_open()
            && self
                .watched
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
    /// Ends the watch; true when the breaker is open again and this prober took it back (a
    /// failure that opened it meanwhile found it still watched and spawned no prober).
    pub(crate) fn end_watch(&self) -> bool {
        self.watched.store(false, Ordering::Release);
        self.claim_watch()
    }
}

/// The breakers of one store: one (single node), or one per slot range (cluster).
pub(crate) struct Breakers {
    all: Vec<Breaker>,
}

impl Breakers {
    /// One breaker for the whole server.
    pub(crate) fn single(threshold: u32, cooldown: Duration) -> Self {
        Breakers {
            all: vec![Breaker::new(threshold, cooldown)],
        }
    }

    /// One breaker per [`SLOTS_PER_RANGE`] slots.
    pub(crate) fn per_range(threshold: u32, cooldown: Duration) -> Self {
        let n = SLOTS.div_ceil(SLOTS_PER_RANGE) as usize;
        Breakers {
            all: (0..n).map(|_| Breaker::new(threshold, cooldown)).collect(),
        }
    }

    /// The breaker of range `i` (the only one, for a single node).
    pub(crate) fn get(&self, i: usize) -> &Breaker {
        &self.all[i.min(self.all.len() - 1)]
    }

    /// The breaker guarding hash slot `slot`.
    pub(crate) fn range_of(slot: u16) -> usize {
        (slot % SLOTS / SLOTS_PER_RANGE) as usize
    }

    /// True while any circuit is open.
    pub(crate) fn any_open(&self) -> bool {
        self.all.iter().any(Breaker::is_open)
    }

    /// A connection was (re-)established: close every circuit.
    pub(crate) fn success_all(&self) {
        self.all.iter().for_each(Breaker::success);
    }
}

/// The `Touch` of every single-node direct call: nothing routes, claims or rejects through
/// it (only a cluster's routed connection does), so one shared value serves them all.
pub(crate) static UNTOUCHED: std::sync::LazyLock<std::sync::Arc<Touch>> =
    std::sync::LazyLock::new(Default::default);

/// What one call touched: the breaker range of its first keyed command, and whether that
/// breaker refused it. Read by the caller after the request to book the outcome.
#[derive(Default)]
pub(crate) struct Touch {
    /// Range index + 1; 0 = no keyed command was sent.
    range: AtomicUsize,
    rejected: AtomicBool,
}

impl Touch {
    /// The breaker range this call's outcome belongs to.
    pub(crate) fn range(&self) -> Option<usize> {
        self.range.load(Ordering::Acquire).checked_sub(1)
    }
    /// True when the range's breaker refused the call.
    pub(crate) fn rejected(&self) -> bool {
        self.rejected.load(Ordering::Acquire)
    }
    /// Records the call's range; false if an earlier command of the call already did.
    pub(crate) fn claim(&self, range: usize) -> bool {
        self.range
            .compare_exchange(0, range + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
    /// The range's breaker refused the call.
    pub(crate) fn reject(&self) {
        self.rejected.store(true, Ordering::Release);
    }
}
