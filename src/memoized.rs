//! The async facade: [`Memoized`], a memoized function called with `.await`.

use crate::engine::{Engine, Probe};
use crate::error::Error;
use crate::layer::Layer;
use crate::miss;
use crate::stats::StatsSnapshot;
use crate::store::contract::Store;
use crate::wait::Contention;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::hash::Hash;
use std::sync::Arc;

/// An async memoized function. Cheap to clone; clones share everything.
///
/// Calls that wait (a hard miss behind another caller, a bounded wait) use Tokio timers, and
/// background refreshes are spawned on the current Tokio runtime: call it from inside a runtime
/// with the time driver enabled (`#[tokio::main]` has it). Hits need nothing. Plain threads use
/// [`BlockingMemoized`] instead.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use herdless::{memoize_stampede, MemoryStore};
/// use std::time::Duration;
/// let store = MemoryStore::<String, usize>::new(100).unwrap();
/// let f = memoize_stampede(&store, Duration::from_secs(1))
///     .build_infallible(|k: String| async move { k.len() })
///     .unwrap();
/// let g = f.clone(); // shares everything
/// assert_eq!(f.get(&"abc".to_string()).await.unwrap(), 3);
/// assert_eq!(g.stats().hits, 0);
/// assert_eq!(g.get(&"abc".to_string()).await.unwrap(), 3);
/// assert_eq!(f.stats().hits, 1);
/// # }
/// ```
pub struct Memoized<K, V, E, S> {
    engine: Arc<Engine<K, V, E, S>>,
}

impl<K, V, E, S> Clone for Memoized<K, V, E, S> {
    fn clone(&self) -> Self {
        Memoized {
            engine: self.engine.clone(),
        }
    }
}

impl<K, V, E, S> Memoized<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    pub(crate) fn new(engine: Arc<Engine<K, V, E, S>>) -> Self {
        Memoized { engine }
    }

    /// The value for `key`, under the function's contention policy.
    #[inline]
    pub async fn get(&self, key: &K) -> Result<V, Error<E>> {
        match self.engine.fast(key) {
            Probe::Hit { value, .. } => Ok(value),
            seen => miss::slow(&self.engine, key, seen, self.engine.cfg.contention).await,
        }
    }

    /// The value for `key`, with this call's own contention policy.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{memoize_stampede, Contention, MemoryStore};
    /// use std::time::Duration;
    /// let store = MemoryStore::<u8, u8>::new(10).unwrap();
    /// let f = memoize_stampede(&store, Duration::from_secs(1))
    ///     .build_infallible(|k: u8| async move { k })
    ///     .unwrap();
    /// assert_eq!(f.get_with(&3, Contention::FailFast).await.unwrap(), 3);
    /// # }
    /// ```
    pub async fn get_with(&self, key: &K, contention: Contention) -> Result<V, Error<E>> {
        match self.engine.fast(key) {
            Probe::Hit { value, .. } => Ok(value),
            seen => miss::slow(&self.engine, key, seen, contention).await,
        }
    }

    /// A snapshot of this function's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.engine.stats.snapshot()
    }

    /// The function's name (its namespace in the store).
    pub fn name(&self) -> &str {
        self.engine.ns.name()
    }
}

impl<K, V, E, S> Layer<K, V, E> for Memoized<K, V, E, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
    S: Store<K, V>,
{
    fn call(&self, key: &K) -> BoxFuture<'static, Result<V, Error<E>>> {
        let this = self.clone();
        let key = key.clone();
        async move { this.get(&key).await }.boxed()
    }
}
