//! Permissions the server refused a store (scripting, the subscription's channels) are not
//! refused for good: an administrator's fix, or an `ACL LOAD` that refused for a moment, takes
//! effect within [`PERMISSION_RECHECK`] (issue 21, item 2). The subscriber re-asks for its
//! channels itself (see `subscriber`); scripting is re-checked here and on every reconnect.

use super::stats::{RedisStats, Stats};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a store re-checks a permission the server refused it (scripting, or the
/// subscription's channels): an administrator's fix, or an `ACL LOAD` that refused for a
/// moment, takes effect within this (and at once on a reconnect).
pub(crate) const PERMISSION_RECHECK: Duration = Duration::from_secs(10);

/// Switches the store to plain commands (once per refusal; counted and warned about).
pub(super) fn refuse_scripts(stats: &RedisStats, flag: &AtomicBool, e: &redis::RedisError) {
    if !flag.swap(true, Ordering::AcqRel) {
        stats.scripts_refused.store(1, Ordering::Relaxed);
        Stats::inc(&stats.scripts_refusals);
        tracing::warn!(
            error = %e,
            "redis refused SCRIPT LOAD/EVALSHA (NOPERM): herdless caches and locks with \
             plain commands (GETRANGE, SET NX PX, a guarded release) and loses only the \
             fencing of writes until scripting is granted (re-checked every 10 s and on \
             reconnect); grant the user +evalsha +eval +script|load (or +@scripting)"
        );
    }
}

/// Whether the server refused this user a script call (`EVAL`/`EVALSHA`/`SCRIPT`), not
/// something the script itself did (a script's own refused `PUBLISH` is a `pcall`).
pub(super) fn refuses_scripting(e: &redis::RedisError) -> bool {
    if e.code() != Some("NOPERM") {
        return false;
    }
    let text = e.to_string().to_ascii_lowercase();
    ["'evalsha'", "'eval'", "'script|load'", "'script'"]
        .iter()
        .any(|c| text.contains(c))
}
