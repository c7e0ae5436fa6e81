//! `memoize_stampede`: XFetch early refresh, single-flight refresh, single-flight hard misses.

use crate::builder::Builder;
use crate::store::contract::Store;
use std::time::Duration;

/// Memoizes a function so that it runs about once per expiry however many callers ask.
///
/// - A hit far from expiry is served at once (no clock read beyond a cheap coarse one).
/// - Near expiry each hit draws: with probability `exp(−gap/(δ·β))` it *tries* to claim the
///   key's refresh (no waiting); the winner recomputes in the background, everyone keeps being
///   served the current value.
/// - A hard miss (no unexpired value) lets exactly one caller per key compute; the others wait
///   for its result under the [`Contention`](crate::Contention) policy.
///
/// `ttl` must be positive. β is automatic by default ([`Builder::beta_auto`](crate::Builder::beta_auto)
/// with [`LeadTarget::default`](crate::LeadTarget)); `.beta(b)` fixes it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use herdless::{memoize_stampede, MemoryStore};
/// use std::time::Duration;
/// let store = MemoryStore::<String, String>::new(10_000).unwrap();
/// let page = memoize_stampede(&store, Duration::from_secs(1))
///     .name("landing_page")
///     .beta(1.0)
///     .build(|k: String| async move {
///         // ... the expensive part ...
///         Ok::<_, std::io::Error>(format!("<html>{k}</html>"))
///     })
///     .unwrap();
/// assert_eq!(page.get("home").await.unwrap(), "<html>home</html>");
/// assert_eq!(page.stats().hard_misses, 1);
/// # }
/// ```
pub fn memoize_stampede<K, V, S>(store: &S, ttl: Duration) -> Builder<K, V, S>
where
    S: Store<K, V>,
{
    Builder::new(store.clone(), ttl, true)
}
