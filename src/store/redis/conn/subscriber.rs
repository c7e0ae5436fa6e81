//! The pub/sub subscriber of a store: one pattern subscription to every herdless channel of its
//! prefix, waking local waiters and feeding near tiers' taps.
//!
//! The subscription cannot die silently (issue 18, findings 5 and 9):
//! - **Heartbeat.** Every [`HEARTBEAT`] (or more often, as near tiers ask: a quarter of their
//!   `max_stale`) the subscriber PINGs its connection (single node and
//!   cluster alike) and gives it up when no answer comes within [`HEARTBEAT`]: a server
//!   that is paused, or a connection a middlebox dropped without a FIN, is noticed within
//!   2 × [`HEARTBEAT`] after it went silent. The socket also has TCP keepalive (probes after 5 s
//!   idle, every second, 3 of them), which ends a dead connection the kernel can see even if the
//!   heartbeat task were starved.
//! - **Bounded backlog.** redis-rs queues messages in an unbounded channel that this one task
//!   drains. The dispatcher notes when it last found that queue empty; a message handled more
//!   than [`BACKLOG_BOUND`] after that may be that old, so the subscription counts as failed
//!   (counted in `RedisStats::pubsub_backlog_resets`): it is dropped with its queue (memory
//!   bounded by the arrival rate × [`BACKLOG_BOUND`]) and re-made, and near tiers resync.
//! - While the subscription is down, `live` is false: near tiers apply `max_stale` and
//!   generation copies are re-read every `RECHECK`.
//! - **Verified time.** An answered PING proves that every message the server published before
//!   it arrived was delivered (one connection delivers in order), and redis-rs queues those
//!   messages before it resolves the PING. Once the dispatcher has drained the queue it publishes
//!   the PING's send time (`Wakeups::verified_age`). A near tier serves an entry older than
//!   `max_stale` only while that time is younger than `max_stale`, so a subscription that went
//!   silent without any error costs at most `max_stale` of staleness, not `max_stale` plus the
//!   time to notice (issue 18, finding 5).

use super::stats::{RedisStats, Stats};
use crate::store::redis::announce::Announcement;
use crate::wait::Event;
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often the subscription is PINGed, and how long an answer may take.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// How old the oldest unhandled message may get before the subscription counts as failed.
pub(crate) const BACKLOG_BOUND: Duration = Duration::from_secs(1);
/// How often a cluster store's subscriber re-reads `CLUSTER NODES` (from another node than
/// the one it listens on) to drop forgotten and failed nodes, and to move off its own node
/// when the cluster no longer lists it.
pub(crate) const NODES_REFRESH: Duration = Duration::from_secs(5);

/// Waiters per channel, woken by the pub/sub dispatcher.
#[derive(Default)]
pub(crate) struct Wakeups {
    channels: Mutex<HashMap<Vec<u8>, Weak<Event>>>,
    /// True while the pattern subscription is live (else waiters poll).
    pub(crate) live: AtomicBool,
    /// `changes << 1 | live`: every change of `live` raises it, so a reader that compares
    /// (`fetch_max`) never lets an older state overwrite a newer one (see the near tier).
    state: AtomicU64,
    /// Near tiers listening to what the subscription hears.
    pub(crate) taps: crate::store::redis::announce::Taps,
    /// The announcement counters of generation copies, per generation channel: raised (= must
    /// be re-read) synchronously, *before* near tiers hear the same message, so that a near miss
    /// right after the drop never re-reads under the old generation.
    stale_marks: Mutex<HashMap<Vec<u8>, Vec<Weak<AtomicU64>>>>,
    /// When the latest answered heartbeat PING was *sent* (ns of the process's coarse clock),
    /// published once every message queued before its answer was handled (0: never). Every
    /// announcement the server published before that instant has reached the near tiers, so a
    /// near entry is at most `now − verified` behind (see [`Wakeups::verified_age`]).
    verified_ns: AtomicU64,
    /// The heartbeat period near tiers ask for, in ms (0: [`HEARTBEAT`]).
    beat_ms: AtomicU64,
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
    pub(crate) fn wake_all(&self) {
        let map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        for e in map.values().filter_map(Weak::upgrade) {
            e.notify(usize::MAX);
        }
    }

    /// Sets `live` and raises the state word.
    pub(crate) fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let next = ((cur >> 1) + 1) << 1 | live as u64;
            match self
                .state
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(c) => cur = c,
            }
        }
    }

    /// How far behind the server the announcements handled so far may be at `now`: the age of
    /// the send time of the latest answered heartbeat (`u64::MAX` before the first). While
    /// the subscription works this stays under one heartbeat period plus a round trip; when it
    /// goes silent (a black hole, a paused server) it grows, and near tiers re-validate.
    /// `now` and the result in ns of the process's coarse clock.
    #[inline]
    pub(crate) fn verified_age(&self, now: u64) -> u64 {
        match self.verified_ns.load(Ordering::Acquire) {
            0 => u64::MAX,
            v => now.saturating_sub(v),
        }
    }

    /// Asks for heartbeats at least every `period` (the smallest request wins; at least 20 ms,
    /// at most [`HEARTBEAT`]).
    pub(crate) fn want_heartbeat(&self, period: Duration) {
        let ms = period
            .clamp(Duration::from_millis(20), HEARTBEAT)
            .as_millis() as u64;
        let _ = self
            .beat_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == 0 || ms < cur).then_some(ms)
            });
    }

    pub(crate) fn beat_period(&self) -> Duration {
        match self.beat_ms.load(Ordering::Acquire) {
            0 => HEARTBEAT,
            ms => Duration::from_millis(ms),
        }
    }

    /// The state word (`changes << 1 | live`).
    pub(crate) fn state(&self) -> u64 {
        self.state.load(Ordering::Acquire)
    }

    /// Registers a generation copy's announcement counter under its channel.
    pub(crate) fn watch_generation(&self, channel: Vec<u8>, checked: &Arc<AtomicU64>) {
        let mut marks = self.stale_marks.lock().unwrap_or_else(|p| p.into_inner());
        let list = marks.entry(channel).or_default();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(checked));
    }

    /// Marks the generation copies of `channel` stale (no-op for other channels).
    fn mark_stale(&self, channel: &[u8]) {
        let marks = self.stale_marks.lock().unwrap_or_else(|p| p.into_inner());
        for c in marks
            .get(channel)
            .into_iter()
            .flatten()
            .filter_map(Weak::upgrade)
        {
            c.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Marks every generation copy stale (announcements may have been missed).
    pub(crate) fn mark_all_stale(&self) {
        let marks = self.stale_marks.lock().unwrap_or_else(|p| p.into_inner());
        for c in marks.values().flatten().filter_map(Weak::upgrade) {
            c.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Announcements may have been lost (a writer's `PUBLISH` was refused): generation copies
    /// are marked stale first, then near tiers drop what they hold.
    pub(crate) fn missed(&self) {
        self.mark_all_stale();
        self.taps.announce(&Announcement::Missed);
    }

    /// The subscription went down (or was refused).
    fn down(&self) {
        self.set_live(false);
        self.taps.announce(&Announcement::Disconnected);
    }
}

/// Opens the pub/sub connection; over TCP with keepalive (redis-rs applies no TCP settings
/// to pub/sub connections), otherwise (TLS, Unix sockets) as redis-rs makes it.
async fn open_pubsub(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let info = client.get_connection_info();
    if let redis::ConnectionAddr::Tcp(host, port) = &info.addr {
        let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
        keepalive(&stream);
        return redis::aio::PubSub::new(&info.redis, stream).await;
    }
    client.get_async_pubsub().await
}

/// TCP keepalive for a connection that may stay idle for long (best effort).
pub(crate) fn keepalive(stream: &tokio::net::TcpStream) {
    use redis::io::tcp::socket2::{SockRef, TcpKeepalive};
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    let sock = SockRef::from(stream);
    let _ = sock.set_tcp_keepalive(&ka);
    #[cfg(target_os = "linux")]
    let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(8)));
}

/// The TCP settings of the store's request connections (keepalive, as for the subscription).
pub(crate) fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(ka)
}

/// Keeps one pattern subscription to every herdless channel of this prefix and wakes local
/// waiters of the channel a message arrives on. Reconnects with backoff when the connection
/// drops; while it is down waiters fall back to polling.
///
/// On a cluster (`cluster`), `nodes` are the seeds and the subscription is held on one of them:
/// Redis Cluster forwards every `PUBLISH` (a script's included) to every node over the cluster
/// bus, so one node hears the whole cluster. When that node fails, the next known node is tried:
/// the seeds, plus every node the cluster listed (`CLUSTER NODES`) when a subscription
/// succeeded, so that one seed is enough. The heartbeat and the backlog bound (module doc) hold
/// for both kinds of store.
pub(super) async fn subscriber(
    mut nodes: Vec<redis::Client>,
    cluster: bool,
    pattern: Vec<u8>,
    wakeups: Weak<Wakeups>,
    stats: Arc<RedisStats>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut next = 0usize;
    let seeds = nodes.clone();
    let mut refused = false;
    // Subscription attempts failed in a row.
    let mut failed = 0usize;
    loop {
        let Some(w) = wakeups.upgrade() else { return };
        if failed >= nodes.len() {
            // A whole round of the listed nodes failed: try the seeds too (the cluster may
            // have moved to other addresses).
            for s in &seeds {
                if !nodes.iter().any(|n| addr_of(n) == addr_of(s)) {
                    nodes.push(s.clone());
                }
            }
        }
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
                    if !refused {
                        refused = true;
                        w.down();
                        stats.pubsub_refused.store(1, Ordering::Relaxed);
                        Stats::inc(&stats.pubsub_refusals);
                        tracing::warn!(
                            pattern = %String::from_utf8_lossy(&pattern),
                            "redis refused PSUBSCRIBE (NOPERM): waiters poll instead of being \
                             woken until the channels are granted (re-checked every 10 s); \
                             grant the user `&{}` and +psubscribe to enable wake-ups",
                            String::from_utf8_lossy(&pattern)
                        );
                    }
                    drop(w);
                    // An administrator may fix the ACL (or an `ACL LOAD` refused for a moment):
                    // ask again later instead of polling for good.
                    tokio::time::sleep(super::PERMISSION_RECHECK).await;
                    continue;
                }
                Some(false) => {}
                None => {} // could not ask (server down): the subscription attempt fails too
            }
        }
        let connected = async {
            let mut ps = open_pubsub(client).await?;
            ps.psubscribe(&pattern).await?;
            redis::RedisResult::Ok(ps)
        };
        match tokio::time::timeout(Duration::from_secs(2), connected).await {
            Ok(Ok(ps)) => {
                backoff = Duration::from_millis(50);
                failed = 0;
                if refused {
                    refused = false;
                    stats.pubsub_refused.store(0, Ordering::Relaxed);
                    Stats::inc(&stats.pubsub_restored);
                    tracing::info!(
                        "redis accepts this store's subscription again: waiters are woken"
                    );
                }
                if cluster {
                    // The list follows the cluster: forgotten and failed nodes leave it, so
                    // a later failover does not try them first, one timeout each.
                    let listed = cluster_nodes(client).await;
                    if !listed.is_empty() {
                        nodes = listed;
                    }
                }
                // Stay on the node that worked.
                let here = addr_of(client);
                next = nodes.iter().position(|n| addr_of(n) == here).unwrap_or(0);
                // Anything published while we were down was missed: generation copies are
                // marked stale first, then near tiers drop what they hold, then waiters
                // re-check.
                w.mark_all_stale();
                w.set_live(true);
                w.taps.announce(&Announcement::Connected);
                w.wake_all();
                drop(w);
                let (mut sink, mut stream) = ps.split();
                // The next heartbeat, and the send time of an answered one not yet published
                // (published once the queue is found empty: every message before its answer
                // has been handled then).
                let mut next_beat = tokio::time::Instant::now() + w_beat(&wakeups);
                let mut answered: Option<u64> = None;
                let mut refresh = tokio::time::interval(NODES_REFRESH);
                refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                refresh.tick().await;
                let here = addr_of(client);
                // When the dispatcher last found redis-rs's queue empty.
                let mut drained = Instant::now();
                loop {
                    let msg = match stream.next().now_or_never() {
                        Some(m) => {
                            if drained.elapsed() > BACKLOG_BOUND {
                                Stats::inc(&stats.pubsub_backlog_resets);
                                tracing::warn!(
                                    bound = ?BACKLOG_BOUND,
                                    "redis pub/sub backlog older than its bound; resubscribing \
                                     (near tiers resync)"
                                );
                                break;
                            }
                            m
                        }
                        None => {
                            drained = Instant::now();
                            if let Some(sent) = answered.take() {
                                if let Some(w) = wakeups.upgrade() {
                                    w.verified_ns.fetch_max(sent, Ordering::AcqRel);
                                }
                            }
                            tokio::select! {
                                m = stream.next() => {
                                    // The queue was empty until this message came.
                                    drained = Instant::now();
                                    m
                                }
                                _ = refresh.tick(), if cluster => {
                                    // Ask another node (a forgotten node still lists itself):
                                    // when the cluster no longer lists ours, or flags it failed,
                                    // its subscription hears nothing: move.
                                    let other = nodes.iter().find(|n| addr_of(n) != here).cloned();
                                    let Some(other) = other else { continue };
                                    let listed = cluster_nodes(&other).await;
                                    if listed.is_empty() {
                                        continue; // could not ask: keep what we know
                                    }
                                    let gone = !listed.iter().any(|n| addr_of(n) == here);
                                    nodes = listed;
                                    if gone {
                                        tracing::warn!(node = %here, "the subscribed node left the cluster; resubscribing on another");
                                        None
                                    } else {
                                        continue;
                                    }
                                }
                                _ = tokio::time::sleep_until(next_beat) => {
                                    // A paused server or a silently dropped connection keeps
                                    // the socket open and says nothing: without an answer,
                                    // treat the subscription as down and make a new one.
                                    // Read before the PING goes out: never later than its send.
                                    let sent = crate::clock::coarse().now().max(1);
                                    next_beat = tokio::time::Instant::now() + w_beat(&wakeups);
                                    match tokio::time::timeout(HEARTBEAT, sink.ping::<redis::Value>()).await {
                                        Ok(Ok(_)) => {
                                            answered = Some(sent);
                                            continue;
                                        }
                                        _ => {
                                            Stats::inc(&stats.pubsub_heartbeat_failures);
                                            None
                                        }
                                    }
                                }
                            }
                        }
                    };
                    let Some(msg) = msg else { break };
                    let Some(w) = wakeups.upgrade() else { return };
                    let channel = msg.get_channel_name().as_bytes();
                    w.mark_stale(channel);
                    w.taps.message(channel, msg.get_payload_bytes());
                    w.wake(channel);
                }
                if cluster {
                    // Try another node first.
                    next = nodes
                        .iter()
                        .position(|n| addr_of(n) == here)
                        .map_or(0, |i| i + 1);
                }
                if let Some(w) = wakeups.upgrade() {
                    w.down();
                    w.wake_all();
                }
            }
            _ => {
                failed += 1;
                w.down();
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

/// The address a client connects to, for comparing nodes.
fn addr_of(c: &redis::Client) -> String {
    c.get_connection_info().addr.to_string()
}

/// The nodes of a `CLUSTER NODES` reply that can carry a subscription: every listed node with
/// an address, except those flagged `fail` (the cluster agreed it is down), `noaddr` or
/// `handshake` (not yet a member). A forgotten node is simply absent.
fn live_nodes(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            // `<id> <ip>:<port>@<cport>[,<hostname>] <flags> …`
            let mut fields = line.split_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            if flags
                .split(',')
                .any(|f| matches!(f, "fail" | "noaddr" | "handshake"))
            {
                return None;
            }
            let (host, port) = addr.split(['@', ',']).next()?.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            if host.is_empty() || port == 0 {
                return None; // a node still joining has no address yet
            }
            Some((host.to_string(), port))
        })
        .collect()
}

/// Every live node `node` lists in `CLUSTER NODES` (see [`live_nodes`]), as clients with
/// `node`'s credentials and TLS settings (nothing when it cannot say within a second).
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
    live_nodes(&text)
        .into_iter()
        .filter_map(|(host, port)| {
            let mut info = base.clone();
            info.addr = match &base.addr {
                redis::ConnectionAddr::Tcp(..) => redis::ConnectionAddr::Tcp(host, port),
                redis::ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => redis::ConnectionAddr::TcpTls {
                    host,
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

/// The heartbeat period the store's near tiers asked for ([`HEARTBEAT`] once the store is gone).
fn w_beat(wakeups: &Weak<Wakeups>) -> Duration {
    wakeups.upgrade().map_or(HEARTBEAT, |w| w.beat_period())
}

#[cfg(test)]
mod tests {
    use super::live_nodes;

    #[test]
    fn the_node_list_follows_cluster_nodes() {
        // Three masters, a replica, a failed master, a node mid-handshake, one without an
        // address; a node forgotten by the cluster is not listed at all.
        let reply = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922
a3 127.0.0.1:7003@17003,host-3 master - 0 1 3 connected 10923-16383
r1 127.0.0.1:7004@17004 slave a1 0 1 1 connected
f1 127.0.0.1:7005@17005 master,fail - 0 1 4 disconnected
h1 127.0.0.1:7006@17006 handshake - 0 0 0 disconnected
n1 :0@0 master,noaddr - 0 0 0 disconnected
";
        let got = live_nodes(reply);
        let want: Vec<(String, u16)> = [7001, 7002, 7003, 7004]
            .iter()
            .map(|p| ("127.0.0.1".to_string(), *p))
            .collect();
        assert_eq!(got, want);
        // The next reply no longer lists 7002 (forgotten) and flags 7003 failed: both leave.
        let reply = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-10922
a3 127.0.0.1:7003@17003 master,fail - 0 1 3 disconnected
r3 127.0.0.1:7008@17008 master - 0 1 5 connected 10923-16383
";
        let got = live_nodes(reply);
        assert_eq!(
            got,
            vec![
                ("127.0.0.1".to_string(), 7001),
                ("127.0.0.1".to_string(), 7008)
            ]
        );
    }
}
