//! The barrier layer: at most one caller per key runs the inner layer at a time.
//!
//! This is DiskCache's `barrier(cache, Lock)`: a per-key mutex, not a result-sharing flight.
//! Callers queue on the lock and each runs the inner layer in turn; wrapped around a
//! `memoize(ttl > 0)`, every caller after the first finds the value stored (double-checked
//! locking). Waiters are woken by the releasing caller, not by polling.

use crate::error::Error;
use crate::layer::{BlockingLayer, ComputeFn, Layer};
use crate::lock::{Lock, LockError};
use crate::wait::{block_on, Contention, WaitMode};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::future::Future;
use std::sync::Arc;

/// Starts a barrier around a closure or layer, using `lock` (for example
/// [`LocalLock`](crate::LocalLock)). See [`memoize`](crate::memoize) for the full recipe.
pub fn barrier<L>(lock: L) -> BarrierBuilder<L> {
    BarrierBuilder {
        lock,
        contention: Contention::default(),
    }
}

/// Configures a barrier; finish with `build*` or `wrap*`.
///
/// ```
/// use herdless::{barrier, Contention, LocalLock};
/// let guarded = barrier(LocalLock::new())
///     .contention(Contention::FailFast)
///     .build_blocking(|k: &u8| Ok::<_, String>(*k));
/// assert_eq!(guarded.get(&9).unwrap(), 9);
/// ```
pub struct BarrierBuilder<L> {
    lock: L,
    contention: Contention,
}

struct Inner<K, V, E, L> {
    lock: L,
    contention: Contention,
    compute: ComputeFn<K, V, E>,
}

/// An async barrier layer; see [`Barrier::get`].
pub struct Barrier<K, V, E, L> {
    inner: Arc<Inner<K, V, E, L>>,
}

/// A blocking barrier layer (no runtime needed); see [`BlockingBarrier::get`].
pub struct BlockingBarrier<K, V, E, L> {
    inner: Arc<Inner<K, V, E, L>>,
}

impl<L> std::fmt::Debug for BarrierBuilder<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarrierBuilder")
            .field("lock", &std::any::type_name::<L>())
            .field("contention", &self.contention)
            .finish()
    }
}

impl<K, V, E, L> std::fmt::Debug for Barrier<K, V, E, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier")
            .field("lock", &std::any::type_name::<L>())
            .field("contention", &self.inner.contention)
            .finish_non_exhaustive()
    }
}

impl<K, V, E, L> std::fmt::Debug for BlockingBarrier<K, V, E, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingBarrier")
            .field("lock", &std::any::type_name::<L>())
            .field("contention", &self.inner.contention)
            .finish_non_exhaustive()
    }
}

impl<L> BarrierBuilder<L> {
    /// What a caller does while another holds the key (default: wait up to 30 s).
    pub fn contention(mut self, policy: Contention) -> Self {
        self.contention = policy;
        self
    }

    fn inner<K, V, E>(self, compute: ComputeFn<K, V, E>) -> Arc<Inner<K, V, E, L>> {
        Arc::new(Inner {
            lock: self.lock,
            contention: self.contention,
            compute,
        })
    }

    /// Guards an async closure.
    pub fn build<K, V, E, F, Fut>(self, f: F) -> Barrier<K, V, E, L>
    where
        K: Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let compute = ComputeFn::from_async(f);
        Barrier {
            inner: self.inner(compute),
        }
    }

    /// Guards an async layer.
    pub fn wrap<K, V, E, I>(self, layer: I) -> Barrier<K, V, E, L>
    where
        E: Send + Sync + 'static,
        I: Layer<K, V, E>,
    {
        let compute = ComputeFn::from_layer(layer);
        Barrier {
            inner: self.inner(compute),
        }
    }

    /// Guards a synchronous closure.
    pub fn build_blocking<K, V, E, F>(self, f: F) -> BlockingBarrier<K, V, E, L>
    where
        E: Send + Sync + 'static,
        F: Fn(&K) -> Result<V, E> + Send + Sync + 'static,
    {
        let compute = ComputeFn::from_blocking(f);
        BlockingBarrier {
            inner: self.inner(compute),
        }
    }

    /// Guards a blocking layer.
    pub fn wrap_blocking<K, V, E, I>(self, layer: I) -> BlockingBarrier<K, V, E, L>
    where
        E: Send + Sync + 'static,
        I: BlockingLayer<K, V, E>,
    {
        let compute = ComputeFn::from_blocking_layer(layer);
        BlockingBarrier {
            inner: self.inner(compute),
        }
    }
}

impl<K, V, E, L> Inner<K, V, E, L>
where
    K: Send + Sync + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
    L: Lock<K>,
{
    async fn call(&self, key: &K, mode: WaitMode) -> Result<V, Error<E>> {
        let _guard = match self.lock.acquire(key, self.contention, mode).await {
            Ok(g) => Some(g),
            Err(LockError::Busy) => return Err(Error::Busy),
            Err(LockError::Timeout(d)) => match self.contention {
                Contention::ComputeAfter(_) => None,
                _ => return Err(Error::WaitTimeout(d)),
            },
        };
        self.compute.run(key).await
    }
}

impl<K, V, E, L> Barrier<K, V, E, L>
where
    K: Clone + Send + Sync + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
    L: Lock<K>,
{
    /// Runs the inner layer for `key` while holding the key's lock.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use herdless::{barrier, LocalLock};
    /// let guarded = barrier(LocalLock::new())
    ///     .build(|k: u32| async move { Ok::<_, std::io::Error>(k + 1) });
    /// assert_eq!(guarded.get(&1).await.unwrap(), 2);
    /// # }
    /// ```
    pub async fn get(&self, key: &K) -> Result<V, Error<E>> {
        self.inner.call(key, WaitMode::Async).await
    }
}

impl<K, V, E, L> Clone for Barrier<K, V, E, L> {
    fn clone(&self) -> Self {
        Barrier {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V, E, L> Layer<K, V, E> for Barrier<K, V, E, L>
where
    K: Clone + Send + Sync + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
    L: Lock<K>,
{
    fn call(&self, key: &K) -> BoxFuture<'static, Result<V, Error<E>>> {
        let this = self.clone();
        let key = key.clone();
        async move { this.get(&key).await }.boxed()
    }
}

impl<K, V, E, L> BlockingBarrier<K, V, E, L>
where
    K: Send + Sync + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
    L: Lock<K>,
{
    /// Runs the inner layer for `key` while holding the key's lock, on this thread.
    ///
    /// ```
    /// use herdless::{barrier, LocalLock};
    /// let guarded = barrier(LocalLock::new()).build_blocking(|k: &u32| Ok::<_, String>(k + 1));
    /// assert_eq!(guarded.get(&1).unwrap(), 2);
    /// ```
    pub fn get(&self, key: &K) -> Result<V, Error<E>> {
        block_on(self.inner.call(key, WaitMode::Blocking))
    }
}

impl<K, V, E, L> Clone for BlockingBarrier<K, V, E, L> {
    fn clone(&self) -> Self {
        BlockingBarrier {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V, E, L> BlockingLayer<K, V, E> for BlockingBarrier<K, V, E, L>
where
    K: Send + Sync + 'static,
    V: Send + 'static,
    E: Send + Sync + 'static,
    L: Lock<K>,
{
    fn call(&self, key: &K) -> Result<V, Error<E>> {
        self.get(key)
    }
}
