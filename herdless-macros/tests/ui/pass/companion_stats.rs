#[herdless::memoized(ttl_secs = 60)]
async fn expensive(a: u32, b: u32) -> u64 {
    u64::from(a) * u64::from(b)
}

#[herdless::memoized(ttl_secs = 60)]
fn expensive_blocking(a: u32, b: u32) -> Result<u64, String> {
    Ok(u64::from(a) + u64::from(b))
}

#[tokio::main]
async fn main() {
    assert_eq!(expensive(6, 7).await, 42);
    assert_eq!(expensive(6, 7).await, 42);
    let stats = expensive_memoized().stats();
    assert_eq!(stats.computations, 1);
    assert_eq!(stats.hits, 1);

    assert_eq!(expensive_blocking(6, 7), Ok(13));
    assert_eq!(expensive_blocking(6, 7), Ok(13));
    assert_eq!(expensive_blocking_memoized().stats().computations, 1);
}
