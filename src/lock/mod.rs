//! Locks: who computes a key. In-process single-flight lives in `local`; a lock for the barrier
//! layer is anything implementing [`Lock`].

pub(crate) mod local;
pub(crate) mod redis;
pub(crate) mod sync;

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync::Listener;

/// How a caller waits: by awaiting (async callers, on a Tokio runtime) or by parking its thread
/// (the blocking facade, no runtime needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Await a notification, with a Tokio timer for the deadline.
    Async,
    /// Park the calling thread until notified or the deadline passes.
    Blocking,
}

impl WaitMode {
    #[cfg(shuttle)]
    pub(crate) async fn wait(self, listener: Listener, _deadline: Option<Instant>) -> bool {
        listener.wait(); // shuttle checks wait without deadlines, on shuttle threads
        true
    }

    /// Waits for `listener` until `deadline`; false on timeout.
    #[cfg(not(shuttle))]
    pub(crate) async fn wait(self, listener: Listener, deadline: Option<Instant>) -> bool {
        use event_listener::Listener as _;
        match (self, deadline) {
            (WaitMode::Async, None) => {
                listener.await;
                true
            }
            (WaitMode::Async, Some(d)) => tokio::time::timeout_at(d.into(), listener).await.is_ok(),
            (WaitMode::Blocking, None) => {
                listener.wait();
                true
            }
            (WaitMode::Blocking, Some(d)) => listener.wait_deadline(d).is_some(),
        }
    }

    /// Called after waking a crowd of waiters (or being one of them): a blocking thread yields
    /// its core once, so the next woken waiter runs now instead of queueing for a time slice
    /// behind threads that are busy serving hits. On 2 cores with 10 hot threads this turns a
    /// ~5 ms-per-waiter trickle into one hand-off chain. Async tasks need nothing: their
    /// runtime's workers are not preempted by hot loops of other threads in the same way.
    pub(crate) fn hand_off(self) {
        if self == WaitMode::Blocking {
            std::thread::yield_now();
        }
    }

    /// Sleeps for `d` (used between polls of a remote lock).
    pub(crate) async fn sleep(self, d: Duration) {
        match self {
            WaitMode::Async => tokio::time::sleep(d).await,
            WaitMode::Blocking => std::thread::sleep(d),
        }
    }
}

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
/// use herdless::{Lock, LocalLock, WaitMode};
/// let lock = LocalLock::<String>::new();
/// let guard = futures::executor::block_on(lock.acquire(&"k".to_string(), None, WaitMode::Blocking)).unwrap();
/// drop(guard); // releases
/// ```
pub trait Lock<K>: Send + Sync + 'static {
    /// Held while the lock is held; dropping it releases the lock.
    type Guard: Send + 'static;
    /// Takes the lock for `key`. `max_wait = Some(Duration::ZERO)` means fail fast;
    /// `None` waits as long as it takes.
    fn acquire(
        &self,
        key: &K,
        max_wait: Option<Duration>,
        mode: WaitMode,
    ) -> impl Future<Output = Result<Self::Guard, LockError>> + Send;
}

/// The in-process per-key lock (clones share the lock table). Waiters are woken by the
/// releasing holder, not by polling.
///
/// ```
/// use herdless::{Lock, LockError, LocalLock, WaitMode};
/// use std::time::Duration;
/// let lock = LocalLock::<u32>::new();
/// let held = futures::executor::block_on(lock.acquire(&1, None, WaitMode::Blocking)).unwrap();
/// // Another caller failing fast while the key is held:
/// let busy = futures::executor::block_on(lock.acquire(&1, Some(Duration::ZERO), WaitMode::Blocking));
/// assert!(matches!(busy, Err(LockError::Busy)));
/// drop(held);
/// ```
pub struct LocalLock<K> {
    map: Arc<local::FlightMap<K, ()>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> LocalLock<K> {
    /// A new, empty lock table.
    pub fn new() -> Self {
        LocalLock {
            map: Arc::new(local::FlightMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Default for LocalLock<K> {
    fn default() -> Self {
        Self::new()
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
    leader: Option<local::Leader<K, ()>>,
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
        max_wait: Option<Duration>,
        mode: WaitMode,
    ) -> impl Future<Output = Result<Self::Guard, LockError>> + Send {
        let map = self.map.clone();
        let key = key.clone();
        async move {
            let deadline = max_wait.map(|d| Instant::now() + d);
            loop {
                match map.join(&key) {
                    local::Joined::Leader(leader) => {
                        return Ok(LocalGuard {
                            leader: Some(leader),
                        })
                    }
                    local::Joined::Follower(flight) => {
                        if max_wait == Some(Duration::ZERO) {
                            return Err(LockError::Busy);
                        }
                        if let local::Waited::TimedOut = flight.wait(mode, deadline).await {
                            return Err(LockError::Timeout(max_wait.unwrap_or_default()));
                        }
                    }
                }
            }
        }
    }
}

/// ±25 % jitter so that pollers that started together do not stay in step.
pub(crate) fn jitter(d: Duration) -> Duration {
    let f = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(f)
}
