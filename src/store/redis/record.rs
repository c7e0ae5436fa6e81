//! The record format in Redis and the checks on both sides of the wire.
//!
//! A record is `MAGIC` + MessagePack `(delta_us, value)`. Writes over `max_value_bytes` are
//! refused before they are sent (they could never be read back); reads check the size in Lua
//! before the bytes cross the wire. Bytes read back are untrusted: anything but a well-formed
//! record of ours is a miss, counted, never a panic.

use super::RedisStore;
use crate::entry::Entry;
use crate::store::contract::{StoreError, StoreErrorKind};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Magic bytes and version that open every record herdless writes.
pub(super) const MAGIC: [u8; 3] = *b"HL\x01";

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
        let mut out = MAGIC.to_vec();
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
    /// `None` with no count for a record read in its last millisecond (`pttl` 0) or gone
    /// meanwhile (-2); `Err(())` for a record that is not ours (counted, warned).
    pub(super) fn decode<V: DeserializeOwned>(
        &self,
        bytes: &[u8],
        pttl: i64,
        now: u64,
    ) -> Result<Option<Entry<V>>, ()> {
        if pttl == 0 || pttl == -2 {
            // Read in its last millisecond (or gone between GET and PTTL): a plain miss, not
            // a foreign record. (-1, no TTL at all, is not ours: herdless always sets one.)
            return Ok(None);
        }
        let ok = bytes.len() <= self.inner.max_value_bytes && bytes.starts_with(&MAGIC) && pttl > 0;
        let parsed = ok
            .then(|| rmp_serde::from_slice::<(u64, V)>(&bytes[MAGIC.len()..]).ok())
            .flatten();
        match parsed {
            Some((delta_us, value)) => Ok(Some(Entry {
                value,
                delta_us,
                expires_at: now.saturating_add((pttl as u64).saturating_mul(1_000_000)),
            })),
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
