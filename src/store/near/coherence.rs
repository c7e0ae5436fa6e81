//! How a near tier learns that its copies went stale: the shared store's announcements (a
//! write, release or invalidation of a key; a new generation of a function; the subscription
//! going down or coming back), and the per-key epochs that keep a read racing an announcement
//! from being kept.

use super::epochs::NearStats;
use super::tier::{Inner, NearKeyRef};
use crate::store::redis::{Announcement, Tap};
use serde::de::DeserializeOwned;
use std::hash::Hash;
use std::sync::{Arc, Weak};

/// Hooks a fully built near tier to its shared store's announcements (issue 18, finding 10:
/// hooked during construction, an announcement or a disconnect could meet a tier that did not
/// exist yet and be lost). The tap holds the tier weakly: a dropped tier stops listening. The
/// subscription state is read after the hook is registered and raised with `fetch_max`, so a
/// change racing this call is neither lost nor overwritten by an older state.
pub(super) fn subscribe<K, V>(near: &Arc<Inner<K, V>>)
where
    K: Hash + Eq + Clone + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let weak: Weak<Inner<K, V>> = Arc::downgrade(near);
    let tap: Tap = Arc::new(move |a: &Announcement| {
        let Some(near) = weak.upgrade() else { return };
        on_announcement(&near, a);
    });
    let tap = near.tap.get_or_init(|| tap);
    // Heartbeats every quarter of `max_stale`: while the subscription works, the verified time
    // stays well within `max_stale` and near hits stay hits.
    near.shared.want_heartbeat(near.max_stale / 4);
    let state = near.shared.tap(tap);
    near.epochs.observe(state);
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
            // The store marked its generation copy stale before this call (see the
            // subscriber): the next miss re-reads the generation, then the entry.
            near.epochs.bump_all();
            near.local.retain(|k, _| k.ns != ns);
            NearStats::inc(&near.stats.invalidations_received);
        }
        Announcement::Connected => {
            // Messages may have been lost while the subscription was down: drop everything.
            near.epochs.bump_all();
            near.local.clear();
            near.epochs.observe(near.shared.subscription_state());
            NearStats::inc(&near.stats.resyncs);
        }
        Announcement::Disconnected => near.epochs.observe(near.shared.subscription_state()),
        Announcement::Missed => {
            // A writer's announcement was refused somewhere in the fleet: anything may have
            // changed without a message.
            near.epochs.bump_all();
            near.local.clear();
            NearStats::inc(&near.stats.resyncs);
        }
    }
}
