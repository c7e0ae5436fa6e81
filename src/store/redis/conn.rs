//! The connection side of the Redis store: a private runtime, a connection slot re-established
//! in the background, a timeout on every call, a circuit breaker, and the pub/sub dispatcher that
//! wakes waiters.

mod breaker;
#[cfg(feature = "cluster")]
pub(crate) mod cluster;
mod direct;
mod local;
mod permissions;
#[cfg(feature = "cluster")]
mod probe;
mod progress;
mod slot;
mod stats;
mod subscriber;
pub(crate) use permissions::PERMISSION_RECHECK;
use permissions::{refuse_scripts, refuses_scripting};
pub use stats::RedisStats;
pub(crate) use stats::Stats;
pub(crate) use subscriber::Wakeups;

use super::connect::{display_url, store_error};
use crate::store::contract::{StoreError, StoreErrorKind};
use crate::wait::{Event, WaitMode};
use breaker::Breaker;
pub(crate) use breaker::Breakers;
use breaker::Touch;
use slot::{breaks_connection, Raw, Slot, SlotEvent, Unavailable};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

pub(crate) struct Conn {
    rt: Option<tokio::runtime::Runtime>,
    pub(crate) handle: tokio::runtime::Handle,
    slot: Arc<Slot>,
    pub(crate) op_timeout: Duration,
    /// The longest a call may take while its reply keeps arriving (see `run`).
    max_call: Duration,
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
    /// The process that made this store: in a forked child its runtime's threads do not exist,
    /// so every call there fails at once instead of waiting for them (issue 18, finding 7).
    pid: u32,
    /// The fleet's "announcements missed" marker and its poller (see the `missed` module).
    pub(crate) missed: super::missed::Missed,
    /// The store's key prefix, under which a cluster store's breaker probes pick their keys.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    probe_prefix: Vec<u8>,
    /// Hits in flight and the batch they share (see `coalesce`).
    pub(crate) coalesce: super::coalesce::Coalesce,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code; this does not block.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// How long a call that found its connection silent for `op_timeout` gives the connection's
/// own task to look at the socket before giving up (see `Conn::run`).
const GRACE: Duration = Duration::from_millis(20);

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
        max_call: Duration,
        breakers: Breakers,
        pattern: Vec<u8>,
        space: &super::keys::KeySpace,
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
            max_call,
            breakers,
            cluster,
            stats,
            wakeups: Arc::default(),
            warned_blocking: AtomicBool::new(false),
            scripts_refused,
            pid: std::process::id(),
            missed: super::missed::Missed::new(space.missed_key()),
            probe_prefix: space.prefix.as_bytes().to_vec(),
            coalesce: Default::default(),
        });
        conn.handle.spawn(subscriber::subscriber(
            subscribe_to,
            cluster,
            pattern,
            Arc::downgrade(&conn.wakeups),
            conn.stats.clone(),
        ));
        conn.handle
            .spawn(recheck_permissions(Arc::downgrade(&conn)));
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
            let out = this.run(f, deadline, &touch, None).await;
            this.book(&out, &touch);
            #[cfg(feature = "cluster")]
            if let (true, Some(range)) = (this.cluster, touch.range()) {
                this.watch(range);
            }
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

    /// One request on the slot's connection, before `deadline`. A broken connection is handed
    /// back for a background reconnect, so that the calls after this one fail at once instead
    /// of each paying the timeout again; a timeout only has the connection checked (one PING,
    /// see `Slot::suspect`), since the caller can abandon its reply without harming the rest.
    async fn run<T, F, Fut>(
        &self,
        f: F,
        deadline: tokio::time::Instant,
        touch: &Arc<Touch>,
        caller: Option<&tokio::runtime::Handle>,
    ) -> Result<T, (StoreError, Cause)>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let checked = match self
            .slot
            .get_checked(deadline, self.op_timeout, caller)
            .await
        {
            Ok(c) => c,
            Err(Unavailable::Down(e)) => return Err((e, Cause::Unavailable)),
            Err(Unavailable::TimedOut(e)) => return Err((e, Cause::TimedOut)),
        };
        let slot::Checked {
            ready: raw,
            generation,
            silent,
            local,
        } = checked;
        let (con, progress) = match raw {
            slot::Ready::Single(c, p) => (Connection::Single(c), p),
            #[cfg(feature = "cluster")]
            slot::Ready::Cluster(con) => (
                Connection::Cluster(cluster::Routed {
                    con,
                    breakers: self.breakers.clone(),
                    touch: touch.clone(),
                }),
                None,
            ),
        };
        if silent {
            let err = StoreError::new(
                StoreErrorKind::Timeout,
                format!(
                    "redis at {}: the connection has been silent since a call timed out \
                     (checking it)",
                    self.slot.url
                ),
            );
            return Err((err, Cause::Unavailable));
        }
        let hard = deadline - self.op_timeout + self.max_call;
        let request = f(con);
        tokio::pin!(request);
        let mut until = deadline;
        let mut grace_used = false;
        let outcome = loop {
            match tokio::time::timeout_at(until, &mut request).await {
                Ok(out) => break Some(out),
                // `op_timeout` bounds silence, not transfer: while the connection keeps
                // receiving (this reply, or the replies queued before it), wait on, up to
                // `max_call` in all.
                Err(_) => match &progress {
                    Some(p) => {
                        let silent_until = || {
                            (tokio::time::Instant::from_std(p.last()) + self.op_timeout).min(hard)
                        };
                        if silent_until() <= tokio::time::Instant::now() && !grace_used {
                            // A fresh look at the socket first: this task may have run before
                            // the connection's own after a busy stretch of the I/O thread
                            // (decoding a large reply), with bytes already waiting.
                            grace_used = true;
                            until = tokio::time::Instant::now() + GRACE;
                            continue;
                        }
                        let next = silent_until();
                        if next <= tokio::time::Instant::now() {
                            break None;
                        }
                        grace_used = false;
                        until = next;
                    }
                    None => break None,
                },
            }
        };
        match outcome {
            Some(Ok(v)) => Ok(v),
            Some(Err(_)) if touch.rejected() => Err((circuit_open(), Cause::Rejected)),
            Some(Err(e)) => {
                let err = store_error(&self.slot.url, &e);
                // redis-rs repairs a cluster connection node by node: one failed request (a
                // dead master) must not cut the store off from the other shards.
                if let Some(runtime) = local.filter(|_| breaks_connection(&e)) {
                    // A runtime's own connection: only it is given up (see `local`).
                    self.slot.locals().failed(runtime);
                } else if !self.cluster && breaks_connection(&e) {
                    self.slot.broken(generation, err.clone());
                } else if !self.cluster && e.is_timeout() {
                    self.slot.suspect(generation);
                }
                if refuses_scripting(&e) {
                    // Scripting revoked while connected: plain commands from now on (the
                    // caller retries this one in plain form), re-checked periodically.
                    refuse_scripts(&self.stats, &self.scripts_refused, &e);
                }
                let cause = if e.is_timeout() {
                    Cause::TimedOut
                } else {
                    Cause::Failed
                };
                Err((err, cause))
            }
            None => {
                let err = StoreError::new(
                    StoreErrorKind::Timeout,
                    format!(
                        "redis at {}: no answer within {:?} (nothing received for that long, \
                         or the reply still incomplete after {:?})",
                        self.slot.url, self.op_timeout, self.max_call
                    ),
                );
                // Not torn down for one late reply (see `Slot::suspect`): the calls queued
                // behind a large reply or a server pause would all fail with it.
                if !self.cluster {
                    self.slot.suspect(generation);
                }
                Err((err, Cause::TimedOut))
            }
        }
    }

    /// A blocking call (inside `wait::block_on`) on a worker thread of the store's runtime
    /// would wait for a task that only this very thread can run: refuse it instead of hanging.
    /// Whoever awaits a task spawned on [`Conn::handle`] checks this first.
    pub(crate) fn would_deadlock(&self) -> Option<StoreError> {
        if crate::pid::current() != self.pid {
            // A forked child: the runtime's threads stayed in the parent, so nothing would
            // ever run the request. Fail at once (the engine computes without Redis).
            Stats::inc(&self.stats.forked_calls);
            Stats::inc(&self.stats.errors);
            return Some(StoreError::new(
                StoreErrorKind::Other,
                "this RedisStore was created before a fork(): its I/O threads do not exist in \
                 the child process, so it computes without Redis there; create the store after \
                 forking (e.g. in each worker)",
            ));
        }
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
        if let Some(err) = self.would_deadlock() {
            return Err(err);
        }
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
        SlotEvent::ScriptsRefused(e) => refuse_scripts(&stats, &scripts_refused, e),
        SlotEvent::ScriptsAllowed => {
            if scripts_refused.swap(false, Ordering::AcqRel) {
                stats.scripts_refused.store(0, Ordering::Relaxed);
                Stats::inc(&stats.scripts_restored);
                tracing::info!("redis accepts this user's scripts again: fenced writes restored");
            }
        }
    }
}

/// While the store runs in plain-command mode, asks every `PERMISSION_RECHECK` whether the
/// server now lets it load its scripts. Ends with the store.
async fn recheck_permissions(conn: std::sync::Weak<Conn>) {
    loop {
        tokio::time::sleep(PERMISSION_RECHECK).await;
        let Some(c) = conn.upgrade() else { return };
        if c.plain_commands() {
            c.slot.recheck_scripts().await;
        }
    }
}
