//! [`Store`] for [`RedisStore`]: every operation is one script (one round trip), fenced by the
//! entry's version (see the `scripts` module).

use super::conn::Conn;
use super::keys::{token, Keys};
use super::lock::{acquiring, HeldLock};
use super::record::Remaining;
use super::{plain, scripts, RedisStore};
use crate::entry::Entry;
use crate::store::contract::{
    LockOutcome, Namespace, RefreshOutcome, Seen, Store, StoreError, StoreErrorKind, Written,
};
use crate::wait::WaitMode;
use redis::Value;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Milliseconds of a duration for a Redis argument (saturating, at least 1).
fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

/// How long the version key is kept: past the value's life and any computation's, so a ticket
/// stays comparable. (If it goes anyway, e.g. evicted, pending writes are fenced: an extra
/// recomputation, never a stale value.)
fn keep_ms(d: Duration) -> u64 {
    ms(d.saturating_mul(2).saturating_add(Duration::from_secs(60)))
}

fn protocol(what: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Protocol,
        format!("unexpected reply to {what}"),
    )
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

fn bytes(v: Option<&Value>) -> Option<Vec<u8>> {
    match v {
        Some(Value::BulkString(b)) => Some(b.clone()),
        Some(Value::SimpleString(s)) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn items(reply: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    match reply {
        Value::Array(items) => Ok(items),
        _ => Err(protocol(what)),
    }
}

/// Runs the scripted form of an operation, or its plain-command form when the server refuses
/// this user scripting (known after the first connect; a script refused for that reason is
/// retried in plain form, so the call that discovers it does not fail).
async fn scripted_or_plain<T, A, B>(
    conn: &std::sync::Arc<super::conn::Conn>,
    script: impl FnOnce() -> A,
    plain: impl FnOnce() -> B,
) -> Result<T, StoreError>
where
    A: std::future::Future<Output = Result<T, StoreError>>,
    B: std::future::Future<Output = Result<T, StoreError>>,
{
    if conn.plain_commands() {
        return plain().await;
    }
    match script().await {
        Err(e) if e.kind() == StoreErrorKind::PermissionDenied && conn.plain_commands() => {
            plain().await
        }
        out => out,
    }
}

impl RedisStore {
    /// The lease actually taken: at least four call timeouts, so that renewals (every quarter
    /// lease, retried promptly) outlast a stall of the server shorter than the lease.
    fn lease(&self, lease: Duration) -> Duration {
        lease.max(self.inner.conn.op_timeout * 4)
    }
}

impl<K, V> Store<K, V> for RedisStore
where
    K: Serialize + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Lock = HeldLock;

    fn is_shared(&self) -> bool {
        true
    }

    fn fleet_size(&self) -> f64 {
        self.inner.fleet.size(&self.inner.conn, &self.inner.space)
    }

    fn namespace(&self, name: &str) -> Namespace {
        self.inner.names.namespace(name)
    }

    async fn get(&self, ns: &Namespace, key: &K, now: u64) -> Result<Option<Entry<V>>, StoreError> {
        // One plain command in both modes (scripted or not): the record carries its expiry in
        // the server's clock (see `record` and `clock`).
        let k = self.hit_key(ns.name(), key).await?;
        let server_now = self.inner.clock.server_now_ms(&self.inner.conn).await?;
        match super::coalesce::get(&self.inner.conn, k, self.inner.max_value_bytes).await? {
            plain::Got::Record(b) => Ok(self
                .decode(&b, Remaining::ServerNow(server_now), now)
                .unwrap_or(None)
                .filter(|e| live_or_kept(ns, e, now))),
            plain::Got::Missing => Ok(None),
            plain::Got::WrongType => {
                self.undecodable(0);
                Ok(None)
            }
        }
    }

    async fn set(
        &self,
        ns: &Namespace,
        key: &K,
        entry: Entry<V>,
        ttl: Duration,
        lock: Option<HeldLock>,
    ) -> Result<Written, StoreError> {
        // An `insert` (no lock) must land where every reader reads, whatever announcement this
        // process has not heard yet; a computation's write goes where its read went.
        let (keys, inserted) = if lock.is_none() {
            let (keys, generation) = self.fresh_entry_keys(ns.name(), key).await?;
            (keys, Some(generation))
        } else {
            (self.entry_keys(ns.name(), key).await?, None)
        };
        // An unencodable or oversized value is refused here (counted, warned); the lock, if
        // any, is released by its drop, waking waiters.
        let record = self.encode(ns.name(), &entry)?;
        let (token, ticket) = match lock {
            Some(mut held) => {
                held.disarm();
                (held.token.clone(), held.ticket.clone().unwrap_or_default())
            }
            None => (Vec::new(), Vec::new()),
        };
        let grace = ns.grace();
        let (ttl_ms, keep) = (ms(ttl), keep_ms(ttl.saturating_add(grace)));
        let grace_ms = grace.as_millis().min(u64::MAX as u128) as u64;
        let conn = &self.inner.conn;
        let (k2, t2, mut r2) = (keys.clone(), token.clone(), record.clone());
        let clock = self.inner.clock.clone();
        let written: i64 = scripted_or_plain(
            conn,
            || {
                conn.call(move |mut m| async move {
                    scripts::WRITE
                        .key(keys.value)
                        .key(keys.lock)
                        .key(keys.version)
                        .arg(token)
                        .arg(record)
                        .arg(ttl_ms)
                        .arg(keys.channel)
                        .arg(ticket)
                        .arg(keep)
                        .arg(grace_ms)
                        .invoke_async(&mut m)
                        .await
                })
            },
            || async move {
                // No script to stamp the expiry from the server's clock: the estimate does.
                let now = clock.server_now_ms(conn).await?;
                super::record::stamp(&mut r2, now.max(0) as u64 + ttl_ms);
                plain::write(conn, k2, t2, r2, ttl_ms.saturating_add(grace_ms), keep)
                    .await
                    .map(|()| 1)
            },
        )
        .await?;
        if written == 3 {
            // Written, but the server refused its announcement: tell the fleet another way.
            super::missed::refused(&self.inner.conn).await;
        }
        if written == 1 || written == 3 {
            if let Some(generation) = inserted {
                self.reach_lagging_processes(ns.name(), key, generation)
                    .await?;
            }
            Ok(Written::Stored)
        } else {
            self.inner
                .conn
                .stats
                .fenced_writes
                .fetch_add(1, Ordering::Relaxed);
            Ok(Written::Fenced)
        }
    }

    async fn lock_or_get(
        &self,
        ns: &Namespace,
        key: &K,
        lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> Result<LockOutcome<V, HeldLock>, StoreError> {
        let keys = self.entry_keys(ns.name(), key).await?;
        let lease = self.lease(lease);
        let mut ignore_value = false;
        loop {
            let (conn, k, max) = (
                self.inner.conn.clone(),
                keys.clone(),
                self.inner.max_value_bytes,
            );
            let clock = self.inner.clock.clone();
            // A task of its own: a lock taken for a caller that has gone is released at once.
            let outcome = acquiring(&self.inner.conn, async move {
                let token = token();
                let (v, l, n, t) = (
                    k.value.clone(),
                    k.lock.clone(),
                    k.version.clone(),
                    token.clone(),
                );
                let reply: Value = if conn.plain_commands() {
                    plain_lock_or_get(&conn, &clock, &k, token.clone(), lease, ignore_value, max)
                        .await?
                } else {
                    conn.call(move |mut m| async move {
                        scripts::LOCK_OR_GET
                            .key(v)
                            .key(l)
                            .key(n)
                            .arg(t)
                            .arg(ms(lease))
                            .arg(max)
                            .arg(if ignore_value { "1" } else { "0" })
                            .arg(keep_ms(max_hold))
                            .invoke_async(&mut m)
                            .await
                    })
                    .await?
                };
                let items = items(reply, "lock_or_get")?;
                Ok(match int(items.first()) {
                    Some(1) => RawOutcome::Found(
                        bytes(items.get(1)).unwrap_or_default(),
                        int(items.get(2)).unwrap_or(-1),
                    ),
                    Some(2) => {
                        // No ticket in plain-command mode: the write is not fenced.
                        let ticket = bytes(items.get(1));
                        RawOutcome::Acquired(HeldLock::new(conn, k, token, ticket, lease, max_hold))
                    }
                    Some(3) => RawOutcome::Busy,
                    _ => return Err(protocol("lock_or_get")),
                })
            })
            .await?;
            return Ok(match outcome {
                RawOutcome::Found(b, left) => match self.decode(&b, Remaining::Ms(left), now) {
                    Ok(Some(e)) => LockOutcome::Found(e),
                    // Of the previous format: recompute it under the lock, as for a miss.
                    Ok(None) => {
                        ignore_value = true;
                        continue;
                    }
                    // Not decodable (e.g. a value type changed in a rolling deploy): recompute
                    // it under the lock, so every process does not compute it at once.
                    Err(()) => {
                        ignore_value = true;
                        continue;
                    }
                },
                RawOutcome::Acquired(held) => LockOutcome::Acquired(held),
                RawOutcome::Busy => LockOutcome::Busy,
            });
        }
    }

    async fn try_lock_refresh(
        &self,
        ns: &Namespace,
        key: &K,
        seen: Seen,
        lease: Duration,
        max_hold: Duration,
        now: u64,
    ) -> Result<RefreshOutcome<HeldLock>, StoreError> {
        let keys = self.entry_keys(ns.name(), key).await?;
        let lease = self.lease(lease);
        // Replaced since the read? A record read from Redis names its write exactly (the
        // server-clock expiry the write stamped, `Entry::write_id`): compare that, no clock
        // involved. Only an entry of unknown origin is compared by remaining time: a replaced
        // value has a remaining life well above what the reader saw; 2 ms absorb the read's own
        // latency, and the clock's uncertainty what the reader's estimate of the server's time
        // may have taken off (see `clock`).
        let seen_stamp = (seen.write_id != 0).then_some(seen.write_id as i64);
        let seen_ms =
            seen.expires_at.saturating_sub(now) / 1_000_000 + 2 + self.inner.clock.uncertainty_ms();
        let conn = self.inner.conn.clone();
        let clock = self.inner.clock.clone();
        let held = acquiring(&self.inner.conn, async move {
            let token = token();
            let (v, l, n, t) = (
                keys.value.clone(),
                keys.lock.clone(),
                keys.version.clone(),
                token.clone(),
            );
            let reply: Value = if conn.plain_commands() {
                let unreplaced = match seen_stamp {
                    Some(stamp) => plain_stamp(&conn, keys.value.clone())
                        .await?
                        .is_none_or(|s| s == stamp),
                    None => {
                        plain_remaining(&conn, &clock, keys.value.clone()).await? <= seen_ms as i64
                    }
                };
                let taken = unreplaced
                    && plain::try_lock(&conn, keys.lock.clone(), token.clone(), ms(lease)).await?;
                Value::Array(vec![
                    Value::Int(taken as i64),
                    Value::BulkString(Vec::new()),
                ])
            } else {
                conn.call(move |mut m| async move {
                    scripts::TRY_LOCK_REFRESH
                        .key(v)
                        .key(l)
                        .key(n)
                        .arg(t)
                        .arg(ms(lease))
                        .arg(seen_ms)
                        .arg(keep_ms(max_hold))
                        .arg(seen_stamp.map_or(String::new(), |s| s.to_string()))
                        .invoke_async(&mut m)
                        .await
                })
                .await?
            };
            let items = items(reply, "try_lock_refresh")?;
            Ok(match (int(items.first()), bytes(items.get(1))) {
                (Some(1), Some(ticket)) => {
                    let ticket = (!ticket.is_empty()).then_some(ticket);
                    Some(HeldLock::new(conn, keys, token, ticket, lease, max_hold))
                }
                (Some(0), _) => None,
                _ => return Err(protocol("try_lock_refresh")),
            })
        })
        .await?;
        Ok(match held {
            Some(h) => RefreshOutcome::Acquired(h),
            None => RefreshOutcome::Skip,
        })
    }

    async fn write_ticket(&self, ns: &Namespace, key: &K) -> Result<Option<HeldLock>, StoreError> {
        let keys = self.entry_keys(ns.name(), key).await?;
        if self.inner.conn.plain_commands() {
            return Ok(None); // nothing to fence with
        }
        let (v, l, n) = (keys.value.clone(), keys.lock.clone(), keys.version.clone());
        let ticket: Vec<u8> = self
            .inner
            .conn
            .call(move |mut m| async move {
                // All three keys are declared (same slot), though only the version is touched.
                scripts::TICKET
                    .key(v)
                    .key(l)
                    .key(n)
                    .arg(keep_ms(Duration::from_secs(60)))
                    .invoke_async(&mut m)
                    .await
            })
            .await?;
        Ok(Some(HeldLock::ticket_only(
            self.inner.conn.clone(),
            keys,
            ticket,
        )))
    }

    async fn invalidate(&self, ns: &Namespace, key: &K) -> Result<(), StoreError> {
        let (keys, generation) = self.fresh_entry_keys(ns.name(), key).await?;
        invalidate_entry(&self.inner.conn, keys).await?;
        self.reach_lagging_processes(ns.name(), key, generation)
            .await
    }

    async fn invalidate_all(&self, ns: &Namespace) -> Result<(), StoreError> {
        // One INCR of the function's generation (see the `generation` module): no scan, and
        // the old entries, unreachable, expire by their TTL.
        self.inner
            .generations
            .bump(&self.inner.conn, &self.inner.space, ns.name())
            .await
            .map(|_| ())
    }

    async fn wait_for_value(
        &self,
        ns: &Namespace,
        key: &K,
        max: Duration,
        mode: WaitMode,
    ) -> Result<(), StoreError> {
        let keys = self.entry_keys(ns.name(), key).await?;
        self.inner
            .conn
            .wait_lock(&keys.channel, &keys.lock, max, mode)
            .await
    }
    // Batch loads (`Builder::build_batch`): one pipeline for all the keys (see `many`), or one
    // operation per key where a pipeline cannot be used.
    async fn get_many(
        &self,
        ns: &Namespace,
        keys: &[K],
        now: u64,
    ) -> Vec<Result<Option<Entry<V>>, StoreError>> {
        if let Some(out) = self.read_many(ns, keys, now).await {
            return out;
        }
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(ns, key, now).await);
        }
        out
    }

    async fn set_many(
        &self,
        ns: &Namespace,
        items: Vec<(K, Entry<V>, Option<HeldLock>)>,
        ttl: Duration,
    ) -> Vec<Result<Written, StoreError>> {
        let items = match self.write_many(ns.name(), items, ttl, ns.grace()).await {
            Ok(out) => return out,
            Err(items) => items,
        };
        let mut out = Vec::with_capacity(items.len());
        for (key, entry, lock) in items {
            out.push(self.set(ns, &key, entry, ttl, lock).await);
        }
        out
    }
}

/// What the lock-or-get script answered, before the record is decoded on the caller's side.
enum RawOutcome {
    Found(Vec<u8>, i64),
    Acquired(HeldLock),
    Busy,
}

/// Whether a read returns `e`: a live record, or one past its logical expiry while the function
/// has a grace (`stale_if_error`: the engine may serve it if its recomputation fails). Without a
/// grace, an expired record is a miss, as it is gone from Redis a moment later anyway.
pub(super) fn live_or_kept<V>(ns: &Namespace, e: &Entry<V>, now: u64) -> bool {
    e.expires_at > now || !ns.grace().is_zero()
}

/// The remaining logical life (ms) of the record at `value_key` by the plain read (-1 when
/// there is none of ours), as the scripts compute it.
async fn plain_remaining(
    conn: &std::sync::Arc<super::conn::Conn>,
    clock: &std::sync::Arc<super::clock::ServerClock>,
    value_key: Vec<u8>,
) -> Result<i64, StoreError> {
    let now = clock.server_now_ms(conn).await?;
    Ok(
        match plain::get(conn, value_key, super::record::HEADER).await? {
            plain::Got::Record(b) => super::record::expiry(&b).map_or(-1, |e| e - now),
            _ => -1,
        },
    )
}

/// The expiry stamp of the record at `value_key` (its write's identity), `None` when there is
/// none of this format.
async fn plain_stamp(
    conn: &std::sync::Arc<super::conn::Conn>,
    value_key: Vec<u8>,
) -> Result<Option<i64>, StoreError> {
    Ok(
        match plain::get(conn, value_key, super::record::HEADER).await? {
            plain::Got::Record(b) => super::record::expiry(&b),
            _ => None,
        },
    )
}

/// The plain-command form of LOCK_OR_GET, answering in the script's reply shape (two round
/// trips instead of one; no ticket).
async fn plain_lock_or_get(
    conn: &std::sync::Arc<super::conn::Conn>,
    clock: &std::sync::Arc<super::clock::ServerClock>,
    keys: &Keys,
    token: Vec<u8>,
    lease: Duration,
    ignore_value: bool,
    max: usize,
) -> Result<Value, StoreError> {
    if !ignore_value {
        let now = clock.server_now_ms(conn).await?;
        if let plain::Got::Record(b) = plain::get(conn, keys.value.clone(), max).await? {
            if let Some(left) = super::record::expiry(&b)
                .map(|e| e - now)
                .filter(|l| *l > 0)
            {
                return Ok(Value::Array(vec![
                    Value::Int(1),
                    Value::BulkString(b),
                    Value::Int(left),
                ]));
            }
        }
    }
    Ok(
        if plain::try_lock(conn, keys.lock.clone(), token, ms(lease)).await? {
            Value::Array(vec![Value::Int(2)])
        } else {
            Value::Array(vec![Value::Int(3)])
        },
    )
}

/// Drops an entry's value and lock and bumps its version (the `invalidate` of one key space).
async fn invalidate_entry(conn: &Arc<Conn>, keys: Keys) -> Result<(), StoreError> {
    let k2 = keys.clone();
    let Keys {
        value,
        lock,
        channel,
        version,
    } = keys;
    let done = scripted_or_plain(
        conn,
        || {
            conn.call(move |mut m| async move {
                scripts::INVALIDATE
                    .key(value)
                    .key(lock)
                    .key(version)
                    .arg(channel)
                    .arg(keep_ms(Duration::from_secs(60)))
                    .invoke_async::<i64>(&mut m)
                    .await
            })
        },
        || async move {
            plain::invalidate(conn, k2, keep_ms(Duration::from_secs(60)))
                .await
                .map(|()| 1)
        },
    )
    .await?;
    if done == 2 {
        // Invalidated, but the server refused its announcement: tell the fleet another way.
        super::missed::refused(conn).await;
    }
    Ok(())
}

impl RedisStore {
    /// After the server replaced a generation of `name` (an `invalidate_all`, a re-seed), other
    /// processes may still read the old one until they hear of it: one message delay, or up to
    /// `generation::LAGGING` when announcements are refused or lost. An `invalidate` or
    /// `insert` made meanwhile also invalidates the key in those generations, so that a process
    /// still there does not keep reading the old value after the call returned (issue 18: a
    /// writer whose ACL forbids channels). Costs one round trip, and one invalidation per
    /// generation replaced in the last `generation::LAGGING`.
    async fn reach_lagging_processes<K: Serialize + ?Sized>(
        &self,
        name: &str,
        key: &K,
        current: u64,
    ) -> Result<(), StoreError> {
        let (conn, space) = (&self.inner.conn, &self.inner.space);
        for g in self
            .inner
            .generations
            .recent(conn, space, name, current)
            .await?
        {
            invalidate_entry(conn, space.keys(name, g, key)?).await?;
        }
        Ok(())
    }
}
