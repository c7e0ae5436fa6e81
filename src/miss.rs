//! The slow path: everything that is not a plain hit. A value near expiry gets its XFetch
//! decision here (and may trigger a background refresh); a hard miss coalesces onto one
//! computation per key in the process and, across processes, asks the store who computes.

use crate::clock::saturating_nanos;
use crate::engine::{Engine, Probe};
use crate::entry::Entry;
use crate::error::Error;
use crate::flight::{JoinMark, Joined, Waited};
use crate::leader::{self, FlightLeader, OnFailure};
use crate::refresh;
use crate::stats::bump;
use crate::store::contract::{LockOutcome, Seen, Store};
use crate::wait::{Contention, Patience};
use crate::xfetch::{self, Decision};
use std::hash::Hash;
use std::time::Instant;

/// Everything that is not a plain hit.
pub(crate) async fn slow<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    key: &K,
    seen: Probe<V>,
    contention: Contention,
) -> Result<V, Error<E>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    bump!(eng.stats, slow_calls);
    let now = eng.clock.now();
    let entry = match seen {
        Probe::Hit { value, .. } => return Ok(value),
        Probe::NearExpiry(entry) => Some(entry),
        Probe::Miss => None,
        Probe::NotLocal => match eng.store.get(&eng.ns, key, now).await {
            Ok(entry) => entry,
            Err(err) => {
                bump!(eng.stats, store_errors);
                tracing::debug!(name = %eng.ns.name, error = %err, "store read failed; treating as a miss");
                None
            }
        },
    };
    let mut stale = None;
    // The value `stale_if_error` may return if the recomputation fails: expired less than the
    // grace ago.
    let mut grace = None;
    if let Some(entry) = entry {
        let within_grace = !eng.cfg.stale_if_error.is_zero()
            && now
                < entry
                    .expires_at
                    .saturating_add(saturating_nanos(eng.cfg.stale_if_error));
        if within_grace && entry.expires_at <= now {
            grace = Some(entry.value.clone());
        }
        match decide(eng, key, &entry, now) {
            Decision::Fresh => {
                bump!(eng.stats, slow_hits);
                return Ok(entry.value);
            }
            Decision::RefreshEarly => {
                bump!(eng.stats, slow_hits);
                refresh::trigger(eng, key, Seen::of(&entry), entry.delta_us, now);
                return Ok(entry.value);
            }
            Decision::Expired => stale = Some(entry.value),
        }
    }
    bump!(eng.stats, hard_misses);
    // Boxed: a miss's state (the flight, the lock, the computation) is several kilobytes, and
    // a hit read from the store should not build and move it (issue 23: the copy was 40 % of
    // a Redis hit's instructions).
    Box::pin(hard_or_graced(eng, key, grace, stale, contention, now)).await
}

/// A hard miss, after the store said so: within `stale_if_error`'s grace or not.
async fn hard_or_graced<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    key: &K,
    grace: Option<V>,
    stale: Option<V>,
    contention: Contention,
    now: u64,
) -> Result<V, Error<E>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    if let Some(v) = grace {
        return stale_if_error(eng, key, v, stale, contention, now).await;
    }
    let out = if eng.cfg.single_flight {
        hard_miss(eng, key, stale, contention).await
    } else {
        eng.compute_and_store(key, None).await
    };
    if out.is_err() {
        bump!(eng.stats, errors);
    }
    out
}

/// A hard miss on a value that expired less than `stale_if_error` ago: recompute as usual, but
/// a failure (an error, a panic, a wait that ran out) returns `last` instead. After a failure
/// the key backs off for `refresh_backoff`, and calls meanwhile get `last` at once.
#[cold]
async fn stale_if_error<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    key: &K,
    last: V,
    stale: Option<V>,
    contention: Contention,
    now: u64,
) -> Result<V, Error<E>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    use futures::FutureExt;
    if eng.refreshes.backing_off(key, now) {
        bump!(eng.stats, stale_served_on_error);
        return Ok(last);
    }
    let attempt = async {
        if eng.cfg.single_flight {
            hard_miss(eng, key, stale, contention).await
        } else {
            eng.compute_and_store(key, None).await
        }
    };
    let failure = match std::panic::AssertUnwindSafe(attempt).catch_unwind().await {
        Ok(Ok(v)) => return Ok(v),
        // Fail-fast is the caller's own policy, not a failed recomputation.
        Ok(Err(Error::Busy)) => {
            bump!(eng.stats, errors);
            return Err(Error::Busy);
        }
        Ok(Err(Error::Compute(_))) => "the computation returned an error".to_string(),
        Ok(Err(Error::WaitTimeout(d))) => format!("waited {d:?} for the computation"),
        Ok(Err(Error::Panicked)) => "the computation panicked".to_string(),
        Ok(Err(Error::MissingFromBatch)) => "the batch loader returned no value".to_string(),
        Err(panic) => panic_message(&*panic),
    };
    bump!(eng.stats, errors);
    bump!(eng.stats, stale_served_on_error);
    tracing::warn!(name = %eng.ns.name, error = %failure, grace = ?eng.cfg.stale_if_error, "recomputation failed; serving the last value (stale_if_error)");
    let now = eng.clock.now();
    let until = now.saturating_add(saturating_nanos(eng.cfg.refresh_backoff));
    eng.refreshes.note_failure(key, now, until);
    Ok(last)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => format!("panicked: {s}"),
        (_, Some(s)) => format!("panicked: {s}"),
        _ => "panicked".to_string(),
    }
}

/// The XFetch decision for a value seen near expiry, with the function's β (or the β automatic
/// mode chooses for this key now).
pub(crate) fn decide<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    key: &K,
    entry: &Entry<V>,
    now: u64,
) -> Decision
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let gap_us = (entry.expires_at as f64 - now as f64) / 1000.0;
    let delta = entry.delta_us as f64;
    let beta = match (&eng.meters, eng.cfg.auto) {
        // Automatic β is at most `BETA_MAX`: beyond that β's reach no β changes the answer,
        // so a value far from expiry skips the rate read and the solve (issue 23's profile:
        // they were a tenth of a Redis hit's instructions).
        (Some(_), Some(_)) if !xfetch::draw_needed(gap_us, delta, xfetch::theory::BETA_MAX) => {
            return Decision::Fresh;
        }
        (Some(m), Some(target)) => {
            let b = m.beta(
                key,
                now,
                entry.delta_us,
                target,
                true,
                eng.store.fleet_size(),
            );
            eng.widen_reach(b);
            b
        }
        _ => eng.cfg.beta,
    };
    if !xfetch::draw_needed(gap_us, delta, beta) {
        return Decision::Fresh;
    }
    xfetch::decide(gap_us, delta, beta, eng.draws.exp1())
}

/// Counts a hard-miss caller that gave up before its answer (its future was dropped); a
/// caller unwinding from its closure's panic is not one.
struct Caller<'a> {
    stats: &'a crate::stats::Stats,
    answered: bool,
}

impl Drop for Caller<'_> {
    fn drop(&mut self) {
        if !self.answered && !std::thread::panicking() {
            bump!(self.stats, abandoned_callers);
        }
    }
}

/// One computation per key in this process; across processes, the store's lock.
///
/// Every caller keeps its own [`Contention`] policy: a leader whose policy gives up behind
/// another process's lock hands the flight back ([`Leader::hand_back`]) instead of passing its
/// `Busy` / `WaitTimeout` on, and its followers join again under their own policies.
async fn hard_miss<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    key: &K,
    mut stale: Option<V>,
    contention: Contention,
) -> Result<V, Error<E>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let mut patience = Patience::new(contention);
    let mut caller = Caller {
        stats: &eng.stats,
        answered: false,
    };
    let mut took_over = false;
    let out = loop {
        match eng.flights.join(key) {
            Joined::Leader(leader) => match lead(eng, key, &leader, &mut patience).await {
                Led::Found(v, mark) => {
                    crate::leader::found(eng, leader, mark, v.clone());
                    break Ok(v);
                }
                Led::GaveUp(err) => {
                    // This caller's patience ran out, not the followers': they join again.
                    leader.hand_back();
                    break Err(err);
                }
                Led::Compute(lock) => {
                    if took_over {
                        bump!(eng.stats, takeovers);
                    }
                    match leader::compute(eng, key, lock, leader, OnFailure::Share).await {
                        Some(out) => break out,
                        None => took_over = true,
                    }
                }
            },
            Joined::Follower(flight) => {
                if eng.cfg.serve_stale {
                    if let Some(v) = stale.take() {
                        bump!(eng.stats, stale_served);
                        break Ok(v);
                    }
                }
                if patience.fail_fast() {
                    break Err(Error::Busy);
                }
                if flight.led_by_caller() {
                    recursion(&eng.ns.name);
                }
                tracing::debug!(name = %eng.ns.name, "waiting for another caller's computation");
                let waiting = Instant::now();
                let waited = flight.wait(eng.compute.mode(), patience.deadline()).await;
                eng.stats.wait_time(waiting.elapsed());
                match waited {
                    Waited::Done(out) => {
                        bump!(eng.stats, coalesced_waiters);
                        eng.compute.mode().hand_off();
                        break out;
                    }
                    Waited::Abandoned if flight.gave_up() => {
                        // A background refresh that did not answer within its lease: take over.
                        // Its late write must not land over what the takeover computes from
                        // newer data: fence it off.
                        eng.fences.bump(key);
                        took_over = true;
                        tracing::warn!(name = %eng.ns.name, "a background refresh ran past its lease; taking over");
                    }
                    Waited::Abandoned if flight.handed_back() => {
                        tracing::debug!(name = %eng.ns.name, "the leader's own policy gave up on another process's lock; joining again under ours");
                    }
                    Waited::Abandoned => {
                        took_over = true;
                        tracing::warn!(name = %eng.ns.name, "the computation we waited for was abandoned (cancelled before computing, failed refresh); taking over");
                    }
                    Waited::TimedOut => {
                        if let Contention::ComputeAfter(_) = contention {
                            break eng.compute_and_store(key, None).await;
                        }
                        break Err(Error::WaitTimeout(contention.max_wait()));
                    }
                }
            }
        }
    };
    caller.answered = true;
    out
}

/// A computation asked its own function for the key it computes (directly, or through
/// functions it called): waiting would wait for itself until the contention policy ran out
/// (30 s by default). This is a bug in the caller's code, so it panics at once, like a
/// `RefCell` borrowed twice; the panic reaches the outermost caller as the closure's panic.
#[cold]
#[track_caller]
pub(crate) fn recursion(name: &str) -> ! {
    panic!(
        "herdless: the computation of a key of `{name}` called `{name}` for the same key \
         (recursion on the same key would wait for itself); compute the inner value without \
         the memoized function"
    )
}

/// What the in-process leader of a hard miss learned from the store.
enum Led<V, E, L> {
    /// The value another process stored meanwhile, read after the mark.
    Found(V, JoinMark),
    /// This caller's own policy gave up behind another process's lock: its answer alone.
    GaveUp(Error<E>),
    /// Compute, holding the store's lock if there is one.
    Compute(Option<L>),
}

/// The in-process leader of a hard miss: asks the store who computes, and waits (under this
/// caller's patience) while another process does.
async fn lead<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    key: &K,
    leader: &FlightLeader<K, V, E>,
    patience: &mut Patience,
) -> Led<V, E, S::Lock>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let mut waited_remotely = false;
    loop {
        let now = eng.clock.now();
        // Followers that join from here on may have started after an invalidation this read
        // does not see: a value it finds is not theirs (`leader::found`).
        let mark = leader.mark();
        match eng
            .store
            .lock_or_get(&eng.ns, key, eng.lease(None), eng.cfg.lease_max, now)
            .await
        {
            Ok(LockOutcome::Found(e)) if e.expires_at > now => return Led::Found(e.value, mark),
            Ok(LockOutcome::Found(_)) | Ok(LockOutcome::Local) => return Led::Compute(None),
            Ok(LockOutcome::Acquired(lock)) => return Led::Compute(Some(lock)),
            Ok(LockOutcome::Busy) => {
                if !waited_remotely {
                    waited_remotely = true;
                    bump!(eng.stats, remote_waits);
                    tracing::debug!(name = %eng.ns.name, "another process holds the lock; waiting for its value");
                }
                if patience.fail_fast() {
                    return Led::GaveUp(Error::Busy);
                }
                // Wake on the holder's publish; re-ask at a growing interval in case the
                // message is lost or the holder died (its lease then lapses).
                let Some(wait) = patience.next_poll() else {
                    return match patience.policy() {
                        Contention::ComputeAfter(_) => Led::Compute(None),
                        policy => Led::GaveUp(Error::WaitTimeout(policy.max_wait())),
                    };
                };
                if let Err(err) = eng
                    .store
                    .wait_for_value(&eng.ns, key, wait, eng.compute.mode())
                    .await
                {
                    // Once the store fails, compute: asking again would stack another timeout.
                    bump!(eng.stats, store_errors);
                    tracing::debug!(name = %eng.ns.name, error = %err, "waiting on the store failed; computing locally");
                    return Led::Compute(None);
                }
            }
            Err(err) => {
                bump!(eng.stats, store_errors);
                tracing::debug!(name = %eng.ns.name, error = %err, "store lock failed; computing locally");
                return Led::Compute(None);
            }
        }
    }
}
