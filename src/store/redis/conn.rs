//! The connection side of the Redis store: a private runtime, a connection slot re-established
//! in the background, a timeout on every call, a circuit breaker, and the pub/sub dispatcher that
//! wakes waiters.

mod breaker;
#[cfg(feature = "cluster")]
pub(crate) mod cluster;
mod slot;

use super::announce::Announcement;
use super::connect::{display_url, store_error};
use crate::store::contract::{StoreError, StoreErrorKind};
use crate::wait::{Event, WaitMode};
use breaker::Breaker;
pub(crate) use breaker::Breakers;
#[cfg(feature = "cluster")]
use cluster::Touch;
use futures::StreamExt;
/// Without cluster support a call touches no slot range.
#[cfg(not(feature = "cluster"))]
#[derive(Default)]
struct Touch;
#[cfg(not(feature = "cluster"))]
impl Touch {
    fn range(&self) -> Option<usize> {
        None
    }
    fn rejected(&self) -> bool {
        false
    }
}
use slot::{breaks_connection, Raw, Slot, SlotEvent, Unavailable};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The connection a request runs on (cheap to clone; requests on it are pipelined): the one
/// connection of a single-node store, or a cluster connection routing each request to the master
/// of its slot.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(redis::aio::MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(cluster::Routed),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "cluster")]
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Where a store's requests go.
pub(crate) enum Target {
    /// One server.
    Single(redis::Client),
    /// A Redis Cluster: the redis-rs cluster client, and one plain client per seed node for the
    /// pub/sub subscription (a `PUBLISH` reaches every node of a cluster, so one is enough).
    #[cfg(feature = "cluster")]
    Cluster {
        client: redis::cluster::ClusterClient,
        seeds: Vec<redis::Client>,
    },
}

/// Counters of one [`RedisStore`](super::RedisStore) (all functions using it).
///
/// ```
/// use std::sync::atomic::Ordering;
/// let store = herdless::store::RedisStore::new("redis://127.0.0.1:6379/").unwrap();
/// assert_eq!(store.stats().decode_errors.load(Ordering::Relaxed), 0);
/// // Building does not connect: no attempt was made, so none was refused.
/// assert_eq!(store.stats().refused.load(Ordering::Relaxed), 0);
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
    /// Connections herdless established: the first, and each new one after a connection was
    /// lost or an attempt failed (reconnection runs in the background, never inside a call).
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
    /// Connection attempts refused: nothing accepted connections at the address.
    pub refused: AtomicU64,
    /// Connection attempts whose credentials the server refused (`WRONGPASS`, or `NOAUTH`
    /// when the URL has no password).
    pub auth_failures: AtomicU64,
    /// Requests failed at once, without waiting, because there was no connection (the last
    /// attempt failed, or the connection was lost; a new one is being made in the background).
    pub unavailable: AtomicU64,
    /// Requests refused because a blocking call made them on a worker thread of the runtime
    /// given to [`RedisStoreBuilder::runtime`](super::RedisStoreBuilder::runtime): waiting
    /// there would deadlock, since that thread must drive the request. Logged once as a warning.
    pub blocking_on_store_runtime: AtomicU64,
}

/// Waiters per channel, woken by the pub/sub dispatcher.
#[derive(Default)]
pub(crate) struct Wakeups {
    channels: Mutex<HashMap<Vec<u8>, Weak<Event>>>,
    /// True while the pattern subscription is live (else waiters poll).
    pub(crate) live: AtomicBool,
    /// Near tiers listening to what the subscription hears.
    pub(crate) taps: super::announce::Taps,
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
    slot: Arc<Slot>,
    pub(crate) op_timeout: Duration,
    /// One breaker (single node) or one per slot range (cluster; see `breaker`).
    pub(crate) breakers: Arc<Breakers>,
    /// True for a cluster store: breakers per slot range, and a connection that redis-rs
    /// repairs node by node (never torn down as a whole by one failed request).
    cluster: bool,
    pub(crate) stats: Arc<RedisStats>,
    pub(crate) wakeups: Arc<Wakeups>,
    /// The deadlock warning is logged once per store.
    warned_blocking: AtomicBool,
    /// Set (by the connection slot) when the server refused this user scripting.
    scripts_refused: Arc<AtomicBool>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code; this does not block.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// How often a cluster store checks that the node holding its subscription answers.
const SUBSCRIPTION_HEARTBEAT: Duration = Duration::from_secs(1);

/// How a waiter waits (see [`Conn::wait_channel`]).
enum Wake {
    /// For a publish on the channel (or the deadline). The event is kept alive with its
    /// listener: the dispatcher holds only a weak reference, and wakes nobody once it is gone.
    On(Arc<Event>, crate::wait::Listener),
    /// Not at all: the lock it waited on is gone.
    LockGone,
    /// By sleeping: no live subscription.
    Poll,
}

/// How a request failed, for the counters: it waited out its deadline, it was refused at once
/// (no connection), or the server or the connection answered with an error.
enum Cause {
    TimedOut,
    Unavailable,
    Failed,
    /// A cluster range's breaker refused it (not a failure of the server).
    Rejected,
}

fn circuit_open() -> StoreError {
    StoreError::new(
        StoreErrorKind::CircuitOpen,
        "circuit open (redis failed repeatedly; computing locally)",
    )
}

impl Conn {
    pub(crate) fn new(
        target: Target,
        op_timeout: Duration,
        breakers: Breakers,
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
        let stats: Arc<RedisStats> = Arc::default();
        let breakers = Arc::new(breakers);
        let scripts_refused = Arc::new(AtomicBool::new(false));
        let (raw, url, subscribe_to, cluster) = match target {
            Target::Single(client) => {
                let url = display_url(&client);
                (Raw::Single(client.clone()), url, vec![client], false)
            }
            #[cfg(feature = "cluster")]
            Target::Cluster { client, seeds } => {
                let url = format!(
                    "cluster {}",
                    seeds.iter().map(display_url).collect::<Vec<_>>().join(",")
                );
                (Raw::Cluster(client), url, seeds, true)
            }
        };
        let slot = Slot::new(
            raw,
            url,
            // No caller waits for an attempt (see `Slot`), so it may take its time.
            op_timeout.saturating_mul(4).max(Duration::from_secs(1)),
            handle.clone(),
            Box::new(on_slot_event(
                stats.clone(),
                breakers.clone(),
                scripts_refused.clone(),
            )),
        );
        let conn = Arc::new(Conn {
            handle,
            rt,
            slot,
            op_timeout,
            breakers,
            cluster,
            stats,
            wakeups: Arc::default(),
            warned_blocking: AtomicBool::new(false),
            scripts_refused,
        });
        conn.handle.spawn(subscriber(
            subscribe_to,
            cluster.then_some(SUBSCRIPTION_HEARTBEAT),
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

    /// Runs one request (one round trip) under the timeout and the breaker, on the store's own
    /// runtime so that callers on any executor, or none, can await it. The whole request,
    /// waiting for a connection included, is bounded by `op_timeout`; without a connection it
    /// fails at once with the reason the last connection attempt failed.
    pub(crate) async fn call<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        if let Some(err) = self.would_deadlock() {
            return Err(err);
        }
        // A cluster store asks the breaker of the request's slot range, once the request's
        // first key is known (see `cluster::Routed`).
        if !self.cluster && !self.breakers.get(0).allow() {
            Stats::inc(&self.stats.rejected_open);
            return Err(circuit_open());
        }
        let deadline = tokio::time::Instant::now() + self.op_timeout;
        // The outcome is booked inside the spawned task, which runs to completion even when
        // the caller's future is dropped: a cancelled half-open probe must still close or
        // re-open the circuit, or the breaker would stay open for good.
        let this = self.clone();
        let task = self.handle.spawn(async move {
            let touch = Arc::new(Touch::default());
            let out = this.run(f, deadline, &touch).await;
            this.book(&out, &touch);
            out.map_err(|(e, _)| e)
        });
        Stats::inc(&self.stats.round_trips);
        match task.await {
            Ok(r) => r,
            Err(e) => {
                // Only a runtime shutting down gets here; the probe flag must not stay set.
                let err = StoreError::new(StoreErrorKind::Other, format!("store task failed: {e}"));
                let touch = Touch::default();
                self.book::<T>(&Err((err.clone(), Cause::Failed)), &touch);
                Err(err)
            }
        }
    }

    /// One request on the slot's connection, before `deadline`. A timeout or a broken
    /// connection hands the connection back for a background reconnect, so that the calls
    /// after this one fail at once instead of each paying the timeout again.
    async fn run<T, F, Fut>(
        &self,
        f: F,
        deadline: tokio::time::Instant,
        touch: &Arc<Touch>,
    ) -> Result<T, (StoreError, Cause)>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let (raw, generation) = match self.slot.get(deadline, self.op_timeout).await {
            Ok(c) => c,
            Err(Unavailable::Down(e)) => return Err((e, Cause::Unavailable)),
            Err(Unavailable::TimedOut(e)) => return Err((e, Cause::TimedOut)),
        };
        let con = match raw {
            slot::Ready::Single(c) => Connection::Single(c),
            #[cfg(feature = "cluster")]
            slot::Ready::Cluster(con) => Connection::Cluster(cluster::Routed {
                con,
                breakers: self.breakers.clone(),
                touch: touch.clone(),
            }),
        };
        match tokio::time::timeout_at(deadline, f(con)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) if touch.rejected() => Err((circuit_open(), Cause::Rejected)),
            Ok(Err(e)) => {
                let err = store_error(&self.slot.url, &e);
                // redis-rs repairs a cluster connection node by node: one failed request (a
                // dead master) must not cut the store off from the other shards.
                if !self.cluster && breaks_connection(&e) {
                    self.slot.broken(generation, err.clone());
                }
                let cause = if e.is_timeout() {
                    Cause::TimedOut
                } else {
                    Cause::Failed
                };
                Err((err, cause))
            }
            Err(_) => {
                let err = StoreError::new(
                    StoreErrorKind::Timeout,
                    format!(
                        "redis at {}: no answer within {:?}",
                        self.slot.url, self.op_timeout
                    ),
                );
                if !self.cluster {
                    self.slot.broken(generation, err.clone());
                }
                Err((err, Cause::TimedOut))
            }
        }
    }

    /// A blocking call (inside `wait::block_on`) on a worker thread of the store's runtime
    /// would wait for a task that only this very thread can run: refuse it instead of hanging.
    /// Whoever awaits a task spawned on [`Conn::handle`] checks this first.
    pub(crate) fn would_deadlock(&self) -> Option<StoreError> {
        // The private runtime's only worker runs nothing but this store's tasks.
        if self.rt.is_some() || !crate::wait::in_block_on() {
            return None;
        }
        let own = tokio::runtime::worker_index().is_some()
            && tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == self.handle.id());
        if !own {
            return None;
        }
        Stats::inc(&self.stats.blocking_on_store_runtime);
        Stats::inc(&self.stats.errors);
        let msg = "a blocking call ran on a worker thread of the runtime given to \
                   RedisStoreBuilder::runtime; waiting there would deadlock (that thread must \
                   drive the request), so it computes without Redis. Fix: use the async API \
                   there, or make blocking calls from tokio::task::spawn_blocking or a plain \
                   thread, or drop `.runtime(..)` so that the store runs its own I/O thread";
        if !self.warned_blocking.swap(true, Ordering::Relaxed) {
            tracing::warn!("{msg}");
        }
        Some(StoreError::new(StoreErrorKind::Other, msg))
    }

    /// Waits for a publish on `channel` (or `max`). Subscribed before the caller re-checks:
    /// when `lock_key` is given, the wait ends at once if that lock is already gone (its holder
    /// wrote or released between the caller's last look and now, so the publish was missed).
    /// Checking the lock, not the value, keeps a waiter from spinning on a value that is
    /// present but unreadable while the holder recomputes it. When the server cannot say, the
    /// wait runs its course (no spin on a request that keeps failing); [`Conn::wait_lock`]
    /// reports that failure instead.
    pub(crate) async fn wait_channel(
        self: &Arc<Self>,
        channel: &[u8],
        lock_key: Option<&[u8]>,
        max: Duration,
        mode: WaitMode,
    ) {
        match self.listen(channel, lock_key).await {
            Ok(Wake::On(_event, listener)) => {
                mode.wait(listener, Instant::now().checked_add(max)).await;
            }
            Ok(Wake::LockGone) => {}
            Ok(Wake::Poll) | Err(_) => mode.sleep(max).await,
        }
    }

    /// [`Conn::wait_channel`] on a lock, failing at once when the server cannot say whether
    /// the lock is held, so that the caller computes instead of asking again (and stacking one
    /// timeout on another).
    pub(crate) async fn wait_lock(
        self: &Arc<Self>,
        channel: &[u8],
        lock_key: &[u8],
        max: Duration,
        mode: WaitMode,
    ) -> Result<(), StoreError> {
        match self.listen(channel, Some(lock_key)).await? {
            Wake::On(_event, listener) => {
                mode.wait(listener, Instant::now().checked_add(max)).await;
            }
            Wake::LockGone => {}
            Wake::Poll => mode.sleep(max).await,
        }
        Ok(())
    }

    /// How to wait on `channel`: on a listener taken before the lock is checked (so a publish
    /// in between is not lost), not at all when the lock is already gone, or by sleeping when
    /// the subscription is down (waiters then poll).
    async fn listen(
        self: &Arc<Self>,
        channel: &[u8],
        lock_key: Option<&[u8]>,
    ) -> Result<Wake, StoreError> {
        if !self.wakeups.live.load(Ordering::Acquire) {
            return Ok(Wake::Poll);
        }
        let event = self.wakeups.event(channel);
        let listener = event.listen();
        if let Some(lk) = lock_key {
            let lk = lk.to_vec();
            let held: bool = self
                .call(move |mut m: Connection| async move {
                    redis::cmd("EXISTS").arg(lk).query_async(&mut m).await
                })
                .await?;
            if !held {
                return Ok(Wake::LockGone);
            }
        }
        Ok(Wake::On(event, listener))
    }

    /// Books the outcome on the breaker it belongs to: the only one of a single node, or the
    /// one of the slot range the request went to (none when it never reached a keyed command,
    /// e.g. no cluster connection yet).
    fn book<T>(&self, out: &Result<T, (StoreError, Cause)>, touch: &Touch) {
        let breaker = if self.cluster {
            touch.range().map(|r| self.breakers.get(r))
        } else {
            Some(self.breakers.get(0))
        };
        match out {
            Ok(_) => {
                if let Some(b) = breaker {
                    b.success();
                }
            }
            Err((_, Cause::Rejected)) => Stats::inc(&self.stats.rejected_open),
            Err((e, cause)) => {
                Stats::inc(&self.stats.errors);
                match cause {
                    Cause::TimedOut => Stats::inc(&self.stats.timeouts),
                    Cause::Unavailable => Stats::inc(&self.stats.unavailable),
                    Cause::Failed | Cause::Rejected => {}
                }
                if breaker.is_some_and(Breaker::failure) {
                    Stats::inc(&self.stats.circuit_opens);
                    tracing::warn!(error = %e, "redis unavailable; circuit open, computing locally");
                }
            }
        }
    }
}

/// Books what the connection slot's background task reports: counts refusals, closes the
/// circuit as soon as a connection is back, and warns once per outage.
fn on_slot_event(
    stats: Arc<RedisStats>,
    breakers: Arc<Breakers>,
    scripts_refused: Arc<AtomicBool>,
) -> impl Fn(SlotEvent<'_>) + Send + Sync {
    let down = AtomicBool::new(false);
    move |event| match event {
        SlotEvent::Connected => {
            Stats::inc(&stats.connects);
            // The server answered a connect, an AUTH and the script loads: no reason to keep
            // paying the rest of a cooldown.
            breakers.success_all();
            if down.swap(false, Ordering::Relaxed) {
                tracing::info!("redis connection re-established");
            }
        }
        SlotEvent::Failed(e) => {
            match e.kind() {
                StoreErrorKind::ConnectionRefused => Stats::inc(&stats.refused),
                StoreErrorKind::Authentication => Stats::inc(&stats.auth_failures),
                _ => {}
            }
            if !down.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "redis connection failed; computing locally and reconnecting in the background");
            }
        }
        SlotEvent::Lost(e) => {
            tracing::debug!(error = %e, "redis connection given up; reconnecting in the background");
        }
        SlotEvent::ScriptsRefused(e) => {
            if !scripts_refused.swap(true, Ordering::AcqRel) {
                stats.scripts_refused.store(1, Ordering::Relaxed);
                tracing::warn!(
                    error = %e,
                    "redis refused SCRIPT LOAD/EVALSHA (NOPERM): herdless caches and locks with \
                     plain commands (GET+PTTL, SET NX PX, a guarded release) and loses only the \
                     fencing of writes; grant the user +evalsha +eval +script|load (or \
                     +@scripting) to restore it"
                );
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
///
/// On a cluster, `nodes` are the seeds and the subscription is held on one of them: Redis
/// Cluster forwards every `PUBLISH` (a script's included) to every node over the cluster bus, so
/// one node hears the whole cluster. When that node fails, the next seed is tried; `heartbeat`
/// (cluster only) PINGs it that often and gives it up when it does not answer within as long,
/// so that a paused node does not silently stop announcements from the other shards.
async fn subscriber(
    nodes: Vec<redis::Client>,
    heartbeat: Option<Duration>,
    pattern: Vec<u8>,
    wakeups: Weak<Wakeups>,
    stats: Arc<RedisStats>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut next = 0usize;
    loop {
        let Some(w) = wakeups.upgrade() else { return };
        let client = &nodes[next % nodes.len()];
        next = next.wrapping_add(1);
        // Asked before every (re)subscription: permissions can be revoked while we run (an
        // `ACL SETUSER … resetchannels` also disconnects the subscription).
        {
            // redis-rs's `PubSub::psubscribe` returns Ok even when an ACL refuses the pattern,
            // which would leave waiters "woken" by a subscription that does not exist. Ask once
            // with a plain command, which does report NOPERM.
            match subscribe_refused(client, &pattern).await {
                Some(true) => {
                    w.live.store(false, Ordering::Release);
                    w.taps.announce(&Announcement::Disconnected);
                    stats.pubsub_refused.store(1, Ordering::Relaxed);
                    tracing::warn!(
                        pattern = %String::from_utf8_lossy(&pattern),
                        "redis refused PSUBSCRIBE (NOPERM): waiters poll instead of being woken; \
                         grant the user `&{}` and +psubscribe to enable wake-ups",
                        String::from_utf8_lossy(&pattern)
                    );
                    return; // poll-only for good: retrying would be refused again
                }
                Some(false) => {}
                None => {} // could not ask (server down): the subscription attempt fails too
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
                next = next.wrapping_sub(1); // stay on a node that worked
                w.live.store(true, Ordering::Release);
                // Anything published while we were down was missed: let waiters re-check, and
                // near tiers drop what they hold.
                w.taps.announce(&Announcement::Connected);
                w.wake_all();
                drop(w);
                let (mut sink, mut stream) = ps.split();
                let mut beat =
                    tokio::time::interval(heartbeat.unwrap_or(Duration::from_secs(3600)));
                beat.tick().await; // the first tick is immediate
                loop {
                    let msg = tokio::select! {
                        m = stream.next() => m,
                        _ = beat.tick(), if heartbeat.is_some() => {
                            // A paused node keeps the connection open and says nothing: without
                            // an answer, treat the subscription as down and move on.
                            let bound = heartbeat.unwrap_or_default();
                            match tokio::time::timeout(bound, sink.ping::<redis::Value>()).await {
                                Ok(Ok(_)) => continue,
                                _ => None,
                            }
                        }
                    };
                    let Some(msg) = msg else { break };
                    let Some(w) = wakeups.upgrade() else { return };
                    let channel = msg.get_channel_name().as_bytes();
                    w.taps.message(channel, msg.get_payload_bytes());
                    w.wake(channel);
                }
                if heartbeat.is_some() {
                    next = next.wrapping_add(1); // try another node first
                }
                if let Some(w) = wakeups.upgrade() {
                    w.live.store(false, Ordering::Release);
                    w.taps.announce(&Announcement::Disconnected);
                    w.wake_all();
                }
            }
            _ => {
                w.live.store(false, Ordering::Release);
                w.taps.announce(&Announcement::Disconnected);
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
