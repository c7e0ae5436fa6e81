//! Recursion on the same key (issue 21 item 11): a closure that asks its own function for the
//! key it computes used to wait for itself for the whole contention policy (30 s by default),
//! then fail. It now panics at once with a message naming the function; recursion on other keys
//! keeps working. Every test is bounded by a 10 s watchdog (far below the 30 s the bug waits),
//! so the code before the fix fails instead of hanging.

use herdless::{memoize_stampede, BlockingMemoized, Memoized, MemoryStore};
use std::convert::Infallible;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(10);

type Blocking = BlockingMemoized<u64, u64, Infallible, MemoryStore<u64, u64>>;
type Async = Memoized<u64, u64, Infallible, MemoryStore<u64, u64>>;

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "<non-string panic>".into(),
    }
}

/// Runs `f` on its own thread; its outcome (a value or the panic's text) within [`BOUND`].
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(BOUND) {
        Ok(out) => out.map_err(panic_text),
        Err(_) => panic!("the call did not return within {BOUND:?}: it waits for itself"),
    }
}

/// 0 is 1; 1 asks for 1 itself; 2 asks for 0; 3 asks for 4, which asks for 3 (a cycle).
fn blocking_fn(name: &str) -> Arc<OnceLock<Blocking>> {
    let store = MemoryStore::<u64, u64>::new(64).unwrap();
    let cell: Arc<OnceLock<Blocking>> = Arc::new(OnceLock::new());
    let me = cell.clone();
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .name(name)
        .build_blocking_infallible(move |k: &u64| {
            let f = me.get().unwrap();
            match *k {
                0 => 1,
                1 => f.get(&1).unwrap(),
                2 => f.get(&0).unwrap() + 1,
                3 => f.get(&4).unwrap(),
                _ => f.get(&3).unwrap(),
            }
        })
        .unwrap();
    assert!(cell.set(f).is_ok());
    cell
}

#[test]
fn blocking_recursion_on_the_same_key_panics_at_once_naming_the_function() {
    let f = blocking_fn("recursive_blocking");
    let out = bounded(move || f.get().unwrap().get(&1));
    let msg = out.expect_err("recursion on the same key must panic");
    assert!(msg.contains("`recursive_blocking`"), "{msg}");
    assert!(msg.contains("same key"), "{msg}");
}

#[test]
fn blocking_recursion_through_another_key_back_to_the_first_panics() {
    let f = blocking_fn("recursive_cycle");
    let g = f.clone();
    let msg = bounded(move || g.get().unwrap().get(&3)).expect_err("a cycle must panic");
    assert!(msg.contains("`recursive_cycle`"), "{msg}");
    // Nothing is poisoned: recursion on another key computes.
    let out = bounded(move || f.get().unwrap().get(&2).unwrap());
    assert_eq!(out.unwrap(), 2);
}

#[test]
fn blocking_recursion_on_other_keys_still_works() {
    let store = MemoryStore::<u64, u64>::new(64).unwrap();
    let cell: Arc<OnceLock<Blocking>> = Arc::new(OnceLock::new());
    let me = cell.clone();
    let fib = memoize_stampede(&store, Duration::from_secs(60))
        .name("fib_blocking")
        .build_blocking_infallible(move |k: &u64| {
            let f = me.get().unwrap();
            if *k < 2 {
                *k
            } else {
                f.get(&(k - 1)).unwrap() + f.get(&(k - 2)).unwrap()
            }
        })
        .unwrap();
    assert!(cell.set(fib).is_ok());
    let out = bounded(move || cell.get().unwrap().get(&30).unwrap());
    assert_eq!(out.unwrap(), 832_040);
}

fn async_fn(name: &str) -> Arc<OnceLock<Async>> {
    let store = MemoryStore::<u64, u64>::new(64).unwrap();
    let cell: Arc<OnceLock<Async>> = Arc::new(OnceLock::new());
    let me = cell.clone();
    let f = memoize_stampede(&store, Duration::from_secs(60))
        .name(name)
        .build_infallible(move |k: u64| {
            let me = me.clone();
            async move {
                let f = me.get().unwrap();
                match k {
                    0 | 1 => k,
                    // 100 asks for itself; below it, Fibonacci on other keys.
                    100 => Box::pin(f.get(&100)).await.unwrap(),
                    k => {
                        Box::pin(f.get(&(k - 1))).await.unwrap()
                            + Box::pin(f.get(&(k - 2))).await.unwrap()
                    }
                }
            }
        })
        .unwrap();
    assert!(cell.set(f).is_ok());
    cell
}

#[test]
fn async_recursion_on_the_same_key_panics_at_once_naming_the_function() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let f = async_fn("recursive_async");
    let out = rt.block_on(async move {
        let call = tokio::spawn(async move { f.get().unwrap().get(&100).await });
        tokio::time::timeout(BOUND, call)
            .await
            .expect("the call did not return in time: it waits for itself")
    });
    let err = out.expect_err("recursion on the same key must panic");
    let msg = panic_text(err.into_panic());
    assert!(msg.contains("`recursive_async`"), "{msg}");
    assert!(msg.contains("same key"), "{msg}");
}

#[test]
fn async_recursion_on_other_keys_still_works() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let f = async_fn("fib_async");
    let out = rt.block_on(async move {
        tokio::time::timeout(BOUND, async move { f.get().unwrap().get(&40).await })
            .await
            .expect("bounded")
    });
    assert_eq!(out.unwrap(), 102_334_155);
}
