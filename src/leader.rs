//! The one leader protocol: what every caller that computes (or reads) for others does.
//!
//! A *leader* is the caller that owns a key's in-process flight: a hard miss
//! ([`miss`](crate::miss)), a background XFetch refresh ([`refresh`](crate::refresh)), an explicit
//! `refresh()` ([`ops`](crate::ops)), or a hard-miss leader whose lock-or-get found a value that
//! another process stored. All of them go through this module, which keeps one invariant:
//!
//! > **A follower is handed an outcome only if that outcome could not predate any invalidation
//! > that returned before the follower's call started.**
//!
//! Three rules give it:
//! 1. **Close before a shared write.** A computed value is about to be written to a shared store:
//!    the flight is closed to new joiners first ([`Leader::close_to_joiners`]). An `invalidate`
//!    in another process cannot detach this process's flight, so a caller that starts after such
//!    an invalidation returned must not join a flight whose value was computed before it. Callers
//!    that joined before the close started before the write was sent; the write carries a
//!    version permit, so an invalidation that returned before it is sent fences it (rule 2).
//! 2. **Hand back when fenced.** A write the store fenced off (an invalidation or a newer value
//!    landed while computing) may predate an invalidation that a follower already saw: the
//!    followers join again ([`Leader::hand_back`]) and read or compute afresh. The leader itself
//!    may keep the value: it asked before the invalidation.
//! 3. **A read is shared only with earlier joiners.** A value *found* by a read (no write to
//!    fence) is handed only to followers that joined before the read was sent
//!    ([`Leader::finish_for_earlier`]); later ones join again.
//!
//! And one rule about the store: **never undo a newer write.** A write that carried a permit
//! is fenced by the store itself, so the engine never deletes it afterwards (an `insert` may
//! have replaced it); see `Engine::compute_and_store_fenced`.
//!
//! A background refresh differs from a hard miss only in what its followers get when it fails:
//! a hard miss shares its error (or `Error::Panicked`), a background refresh shares nothing
//! (the hard misses that joined it take over, as if it had never run).

use crate::engine::Engine;
use crate::error::Error;
use crate::flight::{FlightId, JoinMark, Leader};
use crate::stats::bump;
use crate::store::contract::Store;
use crate::wait::WaitMode;
use std::hash::Hash;

/// What followers of a failed computation get.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnFailure {
    /// The same error (a panic becomes [`Error::Panicked`]): a hard miss or `refresh()`.
    Share,
    /// Nothing: they take over and compute themselves (a background refresh, whose failure
    /// was nobody's request).
    Abandon,
}

/// The leader's flight, typed for this engine.
pub(crate) type FlightLeader<K, V, E> = Leader<K, Result<V, Error<E>>>;

/// Runs the closure for the flight `leader` owns, stores the value (fenced by `lock` if held,
/// else by a write ticket on a shared store) and answers the followers by the rules above.
///
/// An async closure on a Tokio runtime runs as its own task: the computation's future is
/// `'static`, so when this caller gives up (a timeout drops its future) the computation still
/// runs to completion, stores its value and answers the followers, instead of being cancelled
/// and restarted by the next waiter (which a storm of short timeouts would do hundreds of
/// times). `None`: the task was cancelled by its runtime shutting down; the flight was
/// abandoned and the caller joins again. A panic is resumed in this caller.
pub(crate) async fn compute<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    key: &K,
    lock: Option<S::Lock>,
    leader: FlightLeader<K, V, E>,
    on_failure: OnFailure,
) -> Option<Result<V, Error<E>>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    use futures::FutureExt;
    let me = leader.id();
    let job = {
        let (eng, key) = (eng.arc(), key.clone());
        async move {
            let closing = || leader.close_to_joiners();
            let out =
                std::panic::AssertUnwindSafe(eng.compute_and_store_fenced(&key, lock, closing))
                    .catch_unwind()
                    .await;
            let shared = match &out {
                // Rule 2: fenced, so followers join again.
                Ok((_, true)) => {
                    leader.hand_back();
                    return out.map(|(v, _)| v);
                }
                Ok((Ok(v), false)) => Ok(v.clone()),
                Ok((Err(_), false)) | Err(_) if on_failure == OnFailure::Abandon => {
                    drop(leader);
                    return out.map(|(v, _)| v);
                }
                Ok((Err(e), false)) => Err(e.clone()),
                Err(_) => {
                    // Coalesced waiters get `Error::Panicked` (shared) instead of re-running a
                    // closure that just panicked; nothing is stored, so the next call computes.
                    bump!(eng.stats, errors);
                    Err(Error::Panicked)
                }
            };
            let followers = leader.finish(shared);
            eng.handed_off(followers);
            out.map(|(v, _)| v)
        }
    };
    run_job(eng.compute.mode(), [me], job).await
}

/// Runs a leader's `job` (a computation wrapped in `catch_unwind`) while it leads the flights
/// `led`: on a Tokio runtime, for an async closure, as its own task (see [`compute`]); else in
/// this caller. `None`: the task was cancelled by its runtime shutting down. A panic, caught
/// by the job or by the task, is resumed in this caller.
pub(crate) async fn run_job<T, F>(
    mode: WaitMode,
    led: impl IntoIterator<Item = FlightId> + 'static,
    job: F,
) -> Option<T>
where
    F: std::future::Future<Output = std::thread::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    // A call inside the closure that joins one of these flights would wait for itself (`miss`).
    let job = crate::flight::leading(led, job);
    let out = match (mode, tokio::runtime::Handle::try_current()) {
        (WaitMode::Async, Ok(rt)) => match rt.spawn(job).await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return None,
        },
        // Blocking callers cannot be cancelled (and have no runtime to spawn on).
        _ => job.await,
    };
    Some(out.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
}

/// Rule 3: answers the followers with a value the leader *read* after `mark` (a lock-or-get
/// that found a value): only those that joined before the read was sent get it.
pub(crate) fn found<K, V, E, S>(
    eng: &Engine<K, V, E, S>,
    leader: FlightLeader<K, V, E>,
    mark: JoinMark,
    value: V,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    let followers = leader.finish_for_earlier(mark, Ok(value));
    eng.handed_off(followers);
}
