//! Redis Cluster: [`RedisStore::cluster`] and [`RedisStore::cluster_builder`] build the same
//! [`RedisStore`] over a redis-rs cluster connection, with the same guarantees as over one
//! server.
//!
//! - **Routing** is redis-rs's (`cluster-async`): every request goes to the master of its
//!   slot, `MOVED`/`ASK` during resharding are followed (scripts included), and after a failover
//!   the slot map is refreshed and the promoted replica is used. The key layout puts a value, its
//!   lock, its version and its channel under one hash tag, so every script runs in one slot.
//! - **Reads** are one round trip (one `EVALSHA` to the slot's master), as over one server.
//! - **Breakers** are per slot range (64 ranges of 256 slots, keyed by the slot of the request's
//!   first key): a dead or paused master opens the breakers of its own slots only, while keys on
//!   the other masters keep their normal latency. A range rather than a node because redis-rs
//!   owns (and changes) the slot-to-node map; a master owns runs of slots, so a range almost
//!   always lies within one master.
//!   An open range is probed in the background (one `EXISTS` of a key of the range every
//!   50 ms, past the breaker, bounded by `op_timeout`) and closes on the first answer: without
//!   it a range waited out its cooldown for a caller's half-open probe, so after a failover
//!   every process kept computing locally for up to a cooldown after the promotion (measured
//!   with `examples/failover.rs`, 5 processes × 2 threads, 3 runs: local computations, up to
//!   25 a second, went on 0.68–0.93 s after the promotion; with the probe 0.03–0.15 s).
//! - **Failover**: while a dead master's slots are unserved (from its `FAIL` flag to its
//!   replica's promotion, about a second with `cluster-node-timeout` 1 000 ms), Redis's default
//!   `cluster-require-full-coverage yes` makes *every* node answer `CLUSTERDOWN`, so keys on the
//!   healthy masters fail open too for that window (measured: one call of ~0.75 s, three
//!   timeouts, no caller error). With `cluster-require-full-coverage no` on the servers they
//!   keep being served (measured: no failed request, slowest call 85 ms).
//! - **Retries** (a `TRYAGAIN` while a slot's keys migrate, a redirect, a node just failed
//!   over) are redis-rs's, made short (5–50 ms apart) so that a request rides them out until its
//!   own `op_timeout` instead of failing open after the first.
//! - **Wake-ups and near-cache announcements** use plain `PUBLISH` from the scripts, which
//!   Redis Cluster forwards to every node, and one pattern subscription held on one seed node.
//!   The subscription's node is PINGed every second; one that does not answer (dead, paused)
//!   is left for the next known node (the seeds, plus every node `CLUSTER NODES` listed, so
//!   one seed is enough), and the near tier drops what it holds on resubscribing.
//!   Waiters keep their poll fallback.
//!
//!   Why not sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`): it has no patterns, so every waiter's
//!   channel and every key a near tier holds would need a subscription of its own, on the node
//!   owning its slot, moved on every failover and resharding. What plain `PUBLISH` costs
//!   instead, measured on the 3 + 3 test cluster (`redis_cluster::measure_publish_fanout`,
//!   `redis-benchmark -c 10 -n 50000` against one master): 34.4 k/s, p50 0.119 ms and 5
//!   cluster-bus messages per publish (one to every other node), against 35.0 k/s, p50
//!   0.055 ms and 1 bus message (to the shard's replica) for `SPUBLISH`. herdless publishes
//!   once per write, release or invalidation, not per read, so with a hot key refreshed about
//!   once per TTL the bus carries (nodes − 1) small messages per refresh.
//! - **Start-up checks** ([`RedisStoreBuilder::connect`]) on a cluster store connect to the
//!   cluster (slot map, every master), load the scripts and run one read script under the
//!   prefix, so an unreachable cluster, refused credentials or a user without scripting fail
//!   there; the finer per-permission diagnosis of a single server's checks is not repeated.

use super::conn::Target;
use super::{connect, scripts, ConnectError, RedisStore, RedisStoreBuilder};
use crate::error::ConfigError;
use crate::store::contract::{StoreError, StoreErrorKind};
use std::time::{Duration, Instant};

impl RedisStoreBuilder {
    /// [`RedisStoreBuilder::connect`] of a cluster store: builds it, then asks the cluster
    /// (bounded by 4 × `op_timeout`, at least 2 s) to run the read script on a key under the
    /// prefix, which needs the slot map, the key's master, scripting and the key permission.
    pub(super) async fn connect_cluster(self) -> Result<RedisStore, ConnectError> {
        let url = self.url.clone();
        let bound = self
            .op_timeout
            .saturating_mul(4)
            .max(Duration::from_secs(2));
        let store = self.build().map_err(|e| ConnectError::config(&url, e))?;
        let key = store.inner.space.generation_key("herdless-connect-check");
        let conn = store.inner.conn.clone();
        // On the store's runtime, so that this may be awaited on any executor.
        let check = conn.handle.spawn({
            let conn = conn.clone();
            async move {
                let deadline = Instant::now() + bound;
                loop {
                    let k = key.clone();
                    let out: Result<redis::Value, _> = conn
                        .call(move |mut m| async move {
                            scripts::READ.key(k).arg(1).invoke_async(&mut m).await
                        })
                        .await;
                    match out {
                        Ok(_) => return Ok(()),
                        // The first connection (slot map, every master) may take longer than
                        // one call's timeout: ask again until the bound.
                        Err(e)
                            if e.kind() == StoreErrorKind::Timeout && Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        });
        match check.await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(e)) => Err(ConnectError::from_store(&url, &e)),
            Err(e) => Err(ConnectError::from_store(
                &url,
                &StoreError::new(StoreErrorKind::Other, format!("check failed: {e}")),
            )),
        }
    }
}

impl RedisStore {
    /// A store over a Redis Cluster, with default settings; `seeds` are the URLs of some of its
    /// nodes (any one reachable node is enough to find the others). Lazy and fail-open, like
    /// [`RedisStore::new`].
    ///
    /// ```
    /// use herdless::store::RedisStore;
    /// // Building does not connect.
    /// let store = RedisStore::cluster(&["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]).unwrap();
    /// # drop(store);
    /// assert!(RedisStore::cluster(&[]).is_err());
    /// ```
    pub fn cluster(seeds: &[&str]) -> Result<Self, ConfigError> {
        Self::cluster_builder(seeds).build()
    }

    /// A builder for a cluster store (every setting of [`RedisStore::builder`] applies).
    ///
    /// ```
    /// use herdless::store::RedisStore;
    /// use std::time::Duration;
    /// let store = RedisStore::cluster_builder(&["redis://127.0.0.1:7000"])
    ///     .prefix("shop")
    ///     .op_timeout(Duration::from_millis(100))
    ///     .build()
    ///     .unwrap();
    /// # drop(store);
    /// // `connect` checks the cluster first: nothing listens on port 1.
    /// let err = RedisStore::cluster_builder(&["redis://127.0.0.1:1"])
    ///     .connect_blocking()
    ///     .unwrap_err();
    /// assert_eq!(err.kind(), herdless::store::StoreErrorKind::ConnectionRefused);
    /// ```
    pub fn cluster_builder(seeds: &[&str]) -> RedisStoreBuilder {
        let mut b = RedisStore::builder(seeds.first().copied().unwrap_or(""));
        b.seeds = Some(seeds.iter().map(|s| s.to_string()).collect());
        b
    }
}

/// The cluster target of a store: the redis-rs cluster client and one plain client per seed
/// (for the pub/sub subscription). Every seed must be a usable URL with database 0.
pub(super) fn target(seeds: &[String], op_timeout: Duration) -> Result<Target, ConfigError> {
    if seeds.is_empty() {
        return Err(ConfigError::new(
            "seeds",
            "give at least one node of the cluster",
        ));
    }
    let mut clients = Vec::with_capacity(seeds.len());
    for s in seeds {
        let client = connect::parse_url(s).map_err(|e| ConfigError::new("seeds", e.to_string()))?;
        if client.get_connection_info().redis.db != 0 {
            return Err(ConfigError::new(
                "seeds",
                format!(
                    "`{}` selects a database; a cluster has only database 0",
                    connect::redact_url(s)
                ),
            ));
        }
        clients.push(client);
    }
    let infos: Vec<redis::ConnectionInfo> = clients
        .iter()
        .map(|c| c.get_connection_info().clone())
        .collect();
    let client = redis::cluster::ClusterClientBuilder::new(infos)
        // Every call is bounded by `op_timeout` anyway: retry soon and until that deadline (a
        // TRYAGAIN while a slot's keys migrate, a redirect, a node that just failed over) rather
        // than after redis-rs's default wait of over a second.
        .retries(16)
        .min_retry_wait(5)
        .max_retry_wait(50)
        .connection_timeout(op_timeout.saturating_mul(4).max(Duration::from_secs(1)))
        .build()
        .map_err(|e| ConfigError::new("seeds", e.to_string()))?;
    Ok(Target::Cluster {
        client,
        seeds: clients,
    })
}
