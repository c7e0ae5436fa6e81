//! Batch reads and writes ([`Store::get_many`](crate::Store::get_many) /
//! [`Store::set_many`](crate::Store::set_many)) for [`RedisStore`]: the per-key reads (or
//! `WRITE` scripts) sent as one pipeline, so a `get_many` of 100 keys is one round trip instead
//! of 100. On a cluster the keys are grouped by slot (every key of one entry shares a hash tag,
//! so one entry's keys live in one slot) and the groups' pipelines are sent at once.
//!
//! Anything the pipeline cannot do (plain-command mode for writes, a `NOSCRIPT` after a server restart, a
//! failed request) makes the caller fall back to the one-key operations, which handle all of
//! it: a batch is never less available than the keys one by one.

use super::conn::Connection;
use super::keys::Keys;
use super::lock::HeldLock;
use super::record::Remaining;
use super::{scripts, RedisStore};
use crate::entry::Entry;
use crate::store::contract::{StoreError, StoreErrorKind, Written};
use redis::Value;
use serde::{de::DeserializeOwned, Serialize};
#[cfg(feature = "cluster")]
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One command of a pipeline, and the key that routes it.
struct Call {
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    slot_key: Vec<u8>,
    cmd: redis::Cmd,
}

fn evalsha(hash: &str, keys: Vec<Vec<u8>>, args: Vec<Vec<u8>>) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(hash).arg(keys.len());
    for k in &keys {
        cmd.arg(k);
    }
    for a in &args {
        cmd.arg(a);
    }
    cmd
}

/// Sends `calls` as one pipeline (one per slot on a cluster, all at once) in one store call;
/// the replies in `calls`' order, or the error that failed any of them.
async fn pipelined(
    conn: &std::sync::Arc<super::conn::Conn>,
    calls: Vec<Call>,
) -> Result<Vec<Value>, StoreError> {
    conn.call(move |m| async move {
        match m {
            Connection::Single(mut c) => {
                let mut pipe = redis::pipe();
                for call in &calls {
                    pipe.add_command(call.cmd.clone());
                }
                pipe.query_async::<Vec<Value>>(&mut c).await
            }
            #[cfg(feature = "cluster")]
            Connection::Cluster(routed) => {
                let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
                for (i, call) in calls.iter().enumerate() {
                    let slot = super::conn::cluster::slot_of(&call.slot_key);
                    groups.entry(slot).or_default().push(i);
                }
                let sends = groups.values().map(|idx| {
                    let mut pipe = redis::pipe();
                    for &i in idx {
                        pipe.add_command(calls[i].cmd.clone());
                    }
                    // The call's breaker decision and booking ride on its first group (see
                    // `cluster::Routed::admit`).
                    let mut con = super::conn::cluster::Routed {
                        con: routed.con.clone(),
                        breakers: routed.breakers.clone(),
                        touch: routed.touch.clone(),
                    };
                    async move { pipe.query_async::<Vec<Value>>(&mut con).await }
                });
                let replies = futures::future::join_all(sends).await;
                let mut out = vec![Value::Nil; calls.len()];
                for (idx, reply) in groups.values().zip(replies) {
                    for (&i, v) in idx.iter().zip(reply?) {
                        out[i] = v;
                    }
                }
                Ok(out)
            }
        }
    })
    .await
}

impl RedisStore {
    /// The batch read; `None` when the caller must fall back to one `get` per key.
    pub(super) async fn read_many<K, V>(
        &self,
        ns: &crate::store::contract::Namespace,
        keys: &[K],
        now: u64,
    ) -> Option<Vec<Result<Option<Entry<V>>, StoreError>>>
    where
        K: Serialize,
        V: DeserializeOwned,
    {
        let conn = &self.inner.conn;
        // Plain `GETRANGE`s, as `get` reads (see `plain::get`), in both modes.
        let mut calls = Vec::with_capacity(keys.len());
        for key in keys {
            let k = self.hit_key(ns.name(), key).await.ok()?;
            let cmd = super::plain::getrange(&k, self.inner.max_value_bytes);
            calls.push(Call { slot_key: k, cmd });
        }
        let server_now = self.inner.clock.server_now_ms(conn).await.ok()?;
        let replies = pipelined(conn, calls).await.ok()?;
        Some(
            replies
                .into_iter()
                .map(|r| match r {
                    Value::BulkString(b) if b.is_empty() => Ok(None),
                    Value::BulkString(b) => Ok(self
                        .decode(&b, Remaining::ServerNow(server_now), now)
                        .unwrap_or(None)
                        .filter(|e| super::store_impl::live_or_kept(ns, e, now))),
                    _ => Err(StoreError::new(
                        StoreErrorKind::Protocol,
                        "unexpected reply to GET",
                    )),
                })
                .collect(),
        )
    }

    /// The batch write. Items that cannot be sent (unencodable, oversized) are answered at
    /// once; the rest go in one pipeline. `Err(items)` hands the unsent items back for one
    /// `set` each (their locks still armed).
    #[allow(clippy::type_complexity)]
    pub(super) async fn write_many<K, V>(
        &self,
        name: &str,
        items: Vec<(K, Entry<V>, Option<HeldLock>)>,
        ttl: Duration,
        grace: Duration,
    ) -> Result<Vec<Result<Written, StoreError>>, Vec<(K, Entry<V>, Option<HeldLock>)>>
    where
        K: Serialize,
        V: Serialize,
    {
        let conn = &self.inner.conn;
        if conn.plain_commands() {
            return Err(items);
        }
        let (ttl_ms, keep) = (
            ttl.as_millis().clamp(1, u64::MAX as u128) as u64,
            ttl.saturating_add(grace)
                .saturating_mul(2)
                .saturating_add(Duration::from_secs(60))
                .as_millis()
                .clamp(1, u64::MAX as u128) as u64,
        );
        let grace_ms = grace.as_millis().min(u64::MAX as u128) as u64;
        let mut out: Vec<Option<Result<Written, StoreError>>> = Vec::with_capacity(items.len());
        let mut calls = Vec::new();
        let mut sent = Vec::new();
        let mut locks = Vec::new();
        for (key, entry, lock) in &items {
            let keys = match self.entry_keys(name, key).await {
                Ok(k) => k,
                Err(_) => return Err(items),
            };
            let record = match self.encode(name, entry) {
                Ok(r) => r,
                Err(e) => {
                    out.push(Some(Err(e)));
                    continue;
                }
            };
            let (token, ticket) = match lock {
                Some(held) => (held.token.clone(), held.ticket.clone().unwrap_or_default()),
                None => (Vec::new(), Vec::new()),
            };
            let Keys {
                value,
                lock: lock_key,
                channel,
                version,
            } = keys;
            let cmd = evalsha(
                scripts::WRITE.get_hash(),
                vec![value.clone(), lock_key, version],
                vec![
                    token,
                    record,
                    ttl_ms.to_string().into_bytes(),
                    channel,
                    ticket,
                    keep.to_string().into_bytes(),
                    grace_ms.to_string().into_bytes(),
                ],
            );
            calls.push(Call {
                slot_key: value,
                cmd,
            });
            sent.push(out.len());
            out.push(None);
        }
        let replies = match pipelined(conn, calls).await {
            Ok(r) => r,
            Err(_) => return Err(items),
        };
        // Sent: the script released each lock (its drop must not release it again); a lock of
        // an item that was not sent is released by its drop, waking waiters.
        let mut was_sent = vec![false; items.len()];
        for &i in &sent {
            was_sent[i] = true;
        }
        for ((_, _, lock), sent) in items.into_iter().zip(was_sent) {
            if let Some(mut held) = lock {
                if sent {
                    held.disarm();
                }
                locks.push(held);
            }
        }
        drop(locks);
        for (i, reply) in sent.into_iter().zip(replies) {
            out[i] = Some(match reply {
                Value::Int(1) => Ok(Written::Stored),
                Value::Int(_) => {
                    conn.stats.fenced_writes.fetch_add(1, Ordering::Relaxed);
                    Ok(Written::Fenced)
                }
                _ => Err(StoreError::new(
                    StoreErrorKind::Protocol,
                    "unexpected reply to write",
                )),
            });
        }
        Ok(out.into_iter().map(|o| o.expect("answered")).collect())
    }
}
