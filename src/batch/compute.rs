//! One call of the batch closure for many keys, and one batched write: the batch form of
//! `Engine::compute_and_store_fenced` + `leader::compute`, under the same leader protocol
//! (`leader`): each key's flight is closed to joiners before the shared write, handed back when
//! its write was fenced, and answered with the key's own outcome.

use super::BatchFn;
use crate::clock::saturating_nanos;
use crate::engine::Engine;
use crate::entry::Entry;
use crate::error::Error;
use crate::leader::{self, FlightLeader, OnFailure};
use crate::stats::bump;
use crate::store::contract::{Store, Written};
use std::hash::Hash;
use std::sync::Arc;

/// One key of a batch computation: its flight (none for the plain `memoize` layer, which does
/// not coalesce) and the store's permit if it holds one.
pub(crate) struct Job<K: Hash + Eq, V, E, L> {
    pub key: K,
    pub leader: Option<FlightLeader<K, V, E>>,
    pub lock: Option<L>,
}

/// Runs the batch closure once for every job's key, stores the values in one batched write and
/// answers each key's followers. Returns each job's outcome in order; `None` when the task was
/// cancelled by its runtime shutting down (every flight was abandoned: the caller joins again).
/// A panic of the closure is resumed in this caller, after the followers got
/// [`Error::Panicked`] (or were abandoned, for a background refresh).
///
/// As in `leader::compute`, an async closure on a Tokio runtime runs as its own task, so a
/// caller that gives up does not cancel the computation its followers wait for.
pub(crate) async fn compute_many<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    batch: &Arc<BatchFn<K, V, E>>,
    jobs: Vec<Job<K, V, E, S::Lock>>,
    on_failure: OnFailure,
) -> Option<Vec<Result<V, Error<E>>>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    use futures::FutureExt;
    let led: Vec<_> = jobs
        .iter()
        .filter_map(|j| j.leader.as_ref().map(|l| l.id()))
        .collect();
    let job = {
        let (eng, batch) = (eng.arc(), batch.clone());
        async move {
            std::panic::AssertUnwindSafe(run(&eng, &batch, jobs, on_failure))
                .catch_unwind()
                .await
        }
    };
    leader::run_job(eng.compute.mode(), led, job).await
}

/// The body of [`compute_many`], on whichever task runs it.
async fn run<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    batch: &BatchFn<K, V, E>,
    jobs: Vec<Job<K, V, E, S::Lock>>,
    on_failure: OnFailure,
) -> Vec<Result<V, Error<E>>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let storing = !eng.cfg.ttl.is_zero();
    // Unlocked keys on a shared store take a version ticket first (as one key does in
    // `compute_and_store_fenced`); a key without one (the store is failing) is computed and
    // returned but not written.
    let mut jobs = jobs;
    let mut unfenced = vec![false; jobs.len()];
    if eng.store.is_shared() && storing {
        let asks = jobs.iter().enumerate().filter(|(_, j)| j.lock.is_none());
        let (idx, tickets): (Vec<usize>, Vec<_>) = asks
            .map(|(i, j)| (i, eng.store.write_ticket(&eng.ns, &j.key)))
            .unzip();
        let tickets = futures::future::join_all(tickets).await;
        for (i, t) in idx.into_iter().zip(tickets) {
            match t {
                Ok(permit) => jobs[i].lock = permit,
                Err(err) => {
                    bump!(eng.stats, store_errors);
                    tracing::debug!(name = %eng.ns.name, error = %err, "no write ticket; the value will not be stored");
                    unfenced[i] = true;
                }
            }
        }
    }
    let fences: Vec<_> = jobs.iter().map(|j| eng.fences.snapshot(&j.key)).collect();
    for _ in &jobs {
        bump!(eng.stats, computations);
    }
    let keys: Vec<K> = jobs.iter().map(|j| j.key.clone()).collect();
    let t0 = eng.clock.now();
    let out = {
        use futures::FutureExt;
        std::panic::AssertUnwindSafe(batch.run(keys))
            .catch_unwind()
            .await
    };
    let t1 = eng.clock.now();
    eng.stats.compute_time(t1.saturating_sub(t0));
    let mut map = match out {
        Ok(Ok(map)) => map,
        Ok(Err(e)) => {
            // A failing batch fails each of its keys; nothing is stored.
            let outs: Vec<_> = jobs.iter().map(|_| Err(e.clone())).collect();
            for job in jobs {
                answer_failed(eng, job.leader, e.clone(), on_failure);
            }
            return outs;
        }
        Err(panic) => {
            for job in jobs {
                if on_failure == OnFailure::Share {
                    bump!(eng.stats, errors);
                }
                answer_failed(eng, job.leader, Error::Panicked, on_failure);
            }
            std::panic::resume_unwind(panic);
        }
    };
    let entry = |value: &V| Entry {
        value: value.clone(),
        // The batch's time: what computing any of its keys took this time.
        delta_us: t1.saturating_sub(t0).div_ceil(1000),
        expires_at: t1.saturating_add(saturating_nanos(eng.cfg.ttl)),
        write_id: 0,
    };
    // Each key's value (a key the closure left out is that key's error), and what to write.
    let mut outs: Vec<Result<V, Error<E>>> = Vec::with_capacity(jobs.len());
    let mut fenced = vec![false; jobs.len()];
    let mut writes = Vec::new();
    let mut permitted = vec![false; jobs.len()];
    let mut leaders = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.into_iter().enumerate() {
        let value = map.remove(&job.key).ok_or(Error::MissingFromBatch);
        let lock = job.lock;
        match &value {
            Ok(v) if storing && !unfenced[i] => {
                if eng.fences.snapshot(&job.key) != fences[i] {
                    // Invalidated (or replaced by `insert`) while computing: the caller gets the
                    // value it asked for, the store keeps the invalidation.
                    bump!(eng.stats, fenced_writes);
                    fenced[i] = true;
                    drop(lock);
                } else {
                    permitted[i] = lock.is_some();
                    writes.push((i, job.key.clone(), entry(v), lock));
                }
            }
            _ => drop(lock),
        }
        outs.push(value);
        leaders.push((job.key, job.leader));
    }
    let written = write(eng, &leaders, &fences, writes).await;
    for (i, w) in written {
        let key = &leaders[i].0;
        match w {
            Ok(Written::Stored) if !permitted[i] && eng.fences.snapshot(key) != fences[i] => {
                // As in `compute_and_store_fenced`: an invalidation raced with an unpermitted
                // write that needed I/O; undo it.
                bump!(eng.stats, fenced_writes);
                fenced[i] = true;
                let _ = eng.store.invalidate(&eng.ns, key).await;
            }
            Ok(Written::Stored) if eng.fences.snapshot(key) != fences[i] => fenced[i] = true,
            Ok(Written::Stored) => {}
            Ok(Written::Fenced) => {
                bump!(eng.stats, fenced_writes);
                fenced[i] = true;
            }
            Err(err) => {
                bump!(eng.stats, store_errors);
                tracing::debug!(name = %eng.ns.name, error = %err, "store write failed");
            }
        }
    }
    for (i, (key, leader)) in leaders.into_iter().enumerate() {
        match (&outs[i], leader) {
            (Ok(_), Some(l)) if fenced[i] => l.hand_back(),
            (Ok(v), Some(l)) => {
                let followers = l.finish(Ok(v.clone()));
                eng.handed_off(followers);
            }
            (Err(e), leader) => answer_failed(eng, leader, e.clone(), on_failure),
            (Ok(_), None) => {}
        }
        if outs[i].is_ok() {
            eng.refreshes.clear_backoff(&key);
        }
    }
    outs
}

/// Followers of a key whose computation failed: the error (a hard miss), or nothing (a
/// background refresh: they take over).
fn answer_failed<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    leader: Option<FlightLeader<K, V, E>>,
    err: Error<E>,
    on_failure: OnFailure,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let Some(leader) = leader else { return };
    match on_failure {
        OnFailure::Abandon => drop(leader),
        OnFailure::Share => {
            let followers = leader.finish(Err(err));
            eng.handed_off(followers);
        }
    }
}

type Write<K, V, L> = (usize, K, Entry<V>, Option<L>);

/// A key and the flight its call leads, if any.
type KeyLeader<K, V, E> = (K, Option<FlightLeader<K, V, E>>);

/// The batched write: one `set_many` on a shared store, after closing each key's flight to new
/// joiners (rule 1 of `leader`); on a local store each key is written under its fence lock, as
/// `compute_and_store_fenced` does, so an invalidation never sees an older value land after it.
async fn write<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    leaders: &[KeyLeader<K, V, E>],
    fences: &[crate::fence::FenceSnapshot],
    writes: Vec<Write<K, V, S::Lock>>,
) -> Vec<(usize, Result<Written, crate::store::contract::StoreError>)>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    if writes.is_empty() {
        return Vec::new();
    }
    let ttl = eng.cfg.ttl;
    if eng.store.is_shared() {
        for (i, ..) in &writes {
            if let Some(l) = &leaders[*i].1 {
                l.close_to_joiners();
            }
        }
        let idx: Vec<usize> = writes.iter().map(|w| w.0).collect();
        let items = writes.into_iter().map(|(_, k, e, l)| (k, e, l)).collect();
        let out = eng.store.set_many(&eng.ns, items, ttl).await;
        return idx.into_iter().zip(out).collect();
    }
    let mut out = Vec::with_capacity(writes.len());
    for (i, key, entry, lock) in writes {
        use futures::FutureExt;
        let pending = {
            let _guard = eng.fences.guard(&key);
            if eng.fences.snapshot(&key) != fences[i] {
                out.push((i, Ok(Written::Fenced)));
                continue;
            }
            let mut write = Box::pin(eng.store.set(&eng.ns, &key, entry, ttl, lock));
            match (&mut write).now_or_never() {
                Some(w) => {
                    out.push((i, w));
                    continue;
                }
                None => write,
            }
        };
        out.push((i, pending.await));
    }
    out
}
