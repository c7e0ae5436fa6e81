use std::time::Duration;

#[herdless::memoized(ttl = Duration::from_secs(5), beta = auto)]
fn auto_default(n: u8) -> u8 {
    n
}

#[herdless::memoized(ttl_secs = 5, beta = auto(Duration::from_millis(200)))]
fn auto_fixed(n: u8) -> u8 {
    n
}

#[herdless::memoized(ttl_secs = 5, beta = auto(herdless::LeadTarget::DeltaMultiple(2.5)))]
async fn auto_multiple(n: u8) -> u8 {
    n
}

const BETA: f64 = 0.25;

#[herdless::memoized(ttl_secs = 5, beta = BETA)]
fn const_beta() -> &'static str {
    "ok"
}

#[herdless::memoized(ttl_secs = 5, beta = 2)]
fn int_beta() {}

#[tokio::main]
async fn main() {
    assert_eq!(auto_default(1), 1);
    assert_eq!(auto_fixed(2), 2);
    assert_eq!(auto_multiple(3).await, 3);
    assert_eq!(const_beta(), "ok");
    int_beta();
}
