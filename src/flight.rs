//! In-process single-flight: one leader per key, everyone else waits for its outcome.
//!
//! A [`FlightMap`] maps keys to in-progress [`Flight`]s. The first caller becomes the leader;
//! later callers get the flight and wait on its event. The leader either finishes (publishes
//! its outcome to all waiters), hands the flight back (its own contention policy gave up: the
//! waiters join again under theirs), or is dropped unfinished (a failed refresh, a future
//! cancelled before it computed), in which case the flight is marked abandoned and waiters race
//! to lead a fresh flight: nobody hangs and the key is never poisoned. (A hard miss's
//! computation runs detached from the caller that started it, so a caller giving up does not
//! abandon it; see `miss`.)
//!
//! The same mechanism serves as a per-key mutex for the barrier layer ([`LocalLock`](crate::LocalLock)):
//! waiters simply ignore the outcome and join again. [`RefreshSlots`] holds the other per-key
//! state of the engine: which keys refresh in the background, and which back off after a
//! failed refresh.

use crate::wait::{Event, Mutex, MutexGuard, WaitMode};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    followers: AtomicUsize,
    /// The leader gave the flight back unfinished on purpose ([`Leader::hand_back`]): its
    /// outcome was its own (its contention policy gave up), not one to share, and nothing failed.
    handed_back: AtomicBool,
    /// Followers whose ticket is below this get the outcome; later ones are handed back
    /// ([`Leader::finish_for_earlier`]): the outcome was read before they joined.
    share_below: AtomicUsize,
    /// When followers stop waiting for a leader that has not answered ([`Leader::give_up_after`]).
    give_up_at: std::sync::OnceLock<Instant>,
    /// Followers gave up on this flight at `give_up_at` ([`Follower::gave_up`]).
    gave_up: AtomicBool,
}

tokio::task_local! {
    /// The flights the current computation leads, outermost first: set around a leader's
    /// closure ([`leading`]) and inherited by the leaders it starts in turn. A task-local is a
    /// value swapped in while the scoped future is polled, so it follows an async closure onto
    /// its own Tokio task and a blocking closure through its nested `block_on` alike, and it
    /// does not leak into tasks or threads the closure spawns (those may wait without a cycle).
    static LEADING: Vec<usize>;
}

/// Runs `fut` (a leader's computation) as the leader of `flights`, on top of the flights the
/// calling computation already leads: a call inside it that would wait for one of them would
/// wait for itself ([`Follower::led_by_caller`]).
pub(crate) fn leading<F: std::future::Future>(
    flights: impl IntoIterator<Item = FlightId>,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    let mut ids = LEADING.try_with(|ids| ids.clone()).unwrap_or_default();
    ids.extend(flights.into_iter().map(|f| f.0));
    LEADING.scope(ids, fut)
}

/// Which flight a leader owns (its address, stable while the leader holds it).
#[derive(Clone, Copy)]
pub(crate) struct FlightId(usize);

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

/// A caller that joined a running flight: it waits for the leader's outcome. Its ticket is its
/// place in the order of joining, which decides whether an outcome read at a given moment may
/// be handed to it ([`Leader::finish_for_earlier`]).
pub(crate) struct Follower<T> {
    flight: Arc<Flight<T>>,
    ticket: usize,
}

impl<T> Follower<T> {
    /// True when the followers gave up on a leader that did not answer in time
    /// ([`Leader::give_up_after`]); its computation may still be running.
    pub(crate) fn gave_up(&self) -> bool {
        self.flight.gave_up.load(Ordering::Acquire)
    }

    /// True when the flight ended without an outcome for this follower, and nothing failed: the
    /// leader's own patience ran out, or its outcome predates this follower's call. The
    /// follower joins again under its own policy.
    pub(crate) fn handed_back(&self) -> bool {
        self.flight.handed_back.load(Ordering::Acquire)
            || self.ticket >= self.flight.share_below.load(Ordering::Acquire)
    }
}

impl<T> Follower<T> {
    /// True when the caller itself (this thread's or this task's computation, or one it waits
    /// for) leads this flight: waiting would wait for itself until the patience runs out.
    pub(crate) fn led_by_caller(&self) -> bool {
        let me = Arc::as_ptr(&self.flight) as *const () as usize;
        LEADING.try_with(|ids| ids.contains(&me)).unwrap_or(false)
    }
}

impl<T: Clone> Follower<T> {
    fn poll_slot(&self) -> Option<Waited<T>> {
        match &*lock(&self.flight.slot) {
            Slot::Running => None,
            Slot::Done(_) if self.ticket >= self.flight.share_below.load(Ordering::Acquire) => {
                Some(Waited::Abandoned)
            }
            Slot::Done(v) => Some(Waited::Done(v.clone())),
            Slot::Abandoned => Some(Waited::Abandoned),
        }
    }

    /// Waits for the leader's outcome, up to `deadline` (no deadline: wait as long as it takes).
    /// A flight whose leader set [`Leader::give_up_after`] ends as `Abandoned` for every
    /// follower once that moment passes unanswered ([`Follower::gave_up`] then says so).
    pub(crate) async fn wait(&self, mode: WaitMode, deadline: Option<Instant>) -> Waited<T> {
        loop {
            if let Some(w) = self.poll_slot() {
                return w;
            }
            // Listen first, then re-check: a notification between the check and the listen
            // would otherwise be lost.
            let listener = self.flight.event.listen();
            if let Some(w) = self.poll_slot() {
                return w;
            }
            let give_up = self.flight.give_up_at.get().copied();
            let until = match (deadline, give_up) {
                (Some(d), Some(g)) => Some(d.min(g)),
                (d, g) => d.or(g),
            };
            if !mode.wait(listener, until).await {
                if let Some(w) = self.poll_slot() {
                    return w;
                }
                if give_up.is_some_and(|g| Instant::now() >= g) {
                    self.give_up();
                    continue;
                }
                return Waited::TimedOut;
            }
        }
    }

    /// Ends a flight whose leader is past its [`Leader::give_up_after`] moment: every follower
    /// sees `Abandoned` and later callers start a new flight (see `FlightMap::join`).
    fn give_up(&self) {
        let mut slot = lock(&self.flight.slot);
        if let Slot::Running = *slot {
            self.flight.gave_up.store(true, Ordering::Release);
            *slot = Slot::Abandoned;
            drop(slot);
            self.flight.event.notify(usize::MAX);
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
    Follower(Follower<T>),
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
        // A flight its followers gave up on is over for joiners, though its leader still runs.
        if let Some(f) = shard
            .get(key)
            .filter(|f| !f.gave_up.load(Ordering::Acquire))
        {
            let ticket = f.followers.fetch_add(1, Ordering::AcqRel);
            return Joined::Follower(Follower {
                flight: f.clone(),
                ticket,
            });
        }
        let flight = Arc::new(Flight {
            slot: Mutex::new(Slot::Running),
            event: Event::new(),
            followers: AtomicUsize::new(0),
            handed_back: AtomicBool::new(false),
            share_below: AtomicUsize::new(usize::MAX),
            give_up_at: std::sync::OnceLock::new(),
            gave_up: AtomicBool::new(false),
        });
        shard.insert(key.clone(), flight.clone());
        Joined::Leader(Leader {
            map: self.clone(),
            key: key.clone(),
            flight,
            finished: false,
        })
    }

    /// Becomes the leader of a new flight for `key` whatever runs: a flight already running is
    /// detached (its followers still get its outcome) and later callers join the new one. For
    /// `refresh()`, whose answer must be computed after it was called.
    pub(crate) fn lead_anew(self: &Arc<Self>, key: &K) -> Leader<K, T> {
        self.detach(key);
        loop {
            match self.join(key) {
                Joined::Leader(l) => return l,
                // Another caller started a flight between the detach and the join: it started
                // after this call too, but its outcome may be a read; start a flight of our own.
                Joined::Follower(_) => self.detach(key),
            }
        }
    }

    /// Detaches `key`'s running flight, if any: callers that already joined it still get its
    /// outcome, later callers start a flight of their own. An invalidation does this, so that a
    /// call starting after `invalidate` returned never joins a computation that started before
    /// it (and may have read the data the invalidation was about).
    pub(crate) fn detach(&self, key: &K) {
        lock(self.shard(key)).remove(key);
    }

    /// [`FlightMap::detach`] for every key (`invalidate_all`).
    pub(crate) fn detach_all(&self) {
        for shard in self.shards.iter() {
            lock(shard).clear();
        }
    }

    /// Number of running flights (for tests and debugging).
    #[allow(dead_code)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// How many followers had joined a flight at a moment ([`Leader::mark`]).
#[derive(Clone, Copy)]
pub(crate) struct JoinMark(usize);

/// The one caller of a flight that computes. Dropping it unfinished abandons the flight.
pub(crate) struct Leader<K: Hash + Eq, T> {
    map: Arc<FlightMap<K, T>>,
    key: K,
    flight: Arc<Flight<T>>,
    finished: bool,
}

impl<K: Hash + Eq, T> Leader<K, T> {
    /// This leader's flight, for [`leading`].
    pub(crate) fn id(&self) -> FlightId {
        FlightId(Arc::as_ptr(&self.flight) as *const () as usize)
    }

    fn end(&mut self, slot: Slot<T>) {
        self.finished = true;
        {
            // Retire the flight and publish its outcome under the shard lock, so no joiner can
            // find a flight that is already over: a waiter that sees `Abandoned` and joins again
            // gets a fresh flight instead of spinning on the old one until the leader gets the
            // CPU back (found by the shuttle checks below).
            let _shard = self.unlist();
            let mut current = lock(&self.flight.slot);
            if !self.flight.gave_up.load(Ordering::Acquire) {
                *current = slot;
            }
        }
        self.flight.event.notify(usize::MAX);
    }

    /// Takes this flight off the map if it is still the key's flight (an invalidation may have
    /// detached it and a newer one may run), returning the shard lock still held.
    fn unlist(&self) -> MutexGuard<'_, HashMap<K, Arc<Flight<T>>>> {
        let mut shard =
            lock(&self.map.shards[self.map.hasher.hash_one(&self.key) as usize % SHARDS]);
        if shard
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            shard.remove(&self.key);
        }
        shard
    }

    /// Closes the flight to new followers (those already waiting still get its outcome): the
    /// leader's value is about to be written to a shared store, and an invalidation in another
    /// process may land between that write and the outcome reaching this process. A call that
    /// starts after such an invalidation returned must not be handed this value, so from here
    /// on later callers start a flight of their own, which reads the store.
    pub(crate) fn close_to_joiners(&self) {
        drop(self.unlist());
    }

    /// Publishes the outcome to every waiter and retires the flight; returns how many callers
    /// joined it as followers.
    pub(crate) fn finish(mut self, value: T) -> usize {
        self.end(Slot::Done(value));
        self.flight.followers.load(Ordering::Relaxed)
    }

    /// Followers stop waiting for this leader at `at` and take over (a background refresh
    /// that may never return must not hold its callers for their whole patience).
    pub(crate) fn give_up_after(&self, at: Instant) {
        let _ = self.flight.give_up_at.set(at);
    }

    /// Marks the moment the leader starts observing the world for an outcome it will share
    /// without writing it (a read that found a value): see [`Leader::finish_for_earlier`].
    pub(crate) fn mark(&self) -> JoinMark {
        JoinMark(self.flight.followers.load(Ordering::Acquire))
    }

    /// Publishes an outcome that was read after `mark` only to the followers that joined
    /// before it; later ones are handed back and join again. A follower that joined after the
    /// read was sent may have started after an invalidation that the read did not see (in
    /// another process, which cannot detach this flight), so the read is no answer for it.
    /// Returns how many followers got the outcome.
    pub(crate) fn finish_for_earlier(mut self, mark: JoinMark, value: T) -> usize {
        self.flight.share_below.store(mark.0, Ordering::Release);
        self.end(Slot::Done(value));
        mark.0
    }

    /// Retires the flight without an outcome to share: the leader's own contention policy gave
    /// up (fail-fast, or its wait ran out behind another process's lock). Followers are not
    /// bound by the leader's patience: they join again, and one of them leads with its own.
    pub(crate) fn hand_back(mut self) {
        self.flight.handed_back.store(true, Ordering::Release);
        self.end(Slot::Abandoned);
    }
}

impl<K: Hash + Eq, T> Drop for Leader<K, T> {
    fn drop(&mut self) {
        if !self.finished {
            self.end(Slot::Abandoned);
        }
    }
}

/// Background refreshes one function runs at once by default (see `Builder::max_refreshes`).
pub(crate) const DEFAULT_MAX_REFRESHES: usize = 16;
/// Backoff entries one shard holds before it forgets expired ones (then it waits for as many
/// new ones as it kept, so each entry is scanned O(1) times on average).
const BACKOFF_PURGE_MIN: usize = 64;
/// Hard bound on one shard's entries after a purge (64 shards: 64 Ki backoffs per function).
/// Past it, unexpired backoffs are forgotten too: such a key may only retry sooner.
const BACKOFF_CAP: usize = 1024;

/// Per-key state of background refreshes: at most one runs per key, at most `limit` run at
/// once, and a failed one backs off. Backoffs of keys that never refresh again are forgotten
/// once expired, and never exceed [`BACKOFF_CAP`] per shard.
pub(crate) struct RefreshSlots<K> {
    shards: Box<[Mutex<SlotShard<K>>]>,
    hasher: RandomState,
    /// Refreshes claimed and not yet ended, and how many may be.
    running: AtomicUsize,
    limit: usize,
    next_id: std::sync::atomic::AtomicU64,
}

struct SlotShard<K> {
    map: HashMap<K, RefreshState>,
    /// The size at which the next [`RefreshSlots::back_off`] purges expired backoffs.
    purge_at: usize,
}

#[derive(Clone, Copy)]
enum RefreshState {
    /// Claim `id` runs; past `until` (engine clock) it counts as hung and a new trigger may
    /// take the slot over (the hung one's later end is then ignored).
    Running {
        id: u64,
        until: u64,
    },
    BackoffUntil(u64),
}

/// The answer of [`RefreshSlots::try_begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Begin {
    /// Claimed: this caller refreshes the key and must end the claim.
    Started,
    /// The key refreshes already, or backs off after a failure.
    Busy,
    /// The function already runs its maximum of refreshes.
    Full,
}

impl<K: Hash + Eq + Clone> RefreshSlots<K> {
    #[allow(dead_code)] // the shuttle checks use the default limit
    pub(crate) fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_REFRESHES)
    }

    pub(crate) fn with_limit(limit: usize) -> Self {
        RefreshSlots {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(SlotShard {
                        map: HashMap::new(),
                        purge_at: BACKOFF_PURGE_MIN,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            running: AtomicUsize::new(0),
            limit,
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, SlotShard<K>> {
        lock(&self.shards[self.hasher.hash_one(key) as usize % SHARDS])
    }

    /// Claims the refresh of `key` at time `now`, within the limit of concurrent refreshes.
    #[allow(dead_code)] // the shuttle checks claim without a hang bound
    pub(crate) fn try_begin(&self, key: &K, now: u64) -> Begin {
        match self.try_claim(key, now, u64::MAX) {
            Ok(_) => Begin::Started,
            Err(busy_or_full) => busy_or_full,
        }
    }

    /// [`RefreshSlots::try_begin`] for a claim that counts as hung from `until` on: a claim
    /// past its `until` no longer blocks the key (nor holds a place in the limit); a new one
    /// takes its place. Returns the claim's id for [`RefreshSlots::end`] and
    /// [`RefreshSlots::back_off_claim`].
    pub(crate) fn try_claim(&self, key: &K, now: u64, until: u64) -> Result<u64, Begin> {
        let mut shard = self.shard(key);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match shard.map.get(key) {
            Some(RefreshState::Running { until: hung_at, .. }) if now >= *hung_at => {
                // The hung claim's place in the limit passes to this one.
                shard
                    .map
                    .insert(key.clone(), RefreshState::Running { id, until });
                Ok(id)
            }
            Some(RefreshState::Running { .. }) => Err(Begin::Busy),
            Some(RefreshState::BackoffUntil(t)) if now < *t => Err(Begin::Busy),
            _ => {
                // Counted under the shard lock, so the key's state and the count move together.
                if self.running.fetch_add(1, Ordering::AcqRel) >= self.limit {
                    self.running.fetch_sub(1, Ordering::AcqRel);
                    return Err(Begin::Full);
                }
                shard
                    .map
                    .insert(key.clone(), RefreshState::Running { id, until });
                Ok(id)
            }
        }
    }

    /// Ends a claimed refresh: the key may refresh again at any time.
    #[allow(dead_code)] // the shuttle checks end claims by key
    pub(crate) fn clear(&self, key: &K) {
        let mut shard = self.shard(key);
        match shard.map.get(key) {
            Some(RefreshState::Running { .. }) => {
                shard.map.remove(key);
                self.running.fetch_sub(1, Ordering::AcqRel);
            }
            Some(RefreshState::BackoffUntil(_)) => {
                shard.map.remove(key);
            }
            None => {}
        }
    }

    /// Ends claim `id`, if it still holds the key (a hung claim that was taken over does not).
    pub(crate) fn end(&self, key: &K, id: u64) {
        let mut shard = self.shard(key);
        if let Some(RefreshState::Running { id: held, .. }) = shard.map.get(key) {
            if *held == id {
                shard.map.remove(key);
                self.running.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Ends failed claim `id` at `now`: no new refresh of `key` before `until`. A claim that
    /// was taken over leaves the key to its successor.
    pub(crate) fn back_off_claim(&self, key: &K, id: u64, now: u64, until: u64) {
        let shard = self.shard(key);
        match shard.map.get(key) {
            Some(RefreshState::Running { id: held, .. }) if *held != id => return,
            _ => {}
        }
        drop(shard);
        self.back_off(key, now, until);
    }

    /// True while `key` backs off after a failure, at `now`.
    pub(crate) fn backing_off(&self, key: &K, now: u64) -> bool {
        matches!(self.shard(key).map.get(key), Some(RefreshState::BackoffUntil(t)) if now < *t)
    }

    /// Records a failed recomputation of `key` (not a refresh claim): no refresh before `until`,
    /// unless a refresh runs already (it is left alone).
    pub(crate) fn note_failure(&self, key: &K, now: u64, until: u64) {
        if matches!(
            self.shard(key).map.get(key),
            Some(RefreshState::Running { .. })
        ) {
            return;
        }
        self.back_off(key, now, until);
    }

    /// Clears a backoff left by an earlier failure, leaving a running refresh alone.
    pub(crate) fn clear_backoff(&self, key: &K) {
        let mut shard = self.shard(key);
        if let Some(RefreshState::BackoffUntil(_)) = shard.map.get(key) {
            shard.map.remove(key);
        }
    }

    /// Ends a failed refresh at `now`: no new refresh of `key` before `until`.
    pub(crate) fn back_off(&self, key: &K, now: u64, until: u64) {
        let mut shard = self.shard(key);
        let previous = shard
            .map
            .insert(key.clone(), RefreshState::BackoffUntil(until));
        if let Some(RefreshState::Running { .. }) = previous {
            self.running.fetch_sub(1, Ordering::AcqRel);
        }
        if shard.map.len() >= shard.purge_at {
            shard.purge(key, now);
        }
    }

    /// Refreshes claimed and not yet ended.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Backoff entries held (for tests).
    #[cfg(test)]
    pub(crate) fn backoffs(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                lock(s)
                    .map
                    .values()
                    .filter(|st| matches!(st, RefreshState::BackoffUntil(_)))
                    .count()
            })
            .sum()
    }
}

impl<K: Hash + Eq + Clone> SlotShard<K> {
    /// Forgets expired backoffs, then unexpired ones beyond half the cap (never `keep`'s).
    /// The next purge waits until the shard has doubled: amortised O(1) per backoff.
    fn purge(&mut self, keep: &K, now: u64) {
        self.map
            .retain(|_, st| !matches!(st, RefreshState::BackoffUntil(t) if *t <= now));
        let excess = self.map.len().saturating_sub(BACKOFF_CAP / 2);
        if excess > 0 {
            let victims: Vec<K> = self
                .map
                .iter()
                .filter(|(k, st)| matches!(st, RefreshState::BackoffUntil(_)) && *k != keep)
                .map(|(k, _)| k.clone())
                .take(excess)
                .collect();
            for k in victims {
                self.map.remove(&k);
            }
        }
        self.purge_at = (2 * self.map.len()).max(BACKOFF_PURGE_MIN);
    }
}

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;

    #[test]
    fn backoffs_of_keys_that_never_refresh_again_are_bounded() {
        let slots = RefreshSlots::<u64>::new();
        // 200 000 keys fail once each, 1 ms apart, with a 1 s backoff: at any time about a
        // thousand backoffs are live; none of the others may stay.
        for k in 0..200_000u64 {
            let now = k * 1_000_000;
            assert_eq!(slots.try_begin(&k, now), Begin::Started);
            slots.back_off(&k, now, now + 1_000_000_000);
        }
        let held = slots.backoffs();
        assert!(held <= SHARDS * BACKOFF_CAP, "{held} backoffs held");
        assert!(held < 10_000, "{held} backoffs held");
        assert_eq!(slots.running(), 0);
        // A key still backing off stays refused; an expired one may start again.
        let last = 199_999u64;
        assert_eq!(slots.try_begin(&last, last * 1_000_000 + 1), Begin::Busy);
    }

    #[test]
    fn backoffs_stay_under_the_hard_cap_when_all_are_live() {
        let slots = RefreshSlots::<u64>::new();
        for k in 0..200_000u64 {
            assert_eq!(slots.try_begin(&k, 0), Begin::Started);
            slots.back_off(&k, 0, u64::MAX);
        }
        assert!(
            slots.backoffs() <= SHARDS * BACKOFF_CAP,
            "{}",
            slots.backoffs()
        );
    }

    #[test]
    fn refreshes_are_limited_and_the_limit_frees_up() {
        let slots = RefreshSlots::<u64>::with_limit(2);
        assert_eq!(slots.try_begin(&1, 0), Begin::Started);
        assert_eq!(slots.try_begin(&1, 0), Begin::Busy);
        assert_eq!(slots.try_begin(&2, 0), Begin::Started);
        assert_eq!(slots.try_begin(&3, 0), Begin::Full);
        slots.clear(&1);
        assert_eq!(slots.try_begin(&3, 0), Begin::Started);
        slots.back_off(&2, 0, 10);
        assert_eq!(slots.running(), 1);
        assert_eq!(slots.try_begin(&2, 5), Begin::Busy);
        assert_eq!(slots.try_begin(&2, 10), Begin::Started);
        assert_eq!(slots.running(), 2);
    }
}
