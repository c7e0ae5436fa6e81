//! The checker: per-process histories in, violations of the documented bounds out. Pure (no
//! I/O, no clock), so it is tested on synthetic histories below.
//!
//! The model. A counter per key in a separate, fault-free `redis-server` is the database. A
//! writer bumps it (`INCR`, which gives the new value `w`) and then calls `invalidate(k)`,
//! `insert(k, w)` or `invalidate_all()` (after bumping every key). A reader's computation
//! returns the counter, so a read's value says which database state it reflects. Times are
//! `CLOCK_MONOTONIC` nanoseconds, one clock for every process of the machine, so
//! `write.end < read.start` means the write returned before the read was called, with no skew
//! to allow for.
//!
//! The rule. A read `R` of key `k` that returned `v` violates an `Ok` write `W` of `k` when
//! - `W` returned before `R` was called, by more than the allowance: `R.start − W.end > allowed`;
//! - `W` bumped the counter past `v`: `v < W.value`;
//! - and `v` is not the value of an `insert` that `W` did not precede: an insert `I` of `v`
//!   with `I.end > W.start` ran concurrently with `W` or after it, so last-writer-wins may
//!   legitimately leave `v` (each insert's value comes from its own `INCR`, so values name
//!   inserts uniquely).
//!
//! A `refresh(k)` returns a value computed after it was called (issue 18, item 7): it violates
//! every write whose `INCR` came before the call (`W.start < R.start`, failed writes
//! included: their `INCR` happened) with a value above the one returned, with no allowance.
//!
//! The allowance is the documented bound of the reading process:
//! - a process without a near tier: 0 (once `invalidate` returns, no process gets the old value
//!   from the store);
//! - a near tier, channel healthy: one message delay, given the stated allowance
//!   [`Bounds::near_healthy`];
//! - a near tier while a fault window is open (or within [`Bounds::recover`] of its end, the
//!   time a subscription needs to come back and drop the tier): `max_stale` plus that allowance;
//! - after an `invalidate_all`, any process (the README: "other processes see it when the
//!   announcement arrives, within 1 s without pub/sub"): one message delay while no fault is in
//!   force, else [`Bounds::generation_poll`] (or `max_stale`, if longer) plus that allowance.

use std::collections::HashMap;

/// What one history line records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    /// `refresh(k)`: a read that must reflect the database as of its call.
    Refresh,
    Invalidate,
    Insert,
    InvalidateAll,
}

impl Kind {
    pub fn is_read(self) -> bool {
        matches!(self, Kind::Read | Kind::Refresh)
    }
    pub fn code(self) -> char {
        match self {
            Kind::Read => 'R',
            Kind::Refresh => 'F',
            Kind::Invalidate => 'I',
            Kind::Insert => 'S',
            Kind::InvalidateAll => 'A',
        }
    }
    fn from_code(c: &str) -> Option<Kind> {
        Some(match c {
            "R" => Kind::Read,
            "F" => Kind::Refresh,
            "I" => Kind::Invalidate,
            "S" => Kind::Insert,
            "A" => Kind::InvalidateAll,
            _ => return None,
        })
    }
}

/// One operation of one process (an `invalidate_all` is one event per key it bumped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    pub proc: u32,
    /// The reading process has a near tier.
    pub near: bool,
    pub key: u32,
    /// A read: the value returned. A write: the counter after its `INCR`.
    pub value: u64,
    pub start: u64,
    pub end: u64,
    pub ok: bool,
}

impl Event {
    /// One history line.
    pub fn line(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {}",
            self.kind.code(),
            self.proc,
            self.near as u8,
            self.key,
            self.value,
            self.start,
            self.end,
            self.ok as u8
        )
    }
    /// Parses [`Event::line`]; `None` for a malformed line.
    pub fn parse(line: &str) -> Option<Event> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 8 {
            return None;
        }
        Some(Event {
            kind: Kind::from_code(f[0])?,
            proc: f[1].parse().ok()?,
            near: f[2] == "1",
            key: f[3].parse().ok()?,
            value: f[4].parse().ok()?,
            start: f[5].parse().ok()?,
            end: f[6].parse().ok()?,
            ok: f[7] == "1",
        })
    }
}

/// When a fault was in force (monotonic ns).
#[derive(Clone, Debug)]
pub struct Window {
    pub fault: String,
    pub start: u64,
    pub end: u64,
}

/// The documented bounds, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// The allowance for "one message delay" while the channel is healthy.
    pub near_healthy: u64,
    /// `NearStoreBuilder::max_stale` of the near readers.
    pub max_stale: u64,
    /// How long after a fault window the channel may still be down (reconnecting).
    pub recover: u64,
    /// How soon other processes see an `invalidate_all` without its announcement (1 s).
    pub generation_poll: u64,
}

/// A read that broke a bound.
#[derive(Clone, Debug)]
pub struct Violation {
    pub read: Event,
    /// The write it should have seen (of the writes it missed, the one it missed by most).
    pub write: Event,
    /// `read.start − write.end` (a refresh: `read.start − write.start`).
    pub gap: u64,
    pub allowed: u64,
    /// The fault window the write fell in, if any.
    pub during: Option<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |ns: u64| ns as f64 / 1e6;
        write!(
            f,
            "key {}: process {}{} {} {} (called at {}, returned at {}) after process {}'s {:?} to {} returned at {}: {:.1} ms late, allowed {:.1} ms{}",
            self.read.key,
            self.read.proc,
            if self.read.near { " (near)" } else { "" },
            if self.read.kind == Kind::Refresh { "refreshed" } else { "read" },
            self.read.value,
            self.read.start,
            self.read.end,
            self.write.proc,
            self.write.kind,
            self.write.value,
            self.write.end,
            ms(self.gap),
            ms(self.allowed),
            match &self.during {
                Some(w) => format!(" (during {w})"),
                None => " (no fault)".to_string(),
            }
        )
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub reads_checked: u64,
    pub near_reads_checked: u64,
    pub reads_failed: u64,
    pub writes_ok: u64,
    pub writes_failed: u64,
    pub violations: Vec<Violation>,
}

impl Report {
    /// Violations per fault window name (`none` outside every window).
    pub fn by_fault(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for v in &self.violations {
            *m.entry(v.during.clone().unwrap_or_else(|| "none".into()))
                .or_insert(0) += 1;
        }
        m
    }
    /// Violations per kind of reader (`near` / `plain`) and kind of missed write.
    pub fn by_kind(&self) -> Vec<(String, usize)> {
        let mut m: HashMap<String, usize> = HashMap::new();
        for v in &self.violations {
            let reader = if v.read.near { "near" } else { "plain" };
            let op = if v.read.kind == Kind::Refresh {
                "refresh"
            } else {
                "read"
            };
            *m.entry(format!("{reader} {op}/{:?}", v.write.kind))
                .or_insert(0) += 1;
        }
        let mut out: Vec<_> = m.into_iter().collect();
        out.sort();
        out
    }
    /// The worst gap among the violations, in ns.
    pub fn worst_gap(&self) -> u64 {
        self.violations.iter().map(|v| v.gap).max().unwrap_or(0)
    }
}

/// Checks every read of `events` against the writes of `events`.
pub fn check(events: &[Event], windows: &[Window], b: Bounds) -> Report {
    let mut r = Report::default();
    // Ok writes per key, sorted by value (the counter): the writes a read of `v` may have
    // missed are exactly those with a value above `v`.
    let mut writes: HashMap<u32, Vec<&Event>> = HashMap::new();
    // Inserts per (key, value).
    let mut inserts: HashMap<(u32, u64), &Event> = HashMap::new();
    // Every write, failed ones included (their `INCR` happened), for the refresh rule.
    let mut bumps: HashMap<u32, Vec<&Event>> = HashMap::new();
    for e in events.iter().filter(|e| !e.kind.is_read()) {
        bumps.entry(e.key).or_default().push(e);
        if !e.ok {
            r.writes_failed += 1;
            continue;
        }
        r.writes_ok += 1;
        writes.entry(e.key).or_default().push(e);
        if e.kind == Kind::Insert {
            inserts.insert((e.key, e.value), e);
        }
    }
    for w in writes.values_mut().chain(bumps.values_mut()) {
        w.sort_by_key(|e| e.value);
    }
    let window_of = |t: u64| {
        windows
            .iter()
            .find(|w| t + b.near_healthy >= w.start && t <= w.end + b.recover)
    };
    for read in events.iter().filter(|e| e.kind.is_read()) {
        if !read.ok {
            r.reads_failed += 1;
            continue;
        }
        r.reads_checked += 1;
        if read.near {
            r.near_reads_checked += 1;
        }
        let mut worst: Option<Violation> = None;
        if read.kind == Kind::Refresh {
            let bs = bumps.get(&read.key).map(Vec::as_slice).unwrap_or(&[]);
            let first_above = bs.partition_point(|w| w.value <= read.value);
            // The earliest-started write it missed is the one it missed by most.
            if let Some(w) = bs[first_above..]
                .iter()
                .filter(|w| w.start < read.start)
                .min_by_key(|w| w.start)
            {
                worst = Some(Violation {
                    read: read.clone(),
                    write: (*w).clone(),
                    gap: read.start - w.start,
                    allowed: 0,
                    during: window_of(w.start).map(|d| d.fault.clone()),
                });
            }
        }
        let ws = writes.get(&read.key).map(Vec::as_slice).unwrap_or(&[]);
        let first_above = ws.partition_point(|w| w.value <= read.value);
        for w in &ws[first_above..] {
            if w.end >= read.start {
                continue; // not returned before the read was called
            }
            let gap = read.start - w.end;
            let during = window_of(w.end);
            let all = w.kind == Kind::InvalidateAll;
            let allowed = match (read.near || all, during) {
                (false, _) => 0,
                (true, None) => b.near_healthy,
                (true, Some(_)) if all => {
                    b.generation_poll
                        .max(if read.near { b.max_stale } else { 0 })
                        + b.near_healthy
                }
                (true, Some(_)) => b.max_stale + b.near_healthy,
            };
            if gap <= allowed {
                continue;
            }
            if let Some(i) = inserts.get(&(read.key, read.value)) {
                if i.end > w.start {
                    continue; // the insert of `v` did not precede `w`
                }
            }
            if worst
                .as_ref()
                .is_none_or(|x| gap - allowed > x.gap - x.allowed)
            {
                worst = Some(Violation {
                    read: read.clone(),
                    write: (*w).clone(),
                    gap,
                    allowed,
                    during: during.map(|d| d.fault.clone()),
                });
            }
        }
        r.violations.extend(worst);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const B: Bounds = Bounds {
        near_healthy: 100 * MS,
        max_stale: 300 * MS,
        recover: 2000 * MS,
        generation_poll: 1000 * MS,
    };

    fn ev(kind: Kind, near: bool, value: u64, start_ms: u64, end_ms: u64) -> Event {
        Event {
            kind,
            proc: if kind.is_read() { 1 } else { 9 },
            near,
            key: 7,
            value,
            start: start_ms * MS,
            end: end_ms * MS,
            ok: true,
        }
    }

    #[test]
    fn a_stale_read_after_an_invalidation_is_caught_with_the_write_and_the_gap() {
        let h = [
            ev(Kind::Invalidate, false, 5, 1000, 1010),
            // Called 1 ms after the invalidation returned, and got the old value 4.
            ev(Kind::Read, false, 4, 1011, 1012),
            // A fresh read is fine, and so is an old one that overlapped the invalidation.
            ev(Kind::Read, false, 5, 1011, 1012),
            ev(Kind::Read, false, 4, 1005, 1012),
        ];
        let r = check(&h, &[], B);
        assert_eq!(r.reads_checked, 3);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        let v = &r.violations[0];
        assert_eq!((v.read.value, v.write.value), (4, 5));
        assert_eq!((v.gap, v.allowed), (MS, 0));
        assert!(v.to_string().contains("1.0 ms late"), "{v}");
    }

    #[test]
    fn near_reads_get_one_message_delay_healthy_and_max_stale_during_a_fault() {
        let w = ev(Kind::Invalidate, false, 5, 1000, 1010);
        let healthy_ok = ev(Kind::Read, true, 4, 1010 + 100, 1111);
        let healthy_late = ev(Kind::Read, true, 4, 1010 + 101, 1112);
        let r = check(&[w.clone(), healthy_ok, healthy_late], &[], B);
        assert_eq!(r.violations.len(), 1);
        assert_eq!(r.violations[0].gap, 101 * MS);
        assert_eq!(r.violations[0].during, None);

        let fault = [Window {
            fault: "blackhole".into(),
            start: 900 * MS,
            end: 950 * MS,
        }];
        let within = ev(Kind::Read, true, 4, 1010 + 400, 1500);
        let beyond = ev(Kind::Read, true, 4, 1010 + 401, 1500);
        let r = check(&[w, within, beyond], &fault, B);
        assert_eq!(r.violations.len(), 1);
        assert_eq!(r.violations[0].allowed, 400 * MS);
        assert_eq!(r.violations[0].during.as_deref(), Some("blackhole"));
        assert_eq!(r.by_fault()["blackhole"], 1);
    }

    #[test]
    fn other_processes_see_an_invalidate_all_within_one_message_delay_or_the_poll_bound() {
        let w = ev(Kind::InvalidateAll, false, 5, 1000, 1010);
        let h = [
            w.clone(),
            ev(Kind::Read, false, 4, 1010 + 100, 1200),
            ev(Kind::Read, false, 4, 1010 + 101, 1200),
        ];
        let r = check(&h, &[], B);
        assert_eq!(r.violations.len(), 1);
        assert_eq!(r.by_kind(), [("plain read/InvalidateAll".to_string(), 1)]);
        let fault = [Window {
            fault: "FLUSHALL".into(),
            start: 1000 * MS,
            end: 1000 * MS,
        }];
        let h = [
            w,
            ev(Kind::Read, false, 4, 1010 + 1100, 3000),
            ev(Kind::Read, false, 4, 1010 + 1101, 3000),
        ];
        let r = check(&h, &fault, B);
        assert_eq!(r.violations.len(), 1);
        assert_eq!(r.violations[0].allowed, 1100 * MS);
    }

    #[test]
    fn a_refresh_must_reflect_every_write_begun_before_it_was_called() {
        let mut failed = ev(Kind::Invalidate, false, 5, 1000, 1300);
        failed.ok = false;
        let h = [
            failed,
            // Called after the INCR of 5 (at the write's start), before the write returned.
            ev(Kind::Refresh, false, 4, 1100, 1150),
            ev(Kind::Refresh, false, 5, 1100, 1150),
            // A plain read at the same time may still get 4.
            ev(Kind::Read, false, 4, 1100, 1150),
        ];
        let r = check(&h, &[], B);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert_eq!(r.violations[0].read.kind, Kind::Refresh);
        assert_eq!(r.violations[0].gap, 100 * MS);
        assert!(r.violations[0].to_string().contains("refreshed 4"));
    }

    #[test]
    fn an_insert_that_did_not_precede_the_write_may_win() {
        // Insert of 4 overlapping the invalidation (of 5): the store may keep 4.
        let overlapping = [
            ev(Kind::Insert, false, 4, 1000, 1020),
            ev(Kind::Invalidate, false, 5, 1005, 1010),
            ev(Kind::Read, false, 4, 1100, 1101),
        ];
        assert!(check(&overlapping, &[], B).violations.is_empty());
        // Insert of 4 that returned before the invalidation started: reading 4 is stale.
        let preceding = [
            ev(Kind::Insert, false, 4, 990, 995),
            ev(Kind::Invalidate, false, 5, 1005, 1010),
            ev(Kind::Read, false, 4, 1100, 1101),
        ];
        assert_eq!(check(&preceding, &[], B).violations.len(), 1);
    }

    #[test]
    fn failed_operations_bind_nothing_and_lines_round_trip() {
        let mut w = ev(Kind::InvalidateAll, false, 5, 1000, 1010);
        w.ok = false;
        let mut failed_read = ev(Kind::Read, false, 1, 1011, 1012);
        failed_read.ok = false;
        let h = [w, ev(Kind::Read, false, 4, 1011, 1012), failed_read];
        let r = check(&h, &[], B);
        assert!(r.violations.is_empty());
        assert_eq!(
            (r.writes_failed, r.reads_failed, r.reads_checked),
            (1, 1, 1)
        );
        for e in &h {
            assert_eq!(Event::parse(&e.line()).as_ref(), Some(e));
        }
        assert_eq!(Event::parse("R 1 0 2"), None);
    }
}
