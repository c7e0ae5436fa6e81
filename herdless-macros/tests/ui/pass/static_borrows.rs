// What the type checks still accept: `'static` borrows and owned types at any depth.
use std::borrow::Cow;

#[herdless::memoized(ttl_secs = 60)]
fn tagged(k: (u32, &'static str)) -> String {
    format!("{}:{}", k.1, k.0)
}

#[herdless::memoized(ttl_secs = 60)]
fn label(k: Option<Cow<'static, str>>) -> Cow<'static, str> {
    k.unwrap_or(Cow::Borrowed("none"))
}

#[herdless::memoized(ttl_secs = 60)]
fn bytes(k: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
    Ok(k.concat())
}

fn main() {
    assert_eq!(tagged((7, "user")), "user:7");
    assert_eq!(label(None), "none");
    assert_eq!(label(Some(Cow::Owned("x".into()))), "x");
    assert_eq!(bytes(vec![vec![1], vec![2, 3]]).unwrap(), vec![1, 2, 3]);
    assert_eq!(tagged_memoized().stats().computations, 1);
}
