//! The connection side of the Redis store: a private runtime, a self-healing connection, a
//! timeout on every call, a circuit breaker, and the pub/sub dispatcher that wakes waiters.

use super::scripts;
use crate::clock::saturating_nanos;
use crate::store::contract::{StoreError, StoreErrorKind};
use crate::wait::{Event, WaitMode};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Counters of one [`RedisStore`](super::RedisStore) (all functions using it).
///
/// ```
/// use std::sync::atomic::Ordering;
/// let store = herdless::store::RedisStore::new("redis://127.0.0.1:6379/").unwrap();
/// assert_eq!(store.stats().decode_errors.load(Ordering::Relaxed), 0);
/// ```
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Requests sent (each is one round trip).
    pub round_trips: AtomicU64,
    /// Requests that failed or timed out.
    pub errors: AtomicU64,
    /// Requests that timed out.
    pub timeouts: AtomicU64,
    /// Times the circuit breaker opened.
    pub circuit_opens: AtomicU64,
    /// Requests refused at once because the circuit was open.
    pub rejected_open: AtomicU64,
    /// Connections herdless established (the first, and a new one after a failed connect).
    /// Reconnects after a dropped connection happen inside redis-rs's `ConnectionManager` and
    /// show up as `errors` followed by successful round trips, not here.
    pub connects: AtomicU64,
    /// Records that were not ours, truncated, oversized or of the wrong type (read as misses).
    pub decode_errors: AtomicU64,
    /// Writes that did not land because something newer was written, or the key was
    /// invalidated, after the writer's computation started (version fencing).
    pub fenced_writes: AtomicU64,
    /// Values that could not be serialized (returned to callers, never cached; warned about
    /// at most every 10 s).
    pub encode_errors: AtomicU64,
    /// Values refused at write time for exceeding `max_value_bytes` (returned, never cached).
    pub oversized_writes: AtomicU64,
    /// 1 when the server refused this user scripting (no `EVAL`/`EVALSHA`): the store then
    /// caches and locks with plain commands and writes are not fenced. Logged once as a warning.
    pub scripts_refused: AtomicU64,
    /// 1 when the server refused this store's PSUBSCRIBE (an ACL without the channel
    /// permission): waiters then poll instead of being woken. Logged once as a warning.
    pub pubsub_refused: AtomicU64,
}

/// What kind of failure a redis-rs error is.
pub(crate) fn classify(e: &redis::RedisError) -> StoreErrorKind {
    use redis::ErrorKind as K;
    if e.is_timeout() {
        return StoreErrorKind::Timeout;
    }
    if e.code() == Some("NOPERM") {
        return StoreErrorKind::PermissionDenied;
    }
    if e.code() == Some("WRONGPASS") || e.code() == Some("NOAUTH") {
        return StoreErrorKind::Authentication;
    }
    match e.kind() {
        K::AuthenticationFailed => StoreErrorKind::Authentication,
        K::TypeError | K::ResponseError | K::ParseError => StoreErrorKind::Protocol,
        K::IoError if e.is_connection_refusal() => StoreErrorKind::ConnectionRefused,
        _ => StoreErrorKind::Other,
    }
}

pub(crate) fn store_error(context: &str, e: &redis::RedisError) -> StoreError {
    StoreError::new(classify(e), format!("{context}: {e}"))
}

/// Trips after `threshold` consecutive failures; while open, calls fail at once instead of
/// paying a timeout each. After `cooldown` one probe is let through (half-open); its success
/// closes the circuit, its failure re-opens it.
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    origin: Instant,
    failures: AtomicU32,
    /// Nanoseconds since `origin` until which the circuit is open; 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            origin: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
    /// May a call go to the server now?
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.now() < until {
            return false;
        }
        // Half-open: exactly one probe at a time.
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
    pub(crate) fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }
    /// Returns true when this failure opened the circuit.
    pub(crate) fn failure(&self) -> bool {
        let f = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        if f >= self.threshold || was_probe {
            let until = self.now().saturating_add(saturating_nanos(self.cooldown));
            self.open_until.store(until.max(1), Ordering::Release);
            return true;
        }
        false
    }
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

/// Waiters per channel, woken by the pub/sub dispatcher.
#[derive(Default)]
pub(crate) struct Wakeups {
    channels: Mutex<HashMap<Vec<u8>, Weak<Event>>>,
    /// True while the pattern subscription is live (else waiters poll).
    pub(crate) live: AtomicBool,
}

impl Wakeups {
    pub(crate) fn event(&self, channel: &[u8]) -> Arc<Event> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(channel).and_then(Weak::upgrade) {
            return e;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let e = Arc::new(Event::new());
        map.insert(channel.to_vec(), Arc::downgrade(&e));
        e
    }
    fn wake(&self, channel: &[u8]) {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(channel).and_then(Weak::upgrade) {
            e.notify(usize::MAX);
        }
    }
    fn wake_all(&self) {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for e in map.values().filter_map(Weak::upgrade) {
            e.notify(usize::MAX);
        }
    }
}

pub(crate) struct Conn {
    rt: Option<tokio::runtime::Runtime>,
    pub(crate) handle: tokio::runtime::Handle,
    client: redis::Client,
    manager: tokio::sync::Mutex<Option<ConnectionManager>>,
    pub(crate) op_timeout: Duration,
    pub(crate) breaker: Breaker,
    pub(crate) stats: Arc<RedisStats>,
    pub(crate) wakeups: Arc<Wakeups>,
    scripts_refused: AtomicBool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code; this does not block.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Conn {
    pub(crate) fn new(
        client: redis::Client,
        op_timeout: Duration,
        breaker: Breaker,
        pattern: Vec<u8>,
        runtime: Option<tokio::runtime::Handle>,
    ) -> std::io::Result<Arc<Self>> {
        // Redis I/O runs on the caller's runtime when one is given (no thread hop between the
        // caller and the connection), else on a private one-thread runtime, which is what lets
        // blocking callers use Redis without a runtime of their own.
        let (rt, handle) = match runtime {
            Some(h) => (None, h),
            None => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("herdless-redis")
                    .enable_all()
                    .build()?;
                let h = rt.handle().clone();
                (Some(rt), h)
            }
        };
        let conn = Arc::new(Conn {
            handle,
            rt,
            client,
            manager: tokio::sync::Mutex::new(None),
            op_timeout,
            breaker,
            stats: Arc::default(),
            wakeups: Arc::default(),
            scripts_refused: AtomicBool::new(false),
        });
        conn.handle.spawn(subscriber(
            conn.client.clone(),
            pattern,
            Arc::downgrade(&conn.wakeups),
            conn.stats.clone(),
        ));
        Ok(conn)
    }

    /// True when the server refused this user scripting: the store then uses plain commands
    /// (see the `plain` module), losing only the fencing of writes.
    pub(crate) fn plain_commands(&self) -> bool {
        self.scripts_refused.load(Ordering::Acquire)
    }

    fn refuse_scripts(&self, e: &redis::RedisError) {
        if !self.scripts_refused.swap(true, Ordering::AcqRel) {
            self.stats.scripts_refused.store(1, Ordering::Relaxed);
            tracing::warn!(
                error = %e,
                "redis refused SCRIPT LOAD/EVALSHA (NOPERM): herdless caches and locks with plain \
                 commands (GET+PTTL, SET NX PX, a guarded release) and loses only the fencing \
                 of writes; grant the user +evalsha +eval +script|load (or +@scripting) to \
                 restore it"
            );
        }
    }

    async fn manager(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.manager.lock().await;
        if let Some(m) = &*slot {
            return Ok(m.clone());
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(self.op_timeout)
            .set_response_timeout(self.op_timeout)
            .set_number_of_retries(1)
            .set_max_delay(200);
        let mut m = ConnectionManager::new_with_config(self.client.clone(), cfg)
            .await
            .map_err(|e| store_error("connect", &e))?;
        // Load every script now so that the first real call is one round trip (EVALSHA). A
        // user refused scripting (an ACL without EVAL) gets the plain-command mode instead.
        for s in scripts::all() {
            match s.prepare_invoke().load_async(&mut m).await {
                Ok(_) => {}
                Err(e) if e.code() == Some("NOPERM") => {
                    self.refuse_scripts(&e);
                    break;
                }
                Err(e) => return Err(store_error("script load", &e)),
            }
        }
        Stats::inc(&self.stats.connects);
        *slot = Some(m.clone());
        Ok(m)
    }

    /// Runs one request (one round trip) under the timeout and the breaker, on the store's own
    /// runtime so that callers on any executor, or none, can await it.
    pub(crate) async fn call<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        if !self.breaker.allow() {
            Stats::inc(&self.stats.rejected_open);
            return Err(StoreError::new(
                StoreErrorKind::CircuitOpen,
                "circuit open (redis failed repeatedly; computing locally)",
            ));
        }
        // The outcome is booked inside the spawned task, which runs to completion even when
        // the caller's future is dropped: a cancelled half-open probe must still close or
        // re-open the circuit, or the breaker would stay open for good.
        let this = self.clone();
        let task = self.handle.spawn(async move {
            let deadline = this.op_timeout * 2;
            let run = async {
                let m = this.manager().await?;
                f(m).await.map_err(|e| store_error("redis", &e))
            };
            let out = match tokio::time::timeout(deadline, run).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    format!("no answer within {deadline:?}"),
                )),
            };
            this.book(&out);
            out
        });
        Stats::inc(&self.stats.round_trips);
        match task.await {
            Ok(r) => r,
            Err(e) => {
                // Only a runtime shutting down gets here; the probe flag must not stay set.
                let err = StoreError::new(StoreErrorKind::Other, format!("store task failed: {e}"));
                self.book::<T>(&Err(err.clone()));
                Err(err)
            }
        }
    }

    /// Waits for a publish on `channel` (or `max`). Subscribed before the caller re-checks:
    /// when `lock_key` is given, the wait ends at once if that lock is already gone (its holder
    /// wrote or released between the caller's last look and now, so the publish was missed),
    /// or if the server cannot say (the caller's next request then fails fast and it computes
    /// locally). Checking the lock, not the value, keeps a waiter from spinning on a value that
    /// is present but unreadable while the holder recomputes it.
    pub(crate) async fn wait_channel(
        self: &Arc<Self>,
        channel: &[u8],
        lock_key: Option<&[u8]>,
        max: Duration,
        mode: WaitMode,
    ) {
        if !self.wakeups.live.load(Ordering::Acquire) {
            mode.sleep(max).await;
            return;
        }
        let event = self.wakeups.event(channel);
        let listener = event.listen();
        if let Some(lk) = lock_key {
            let lk = lk.to_vec();
            let held: Result<bool, _> = self
                .call(move |mut m: ConnectionManager| async move {
                    redis::cmd("EXISTS").arg(lk).query_async(&mut m).await
                })
                .await;
            if !held.unwrap_or(false) {
                return;
            }
        }
        mode.wait(listener, Instant::now().checked_add(max)).await;
    }

    fn book<T>(&self, out: &Result<T, StoreError>) {
        match out {
            Ok(_) => self.breaker.success(),
            Err(e) => {
                Stats::inc(&self.stats.errors);
                if e.kind() == StoreErrorKind::Timeout {
                    Stats::inc(&self.stats.timeouts);
                }
                if self.breaker.failure() {
                    Stats::inc(&self.stats.circuit_opens);
                    tracing::warn!(error = %e, "redis unavailable; circuit open, computing locally");
                }
            }
        }
    }
}

struct Stats;
impl Stats {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps one pattern subscription to every herdless channel of this prefix and wakes local
/// waiters of the channel a message arrives on. Reconnects with backoff when the connection
/// drops; while it is down waiters fall back to polling.
async fn subscriber(
    client: redis::Client,
    pattern: Vec<u8>,
    wakeups: Weak<Wakeups>,
    stats: Arc<RedisStats>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut checked = false;
    loop {
        let Some(w) = wakeups.upgrade() else { return };
        if !checked {
            // redis-rs's `PubSub::psubscribe` returns Ok even when an ACL refuses the pattern,
            // which would leave waiters "woken" by a subscription that does not exist. Ask once
            // with a plain command, which does report NOPERM.
            match subscribe_refused(&client, &pattern).await {
                Some(true) => {
                    w.live.store(false, Ordering::Release);
                    stats.pubsub_refused.store(1, Ordering::Relaxed);
                    tracing::warn!(
                        pattern = %String::from_utf8_lossy(&pattern),
                        "redis refused PSUBSCRIBE (NOPERM): waiters poll instead of being woken; \
                         grant the user `&{}` and +psubscribe to enable wake-ups",
                        String::from_utf8_lossy(&pattern)
                    );
                    return; // poll-only for good: retrying would be refused again
                }
                Some(false) => checked = true,
                None => {} // could not ask (server down): ask again on the next round
            }
        }
        let connected = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.psubscribe(&pattern).await?;
            redis::RedisResult::Ok(ps)
        };
        match tokio::time::timeout(Duration::from_secs(2), connected).await {
            Ok(Ok(ps)) => {
                backoff = Duration::from_millis(50);
                w.live.store(true, Ordering::Release);
                // Anything published while we were down was missed: let waiters re-check.
                w.wake_all();
                drop(w);
                let mut stream = ps.into_on_message();
                while let Some(msg) = stream.next().await {
                    let Some(w) = wakeups.upgrade() else { return };
                    w.wake(msg.get_channel_name().as_bytes());
                }
                if let Some(w) = wakeups.upgrade() {
                    w.live.store(false, Ordering::Release);
                    w.wake_all();
                }
            }
            _ => {
                w.live.store(false, Ordering::Release);
                drop(w);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Whether the server refuses this user a PSUBSCRIBE of `pattern`: `Some(true)` on NOPERM,
/// `Some(false)` when permitted, `None` when the server could not be asked.
async fn subscribe_refused(client: &redis::Client, pattern: &[u8]) -> Option<bool> {
    let ask = async {
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        let out = redis::cmd("PSUBSCRIBE")
            .arg(pattern)
            .query_async::<redis::Value>(&mut con)
            .await;
        Some(matches!(&out, Err(e) if e.code() == Some("NOPERM")))
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}
