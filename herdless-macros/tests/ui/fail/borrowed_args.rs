// Argument types that borrow somewhere inside: rejected at the borrowing part, with the owned
// type to write instead (they used to fail inside the generated code).

#[herdless::memoized(ttl_secs = 60)]
fn tuple_ref(k: (u32, &str)) -> usize {
    k.1.len()
}

#[herdless::memoized(ttl_secs = 60)]
fn option_ref(k: Option<&str>) -> usize {
    k.map_or(0, str::len)
}

#[herdless::memoized(ttl_secs = 60)]
fn cow(k: std::borrow::Cow<str>) -> usize {
    k.len()
}

#[herdless::memoized(ttl_secs = 60)]
fn cow_anon(k: std::borrow::Cow<'_, [u8]>) -> usize {
    k.len()
}

#[herdless::memoized(ttl_secs = 60)]
fn slice_in_vec(k: Vec<&[u8]>) -> usize {
    k.len()
}

fn main() {}
