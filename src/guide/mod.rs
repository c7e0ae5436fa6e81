//! # The herdless user guide
//!
//! What to choose and why, in six chapters. The API reference is the rest of this crate's
//! documentation; the measured figures (runs, latencies, commands per call) are in the README,
//! each with the command that reproduces it. Every example in this guide is compiled by
//! `cargo test`, and those that need no server also run.
//!
//! 1. [Choosing a layer](layers): `memoize_stampede`, the attribute macro, or DiskCache's
//!    layers (`memoize`, `barrier`) composed by hand.
//! 2. [Choosing a store](stores): in process memory, Redis, a near cache over Redis, a Redis
//!    Cluster.
//! 3. [β: how early to refresh](beta): automatic by default; when to fix it.
//! 4. [Failure semantics](failures): errors, panics, cancelled callers, a store that is down.
//! 5. [Deploying on Redis](deploying_on_redis): connecting, ACL grants, Cluster, the near cache,
//!    what to watch.
//! 6. [Migrating](migrating) from `cached`'s `#[cached]`, from moka's `get_with`, and from
//!    DiskCache's recipes.

#[doc = include_str!("layers.md")]
pub mod layers {}

#[doc = include_str!("stores.md")]
pub mod stores {}

#[doc = include_str!("beta.md")]
pub mod beta {}

#[doc = include_str!("failures.md")]
pub mod failures {}

#[doc = include_str!("deploying_on_redis.md")]
pub mod deploying_on_redis {}

#[doc = include_str!("migrating.md")]
pub mod migrating {}
