//! Issue 18 on a real redis-server, the Redis and near-tier side: each test injects one fault a
//! fleet sees and checks the documented bound. Every test here failed on the code before the
//! fix it names.
//!
//! - a lost generation key (`FLUSHALL`, a restart without persistence): the fleet converges on
//!   one generation and an `invalidate` reaches every process (finding 2);
//! - a writer whose ACL refuses channels: other processes' near tiers still drop the old value
//!   within the marker's poll (finding 4);
//! - a subscription black-holed by a middlebox: detected by the heartbeat, then `max_stale`
//!   applies (finding 5);
//! - `invalidate_all` against a hot near key: the near tier never keeps the old generation
//!   (finding 3);
//! - a `RedisStore` used in a `fork()` child answers instead of hanging (finding 7).

mod support;

use herdless::store::RedisStore;
use herdless::{BlockingMemoized, Store};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::common::{self, acl, load, near_tier, set_truth};
use support::*;

const TTL: Duration = Duration::from_secs(60);

/// A memoized function named `page` whose closure returns the Redis key `truth` (or "none"),
/// read with its own connection to `truth_url` (always the real server).
fn truth_fn<S: Store<String, String>>(
    s: &S,
    truth_url: &str,
) -> BlockingMemoized<String, String, String, S> {
    common::truth_fn(s, truth_url, TTL, || {})
}

fn store(url: &str) -> RedisStore {
    RedisStore::builder(url).prefix("coh").build().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Finding 2: a lost generation key.

fn lost_generation(restart: bool) {
    let Some(mut server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let k = "home".to_string();
    let (a, b) = (store(&url), store(&url));
    let (fa, fb) = (truth_fn(&a, &url), truth_fn(&b, &url));
    fa.invalidate_all().unwrap();
    fa.invalidate_all().unwrap();
    set_truth(&mut server.raw(), "v0");
    assert_eq!(fa.get(&k).unwrap(), "v0");
    wait_until("b reads a's generation", Duration::from_secs(5), || {
        let _ = fb.get(&k);
        b.value_key("page", &k) == a.value_key("page", &k)
    });
    let before = a.value_key("page", &k);

    // The generation key is lost, with everything else.
    if restart {
        server.restart();
    } else {
        let _: () = redis::cmd("FLUSHALL").query(&mut server.raw()).unwrap();
    }
    let mut con = server.raw();
    set_truth(&mut con, "v1");

    // A process that starts now.
    let c = store(&url);
    let fc = truth_fn(&c, &url);
    wait_until("c reads through redis", Duration::from_secs(10), || {
        fc.get(&k).ok().as_deref() == Some("v1")
    });
    // Every process converges on one generation, one the server has.
    wait_until(
        "the fleet converges on one generation",
        Duration::from_secs(10),
        || {
            let _ = (fa.get(&k), fb.get(&k), fc.get(&k));
            let ka = a.value_key("page", &k);
            ka == b.value_key("page", &k) && ka == c.value_key("page", &k)
        },
    );
    assert_ne!(
        a.value_key("page", &k),
        before,
        "a kept the lost generation"
    );
    assert!(load(&c.stats().generation_reseeds) + load(&a.stats().generation_reseeds) >= 1);

    // An invalidation from an old process reaches the new one, and the other way round.
    set_truth(&mut con, "v2");
    fa.invalidate(&k).unwrap();
    assert_eq!(fc.get(&k).unwrap(), "v2", "c served what a invalidated");
    assert_eq!(fb.get(&k).unwrap(), "v2");
    set_truth(&mut con, "v3");
    fc.invalidate_all().unwrap();
    // `invalidate_all` reaches other processes within one message delay (bounded generously).
    wait_until(
        "a drops what c's invalidate_all dropped",
        Duration::from_secs(5),
        || fa.get(&k).ok().as_deref() == Some("v3"),
    );
}

#[test]
fn a_flushed_generation_key_is_reseeded_and_the_fleet_converges() {
    lost_generation(false);
}

#[test]
fn a_restart_without_persistence_does_not_split_the_fleet() {
    lost_generation(true);
}

// ---------------------------------------------------------------------------------------------
// Finding 4: a writer whose ACL refuses channels.

#[test]
fn a_writer_refused_channels_still_reaches_other_near_tiers() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let mut con = server.raw();
    acl(
        &mut con,
        &["nochan", "on", ">pw", "~*", "resetchannels", "+@all"],
    );
    let writer_url = format!("redis://nochan:pw@127.0.0.1:{}/", server.port());
    let k = "home".to_string();
    set_truth(&mut con, "v1");

    let shared = store(&url);
    let tier = near_tier(&shared, Duration::from_secs(60));
    let fr = truth_fn(&tier, &url);
    wait_until("the value is near", Duration::from_secs(5), || {
        let _ = fr.get(&k);
        !tier.is_empty()
    });
    let w = store(&writer_url);
    let fw = truth_fn(&w, &url);
    assert_eq!(fw.get(&k).unwrap(), "v1");

    // An invalidation whose PUBLISH is refused.
    set_truth(&mut con, "v2");
    fw.invalidate(&k).unwrap();
    // Bound: the marker's poll (1 s) plus a round trip; 5 s leaves room for a loaded machine,
    // and the TTL (60 s) and max_stale (60 s) are far beyond it.
    wait_until(
        "the near tier drops v1 after a refused invalidate",
        Duration::from_secs(5),
        || fr.get(&k).ok().as_deref() == Some("v2"),
    );
    // An insert whose PUBLISH is refused.
    wait_until("v2 is near", Duration::from_secs(5), || {
        let _ = fr.get(&k);
        !tier.is_empty()
    });
    fw.insert(&k, "v3".to_string()).unwrap();
    wait_until(
        "the near tier drops v2 after a refused insert",
        Duration::from_secs(5),
        || fr.get(&k).ok().as_deref() == Some("v3"),
    );
    assert!(
        load(&w.stats().publish_refused) >= 2,
        "refusals not counted"
    );
    assert!(load(&shared.stats().announcements_missed) >= 1);
}

// ---------------------------------------------------------------------------------------------
// Finding 5: a subscription a middlebox black-holed.

/// A forwarding proxy that can black-hole the connections that subscribed (it forwards
/// nothing more on them, in either direction, and keeps them open).
struct Proxy {
    port: u16,
    blackhole: Arc<AtomicBool>,
    subscribers: Arc<Mutex<usize>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let blackhole = Arc::new(AtomicBool::new(false));
        let subscribers = Arc::new(Mutex::new(0));
        let (bh, subs) = (blackhole.clone(), subscribers.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let pubsub = Arc::new(AtomicBool::new(false));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (bh1, bh2, p1, p2) = (bh.clone(), bh.clone(), pubsub.clone(), pubsub);
                let subs = subs.clone();
                // client -> server: marks the connection as a subscription on PSUBSCRIBE.
                std::thread::spawn(move || pump(client, s2, bh1, p1, Some(subs)));
                std::thread::spawn(move || pump(server, c2, bh2, p2, None));
            }
        });
        Proxy {
            port,
            blackhole,
            subscribers,
        }
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    blackhole: Arc<AtomicBool>,
    pubsub: Arc<AtomicBool>,
    subscribers: Option<Arc<Mutex<usize>>>,
) {
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(subs) = &subscribers {
            if buf[..n]
                .windows(10)
                .any(|w| w.eq_ignore_ascii_case(b"PSUBSCRIBE"))
                && !pubsub.swap(true, Ordering::AcqRel)
            {
                *subs.lock().unwrap() += 1;
            }
        }
        if pubsub.load(Ordering::Acquire) && blackhole.load(Ordering::Acquire) {
            continue; // swallowed: the peer hears nothing, the socket stays open
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // Never close a black-holed connection: that is the point.
    if !(pubsub.load(Ordering::Acquire) && blackhole.load(Ordering::Acquire)) {
        let _ = to.shutdown(std::net::Shutdown::Both);
    }
}

#[test]
fn a_black_holed_subscription_is_detected_and_max_stale_applies() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let proxy = Proxy::start(server.port());
    let mut con = server.raw();
    set_truth(&mut con, "v1");
    let k = "home".to_string();

    let shared = store(&proxy.url());
    let tier = near_tier(&shared, Duration::from_millis(200));
    let fr = truth_fn(&tier, &url);
    wait_until(
        "subscribed through the proxy",
        Duration::from_secs(5),
        || *proxy.subscribers.lock().unwrap() >= 1 && pubsub_clients(&mut con) >= 1,
    );
    wait_until("the value is near", Duration::from_secs(5), || {
        let _ = fr.get(&k);
        !tier.is_empty()
    });

    proxy.blackhole.store(true, Ordering::Release);
    let w = store(&url);
    let fw = truth_fn(&w, &url);
    set_truth(&mut con, "v2");
    fw.invalidate(&k).unwrap(); // its message never reaches the near tier

    // Bound: no answered heartbeat vouches for the channel after the black hole, so entries
    // older than max_stale (200 ms) are re-validated. 10 s is far below the TTL (60 s) the old
    // value would otherwise serve for.
    wait_until(
        "the near tier stops serving v1",
        Duration::from_secs(10),
        || fr.get(&k).ok().as_deref() == Some("v2"),
    );
    // And the silent subscription is given up (then re-made).
    wait_until("the heartbeat gives up", Duration::from_secs(10), || {
        load(&shared.stats().pubsub_heartbeat_failures) >= 1
    });
}

// ---------------------------------------------------------------------------------------------
// Finding 3: invalidate_all against a hot near key.

#[test]
fn invalidate_all_with_a_hot_near_key_never_keeps_the_old_generation() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let mut con = server.raw();
    set_truth(&mut con, "r0");
    let k = "home".to_string();
    let shared = store(&url);
    let tier = near_tier(&shared, Duration::from_secs(60));
    let fr = Arc::new(truth_fn(&tier, &url));
    let w = store(&url);
    let fw = truth_fn(&w, &url);
    assert_eq!(fr.get(&k).unwrap(), "r0");

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (fr, stop, k) = (fr.clone(), stop.clone(), k.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = fr.get(&k);
                }
            })
        })
        .collect();
    for round in 1..=10 {
        let v = format!("r{round}");
        set_truth(&mut con, &v);
        fw.invalidate_all().unwrap();
        // One message delay (bounded generously), then the new value for good.
        wait_until(
            "the near tier reads the new generation",
            Duration::from_secs(5),
            || fr.get(&k).ok().as_deref() == Some(v.as_str()),
        );
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            assert_eq!(fr.get(&k).unwrap(), v, "round {round}: old value came back");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Finding 7: a RedisStore used in a forked child.

#[test]
fn a_store_used_in_a_forked_child_answers_instead_of_hanging() {
    if let Some(env) = ChildEnv::get() {
        if env.role == "fork" {
            fork_child(&env.url());
        }
        return;
    }
    let Some(server) = redis_or_skip() else {
        return;
    };
    set_truth(&mut server.raw(), "v1");
    let mut child = ChildProc::spawn(
        "a_store_used_in_a_forked_child_answers_instead_of_hanging",
        server.port(),
        "fork",
        &[],
    );
    let out = child.wait_report("forked", Duration::from_secs(30));
    child.expect_success(Duration::from_secs(10));
    assert_eq!(out, "status=0", "the forked child failed or hung: {out}");
}

/// Runs in a child test process: uses the store, forks, and has the fork use it again.
fn fork_child(url: &str) {
    let s = store(url);
    let f = truth_fn(&s, url);
    assert_eq!(f.get(&"warm".to_string()).unwrap(), "v1");
    // SAFETY: the child only makes the calls under test, then leaves with `_exit`; `alarm`
    // ends it if a call hangs (the failure this test catches).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe { libc::alarm(10) };
        let ok = f.get(&"cold".to_string()).ok().as_deref() == Some("v1")
            && f.get(&"warm".to_string()).is_ok()
            && f.invalidate(&"warm".to_string()).is_err();
        unsafe { libc::_exit(if ok { 0 } else { 3 }) };
    }
    assert!(pid > 0, "fork failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            report("forked", "status=hung");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let code = if libc::WIFEXITED(status) {
        format!("{}", libc::WEXITSTATUS(status))
    } else {
        format!("signal{}", libc::WTERMSIG(status))
    };
    report("forked", format!("status={code}"));
}

// ---------------------------------------------------------------------------------------------
// Finding 9: a pub/sub backlog that grows while `live` stays true.

#[test]
fn a_flood_of_announcements_does_not_hold_back_an_invalidation() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let url = server.url();
    let mut con = server.raw();
    set_truth(&mut con, "v1");
    let k = "home".to_string();
    let shared = store(&url);
    // Many tiers on one store: each message costs the dispatcher one decode per tier, so a flood
    // outruns it and redis-rs's queue grows.
    let tiers: Vec<_> = (0..100)
        .map(|_| near_tier(&shared, Duration::from_millis(200)))
        .collect();
    let fns: Vec<_> = tiers.iter().map(|t| truth_fn(t, &url)).collect();
    let (tier, fr) = (&tiers[0], &fns[0]);
    for f in &fns {
        assert_eq!(f.get(&"flood".to_string()).unwrap(), "v1"); // registers the name
    }
    wait_until("the value is near", Duration::from_secs(5), || {
        let _ = fr.get(&k);
        !tier.is_empty()
    });
    // The writer, connected before the flood (the server is busy during it).
    let w = RedisStore::builder(&url)
        .prefix("coh")
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let fw = truth_fn(&w, &url);
    assert_eq!(fw.get(&k).unwrap(), "v1");
    // The flood: announcements of another key of the same function.
    let channel = channel_key(&shared.value_key("page", &"flood".to_string()));
    let flood = {
        let mut con = server.raw();
        std::thread::spawn(move || {
            for _ in 0..200 {
                let mut p = redis::pipe();
                for _ in 0..1000 {
                    p.cmd("PUBLISH").arg(&channel).arg("2").ignore();
                }
                if p.query::<()>(&mut con).is_err() {
                    return;
                }
            }
        })
    };
    // Behind the flood, the key is invalidated.
    std::thread::sleep(Duration::from_millis(100));
    set_truth(&mut con, "v2");
    fw.invalidate(&k).unwrap();
    // Bound: while the flood is queued no heartbeat answer is published (the queue is never
    // found empty), so entries older than max_stale (200 ms) are re-validated; the backlog bound
    // (1 s) ends a subscription that falls too far behind. Draining the flood in order would
    // take far longer.
    wait_until(
        "the near tier stops serving v1",
        Duration::from_secs(5),
        || fr.get(&k).ok().as_deref() == Some("v2"),
    );
    flood.join().unwrap();
    // Whether the backlog bound fired (`pubsub_backlog_resets`) depends on how fast this machine
    // drains the flood; the bound the user sees does not.
}
