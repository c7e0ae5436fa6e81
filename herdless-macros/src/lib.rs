//! # herdless-macros — `#[herdless::memoized]`
//!
//! The attribute behind `herdless::memoized` (enabled by herdless's default `macros` feature).
//! It memoizes a function with [`herdless::memoize_stampede`] — XFetch early refresh plus
//! single-flight hard misses — and keeps the function's signature, the way the `cached` crate's
//! `#[cached]` does:
//!
//! ```
//! use herdless::memoized;
//!
//! #[memoized(ttl_secs = 60)]
//! fn square(n: u64) -> u64 {
//!     n * n // the expensive part
//! }
//!
//! assert_eq!(square(9), 81);
//! assert_eq!(square(9), 81);
//! assert_eq!(square_memoized().stats().computations, 1);
//! ```
//!
//! Use it through `herdless` (`#[herdless::memoized(...)]`): the generated code names
//! `::herdless`, so this crate is not meant to be a direct dependency. See [`memoize_stampede`]
//! (re-exported by herdless as `memoized`) for the arguments and what is generated.
//!
//! [`herdless::memoize_stampede`]: https://docs.rs/herdless/latest/herdless/fn.memoize_stampede.html

use proc_macro::TokenStream;
use syn::parse_macro_input;

mod args;
mod expand;
mod types;

/// Memoizes a function with herdless, keeping its signature. Re-exported by herdless as
/// **`herdless::memoized`**: `herdless::memoize_stampede` is already the builder function, so the
/// attribute gets its own name there (`#[herdless::memoized(ttl_secs = 60)]`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// #[derive(Clone, Debug)]
/// struct DbError(String);
///
/// /// A user's display name (doc comments and attributes stay on the function).
/// #[herdless::memoized(ttl_secs = 60, beta = auto, name = "users::display_name")]
/// pub async fn display_name(tenant: u32, id: u64) -> Result<String, DbError> {
///     if id == 0 {
///         return Err(DbError("no user 0".into())); // errors are never cached
///     }
///     Ok(format!("user {id} of tenant {tenant}"))
/// }
///
/// assert_eq!(display_name(1, 7).await.unwrap(), "user 7 of tenant 1");
/// assert!(display_name(1, 0).await.is_err());
/// let memo = display_name_memoized(); // &'static herdless::Memoized<(u32, u64), String, DbError, _>
/// assert_eq!(memo.name(), "users::display_name");
/// assert_eq!(memo.get(&(1, 7)).await.unwrap(), "user 7 of tenant 1"); // same cache
/// # }
/// ```
///
/// # Arguments
///
/// | argument | meaning |
/// |---|---|
/// | `ttl_secs = <u64>`, `ttl_ms = <u64>` or `ttl = <Duration expr>` | the TTL; **exactly one is required** |
/// | `beta = <f64 expr>` | a fixed XFetch β (default: automatic β, as `memoize_stampede`; `0` disables early refresh) |
/// | `beta = auto` / `beta = auto(<target>)` | automatic β: `.beta_auto(LeadTarget::default())` / `.beta_auto(<target>)` (a `LeadTarget` or a `Duration`) |
/// | `name = "<str>"` | the function's namespace in the store; default `concat!(module_path!(), "::", "<fn name>")` |
/// | `capacity = <u64 expr>` | entries of the function's own in-memory store (default 10 000) |
/// | `store = <expr>` | use this store instead (e.g. a `RedisStore`); evaluated once, on the first call, and cloned; `capacity` does not apply |
/// | `store_type = <Type>` | the type of `store` (default `herdless::store::RedisStore`) |
/// | `contention = <expr>` | a `herdless::Contention` for hard misses behind another caller (default: wait up to 30 s) |
/// | `stale_if_error_secs = <u64>` or `stale_if_error = <Duration expr>` | `.stale_if_error(..)`: for up to this long after expiry, a failed recomputation returns the last value (default: off) |
/// | `ttl_with = <path>` | `.ttl_with(..)`: each value's own TTL, from a `fn(&K, &V) -> Duration` (`K`: the argument, or the tuple of the arguments; `V`: the value, the `Ok` type of a `Result`); zero: do not store the value |
///
/// The configuration is validated on the first call; an invalid one (a zero TTL given as an
/// expression, a negative β expression) panics there with herdless's `ConfigError`.
///
/// # What is generated
///
/// For `fn user(a: A, b: B) -> R`:
///
/// - `fn user(a: A, b: B) -> R`, with the same visibility, `async`-ness, attributes and docs.
///   Its body looks the key up; the original body moves into a private inner function
///   (`__herdless_user_inner`, nested in the companion) that computes on a miss or refresh.
/// - The companion **`fn user_memoized() -> &'static M`** (same visibility and `#[cfg]`), the
///   memoized function itself, built lazily in a `std::sync::OnceLock`: call `.stats()`,
///   `.name()`, `.get(&key)` / `.get_with(&key, contention)` (which return herdless's errors
///   rather than panicking) and whatever else `Memoized` / `BlockingMemoized` offer.
///   `M` is `herdless::Memoized<K, V, E, S>` for an `async fn` and
///   `herdless::BlockingMemoized<K, V, E, S>` for a plain `fn`.
///
/// Types: the key `K` is `()` for no argument, the argument's type for one argument (so
/// `user_memoized().get(&id)`), and the tuple `(A, B, ..)` for several; arguments are moved into
/// it (each computation gets a clone). Every argument type must be
/// `Hash + Eq + Clone + Send + Sync + 'static` — owned values, not references. For
/// `-> Result<V, E>`, `V` and `E` must be `Clone + Send + Sync + 'static`; any other return type
/// is the value `V` (same bounds) with `E = std::convert::Infallible`. `S` is
/// `herdless::MemoryStore<K, V>` unless `store` is given.
///
/// # Errors and panics
///
/// - `Result<V, E>`: the function's own errors are returned as they are and never cached (the
///   next call computes again). Callers coalesced onto one computation share its error, so the
///   error is cloned out of herdless's `Arc` — hence `E: Clone` (`anyhow::Error` is not `Clone`;
///   use `Arc<anyhow::Error>` or your own error type).
/// - herdless-side errors cannot be returned through the user's signature, so the generated
///   function **panics** with an explanation: `WaitTimeout` (another caller's computation took
///   longer than the contention wait, 30 s by default), `Panicked` (that computation panicked)
///   and `Busy` (only with `contention = Contention::FailFast`). To handle them, call the
///   companion's `.get(..)`.
/// - A plain `fn` uses herdless's blocking facade (no runtime needed); an `async fn` must be
///   awaited inside a Tokio runtime with the time driver (as for `herdless::Memoized`).
///
/// # Not supported (compile errors pointing at the cause)
///
/// Methods taking `self`, generic functions (type or lifetime parameters, `impl Trait`
/// anywhere in an argument type), borrowing argument or return types at any depth (`&str`,
/// `(u32, &str)`, `Option<&str>`, `Cow<str>`, `Foo<'_>`: the error names the owned type to write,
/// such as `String`, `Vec<u8>` or `Cow<'static, str>`; `&'static T` is accepted), an
/// `impl Trait` return type (`-> impl Trait`, `-> Result<impl Trait, E>`: return the concrete
/// type), `const`/`unsafe`/`extern` functions,
/// `Result` aliases with one parameter (write `Result<V, E>`), unknown or repeated arguments, a
/// missing TTL. Associated functions in `impl` blocks are not supported either (the generated
/// items are free functions).
#[proc_macro_attribute]
pub fn memoize_stampede(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as args::Args);
    let item = parse_macro_input!(item as syn::ItemFn);
    expand::expand(args, item)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
