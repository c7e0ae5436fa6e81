//! The disk store's paths, measured in one run: `cargo bench --features disk --bench disk_path`.
//!
//! - `herdless_disk_hit`: a hit of `memoize_stampede` (fixed β) over a `DiskStore`, 1 KiB value
//!   (default settings: a hot key is served from the thread's own copy, validated by the
//!   shared version file);
//! - `herdless_disk_hit_no_tier`: the same with `DiskStoreBuilder::thread_tier(false)`: every
//!   hit is an LMDB read transaction;
//! - `heed_raw_get`: the storage engine alone, a read transaction and a get of the same bytes
//!   (the floor under `herdless_disk_hit`);
//! - `quick_cache_get`: the in-memory cache a Rust user would pick instead (no processes shared);
//! - `disk_write`: one unfenced `Store::set` of the 1 KiB value (one write transaction);
//! - cross-process wake-up latency (printed, not a criterion bench): a child process waits on a
//!   key this process holds; the figure is the time from the holder's write returning to the
//!   waiter's `lock_or_get` returning the value, on CLOCK_MONOTONIC (shared by processes),
//!   median and p99 over 300 rounds. Negative gaps (the waiter was woken before the writer's
//!   call returned) count as 0.
//!
//! Not measured here: redb and SQLite (see paper-notes.md, "The disk store").

use criterion::{criterion_group, Criterion};
use herdless::store::{DiskStore, LockOutcome};
use herdless::{memoize_stampede, Entry, Store, WaitMode};
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROLE: &str = "HERDLESS_DISK_BENCH_ROLE";
const DIR: &str = "HERDLESS_DISK_BENCH_DIR";
const ROUNDS: usize = 300;

fn value() -> String {
    "x".repeat(1024)
}

fn mono_ns() -> i64 {
    // SAFETY: a valid timespec out-pointer.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("herdless-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn entry(v: String) -> Entry<String> {
    use herdless::Clock;
    Entry {
        value: v,
        delta_us: 1000,
        expires_at: herdless::SystemClock::new().now() + 3_600_000_000_000,
        write_id: 0,
    }
}

fn disk_path(c: &mut Criterion) {
    let key = "landing_page:/home".to_string();
    let ttl = Duration::from_secs(3600);
    let mut g = c.benchmark_group("disk_path");

    let d = dir("hit");
    let store = DiskStore::open(&d).unwrap();
    let f = memoize_stampede(&store, ttl)
        .name("hit")
        .beta(1.0)
        .build_blocking_infallible(|_k: &String| value())
        .unwrap();
    f.get(&key).unwrap();
    g.bench_function("herdless_disk_hit", |b| {
        b.iter(|| black_box(f.get(black_box(&key)).unwrap()))
    });
    let d2 = dir("hit-no-tier");
    let plain = DiskStore::builder(&d2).thread_tier(false).build().unwrap();
    let f2 = memoize_stampede(&plain, ttl)
        .name("hit")
        .beta(1.0)
        .build_blocking_infallible(|_k: &String| value())
        .unwrap();
    f2.get(&key).unwrap();
    g.bench_function("herdless_disk_hit_no_tier", |b| {
        b.iter(|| black_box(f2.get(black_box(&key)).unwrap()))
    });

    // The engine alone, on an environment of its own with the same flags and record size.
    let raw_dir = dir("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .map_size(64 << 20)
            .max_dbs(2)
            .flags(
                heed::EnvFlags::NO_SYNC
                    | heed::EnvFlags::NO_META_SYNC
                    | heed::EnvFlags::NO_READ_AHEAD,
            )
            .open(&raw_dir)
            .unwrap()
    };
    let mut wtxn = env.write_txn().unwrap();
    let db: heed::Database<heed::types::Bytes, heed::types::Bytes> =
        env.create_database(&mut wtxn, Some("records")).unwrap();
    let rk = [7u8; 24];
    db.put(&mut wtxn, &rk, &vec![b'x'; 36 + 3 + 1024]).unwrap(); // header + msgpack str
    wtxn.commit().unwrap();
    g.bench_function("heed_raw_get", |b| {
        b.iter(|| {
            let txn = env.read_txn().unwrap();
            black_box(db.get(&txn, black_box(&rk)).unwrap().map(|v| v.len()))
        })
    });

    let qc = quick_cache::sync::Cache::<String, String>::new(10_000);
    qc.insert(key.clone(), value());
    g.bench_function("quick_cache_get", |b| {
        b.iter(|| black_box(qc.get(black_box(&key))))
    });

    let ns = Store::<u64, String>::namespace(&store, "writes");
    let mut i = 0u64;
    g.bench_function("disk_write", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            futures::executor::block_on(store.set(&ns, &i, entry(value()), ttl, None)).unwrap()
        })
    });
    g.finish();
    drop(f);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&raw_dir);
    wake_up_latency();
}

/// The waiter process: for each line `i` on stdin, gets key `i` through the lock (waiting
/// behind this bench's holder), prints the CLOCK_MONOTONIC time its value arrived.
fn waiter(dir: &str) {
    let store = DiskStore::open(dir).unwrap();
    let ns = Store::<u64, String>::namespace(&store, "wake");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let i: u64 = line.unwrap().trim().parse().unwrap();
        let t = futures::executor::block_on(async {
            loop {
                let now = {
                    use herdless::Clock;
                    herdless::SystemClock::new().now()
                };
                match Store::<u64, String>::lock_or_get(
                    &store,
                    &ns,
                    &i,
                    Duration::from_secs(5),
                    Duration::from_secs(5),
                    now,
                )
                .await
                .unwrap()
                {
                    LockOutcome::Found(_) => return mono_ns(),
                    LockOutcome::Busy => Store::<u64, String>::wait_for_value(
                        &store,
                        &ns,
                        &i,
                        Duration::from_secs(1),
                        WaitMode::Blocking,
                    )
                    .await
                    .unwrap(),
                    LockOutcome::Acquired(_) => panic!("the holder should hold key {i}"),
                    LockOutcome::Local => unreachable!(),
                }
            }
        });
        println!("{t}");
    }
}

fn wake_up_latency() {
    let d = dir("wake");
    let store = DiskStore::open(&d).unwrap();
    let ns = Store::<u64, String>::namespace(&store, "wake");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, "waiter")
        .env(DIR, &d)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let mut from = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut wakes, mut writes) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS as u64 {
        let now = {
            use herdless::Clock;
            herdless::SystemClock::new().now()
        };
        let lock = match futures::executor::block_on(Store::<u64, String>::lock_or_get(
            &store,
            &ns,
            &i,
            Duration::from_secs(5),
            Duration::from_secs(5),
            now,
        ))
        .unwrap()
        {
            LockOutcome::Acquired(l) => l,
            _ => panic!("key {i} is fresh"),
        };
        writeln!(to, "{i}").unwrap();
        to.flush().unwrap();
        std::thread::sleep(Duration::from_millis(3)); // the waiter blocks behind the lock
        let t0 = mono_ns();
        futures::executor::block_on(store.set(
            &ns,
            &i,
            entry(value()),
            Duration::from_secs(3600),
            Some(lock),
        ))
        .unwrap();
        let t1 = mono_ns();
        let woke: i64 = from.next().unwrap().unwrap().trim().parse().unwrap();
        writes.push((t1 - t0) as f64 / 1e3);
        wakes.push((woke - t1).max(0) as f64 / 1e3);
    }
    drop(to);
    let _ = child.wait();
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "cross-process wake-up (holder's write returns -> waiter returns), {ROUNDS} rounds: median {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        q(&mut wakes, 0.5),
        q(&mut wakes, 0.99),
        q(&mut wakes, 1.0)
    );
    println!(
        "locked write + release (Store::set with the lock): median {:.1} µs, p99 {:.1} µs",
        q(&mut writes, 0.5),
        q(&mut writes, 0.99)
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&d);
}

criterion_group!(benches, disk_path);

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("waiter") {
        waiter(&std::env::var(DIR).unwrap());
        return;
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
