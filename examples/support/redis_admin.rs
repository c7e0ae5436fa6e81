//! The Redis side of the examples: checking the server answers, and counting the commands a run
//! caused (`INFO commandstats`, summed over every command but `INFO` itself).

use herdless::store::RedisStore;

/// The store builder for `url`: a comma-separated list of seed nodes for a cluster.
pub fn builder(url: &str, cluster: bool) -> herdless::store::RedisStoreBuilder {
    if cluster {
        let seeds: Vec<&str> = url.split(',').collect();
        RedisStore::cluster_builder(&seeds)
    } else {
        RedisStore::builder(url)
    }
}

/// Checks up front that Redis answers; herdless fails open, so without this a dead Redis would
/// give a normal-looking table in which every process computed on its own.
pub fn check_redis(url: &str, prefix: &str, cluster: bool) -> Result<(), String> {
    builder(url, cluster)
        .prefix(prefix)
        .connect_blocking()
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Commands the server (every node of a cluster) has executed so far, every command but
/// `INFO` and `CLUSTER`, or `None` if it cannot be asked.
pub fn commands_so_far(url: &str, cluster: bool) -> Option<u64> {
    if !cluster {
        return commands_on(url);
    }
    let seed = url.split(',').next()?;
    let client = redis::Client::open(seed).ok()?;
    let mut con = client
        .get_connection_with_timeout(std::time::Duration::from_secs(2))
        .ok()?;
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut con).ok()?;
    let mut total = 0;
    for line in nodes.lines() {
        // `<id> <ip:port@cport> <flags> ...`
        let addr = line.split_whitespace().nth(1)?.split('@').next()?;
        total += commands_on(&format!("redis://{addr}/"))?;
    }
    Some(total)
}

fn commands_on(url: &str) -> Option<u64> {
    let client = redis::Client::open(url).ok()?;
    let mut con = client
        .get_connection_with_timeout(std::time::Duration::from_secs(2))
        .ok()?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .ok()?;
    Some(
        info.lines()
            .filter(|l| {
                l.starts_with("cmdstat_")
                    && !l.starts_with("cmdstat_info:")
                    && !l.starts_with("cmdstat_cluster")
            })
            .filter_map(|l| {
                let calls = l.split("calls=").nth(1)?;
                calls.split(',').next()?.parse::<u64>().ok()
            })
            .sum(),
    )
}
