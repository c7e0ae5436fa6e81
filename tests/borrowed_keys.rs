//! Borrowed lookups: a function keyed by `String` (or `Vec<u8>`) takes `&str` (or `&[u8]`) in
//! `get`, `get_with`, `peek`, `invalidate`, `insert`, `refresh`, on both facades and every
//! store, and reaches the same entry as the owned key. On Redis the key's encoding does not
//! depend on which form it came in.

mod support;

use herdless::store::RedisStore;
use herdless::{memoize_stampede, Contention, MemoryStore};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::redis_or_skip;

const MIN: Duration = Duration::from_secs(60);

/// A blocking function whose value says how many times it ran: `"<key>#<n>"`.
fn counted_blocking<S: herdless::Store<String, String>>(
    store: &S,
) -> herdless::BlockingMemoized<String, String, std::convert::Infallible, S> {
    let runs = Arc::new(AtomicU32::new(0));
    memoize_stampede(store, MIN)
        .name("borrowed")
        .build_blocking_infallible(move |k: &String| {
            format!("{k}#{}", runs.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .unwrap()
}

#[test]
fn blocking_str_lookups_reach_the_string_entry() {
    let store = MemoryStore::<String, String>::new(100).unwrap();
    let f = counted_blocking(&store);
    let owned = "bob".to_string();
    assert_eq!(f.get("bob").unwrap(), "bob#1");
    assert_eq!(
        f.get(&owned).unwrap(),
        "bob#1",
        "owned key hits the &str entry"
    );
    assert_eq!(f.get_with("bob", Contention::FailFast).unwrap(), "bob#1");
    assert_eq!(f.peek("bob").as_deref(), Some("bob#1"));
    assert_eq!(f.stats().computations, 1);
    assert_eq!(f.stats().hits, 2); // peek does not count

    f.invalidate("bob").unwrap();
    assert_eq!(f.peek(&owned), None, "&str invalidates the owned entry");
    f.insert("bob", "inserted".to_string()).unwrap();
    assert_eq!(f.get(&owned).unwrap(), "inserted");
    assert_eq!(f.refresh("bob").unwrap(), "bob#2");
    assert_eq!(f.get(&owned).unwrap(), "bob#2");
    f.insert_with_delta("bob", "again".into(), Duration::from_millis(1))
        .unwrap();
    assert_eq!(f.peek(&owned).as_deref(), Some("again"));
}

#[test]
fn async_str_lookups_reach_the_string_entry() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = MemoryStore::<String, String>::new(100).unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let f = memoize_stampede(&store, MIN)
            .build_infallible(move |k: String| {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                async move { format!("{k}#{n}") }
            })
            .unwrap();
        let owned = "ann".to_string();
        assert_eq!(f.get(&owned).await.unwrap(), "ann#1");
        assert_eq!(
            f.get("ann").await.unwrap(),
            "ann#1",
            "&str hits the owned entry"
        );
        assert_eq!(
            f.get_with("ann", Contention::FailFast).await.unwrap(),
            "ann#1"
        );
        assert_eq!(f.peek("ann").await.as_deref(), Some("ann#1"));
        assert_eq!(f.stats().computations, 1);

        f.invalidate("ann").await.unwrap();
        assert_eq!(f.peek(&owned).await, None);
        f.insert("ann", "inserted".to_string()).await.unwrap();
        assert_eq!(f.get(&owned).await.unwrap(), "inserted");
        assert_eq!(f.refresh("ann").await.unwrap(), "ann#2");
        f.insert_with_delta("ann", "again".into(), Duration::from_millis(1))
            .await
            .unwrap();
        assert_eq!(f.peek(&owned).await.as_deref(), Some("again"));
    });
}

#[test]
fn byte_slices_look_up_vec_keys() {
    let store = MemoryStore::<Vec<u8>, usize>::new(10).unwrap();
    let f = memoize_stampede(&store, MIN)
        .build_blocking_infallible(|k: &Vec<u8>| k.len())
        .unwrap();
    assert_eq!(f.get(&b"abcd"[..]).unwrap(), 4);
    assert_eq!(f.get(&b"abcd".to_vec()).unwrap(), 4);
    assert_eq!(f.stats().computations, 1);
}

#[test]
fn redis_encodes_a_str_and_a_string_key_alike() {
    // No server needed: building a store is lazy.
    let s = RedisStore::new("redis://127.0.0.1:1").unwrap();
    let owned = "bob".to_string();
    assert_eq!(s.value_key("f", &owned), s.value_key("f", &"bob"));
    assert_eq!(
        s.value_key("f", &b"k".to_vec()),
        s.value_key("f", &&b"k"[..])
    );
    assert_ne!(s.value_key("f", &owned), s.value_key("f", &"bobby"));
}

#[test]
fn redis_value_stored_by_owned_key_is_hit_by_str() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let store = RedisStore::builder(&url)
        .prefix("borrowed")
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // Two stores on one server stand for two processes.
    let other = RedisStore::builder(&url)
        .prefix("borrowed")
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (a, b) = (counted_blocking(&store), counted_blocking(&other));
    let owned = "bob".to_string();
    assert_eq!(a.get(&owned).unwrap(), "bob#1");
    assert_eq!(
        b.get("bob").unwrap(),
        "bob#1",
        "&str reads the owned key's record"
    );
    assert_eq!(b.stats().computations, 0);
    b.insert("eve", "inserted".into()).unwrap();
    assert_eq!(a.get(&"eve".to_string()).unwrap(), "inserted");
    a.invalidate("bob").unwrap();
    assert_eq!(b.peek(&owned), None);
    assert_eq!(a.stats().computations, 1);
}
