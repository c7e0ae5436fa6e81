//! Pub/sub channel names (anyone allowed on the channel can publish) and the keys they carry:
//! parsing never panics, and what parses re-encodes to a channel that parses the same.
#![no_main]

use herdless::__fuzz::{announced_key, announcement, entry_channel, function_channel, Announced};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match announcement(data) {
        Some(Announced::Function { name }) => {
            let again = function_channel("p", &name);
            assert_eq!(
                announcement(&again),
                Some(Announced::Function { name: name.clone() })
            );
        }
        Some(Announced::Entry { name, key }) => {
            // The near tier decodes the key as its own key type; any of these may fail.
            let _ = announced_key::<u64>(&key);
            let _ = announced_key::<(u32, String)>(&key);
            let _ = announced_key::<Vec<u8>>(&key);
            if let Some(k) = announced_key::<String>(&key) {
                let again = entry_channel("p", &name, 7, &k).expect("a String key encodes");
                match announcement(&again) {
                    Some(Announced::Entry { name: n, key: raw }) => {
                        assert_eq!(n, name);
                        assert_eq!(announced_key::<String>(&raw), Some(k));
                    }
                    other => panic!("re-encoded channel parsed as {other:?}"),
                }
            }
        }
        None => {}
    }
    // The raw bytes as a key, too (a channel's hex part is only one way to reach the decoder).
    let _ = announced_key::<(u32, String, Vec<u8>)>(data);
});
