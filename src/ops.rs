//! Cache operations beside `get`: invalidate, insert, refresh, peek, invalidate all. Both
//! facades call these; they share the engine's fences and flights, so an operation and a
//! running computation of the same key never undo each other's guarantees.

use crate::clock::saturating_nanos;
use crate::engine::{owned_or_same, Engine};
use crate::entry::Entry;
use crate::error::Error;
use crate::leader::{self, OnFailure};
use crate::stats::bump;
use crate::store::contract::{Lookup, RefreshOutcome, Seen, Store, StoreError, Written};
use std::borrow::Borrow;
use std::hash::Hash;
use std::time::Duration;

/// Drops `key` everywhere the store reaches; a computation of `key` already running in this
/// process does not store its (older) result.
pub(crate) async fn invalidate<K, V, E, S, Q>(
    eng: &Engine<K, V, E, S>,
    key: &Q,
) -> Result<(), StoreError>
where
    K: Hash + Eq + Clone + Send + Sync + 'static + Borrow<Q>,
    Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    // `Borrow` promises `Q` hashes like `K`: the same fence shard.
    bump!(eng.stats, invalidations);
    let key = owned_or_same(key);
    // A call that starts after this returns must not join a computation that started before.
    eng.flights.detach(&key);
    let drop_it = {
        // Bump and removal together under the fence lock (see `fence`), for a store that
        // answers at once (it may act when its future is created: that happens here too).
        let _guard = eng.fences.guard(&*key);
        eng.fences.bump(&*key);
        let mut drop_it = Box::pin(eng.store.invalidate(&eng.ns, &key));
        if !eng.store.is_shared() {
            if let Some(done) = futures::FutureExt::now_or_never(&mut drop_it) {
                return done;
            }
        }
        drop_it
    };
    let out = drop_it.await;
    // A flight that began while the shared invalidation was in flight may have read the old
    // value before it landed: calls from here on must not join it.
    eng.flights.detach(&key);
    out
}

/// Drops every key of this function.
pub(crate) async fn invalidate_all<K, V, E, S>(eng: &Engine<K, V, E, S>) -> Result<(), StoreError>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    bump!(eng.stats, invalidations);
    eng.flights.detach_all();
    let drop_all = {
        let _guards = eng.fences.guard_all();
        eng.fences.bump_all();
        let mut drop_all = Box::pin(eng.store.invalidate_all(&eng.ns));
        if !eng.store.is_shared() {
            if let Some(done) = futures::FutureExt::now_or_never(&mut drop_all) {
                return done;
            }
        }
        drop_all
    };
    let out = drop_all.await;
    // As in `invalidate`: flights begun while the shared operation was in flight are stale.
    eng.flights.detach_all();
    out
}

/// Stores a value computed elsewhere for the function's TTL. `delta` is the computation time
/// XFetch scales by; `None` stores δ = 0, which never triggers an early refresh at a finite β, so the first
/// real computation (at expiry) measures δ.
pub(crate) async fn insert<K, V, E, S, Q>(
    eng: &Engine<K, V, E, S>,
    key: &Q,
    value: V,
    delta: Option<Duration>,
    ttl: Option<Duration>,
) -> Result<(), StoreError>
where
    K: Hash + Eq + Clone + Send + Sync + 'static + Borrow<Q>,
    Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let key = owned_or_same(key);
    // A call that starts after this returns must not join a computation that started before.
    eng.flights.detach(&key);
    let ttl = match ttl {
        _ if eng.cfg.ttl.is_zero() => Duration::ZERO,
        Some(ttl) => ttl,
        None => eng.ttl_for(&key, &value),
    };
    if ttl.is_zero() && !eng.cfg.ttl.is_zero() {
        // This value must not be cached (`insert_with_ttl(.., 0)`, or `ttl_with` said so): the
        // value it replaces must not be served either.
        return invalidate::<K, V, E, S, K>(eng, &key).await;
    }
    if ttl.is_zero() {
        // Nothing is stored, but a running computation must still not store its older value.
        eng.fences.bump(&*key);
        return Ok(());
    }
    let now = eng.clock.now();
    let entry = Entry {
        value,
        delta_us: delta.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        expires_at: now.saturating_add(saturating_nanos(ttl)),
        write_id: 0,
    };
    bump!(eng.stats, inserts);
    let (done, write) = {
        // A computation of this key that is running now must not overwrite the inserted value:
        // bump and write together under the fence lock (see `fence`) for a local store.
        let _guard = eng.fences.guard(&*key);
        eng.fences.bump(&*key);
        let mut write = Box::pin(eng.store.set(&eng.ns, &key, entry, ttl, None));
        let done = if eng.store.is_shared() {
            None
        } else {
            futures::FutureExt::now_or_never(&mut write)
        };
        (done, write)
    };
    let shared = done.is_none();
    let written = match done {
        Some(w) => w,
        None => write.await,
    };
    if shared {
        // As in `invalidate`: flights begun while the shared write was in flight may have read
        // the value it replaced.
        eng.flights.detach(&key);
    }
    written.map(|_: Written| ())?;
    eng.refreshes.clear_backoff(&key);
    Ok(())
}

/// Reads the current unexpired value without computing, counting or triggering anything.
pub(crate) async fn peek<K, V, E, S, Q>(eng: &Engine<K, V, E, S>, key: &Q) -> Option<V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static + Borrow<Q>,
    Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let now = eng.clock.now();
    let entry = match eng.store.get_now(&eng.ns, key) {
        Lookup::Found(e) => Some(e),
        Lookup::Missing => None,
        Lookup::NotLocal => eng
            .store
            .get(&eng.ns, &owned_or_same(key), now)
            .await
            .ok()
            .flatten(),
    };
    entry.filter(|e| e.expires_at > now).map(|e| e.value)
}

/// Recomputes `key` now and returns a value computed after this call began. A computation of
/// the key already running in this process started before the call (and may have read older
/// data), so it is neither joined nor allowed to store its result over this one: the call
/// leads a flight of its own, which later callers join. Across processes it takes the store's
/// lock when it is free, and computes without it when another process holds it (then both
/// write; the fenced write keeps the newer value).
pub(crate) async fn refresh<K, V, E, S, Q>(eng: &Engine<K, V, E, S>, key: &Q) -> Result<V, Error<E>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static + Borrow<Q>,
    Q: Hash + Eq + ?Sized + Sync + ToOwned<Owned = K> + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let key = &*owned_or_same(key);
    loop {
        let leader = eng.flights.lead_anew(key);
        // The running computation's write (older data) must not land after this one's.
        eng.fences.bump(key);
        let now = eng.clock.now();
        let lock = match eng
            .store
            .try_lock_refresh(
                &eng.ns,
                key,
                Seen::NOTHING,
                eng.lease(None),
                eng.cfg.lease_max,
                now,
            )
            .await
        {
            Ok(RefreshOutcome::Acquired(l)) => Some(l),
            Ok(_) => None,
            Err(_) => {
                bump!(eng.stats, store_errors);
                None
            }
        };
        // The one leader protocol (`leader`): errors are shared with the callers that joined.
        if let Some(out) = leader::compute(eng, key, lock, leader, OnFailure::Share).await {
            return out;
        }
    }
}
