//! The disk store across real processes: this test binary re-executed in a child role (see
//! `tests/support`), every child on the same directory, no server.
//!
//! What is counted is counted in files or read back from the store, never inferred from
//! timing; every wait is bounded, so a bug fails instead of hanging. The one figure reported
//! (the take-over delay after a SIGKILL) is printed, and bounded generously.

#![cfg(all(feature = "disk", target_os = "linux"))]

mod support;

use herdless::store::DiskStore;
use herdless::{memoize_stampede, Contention, Store};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::{ChildEnv, ChildProc};

const BOUND: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(600);

fn fresh_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herdless-disk-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// Appends one line to a file (O_APPEND: lines of several processes never interleave).
fn append(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("count file");
    f.write_all(format!("{line}\n").as_bytes()).expect("append");
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) until `path` exists.
fn await_file(path: &Path) {
    let deadline = Instant::now() + BOUND;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn spawn(role: &str, dir: &Path, extra: &[(&str, String)]) -> ChildProc {
    let mut env = vec![("DISK_DIR", dir.display().to_string())];
    env.extend(extra.iter().cloned());
    ChildProc::spawn("child", 0, role, &env)
}

/// A self-checking value: a torn or mixed record cannot pass `intact`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Blob {
    n: u64,
    body: Vec<u8>,
    sum: u64,
}

impl Blob {
    fn new(n: u64, len: usize) -> Self {
        let body: Vec<u8> = (0..len).map(|i| (n as usize * 31 + i) as u8).collect();
        let sum = body.iter().map(|b| *b as u64).sum::<u64>() ^ n;
        Blob { n, body, sum }
    }
    fn intact(&self, n: u64) -> bool {
        *self == Blob::new(n, self.body.len())
    }
}

/// The child roles. As an ordinary test (no child env) it returns at once.
#[test]
fn child() {
    let Some(env) = ChildEnv::get() else { return };
    let dir = PathBuf::from(env.var("DISK_DIR"));
    let store = DiskStore::open(&dir).expect("child opens the store");
    match env.role.as_str() {
        // 8 threads call one cold key at once; each computation appends to the count file.
        "compute" => {
            let count = PathBuf::from(env.var("COUNT_FILE"));
            let page = memoize_stampede(&store, TTL)
                .name("cold")
                .build_blocking_infallible(move |k: &String| {
                    append(&count, &format!("computed {}", std::process::id()));
                    std::thread::sleep(Duration::from_millis(300));
                    format!("value of {k}")
                })
                .expect("memoize");
            support::report("ready", std::process::id());
            await_file(&PathBuf::from(env.var("GO_FILE")));
            let values: Vec<String> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| page.get(&"cold".to_string()).expect("get")))
                    .collect();
                hs.into_iter().map(|h| h.join().expect("thread")).collect()
            });
            assert!(values.iter().all(|v| v == "value of cold"), "{values:?}");
            support::report("done", values.len());
        }
        // Computes a key and hangs in the computation (the parent SIGKILLs it).
        "hang" => {
            let page = memoize_stampede(&store, TTL)
                .name("takeover")
                .build_blocking_infallible(|_k: &String| {
                    support::report("computing", std::process::id());
                    std::thread::sleep(Duration::from_secs(120));
                    "from the killed process".to_string()
                })
                .expect("memoize");
            let _ = page.get(&"k".to_string());
        }
        // Waits behind the hanging process, then computes once the kernel frees its lock.
        "waiter" => {
            let page = memoize_stampede(&store, TTL)
                .name("takeover")
                .contention(Contention::Wait(Duration::from_secs(60)))
                .build_blocking_infallible(|_k: &String| "from the waiter".to_string())
                .expect("memoize");
            support::report("calling", std::process::id());
            let v = page.get(&"k".to_string()).expect("get");
            support::report("got", v);
        }
        // Writes self-checking records in a loop until killed.
        "writer" => {
            let ns = Store::<u64, Blob>::namespace(&store, "blobs");
            support::report("writing", std::process::id());
            let mut i = 0u64;
            loop {
                let n = i % 500;
                let e = herdless::Entry {
                    value: Blob::new(n, 100 + (i as usize * 97) % 20_000),
                    delta_us: 1,
                    expires_at: u64::MAX / 2,
                    write_id: 0,
                };
                futures::executor::block_on(store.set(&ns, &n, e, TTL, None)).expect("set");
                i += 1;
            }
        }
        // Computes (or finds) a value and reports whether it computed.
        "warm" => {
            let computed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let c2 = computed.clone();
            let page = memoize_stampede(&store, TTL)
                .name("warm")
                .build_blocking_infallible(move |_k: &String| {
                    let computed = &c2;
                    computed.store(true, std::sync::atomic::Ordering::SeqCst);
                    format!("computed by {}", std::process::id())
                })
                .expect("memoize");
            let v = page.get(&"k".to_string()).expect("get");
            let c = computed.load(std::sync::atomic::Ordering::SeqCst);
            support::report("warm", format!("{c} {v}"));
        }
        // Reads (registering this thread as an LMDB reader), then hangs until SIGKILLed.
        "reader" => {
            let page = memoize_stampede(&store, TTL)
                .name("reader")
                .build_blocking_infallible(|k: &String| format!("v {k}"))
                .expect("memoize");
            for _ in 0..3 {
                page.get(&"k".to_string()).expect("get");
            }
            support::report("read", std::process::id());
            std::thread::sleep(Duration::from_secs(120));
        }
        // Invalidates one key of the `gen` function.
        "invalidate" => {
            let page = memoize_stampede(&store, TTL)
                .name("gen")
                .build_blocking_infallible(|_k: &String| "never computed here".to_string())
                .expect("memoize");
            page.invalidate(&"k".to_string()).expect("invalidate");
            support::report("invalidated", "");
        }
        // Computes under a short maximum hold; the parent stops it (SIGSTOP) mid-computation.
        "stoppable" => {
            let page = memoize_stampede(&store, TTL)
                .name("stopped")
                .lease_bounds(Duration::from_millis(50), Duration::from_millis(300))
                .build_blocking_infallible(|_k: &String| {
                    support::report("computing", std::process::id());
                    std::thread::sleep(Duration::from_millis(500));
                    "from the stopped process".to_string()
                })
                .expect("memoize");
            let v = page.get(&"k".to_string()).expect("get");
            let fenced = store
                .stats()
                .fenced_writes
                .load(std::sync::atomic::Ordering::Relaxed);
            support::report("got", format!("{v}|fenced {fenced}"));
        }
        "stop-waiter" | "stop-reader" => {
            let page = memoize_stampede(&store, TTL)
                .name("stopped")
                .lease_bounds(Duration::from_millis(50), Duration::from_millis(300))
                .build_blocking_infallible(|_k: &String| "from the waiter".to_string())
                .expect("memoize");
            let v = page.get(&"k".to_string()).expect("get");
            support::report("got", v);
        }
        // A full disk: writes past RLIMIT_FSIZE fail (EFBIG); calls must still answer.
        "fsize" => {
            // SAFETY: plain libc calls; SIGXFSZ ignored so that the write fails instead of
            // killing the process.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let mut lim: libc::rlimit = std::mem::zeroed();
                assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
                let len = std::fs::metadata(dir.join("data.mdb"))
                    .expect("data.mdb")
                    .len();
                lim.rlim_cur = len + (256 << 10);
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
            }
            let page = memoize_stampede(&store, TTL)
                .name("full")
                .build_blocking_infallible(|k: &u64| Blob::new(*k, 16 << 10))
                .expect("memoize");
            for k in 0..200u64 {
                assert!(page.get(&k).expect("fail-open: an answer").intact(k));
            }
            let errors = store
                .stats()
                .write_errors
                .load(std::sync::atomic::Ordering::Relaxed);
            support::report("full", errors);
        }
        // One cache operation on key "a" (or the whole function) of `xops`.
        "xop" => {
            let page = memoize_stampede(&store, TTL)
                .name("xops")
                .build_blocking_infallible(|k: &String| format!("child {k}"))
                .expect("memoize");
            let a = "a".to_string();
            match env.var("OP").as_str() {
                "insert" => page
                    .insert(&a, "inserted by child".to_string())
                    .expect("insert"),
                "refresh" => assert_eq!(page.refresh(&a).expect("refresh"), "child a"),
                "invalidate_all" => page.invalidate_all().expect("invalidate_all"),
                other => panic!("unknown op {other}"),
            }
            support::report("op", "");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn four_processes_eight_threads_one_cold_key_one_computation() {
    let dir = fresh_dir("single-flight");
    let count = dir.join("count");
    let go = dir.join("go");
    let mut kids: Vec<ChildProc> = (0..4)
        .map(|_| {
            spawn(
                "compute",
                &dir.join("store"),
                &[
                    ("COUNT_FILE", count.display().to_string()),
                    ("GO_FILE", go.display().to_string()),
                ],
            )
        })
        .collect();
    for k in &mut kids {
        k.wait_report("ready", BOUND);
    }
    std::fs::write(&go, b"go").expect("go file");
    for k in &mut kids {
        assert_eq!(k.wait_report("done", BOUND), "8");
    }
    let computed = lines(&count);
    assert_eq!(
        computed.len(),
        1,
        "32 callers in 4 processes, one cold key: {computed:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigkill_of_the_computing_process_lets_a_waiter_take_over() {
    let dir = fresh_dir("sigkill").join("store");
    let mut holder = spawn("hang", &dir, &[]);
    holder.wait_report("computing", BOUND);
    let mut waiter = spawn("waiter", &dir, &[]);
    waiter.wait_report("calling", BOUND);
    // Let the waiter reach its wait behind the lock (its outcome does not depend on this).
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    holder.kill();
    let got = waiter.wait_report("got", BOUND);
    let took = killed.elapsed();
    assert_eq!(got, "from the waiter", "the waiter computed after the kill");
    println!("take-over after SIGKILL of the holder: {took:?} (kill -> waiter's answer, via pipe)");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
}

#[test]
fn sigkill_in_the_middle_of_writes_leaves_values_intact_or_absent() {
    let dir = fresh_dir("crash").join("store");
    for round in 0..5u64 {
        let mut w = spawn("writer", &dir, &[]);
        w.wait_report("writing", BOUND);
        std::thread::sleep(Duration::from_millis(40 + 37 * round));
        w.kill();
        let store = DiskStore::open(&dir).expect("the file reopens after a SIGKILL mid-write");
        let ns = Store::<u64, Blob>::namespace(&store, "blobs");
        let mut present = 0;
        for n in 0..500u64 {
            match Store::<u64, Blob>::get_now(&store, &ns, &n) {
                herdless::store::Lookup::Found(e) => {
                    assert!(
                        e.value.intact(n),
                        "round {round}: key {n} torn: {:?}",
                        e.value.n
                    );
                    present += 1;
                }
                herdless::store::Lookup::Missing => {}
                herdless::store::Lookup::NotLocal => panic!("the disk store answers locally"),
            }
        }
        assert_eq!(
            store
                .stats()
                .decode_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        assert!(
            present > 0 || round == 0,
            "round {round}: nothing was written at all"
        );
    }
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
}

/// Issue 20 item 6: the reader slot of a process SIGKILLed while registered as a reader is
/// cleared when the file is next opened (it could pin an old snapshot and make the file grow).
/// Another process keeps the file open meanwhile: the first process to open a file nobody has
/// open rebuilds the whole reader table anyway.
#[test]
fn a_killed_readers_slot_is_cleared_at_open() {
    let dir = fresh_dir("readers").join("store");
    let mut alive = spawn("reader", &dir, &[]);
    alive.wait_report("read", BOUND);
    let mut reader = spawn("reader", &dir, &[]);
    reader.wait_report("read", BOUND);
    reader.kill();
    // This process has not opened the file yet: its open is the one that checks.
    let store = DiskStore::open(&dir).expect("open after the kill");
    let cleared = store.stats().stale_readers_cleared.load(Ordering::Relaxed);
    assert!(
        cleared >= 1,
        "the killed reader's slot must be cleared at open, cleared {cleared}"
    );
    println!("reader slots cleared at open after one SIGKILLed reader: {cleared}");
    drop(store);
    alive.kill();
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
}

#[test]
fn a_restarted_process_starts_warm() {
    let dir = fresh_dir("warm").join("store");
    let mut first = spawn("warm", &dir, &[]);
    let r1 = first.wait_report("warm", BOUND);
    assert!(r1.starts_with("true "), "the first process computes: {r1}");
    let mut second = spawn("warm", &dir, &[]);
    let r2 = second.wait_report("warm", BOUND);
    assert!(
        r2.starts_with("false "),
        "the restarted process finds the value: {r2}"
    );
    assert_eq!(r1[5..], r2[6..], "the same value");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
}

#[test]
fn invalidate_in_one_process_then_a_call_in_another_gets_the_new_value() {
    let dir = fresh_dir("invalidate").join("store");
    let store = DiskStore::open(&dir).expect("open");
    let generation = std::sync::Arc::new(std::sync::Mutex::new("old".to_string()));
    let g = generation.clone();
    let page = memoize_stampede(&store, TTL)
        .name("gen")
        .build_blocking_infallible(move |_k: &String| g.lock().unwrap().clone())
        .expect("memoize");
    let k = "k".to_string();
    assert_eq!(page.get(&k).unwrap(), "old");
    *generation.lock().unwrap() = "new".to_string();
    assert_eq!(page.get(&k).unwrap(), "old", "still cached");
    let mut other = spawn("invalidate", &dir, &[]);
    other.wait_report("invalidated", BOUND);
    assert_eq!(
        page.get(&k).unwrap(),
        "new",
        "never the old value after the invalidation"
    );
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
}

/// A holder that hangs rather than dies (SIGSTOP): past its maximum hold another process
/// takes the key over and computes; the stopped holder's late write is fenced, so every later
/// reader gets the taker's value.
#[test]
fn a_stopped_holder_is_taken_over_and_its_late_write_is_fenced() {
    let dir = fresh_dir("sigstop").join("store");
    let mut holder = spawn("stoppable", &dir, &[]);
    holder.wait_report("computing", BOUND);
    holder.signal("STOP");
    let mut waiter = spawn("stop-waiter", &dir, &[]);
    assert_eq!(waiter.wait_report("got", BOUND), "from the waiter");
    holder.signal("CONT");
    assert_eq!(
        holder.wait_report("got", BOUND),
        "from the stopped process|fenced 1",
        "the holder's own caller gets its value; the write is fenced"
    );
    let mut reader = spawn("stop-reader", &dir, &[]);
    assert_eq!(reader.wait_report("got", BOUND), "from the waiter");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
}

/// A full disk (writes past `RLIMIT_FSIZE` fail): calls compute without storing, the failures
/// are counted, and the file still opens afterwards with every value intact or absent.
#[test]
fn a_full_disk_fails_open_and_the_file_still_opens() {
    let dir = fresh_dir("full").join("store");
    drop(DiskStore::open(&dir).expect("create"));
    let mut child = spawn("fsize", &dir, &[]);
    let errors: u64 = child.wait_report("full", BOUND).parse().expect("count");
    assert!(errors > 0, "write failures are counted");
    child.expect_success(BOUND);
    let store = DiskStore::open(&dir).expect("the file opens after the failed writes");
    let ns = Store::<u64, Blob>::namespace(&store, "full");
    for k in 0..200u64 {
        if let herdless::store::Lookup::Found(e) = Store::<u64, Blob>::get_now(&store, &ns, &k) {
            assert!(e.value.intact(k), "key {k} torn");
        }
    }
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
}

/// `insert`, `refresh` and `invalidate_all` in one process are seen by the next call in
/// another (one file: no message to lose).
#[test]
fn insert_refresh_and_invalidate_all_in_one_process_are_seen_by_another() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = fresh_dir("xops").join("store");
    let store = DiskStore::open(&dir).expect("open");
    let runs = std::sync::Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let page = memoize_stampede(&store, TTL)
        .name("xops")
        .build_blocking_infallible(move |k: &String| {
            format!("parent {k} #{}", r.fetch_add(1, Ordering::SeqCst))
        })
        .expect("memoize");
    let (a, b) = ("a".to_string(), "b".to_string());
    assert_eq!(page.get(&a).unwrap(), "parent a #0");
    assert_eq!(page.get(&b).unwrap(), "parent b #1");
    let op = |name: &str| {
        let mut c = spawn("xop", &dir, &[("OP", name.to_string())]);
        c.wait_report("op", BOUND);
        c.expect_success(BOUND);
    };
    op("insert");
    assert_eq!(page.peek(&a).as_deref(), Some("inserted by child"));
    assert_eq!(page.get(&a).unwrap(), "inserted by child");
    op("refresh");
    assert_eq!(page.get(&a).unwrap(), "child a");
    op("invalidate_all");
    assert_eq!(page.peek(&a), None);
    assert_eq!(page.peek(&b), None);
    assert_eq!(page.get(&b).unwrap(), "parent b #2");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "the parent computed only what it had to"
    );
    let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
}
