use std::time::Duration;

#[herdless::memoized(ttl_secs = 60, stale_if_error = 30)]
fn literal_grace(n: u64) -> u64 {
    n
}

#[herdless::memoized(ttl_secs = 60, stale_if_error_secs = 30, stale_if_error = Duration::from_secs(1))]
fn two_graces(n: u64) -> u64 {
    n
}

#[herdless::memoized(ttl_secs = 60, stale_if_error_secs = 1.5)]
fn float_grace(n: u64) -> u64 {
    n
}

#[herdless::memoized(ttl_secs = 60, ttl_with = 60)]
fn literal_ttl_with(n: u64) -> u64 {
    n
}

fn main() {}
