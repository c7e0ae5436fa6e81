//! The XFetch triggers of one `get_many`, refreshed together: each key claims its refresh slot
//! as a single trigger does (`refresh::trigger`), and the keys claimed are recomputed in one
//! background call of the batch closure and written in one batched write. Each key is its own
//! in-process flight meanwhile, so a hard miss that arrives waits for it; a failure is nobody's
//! answer (the flights are abandoned, the claims back off), as for a single refresh.

use super::compute::{compute_many, Job};
use super::BatchFn;
use crate::engine::Engine;
use crate::flight::Joined;
use crate::leader::OnFailure;
use crate::refresh::{self, RefreshClaim};
use crate::stats::bump;
use crate::store::contract::{RefreshOutcome, Seen, Store};
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
    let claims: Vec<_> = items
        .into_iter()
        .filter_map(|(key, seen, delta_us)| {
            let claim = RefreshClaim::try_new(eng, &key, delta_us, now)?;
            Some((claim, seen, delta_us))
        })
        .collect();
    if claims.is_empty() {
        return;
    }
    refresh::spawn(eng.compute.mode(), run(eng.arc(), batch.clone(), claims));
}

/// A claimed key of the batch: its claim, the version its read saw and its δ.
type Claimed<K, V, E, S> = (RefreshClaim<K, V, E, S>, Seen, u64);

async fn run<K, V, E, S>(
    e: Arc<Engine<K, V, E, S>>,
    batch: Arc<BatchFn<K, V, E>>,
    claims: Vec<Claimed<K, V, E, S>>,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let now = e.clock.now();
    let locks = futures::future::join_all(claims.iter().map(|(c, seen, delta_us)| {
        e.store.try_lock_refresh(
            &e.ns,
            c.key(),
            *seen,
            e.lease(Some(*delta_us)),
            e.cfg.lease_max,
            now,
        )
    }))
    .await;
    let mut jobs = Vec::new();
    let mut running = Vec::new();
    for ((mut claim, _, delta_us), lock) in claims.into_iter().zip(locks) {
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
        let leader = match e.flights.join(claim.key()) {
            Joined::Leader(l) => l,
            Joined::Follower(_) => {
                // A hard miss already computes it: that is the refresh.
                bump!(e.stats, early_refreshes_skipped);
                drop(lock);
                claim.release();
                continue;
            }
        };
        claim.start();
        bump!(e.stats, early_refreshes_started);
        leader.give_up_after(std::time::Instant::now() + e.lease(Some(delta_us)));
        jobs.push(Job {
            key: claim.key().clone(),
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
