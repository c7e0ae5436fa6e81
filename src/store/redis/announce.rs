//! Announcements for near tiers: every message the store's subscription receives, decoded from
//! its channel name, plus the subscription going down and coming back. A near tier registers a
//! [`Tap`] with [`RedisStore::tap`](super::RedisStore::tap) and drops its copies accordingly.

use std::sync::{Arc, Mutex, Weak};

/// What the store's subscription heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Announcement {
    /// A key of function `name` was written or invalidated; `key` is its MessagePack encoding
    /// (untrusted bytes: anyone allowed on the channel can publish).
    Entry { name: String, key: Vec<u8> },
    /// Function `name` got a new generation (`invalidate_all`).
    Function { name: String },
    /// The subscription is up (again): anything published while it was down was missed.
    Connected,
    /// The subscription is down: announcements may be lost until `Connected`.
    Disconnected,
    /// A writer's announcement was refused (its `PUBLISH` failed): anything may have changed
    /// without a message. Near tiers drop what they hold.
    Missed,
}

/// A near tier's hook; the store holds it weakly, so a dropped tier unregisters itself.
pub(crate) type Tap = Arc<dyn Fn(&Announcement) + Send + Sync>;

type WeakTap = Weak<dyn Fn(&Announcement) + Send + Sync>;

/// The hooks registered on one store.
#[derive(Default)]
pub(crate) struct Taps {
    taps: Mutex<Vec<WeakTap>>,
}

impl Taps {
    pub(crate) fn add(&self, tap: &Tap) {
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        taps.retain(|t| t.strong_count() > 0);
        taps.push(Arc::downgrade(tap));
    }

    pub(crate) fn is_empty(&self) -> bool {
        let taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        taps.iter().all(|t| t.strong_count() == 0)
    }

    pub(crate) fn announce(&self, a: &Announcement) {
        let live: Vec<Tap> = {
            let taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
            taps.iter().filter_map(Weak::upgrade).collect()
        };
        for tap in live {
            tap(a);
        }
    }

    /// A message on `channel` with `payload` ('0' = a lock released without a write: nothing to
    /// drop).
    pub(crate) fn message(&self, channel: &[u8], payload: &[u8]) {
        if payload == b"0" || self.is_empty() {
            return;
        }
        if let Some(a) = parse(channel) {
            self.announce(&a);
        }
    }
}

/// Decodes `<prefix>:{<hex(name)>.<generation>.<hex(key)>}:c` (an entry) or
/// `<prefix>:{<hex(name)>}:c` (a function); anything else (a barrier lock's channel, a foreign
/// message) is `None`.
pub(crate) fn parse(channel: &[u8]) -> Option<Announcement> {
    let open = channel.iter().position(|&b| b == b'{')?;
    let rest = channel.get(open + 1..)?;
    let inner = rest.strip_suffix(b"}:c")?;
    let parts: Vec<&[u8]> = inner.split(|&b| b == b'.').collect();
    let name = || String::from_utf8(unhex(parts[0])?).ok();
    match parts.len() {
        1 => Some(Announcement::Function { name: name()? }),
        3 => Some(Announcement::Entry {
            name: name()?,
            key: unhex(parts[2])?,
        }),
        _ => None,
    }
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::keys::KeySpace;

    #[test]
    fn channels_decode_back_to_what_they_name() {
        let space = KeySpace {
            prefix: "a:b".into(),
        };
        let keys = space.keys("fn.name", 7, &("k", 1u8)).unwrap();
        assert_eq!(
            parse(&keys.channel),
            Some(Announcement::Entry {
                name: "fn.name".into(),
                key: rmp_serde::to_vec(&("k", 1u8)).unwrap(),
            })
        );
        assert_eq!(
            parse(&space.generation_channel("f")),
            Some(Announcement::Function { name: "f".into() })
        );
        let barrier = space.barrier_keys("f", &1u32).unwrap();
        assert_eq!(parse(&barrier.channel), None);
        assert_eq!(parse(b"x:{zz}:c"), None);
        assert_eq!(parse(b"garbage"), None);
    }
}
