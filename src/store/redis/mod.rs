//! The Redis (or Valkey) store: one computation per key across processes and hosts.
//!
//! - **Reads** are one plain command (`GETRANGE` of a record that carries its expiry in the
//!   server's clock, see `record`), awaited without a task hop from a Tokio caller. The remaining
//!   TTL uses this process's estimate of the server's clock (see `clock`), rebuilt on the
//!   reader's own monotonic clock, so clock skew between hosts cannot matter. Hits in flight
//!   together share a pipeline (see `coalesce`), and a runtime other than the store's reads
//!   over a connection of its own (see `conn::local`).
//! - **Locks** are `SET lock token NX PX lease` with a random 128-bit owner token, renewed while
//!   the holder computes (bounded by the maximum lease), released only by the owner.
//! - **Writes** with the lock are one script: write if still the owner, release, publish. A
//!   holder paused past its lease cannot overwrite a newer value (fencing).
//! - **Waiters** are woken by pub/sub (one pattern subscription per store) and re-ask at a
//!   growing, jittered interval in case a message is lost.
//! - **Fail-open**: every call has a timeout, a circuit breaker stops paying timeouts while the
//!   server is down, the connection heals itself, and the engine computes locally meanwhile.
//! - **Untrusted bytes**: a record that is not ours (magic, version), truncated, oversized or of
//!   the wrong Redis type is a miss, counted in [`RedisStats`], never a panic.
//!
//! - **Redis Cluster** (feature `cluster`, on by default): [`RedisStore::cluster`] builds the
//!   same store over redis-rs's cluster client, with a breaker per slot range; see the
//!   `cluster` module for routing, failover, resharding and wake-ups.
//!
//! Key layout (Cluster-ready: one hash tag per (function, key)):
//! `<prefix>:{<hex(name)>.<hex(msgpack(key))>}:v` (value), `...:l` (lock), `...:c` (channel).
//! Hex has no `.`, `{` or `}`, so no user key or name can collide with another's or with a lock.

mod announce;
mod clock;
#[cfg(feature = "cluster")]
mod cluster;
mod coalesce;
mod conn;
mod connect;
mod fleet;
#[cfg(feature = "fuzzing")]
#[path = "../../fuzz_hooks/redis.rs"]
pub(crate) mod fuzz_hooks;
mod generation;
mod keys;
mod lock;
mod many;
mod missed;
mod plain;
mod record;
mod scripts;
mod store_impl;

use crate::error::ConfigError;
use crate::store::contract::{NamespaceRegistry, StoreError};
pub(crate) use announce::{Announcement, Tap};
pub use conn::RedisStats;
use conn::{Breakers, Conn, Target};
pub use connect::ConnectError;
use keys::{KeySpace, Keys};
pub use lock::{HeldLock, RedisGuard, RedisLock};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// The time a call may take per MiB of `max_value_bytes` while its reply is arriving: a floor
/// of 50 MiB/s for a reply on top of the fixed part, which covers a few readers of one large
/// value sharing the connection (`tests/redis_conn.rs`).
const TRANSFER_PER_MIB: Duration = Duration::from_millis(20);

/// Configures a [`RedisStore`]; see [`RedisStore::builder`].
///
/// ```
/// use herdless::store::RedisStore;
/// use std::time::Duration;
/// // Building never connects (a server that is down is not an error); invalid settings are.
/// let store = RedisStore::builder("redis://127.0.0.1:6379/")
///     .prefix("shop")
///     .op_timeout(Duration::from_millis(100))
///     .circuit_breaker(3, Duration::from_secs(1))
///     .max_value_bytes(1 << 20)
///     .build()
///     .unwrap();
/// assert!(RedisStore::builder("redis://127.0.0.1/").prefix("a{b}").build().is_err());
/// # drop(store);
/// ```
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    /// The seed nodes of a cluster store (`None`: a single server at `url`).
    seeds: Option<Vec<String>>,
    prefix: String,
    op_timeout: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    max_value_bytes: usize,
    runtime: Option<tokio::runtime::Handle>,
}

impl RedisStoreBuilder {
    /// Key prefix (default `herdless`); must not contain `{`, `}` or be empty.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }
    /// Timeout of every Redis call (default 250 ms). A call fails when its connection received
    /// nothing for this long (a paused or unreachable server: no call waits longer than this
    /// for one), and calls made while such a connection stays silent fail at once. While the
    /// connection keeps receiving (a large reply, or the replies queued before this one), the
    /// call waits on, up to `max(4 × op_timeout, 1 s)` plus 20 ms per MiB of
    /// [`max_value_bytes`](Self::max_value_bytes) in all. Over TLS or a Unix socket
    /// `op_timeout` bounds the whole call.
    ///
    /// A timed-out call abandons only its own reply: the shared connection is kept (one PING
    /// checks it; it is replaced only when that goes unanswered while nothing arrives), so a
    /// slow reply does not fail every other call.
    ///
    /// Sizing: Redis is silent while it copies a value into a reply (about 3.5 ms per MiB
    /// measured on a loaded 2-core machine, `tests/redis_conn.rs`), and the requests of one
    /// connection are answered in order: keep `op_timeout` above concurrent reads × value size ×
    /// that cost. The default fits one read of a 64 MiB value; four concurrent reads of a
    /// 20 MiB value need about 300 ms.
    ///
    /// ```
    /// use herdless::store::RedisStore;
    /// use std::time::Duration;
    /// let store = RedisStore::builder("redis://127.0.0.1:6379/")
    ///     .op_timeout(Duration::from_millis(500))
    ///     .max_value_bytes(32 << 20)
    ///     .build()
    ///     .unwrap();
    /// # drop(store);
    /// ```
    pub fn op_timeout(mut self, t: Duration) -> Self {
        self.op_timeout = t;
        self
    }
    /// Consecutive failures that open the circuit (default 3) and how long it stays open before
    /// one probe (default 1 s). On a cluster store an open slot range is also probed in the
    /// background (one `EXISTS` every 50 ms) and closes as soon as its master answers, so
    /// after a failover the promoted replica is used at once, whatever the cooldown.
    pub fn circuit_breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cooldown = cooldown;
        self
    }
    /// Runs this store's Redis I/O (connection, scripts, pub/sub) on the given Tokio runtime
    /// instead of a private one-thread runtime. (Without it, hits made from tasks of another
    /// Tokio runtime already avoid the hop: they get a connection driven on their runtime.) The runtime must
    /// outlive every call, blocking callers included. Blocking callers
    /// must not run on that runtime's worker threads (a blocked worker cannot drive its I/O):
    /// such a call gets a store error instead of hanging (it computes without Redis), counted in
    /// [`RedisStats::blocking_on_store_runtime`] and warned about once; make it from
    /// `tokio::task::spawn_blocking` or a plain thread instead.
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }
    /// Records larger than this are treated as misses (default 64 MiB). While its reply keeps
    /// arriving, a call may take 20 ms per MiB of this limit on top of
    /// `max(4 × op_timeout, 1 s)` (see [`op_timeout`](Self::op_timeout)): at the defaults,
    /// 2.28 s in all.
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.max_value_bytes = n;
        self
    }
    /// Builds the store without connecting (lazy, fail-open): it connects in the background, a
    /// server that is down now is not an error (calls compute locally until it is back), an
    /// invalid URL or setting is. Use this where the service must start even while Redis is
    /// down; use [`RedisStoreBuilder::connect`] to fail fast on a wrong address, password or
    /// ACL instead.
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        let client = self.validate()?;
        let pattern = self.channel_pattern();
        let (target, breakers) = match &self.seeds {
            None => (
                Target::Single(client),
                Breakers::single(self.breaker_threshold, self.breaker_cooldown),
            ),
            #[cfg(feature = "cluster")]
            Some(seeds) => (
                cluster::target(seeds, self.op_timeout)?,
                Breakers::per_range(self.breaker_threshold, self.breaker_cooldown),
            ),
            #[cfg(not(feature = "cluster"))]
            Some(_) => unreachable!("cluster builders exist only with the `cluster` feature"),
        };
        let space = KeySpace {
            prefix: self.prefix.clone(),
        };
        let conn = Conn::new(
            target,
            self.op_timeout,
            self.max_call(),
            breakers,
            pattern,
            &space,
            self.runtime,
        )
        .map_err(|e| ConfigError::new("runtime", e.to_string()))?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                space,
                max_value_bytes: self.max_value_bytes,
                names: NamespaceRegistry::default(),
                warnings: record::Warnings::new(),
                generations: generation::Generations::new(),
                fleet: Arc::new(fleet::Fleet::new()),
                clock: Arc::new(clock::ServerClock::new()),
            }),
        })
    }

    /// Checks the store, then builds it: connects (bounded by 4 × `op_timeout`, at least 2 s),
    /// authenticates, and checks that this user may run scripts, use keys under the prefix and
    /// publish and subscribe to the store's channels. The error says what failed and what to
    /// grant (see [`ConnectError`]). After that the store behaves exactly like one from
    /// [`RedisStoreBuilder::build`] (fail-open: a server that goes away later is not an error).
    ///
    /// Runs the checks on a helper thread, so it may be awaited on any executor.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() {
    /// use herdless::store::RedisStore;
    /// let store = RedisStore::builder("redis://app:secret@127.0.0.1:6379/0")
    ///     .prefix("shop")
    ///     .connect()
    ///     .await
    ///     .unwrap_or_else(|e| panic!("{e}")); // e.g. "… may not EVAL (scripts) … — grant …"
    /// # drop(store);
    /// # }
    /// ```
    pub async fn connect(self) -> Result<RedisStore, ConnectError> {
        #[cfg(feature = "cluster")]
        if self.seeds.is_some() {
            return self.connect_cluster().await;
        }
        self.checks()?.run().await?;
        self.built()
    }

    /// [`RedisStoreBuilder::connect`] for callers without a runtime (blocks this thread).
    pub fn connect_blocking(self) -> Result<RedisStore, ConnectError> {
        #[cfg(feature = "cluster")]
        if self.seeds.is_some() {
            return crate::wait::block_on(self.connect_cluster());
        }
        self.checks()?.run_blocking()?;
        self.built()
    }

    /// The start-up checks of this configuration (an invalid setting fails here, before I/O).
    fn checks(&self) -> Result<connect::Checks, ConnectError> {
        let client = self
            .validate()
            .map_err(|e| ConnectError::config(&self.url, e))?;
        let pattern = self.channel_pattern();
        Ok(connect::Checks::new(
            &self.url,
            client,
            &self.prefix,
            pattern,
            self.op_timeout,
        ))
    }

    /// [`RedisStoreBuilder::build`] with the error of [`RedisStoreBuilder::connect`].
    fn built(self) -> Result<RedisStore, ConnectError> {
        let url = self.url.clone();
        self.build().map_err(|e| ConnectError::config(&url, e))
    }

    /// The longest a call may take while its reply keeps arriving (see
    /// [`RedisStoreBuilder::op_timeout`]).
    fn max_call(&self) -> Duration {
        let mib = u32::try_from(self.max_value_bytes >> 20).unwrap_or(u32::MAX);
        (self.op_timeout.saturating_mul(4))
            .max(Duration::from_secs(1))
            .saturating_add(TRANSFER_PER_MIB.saturating_mul(mib))
    }

    /// The pattern every store of this prefix subscribes to.
    fn channel_pattern(&self) -> Vec<u8> {
        // The prefix's glob characters are escaped: `a*` must not also match `ab`'s channels.
        let mut pattern = keys::glob_escape(&self.prefix);
        pattern.extend_from_slice(b":{*}:c");
        pattern
    }

    /// Checks every setting and parses the URL (no I/O).
    fn validate(&self) -> Result<redis::Client, ConfigError> {
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                "prefix",
                "must be non-empty and must not contain '{' or '}' (they delimit the hash tag)",
            ));
        }
        if self.op_timeout.is_zero() {
            return Err(ConfigError::new("op_timeout", "must be positive"));
        }
        if self.breaker_threshold == 0 {
            return Err(ConfigError::new(
                "circuit_breaker",
                "threshold must be at least 1",
            ));
        }
        if self.max_value_bytes == 0 {
            return Err(ConfigError::new("max_value_bytes", "must be positive"));
        }
        if self.seeds.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::new(
                "seeds",
                "give at least one node of the cluster",
            ));
        }
        connect::parse_url(&self.url)
    }
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &connect::redact_url(&self.url))
            .field(
                "seeds",
                &self
                    .seeds
                    .as_ref()
                    .map(|s| s.iter().map(|u| connect::redact_url(u)).collect::<Vec<_>>()),
            )
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("runtime", &self.runtime.is_some())
            .finish()
    }
}

struct Inner {
    conn: Arc<Conn>,
    space: KeySpace,
    max_value_bytes: usize,
    names: NamespaceRegistry,
    warnings: record::Warnings,
    generations: generation::Generations,
    fleet: Arc<fleet::Fleet>,
    /// The server's clock as seen from here (a hit's remaining TTL; see `clock`).
    clock: Arc<clock::ServerClock>,
}

/// A store shared by every process that points at the same Redis.
///
/// ```no_run
/// use herdless::{memoize_stampede, store::RedisStore};
/// use std::time::Duration;
/// let store = RedisStore::new("redis://127.0.0.1:6379/").unwrap();
/// let page = memoize_stampede(&store, Duration::from_secs(1))
///     .name("landing_page")
///     .build_blocking_infallible(|k: &String| format!("<html>{k}</html>"))
///     .unwrap();
/// println!("{}", page.get(&"home".to_string()).unwrap());
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.space.prefix)
            .finish()
    }
}

impl RedisStore {
    /// A store with default settings (prefix `herdless`, 250 ms timeouts). Lazy and fail-open:
    /// it does not connect now, so a service starts even while Redis is down (calls compute
    /// locally meanwhile). [`RedisStore::connect`] checks the server first instead.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        Self::builder(url).build()
    }

    /// A store with default settings, after checking that the server is reachable, accepts the
    /// credentials and lets this user do what the store needs: see
    /// [`RedisStoreBuilder::connect`]. For fail-fast start-up; [`RedisStore::new`] is the lazy,
    /// fail-open alternative.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::builder(url).connect().await
    }

    /// [`RedisStore::connect`] for callers without a runtime (blocks this thread).
    pub fn connect_blocking(url: &str) -> Result<Self, ConnectError> {
        Self::builder(url).connect_blocking()
    }

    /// A builder for the other settings.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.to_string(),
            seeds: None,
            prefix: "herdless".into(),
            op_timeout: Duration::from_millis(250),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(1),
            max_value_bytes: 64 << 20,
            runtime: None,
        }
    }

    /// This store's counters.
    pub fn stats(&self) -> &RedisStats {
        &self.inner.conn.stats
    }

    /// Registers a near tier's hook (held weakly) and says whether the subscription is up now.
    /// Returns the subscription's state word (`changes << 1 | live`), read after the hook was
    /// registered, so that every later change reaches the hook.
    pub(crate) fn tap(&self, tap: &Tap) -> u64 {
        self.inner.conn.wakeups.taps.add(tap);
        missed::watch(&self.inner.conn);
        self.inner.conn.wakeups.state()
    }

    /// How far behind the server this store's announcements may be at `now` (see
    /// `subscriber::Wakeups::verified_age`).
    #[inline]
    pub(crate) fn verified_age(&self, now: u64) -> u64 {
        self.inner.conn.wakeups.verified_age(now)
    }

    /// Asks the subscriber to PING at least every `period`.
    pub(crate) fn want_heartbeat(&self, period: Duration) {
        self.inner.conn.wakeups.want_heartbeat(period);
    }

    /// The subscription's state word now (`changes << 1 | live`).
    pub(crate) fn subscription_state(&self) -> u64 {
        self.inner.conn.wakeups.state()
    }

    /// True while the circuit breaker keeps calls away from the server (on a cluster store:
    /// while the breaker of any slot range is open).
    pub fn circuit_open(&self) -> bool {
        self.inner.conn.breakers.any_open()
    }

    /// The Redis key under which `key` of function `name` is stored (for tools and tests), under
    /// the function's generation as this store last saw it. When this store has not read that
    /// generation yet, it reads it first (one round trip, blocking this thread; skipped on a
    /// worker thread of the runtime given to [`RedisStoreBuilder::runtime`], where blocking
    /// would deadlock, and when the server does not answer).
    ///
    /// Panics if the key cannot be encoded as MessagePack (the engine treats that case as a
    /// store error instead and computes locally).
    pub fn value_key<K: Serialize>(&self, name: &str, key: &K) -> Vec<u8> {
        if !self.inner.generations.known(name) {
            let on_own_runtime = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.id() == self.inner.conn.handle.id());
            if !on_own_runtime {
                let _ = crate::wait::block_on(self.inner.generations.current(
                    &self.inner.conn,
                    &self.inner.space,
                    name,
                ));
            }
        }
        self.keys(name, key)
            .expect("the key encodes as MessagePack")
            .value
    }

    /// A cross-process per-key lock for [`barrier`](crate::barrier), named like a function.
    pub fn lock(&self, name: &str) -> RedisLock {
        RedisLock {
            conn: self.inner.conn.clone(),
            space: self.inner.space.clone(),
            name: name.to_string(),
            lease: Duration::from_secs(5),
        }
    }

    /// The keys under the generation this store last saw for `name` (no I/O).
    fn keys<K: Serialize + ?Sized>(&self, name: &str, key: &K) -> Result<Keys, StoreError> {
        let generation = self.inner.generations.cached(name);
        self.inner.space.keys(name, generation, key)
    }

    /// The keys under the function's current generation (re-read when the cached copy is
    /// stale; see the `generation` module).
    /// The keys under the function's generation read from the server now (see
    /// `Generations::fresh`): for `invalidate` and `insert`.
    async fn fresh_entry_keys<K: Serialize + ?Sized>(
        &self,
        name: &str,
        key: &K,
    ) -> Result<(Keys, u64), StoreError> {
        let generation = self
            .inner
            .generations
            .fresh(&self.inner.conn, &self.inner.space, name)
            .await?;
        Ok((self.inner.space.keys(name, generation, key)?, generation))
    }

    async fn entry_keys<K: Serialize + ?Sized>(
        &self,
        name: &str,
        key: &K,
    ) -> Result<Keys, StoreError> {
        let generation = self
            .inner
            .generations
            .current(&self.inner.conn, &self.inner.space, name)
            .await?;
        self.inner.space.keys(name, generation, key)
    }

    /// Only the value key of [`RedisStore::entry_keys`] (a hit's read).
    async fn hit_key<K: Serialize + ?Sized>(
        &self,
        name: &str,
        key: &K,
    ) -> Result<Vec<u8>, StoreError> {
        let generation = self
            .inner
            .generations
            .current(&self.inner.conn, &self.inner.space, name)
            .await?;
        self.inner.space.value_key(name, generation, key)
    }
}
