//! The Redis side of the examples: checking the server answers, and counting the commands a run
//! caused (`INFO commandstats`, summed over every command but `INFO` itself).

use herdless::store::RedisStore;

/// Checks up front that Redis answers; herdless fails open, so without this a dead Redis would
/// give a normal-looking table in which every process computed on its own.
pub fn check_redis(url: &str, prefix: &str) -> Result<(), String> {
    RedisStore::builder(url)
        .prefix(prefix)
        .connect_blocking()
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Commands the server has executed so far (every command but `INFO`), or `None` if it cannot
/// be asked.
pub fn commands_so_far(url: &str) -> Option<u64> {
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
            .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
            .filter_map(|l| {
                let calls = l.split("calls=").nth(1)?;
                calls.split(',').next()?.parse::<u64>().ok()
            })
            .sum(),
    )
}
