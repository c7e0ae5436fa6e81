//! Every encoder of bytes that herdless later reads back untrusted, round-tripped through its
//! decoder (issue 21 item 7): Redis records, pub/sub channels (announcements and the keys they
//! carry), disk records. The decoders are reached through `herdless::__fuzz` (internal feature
//! `fuzzing`), the same entry points the `cargo fuzz` targets in `fuzz/` drive.
//!
//! `cargo test --features fuzzing,disk --test codec_roundtrip`

use herdless::__fuzz::{self, Announced, DiskHeader};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Page {
    id: u64,
    title: String,
    tags: Vec<String>,
    score: Option<i32>,
    body: Vec<u8>,
}

fn page() -> impl Strategy<Value = Page> {
    (
        any::<u64>(),
        ".{0,40}",
        prop::collection::vec(".{0,8}", 0..5),
        any::<Option<i32>>(),
        prop::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(id, title, tags, score, body)| Page {
            id,
            title,
            tags,
            score,
            body,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn redis_records_round_trip(value in page(), delta in any::<u64>(), pttl in 1i64..1 << 40, now in any::<u64>()) {
        let bytes = __fuzz::redis_record_encode(&value, delta).unwrap();
        let e = __fuzz::redis_record_decode::<Page>(&bytes, pttl, now).unwrap().unwrap();
        prop_assert_eq!(e.value, value);
        prop_assert_eq!(e.delta_us, delta);
        prop_assert_eq!(e.expires_at, now.saturating_add((pttl as u64).saturating_mul(1_000_000)));
    }

    #[test]
    fn redis_records_of_another_type_or_truncated_are_rejected_not_panics(value in page(), cut in any::<prop::sample::Index>()) {
        let bytes = __fuzz::redis_record_encode(&value, 1).unwrap();
        // Another value type: a foreign record.
        prop_assert!(__fuzz::redis_record_decode::<(u8, bool)>(&bytes, 1000, 0).is_err());
        // Any strict prefix: never the value.
        let cut = cut.index(bytes.len());
        let short = __fuzz::redis_record_decode::<Page>(&bytes[..cut], 1000, 0);
        prop_assert!(short.is_err(), "{:?}", short.map(|e| e.map(|e| e.value)));
    }

    #[test]
    fn entry_channels_round_trip_with_their_keys(
        prefix in "[a-z:]{0,12}",
        name in ".{1,30}",
        generation in any::<u64>(),
        key in (any::<u32>(), ".{0,20}", prop::collection::vec(any::<u8>(), 0..16)),
    ) {
        let channel = __fuzz::entry_channel(&prefix, &name, generation, &key).unwrap();
        let Some(Announced::Entry { name: got, key: raw }) = __fuzz::announcement(&channel) else {
            return Err(TestCaseError::fail("not an entry announcement"));
        };
        prop_assert_eq!(got, name);
        prop_assert_eq!(__fuzz::announced_key::<(u32, String, Vec<u8>)>(&raw), Some(key));
    }

    #[test]
    fn function_channels_round_trip_and_barrier_channels_are_not_announcements(
        prefix in "[a-z:]{0,12}",
        name in ".{1,30}",
        key in any::<u64>(),
    ) {
        prop_assert_eq!(
            __fuzz::announcement(&__fuzz::function_channel(&prefix, &name)),
            Some(Announced::Function { name: name.clone() })
        );
        prop_assert_eq!(__fuzz::announcement(&__fuzz::barrier_channel(&prefix, &name, &key)), None);
    }

    #[test]
    fn string_keys_round_trip(key in ".{0,64}") {
        let channel = __fuzz::entry_channel("p", "f", 1, &key).unwrap();
        let Some(Announced::Entry { key: raw, .. }) = __fuzz::announcement(&channel) else {
            return Err(TestCaseError::fail("not an entry announcement"));
        };
        prop_assert_eq!(__fuzz::announced_key::<String>(&raw), Some(key));
    }

    #[test]
    fn disk_records_round_trip(
        value in page(),
        version in any::<u64>(),
        expiry in 0u64..1 << 63,
        delta_us in any::<u64>(),
    ) {
        let h = DiskHeader { version, expiry, delta_us, keep: expiry, tombstone: false };
        let bytes = __fuzz::disk_record_encode(h, Some(&value)).unwrap();
        prop_assert_eq!(__fuzz::disk_record_decode::<Page>(&bytes), Some((h, Some(value))));
        let dead = DiskHeader { tombstone: true, ..h };
        let bytes = __fuzz::disk_record_encode::<Page>(dead, None).unwrap();
        prop_assert_eq!(__fuzz::disk_record_decode::<Page>(&bytes), Some((dead, None)));
    }

    #[test]
    fn disk_records_truncated_never_yield_a_value(value in page(), cut in any::<prop::sample::Index>()) {
        let h = DiskHeader { version: 3, expiry: 5, delta_us: 7, keep: 9, tombstone: false };
        let bytes = __fuzz::disk_record_encode(h, Some(&value)).unwrap();
        let cut = cut.index(bytes.len());
        match __fuzz::disk_record_decode::<Page>(&bytes[..cut]) {
            // 36 bytes: magic 4, version 8, expiry 8, δ 8, keep-until 8 (disk format 2).
            None => prop_assert!(cut < 36, "a whole header parses"),
            Some((got, v)) => {
                prop_assert_eq!(got, h);
                prop_assert_eq!(v, None);
            }
        }
    }
}

#[test]
fn foreign_bytes_are_rejected() {
    assert!(__fuzz::redis_record_decode::<String>(b"garbage", 100, 0).is_err());
    assert!(
        __fuzz::redis_record_decode::<String>(b"garbage", 0, 0).is_err(),
        "foreign bytes are foreign whatever time they have left"
    );
    assert!(__fuzz::disk_record_decode::<String>(b"HLD").is_none());
    assert_eq!(__fuzz::announcement(b"x:{zz}:c"), None);
}
