//! Entry points into herdless's decoders of untrusted bytes, for the `cargo fuzz` targets in
//! `fuzz/` and the encoder/decoder round trips of `tests/codec_roundtrip.rs`. Built only with
//! the internal feature `fuzzing`: not public API, not covered by semver.
//!
//! Each hook calls the decoder the store itself uses (the Redis record's `decode`, the channel
//! parser, the disk record's header parser); what a hook adds is only the glue a store does
//! around it (the MessagePack value after a disk header, the key of an announcement).

#[cfg(feature = "redis")]
pub use crate::store::redis::fuzz_hooks::*;

#[cfg(feature = "disk")]
pub use crate::store::disk::fuzz_hooks::*;
