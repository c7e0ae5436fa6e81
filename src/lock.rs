//! Barrier locks: the [`Lock`] trait (who runs the inner layer of a
//! [`barrier`](crate::barrier)) and the in-process [`LocalLock`]. The Redis lock lives with the
//! Redis store (`store/redis/lock.rs`).

use crate::flight::{self, FlightMap, Joined, Waited};
use crate::wait::{Contention, Patience, WaitMode};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

/// The lock could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockError {
    /// Someone holds it and the policy is fail-fast.
    Busy,
    /// The maximum wait passed.
    Timeout(Duration),
}

/// A per-key mutual-exclusion lock, as used by [`barrier`](crate::barrier).
///
/// ```
/// use herdless::{Contention, Lock, LocalLock, WaitMode};
/// let lock = LocalLock::<String>::new();
/// let guard = futures::executor::block_on(lock.acquire(&"k".to_string(), Contention::default(), WaitMode::Blocking)).unwrap();
/// drop(guard); // releases
/// ```
pub trait Lock<K>: Send + Sync + 'static {
    /// Held while the lock is held; dropping it releases the lock.
    type Guard: Send + 'static;
    /// Takes the lock for `key`, waiting as `policy` allows: [`Contention::FailFast`] returns
    /// [`LockError::Busy`] at once when the key is held; `Wait(d)` and `ComputeAfter(d)` wait up
    /// to `d` and then return [`LockError::Timeout`] (the barrier decides what that means).
    fn acquire(
        &self,
        key: &K,
        policy: Contention,
        mode: WaitMode,
    ) -> impl Future<Output = Result<Self::Guard, LockError>> + Send;
}

/// The in-process per-key lock (clones share the lock table). Waiters are woken by the
/// releasing holder, not by polling.
///
/// ```
/// use herdless::{Contention, Lock, LockError, LocalLock, WaitMode};
/// let lock = LocalLock::<u32>::new();
/// let held = futures::executor::block_on(lock.acquire(&1, Contention::default(), WaitMode::Blocking)).unwrap();
/// // Another caller failing fast while the key is held:
/// let busy = futures::executor::block_on(lock.acquire(&1, Contention::FailFast, WaitMode::Blocking));
/// assert!(matches!(busy, Err(LockError::Busy)));
/// drop(held);
/// ```
pub struct LocalLock<K> {
    map: Arc<FlightMap<K, ()>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> LocalLock<K> {
    /// A new, empty lock table.
    pub fn new() -> Self {
        LocalLock {
            map: Arc::new(FlightMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Default for LocalLock<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> std::fmt::Debug for LocalLock<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLock").finish_non_exhaustive()
    }
}

impl<K> Clone for LocalLock<K> {
    fn clone(&self) -> Self {
        LocalLock {
            map: self.map.clone(),
        }
    }
}

/// A held [`LocalLock`]; dropping it releases the key.
pub struct LocalGuard<K: Hash + Eq> {
    leader: Option<flight::Leader<K, ()>>,
}

impl<K: Hash + Eq> std::fmt::Debug for LocalGuard<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGuard")
            .field("held", &self.leader.is_some())
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> Drop for LocalGuard<K> {
    fn drop(&mut self) {
        if let Some(l) = self.leader.take() {
            l.finish(());
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Lock<K> for LocalLock<K> {
    type Guard = LocalGuard<K>;

    fn acquire(
        &self,
        key: &K,
        policy: Contention,
        mode: WaitMode,
    ) -> impl Future<Output = Result<Self::Guard, LockError>> + Send {
        let map = self.map.clone();
        let key = key.clone();
        async move {
            let patience = Patience::new(policy);
            loop {
                match map.join(&key) {
                    Joined::Leader(leader) => {
                        return Ok(LocalGuard {
                            leader: Some(leader),
                        })
                    }
                    Joined::Follower(flight) => {
                        if patience.fail_fast() {
                            return Err(LockError::Busy);
                        }
                        if let Waited::TimedOut = flight.wait(mode, patience.deadline()).await {
                            return Err(LockError::Timeout(policy.max_wait()));
                        }
                    }
                }
            }
        }
    }
}
