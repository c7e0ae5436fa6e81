//! # herdless — cache-stampede prevention
//!
//! Wrap an expensive function so that, however many callers ask for the same key, it runs about
//! once per expiry and almost nobody waits for it. Three mechanisms, composed:
//!
//! 1. **Memoize**: the store keeps `value`, `delta` (how long the computation took, monotonic
//!    clock, µs) and `expiry` together ([`Entry`]).
//! 2. **XFetch** early recomputation (Vattani, Chierichetti, Lowenstein, PVLDB 2015): a hit with
//!    `gap` left before expiry refreshes early with probability `exp(−gap/(δβ))`
//!    ([`xfetch`]). The refresh runs in the background; the caller is served at once.
//! 3. **Barrier**: on a hard miss exactly one caller per key computes and the others wait for its
//!    result (or fail fast, or get the stale value, by [`Contention`] policy).
//!
//! What the peers do not do: the early refresh is single-flight too. A trigger *tries* the
//! key's refresh slot without waiting; XFetch decides who tries and when, the slot decides who
//! computes: one refresh per cycle.
//!
//! ## Quick start (async)
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use herdless::{memoize_stampede, MemoryStore};
//! use std::time::Duration;
//!
//! let store = MemoryStore::<String, String>::new(10_000).unwrap();
//! let page = memoize_stampede(&store, Duration::from_secs(1))
//!     .name("landing_page")
//!     .build(|key: String| async move { Ok::<_, std::io::Error>(format!("<html>{key}</html>")) })
//!     .unwrap();
//! assert_eq!(page.get(&"home".to_string()).await.unwrap(), "<html>home</html>");
//! # }
//! ```
//!
//! ## Quick start (plain threads, no runtime)
//! ```
//! use herdless::{memoize_stampede, MemoryStore};
//! use std::time::Duration;
//!
//! let store = MemoryStore::<u64, u64>::new(10_000).unwrap();
//! let slow_square = memoize_stampede(&store, Duration::from_secs(60))
//!     .build_blocking_infallible(|k: &u64| k * k)
//!     .unwrap();
//! assert_eq!(slow_square.get(&9).unwrap(), 81);
//! ```
//!
//! ## Design and cost
//! - One engine serves both facades. A hit on a thread's hot key is served from that thread's
//!   own tier (its most recently hit entry of the function, see below): one key comparison,
//!   one load of the key's write version in the store, one relaxed load of a coarse clock and
//!   one comparison, and it writes only lines of its own thread, so one hot key scales with
//!   cores. Other hits are one `quick_cache` probe and the same test. Values whose gap exceeds
//!   `δ·β·E_MAX` cannot trigger XFetch whatever the draw ([`xfetch::E_MAX`]), so neither the
//!   precise clock nor the RNG is read. Only near expiry does a call read `Instant::now()`
//!   and draw.
//! - The per-thread tier keeps [`MemoryStore`]'s semantics: every write of the store (a
//!   computed value, `insert`, `invalidate`, `invalidate_all`) bumps the key's write version
//!   before it returns, and a tier entry is served only while its version is unchanged, so
//!   once a write returned no thread serves the older value. The store is still probed every
//!   255th hit of a thread (the coarse-clock check), which keeps a hot key recent in its
//!   eviction policy. `Memoized::read` / `BlockingMemoized::read` run a closure on the value
//!   without cloning it: with an `Arc<T>` value that is the only hit that writes no shared
//!   count. The disk store keeps its write versions in a file every process maps, so the tier
//!   serves its hot keys too, coherent across processes. Stores without write versions
//!   (`store::NearStore`, Redis) are probed on every hit.
//! - Memory: per entry, key + value + 24 bytes (`delta`, `expiry`, `write_id`) + a 4-byte namespace id +
//!   quick_cache's slot overhead. Per memoized function: 2 × 64 small mutex-guarded maps, holding
//!   only keys being computed or refreshed (and, at most 64 Ki, keys backing off a failed refresh),
//!   a 4.2 KiB hit counter (one cache line per thread stripe, so hits never share a line,
//!   plus one that threads without a stripe address), and the per-thread tier: 64 slots of
//!   one line or more each (`key + value + 48 bytes`, rounded up to 64: 4 KiB for a
//!   `u64 → u64` function, 8 KiB for `String → String`), plus, per thread that hit the
//!   function, one copy of the key and one clone of the value it last admitted (held until
//!   that thread admits another key of the function or the function is dropped; for an
//!   `Arc<T>` value, a count, not a copy). Per thread: one 8-byte thread local (stripe offset
//!   and countdown), whatever the number of functions. Per [`MemoryStore`]: 8 KiB of write
//!   versions (1024 counters).
//! - The clock and the RNG are injected ([`Clock`], [`Builder::rng_seed`]); tests are exact.
//! - Errors are never cached; waiters of a panicking computation get [`Error::Panicked`]; a
//!   caller that gives up (a timeout drops its future) does not cancel the computation it
//!   started: on a Tokio runtime it runs on as its own task, stores its value and answers the
//!   waiters. Background refreshes are capped per function ([`Builder::max_refreshes`]) and
//!   `beta_auto`'s rate meters per shard (8192 keys per function).
//!
//! ## Which layer do I want?
//! Almost always [`memoize_stampede`]: it serves hits at once, refreshes a hot key in the
//! background before it expires (one refresh per cycle) and lets one caller per key compute on
//! a miss. [`Builder::beta_auto`] picks β from each key's measured rate, so you need not tune
//! it. [`memoize`] + [`barrier`] rebuild DiskCache's recipes layer by layer (double-checked
//! locking without early refresh), for when you want exactly that. Use [`MemoryStore`] in one
//! process, `store::RedisStore` to share values and locks across processes (one server, or a
//! Redis Cluster with `RedisStore::cluster`), and `store::NearStore` over it when many
//! processes hit the same keys: hits from process memory, one refresh per TTL for the fleet.
//!
//! ## Module map
//! | module | what it holds |
//! |---|---|
//! | `xfetch` | the pure XFetch decision law; `xfetch::theory`: lead, stampede size, β solvers, γ, β bounds |
//! | `clock` | the [`Clock`] trait: coarse + precise system clock, [`ManualClock`] for tests |
//! | `wait` | how to wait: [`WaitMode`], [`Contention`] deadlines with jittered backoff, `block_on`, the shuttle swap point |
//! | `layer` | the [`Layer`] / [`BlockingLayer`] traits and the type-erased compute function |
//! | `flight` | in-process single-flight: flights per key and background-refresh slots |
//! | `lock` | the barrier [`Lock`] trait and [`LocalLock`] |
//! | [`store`] | the [`Store`] trait and its contract; `store::memory` ([`MemoryStore`]); `store::redis` (everything Redis: one server or a cluster; versioned records); `store::near` (the near cache over Redis); `store::disk` (one LMDB file for the processes of one machine) |
//! | `engine`, `fence` | the shared engine: hit path, compute-and-store; in-process invalidation fences |
//! | `miss`, `refresh` | the slow path (XFetch decision, hard misses) and background refreshes |
//! | `builder`, `memoize`, `stampede`, `memoized`, [`blocking`], `barrier` | the builders, layers and facades |
//! | `stats`, `auto`, [`tune`], [`sim`] | counters, automatic β, the tuning advisor, the simulator |
//!
//! ## Cargo features
//! | feature | default | what it adds |
//! |---|---|---|
//! | `redis` | yes | `store::RedisStore` and `store::RedisLock` (redis-rs, Tokio I/O) |
//! | `macros` | yes | the `#[herdless::memoized(ttl_secs = 60, …)]` attribute (crate `herdless-macros`) |
//! | `cluster` | yes | `RedisStore::cluster` / `cluster_builder` (redis-rs `cluster-async`) |
//! | `metrics` | no | exports every counter through the `metrics` crate |
//! | `disk` | yes | `store::DiskStore`: one LMDB file shared by the processes of one machine, no server (heed, Linux) |
//!
//! `cargo build --no-default-features` builds the in-memory crate without any Redis dependency.
//!
//! See `paper-notes.md` for the maths and how herdless differs from the paper and DiskCache.
//!
//! The [user guide](guide) covers choosing a layer and a store, β, failure semantics,
//! deploying on Redis, and migrating from `cached`, moka and DiskCache.

#![warn(missing_docs)]
// docs.rs (`--cfg docsrs`, nightly): label every feature-gated item with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz_hooks/mod.rs"]
pub mod __fuzz;
mod auto;
mod barrier;
mod batch;
pub mod blocking;
mod builder;
mod clock;
mod engine;
mod entry;
mod error;
mod fence;
mod flight;
pub mod guide;
mod hot;
mod layer;
mod leader;
mod lock;
mod memoize;
mod memoized;
mod miss;
mod ops;
#[cfg(feature = "redis")]
mod pid;
mod refresh;
#[cfg(all(test, shuttle))]
mod shuttle_tests;
pub mod sim;
mod stampede;
mod stats;
pub mod store;
pub mod tune;
mod wait;
pub mod xfetch;

pub use auto::LeadTarget;
pub use barrier::{barrier, Barrier, BarrierBuilder, BlockingBarrier};
pub use batch::{BatchMemoized, BlockingBatchMemoized};
pub use blocking::BlockingMemoized;
pub use builder::Builder;
pub use clock::{Clock, ManualClock, SystemClock};
pub use entry::Entry;
pub use error::{ConfigError, Error};
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use herdless_macros::memoize_stampede as memoized;
pub use layer::{BlockingLayer, Layer};
pub use lock::{LocalGuard, LocalLock, Lock, LockError};
pub use memoize::memoize;
pub use memoized::Memoized;
pub use stampede::memoize_stampede;
pub use stats::StatsSnapshot;
pub use store::{MemoryStore, Store};
pub use wait::{Contention, WaitMode};
