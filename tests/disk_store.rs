//! The disk store in one process: bounds, bad files, untrusted records, facades over it.

#![cfg(all(feature = "disk", target_os = "linux"))]

use herdless::store::{DiskStore, Lookup};
use herdless::{memoize_stampede, Entry, Store};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

const TTL: Duration = Duration::from_secs(600);

fn fresh_dir(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("herdless-diskstore-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn entry<V>(value: V, ttl: Duration) -> Entry<V> {
    use herdless::Clock;
    Entry {
        value,
        delta_us: 10,
        expires_at: herdless::SystemClock::new().now() + ttl.as_nanos() as u64,
        write_id: 0,
    }
}

fn set<V: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static>(
    s: &DiskStore,
    name: &str,
    k: u64,
    v: V,
    ttl: Duration,
) {
    let ns = Store::<u64, V>::namespace(s, name);
    futures::executor::block_on(s.set(&ns, &k, entry(v, ttl), ttl, None)).expect("set");
}

#[test]
fn a_flood_of_distinct_keys_stays_under_the_byte_limit() {
    let dir = fresh_dir("flood");
    let limit = 1u64 << 20;
    let s = DiskStore::builder(&dir).max_bytes(limit).build().unwrap();
    let payload = "x".repeat(200);
    for k in 0..20_000u64 {
        set(&s, "flood", k, payload.clone(), TTL);
        assert!(
            s.bytes() <= limit,
            "after {k} writes: {} bytes held",
            s.bytes()
        );
    }
    let st = s.stats();
    assert!(
        st.evictions.load(Ordering::Relaxed) > 0,
        "live records were evicted"
    );
    assert_eq!(
        st.write_errors.load(Ordering::Relaxed),
        0,
        "no write failed"
    );
    // The file is capped by the map size (2 × limit + 16 MiB).
    assert!(
        st.file_size() <= 2 * limit + (16 << 20),
        "file {} bytes",
        st.file_size()
    );
    // The newest key is there (it was written last, after culling).
    let ns = Store::<u64, String>::namespace(&s, "flood");
    assert!(matches!(
        Store::<u64, String>::get_now(&s, &ns, &19_999),
        Lookup::Found(_)
    ));
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn expired_records_are_culled_before_live_ones() {
    let dir = fresh_dir("expired-first");
    let s = DiskStore::builder(&dir).max_entries(100).build().unwrap();
    for k in 0..50u64 {
        set(&s, "f", k, k, Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20)); // let those 50 expire
    for k in 50..150u64 {
        set(&s, "f", k, k, TTL);
    }
    assert!(s.len() <= 100, "{} records", s.len());
    let st = s.stats();
    assert!(
        st.culls.load(Ordering::Relaxed) >= 50,
        "every expired record culled"
    );
    // Of the 100 live records, only as many were evicted as the expired ones could not cover.
    assert!(
        st.evictions.load(Ordering::Relaxed) <= 50,
        "evicted {}",
        st.evictions.load(Ordering::Relaxed)
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_foreign_or_truncated_file_is_a_clear_error_naming_the_path_or_is_rebuilt() {
    let dir = fresh_dir("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("data.mdb"), vec![0xAB; 100_000]).unwrap();
    let err = DiskStore::open(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert!(
        msg.contains("not a herdless disk store or corrupt"),
        "{msg}"
    );

    std::fs::write(dir.join("data.mdb"), b"short").unwrap();
    let msg = DiskStore::open(&dir).unwrap_err().to_string();
    assert!(msg.contains("truncated"), "{msg}");

    let s = DiskStore::builder(&dir)
        .rebuild_if_corrupt(true)
        .build()
        .expect("rebuilt");
    set(&s, "f", 1, 1u64, TTL);
    assert_eq!(s.len(), 1);
    drop(s);
    let aside: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with(&format!(
                "{}.corrupt-",
                dir.file_name().unwrap().to_string_lossy()
            ))
        })
        .collect();
    assert_eq!(aside.len(), 1, "the corrupt store was moved aside");
    for a in aside {
        let _ = std::fs::remove_dir_all(a.path());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_record_of_another_type_is_a_counted_miss() {
    let dir = fresh_dir("types");
    let s = DiskStore::open(&dir).unwrap();
    set(&s, "f", 1, "not a number".to_string(), TTL);
    let ns = Store::<u64, u64>::namespace(&s, "f");
    assert_eq!(Store::<u64, u64>::get_now(&s, &ns, &1), Lookup::Missing);
    assert_eq!(s.stats().decode_errors.load(Ordering::Relaxed), 1);
    // The memoized function recomputes it (under the lock) and the next call hits.
    let f = memoize_stampede(&s, TTL)
        .name("f")
        .build_blocking_infallible(|k: &u64| k * 10)
        .unwrap();
    assert_eq!(f.get(&1).unwrap(), 10);
    assert_eq!(Store::<u64, u64>::get_now(&s, &ns, &1).clone(), {
        match Store::<u64, u64>::get_now(&s, &ns, &1) {
            Lookup::Found(e) => Lookup::Found(e),
            other => panic!("expected the recomputed value, got {other:?}"),
        }
    });
    drop((f, s));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_cache_operation_works_over_the_disk_store() {
    let dir = fresh_dir("ops");
    let s = DiskStore::open(&dir).unwrap();
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = runs.clone();
    let f = memoize_stampede(&s, TTL)
        .name("ops")
        .build_blocking_infallible(move |k: &String| {
            format!("{k}#{}", r.fetch_add(1, Ordering::SeqCst))
        })
        .unwrap();
    let k = "a".to_string();
    assert_eq!(f.get(&k).unwrap(), "a#0");
    assert_eq!(f.get(&k).unwrap(), "a#0", "a hit");
    assert_eq!(f.peek(&k), Some("a#0".to_string()));
    f.insert(&k, "inserted".to_string()).unwrap();
    assert_eq!(f.get(&k).unwrap(), "inserted");
    assert_eq!(f.refresh(&k).unwrap(), "a#1");
    assert_eq!(f.get(&k).unwrap(), "a#1");
    f.invalidate(&k).unwrap();
    assert_eq!(f.peek(&k), None);
    assert_eq!(f.get(&k).unwrap(), "a#2");
    f.get(&"b".to_string()).unwrap();
    f.invalidate_all().unwrap();
    assert_eq!(f.peek(&k), None);
    assert_eq!(f.peek(&"b".to_string()), None);
    assert_eq!(f.get(&k).unwrap(), "a#4");
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    drop((f, s));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invalid_settings_name_the_field() {
    let dir = fresh_dir("settings");
    let e = DiskStore::builder(&dir).max_bytes(1).build().unwrap_err();
    assert!(e.to_string().contains("max_bytes"), "{e}");
    let e = DiskStore::builder(&dir).max_entries(0).build().unwrap_err();
    assert!(e.to_string().contains("max_entries"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `stale_if_error` on disk: a record outlives its logical expiry by the function's grace,
/// even under culling (which removes expired records first); reads report the logical expiry,
/// and a fresh engine (a restarted process) serves the record when the recomputation fails. A
/// function without the grace loses its expired record to the same culling.
#[test]
fn stale_if_error_keeps_the_record_through_its_grace_under_culling() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let dir = fresh_dir("grace");
    let s = DiskStore::builder(&dir).max_entries(64).build().unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let ttl = Duration::from_millis(200);
    let build = |name: &str, grace: Option<Duration>| {
        let d = down.clone();
        let b = memoize_stampede(&s, ttl).name(name).beta(0.0);
        let b = match grace {
            Some(g) => b.stale_if_error(g),
            None => b,
        };
        b.build_blocking(move |k: &u64| {
            if d.load(Ordering::SeqCst) {
                Err("db down".to_string())
            } else {
                Ok(k * 10)
            }
        })
        .unwrap()
    };
    let graced = build("graced", Some(Duration::from_secs(600)));
    let plain = build("plain", None);
    assert_eq!(graced.get(&1).unwrap(), 10);
    assert_eq!(plain.get(&1).unwrap(), 10);
    // A fresh engine later on: the value can only come from the file.
    drop((graced, plain));
    std::thread::sleep(ttl + Duration::from_millis(100)); // both logically expired
                                                          // Churn over `max_entries`: every write culls a sample of 64, which covers the whole file.
    for k in 0..2_000u64 {
        set(&s, "churn", k, k, Duration::from_millis(1));
    }
    assert!(s.stats().culls.load(Ordering::Relaxed) > 1_000);
    let now = {
        use herdless::Clock;
        herdless::SystemClock::new().now()
    };
    let ns = |name| Store::<u64, u64>::namespace(&s, name);
    let read = |name| futures::executor::block_on(Store::<u64, u64>::get(&s, &ns(name), &1, now));
    let kept = read("graced").unwrap().expect("kept through the grace");
    assert_eq!(kept.value, 10);
    assert!(kept.expires_at <= now, "reported with its logical expiry");
    assert!(
        read("plain").unwrap().is_none(),
        "without the grace the expired record is culled"
    );
    down.store(true, Ordering::SeqCst);
    let graced = build("graced", Some(Duration::from_secs(600)));
    assert_eq!(
        graced.get(&1).unwrap(),
        10,
        "the stale value, not the error"
    );
    assert_eq!(graced.stats().stale_served_on_error, 1);
    let plain = build("plain", None);
    assert!(plain.get(&1).is_err(), "no grace: the error");
    drop((graced, plain));
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A background refresher holds its key with a lease of its own: a hard miss in another
/// process waits for it instead of taking over on the lapsed lease of an earlier holder.
#[test]
fn a_refresher_is_not_taken_over_on_an_earlier_holders_lapsed_lease() {
    use herdless::store::{LockOutcome, RefreshOutcome};
    use herdless::Clock;
    let dir = fresh_dir("refresh-lease");
    let (a, b) = (
        DiskStore::open(&dir).unwrap(),
        DiskStore::open(&dir).unwrap(),
    );
    let ns = Store::<u64, String>::namespace(&a, "f");
    let now = || herdless::SystemClock::new().now();
    let short = Duration::from_millis(10);
    // An earlier holder with a short maximum hold, released at once.
    match futures::executor::block_on(Store::<u64, String>::lock_or_get(
        &a,
        &ns,
        &1,
        short,
        short,
        now(),
    ))
    .unwrap()
    {
        LockOutcome::Acquired(p) => drop(p),
        _ => panic!("a fresh key is acquired"),
    }
    std::thread::sleep(3 * short); // its deadline has passed
    let long = Duration::from_secs(60);
    let refresher = match futures::executor::block_on(Store::<u64, String>::try_lock_refresh(
        &a,
        &ns,
        &1,
        herdless::store::Seen {
            expires_at: 0,
            write_id: 0,
        },
        long,
        long,
        now(),
    ))
    .unwrap()
    {
        RefreshOutcome::Acquired(p) => p,
        _ => panic!("nobody holds the key"),
    };
    assert!(
        matches!(
            futures::executor::block_on(Store::<u64, String>::lock_or_get(
                &b,
                &ns,
                &1,
                long,
                long,
                now()
            ))
            .unwrap(),
            LockOutcome::Busy
        ),
        "the other process waits for the refresher"
    );
    drop(refresher);
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn get_many_answers_each_key_as_get_does_in_order() {
    use herdless::Clock;
    let dir = fresh_dir("get-many");
    let s = DiskStore::open(&dir).unwrap();
    set(&s, "f", 1, 10u64, TTL);
    set(&s, "f", 3, 30u64, TTL);
    set(&s, "f", 4, "another type".to_string(), TTL);
    let ns = Store::<u64, u64>::namespace(&s, "f");
    let now = herdless::SystemClock::new().now();
    let many =
        futures::executor::block_on(Store::<u64, u64>::get_many(&s, &ns, &[3, 2, 1, 4], now));
    let values: Vec<Option<u64>> = many
        .into_iter()
        .map(|r| r.expect("read").map(|e| e.value))
        .collect();
    assert_eq!(values, [Some(30), None, Some(10), None]);
    // Each answer equals the single-key read.
    for k in [1u64, 2, 3, 4] {
        let one = futures::executor::block_on(Store::<u64, u64>::get(&s, &ns, &k, now)).unwrap();
        assert_eq!(
            one.map(|e| e.value),
            values[[2usize, 1, 0, 3][(k - 1) as usize]]
        );
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
