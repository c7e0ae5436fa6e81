#[herdless::memoized(ttl_secs = 0)]
fn zero_ttl(n: u32) -> u32 {
    n
}

#[herdless::memoized(ttl_secs = 1, ttl_ms = 5)]
fn two_ttls(n: u32) -> u32 {
    n
}

#[herdless::memoized(ttl_secs = 1, capacity = 10, store = herdless::MemoryStore::new(1).unwrap())]
fn capacity_and_store(n: u32) -> u32 {
    n
}

#[herdless::memoized(ttl_secs = 1)]
fn one_param_result(n: u32) -> std::io::Result<u32> {
    Ok(n)
}

fn main() {}
