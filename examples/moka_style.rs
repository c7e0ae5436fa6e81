//! herdless used the way a moka user would use a cache: a memoized lookup kept in application
//! state, invalidated after a write, with the application's own error type back.
//!
//! ```text
//! cargo run --example moka_style
//! ```

use herdless::{memoize_stampede, Memoized, MemoryStore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The application's own error.
#[derive(Debug, PartialEq)]
enum DbError {
    NotFound(String),
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::NotFound(name) => write!(f, "no user named {name}"),
        }
    }
}
impl std::error::Error for DbError {}

/// A stand-in database.
#[derive(Clone, Debug, Default)]
struct Db(Arc<Mutex<HashMap<String, u32>>>);

impl Db {
    async fn age_of(&self, name: String) -> Result<u32, DbError> {
        let rows = self.0.lock().unwrap();
        rows.get(&name).copied().ok_or(DbError::NotFound(name))
    }
    fn set_age(&self, name: &str, age: u32) {
        self.0.lock().unwrap().insert(name.to_string(), age);
    }
}

type Ages = Memoized<String, u32, DbError, MemoryStore<String, u32>>;

/// Application state: cheap to clone, printable.
#[derive(Clone, Debug)]
struct AppState {
    db: Db,
    ages: Ages,
}

#[tokio::main]
async fn main() {
    let db = Db::default();
    db.set_age("bob", 41);
    let store = MemoryStore::new(10_000).expect("capacity");
    let lookup = db.clone();
    let ages = memoize_stampede(&store, Duration::from_secs(60))
        .name("ages")
        .build(move |name: String| {
            let db = lookup.clone();
            async move { db.age_of(name).await }
        })
        .expect("valid config");
    let app = AppState { db, ages };
    println!("{app:?}");

    // Borrowed lookups: `String` keys are looked up by `&str`.
    assert_eq!(app.ages.get("bob").await.unwrap(), 41);
    // A write, then an invalidation: the next read sees the new data.
    app.db.set_age("bob", 42);
    app.ages.invalidate("bob").await.unwrap();
    assert_eq!(app.ages.get("bob").await.unwrap(), 42);

    // The application's own error, owned, not an Arc.
    let err = app.ages.get("alice").await.unwrap_err();
    let own: DbError = err.into_compute().expect("the closure's error, not shared");
    assert_eq!(own, DbError::NotFound("alice".into()));
    println!("{}", app.ages.stats());
}
