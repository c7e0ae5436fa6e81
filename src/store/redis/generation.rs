//! Per-function generations: what makes `invalidate_all` one command instead of a scan.
//!
//! Every entry key of a function carries the function's current generation
//! (`{<hex(name)>.<generation>.<hex(key)>}`). `invalidate_all` increments the generation
//! (`INCR <prefix>:{<hex(name)>}:g`) and announces it on the function's channel; from then on
//! every process reads and writes under the new generation, and the old entries, unreachable,
//! expire by their TTL. Nothing scans the keyspace, and a computation that was running under the
//! old generation writes where nobody reads.
//!
//! Each process caches the generation per function. The first operation of a function reads it
//! (one extra round trip per function and process), and so does the first operation after an
//! announcement arrives (pub/sub, usually within a millisecond on one host) or after the
//! subscription reconnects (messages may have been lost). Besides, a copy older than
//! [`RECHECK`] (while pub/sub is down or refused) or [`RECHECK_LIVE`] (while it is healthy) is
//! re-read in the background, off the callers' path. So another process stops serving the old
//! entries within one message delay while pub/sub is healthy, and within [`RECHECK`] plus one
//! round trip when it is not.

use super::conn::Conn;
use super::keys::KeySpace;
use crate::store::contract::StoreError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How old a copy of a function's generation may get while pub/sub is down or refused.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);
/// How old it may get while pub/sub is healthy (announcements cover it; this is a safety net).
pub(crate) const RECHECK_LIVE: Duration = Duration::from_secs(30);

struct Copy {
    generation: AtomicU64,
    /// A background re-read is under way.
    rereading: std::sync::atomic::AtomicBool,
    /// Milliseconds since `Generations::origin` of the last read, plus one; 0 = must re-read.
    checked: AtomicU64,
}

/// The generations this store has seen, per function name.
pub(crate) struct Generations {
    origin: Instant,
    copies: Mutex<HashMap<Arc<str>, Arc<Copy>>>,
}

impl Generations {
    pub(crate) fn new() -> Self {
        Generations {
            origin: Instant::now(),
            copies: Mutex::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    /// The cached generation of `name` (0 before the first read); no I/O. For tools.
    pub(crate) fn cached(&self, name: &str) -> u64 {
        let copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        copies
            .get(name)
            .map_or(0, |c| c.generation.load(Ordering::Acquire))
    }

    /// The generation of `name`, read from the server first if it is unknown or was announced
    /// to have changed (an error if that read fails: an old generation must not be served), in
    /// the background if the copy is merely old.
    pub(crate) async fn current(
        &self,
        conn: &Arc<Conn>,
        space: &KeySpace,
        name: &str,
    ) -> Result<u64, StoreError> {
        let (copy, fresh_entry) = {
            let mut copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
            match copies.get(name) {
                Some(c) => (c.clone(), false),
                None => {
                    let c = Arc::new(Copy {
                        generation: AtomicU64::new(0),
                        rereading: std::sync::atomic::AtomicBool::new(false),
                        checked: AtomicU64::new(0),
                    });
                    copies.insert(name.into(), c.clone());
                    (c, true)
                }
            }
        };
        if fresh_entry {
            watch(conn, space.generation_channel(name), Arc::downgrade(&copy));
        }
        let checked = copy.checked.load(Ordering::Acquire);
        let now = self.now_ms();
        if checked != 0 {
            let limit = if conn.wakeups.live.load(Ordering::Acquire) {
                RECHECK_LIVE
            } else {
                RECHECK
            };
            if now.saturating_sub(checked) >= limit.as_millis() as u64
                && !copy.rereading.swap(true, Ordering::AcqRel)
            {
                let (conn2, key) = (conn.clone(), space.generation_key(name));
                let (copy2, origin) = (copy.clone(), self.origin);
                conn.handle.spawn(async move {
                    let now = origin.elapsed().as_millis() as u64 + 1;
                    let _ = reread(&conn2, key, &copy2, checked, now).await;
                    copy2.rereading.store(false, Ordering::Release);
                });
            }
            return Ok(copy.generation.load(Ordering::Acquire));
        }
        reread(conn, space.generation_key(name), &copy, checked, now).await?;
        Ok(copy.generation.load(Ordering::Acquire))
    }

    /// `invalidate_all`: one `INCR` and an announcement; returns the new generation.
    pub(crate) async fn bump(
        &self,
        conn: &Arc<Conn>,
        space: &KeySpace,
        name: &str,
    ) -> Result<u64, StoreError> {
        let (key, channel) = (space.generation_key(name), space.generation_channel(name));
        let g: u64 = conn
            .call(move |mut m| async move { redis::cmd("INCR").arg(key).query_async(&mut m).await })
            .await?;
        // The announcement is best effort (an ACL may refuse the channel): other processes
        // then see the new generation within `RECHECK`.
        let _ = conn
            .call(move |mut m| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg("g")
                    .query_async::<i64>(&mut m)
                    .await
            })
            .await;
        let _ = self.current(conn, space, name).await; // registers the copy if new
        let copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = copies.get(name) {
            c.generation.fetch_max(g, Ordering::AcqRel);
        }
        Ok(g)
    }
}

/// Marks the copy stale whenever the function's channel announces something (or the
/// subscription reconnects, which wakes every channel). Ends when the store is dropped.
fn watch(conn: &Arc<Conn>, channel: Vec<u8>, copy: Weak<Copy>) {
    let wakeups = Arc::downgrade(&conn.wakeups);
    conn.handle.spawn(async move {
        loop {
            let Some(event) = wakeups.upgrade().map(|w| w.event(&channel)) else {
                return;
            };
            let listener = event.listen();
            // Through the wait module, the one swap point for shuttle builds.
            crate::wait::WaitMode::Async.wait(listener, None).await;
            match copy.upgrade() {
                Some(c) => c.checked.store(0, Ordering::Release),
                None => return,
            }
        }
    });
}

/// Reads the generation into `copy`. Only a read that started after the last announcement
/// (`checked` unchanged since) marks the copy checked.
async fn reread(
    conn: &Arc<Conn>,
    key: Vec<u8>,
    copy: &Copy,
    checked: u64,
    now: u64,
) -> Result<(), StoreError> {
    let g: Option<u64> = conn
        .call(move |mut m| async move { redis::cmd("GET").arg(key).query_async(&mut m).await })
        .await?;
    copy.generation.fetch_max(g.unwrap_or(0), Ordering::AcqRel);
    let _ = copy
        .checked
        .compare_exchange(checked, now, Ordering::AcqRel, Ordering::Acquire);
    Ok(())
}
