//! Layers: anything callable with a key. A memoized function, a barrier and a plain closure are
//! all layers, which is what lets them nest (DiskCache's recipes).
//!
//! [`Layer`] and [`BlockingLayer`] are the public traits; [`ComputeFn`] is the innermost
//! callable, type-erased once at build time (the hit path never touches it, so the indirection
//! costs nothing there).

use crate::error::Error;
use crate::wait::WaitMode;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::sync::Arc;

/// Something async callable with a key: a memoized function or a barrier. Layers nest through
/// [`Builder::wrap`](crate::Builder::wrap) and [`BarrierBuilder::wrap`](crate::BarrierBuilder::wrap).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use herdless::{barrier, memoize, Layer, LocalLock, MemoryStore};
/// use std::time::Duration;
/// let store = MemoryStore::<u32, u32>::new(100).unwrap();
/// let inner = memoize(&store, Duration::from_secs(1))
///     .name("f")
///     .build(|k: u32| async move { Ok::<_, String>(k + 1) })
///     .unwrap();
/// let guarded = barrier(LocalLock::new()).wrap(inner);
/// assert_eq!(Layer::call(&guarded, &1).await.unwrap(), 2);
/// # }
/// ```
pub trait Layer<K, V, E>: Send + Sync + 'static {
    /// Calls the layer.
    fn call(&self, key: &K) -> BoxFuture<'static, Result<V, Error<E>>>;
}

/// Something synchronously callable with a key: the blocking counterpart of [`Layer`].
///
/// ```
/// use herdless::{barrier, BlockingLayer, LocalLock};
/// let guarded = barrier(LocalLock::new()).build_blocking(|k: &u32| Ok::<_, String>(k * 3));
/// assert_eq!(BlockingLayer::call(&guarded, &2).unwrap(), 6);
/// ```
pub trait BlockingLayer<K, V, E>: Send + Sync + 'static {
    /// Calls the layer on the current thread.
    fn call(&self, key: &K) -> Result<V, Error<E>>;
}

/// The innermost callable: the user's closure or an inner layer.
pub(crate) enum ComputeFn<K, V, E> {
    Async(AsyncFn<K, V, E>),
    Blocking(BlockingFn<K, V, E>),
}

pub(crate) type AsyncFn<K, V, E> =
    Arc<dyn Fn(&K) -> BoxFuture<'static, Result<V, Error<E>>> + Send + Sync>;
pub(crate) type BlockingFn<K, V, E> = Arc<dyn Fn(&K) -> Result<V, Error<E>> + Send + Sync>;

impl<K: Clone, V, E: Send + Sync + 'static> ComputeFn<K, V, E> {
    /// Wraps the user's async closure, which takes the key by value (herdless clones it, so the
    /// future owns it and `|id: u64| async move { … }` compiles as written); its error becomes
    /// the shared [`Error::Compute`].
    pub(crate) fn from_async<F, Fut>(f: F) -> Self
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<V, E>> + Send + 'static,
    {
        ComputeFn::Async(Arc::new(move |k: &K| {
            f(k.clone())
                .map(|r| r.map_err(|e| Error::Compute(Arc::new(e))))
                .boxed()
        }))
    }
}

impl<K, V, E: Send + Sync + 'static> ComputeFn<K, V, E> {
    /// Wraps the user's synchronous closure; its error becomes the shared [`Error::Compute`].
    pub(crate) fn from_blocking<F>(f: F) -> Self
    where
        F: Fn(&K) -> Result<V, E> + Send + Sync + 'static,
    {
        ComputeFn::Blocking(Arc::new(move |k: &K| {
            f(k).map_err(|e| Error::Compute(Arc::new(e)))
        }))
    }

    /// An inner async layer.
    pub(crate) fn from_layer<L: Layer<K, V, E>>(inner: L) -> Self {
        ComputeFn::Async(Arc::new(move |k: &K| inner.call(k)))
    }

    /// An inner blocking layer.
    pub(crate) fn from_blocking_layer<L: BlockingLayer<K, V, E>>(inner: L) -> Self {
        ComputeFn::Blocking(Arc::new(move |k: &K| inner.call(k)))
    }
}

impl<K, V, E> ComputeFn<K, V, E> {
    /// How callers of this function wait: async closures await, blocking ones park.
    pub(crate) fn mode(&self) -> WaitMode {
        match self {
            ComputeFn::Async(_) => WaitMode::Async,
            ComputeFn::Blocking(_) => WaitMode::Blocking,
        }
    }

    /// Runs the closure (a blocking closure runs on the polling thread).
    pub(crate) async fn run(&self, key: &K) -> Result<V, Error<E>> {
        match self {
            ComputeFn::Async(f) => f(key).await,
            ComputeFn::Blocking(f) => f(key),
        }
    }
}
