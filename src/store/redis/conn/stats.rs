//! The counters of a Redis store.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one [`RedisStore`](crate::store::RedisStore) (all functions using it).
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
    /// Times the circuit breaker opened (on a cluster store: the breaker of any slot range).
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
    /// 1 while the server refuses this user scripting (no `EVAL`/`EVALSHA`): the store then
    /// caches and locks with plain commands and writes are not fenced. Logged as a warning when
    /// it starts; re-checked every 10 s and on every reconnect, so it goes back to 0 once the
    /// user is granted scripting.
    pub scripts_refused: AtomicU64,
    /// 1 while the server refuses this store's PSUBSCRIBE (an ACL without the channel
    /// permission): waiters then poll instead of being woken. Logged as a warning when it
    /// starts; re-checked every 10 s, so it goes back to 0 once the channels are granted.
    pub pubsub_refused: AtomicU64,
    /// Switches to plain commands because the server refused scripting (`scripts_refused` went
    /// from 0 to 1).
    pub scripts_refusals: AtomicU64,
    /// Switches back to scripts after scripting was granted again (`scripts_refused` went from
    /// 1 to 0).
    pub scripts_restored: AtomicU64,
    /// Switches to polling because the server refused the subscription (`pubsub_refused` went
    /// from 0 to 1).
    pub pubsub_refusals: AtomicU64,
    /// Switches back to wake-ups after the channels were granted again (`pubsub_refused` went
    /// from 1 to 0).
    pub pubsub_restored: AtomicU64,
    /// Connection attempts refused: nothing accepted connections at the address.
    pub refused: AtomicU64,
    /// Connection attempts whose credentials the server refused (`WRONGPASS`, or `NOAUTH`
    /// when the URL has no password).
    pub auth_failures: AtomicU64,
    /// Requests failed at once, without waiting, because there was no connection (the last
    /// attempt failed, or the connection was lost; a new one is being made in the background).
    pub unavailable: AtomicU64,
    /// Requests refused because a blocking call made them on a worker thread of the runtime
    /// given to [`RedisStoreBuilder::runtime`](crate::store::RedisStoreBuilder::runtime): waiting
    /// there would deadlock, since that thread must drive the request. Logged once as a warning.
    pub blocking_on_store_runtime: AtomicU64,
    /// Announcements (`PUBLISH`) the server refused this store (an ACL without the channel
    /// permission): each one instead raised the fleet's "announcements missed" marker, on which
    /// every near tier of the prefix drops its copies and every process re-reads its
    /// generations (see the near cache's docs for the bound). Logged once as a warning.
    pub publish_refused: AtomicU64,
    /// Announcements that were neither published nor recorded in the marker (the marker write
    /// failed too, e.g. the server went away right after the write).
    pub announcements_lost: AtomicU64,
    /// Times the "announcements missed" marker changed (another process's `PUBLISH` was
    /// refused), dropping this store's near tiers.
    pub announcements_missed: AtomicU64,
    /// Subscriptions given up because a heartbeat PING got no answer in time (a paused server,
    /// a connection dropped silently by a middlebox).
    pub pubsub_heartbeat_failures: AtomicU64,
    /// Subscriptions given up because their unhandled backlog grew older than its bound.
    pub pubsub_backlog_resets: AtomicU64,
    /// Times a function's generation key was found missing or behind this process's copy
    /// (`FLUSHALL`, a restart without persistence, eviction, a lossy failover) and re-seeded.
    pub generation_reseeds: AtomicU64,
    /// Reads that used this process's copy of a generation because re-reading it failed (its
    /// shard paused, failing over, or behind an open breaker) after an announcement or a
    /// resubscription asked for a re-read.
    pub generation_fallbacks: AtomicU64,
    /// Calls refused because the store was used in a process forked after it was created
    /// (its I/O threads do not exist there): they fail at once and compute without Redis.
    pub forked_calls: AtomicU64,
}

pub(crate) struct Stats;
impl Stats {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
