//! The disk store's coherence across real processes, as a history check (a smaller sibling of
//! the Redis coherence checker in `tests/coherence`): several processes read and invalidate the
//! same keys while others are stopped (SIGSTOP) and killed (SIGKILL); no read may return a
//! value older than the last invalidation that completed before the read started.
//!
//! This test binary is re-executed in child roles (see `tests/support`); every wait is bounded.

#![cfg(all(feature = "disk", target_os = "linux"))]

mod support;

use herdless::store::DiskStore;
use herdless::{memoize_stampede, Contention};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{ChildEnv, ChildProc};

const BOUND: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(600);

/// Appends one line to a file (O_APPEND: lines of several processes never interleave).
fn append(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("history file");
    f.write_all(format!("{line}\n").as_bytes()).expect("append");
}

fn spawn(role: &str, dir: &Path, extra: &[(&str, String)]) -> ChildProc {
    let mut env = vec![("DISK_DIR", dir.display().to_string())];
    env.extend(extra.iter().cloned());
    ChildProc::spawn("child", 0, role, &env)
}

/// The child roles. As an ordinary test (no child env) it returns at once.
#[test]
fn child() {
    let Some(env) = ChildEnv::get() else { return };
    let dir = PathBuf::from(env.var("DISK_DIR"));
    let store = DiskStore::open(&dir).expect("child opens the store");
    match env.role.as_str() {
        // History roles: read or invalidate keys of `hist` until the stop file appears,
        // appending one line per completed operation to HIST_FILE (see `history`).
        "hist-reader" => {
            let (hist, ctr) = (
                PathBuf::from(env.var("HIST_FILE")),
                PathBuf::from(env.var("CTR_DIR")),
            );
            let stop = PathBuf::from(env.var("STOP_FILE"));
            let page = memoize_stampede(&store, TTL)
                .name("hist")
                .lease_bounds(Duration::from_millis(50), Duration::from_millis(400))
                .contention(Contention::Wait(Duration::from_secs(10)))
                .build_blocking_infallible(move |k: &u32| {
                    let v = history::counter(&ctr, *k, false);
                    std::thread::sleep(Duration::from_millis(3)); // holders often mid-compute
                    v
                })
                .expect("memoize");
            support::report("ready", std::process::id());
            std::thread::scope(|s| {
                for t in 0..2u32 {
                    let (page, hist, stop) = (&page, &hist, &stop);
                    s.spawn(move || {
                        let mut i = t;
                        while !stop.exists() {
                            let k = i % history::KEYS;
                            i = i.wrapping_mul(7).wrapping_add(3);
                            let start = history::now_ns();
                            if let Ok(v) = page.get(&k) {
                                let end = history::now_ns();
                                append(hist, &format!("R {k} {start} {end} {v}"));
                            }
                        }
                    });
                }
            });
            support::report("done", "");
        }
        "hist-writer" => {
            let (hist, ctr) = (
                PathBuf::from(env.var("HIST_FILE")),
                PathBuf::from(env.var("CTR_DIR")),
            );
            let stop = PathBuf::from(env.var("STOP_FILE"));
            let page = memoize_stampede(&store, TTL)
                .name("hist")
                .build_blocking_infallible(|_k: &u32| 0u64)
                .expect("memoize");
            support::report("ready", std::process::id());
            let mut k = std::process::id();
            while !stop.exists() {
                k = k.wrapping_mul(5).wrapping_add(1) % history::KEYS;
                let start = history::now_ns();
                let g = history::counter(&ctr, k, true); // the database changes...
                page.invalidate(&k).expect("invalidate"); // ...then the cache is told
                let end = history::now_ns();
                append(&hist, &format!("I {k} {start} {end} {g}"));
                std::thread::sleep(Duration::from_millis(15));
            }
            support::report("done", "");
        }
        other => panic!("unknown role {other}"),
    }
}

/// The history check: a ground-truth counter per key (a file, bumped under `flock`) is the
/// database; a writer bumps it and then invalidates the key; a reader's computation returns
/// it. Times are `CLOCK_MONOTONIC`, one clock for every process of the machine.
mod history {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    pub const KEYS: u32 = 3;

    pub fn now_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a valid out-pointer.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// Key `k`'s counter, bumped first if `bump` (under an exclusive `flock`, else shared).
    pub fn counter(dir: &Path, k: u32, bump: bool) -> u64 {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(format!("ctr-{k}")))
            .expect("counter file");
        let op = if bump { libc::LOCK_EX } else { libc::LOCK_SH };
        // SAFETY: a valid descriptor; the lock goes with the file when it is closed.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), op) }, 0, "flock");
        let mut b = [0u8; 8];
        let v = match f.read_at(&mut b, 0) {
            Ok(8) => u64::from_le_bytes(b),
            _ => 0,
        };
        if !bump {
            return v;
        }
        f.write_all_at(&(v + 1).to_le_bytes(), 0).expect("bump");
        v + 1
    }

    #[derive(Debug, Clone, Copy)]
    pub struct Op {
        pub read: bool,
        pub key: u32,
        pub start: u64,
        pub end: u64,
        pub value: u64,
    }

    pub fn parse(text: &str) -> Vec<Op> {
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                if f.len() != 5 {
                    return None; // a line cut by a SIGKILL
                }
                Some(Op {
                    read: f[0] == "R",
                    key: f[1].parse().ok()?,
                    start: f[2].parse().ok()?,
                    end: f[3].parse().ok()?,
                    value: f[4].parse().ok()?,
                })
            })
            .collect()
    }

    /// Reads that returned a value older than an invalidation of their key that completed
    /// before they started; and how many reads had such an invalidation to answer to.
    pub fn violations(ops: &[Op]) -> (Vec<String>, usize) {
        // Per key: invalidations by end time, with the running maximum of their counters.
        let mut inv: std::collections::HashMap<u32, Vec<(u64, u64)>> = Default::default();
        for w in ops.iter().filter(|o| !o.read) {
            inv.entry(w.key).or_default().push((w.end, w.value));
        }
        for list in inv.values_mut() {
            list.sort_unstable();
            let mut max = 0;
            for e in list.iter_mut() {
                max = max.max(e.1);
                e.1 = max;
            }
        }
        let mut out = Vec::new();
        let mut checked = 0;
        for r in ops.iter().filter(|o| o.read) {
            let Some(list) = inv.get(&r.key) else {
                continue;
            };
            // The invalidations that returned before the read was called.
            let n = list.partition_point(|(end, _)| *end < r.start);
            if n == 0 {
                continue;
            }
            let floor = list[n - 1].1;
            checked += 1;
            if r.value < floor {
                out.push(format!(
                    "read of key {} started at {} returned {} after an invalidation at \
                     counter {floor} had completed",
                    r.key, r.start, r.value
                ));
            }
        }
        (out, checked)
    }
}

/// The checker itself can fail: a stale read after a completed invalidation is reported.
#[test]
fn the_history_check_reports_a_read_older_than_a_completed_invalidation() {
    let ops = history::parse("I 0 10 20 5\nR 0 21 30 4\nR 0 15 30 4\nR 1 21 30 0\nR 0 2");
    let (bad, checked) = history::violations(&ops);
    assert_eq!(
        checked, 1,
        "only the read of key 0 that started after the invalidation"
    );
    assert_eq!(bad.len(), 1, "{bad:?}");
}

/// Several processes read and invalidate the same keys while others are stopped (SIGSTOP,
/// including lock holders: the others take over past the maximum hold, fenced) and killed
/// (SIGKILL); no read returns a value older than the last invalidation that completed before
/// it started.
#[test]
fn reads_never_predate_a_completed_invalidation_under_sigkill_and_sigstop() {
    let root = std::env::temp_dir().join(format!("herdless-disk-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (store, ctr) = (root.join("store"), root.join("ctr"));
    std::fs::create_dir_all(&ctr).expect("counter dir");
    let stop = root.join("stop");
    let mut n = 0;
    let mut start = |role: &str| {
        n += 1;
        let hist = root.join(format!("hist-{n}"));
        let env = [
            ("HIST_FILE", hist.display().to_string()),
            ("CTR_DIR", ctr.display().to_string()),
            ("STOP_FILE", stop.display().to_string()),
        ];
        let mut c = spawn(role, &store, &env);
        c.wait_report("ready", BOUND);
        c
    };
    let mut readers: Vec<ChildProc> = (0..3).map(|_| start("hist-reader")).collect();
    let mut writers: Vec<ChildProc> = (0..2).map(|_| start("hist-writer")).collect();
    let pause = |d: u64| std::thread::sleep(Duration::from_millis(d));
    pause(800);
    readers[0].signal("STOP");
    pause(1200);
    readers[0].signal("CONT");
    pause(300);
    readers[1].kill();
    readers[1] = start("hist-reader");
    pause(300);
    writers[0].signal("STOP");
    pause(500);
    writers[0].signal("CONT");
    readers[2].signal("STOP");
    pause(700);
    readers[2].kill(); // killed while stopped, possibly holding a lock
    readers[2] = start("hist-reader");
    pause(1000);
    std::fs::write(&stop, b"stop").expect("stop file");
    for c in readers.iter_mut().chain(writers.iter_mut()) {
        c.wait_report("done", BOUND);
    }
    let mut ops = Vec::new();
    for i in 1..=n {
        let text = std::fs::read_to_string(root.join(format!("hist-{i}"))).unwrap_or_default();
        ops.extend(history::parse(&text));
    }
    let (bad, checked) = history::violations(&ops);
    let reads = ops.iter().filter(|o| o.read).count();
    let invalidations = ops.len() - reads;
    println!(
        "history: {reads} reads ({checked} after an invalidation of their key), \
         {invalidations} invalidations, {} violations",
        bad.len()
    );
    assert!(invalidations >= 20, "{invalidations} invalidations");
    assert!(checked >= 100, "{checked} reads checked");
    assert!(
        bad.is_empty(),
        "{} violations: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
    let _ = std::fs::remove_dir_all(&root);
}
