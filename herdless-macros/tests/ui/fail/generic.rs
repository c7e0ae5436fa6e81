#[herdless::memoized(ttl_secs = 60)]
fn f<T: Clone>(t: T) -> T {
    t
}

#[herdless::memoized(ttl_secs = 60)]
fn g(s: &str) -> usize {
    s.len()
}

fn main() {}
