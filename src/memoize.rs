//! [`memoize`]: the plain memoizing layer (DiskCache's `memoize`), one building block of the
//! barrier recipes.

use crate::builder::Builder;
use crate::store::contract::Store;
use std::time::Duration;

/// A plain memoizing layer: look up, else compute and store for `ttl`. No early refresh, no
/// single-flight (compose with [`barrier`](crate::barrier) for that, or use
/// [`memoize_stampede`](crate::memoize_stampede)). A `ttl` of zero looks up and never stores:
/// the optimistic outer layer of double-checked locking.
///
/// ```
/// use herdless::{barrier, memoize, LocalLock, MemoryStore};
/// use std::time::Duration;
/// // DiskCache's recipe: memoize(expire=0)(barrier(Lock)(memoize(expire=1)(f)))
/// let store = MemoryStore::<String, String>::new(1000).unwrap();
/// let inner = memoize(&store, Duration::from_secs(1))
///     .name("page")
///     .build_blocking_infallible(|k: &String| format!("<h1>{k}</h1>"))
///     .unwrap();
/// let locked = barrier(LocalLock::new()).wrap_blocking(inner);
/// let page = memoize(&store, Duration::ZERO).name("page").wrap_blocking(locked).unwrap();
/// assert_eq!(page.get(&"home".to_string()).unwrap(), "<h1>home</h1>");
/// ```
pub fn memoize<K, V, S>(store: &S, ttl: Duration) -> Builder<K, V, S>
where
    S: Store<K, V>,
{
    Builder::new(store.clone(), ttl, false)
}
