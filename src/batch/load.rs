//! `get_many`: the batch form of the hit path and `miss::slow`.
//!
//! 1. Every key gets the hit path; the keys a store cannot answer locally are read in **one**
//!    [`Store::get_many`] (one round trip on Redis).
//! 2. Each entry found gets its XFetch decision; the triggers among the hits are refreshed
//!    together in one background batch (`batch::refresh`).
//! 3. Each miss joins its key's flight. Keys already computed by another caller in this process
//!    are followed; for the rest this call leads, asks the store who computes (another process
//!    holding the key's lock is waited for, as a single `get` would), and computes all the
//!    remaining keys in **one** call of the batch closure (`batch::compute`).

use super::compute::{compute_many, Job};
use super::BatchFn;
use crate::engine::{Engine, Probe};
use crate::entry::Entry;
use crate::error::Error;
use crate::flight::{Follower, Joined, Waited};
use crate::leader::{FlightLeader, OnFailure};
use crate::miss;
use crate::stats::bump;
use crate::store::contract::{LockOutcome, Seen, Store};
use crate::wait::{Contention, Patience};
use crate::xfetch::Decision;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

type Outcome<V, E> = Result<V, Error<E>>;

/// The values of `keys` in order (a key repeated gets the same answer), each key's own outcome.
pub(crate) async fn load_many<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    batch: &Arc<BatchFn<K, V, E>>,
    keys: &[K],
    contention: Contention,
) -> Vec<Outcome<V, E>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    // Distinct keys, and where each of the caller's keys finds its answer.
    let mut slot_of: HashMap<&K, usize> = HashMap::with_capacity(keys.len());
    let mut uniq: Vec<K> = Vec::with_capacity(keys.len());
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| {
            *slot_of.entry(k).or_insert_with(|| {
                uniq.push(k.clone());
                uniq.len() - 1
            })
        })
        .collect();
    let mut out: Vec<Option<Outcome<V, E>>> = (0..uniq.len()).map(|_| None).collect();

    // 1. The hit path of each key; one read for the keys the store cannot answer locally.
    let mut seen: Vec<(usize, Option<Entry<V>>)> = Vec::new();
    let mut remote = Vec::new();
    for (i, k) in uniq.iter().enumerate() {
        let lookup = match eng.try_lean(k) {
            Ok(v) => {
                out[i] = Some(Ok(v));
                continue;
            }
            Err(lookup) => lookup,
        };
        match eng.after_lean(k, lookup) {
            Ok((v, _)) | Err(Probe::Hit { value: v, .. }) => out[i] = Some(Ok(v)),
            Err(Probe::NearExpiry(e)) => seen.push((i, Some(e))),
            Err(Probe::Miss) => seen.push((i, None)),
            Err(Probe::NotLocal) => remote.push(i),
        }
    }
    let now = eng.clock.now();
    if !remote.is_empty() {
        let asked: Vec<K> = remote.iter().map(|&i| uniq[i].clone()).collect();
        let read = eng.store.get_many(&eng.ns, &asked, now).await;
        for (&i, r) in remote.iter().zip(read) {
            match r {
                Ok(e) => seen.push((i, e)),
                Err(err) => {
                    bump!(eng.stats, store_errors);
                    tracing::debug!(name = %eng.ns.name, error = %err, "store read failed; treating as a miss");
                    seen.push((i, None));
                }
            }
        }
    }

    // 2. The XFetch decision of each entry found; refreshes batched.
    let mut misses: Vec<(usize, Option<V>)> = Vec::new();
    let mut refreshes = Vec::new();
    for (i, entry) in seen {
        bump!(eng.stats, slow_calls);
        let Some(entry) = entry else {
            misses.push((i, None));
            continue;
        };
        match miss::decide(eng, &uniq[i], &entry, now) {
            Decision::Fresh => {
                bump!(eng.stats, slow_hits);
                out[i] = Some(Ok(entry.value));
            }
            Decision::RefreshEarly => {
                bump!(eng.stats, slow_hits);
                refreshes.push((uniq[i].clone(), Seen::of(&entry), entry.delta_us));
                out[i] = Some(Ok(entry.value));
            }
            Decision::Expired => misses.push((i, Some(entry.value))),
        }
    }
    if !refreshes.is_empty() {
        super::refresh::trigger(eng, batch, refreshes, now);
    }

    // 3. The misses: joined where another caller computes, the rest computed in one batch.
    if !misses.is_empty() {
        for _ in &misses {
            bump!(eng.stats, hard_misses);
        }
        for (i, o, counted) in hard_misses(eng, batch, &uniq, misses, contention).await {
            if o.is_err() && !counted {
                bump!(eng.stats, errors);
            }
            out[i] = Some(o);
        }
    }
    let out: Vec<Outcome<V, E>> = out
        .into_iter()
        .map(|o| o.expect("every key is answered"))
        .collect();
    positions.into_iter().map(|i| out[i].clone()).collect()
}

/// What this call does for one missing key.
enum Plan<V, E, K: Hash + Eq, L> {
    Follow(Follower<Outcome<V, E>>, Option<V>),
    /// A value another process stored meanwhile (answered), or this call's answer.
    Done(Outcome<V, E>),
    /// Another process computes it: wait for it as a single `get` does.
    Wait,
    Compute(Option<FlightLeader<K, V, E>>, Option<L>),
}

/// The hard misses of one `get_many`: `(index, outcome, counted)` for each; `counted` when the
/// single-key path answered it (and already counted its error).
async fn hard_misses<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    batch: &Arc<BatchFn<K, V, E>>,
    uniq: &[K],
    misses: Vec<(usize, Option<V>)>,
    contention: Contention,
) -> Vec<(usize, Outcome<V, E>, bool)>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    type Plans<V, E, K, L> = Vec<(usize, Plan<V, E, K, L>)>;
    let mut plans: Plans<V, E, K, S::Lock> = Vec::with_capacity(misses.len());
    let mut leading = Vec::new();
    for (i, stale) in misses {
        if !eng.cfg.single_flight {
            plans.push((i, Plan::Compute(None, None)));
            continue;
        }
        match eng.flights.join(&uniq[i]) {
            Joined::Follower(f) => plans.push((i, Plan::Follow(f, stale))),
            Joined::Leader(l) => leading.push((i, l)),
        }
    }
    // The leaders ask the store who computes, all at once (concurrent requests share the
    // connection: on Redis they travel together).
    let asks = leading.iter().map(|(i, l)| {
        let mark = l.mark();
        let now = eng.clock.now();
        let lease = eng.lease(None);
        async move {
            let got = eng
                .store
                .lock_or_get(&eng.ns, &uniq[*i], lease, eng.cfg.lease_max, now)
                .await;
            (got, mark, now)
        }
    });
    let answers = futures::future::join_all(asks).await;
    for ((i, leader), (got, mark, now)) in leading.into_iter().zip(answers) {
        let plan = match got {
            Ok(LockOutcome::Found(e)) if e.expires_at > now => {
                crate::leader::found(eng, leader, mark, e.value.clone());
                Plan::Done(Ok(e.value))
            }
            Ok(LockOutcome::Found(_)) | Ok(LockOutcome::Local) => Plan::Compute(Some(leader), None),
            Ok(LockOutcome::Acquired(lock)) => Plan::Compute(Some(leader), Some(lock)),
            Ok(LockOutcome::Busy) => {
                // Another process computes this key: its followers here join again, and this
                // call waits for it as a single `get` would (under its own patience).
                bump!(eng.stats, remote_waits);
                leader.hand_back();
                Plan::Wait
            }
            Err(err) => {
                bump!(eng.stats, store_errors);
                tracing::debug!(name = %eng.ns.name, error = %err, "store lock failed; computing locally");
                Plan::Compute(Some(leader), None)
            }
        };
        plans.push((i, plan));
    }

    let mut out = Vec::with_capacity(plans.len());
    let mut jobs = Vec::new();
    let mut job_index = Vec::new();
    let mut others = Vec::new();
    for (i, plan) in plans {
        match plan {
            Plan::Done(o) => out.push((i, o, false)),
            Plan::Compute(leader, lock) => {
                job_index.push(i);
                jobs.push(Job {
                    key: uniq[i].clone(),
                    leader,
                    lock,
                });
            }
            Plan::Follow(f, stale) => others.push((i, Some((f, stale)))),
            Plan::Wait => others.push((i, None)),
        }
    }
    let computing = async {
        if jobs.is_empty() {
            return Vec::new();
        }
        match compute_many(eng, batch, jobs, OnFailure::Share).await {
            Some(outs) => job_index
                .into_iter()
                .zip(outs)
                .map(|(i, o)| (i, o, false))
                .collect(),
            // The runtime is shutting down; the flights were abandoned: one `get` per key.
            None => {
                let again = job_index
                    .into_iter()
                    .map(|i| async move { (i, single(eng, &uniq[i], contention).await, true) });
                futures::future::join_all(again).await
            }
        }
    };
    let waiting = futures::future::join_all(others.into_iter().map(|(i, follow)| async move {
        let (o, counted) = match follow {
            Some((f, stale)) => follow_flight(eng, &uniq[i], f, stale, contention).await,
            None => (single(eng, &uniq[i], contention).await, true),
        };
        (i, o, counted)
    }));
    let (computed, waited) = futures::join!(computing, waiting);
    out.extend(computed);
    out.extend(waited);
    out
}

/// One key the batch could not settle itself, the way a single `get` would (which counts its
/// own error).
async fn single<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    key: &K,
    contention: Contention,
) -> Outcome<V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    miss::slow(eng, key, Probe::Miss, contention).await
}

/// A key another caller in this process computes: wait for its outcome, as `miss::hard_miss`
/// does for a follower; anything but an outcome (the flight was handed back or abandoned)
/// sends the key through the single-key path, which joins again. `true` with an outcome the
/// single-key path counted.
async fn follow_flight<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    key: &K,
    flight: Follower<Outcome<V, E>>,
    stale: Option<V>,
    contention: Contention,
) -> (Outcome<V, E>, bool)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    if eng.cfg.serve_stale {
        if let Some(v) = stale {
            bump!(eng.stats, stale_served);
            return (Ok(v), false);
        }
    }
    let patience = Patience::new(contention);
    if patience.fail_fast() {
        return (Err(Error::Busy), false);
    }
    if flight.led_by_caller() {
        crate::miss::recursion(&eng.ns.name);
    }
    let waiting = std::time::Instant::now();
    let waited = flight.wait(eng.compute.mode(), patience.deadline()).await;
    eng.stats.wait_time(waiting.elapsed());
    match waited {
        Waited::Done(out) => {
            bump!(eng.stats, coalesced_waiters);
            (out, false)
        }
        Waited::Abandoned => {
            if flight.gave_up() {
                // A background refresh past its lease: its late write must not land over what
                // the takeover computes (as in `miss::hard_miss`).
                eng.fences.bump(key);
            }
            (single(eng, key, contention).await, true)
        }
        Waited::TimedOut => match contention {
            Contention::ComputeAfter(_) => (eng.compute_and_store(key, None).await, false),
            _ => (Err(Error::WaitTimeout(contention.max_wait())), false),
        },
    }
}
