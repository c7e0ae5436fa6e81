//! Record bytes in the disk store's file (another process, another version, corruption):
//! anything but a record of ours is a miss, never a panic, and what decodes re-encodes.
#![no_main]

use herdless::__fuzz::{disk_record_decode, disk_record_encode, DiskHeader};
use libfuzzer_sys::fuzz_target;

fn check<V: serde::de::DeserializeOwned + serde::Serialize>(bytes: &[u8]) {
    if let Some((h, value)) = disk_record_decode::<V>(bytes) {
        // Header: magic 4, version 8, expiry 8, δ 8, keep-until 8 (format 2).
        assert!(bytes.len() >= 36);
        // The store never writes a keep-until before the expiry: encoding normalizes it.
        let h = DiskHeader {
            keep: h.keep.max(h.expiry),
            ..h
        };
        if let Some(v) = value {
            assert!(!h.tombstone);
            // Re-encoding is a fixed point (bytes, not values: NaN != NaN).
            let again = disk_record_encode(h, Some(&v)).expect("a decoded value encodes");
            let (h2, v2) = disk_record_decode::<V>(&again).expect("our own record");
            assert_eq!(h2, h);
            let thrice = disk_record_encode(h2, v2.as_ref()).unwrap();
            assert_eq!(thrice, again);
        } else if h.tombstone {
            let again = disk_record_encode::<V>(h, None).unwrap();
            assert_eq!(again.len(), 36);
            let (h2, v2) = disk_record_decode::<V>(&again).expect("our own tombstone");
            assert_eq!((h2, v2.is_none()), (h, true));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check::<String>(data);
    check::<Vec<u8>>(data);
    check::<(u64, Option<String>)>(data);
    check::<Vec<(u32, f32)>>(data);
});
