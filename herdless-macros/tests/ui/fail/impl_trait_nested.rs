// `impl Trait` nested in an argument type, or in the return type: rejected at the `impl Trait`
// (they used to fail inside the generated code: "`impl Trait` is not allowed in paths").

#[herdless::memoized(ttl_secs = 60)]
fn nested_impl(k: Option<impl std::fmt::Debug>) -> usize {
    format!("{k:?}").len()
}

#[herdless::memoized(ttl_secs = 60)]
fn returns_impl(k: u32) -> impl std::fmt::Debug {
    k
}

#[herdless::memoized(ttl_secs = 60)]
async fn returns_result_of_impl(k: u32) -> Result<impl std::fmt::Display, String> {
    Ok(k)
}

fn main() {}
