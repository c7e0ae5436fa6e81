use std::time::Duration;

fn by_value(_k: u64, _v: u64) -> Duration {
    Duration::from_secs(1)
}

#[herdless::memoized(ttl_secs = 60, ttl_with = by_value)]
fn square(n: u64) -> u64 {
    n * n
}

fn main() {}
