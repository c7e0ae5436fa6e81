#[herdless::memoized(ttl_ms = 500, capacity = 16)]
fn double(n: i64) -> i64 {
    n * 2
}

fn main() {
    assert_eq!(double(21), 42);
    let memo: &'static herdless::BlockingMemoized<
        i64,
        i64,
        std::convert::Infallible,
        herdless::MemoryStore<i64, i64>,
    > = double_memoized();
    assert_eq!(memo.get(&21).unwrap(), 42);
    assert_eq!(memo.stats().computations, 1);
}
