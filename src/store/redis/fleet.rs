//! How many processes share this store: the fleet size that automatic β multiplies its locally
//! measured rate by.
//!
//! Why: every process meters only the calls it serves itself, but XFetch's first trigger comes
//! from the *whole fleet's* calls (each process draws on its own hits, and the first draw that
//! fires anywhere takes the fleet-wide lock). With N processes each seeing rate r, the fleet's
//! rate is about N·r, and a β solved for r alone sets the lead δβ·ln N too long. Assuming the
//! load balancer spreads calls about evenly (what load balancers are for), N × the local rate is
//! the fleet rate. Where it is not (sharded routing, other services idle on the prefix), N × r
//! overstates the key's rate and β would come out too small, refreshing late; so automatic β
//! never goes below the β that keeps this process's *own* late refreshes under
//! `LATE_REFRESH_BOUND` (5 % of cycles) from its local rate alone (`auto::RateMeters::beta`,
//! issue 21 item 5): the estimate's error is bounded on the early side.
//!
//! Each store announces itself in one sorted set per prefix (`<prefix>:{fleet}:z`, scored with
//! the server's clock, so hosts' clocks never meet) every [`EVERY`], drops members silent for
//! three periods and reads the count. Started on first use (only automatic β on a shared store
//! asks), it costs two round trips per [`EVERY`] per process.

use super::conn::Conn;
use super::keys::{token, KeySpace};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a store renews its membership.
pub(crate) const EVERY: Duration = Duration::from_secs(5);

pub(crate) struct Fleet {
    size: AtomicU64,
    started: AtomicBool,
}

impl Fleet {
    pub(crate) fn new() -> Self {
        Fleet {
            size: AtomicU64::new(1f64.to_bits()),
            started: AtomicBool::new(false),
        }
    }

    /// The latest estimate (1 until the first count), starting the heartbeat on first use.
    pub(crate) fn size(self: &Arc<Self>, conn: &Arc<Conn>, space: &KeySpace) -> f64 {
        if !self.started.swap(true, Ordering::AcqRel) {
            let (me, conn) = (Arc::downgrade(self), Arc::downgrade(conn));
            let key = space.fleet_key();
            if let Some(c) = conn.upgrade() {
                c.handle.spawn(heartbeat(me, conn, key));
            }
        }
        f64::from_bits(self.size.load(Ordering::Relaxed))
    }
}

async fn heartbeat(me: Weak<Fleet>, conn: Weak<Conn>, key: Vec<u8>) {
    let member = token();
    let window_ms = 3 * EVERY.as_millis() as u64;
    loop {
        let (Some(fleet), Some(conn)) = (me.upgrade(), conn.upgrade()) else {
            return;
        };
        let (k, m) = (key.clone(), member.clone());
        let counted: Result<u64, _> = conn
            .call(move |mut c| async move {
                let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await?;
                let now_ms = secs * 1000 + micros / 1000;
                let (n,): (u64,) = redis::pipe()
                    .cmd("ZADD")
                    .arg(&k)
                    .arg(now_ms)
                    .arg(&m)
                    .ignore()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&k)
                    .arg(0)
                    .arg(now_ms.saturating_sub(window_ms))
                    .ignore()
                    .cmd("ZCARD")
                    .arg(&k)
                    .cmd("PEXPIRE")
                    .arg(&k)
                    .arg(window_ms)
                    .ignore()
                    .query_async(&mut c)
                    .await?;
                Ok(n)
            })
            .await;
        if let Ok(n) = counted {
            fleet
                .size
                .store((n.max(1) as f64).to_bits(), Ordering::Relaxed);
        }
        drop((fleet, conn));
        tokio::time::sleep(EVERY).await;
    }
}
