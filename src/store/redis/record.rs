//! The record format in Redis and the checks on both sides of the wire.
//!
//! A record is `MAGIC` + its logical expiry (16 ASCII digits: ms since the epoch in the
//! *server's* clock, stamped by the write from `TIME`) + MessagePack `(delta_us, value)`: all a
//! hit needs, so a hit is one plain `GET` (the remaining TTL comes from the server-clock offset,
//! see `clock`). The key itself lives `ttl + grace` (`stale_if_error`): past its logical expiry
//! it is still read, as an expired entry the engine may serve if its recomputation fails.
//!
//! Writes over `max_value_bytes` are refused before they are sent (they could never be read
//! back). Bytes read back are untrusted: anything but a well-formed record of ours is a miss,
//! counted, never a panic. A record of the previous format (`HL\x01`, no expiry inside) is a
//! plain miss, recomputed and replaced under the lock.

use super::RedisStore;
use crate::entry::Entry;
use crate::store::contract::{StoreError, StoreErrorKind};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Magic bytes and format version that open every record herdless writes.
pub(super) const MAGIC: [u8; 3] = *b"HL\x02";
/// The previous format (`MAGIC` + MessagePack, the TTL only in the key's `PTTL`).
const MAGIC_V1: [u8; 3] = *b"HL\x01";
/// Digits of the expiry after `MAGIC` (ms since the epoch; 16 digits last past the year 2286).
pub(super) const EXPIRY_DIGITS: usize = 16;
/// Bytes before the MessagePack body.
pub(super) const HEADER: usize = MAGIC.len() + EXPIRY_DIGITS;

/// Writes `expiry_ms` (server clock) into a record's header (the write scripts do the same
/// server-side from `TIME`; this is for the plain-command mode).
pub(super) fn stamp(record: &mut [u8], expiry_ms: u64) {
    let digits = format!(
        "{:0width$}",
        expiry_ms.min(9_999_999_999_999_999),
        width = EXPIRY_DIGITS
    );
    record[MAGIC.len()..HEADER].copy_from_slice(&digits.as_bytes()[..EXPIRY_DIGITS]);
}

/// The logical expiry (server ms) in a record's header, if it is a record of this format.
pub(super) fn expiry(record: &[u8]) -> Option<i64> {
    if record.len() <= HEADER || !record.starts_with(&MAGIC) {
        return None;
    }
    // Sixteen ASCII digits, parsed by hand: `from_utf8` + `parse` cost a hit ~400
    // instructions (issue 23's profile). 16 digits fit an i64 without overflow.
    record[MAGIC.len()..HEADER].iter().try_fold(0i64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
    })
}

/// How a read learns a record's remaining logical life.
#[derive(Clone, Copy)]
pub(super) enum Remaining {
    /// From the record's expiry and the server's time now (ms since the epoch, estimated).
    ServerNow(i64),
    /// As a script computed it on the server (ms; may be negative within the grace).
    Ms(i64),
}

/// A warning that is logged at most once per interval (per kind and store), so a hot key whose
/// value cannot be stored does not flood the log, while the counter still counts every case.
#[derive(Debug)]
pub(super) struct RateLimited {
    origin: Instant,
    /// Milliseconds since `origin` of the last warning, plus one (0 = never).
    last: AtomicU64,
}

impl RateLimited {
    const EVERY: Duration = Duration::from_secs(10);

    pub(super) fn new() -> Self {
        RateLimited {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// True if the caller should log now.
    pub(super) fn due(&self) -> bool {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= Self::EVERY.as_millis() as u64)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Per-store warning limiters.
#[derive(Debug)]
pub(super) struct Warnings {
    pub(super) encode: RateLimited,
    pub(super) oversized: RateLimited,
    pub(super) decode: RateLimited,
}

impl Warnings {
    pub(super) fn new() -> Self {
        Warnings {
            encode: RateLimited::new(),
            oversized: RateLimited::new(),
            decode: RateLimited::new(),
        }
    }
}

impl RedisStore {
    /// Encodes a record, refusing one that cannot be serialized or that is larger than this
    /// store will read back (each counted, and warned about at most every 10 s per store).
    pub(super) fn encode<V: Serialize>(
        &self,
        name: &str,
        entry: &Entry<V>,
    ) -> Result<Vec<u8>, StoreError> {
        // The expiry digits are a placeholder until the write stamps them.
        let mut out = Vec::with_capacity(HEADER + 64);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[b'0'; EXPIRY_DIGITS]);
        let stats = &self.inner.conn.stats;
        if let Err(e) = rmp_serde::encode::write(&mut out, &(entry.delta_us, &entry.value)) {
            stats.encode_errors.fetch_add(1, Ordering::Relaxed);
            if self.inner.warnings.encode.due() {
                tracing::warn!(
                    function = name,
                    error = %e,
                    "value cannot be serialized (MessagePack); it is returned but never cached"
                );
            }
            return Err(StoreError::new(
                StoreErrorKind::Encode,
                format!("the value of `{name}` cannot be serialized: {e}"),
            ));
        }
        if out.len() > self.inner.max_value_bytes {
            stats.oversized_writes.fetch_add(1, Ordering::Relaxed);
            if self.inner.warnings.oversized.due() {
                tracing::warn!(
                    function = name,
                    bytes = out.len(),
                    max_value_bytes = self.inner.max_value_bytes,
                    "value larger than max_value_bytes; it is returned but never cached"
                );
            }
            return Err(StoreError::new(
                StoreErrorKind::TooLarge,
                format!(
                    "a value of `{name}` is {} bytes, over max_value_bytes ({})",
                    out.len(),
                    self.inner.max_value_bytes
                ),
            ));
        }
        Ok(out)
    }

    /// Bytes from Redis are untrusted: anything but a well-formed record of ours is a miss.
    /// `Ok(None)` with no count for a record of the previous format; `Err(())` for a record
    /// that is not ours (counted, warned). A record past its logical expiry (kept for
    /// `stale_if_error`) is returned with `expires_at <= now`: the engine decides.
    pub(super) fn decode<V: DeserializeOwned>(
        &self,
        bytes: &[u8],
        remaining: Remaining,
        now: u64,
    ) -> Result<Option<Entry<V>>, ()> {
        if bytes.starts_with(&MAGIC_V1) && bytes.len() <= self.inner.max_value_bytes {
            // Written by the previous version: no expiry inside. A miss; the hard miss that
            // follows recomputes it under the lock and replaces it.
            return Ok(None);
        }
        let parsed = (bytes.len() <= self.inner.max_value_bytes
            && bytes.len() > HEADER
            && bytes.starts_with(&MAGIC))
        .then(|| {
            let expiry = expiry(bytes)?;
            let (delta_us, value) = rmp_serde::from_slice::<(u64, V)>(&bytes[HEADER..]).ok()?;
            Some((expiry, delta_us, value))
        })
        .flatten();
        match parsed {
            Some((expiry, delta_us, value)) => {
                let left = match remaining {
                    Remaining::ServerNow(t) => expiry - t,
                    Remaining::Ms(ms) => ms,
                };
                let nanos = left.unsigned_abs().saturating_mul(1_000_000);
                let expires_at = if left > 0 {
                    now.saturating_add(nanos)
                } else {
                    now.saturating_sub(nanos)
                };
                Ok(Some(Entry {
                    value,
                    delta_us,
                    expires_at,
                    // The server-clock expiry the write stamped (ms): every write stamps its
                    // own, so it tells writes apart (two writes of one key would need the same
                    // millisecond and TTL to collide; the lock serializes locked writers).
                    write_id: expiry as u64,
                }))
            }
            None => {
                self.undecodable(bytes.len());
                Err(())
            }
        }
    }

    /// Counts (and warns, rate-limited) a record that is not ours.
    pub(super) fn undecodable(&self, len: usize) {
        self.inner
            .conn
            .stats
            .decode_errors
            .fetch_add(1, Ordering::Relaxed);
        if self.inner.warnings.decode.due() {
            tracing::warn!(
                len,
                "undecodable, oversized or foreign record in redis; treating as a miss \
                 (after a change of value type, the record is recomputed under the lock)"
            );
        }
    }
}
