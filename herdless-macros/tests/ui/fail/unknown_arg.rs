#[herdless::memoized(ttl_secs = 60, refresh = 3)]
fn f(n: u32) -> u32 {
    n
}

fn main() {}
