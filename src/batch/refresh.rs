//! The XFetch triggers of one `get_many`, refreshed together: each key claims its refresh slot
//! as a single trigger does (`refresh::trigger`), and the keys claimed are recomputed in one
//! background call of the batch closure and written in one batched write. Each key is its own
//! in-process flight meanwhile, so a hard miss that arrives waits for it; a failure is nobody's
//! answer (the flights are abandoned, the claims back off), as for a single refresh.

use super::compute::{compute_many, Job};
use super::BatchFn;
use crate::clock::saturating_nanos;
use crate::engine::Engine;
use crate::flight::{Begin, Joined};
use crate::leader::OnFailure;
use crate::stats::bump;
use crate::store::contract::{RefreshOutcome, Seen, Store};
use crate::wait::WaitMode;
use std::hash::Hash;
use std::sync::Arc;

/// Claims the refresh slot of each `(key, seen, delta_us)` without waiting and
/// refreshes the keys claimed in one background batch.
pub(crate) fn trigger<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    batch: &Arc<BatchFn<K, V, E>>,
    items: Vec<(K, Seen, u64)>,
    now: u64,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let mut claims = Vec::new();
    for (key, seen, delta_us) in items {
        let hung_at = now.saturating_add(saturating_nanos(eng.lease(Some(delta_us))));
        match eng.refreshes.try_claim(&key, now, hung_at) {
            Ok(id) => claims.push(Claim {
                engine: eng.arc(),
                id,
                key,
                seen,
                delta_us,
                armed: true,
                started: false,
            }),
            Err(Begin::Full) => bump!(eng.stats, early_refreshes_throttled),
            Err(_) => bump!(eng.stats, early_refreshes_skipped),
        }
    }
    if claims.is_empty() {
        return;
    }
    let task = run(eng.arc(), batch.clone(), claims);
    match (eng.compute.mode(), tokio::runtime::Handle::try_current()) {
        (WaitMode::Async, Ok(rt)) => {
            rt.spawn(task);
        }
        _ => {
            let spawned = std::thread::Builder::new()
                .name("herdless-refresh".into())
                .spawn(move || crate::wait::block_on(task));
            if let Err(err) = spawned {
                tracing::warn!(error = %err, "could not spawn a refresh thread");
            }
        }
    }
}

/// One claimed refresh slot; dropped unreleased (a failure, a panic, a task that never ran) it
/// backs off, like a single refresh's claim.
struct Claim<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    engine: Arc<Engine<K, V, E, S>>,
    id: u64,
    key: K,
    seen: Seen,
    delta_us: u64,
    armed: bool,
    started: bool,
}

impl<K, V, E, S> Claim<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    fn release(mut self) {
        self.armed = false;
        self.engine.refreshes.end(&self.key, self.id);
    }
}

impl<K, V, E, S> Drop for Claim<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    fn drop(&mut self) {
        if self.armed {
            if self.started {
                bump!(self.engine.stats, early_refreshes_failed);
            }
            let now = self.engine.clock.now();
            let until = now.saturating_add(saturating_nanos(self.engine.cfg.refresh_backoff));
            self.engine
                .refreshes
                .back_off_claim(&self.key, self.id, now, until);
        }
    }
}

async fn run<K, V, E, S>(
    e: Arc<Engine<K, V, E, S>>,
    batch: Arc<BatchFn<K, V, E>>,
    claims: Vec<Claim<K, V, E, S>>,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let now = e.clock.now();
    let locks = futures::future::join_all(claims.iter().map(|c| {
        e.store.try_lock_refresh(
            &e.ns,
            &c.key,
            c.seen,
            e.lease(Some(c.delta_us)),
            e.cfg.lease_max,
            now,
        )
    }))
    .await;
    let mut jobs = Vec::new();
    let mut running = Vec::new();
    for (mut claim, lock) in claims.into_iter().zip(locks) {
        let lock = match lock {
            Ok(RefreshOutcome::Acquired(l)) => Some(l),
            Ok(RefreshOutcome::Local) => None,
            Ok(RefreshOutcome::Skip) => {
                bump!(e.stats, early_refreshes_skipped);
                claim.release();
                continue;
            }
            Err(err) => {
                bump!(e.stats, store_errors);
                tracing::debug!(name = %e.ns.name, error = %err, "refresh lock failed; backing off");
                continue; // the claim backs off as it drops
            }
        };
        let leader = match e.flights.join(&claim.key) {
            Joined::Leader(l) => l,
            Joined::Follower(_) => {
                // A hard miss already computes it: that is the refresh.
                bump!(e.stats, early_refreshes_skipped);
                drop(lock);
                claim.release();
                continue;
            }
        };
        claim.started = true;
        bump!(e.stats, early_refreshes_started);
        leader.give_up_after(std::time::Instant::now() + e.lease(Some(claim.delta_us)));
        jobs.push(Job {
            key: claim.key.clone(),
            leader: Some(leader),
            lock,
        });
        running.push(claim);
    }
    if jobs.is_empty() {
        return;
    }
    tracing::debug!(name = %e.ns.name, keys = jobs.len(), "early batch refresh started");
    let Some(outs) = compute_many(&e, &batch, jobs, OnFailure::Abandon).await else {
        return; // the claims back off as they drop
    };
    for (claim, out) in running.into_iter().zip(outs) {
        if out.is_ok() {
            bump!(e.stats, early_refreshes_completed);
            claim.release();
        }
        // A failed key's claim backs off (and counts the failure) as it drops.
    }
}
