//! Cache operations and naming rules on a real `redis-server` (private, started per test).
//! Two `RedisStore`s on one server stand for two processes: each has its own connections,
//! subscriber and in-process state. Computations are counted with an `INCR` inside the closure.

mod support;

use herdless::store::{LockOutcome, RedisStore, Store};
use herdless::{memoize_stampede, Contention, Lock, WaitMode};
use std::time::Duration;
use support::common::acl;
use support::{redis_or_skip, wait_until};

const MIN: Duration = Duration::from_secs(60);

fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(url)
        .prefix(prefix)
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn counted(
    s: &RedisStore,
    url: &str,
) -> herdless::BlockingMemoized<String, String, String, RedisStore> {
    let client = redis::Client::open(url).unwrap();
    memoize_stampede(s, MIN)
        .name("ops")
        .build_blocking(move |k: &String| {
            let mut con = client.get_connection().map_err(|e| e.to_string())?;
            let n: u64 = redis::cmd("INCR")
                .arg("runs")
                .query(&mut con)
                .map_err(|e| e.to_string())?;
            Ok(format!("{k}#{n}"))
        })
        .unwrap()
}

#[test]
fn invalidate_and_insert_reach_another_process() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let (a_store, b_store) = (store(&url, "ops"), store(&url, "ops"));
    let (a, b) = (counted(&a_store, &url), counted(&b_store, &url));
    let k = "home".to_string();
    assert_eq!(a.get(&k).unwrap(), "home#1");
    assert_eq!(b.get(&k).unwrap(), "home#1", "B reads A's value");
    a.invalidate(&k).unwrap();
    assert_eq!(b.peek(&k), None);
    assert_eq!(
        b.get(&k).unwrap(),
        "home#2",
        "B computes after A invalidated"
    );
    a.insert(&k, "inserted".into()).unwrap();
    assert_eq!(b.get(&k).unwrap(), "inserted");
    assert_eq!(b.refresh(&k).unwrap(), "home#3");
    assert_eq!(a.get(&k).unwrap(), "home#3");
    let other = "other".to_string();
    assert_eq!(a.get(&other).unwrap(), "other#4");
    b.invalidate_all().unwrap();
    assert_eq!(b.peek(&k), None, "the invalidating process sees it at once");
    // Another process sees it as soon as the announcement arrives (bounded: see
    // tests/redis_versions.rs for the bound without pub/sub).
    wait_until("A sees invalidate_all", Duration::from_secs(5), || {
        a.peek(&k).is_none() && a.peek(&other).is_none()
    });
}

/// Glob characters in the prefix are escaped: `invalidate_all` under prefix `p*` leaves the
/// keys of prefix `px` alone.
#[test]
fn invalidate_all_is_confined_to_its_prefix_and_function() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let (star, px) = (store(&url, "p*"), store(&url, "px"));
    let (f_star, f_px) = (counted(&star, &url), counted(&px, &url));
    let k = "k".to_string();
    f_star.get(&k).unwrap();
    f_px.get(&k).unwrap();
    f_star.invalidate_all().unwrap();
    assert_eq!(f_star.peek(&k), None);
    assert_eq!(
        f_px.peek(&k),
        Some("k#2".to_string()),
        "another prefix untouched"
    );
}

#[test]
fn a_function_on_a_shared_store_needs_a_name() {
    let s = RedisStore::new("redis://127.0.0.1:1/").unwrap();
    let err = memoize_stampede(&s, MIN)
        .build_blocking_infallible(|k: &String| k.clone())
        .expect_err("an unnamed function on Redis must be rejected");
    assert_eq!(err.field(), "name");
}

/// A barrier lock named `page` and a function named `barrier:page` used to share a lock key.
#[test]
fn barrier_locks_and_functions_have_separate_key_spaces() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let s = store(&server.url(), "sep");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _held = s
            .lock("page")
            .acquire(&"k".to_string(), Contention::FailFast, WaitMode::Async)
            .await
            .unwrap();
        let ns = Store::<String, String>::namespace(&s, "barrier:page");
        let got = Store::<String, String>::lock_or_get(
            &s,
            &ns,
            &"k".to_string(),
            Duration::from_secs(1),
            Duration::from_secs(1),
            0,
        )
        .await
        .unwrap();
        assert!(
            matches!(got, LockOutcome::Acquired(_)),
            "the function's lock is its own"
        );
    });
}

/// Redis 7's default `acl-pubsub-default resetchannels`: a user without channel permission.
/// The write script's PUBLISH must not fail the write or trip the breaker, and the refused
/// subscription switches the store to poll-only waits, reported once in stats.
#[test]
fn a_user_without_channel_permission_still_caches_and_locks() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let mut con = server.raw();
    acl(
        &mut con,
        &["nochan", "on", ">pw", "~*", "resetchannels", "+@all"],
    );
    let url = format!("redis://nochan:pw@127.0.0.1:{}/", server.port());
    let s = store(&url, "acl");
    let f = counted(&s, &server.url());
    support::wait_until(
        "the refused subscription to be noticed",
        support::BOUND,
        || {
            s.stats()
                .pubsub_refused
                .load(std::sync::atomic::Ordering::SeqCst)
                == 1
        },
    );
    for i in 0..5 {
        let k = format!("cold{i}");
        let v = f.get(&k).unwrap();
        assert_eq!(f.get(&k).unwrap(), v, "cached: the second call is a hit");
    }
    assert!(!s.circuit_open(), "publish refusals never trip the breaker");
    assert_eq!(
        s.stats().errors.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(f.stats().computations, 5);
}
