//! The server's clock as this process sees it, so that a hit is one plain `GET`.
//!
//! A record carries its logical expiry in the server's clock (milliseconds since the epoch,
//! stamped by the write script from `TIME`; see `record`). A reader needs the server's time
//! now to turn that into a remaining TTL: it keeps the offset between the server's clock and
//! its own monotonic clock, measured with `TIME` (the sample with the shortest round trip of a
//! few) and refreshed in the background every [`REFRESH`]. The server read its clock somewhere
//! within that round trip; the estimate assumes the earliest moment, so it is never behind the
//! server's clock and at most one round trip ahead. The remaining TTL `expiry − (now + offset)`
//! is then skew-free, never over-estimated (a live record never looks longer-lived than its
//! TTL) and under-estimated by at most the sample's round trip ([`ServerClock::uncertainty_ms`]).
//!
//! A cluster store keeps one offset, measured against whichever node answers `TIME`: the
//! nodes' clocks are assumed to agree (NTP); their disagreement adds to the error.

use super::conn::Conn;
use crate::store::contract::StoreError;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the offset is measured again (a server clock stepped by NTP is followed within
/// this).
pub(super) const REFRESH: Duration = Duration::from_secs(10);
/// Samples per measurement; the one with the shortest round trip wins.
const SAMPLES: usize = 3;

pub(super) struct ServerClock {
    origin: Instant,
    /// Server time (µs since the epoch) minus local µs since `origin`.
    offset_us: AtomicI64,
    /// Local µs since `origin` of the last measurement, plus one (0: never measured).
    measured: AtomicU64,
    /// Round trip (µs) of the sample the offset came from: the estimate's error bound.
    rtt_us: AtomicU64,
    refreshing: Arc<AtomicBool>,
}

impl ServerClock {
    pub(super) fn new() -> Self {
        ServerClock {
            origin: Instant::now(),
            offset_us: AtomicI64::new(0),
            measured: AtomicU64::new(0),
            rtt_us: AtomicU64::new(0),
            refreshing: Arc::new(AtomicBool::new(false)),
        }
    }

    fn local_us(&self) -> i64 {
        self.origin.elapsed().as_micros() as i64
    }

    /// The server's time now in ms since the epoch, if measured at least once.
    pub(super) fn now_ms(&self) -> Option<i64> {
        self.now_ms_at(self.local_us())
    }

    /// [`ServerClock::now_ms`] at local time `local_us` (µs since `origin`).
    fn now_ms_at(&self, local_us: i64) -> Option<i64> {
        if self.measured.load(Ordering::Acquire) == 0 {
            return None;
        }
        Some((local_us + self.offset_us.load(Ordering::Relaxed)).div_euclid(1000))
    }

    /// How far ahead of the server's clock the estimate may be (ms, rounded up).
    pub(super) fn uncertainty_ms(&self) -> u64 {
        self.rtt_us.load(Ordering::Relaxed).div_ceil(1000)
    }

    /// True when the last measurement is older than [`REFRESH`].
    fn stale(&self, local_us: i64) -> bool {
        let m = self.measured.load(Ordering::Relaxed);
        m == 0 || (local_us as u64 + 1).saturating_sub(m) > REFRESH.as_micros() as u64
    }

    /// The server's time now: measured first when never measured (one round trip), else the
    /// estimate, with a background refresh started when it is due.
    pub(super) async fn server_now_ms(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
    ) -> Result<i64, StoreError> {
        // One clock read for both the estimate and the staleness check (a hit's path).
        let local_us = self.local_us();
        match self.now_ms_at(local_us) {
            Some(t) => {
                if self.stale(local_us) && !self.refreshing.swap(true, Ordering::AcqRel) {
                    let (this, conn2) = (self.clone(), conn.clone());
                    conn.handle.spawn(async move {
                        let _ = this.measure(&conn2).await;
                        this.refreshing.store(false, Ordering::Release);
                    });
                }
                Ok(t)
            }
            None => {
                // Boxed: once per store, and its state would otherwise grow every hit's future.
                Box::pin(self.measure(conn)).await?;
                Ok(self.now_ms().expect("just measured"))
            }
        }
    }

    /// Measures the offset: [`SAMPLES`] `TIME`s, keeping the one with the shortest round trip.
    async fn measure(&self, conn: &Arc<Conn>) -> Result<(), StoreError> {
        let mut best: Option<(i64, i64)> = None; // (round trip µs, offset µs)
        let mut last_err = None;
        for _ in 0..SAMPLES {
            let sent = self.local_us();
            let out: Result<(i64, i64), StoreError> = conn
                .call(|mut m| async move { redis::cmd("TIME").query_async(&mut m).await })
                .await;
            let back = self.local_us();
            match out {
                Ok((secs, micros)) => {
                    let server = secs.saturating_mul(1_000_000).saturating_add(micros);
                    let rtt = back - sent;
                    // The server read its clock after `sent`: never behind (see the module).
                    let offset = server - sent;
                    if best.is_none_or(|(r, _)| rtt < r) {
                        best = Some((rtt, offset));
                    }
                }
                Err(e) => last_err = Some(e),
            }
        }
        match (best, last_err) {
            (Some((rtt, offset)), _) => {
                self.offset_us.store(offset, Ordering::Relaxed);
                self.rtt_us.store(rtt.max(0) as u64, Ordering::Relaxed);
                self.measured
                    .store(self.local_us() as u64 + 1, Ordering::Release);
                Ok(())
            }
            (None, Some(e)) => Err(e),
            (None, None) => unreachable!("SAMPLES > 0"),
        }
    }
}
