//! How a near tier learns that its copies went stale: the shared store's announcements (a
//! write, release or invalidation of a key; a new generation of a function; the subscription
//! going down or coming back), and the per-key epochs that keep a read racing an announcement
//! from being kept.

use super::epochs::NearStats;
use super::tier::{Inner, NearKeyRef};
use crate::store::redis::{Announcement, RedisStore, Tap};
use serde::de::DeserializeOwned;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// Hooks a near tier to its shared store's announcements. The tap holds the tier weakly: a
/// dropped tier stops listening.
/// Returns the hook (the tier must hold it) and whether the subscription is up now.
pub(super) fn subscribe<K, V>(shared: &RedisStore, near: Weak<Inner<K, V>>) -> (Tap, bool)
where
    K: Hash + Eq + Clone + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let tap: Tap = Arc::new(move |a: &Announcement| {
        let Some(near) = near.upgrade() else { return };
        on_announcement(&near, a);
    });
    let live = shared.tap(&tap);
    (tap, live)
}

fn on_announcement<K, V>(near: &Inner<K, V>, a: &Announcement)
where
    K: Hash + Eq + Clone + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    match a {
        Announcement::Entry { name, key } => {
            let Some(ns) = near.epochs.id(name) else {
                return;
            };
            // Bytes from the channel are untrusted: a key that does not decode is ignored.
            let Ok(key) = rmp_serde::from_slice::<K>(key) else {
                return;
            };
            near.epochs.bump(ns, &key);
            near.local.remove(&NearKeyRef { ns, key: &key });
            NearStats::inc(&near.stats.invalidations_received);
        }
        Announcement::Function { name } => {
            let Some(ns) = near.epochs.id(name) else {
                return;
            };
            near.epochs.bump_all();
            near.local.retain(|k, _| k.ns != ns);
            NearStats::inc(&near.stats.invalidations_received);
        }
        Announcement::Connected => {
            // Messages may have been lost while the subscription was down: drop everything.
            near.epochs.bump_all();
            near.local.clear();
            near.epochs.live.store(true, Ordering::Release);
            NearStats::inc(&near.stats.resyncs);
        }
        Announcement::Disconnected => near.epochs.live.store(false, Ordering::Release),
    }
}
