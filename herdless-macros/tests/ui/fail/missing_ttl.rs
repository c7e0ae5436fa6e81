#[herdless::memoized(beta = 1.0)]
fn f(n: u32) -> u32 {
    n
}

#[herdless::memoized]
fn g(n: u32) -> u32 {
    n
}

fn main() {}
