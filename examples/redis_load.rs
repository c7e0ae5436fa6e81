//! Redis hits under load: calls per second from N tasks on one runtime with one worker thread,
//! herdless hits beside raw redis-rs `GET`s, over 1 000 warm keys of 120 bytes. The same shape
//! as the `redis_throughput` bench, as a plain program, so that it can run under a profiler or
//! `valgrind --tool=callgrind` (instructions per call = the difference of two runs of different
//! lengths, divided by the difference in calls).
//!
//! ```text
//! redis-server --port 6390 --save "" --daemonize yes
//! cargo run --release --example redis_load -- --url redis://127.0.0.1:6390/ --mode raw --calls 400000 --tasks 50
//! cargo run --release --example redis_load -- --url redis://127.0.0.1:6390/ --mode default --calls 400000 --tasks 50
//! ```
//!
//! Modes: `raw` (redis-rs `GET` on one multiplexed connection), `caller` (a `RedisStore` whose
//! I/O runs on the program's runtime, `RedisStoreBuilder::runtime`), `default` (the default
//! store, with a runtime of its own); with the `cluster` feature, `cluster-raw` and `cluster`
//! (the store on the program's runtime), `--url` then listing seed nodes separated by commas.
//! Use a server of its own: the program writes 2 000 keys.

use herdless::{memoize_stampede, store::RedisStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: usize = 1000;
const VALUE_BYTES: usize = 120;

struct Args {
    url: String,
    mode: String,
    calls: usize,
    tasks: usize,
}

fn args() -> Args {
    let mut a = Args {
        url: "redis://127.0.0.1:6379/".into(),
        mode: "default".into(),
        calls: 200_000,
        tasks: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = value,
            "--mode" => a.mode = value,
            "--calls" => a.calls = value.parse().expect("--calls is a number"),
            "--tasks" => a.tasks = value.parse().expect("--tasks is a number"),
            other => panic!("unknown flag {other} (--url, --mode, --calls, --tasks)"),
        }
    }
    assert!(
        a.tasks > 0 && a.calls >= a.tasks,
        "--calls must be at least --tasks"
    );
    a
}

/// Runs `calls` calls of `call(i)` from `tasks` tasks; returns calls per second.
async fn drive<F, Fut>(calls: usize, tasks: usize, call: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per = calls / tasks;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let call = call.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    call((t * 7919 + i) % KEYS).await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (per * tasks) as f64 / start.elapsed().as_secs_f64()
}

/// Raw `GET`s of `raw:{i}` (written first) on `c`: calls per second.
async fn raw_gets<C>(mut c: C, a: &Args) -> f64
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    // Hash-tagged, so that the same names spread over a cluster's slots.
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("raw:{{{i}}}")).collect());
    for k in keys.iter() {
        redis::cmd("SET")
            .arg(k)
            .arg("v".repeat(VALUE_BYTES))
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }
    drive(a.calls, a.tasks, move |i| {
        let (keys, mut c) = (keys.clone(), c.clone());
        async move {
            let v: Vec<u8> = redis::cmd("GET")
                .arg(&keys[i])
                .query_async(&mut c)
                .await
                .unwrap();
            std::hint::black_box(v);
        }
    })
    .await
}

/// Hits of a memoized function over `store` (every key warmed first): calls per second.
fn hits(rt: &tokio::runtime::Runtime, store: &RedisStore, a: &Args) -> f64 {
    let f = memoize_stampede(store, Duration::from_secs(3600))
        .name("load")
        .build_infallible(|_k: String| std::future::ready("v".repeat(VALUE_BYTES)))
        .unwrap();
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("k{i}")).collect());
    rt.block_on(async {
        for k in keys.iter() {
            f.get(k).await.unwrap();
        }
        drive(a.calls, a.tasks, move |i| {
            let (f, keys) = (f.clone(), keys.clone());
            async move {
                std::hint::black_box(f.get(&keys[i]).await.unwrap());
            }
        })
        .await
    })
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rate = match a.mode.as_str() {
        "raw" => rt.block_on(async {
            let client = redis::Client::open(a.url.as_str()).unwrap();
            raw_gets(client.get_multiplexed_async_connection().await.unwrap(), &a).await
        }),
        "caller" => {
            let builder = RedisStore::builder(&a.url).prefix("load");
            hits(
                &rt,
                &builder.runtime(rt.handle().clone()).build().unwrap(),
                &a,
            )
        }
        "default" => hits(
            &rt,
            &RedisStore::builder(&a.url).prefix("load").build().unwrap(),
            &a,
        ),
        #[cfg(feature = "cluster")]
        "cluster-raw" => rt.block_on(async {
            let seeds: Vec<&str> = a.url.split(',').collect();
            let client = redis::cluster::ClusterClient::new(seeds).unwrap();
            raw_gets(client.get_async_connection().await.unwrap(), &a).await
        }),
        #[cfg(feature = "cluster")]
        "cluster" => {
            let seeds: Vec<&str> = a.url.split(',').collect();
            let store = RedisStore::cluster_builder(&seeds)
                .prefix("load")
                .runtime(rt.handle().clone())
                .build()
                .unwrap();
            hits(&rt, &store, &a)
        }
        other => panic!("unknown mode {other} (raw, caller, default, cluster-raw, cluster)"),
    };
    println!("{} {} tasks: {:.0} calls/s", a.mode, a.tasks, rate);
}
