//! Helpers shared by the Redis and near-tier tests (beside the server helpers of `support`):
//! a memoized function that reads the Redis key `truth`, setting that key, a near tier over a
//! shared store, ACL users, and counter reads.

use herdless::store::{NearStore, RedisStore};
use herdless::{memoize_stampede, BlockingMemoized, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A memoized function named `page` (β = 0, so no early refresh) whose closure calls `on_run`,
/// then returns the Redis key `truth` (or "none"), read with its own connection to `url`.
pub fn truth_fn<S: Store<String, String>>(
    s: &S,
    url: &str,
    ttl: Duration,
    on_run: impl Fn() + Send + Sync + 'static,
) -> BlockingMemoized<String, String, String, S> {
    let client = redis::Client::open(url).unwrap();
    memoize_stampede(s, ttl)
        .name("page")
        .beta(0.0)
        .build_blocking(move |_k: &String| {
            on_run();
            let mut con = client.get_connection().map_err(|e| e.to_string())?;
            let v: Option<String> = redis::cmd("GET")
                .arg("truth")
                .query(&mut con)
                .map_err(|e| e.to_string())?;
            Ok(v.unwrap_or_else(|| "none".into()))
        })
        .unwrap()
}

/// Sets the Redis key `truth` (what [`truth_fn`] reads) to `v`.
pub fn set_truth(con: &mut redis::Connection, v: &str) {
    let _: () = redis::cmd("SET").arg("truth").arg(v).query(con).unwrap();
}

/// A near tier of capacity 1000 over `shared`, trusting a copy without messages for
/// `max_stale`.
pub fn near_tier(shared: &RedisStore, max_stale: Duration) -> NearStore<String, String> {
    NearStore::builder(shared)
        .capacity(1000)
        .max_stale(max_stale)
        .build()
        .unwrap()
}

/// `ACL SETUSER` with `args` (the user name first, then its rules).
pub fn acl(con: &mut redis::Connection, args: &[&str]) {
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(args)
        .query::<()>(con)
        .unwrap();
}

/// A counter's value (a store's or a test's own).
pub fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::SeqCst)
}
