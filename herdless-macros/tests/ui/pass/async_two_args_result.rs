use std::sync::atomic::{AtomicUsize, Ordering};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, PartialEq)]
pub struct LookupError(String);

/// Docs stay on the function.
#[herdless::memoized(ttl_secs = 30)]
pub async fn lookup(region: String, id: u32) -> Result<String, LookupError> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    if id == 0 {
        return Err(LookupError(format!("{region}: no id 0")));
    }
    Ok(format!("{region}-{id}"))
}

#[tokio::main]
async fn main() {
    assert_eq!(lookup("eu".into(), 1).await, Ok("eu-1".to_string()));
    assert_eq!(lookup("eu".into(), 1).await, Ok("eu-1".to_string()));
    assert_eq!(lookup("us".into(), 1).await, Ok("us-1".to_string()));
    assert_eq!(
        lookup("eu".into(), 0).await,
        Err(LookupError("eu: no id 0".into()))
    );
    assert_eq!(RUNS.load(Ordering::SeqCst), 3);
    let memo: &'static herdless::Memoized<
        (String, u32),
        String,
        LookupError,
        herdless::MemoryStore<(String, u32), String>,
    > = lookup_memoized();
    assert_eq!(memo.stats().computations, 3);
}
