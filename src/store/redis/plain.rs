//! The plain-command mode, for a user the server refuses scripting (an ACL without `EVAL` /
//! `EVALSHA`): the store still caches (the same one-`GET` read as the scripted mode) and still locks
//! (`SET NX PX`, renewed and released only after checking the owner token), so hits and
//! single-flight survive. What is lost is only what needs atomic server-side checks: this mode's
//! own writes are not fenced by versions (a holder whose lock lapsed may overwrite a newer value,
//! and its computation running across an invalidation may store its result), the owner check before a
//! release or renewal is a separate command from it (a lapse in between may touch a newer
//! holder's lock), and oversized records are refused after transfer rather than before.
//!
//! Its writes and invalidations still *bump* the entry's version, before they touch the value,
//! so that processes that do run scripts keep their fence: a computation of theirs that started
//! before this process's `invalidate` or `insert` cannot store its older result afterwards.

use super::conn::Conn;
use super::keys::Keys;
use crate::store::contract::StoreError;
use std::sync::Arc;

/// What a `GET` of a value key found.
pub(super) enum Got {
    Record(Vec<u8>),
    Missing,
    /// A key of another Redis type (counted by the caller as a foreign record).
    WrongType,
}

/// The read of every mode, the hit path: one plain command (the record carries its expiry, see
/// `record`), awaited on the caller's task when it runs on Tokio (see `conn::direct`). It is
/// `GETRANGE key 0 max` rather than `GET`, as cheap for the server, so that a record over
/// `max_value_bytes` sends at most one byte more than the limit (enough to know it is over)
/// instead of crossing the wire whole. A missing key and an empty string both read as missing.
/// A key of another type answers `WRONGTYPE`: a foreign record here, not a failure the breaker
/// would count.
pub(super) async fn get(
    conn: &Arc<Conn>,
    value_key: Vec<u8>,
    max: usize,
) -> Result<Got, StoreError> {
    conn.call_direct(move |mut m| async move {
        match getrange(&value_key, max)
            .query_async::<Vec<u8>>(&mut m)
            .await
        {
            Ok(b) if b.is_empty() => Ok(Got::Missing),
            Ok(b) => Ok(Got::Record(b)),
            Err(e) if e.code() == Some("WRONGTYPE") => Ok(Got::WrongType),
            Err(e) => Err(e),
        }
    })
    .await
}

/// `GETRANGE key 0 max`, the read of [`get`] (alone or in a pipeline). Sized up front: growing
/// the command's buffers arg by arg cost three reallocations a hit.
pub(super) fn getrange(key: &[u8], max: usize) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(4, key.len() + 30);
    cmd.arg("GETRANGE").arg(key).arg(0).arg(max);
    cmd
}

impl Got {
    /// A [`getrange`] reply met inside a pipeline (where a server error is a value), read as
    /// [`get`] reads its own; `Err` for any other server error or reply.
    pub(super) fn from_reply(conn: &Conn, v: redis::Value) -> Result<Got, StoreError> {
        match v {
            redis::Value::BulkString(b) if b.is_empty() => Ok(Got::Missing),
            redis::Value::BulkString(b) => Ok(Got::Record(b)),
            redis::Value::Nil => Ok(Got::Missing),
            redis::Value::ServerError(e) if e.code() == "WRONGTYPE" => Ok(Got::WrongType),
            redis::Value::ServerError(e) => Err(conn.error(&redis::RedisError::from(e))),
            other => Err(StoreError::new(
                crate::store::contract::StoreErrorKind::Protocol,
                format!("GETRANGE answered {other:?}"),
            )),
        }
    }
}

/// `SET lock token NX PX lease`: true if taken.
pub(super) async fn try_lock(
    conn: &Arc<Conn>,
    lock_key: Vec<u8>,
    token: Vec<u8>,
    lease_ms: u64,
) -> Result<bool, StoreError> {
    let set: Option<String> = conn
        .call(move |mut m| async move {
            redis::cmd("SET")
                .arg(lock_key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms)
                .query_async(&mut m)
                .await
        })
        .await?;
    Ok(set.is_some())
}

/// Whether `token` still owns `lock_key` (then the caller renews or releases it).
async fn owns(conn: &Arc<Conn>, lock_key: Vec<u8>, token: Vec<u8>) -> Result<bool, StoreError> {
    let holder: Option<Vec<u8>> = conn
        .call(move |mut m| async move { redis::cmd("GET").arg(lock_key).query_async(&mut m).await })
        .await?;
    Ok(holder.as_deref() == Some(token.as_slice()))
}

/// Extends the lease if still the owner: 1 renewed, 0 lost.
pub(super) async fn renew(
    conn: &Arc<Conn>,
    lock_key: Vec<u8>,
    token: Vec<u8>,
    lease_ms: u64,
) -> Result<i64, StoreError> {
    if !owns(conn, lock_key.clone(), token).await? {
        return Ok(0);
    }
    conn.call(move |mut m| async move {
        redis::cmd("PEXPIRE")
            .arg(lock_key)
            .arg(lease_ms)
            .query_async(&mut m)
            .await
    })
    .await
}

/// Releases the lock if still the owner, then wakes waiters (`what`: '0' released, '1' written,
/// '2' invalidated). A refused `PUBLISH` of a write or an invalidation raises the fleet's
/// "announcements missed" marker (see `missed`); one of a bare release only wakes waiters, who
/// poll anyway.
pub(super) async fn release(
    conn: &Arc<Conn>,
    lock_key: Vec<u8>,
    token: Vec<u8>,
    channel: Vec<u8>,
    what: &'static str,
) -> Result<(), StoreError> {
    if !token.is_empty() && owns(conn, lock_key.clone(), token).await? {
        conn.call(move |mut m| async move {
            redis::cmd("DEL")
                .arg(lock_key)
                .query_async::<i64>(&mut m)
                .await
        })
        .await?;
    }
    publish(conn, channel, what).await;
    Ok(())
}

async fn publish(conn: &Arc<Conn>, channel: Vec<u8>, what: &'static str) {
    if what != "0" {
        return super::missed::publish(conn, channel, what).await;
    }
    let _ = conn
        .call(move |mut m| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(what)
                .query_async::<i64>(&mut m)
                .await
        })
        .await;
}

/// Bumps the entry's version as the scripts do: a missing counter is first seeded from the
/// server's clock in µs (so it never comes back at a value an old ticket holds), then `INCR`.
/// Two round trips (`TIME`, then one pipeline); the bump lands before the caller touches the
/// value, so a fenced writer elsewhere that reads the old counter after it is refused.
async fn bump_version(
    conn: &Arc<Conn>,
    version_key: Vec<u8>,
    keep_ms: u64,
) -> Result<(), StoreError> {
    let (secs, micros): (u64, u64) = conn
        .call(|mut m| async move { redis::cmd("TIME").query_async(&mut m).await })
        .await?;
    let seed = secs.saturating_mul(1_000_000).saturating_add(micros);
    conn.call(move |mut m| async move {
        redis::pipe()
            .cmd("SET")
            .arg(&version_key)
            .arg(seed)
            .arg("NX")
            .arg("PX")
            .arg(keep_ms)
            .ignore()
            .cmd("INCR")
            .arg(&version_key)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&version_key)
            .arg(keep_ms)
            .ignore()
            .query_async::<()>(&mut m)
            .await
    })
    .await
}

/// Bumps the version, writes the record (unfenced), then releases the writer's lock and wakes
/// waiters. `keep_ms`: how long the version key is kept.
pub(super) async fn write(
    conn: &Arc<Conn>,
    keys: Keys,
    token: Vec<u8>,
    record: Vec<u8>,
    ttl_ms: u64,
    keep_ms: u64,
) -> Result<(), StoreError> {
    bump_version(conn, keys.version.clone(), keep_ms).await?;
    let v = keys.value.clone();
    conn.call(move |mut m| async move {
        redis::cmd("SET")
            .arg(v)
            .arg(record)
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<()>(&mut m)
            .await
    })
    .await?;
    release(conn, keys.lock, token, keys.channel, "1").await
}

/// Bumps the version, drops the value and the lock, then wakes waiters.
pub(super) async fn invalidate(
    conn: &Arc<Conn>,
    keys: Keys,
    keep_ms: u64,
) -> Result<(), StoreError> {
    bump_version(conn, keys.version.clone(), keep_ms).await?;
    let (v, l) = (keys.value.clone(), keys.lock.clone());
    conn.call(move |mut m| async move {
        redis::cmd("DEL")
            .arg(v)
            .arg(l)
            .query_async::<i64>(&mut m)
            .await
    })
    .await?;
    publish(conn, keys.channel, "2").await;
    Ok(())
}
