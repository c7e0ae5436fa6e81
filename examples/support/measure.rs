//! What `landing_page` measures per strategy: a latency histogram, the body's run intervals
//! (for runs and peak concurrency), a timeline for the charts, and the JSON a worker process
//! sends its parent under `--procs`.
//!
//! Included by `examples/landing_page.rs` with `#[path = "support/measure.rs"] mod measure;`.

/// Latency histogram: log-linear buckets (64 per power of two, < 1.6 % error), exact max.
pub struct Histogram {
    pub counts: Vec<u64>,
    pub max_ns: u64,
    pub total: u64,
}

const SUB: u64 = 64;

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; 64 * SUB as usize],
            max_ns: 0,
            total: 0,
        }
    }
    pub fn index(ns: u64) -> usize {
        if ns < SUB {
            return ns as usize;
        }
        let exp = 63 - ns.leading_zeros() as u64; // ≥ 6
        let sub = (ns >> (exp - 6)) - SUB; // 0..64
        ((exp - 5) * SUB + sub) as usize
    }
    pub fn lower_bound(idx: usize) -> u64 {
        let idx = idx as u64;
        if idx < SUB {
            return idx;
        }
        let exp = idx / SUB + 5;
        let sub = idx % SUB;
        (SUB + sub) << (exp - 6)
    }
    pub fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.max_ns = self.max_ns.max(ns);
        self.total += 1;
    }
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.max_ns = self.max_ns.max(other.max_ns);
        self.total += other.total;
    }
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let target = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                let lo = Self::lower_bound(i);
                let hi = Self::lower_bound(i + 1).max(lo + 1);
                return ((lo + hi) as f64 / 2.0).min(self.max_ns as f64) / 1e6;
            }
        }
        self.max_ns as f64 / 1e6
    }
}

/// One strategy's measurements from one process (or merged from several).
pub struct Raw {
    pub hist: Histogram,
    pub slow: u64,
    pub intervals: Vec<(u64, u64)>,
    pub duration_s: f64,
    /// Wall-clock ns when the run started (the earliest, once merged).
    pub started_ns: u64,
    /// (wall-clock ns of a 1 ms bucket, slowest call in it in ns), per thread.
    pub timeline: Vec<(u64, u64)>,
    /// Redis requests that failed or timed out (0 for the memory store).
    pub store_errors: u64,
}

impl Raw {
    pub fn to_json(&self) -> String {
        let buckets: Vec<String> = self
            .hist
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| format!("[{i},{c}]"))
            .collect();
        let intervals: Vec<String> = self
            .intervals
            .iter()
            .map(|(a, b)| format!("[{a},{b}]"))
            .collect();
        let timeline: Vec<String> = self
            .timeline
            .iter()
            .map(|(t, l)| format!("[{t},{l}]"))
            .collect();
        format!(
            "{{\"buckets\":[{}],\"max_ns\":{},\"slow\":{},\"intervals\":[{}],\"duration_s\":{},\"started_ns\":{},\"timeline\":[{}],\"store_errors\":{}}}",
            buckets.join(","),
            self.hist.max_ns,
            self.slow,
            intervals.join(","),
            self.duration_s,
            self.started_ns,
            timeline.join(","),
            self.store_errors
        )
    }

    pub fn from_json(line: &str) -> Option<Raw> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let mut hist = Histogram::new();
        for b in v["buckets"].as_array()? {
            let (i, c) = (b[0].as_u64()? as usize, b[1].as_u64()?);
            *hist.counts.get_mut(i)? += c;
            hist.total += c;
        }
        hist.max_ns = v["max_ns"].as_u64()?;
        let intervals = v["intervals"]
            .as_array()?
            .iter()
            .filter_map(|p| Some((p[0].as_u64()?, p[1].as_u64()?)))
            .collect();
        let timeline = v["timeline"]
            .as_array()?
            .iter()
            .filter_map(|p| Some((p[0].as_u64()?, p[1].as_u64()?)))
            .collect();
        Some(Raw {
            hist,
            slow: v["slow"].as_u64()?,
            intervals,
            duration_s: v["duration_s"].as_f64()?,
            started_ns: v["started_ns"].as_u64()?,
            timeline,
            store_errors: v["store_errors"].as_u64().unwrap_or(0),
        })
    }

    pub fn merge(&mut self, other: Raw) {
        self.hist.merge(&other.hist);
        self.slow += other.slow;
        self.intervals.extend(other.intervals);
        self.duration_s = self.duration_s.max(other.duration_s);
        self.started_ns = self.started_ns.min(other.started_ns);
        self.timeline.extend(other.timeline);
        self.store_errors += other.store_errors;
    }

    /// The most executions that overlapped in time (across processes: wall-clock intervals).
    pub fn peak(&self) -> u64 {
        let mut events: Vec<(u64, i64)> = Vec::with_capacity(self.intervals.len() * 2);
        for &(a, b) in &self.intervals {
            events.push((a, 1));
            events.push((b, -1));
        }
        // Ends sort before starts at the same instant: back-to-back runs do not overlap.
        events.sort();
        let (mut now, mut peak) = (0i64, 0i64);
        for (_, d) in events {
            now += d;
            peak = peak.max(now);
        }
        peak as u64
    }
}
