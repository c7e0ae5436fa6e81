#[herdless::memoized(ttl_secs = 60, beta = "x")]
fn f(n: u32) -> u32 {
    n
}

#[herdless::memoized(ttl_secs = 60, beta = -1.0)]
fn g(n: u32) -> u32 {
    n
}

fn main() {}
