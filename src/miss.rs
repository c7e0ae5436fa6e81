//! The slow path: everything that is not a plain hit. A value near expiry gets its XFetch
//! decision here (and may trigger a background refresh); a hard miss coalesces onto one
//! computation per key in the process and, across processes, asks the store who computes.

use crate::engine::{Engine, Probe};
use crate::entry::Entry;
use crate::error::Error;
use crate::flight::{Joined, Waited};
use crate::refresh;
use crate::stats::bump;
use crate::store::contract::{LockOutcome, Store};
use crate::wait::{Contention, Patience};
use crate::xfetch::{self, Decision};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Instant;

/// Everything that is not a plain hit.
pub(crate) async fn slow<K, V, E, S>(
    eng: &Arc<Engine<K, V, E, S>>,
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
    if let Some(entry) = entry {
        match decide(eng, key, &entry, now) {
            Decision::Fresh => {
                bump!(eng.stats, slow_hits);
                return Ok(entry.value);
            }
            Decision::RefreshEarly => {
                bump!(eng.stats, slow_hits);
                refresh::trigger(eng, key, entry.expires_at, entry.delta_us, now);
                return Ok(entry.value);
            }
            Decision::Expired => stale = Some(entry.value),
        }
    }
    bump!(eng.stats, hard_misses);
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

/// The XFetch decision for a value seen near expiry, with the function's β (or the β automatic
/// mode chooses for this key now).
fn decide<K, V, E, S>(eng: &Engine<K, V, E, S>, key: &K, entry: &Entry<V>, now: u64) -> Decision
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let gap_us = (entry.expires_at as f64 - now as f64) / 1000.0;
    let delta = entry.delta_us as f64;
    let beta = match (&eng.meters, eng.cfg.auto) {
        (Some(m), Some(target)) => {
            let b = m.beta(key, now, entry.delta_us, target, !eng.store.is_shared());
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

/// One computation per key in this process; across processes, the store's lock.
async fn hard_miss<K, V, E, S>(
    eng: &Arc<Engine<K, V, E, S>>,
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
    let mut abandoned = false;
    loop {
        match eng.flights.join(key) {
            Joined::Leader(leader) => {
                use futures::FutureExt;
                let led = std::panic::AssertUnwindSafe(lead(eng, key, &mut patience))
                    .catch_unwind()
                    .await;
                let (out, computed) = match led {
                    Ok(led) => led,
                    Err(panic) => {
                        // Coalesced waiters get `Error::Panicked` (shared) instead of re-running
                        // a closure that just panicked, one after another; this caller gets its
                        // panic back; nothing is stored, so the next call computes again.
                        bump!(eng.stats, errors);
                        let followers = leader.finish(Err(Error::Panicked));
                        eng.handed_off(followers);
                        std::panic::resume_unwind(panic);
                    }
                };
                if abandoned && computed {
                    bump!(eng.stats, takeovers);
                }
                let followers = leader.finish(out.clone());
                eng.handed_off(followers);
                return out;
            }
            Joined::Follower(flight) => {
                if eng.cfg.serve_stale {
                    if let Some(v) = stale.take() {
                        bump!(eng.stats, stale_served);
                        return Ok(v);
                    }
                }
                if patience.fail_fast() {
                    return Err(Error::Busy);
                }
                tracing::debug!(name = %eng.ns.name, "waiting for another caller's computation");
                let waiting = Instant::now();
                let waited = flight.wait(eng.compute.mode(), patience.deadline()).await;
                eng.stats.wait_time(waiting.elapsed());
                match waited {
                    Waited::Done(out) => {
                        bump!(eng.stats, coalesced_waiters);
                        eng.compute.mode().hand_off();
                        return out;
                    }
                    Waited::Abandoned => {
                        abandoned = true;
                        tracing::warn!(name = %eng.ns.name, "the computation we waited for was abandoned (panic, cancellation, failed refresh); taking over");
                    }
                    Waited::TimedOut => {
                        if let Contention::ComputeAfter(_) = contention {
                            return eng.compute_and_store(key, None).await;
                        }
                        return Err(Error::WaitTimeout(contention.max_wait()));
                    }
                }
            }
        }
    }
}

/// The in-process leader of a hard miss: ask the store who computes, then compute or wait.
/// Returns the outcome and whether this caller ran the closure.
async fn lead<K, V, E, S>(
    eng: &Arc<Engine<K, V, E, S>>,
    key: &K,
    patience: &mut Patience,
) -> (Result<V, Error<E>>, bool)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let mut waited_remotely = false;
    loop {
        let now = eng.clock.now();
        match eng
            .store
            .lock_or_get(&eng.ns, key, eng.lease(None), eng.cfg.lease_max, now)
            .await
        {
            Ok(LockOutcome::Found(e)) if e.expires_at > now => return (Ok(e.value), false),
            Ok(LockOutcome::Found(_)) | Ok(LockOutcome::Local) => {
                return (eng.compute_and_store(key, None).await, true)
            }
            Ok(LockOutcome::Acquired(lock)) => {
                return (eng.compute_and_store(key, Some(lock)).await, true)
            }
            Ok(LockOutcome::Busy) => {
                if !waited_remotely {
                    waited_remotely = true;
                    bump!(eng.stats, remote_waits);
                    tracing::debug!(name = %eng.ns.name, "another process holds the lock; waiting for its value");
                }
                if patience.fail_fast() {
                    return (Err(Error::Busy), false);
                }
                // Wake on the holder's publish; re-ask at a growing interval in case the
                // message is lost or the holder died (its lease then lapses).
                let Some(wait) = patience.next_poll() else {
                    return match patience.policy() {
                        Contention::ComputeAfter(_) => {
                            (eng.compute_and_store(key, None).await, true)
                        }
                        policy => (Err(Error::WaitTimeout(policy.max_wait())), false),
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
                    return (eng.compute_and_store(key, None).await, true);
                }
            }
            Err(err) => {
                bump!(eng.stats, store_errors);
                tracing::debug!(name = %eng.ns.name, error = %err, "store lock failed; computing locally");
                return (eng.compute_and_store(key, None).await, true);
            }
        }
    }
}
