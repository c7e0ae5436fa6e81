//! Cluster breakers probed in the background: after a failover the promoted replica is used as
//! soon as it answers, not after the breaker's cooldown (issue 21, item 4).

use super::{cluster, slot, Breakers, Conn};
use std::sync::Arc;
use std::time::Duration;

/// How often a background prober asks an open slot range's master (see [`Conn::watch`]).
const PROBE_EVERY: Duration = Duration::from_millis(50);

impl Conn {
    /// Watches the breaker of slot range `range` while it is open (one prober per range): every
    /// [`PROBE_EVERY`] one `EXISTS` of a key in the range, sent past the breaker and bounded by
    /// `op_timeout`, and the breaker closes as soon as one succeeds. Without it an open range
    /// waited out its cooldown before a caller's half-open probe, so after a failover the
    /// promoted replica went unused for up to a cooldown and every process kept computing
    /// locally (issue 21, item 4).
    pub(super) fn watch(self: &Arc<Self>, range: usize) {
        if !self.breakers.get(range).claim_watch() {
            return;
        }
        let Some(key) = self.probe_key(range) else {
            // The prefix fixes the hash tag: no key of ours lies in this range.
            self.breakers.get(range).end_watch();
            return;
        };
        let conn = Arc::downgrade(self);
        self.handle.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(this) = conn.upgrade() else { return };
                let breaker = this.breakers.get(range);
                if !breaker.is_open() {
                    if breaker.end_watch() {
                        continue;
                    }
                    return;
                }
                let deadline = tokio::time::Instant::now() + this.op_timeout;
                let Ok((slot::Ready::Cluster(mut con), _)) =
                    this.slot.get(deadline, this.op_timeout).await
                else {
                    continue;
                };
                let mut exists = redis::cmd("EXISTS");
                exists.arg(&key);
                let asked = exists.query_async::<i64>(&mut con);
                if let Ok(Ok(_)) = tokio::time::timeout_at(deadline, asked).await {
                    breaker.success();
                }
            }
        });
    }

    /// A key under the store's prefix whose hash slot lies in breaker range `range`.
    fn probe_key(&self, range: usize) -> Option<Vec<u8>> {
        (0..100_000u32).find_map(|n| {
            let mut k = self.probe_prefix.clone();
            k.extend_from_slice(format!(":{{~probe{n}}}").as_bytes());
            (Breakers::range_of(cluster::slot_of(&k)) == range).then_some(k)
        })
    }
}
