// Return types that borrow: the value is cached, so it must be owned.

#[herdless::memoized(ttl_secs = 60)]
fn name(id: u32) -> std::borrow::Cow<str> {
    std::borrow::Cow::Owned(id.to_string())
}

fn main() {}
