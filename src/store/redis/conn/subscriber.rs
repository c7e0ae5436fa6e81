//! The pub/sub subscriber of a store: one pattern subscription to every herdless channel of its
//! prefix, waking local waiters and feeding near tiers' taps.

use super::stats::RedisStats;
use crate::store::redis::announce::Announcement;
use crate::wait::Event;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Waiters per channel, woken by the pub/sub dispatcher.
#[derive(Default)]
pub(crate) struct Wakeups {
    channels: Mutex<HashMap<Vec<u8>, Weak<Event>>>,
    /// True while the pattern subscription is live (else waiters poll).
    pub(crate) live: AtomicBool,
    /// Near tiers listening to what the subscription hears.
    pub(crate) taps: crate::store::redis::announce::Taps,
}

impl Wakeups {
    pub(crate) fn event(&self, channel: &[u8]) -> Arc<Event> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(channel).and_then(Weak::upgrade) {
            return e;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let e = Arc::new(Event::new());
        map.insert(channel.to_vec(), Arc::downgrade(&e));
        e
    }
    fn wake(&self, channel: &[u8]) {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(channel).and_then(Weak::upgrade) {
            e.notify(usize::MAX);
        }
    }
    fn wake_all(&self) {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for e in map.values().filter_map(Weak::upgrade) {
            e.notify(usize::MAX);
        }
    }
}

/// Keeps one pattern subscription to every herdless channel of this prefix and wakes local
/// waiters of the channel a message arrives on. Reconnects with backoff when the connection
/// drops; while it is down waiters fall back to polling.
///
/// On a cluster, `nodes` are the seeds and the subscription is held on one of them: Redis
/// Cluster forwards every `PUBLISH` (a script's included) to every node over the cluster bus, so
/// one node hears the whole cluster. When that node fails, the next known node is tried: the
/// seeds, plus every node the cluster listed (`CLUSTER NODES`) when a subscription succeeded, so
/// that one seed is enough. `heartbeat` (cluster only) PINGs the node that often and gives it up
/// when it does not answer within as long, so that a paused node does not silently stop
/// announcements from the other shards.
pub(super) async fn subscriber(
    mut nodes: Vec<redis::Client>,
    heartbeat: Option<Duration>,
    pattern: Vec<u8>,
    wakeups: Weak<Wakeups>,
    stats: Arc<RedisStats>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut next = 0usize;
    loop {
        let Some(w) = wakeups.upgrade() else { return };
        let client = nodes[next % nodes.len()].clone();
        let client = &client;
        next = next.wrapping_add(1);
        // Asked before every (re)subscription: permissions can be revoked while we run (an
        // `ACL SETUSER … resetchannels` also disconnects the subscription).
        {
            // redis-rs's `PubSub::psubscribe` returns Ok even when an ACL refuses the pattern,
            // which would leave waiters "woken" by a subscription that does not exist. Ask once
            // with a plain command, which does report NOPERM.
            match subscribe_refused(client, &pattern).await {
                Some(true) => {
                    w.live.store(false, Ordering::Release);
                    w.taps.announce(&Announcement::Disconnected);
                    stats.pubsub_refused.store(1, Ordering::Relaxed);
                    tracing::warn!(
                        pattern = %String::from_utf8_lossy(&pattern),
                        "redis refused PSUBSCRIBE (NOPERM): waiters poll instead of being woken; \
                         grant the user `&{}` and +psubscribe to enable wake-ups",
                        String::from_utf8_lossy(&pattern)
                    );
                    return; // poll-only for good: retrying would be refused again
                }
                Some(false) => {}
                None => {} // could not ask (server down): the subscription attempt fails too
            }
        }
        let connected = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.psubscribe(&pattern).await?;
            redis::RedisResult::Ok(ps)
        };
        match tokio::time::timeout(Duration::from_secs(2), connected).await {
            Ok(Ok(ps)) => {
                backoff = Duration::from_millis(50);
                next = next.wrapping_sub(1); // stay on a node that worked
                if heartbeat.is_some() {
                    for n in cluster_nodes(client).await {
                        let addr = n.get_connection_info().addr.to_string();
                        if !nodes
                            .iter()
                            .any(|k| k.get_connection_info().addr.to_string() == addr)
                        {
                            nodes.push(n);
                        }
                    }
                }
                w.live.store(true, Ordering::Release);
                // Anything published while we were down was missed: let waiters re-check, and
                // near tiers drop what they hold.
                w.taps.announce(&Announcement::Connected);
                w.wake_all();
                drop(w);
                let (mut sink, mut stream) = ps.split();
                let mut beat =
                    tokio::time::interval(heartbeat.unwrap_or(Duration::from_secs(3600)));
                beat.tick().await; // the first tick is immediate
                loop {
                    let msg = tokio::select! {
                        m = stream.next() => m,
                        _ = beat.tick(), if heartbeat.is_some() => {
                            // A paused node keeps the connection open and says nothing: without
                            // an answer, treat the subscription as down and move on.
                            let bound = heartbeat.unwrap_or_default();
                            match tokio::time::timeout(bound, sink.ping::<redis::Value>()).await {
                                Ok(Ok(_)) => continue,
                                _ => None,
                            }
                        }
                    };
                    let Some(msg) = msg else { break };
                    let Some(w) = wakeups.upgrade() else { return };
                    let channel = msg.get_channel_name().as_bytes();
                    w.taps.message(channel, msg.get_payload_bytes());
                    w.wake(channel);
                }
                if heartbeat.is_some() {
                    next = next.wrapping_add(1); // try another node first
                }
                if let Some(w) = wakeups.upgrade() {
                    w.live.store(false, Ordering::Release);
                    w.taps.announce(&Announcement::Disconnected);
                    w.wake_all();
                }
            }
            _ => {
                w.live.store(false, Ordering::Release);
                w.taps.announce(&Announcement::Disconnected);
                drop(w);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Whether the server refuses this user a PSUBSCRIBE of `pattern`: `Some(true)` on NOPERM,
/// `Some(false)` when permitted, `None` when the server could not be asked.
async fn subscribe_refused(client: &redis::Client, pattern: &[u8]) -> Option<bool> {
    let ask = async {
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        let out = redis::cmd("PSUBSCRIBE")
            .arg(pattern)
            .query_async::<redis::Value>(&mut con)
            .await;
        Some(matches!(&out, Err(e) if e.code() == Some("NOPERM")))
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}

/// Every node `node` lists in `CLUSTER NODES`, as clients with `node`'s credentials and TLS
/// settings (nothing when it cannot say within a second).
async fn cluster_nodes(node: &redis::Client) -> Vec<redis::Client> {
    let ask = async {
        let mut con = node.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut con)
            .await
            .ok()
    };
    let Ok(Some(text)) = tokio::time::timeout(Duration::from_secs(1), ask).await else {
        return Vec::new();
    };
    let base = node.get_connection_info();
    text.lines()
        .filter_map(|line| {
            // `<id> <ip>:<port>@<cport>[,<hostname>] <flags> …`
            let addr = line.split_whitespace().nth(1)?;
            let (host, port) = addr.split(['@', ',']).next()?.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            if host.is_empty() {
                return None; // a node still joining has no address yet
            }
            let mut info = base.clone();
            info.addr = match &base.addr {
                redis::ConnectionAddr::Tcp(..) => redis::ConnectionAddr::Tcp(host.into(), port),
                redis::ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => redis::ConnectionAddr::TcpTls {
                    host: host.into(),
                    port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => return None,
            };
            redis::Client::open(info).ok()
        })
        .collect()
}
