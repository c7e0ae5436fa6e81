#[derive(Debug)]
struct NotClone;

#[herdless::memoized(ttl_secs = 60)]
fn f(n: u32) -> Result<u32, NotClone> {
    Ok(n)
}

fn main() {}
