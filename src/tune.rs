//! Closed-form advisor for XFetch's `beta`: what a given β costs at a given request rate.
//!
//! The model (derived in `paper-notes.md`, section 6 "Tuning β"): callers arrive as a Poisson
//! process at `rate_per_s`; a value lives `ttl` after it is written; each call at `gap` before
//! expiry refreshes early with probability `exp(−gap / (δβ))` (see [`crate::xfetch`]), and every
//! call after expiry finds no value. A refresh takes `delta`.
//!
//! [`advise`] answers, for one β and *without* coordination (every trigger recomputes):
//! - `expected_lead`: mean time before expiry at which the first refresh of a cycle starts
//!   (`E[max(G, 0)]`, a cycle that ends in a hard miss has lead 0). For a long TTL it is
//!   `δβ(ln(rδβ) + γ)` plus a small correction; the advisor uses the exact expression, which also
//!   accounts for the value existing only for `ttl`.
//! - `expected_stampede`: mean number of recomputations that start between one write of the value
//!   and the next, i.e. from the first trigger until its result lands `delta` later. It tends to
//!   `e^(1/β)` when `rδβ·e^(−1/β)` is large; the advisor gives the exact mean for finite rates.
//! - `hard_miss_probability`: the value expires before any early trigger.
//! - `late_refresh_probability`: the first refresh lands after expiry (callers meet an expired
//!   value: with herdless's coordination they wait, without it they recompute too).
//! - `expected_cycle`: mean time between the writes that start and end a cycle.
//! - `overlap_probability`: how likely the isolated-cycle assumption behind `expected_stampede`
//!   fails without coordination (a new trigger while the last stampede is still landing).
//!
//! With herdless's try-lock every cycle runs the computation exactly once; lead, hard-miss and
//! late-refresh probabilities and cycle length are the same as above.
//!
//! [`beta_for_lead`] inverts the lead: which β starts refreshes `target_lead` before expiry.
//!
//! ```
//! use herdless::tune::{advise, beta_for_lead, Workload};
//! use std::time::Duration;
//!
//! let w = Workload {
//!     rate_per_s: 1000.0,
//!     delta: Duration::from_millis(50),
//!     ttl: Duration::from_secs(60),
//! };
//! let a = advise(&w, 1.0)?;
//! assert!((a.expected_stampede - std::f64::consts::E).abs() < 0.01);
//! // δβ(ln(rδβ) + γ) = 0.05 s · (ln 50 + 0.5772) ≈ 224 ms
//! assert_eq!(a.expected_lead.as_millis(), 224);
//!
//! let beta = beta_for_lead(1000.0, Duration::from_millis(50), Duration::from_millis(224))?;
//! assert!((beta - 1.0).abs() < 0.01);
//! # Ok::<(), herdless::tune::TuneError>(())
//! ```

use std::fmt;
use std::time::Duration;

use crate::xfetch::theory::{self, ein, ex1, long_ttl_lead};
/// The Euler–Mascheroni constant γ (defined in [`crate::xfetch::theory`]).
///
/// ```
/// assert!((herdless::tune::EULER_GAMMA - 0.5772).abs() < 1e-4);
/// ```
pub const EULER_GAMMA: f64 = theory::EULER_GAMMA;

/// Smallest β [`beta_for_lead`] will return.
///
/// Below it the uncoordinated stampede `e^(1/β)` exceeds 4.8·10⁸ and the first trigger almost
/// never comes a full `delta` before expiry unless `rδβ·e^(−1/β)` is huge, so the refresh lands
/// late. [`advise`] accepts any β ≥ 0.
///
/// ```
/// assert!(herdless::tune::MIN_BETA < herdless::tune::MAX_BETA);
/// ```
pub const MIN_BETA: f64 = theory::BETA_MIN;

/// Largest β [`beta_for_lead`] will return.
///
/// Above it a call one `delta` before expiry triggers with probability over 95 %: XFetch is no
/// longer probabilistic but "refresh whenever inside a fixed window", and that window is better
/// configured directly.
///
/// ```
/// assert_eq!(herdless::tune::MAX_BETA, 20.0);
/// ```
pub const MAX_BETA: f64 = theory::BETA_MAX;

/// The traffic seen by one key.
///
/// ```
/// use herdless::tune::Workload;
/// use std::time::Duration;
/// let w = Workload { rate_per_s: 70_000.0, delta: Duration::from_millis(200), ttl: Duration::from_secs(1) };
/// assert!(herdless::tune::advise(&w, 1.0).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workload {
    /// Mean request rate for the key, calls per second (Poisson arrivals). Must be positive.
    pub rate_per_s: f64,
    /// How long one recomputation takes (`δ`). Must be non-zero.
    pub delta: Duration,
    /// How long a written value stays valid. Must be non-zero.
    pub ttl: Duration,
}

/// What one β costs for a [`Workload`]; see the [module docs](self) for the definitions.
///
/// ```
/// use herdless::tune::{advise, Workload};
/// use std::time::Duration;
/// let w = Workload { rate_per_s: 10.0, delta: Duration::from_millis(200), ttl: Duration::from_secs(1) };
/// let a = advise(&w, 0.5)?;
/// // rδβ = 1: one caller per δβ is too few, a third of the cycles end in a hard miss.
/// assert!(a.hard_miss_probability > 0.3);
/// # Ok::<(), herdless::tune::TuneError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Advice {
    /// The β this advice is for.
    pub beta: f64,
    /// `E[max(G, 0)]`: mean lead before expiry at which a cycle's first refresh starts.
    pub expected_lead: Duration,
    /// Mean recomputations per cycle without coordination (first trigger until it lands).
    pub expected_stampede: f64,
    /// Probability that no early trigger comes before expiry.
    pub hard_miss_probability: f64,
    /// Probability that the first refresh lands after expiry (`P(G < delta)`).
    pub late_refresh_probability: f64,
    /// `expected_lead / ttl`: the share of each value's lifetime given up to early refresh.
    pub ttl_fraction_lost: f64,
    /// Mean time from the write that starts a cycle to the write that ends it:
    /// `ttl − E[G] + delta`. With coordination each cycle runs the computation once, so its
    /// inverse is the refresh rate.
    pub expected_cycle: Duration,
    /// Probability that a call triggers within `delta` after a write. Without coordination the
    /// other computations of a stampede are still landing then, so cycles are not isolated and
    /// `expected_stampede` (which assumes they are) stops describing what happens; keep this
    /// small (a long `ttl` relative to `δβ·ln(rδβ)`) or use coordination.
    pub overlap_probability: f64,
}

/// Why an input was refused or no β fits.
///
/// ```
/// use herdless::tune::{advise, TuneError, Workload};
/// use std::time::Duration;
/// let w = Workload { rate_per_s: -1.0, delta: Duration::from_millis(1), ttl: Duration::from_secs(1) };
/// let err = advise(&w, 1.0).unwrap_err();
/// assert!(matches!(err, TuneError::InvalidField { field: "rate_per_s", .. }));
/// assert!(err.to_string().contains("rate_per_s"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum TuneError {
    /// An input is out of its domain.
    InvalidField {
        /// The name of the offending field or argument.
        field: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// No β in [`MIN_BETA`]`..=`[`MAX_BETA`] gives the requested lead at this rate and delta.
    NoSolution {
        /// The lead that was asked for.
        target_lead: Duration,
        /// The lead at [`MIN_BETA`].
        min_lead: Duration,
        /// The lead at [`MAX_BETA`].
        max_lead: Duration,
    },
}

impl fmt::Display for TuneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TuneError::InvalidField { field, reason } => write!(f, "invalid {field}: {reason}"),
            TuneError::NoSolution {
                target_lead,
                min_lead,
                max_lead,
            } => write!(
                f,
                "no beta in [{MIN_BETA}, {MAX_BETA}] gives target_lead {target_lead:?} at this \
                 rate_per_s and delta: reachable leads are {min_lead:?} ..= {max_lead:?}"
            ),
        }
    }
}

impl std::error::Error for TuneError {}

fn invalid(field: &'static str, reason: &'static str) -> TuneError {
    TuneError::InvalidField { field, reason }
}

pub(crate) fn check_rate(rate_per_s: f64) -> Result<f64, TuneError> {
    if rate_per_s.is_finite() && rate_per_s > 0.0 {
        Ok(rate_per_s)
    } else {
        Err(invalid("rate_per_s", "must be positive and finite"))
    }
}

pub(crate) fn check_nonzero(field: &'static str, d: Duration) -> Result<f64, TuneError> {
    if d.is_zero() {
        Err(invalid(field, "must be non-zero"))
    } else {
        Ok(d.as_secs_f64())
    }
}

pub(crate) fn check_beta(beta: f64) -> Result<f64, TuneError> {
    if beta.is_finite() && beta >= 0.0 {
        Ok(beta)
    } else {
        Err(invalid("beta", "must be finite and >= 0"))
    }
}

/// Computes the [`Advice`] for `beta` on workload `w` (uncoordinated XFetch).
///
/// `beta = 0` is plain TTL: lead 0, every cycle a hard miss, stampede `1 + rδ`.
///
/// # Errors
/// [`TuneError::InvalidField`] for a non-positive or non-finite rate, a zero `delta` or `ttl`,
/// or a negative, NaN or infinite `beta`.
///
/// ```
/// use herdless::tune::{advise, Workload};
/// use std::time::Duration;
/// let w = Workload { rate_per_s: 100.0, delta: Duration::from_millis(100), ttl: Duration::from_secs(30) };
/// let plain = advise(&w, 0.0)?;
/// assert!((plain.expected_stampede - 11.0).abs() < 1e-9); // 1 + rδ
/// let xf = advise(&w, 2.0)?;
/// assert!(xf.expected_stampede < 1.7 && xf.hard_miss_probability < 1e-8);
/// # Ok::<(), herdless::tune::TuneError>(())
/// ```
pub fn advise(w: &Workload, beta: f64) -> Result<Advice, TuneError> {
    let r = check_rate(w.rate_per_s)?;
    let delta = check_nonzero("delta", w.delta)?;
    let ttl = check_nonzero("ttl", w.ttl)?;
    let beta = check_beta(beta)?;
    let m = if beta == 0.0 {
        Moments {
            lead: 0.0,
            stampede: 1.0 + r * delta,
            hard_miss: 1.0,
            late: 1.0,
            overlap: 0.0,
        }
    } else {
        moments(r, delta, ttl, beta)
    };
    Ok(Advice {
        beta,
        expected_lead: Duration::from_secs_f64(m.lead.clamp(0.0, ttl)),
        expected_stampede: m.stampede,
        hard_miss_probability: m.hard_miss,
        late_refresh_probability: m.late,
        ttl_fraction_lost: (m.lead / ttl).clamp(0.0, 1.0),
        // E[G] = E[max(G, 0)] − E[max(−G, 0)], and after expiry the first call comes after Exp(r).
        expected_cycle: Duration::from_secs_f64(ttl - m.lead + delta + m.hard_miss / r),
        overlap_probability: m.overlap,
    })
}

/// Finds the β whose expected lead, for a long TTL, is `target_lead`.
///
/// Solves `δβ(ln(rδβ) + γ + E₁(rδβ)) = target_lead`, the exact `E[max(G, 0)]` as `ttl → ∞`
/// (`E₁` is the exponential integral; the term is below 10⁻³ once `rδβ > 5`, leaving the
/// familiar `δβ(ln(rδβ) + γ)`). The left side grows strictly with β for every rate, so the answer
/// is unique; bisection on `ln β` finds it. Check the result with [`advise`] when the lead is a
/// large part of the TTL.
///
/// # Errors
/// [`TuneError::InvalidField`] for a bad rate, a zero `delta` or a zero `target_lead`;
/// [`TuneError::NoSolution`] when the target lies outside the leads reachable with
/// β in [`MIN_BETA`]`..=`[`MAX_BETA`], e.g. a long lead at a very low rate.
///
/// ```
/// use herdless::tune::{beta_for_lead, TuneError};
/// use std::time::Duration;
/// let d = Duration::from_millis(200);
/// // DiskCache's case: ~70k calls/s, 200 ms function. A 300 ms lead needs a small β.
/// let beta = beta_for_lead(70_000.0, d, Duration::from_millis(300))?;
/// assert!(beta > 0.1 && beta < 0.2);
/// // One call a minute cannot trigger early a minute ahead with any sane β.
/// assert!(matches!(
///     beta_for_lead(1.0 / 60.0, d, Duration::from_secs(60)),
///     Err(TuneError::NoSolution { .. })
/// ));
/// # Ok::<(), TuneError>(())
/// ```
pub fn beta_for_lead(
    rate_per_s: f64,
    delta: Duration,
    target_lead: Duration,
) -> Result<f64, TuneError> {
    let r = check_rate(rate_per_s)?;
    let delta = check_nonzero("delta", delta)?;
    let target = check_nonzero("target_lead", target_lead)?;
    let lead = |beta: f64| long_ttl_lead(r, delta * beta);
    let (lo_lead, hi_lead) = (lead(MIN_BETA), lead(MAX_BETA));
    if !(lo_lead..=hi_lead).contains(&target) {
        return Err(TuneError::NoSolution {
            target_lead,
            min_lead: Duration::from_secs_f64(lo_lead),
            max_lead: Duration::from_secs_f64(hi_lead),
        });
    }
    Ok(theory::solve_beta(r, delta, target))
}

struct Moments {
    lead: f64,
    stampede: f64,
    hard_miss: f64,
    late: f64,
    overlap: f64,
}

/// The exact moments for `beta > 0` (seconds). Notation of the paper notes: `s = δβ`,
/// `K = rs`, `c = K·e^(−T/s)`, `A0 = K − c` (triggers expected before expiry),
/// `a = K·e^(−1/β) − c` (triggers expected before gap δ), `u = Λ(G, T) ~ Exp(1)`.
fn moments(r: f64, delta: f64, ttl: f64, beta: f64) -> Moments {
    let s = delta * beta;
    let k = r * s;
    let ln_k = k.ln();
    let t_over_s = ttl / s;
    let ln_c = ln_k - t_over_s;
    let c = ln_c.exp();
    let a0 = -k * (-t_over_s).exp_m1();
    let w = (-1.0 / beta).exp();
    // a = Λ(δ, T), m = a + c, d = min(δ, T).
    let (a, m, ln_m, d) = if delta < ttl {
        let a = -k * w * (-(ttl - delta) / s).exp_m1();
        (a, k * w, ln_k - 1.0 / beta, delta)
    } else {
        (0.0, c, ln_c, ttl)
    };

    // Lead: T − s·e^c·(E₁(c) − E₁(K)), written without cancellation when c ≤ 1.
    let tail = s * (c - k).exp() * ex1(k, ln_k);
    let lead = if c <= 1.0 {
        // e^c·E₁(c) = e^c(−γ − ln c + Ein(c)) and −ln c = T/s − ln K: the T terms cancel exactly.
        -ttl * c.exp_m1() + s * c.exp() * (EULER_GAMMA + ln_k - ein(c)) + tail
    } else {
        ttl - s * ex1(c, ln_c) + tail
    };

    // Stampede: E[Λ(G − δ, T)], split at G = δ and G = 0.
    let part1 = if a > 0.0 && w > 0.0 {
        let i0 = -(-a).exp_m1();
        let i1 = if a < 1e-4 {
            a * a * (0.5 - a / 3.0 + a * a / 8.0)
        } else {
            i0 - a * (-a).exp()
        };
        (i1 + (1.0 - w) * c * i0) / w
    } else {
        0.0
    };
    let rd = r * delta;
    let part2 = (a0 + rd) * ((-a).exp() - (-a0).exp()) - r * d * (-a).exp()
        + k * ((c - m).exp() * ex1(m, ln_m) - (c - k).exp() * ex1(k, ln_k));
    let part3 = (-a0).exp() * (a0 + 1.0 + rd);

    Moments {
        lead,
        stampede: part1 + part2 + part3,
        hard_miss: (-a0).exp(),
        late: (-a).exp(),
        // 1 − exp(−Λ(T − δ, T)), Λ(T − δ, T) = K·e^(−T/s)·(e^(δ/s) − 1) = c·(e^(1/β) − 1).
        overlap: if delta < ttl {
            -(-c * (1.0 / beta).exp_m1()).exp_m1()
        } else {
            1.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `E[f(u)]` for `u ~ Exp(1)`: Simpson's rule in `x = √u` (tames the `ln u` singularity of
    /// the lead at `u = 0`) on `[0, √60]`, split at the kinks of `f`.
    fn expect(f: impl Fn(f64) -> f64, kinks: &[f64]) -> f64 {
        let mut edges = vec![0.0];
        edges.extend(
            kinks
                .iter()
                .filter(|k| **k > 0.0 && **k < 60.0)
                .map(|k| k.sqrt()),
        );
        edges.push(60f64.sqrt());
        edges.sort_by(f64::total_cmp);
        let n = 20_000;
        let mut total = 0.0;
        for pair in edges.windows(2) {
            let h = (pair[1] - pair[0]) / n as f64;
            let mut sum = 0.0;
            for i in 0..=n {
                let x = pair[0] + i as f64 * h;
                let wgt = match i {
                    0 => 1.0,
                    _ if i == n => 1.0,
                    _ if i % 2 == 1 => 4.0,
                    _ => 2.0,
                };
                if x > 0.0 {
                    sum += wgt * f(x * x) * (-x * x).exp() * 2.0 * x;
                }
            }
            total += sum * h / 3.0;
        }
        total
    }

    /// Brute force from the definitions: `u = Λ(G, T) ~ Exp(1)`, `N = 1 + Poisson(Λ(G−δ, G))`.
    fn brute(r: f64, delta: f64, ttl: f64, beta: f64) -> (f64, f64) {
        let s = delta * beta;
        let cap = |g: f64| {
            // Λ(g, T): cumulative trigger intensity from the write (gap T) down to gap g.
            if g >= 0.0 {
                r * s * ((-g / s).exp() - (-ttl / s).exp())
            } else {
                r * s * (1.0 - (-ttl / s).exp()) - r * g
            }
        };
        let a0 = cap(0.0);
        let gap_of = |u: f64| {
            if u <= a0 {
                -s * ((u + r * s * (-ttl / s).exp()) / (r * s)).ln()
            } else {
                -(u - a0) / r
            }
        };
        let kinks = [a0, cap(delta.min(ttl))];
        let lead = expect(|u| gap_of(u).max(0.0), &kinks);
        let stampede = expect(|u| cap(gap_of(u) - delta), &kinks);
        (lead, stampede)
    }

    #[test]
    fn closed_forms_match_brute_force_integration() {
        let cases = [
            (10.0, 0.2, 1.0, 0.5),
            (10.0, 1.0, 60.0, 0.5),
            (100.0, 0.15, 2.0, 1.0),
            (1000.0, 0.02, 60.0, 2.0),
            (5.0, 0.5, 0.3, 1.0), // ttl < delta
            (0.3, 0.2, 5.0, 3.0), // rδβ < 1
            (50.0, 0.1, 0.4, 2.0),
        ];
        for (r, d, t, b) in cases {
            let m = moments(r, d, t, b);
            let (lead, stampede) = brute(r, d, t, b);
            assert!(
                (m.lead - lead).abs() < 1e-6 * (1.0 + lead),
                "lead {r} {d} {t} {b}: {} vs {lead}",
                m.lead
            );
            assert!(
                (m.stampede - stampede).abs() < 1e-6 * stampede,
                "stampede {r} {d} {t} {b}: {} vs {stampede}",
                m.stampede
            );
        }
    }

    #[test]
    fn exponential_integral_known_values() {
        // E₁(1) = 0.219383934395520, E₁(0.1) = 1.82292395841939, E₁(5) = 0.001148295591275
        for (x, e1) in [
            (1.0f64, 0.219_383_934_395_520f64),
            (0.1, 1.822_923_958_419_39),
            (5.0, 0.001_148_295_591_275),
        ] {
            let got = (-x).exp() * ex1(x, x.ln());
            assert!((got - e1).abs() < 1e-12 * e1.max(1.0), "E1({x}) = {got}");
        }
        let x = 1.000_001;
        assert!((ex1(x, x.ln()) - ex1(1.0, 0.0)).abs() < 1e-5);
    }

    #[test]
    fn long_ttl_lead_is_monotone_and_matches_moments() {
        let mut prev = 0.0;
        for i in 1..200 {
            let s = i as f64 * 0.01;
            let l = long_ttl_lead(10.0, s);
            assert!(l > prev);
            prev = l;
            let m = moments(10.0, s, 1e4, 1.0);
            assert!((m.lead - l).abs() < 1e-9, "{s}: {} vs {l}", m.lead);
        }
    }

    #[test]
    fn tiny_and_huge_beta_stay_finite() {
        for beta in [1e-3, 0.01, 1e3] {
            let m = moments(100.0, 0.1, 1.0, beta);
            assert!(m.lead.is_finite() && m.stampede.is_finite(), "{beta}");
            assert!(m.stampede >= 1.0);
        }
    }
}
