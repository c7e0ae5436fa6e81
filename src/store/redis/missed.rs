//! Announcements that cannot be lost silently (issue 18, finding 4).
//!
//! Every write, invalidation and new generation is announced with `PUBLISH` so that other
//! processes drop their near copies and re-read the generation. A writer whose ACL forbids
//! channels (or one in plain-command mode whose `PUBLISH` fails) would otherwise change the
//! data without a message, and the fleet's near tiers would serve the old value until its TTL.
//!
//! So a refused announcement is detected (scripts return whether their `PUBLISH` was accepted;
//! plain commands see the error), counted in `RedisStats::publish_refused`, warned about once,
//! and replaced by an `INCR` of the fleet's marker key `<prefix>:{missed}:n` *before the write's
//! call returns*. Every store that serves near tiers or caches generations polls that key every
//! [`POLL`], or every half of its near tiers' smallest `max_stale` if that is shorter; when it
//! changes, the store marks its generation copies stale and its near tiers drop what they hold.
//! A near hit is then no older than `max_stale` (plus the checker's 200 ms allowance for
//! scheduling) behind a write whose announcement was refused: what
//! `coherence::coherent_with_a_writer_whose_acl_forbids_channels` checks, with
//! `coherence_faults::a_writer_refused_channels_still_reaches_other_near_tiers`. The cost is one `GET` per period per process (2 per second at the default
//! `max_stale` of 1 s). A write whose marker `INCR` fails too (the server went away just
//! then) is counted in `RedisStats::announcements_lost`; the other processes' subscriptions see
//! the same outage and resync when it ends.

use super::conn::{Conn, Stats};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a store reads the marker at most (more often when its near tiers have a
/// `max_stale` under 2 s: every half of the smallest).
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// The marker's key and this store's poller.
pub(crate) struct Missed {
    key: Vec<u8>,
    polling: AtomicBool,
    warned: AtomicBool,
}

impl Missed {
    pub(crate) fn new(key: Vec<u8>) -> Self {
        Missed {
            key,
            polling: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        }
    }
}

/// Whether a `PUBLISH` reply (inside or outside a script) means the server refused it.
pub(crate) fn is_refusal(e: &redis::RedisError) -> bool {
    e.code() == Some("NOPERM") || e.to_string().contains("NOPERM")
}

/// An announcement was refused: count it, warn once, and raise the fleet's marker.
pub(crate) async fn refused(conn: &Arc<Conn>) {
    Stats::inc(&conn.stats.publish_refused);
    if !conn.missed.warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "redis refused PUBLISH (NOPERM): other processes' near tiers cannot be told about \
             this store's writes and invalidations by message; herdless raises the shared marker \
             key instead, and every near tier of the prefix drops its copies within about a \
             second (one poll). Grant the user the channel permission (`&<prefix>:*`) and \
             +publish to restore per-key announcements"
        );
    }
    let key = conn.missed.key.clone();
    let raised =
        conn.call(move |mut m| async move {
            redis::cmd("INCR").arg(key).query_async::<i64>(&mut m).await
        })
        .await;
    if raised.is_err() {
        Stats::inc(&conn.stats.announcements_lost);
    }
}

/// Publishes `what` on `channel` outside a script; a refusal raises the marker. Other errors
/// (the server went away) are the subscription's business: every subscriber resyncs then.
pub(crate) async fn publish(conn: &Arc<Conn>, channel: Vec<u8>, what: &'static str) {
    let out = conn
        .call(move |mut m| async move {
            match redis::cmd("PUBLISH")
                .arg(channel)
                .arg(what)
                .query_async::<i64>(&mut m)
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if is_refusal(&e) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await;
    if matches!(out, Ok(false)) {
        refused(conn).await;
    }
}

/// Starts the marker's poller (once per store).
pub(crate) fn watch(conn: &Arc<Conn>) {
    if conn.missed.polling.swap(true, Ordering::AcqRel) {
        return;
    }
    conn.handle.spawn(poll(Arc::downgrade(conn)));
}

async fn poll(conn: Weak<Conn>) {
    let mut seen: Option<Option<i64>> = None;
    loop {
        let Some(c) = conn.upgrade() else { return };
        let key = c.missed.key.clone();
        let now: Result<Option<i64>, _> = c
            .call(move |mut m| async move {
                // Untrusted bytes: anything that is not a number reads as a change of value.
                let v: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut m).await?;
                Ok(v.map(|b| {
                    std::str::from_utf8(&b)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(-1)
                }))
            })
            .await;
        if let Ok(now) = now {
            match seen {
                Some(s) if s != now => {
                    Stats::inc(&c.stats.announcements_missed);
                    c.wakeups.missed();
                }
                Some(_) => {}
                // A refusal between the first use and this first read cannot be told apart
                // from an old one: drop once (the tiers have barely started filling).
                None => c.wakeups.missed(),
            }
            seen = Some(now);
        }
        // Near tiers ask for heartbeats every quarter of their `max_stale`; the marker is
        // polled every half of it (at most every POLL), so a refused writer's change reaches
        // them within `max_stale` too.
        let period = (c.wakeups.beat_period() * 2).min(POLL);
        drop(c);
        tokio::time::sleep(period).await;
    }
}
