use std::time::Duration;

#[derive(Clone, Debug)]
struct DbError;

fn ttl_of(key: &(String, u32), value: &Vec<u8>) -> Duration {
    Duration::from_secs(key.1 as u64 + value.len() as u64)
}

#[herdless::memoized(ttl_secs = 60, stale_if_error_secs = 300, ttl_with = ttl_of)]
async fn two_args(tenant: String, id: u32) -> Result<Vec<u8>, DbError> {
    Ok(format!("{tenant}/{id}").into_bytes())
}

const GRACE: Duration = Duration::from_secs(5);

#[herdless::memoized(ttl_ms = 500, stale_if_error = GRACE, ttl_with = |_k, v| Duration::from_millis(*v))]
fn closure_ttl(n: u64) -> u64 {
    n
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(two_args("a".into(), 1)).unwrap(), b"a/1");
    assert_eq!(closure_ttl(3), 3);
}
