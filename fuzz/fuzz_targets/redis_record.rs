//! Bytes read back from Redis: anything but a record of ours is a miss, never a panic, and a
//! record that decodes re-encodes to the same bytes.
#![no_main]

use herdless::__fuzz::{redis_record_decode, redis_record_encode, MAX_VALUE_BYTES};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Page {
    id: u64,
    title: String,
    tags: Vec<String>,
    score: Option<i32>,
}

fn check<V: serde::de::DeserializeOwned + Serialize>(bytes: &[u8], pttl: i64) {
    if let Ok(Some(e)) = redis_record_decode::<V>(bytes, pttl, 1_000) {
        // A record past its expiry still decodes (served stale within a `stale_if_error`
        // grace; the engine tells expired from live by `expires_at`).
        assert!(bytes.len() <= MAX_VALUE_BYTES);
        // Re-encoding is a fixed point (bytes, not values: NaN != NaN).
        let again = redis_record_encode(&e.value, e.delta_us).expect("a decoded value encodes");
        let back = redis_record_decode::<V>(&again, pttl, 1_000)
            .unwrap()
            .unwrap();
        assert_eq!(back.delta_us, e.delta_us);
        assert_eq!(
            redis_record_encode(&back.value, back.delta_us).unwrap(),
            again
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the PTTL the read saw (including 0, -1, -2 and negatives).
    let (pttl, bytes) = match data.split_first() {
        Some((b, rest)) => ((*b as i8) as i64 * 1000 / 64, rest),
        None => (1000, data),
    };
    check::<String>(bytes, pttl);
    check::<Vec<u8>>(bytes, pttl);
    check::<(u64, String)>(bytes, pttl);
    check::<Option<Vec<u32>>>(bytes, pttl);
    check::<Page>(bytes, pttl);
    check::<f64>(bytes, pttl);
});
