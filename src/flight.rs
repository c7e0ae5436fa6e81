//! In-process single-flight: one leader per key, everyone else waits for its outcome.
//!
//! A [`FlightMap`] maps keys to in-progress [`Flight`]s. The first caller becomes the leader;
//! later callers get the flight and wait on its event. The leader either finishes (publishes
//! its outcome to all waiters) or is dropped unfinished (panic, cancelled future), in which case
//! the flight is marked abandoned and waiters race to lead a fresh flight: nobody hangs and the
//! key is never poisoned.
//!
//! The same mechanism serves as a per-key mutex for the barrier layer ([`LocalLock`](crate::LocalLock)):
//! waiters simply ignore the outcome and join again. [`RefreshSlots`] holds the other per-key
//! state of the engine: which keys refresh in the background, and which back off after a
//! failed refresh.

use crate::wait::{Event, Mutex, MutexGuard, WaitMode};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::time::Instant;

const SHARDS: usize = 64;

enum Slot<T> {
    Running,
    Done(T),
    Abandoned,
}

/// One in-progress computation of one key.
pub(crate) struct Flight<T> {
    slot: Mutex<Slot<T>>,
    event: Event,
    /// Callers that joined as followers (so the leader knows whether anyone waits).
    followers: std::sync::atomic::AtomicUsize,
}

/// How waiting on a flight ended.
pub(crate) enum Waited<T> {
    Done(T),
    Abandoned,
    TimedOut,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic never happens while these locks are held (no user code runs under them), but be
    // robust anyway: the data is always consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: Clone> Flight<T> {
    fn poll_slot(&self) -> Option<Waited<T>> {
        match &*lock(&self.slot) {
            Slot::Running => None,
            Slot::Done(v) => Some(Waited::Done(v.clone())),
            Slot::Abandoned => Some(Waited::Abandoned),
        }
    }

    /// Waits for the leader's outcome, up to `deadline` (no deadline: wait as long as it takes).
    pub(crate) async fn wait(&self, mode: WaitMode, deadline: Option<Instant>) -> Waited<T> {
        loop {
            if let Some(w) = self.poll_slot() {
                return w;
            }
            // Listen first, then re-check: a notification between the check and the listen
            // would otherwise be lost.
            let listener = self.event.listen();
            if let Some(w) = self.poll_slot() {
                return w;
            }
            if !mode.wait(listener, deadline).await {
                return self.poll_slot().unwrap_or(Waited::TimedOut);
            }
        }
    }
}

type Shard<K, T> = Mutex<HashMap<K, Arc<Flight<T>>>>;

/// Keys with a running flight, sharded to keep unrelated keys off each other's locks.
pub(crate) struct FlightMap<K, T> {
    shards: Box<[Shard<K, T>]>,
    hasher: RandomState,
}

/// The result of [`FlightMap::join`].
pub(crate) enum Joined<K: Hash + Eq, T> {
    Leader(Leader<K, T>),
    Follower(Arc<Flight<T>>),
}

impl<K: Hash + Eq + Clone, T> FlightMap<K, T> {
    pub(crate) fn new() -> Self {
        FlightMap {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &Shard<K, T> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Becomes the leader for `key`, or follows the flight already running.
    pub(crate) fn join(self: &Arc<Self>, key: &K) -> Joined<K, T> {
        let mut shard = lock(self.shard(key));
        if let Some(f) = shard.get(key) {
            f.followers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Joined::Follower(f.clone());
        }
        let flight = Arc::new(Flight {
            slot: Mutex::new(Slot::Running),
            event: Event::new(),
            followers: std::sync::atomic::AtomicUsize::new(0),
        });
        shard.insert(key.clone(), flight.clone());
        Joined::Leader(Leader {
            map: self.clone(),
            key: key.clone(),
            flight,
            finished: false,
        })
    }

    /// Number of running flights (for tests and debugging).
    #[allow(dead_code)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// The one caller of a flight that computes. Dropping it unfinished abandons the flight.
pub(crate) struct Leader<K: Hash + Eq, T> {
    map: Arc<FlightMap<K, T>>,
    key: K,
    flight: Arc<Flight<T>>,
    finished: bool,
}

impl<K: Hash + Eq, T> Leader<K, T> {
    fn end(&mut self, slot: Slot<T>) {
        self.finished = true;
        {
            // Retire the flight and publish its outcome under the shard lock, so no joiner can
            // find a flight that is already over: a waiter that sees `Abandoned` and joins again
            // gets a fresh flight instead of spinning on the old one until the leader gets the
            // CPU back (found by the shuttle checks below).
            let mut shard =
                lock(&self.map.shards[self.map.hasher.hash_one(&self.key) as usize % SHARDS]);
            if shard
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                shard.remove(&self.key);
            }
            *lock(&self.flight.slot) = slot;
        }
        self.flight.event.notify(usize::MAX);
    }

    /// Publishes the outcome to every waiter and retires the flight; returns how many callers
    /// joined it as followers.
    pub(crate) fn finish(mut self, value: T) -> usize {
        self.end(Slot::Done(value));
        self.flight
            .followers
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<K: Hash + Eq, T> Drop for Leader<K, T> {
    fn drop(&mut self) {
        if !self.finished {
            self.end(Slot::Abandoned);
        }
    }
}

/// Per-key state of background refreshes: at most one runs per key, and a failed one backs off.
pub(crate) struct RefreshSlots<K> {
    shards: Box<[Mutex<HashMap<K, RefreshState>>]>,
    hasher: RandomState,
}

#[derive(Clone, Copy)]
enum RefreshState {
    Running,
    BackoffUntil(u64),
}

impl<K: Hash + Eq + Clone> RefreshSlots<K> {
    pub(crate) fn new() -> Self {
        RefreshSlots {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, HashMap<K, RefreshState>> {
        lock(&self.shards[self.hasher.hash_one(key) as usize % SHARDS])
    }

    /// Claims the refresh of `key` at time `now`; false if one runs or a failure backs off.
    pub(crate) fn try_begin(&self, key: &K, now: u64) -> bool {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(RefreshState::Running) => false,
            Some(RefreshState::BackoffUntil(t)) if now < *t => false,
            _ => {
                shard.insert(key.clone(), RefreshState::Running);
                true
            }
        }
    }

    /// Ends a refresh (or a successful hard miss): the key may refresh again at any time.
    pub(crate) fn clear(&self, key: &K) {
        let mut shard = self.shard(key);
        if let Some(RefreshState::BackoffUntil(_)) | Some(RefreshState::Running) = shard.get(key) {
            shard.remove(key);
        }
    }

    /// Clears a backoff left by an earlier failure, leaving a running refresh alone.
    pub(crate) fn clear_backoff(&self, key: &K) {
        let mut shard = self.shard(key);
        if let Some(RefreshState::BackoffUntil(_)) = shard.get(key) {
            shard.remove(key);
        }
    }

    /// Ends a failed refresh: no new refresh of `key` before `until`.
    pub(crate) fn back_off(&self, key: &K, until: u64) {
        self.shard(key)
            .insert(key.clone(), RefreshState::BackoffUntil(until));
    }
}
