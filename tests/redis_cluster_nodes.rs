//! The cluster subscriber's node list follows `CLUSTER NODES` (issue 21, item 4), on a private
//! 3 + 3 cluster: a node the cluster forgot, though still running, no longer carries the
//! store's subscription (it would hear nothing the cluster publishes).

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use cluster::cluster_or_skip;
use herdless::store::RedisStore;
use std::time::Duration;
use support::wait_until;

/// Patterns subscribed on one node (the store subscribes to one pattern on one node).
fn numpat(port: u16) -> i64 {
    redis::cmd("PUBSUB")
        .arg("NUMPAT")
        .query(&mut support::raw(port))
        .unwrap_or(0)
}

#[test]
fn the_subscriber_leaves_a_node_the_cluster_forgot() {
    let Some(c) = cluster_or_skip() else {
        return;
    };
    let replica = c.replicas()[0];
    let ports: Vec<u16> = c
        .seeds()
        .iter()
        .map(|u| {
            u.trim_end_matches('/')
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let others: Vec<u16> = ports.iter().copied().filter(|p| *p != replica).collect();
    // The replica first: the subscription starts there.
    let seeds: Vec<String> = std::iter::once(replica)
        .chain(others.iter().copied())
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let store = RedisStore::cluster_builder(&seeds)
        .prefix("forget")
        .build()
        .unwrap();
    wait_until("subscribed on the replica", Duration::from_secs(20), || {
        numpat(replica) >= 1
    });
    // Every other node forgets the replica (for 60 s), which keeps running.
    let id = c.node_id(replica);
    for p in &others {
        let _: () = redis::cmd("CLUSTER")
            .arg("FORGET")
            .arg(&id)
            .query(&mut support::raw(*p))
            .unwrap();
    }
    // Re-read every 5 s from another node: the subscription moves to a listed node.
    wait_until(
        "the subscription leaves the forgotten node",
        Duration::from_secs(30),
        || numpat(replica) == 0 && others.iter().any(|p| numpat(*p) >= 1),
    );
    drop(store);
}
