//! Background refreshes: an XFetch trigger claims the key's refresh slot without waiting and
//! recomputes off the caller's path, on a Tokio task (async callers) or a worker thread
//! (blocking callers). At most `Builder::max_refreshes` run at once per function (so at most
//! that many refresh threads for the blocking facade); a trigger beyond it is skipped. The claim is held until the refresh ends, however long it takes; the
//! refresh is also the key's in-process flight, so a hard miss that arrives meanwhile waits for
//! it instead of computing beside it.

use crate::clock::saturating_nanos;
use crate::engine::Engine;
use crate::flight::{Begin, Joined};
use crate::leader::{self, OnFailure};
use crate::stats::bump;
use crate::store::contract::{RefreshOutcome, Seen, Store};
use crate::wait::WaitMode;
use std::hash::Hash;
use std::sync::Arc;

/// An XFetch trigger: claim the key's refresh slot without waiting and refresh in the
/// background. A claimed slot is held until the refresh ends, however long it takes.
pub(crate) fn trigger<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    key: &K,
    seen: Seen,
    delta_us: u64,
    now: u64,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let Some(claim) = RefreshClaim::try_new(eng, key, delta_us, now) else {
        return;
    };
    spawn(eng.compute.mode(), claim.run(seen, delta_us));
}

/// Runs a background refresh off the caller's path: on a Tokio task (async callers on a
/// runtime), else on a worker thread.
pub(crate) fn spawn(mode: WaitMode, task: impl std::future::Future<Output = ()> + Send + 'static) {
    match mode {
        WaitMode::Async => match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(task);
            }
            Err(_) => spawn_thread(task),
        },
        WaitMode::Blocking => spawn_thread(task),
    }
}

/// A claimed refresh slot (of a single refresh, or of one key of a batch refresh). It is
/// released when the refresh ends; if the task panics, is dropped or never runs, dropping the
/// claim releases the slot with a backoff, like a failure.
pub(crate) struct RefreshClaim<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    engine: Arc<Engine<K, V, E, S>>,
    /// The slot claim this refresh holds (`RefreshSlots::try_claim`).
    id: u64,
    key: K,
    armed: bool,
    /// The computation began (so an unfinished claim is a failed refresh, e.g. a panic).
    started: bool,
    failure_counted: bool,
}

impl<K, V, E, S> Drop for RefreshClaim<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    fn drop(&mut self) {
        if self.armed {
            if self.started && !self.failure_counted {
                bump!(self.engine.stats, early_refreshes_failed);
            }
            // The backoff counts from the failure, not from the trigger.
            let now = self.engine.clock.now();
            let until = now.saturating_add(saturating_nanos(self.engine.cfg.refresh_backoff));
            self.engine
                .refreshes
                .back_off_claim(&self.key, self.id, now, until);
        }
    }
}

impl<K, V, E, S> RefreshClaim<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    /// Claims `key`'s refresh slot without waiting; `None` (counted as skipped or throttled)
    /// when another refresh holds it or `max_refreshes` already run.
    pub(crate) fn try_new(
        eng: &Engine<K, V, E, S>,
        key: &K,
        delta_us: u64,
        now: u64,
    ) -> Option<Self> {
        // Past its lease (`Engine::lease`, the bound a distributed lock trusts a holder of this δ
        // for) a refresh counts as hung: it no longer blocks the key nor holds a place in
        // `max_refreshes`, and the next trigger may start another.
        let hung_at = now.saturating_add(saturating_nanos(eng.lease(Some(delta_us))));
        let id = match eng.refreshes.try_claim(key, now, hung_at) {
            Ok(id) => id,
            Err(Begin::Started) => unreachable!("a claim is Ok"),
            Err(Begin::Busy) => {
                bump!(eng.stats, early_refreshes_skipped);
                return None;
            }
            Err(Begin::Full) => {
                // As many refreshes run as the function allows: skip. The value is still served,
                // and XFetch triggers again on a later call (ever more likely as expiry nears).
                bump!(eng.stats, early_refreshes_throttled);
                return None;
            }
        };
        Some(RefreshClaim {
            engine: eng.arc(),
            id,
            key: key.clone(),
            armed: true,
            started: false,
            failure_counted: false,
        })
    }

    /// The key this claim refreshes.
    pub(crate) fn key(&self) -> &K {
        &self.key
    }

    /// The computation begins: from now on, a claim dropped unreleased counts as a failed
    /// refresh.
    pub(crate) fn start(&mut self) {
        self.started = true;
    }

    /// The refresh ended (or was skipped): frees the slot, without a backoff.
    pub(crate) fn release(mut self) {
        self.armed = false;
        self.engine.refreshes.end(&self.key, self.id);
    }

    async fn run(mut self, seen: Seen, delta_us: u64) {
        let e = self.engine.clone();
        let now = e.clock.now();
        let lock = match e
            .store
            .try_lock_refresh(
                &e.ns,
                &self.key,
                seen,
                e.lease(Some(delta_us)),
                e.cfg.lease_max,
                now,
            )
            .await
        {
            Ok(RefreshOutcome::Acquired(l)) => Some(l),
            Ok(RefreshOutcome::Local) => None,
            Ok(RefreshOutcome::Skip) => {
                bump!(e.stats, early_refreshes_skipped);
                return self.release();
            }
            Err(err) => {
                // The store is unreachable: a refresh could not be shared anyway. Keep serving
                // the current value; the claim backs off when dropped.
                bump!(e.stats, store_errors);
                tracing::debug!(name = %e.ns.name, error = %err, "refresh lock failed; backing off");
                return;
            }
        };
        // The refresh is also this key's in-process flight: a hard miss that arrives while it
        // runs (the value expired before the refresh landed) waits for it instead of computing
        // a second time. If a hard miss is already computing, it is the refresh.
        let leader = match e.flights.join(&self.key) {
            Joined::Leader(l) => l,
            Joined::Follower(_) => {
                bump!(e.stats, early_refreshes_skipped);
                drop(lock);
                return self.release();
            }
        };
        self.start();
        bump!(e.stats, early_refreshes_started);
        tracing::debug!(name = %e.ns.name, "early refresh started");
        // Hard misses that join this flight once the value has expired wait for it at most as
        // long as a distributed lock would trust a holder of this δ (`Engine::lease`): a
        // refresh that never returns then loses them to a takeover instead of turning every
        // call into a `WaitTimeout` (see `miss::hard_miss`).
        leader.give_up_after(std::time::Instant::now() + e.lease(Some(delta_us)));
        // The one leader protocol (`leader`): closed before its shared write, followers handed
        // back when fenced, and a failure is nobody's answer (followers take over).
        match leader::compute(&e, &self.key, lock, leader, OnFailure::Abandon).await {
            Some(Ok(_)) => {
                bump!(e.stats, early_refreshes_completed);
                tracing::debug!(name = %e.ns.name, "early refresh completed");
                self.release();
            }
            Some(Err(_)) | None => {
                self.failure_counted = true;
                bump!(e.stats, early_refreshes_failed);
                tracing::warn!(name = %e.ns.name, backoff = ?e.cfg.refresh_backoff, "early refresh failed; serving the current value until expiry");
            }
        }
    }
}

/// Runs a background refresh on its own thread, polled to completion there.
fn spawn_thread(task: impl std::future::Future<Output = ()> + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("herdless-refresh".into())
        .spawn(move || crate::wait::block_on(task));
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "could not spawn a refresh thread");
    }
}
