//! The theory the engine and the tuning tools rely on, in one place: γ, the β bounds, the
//! expected lead of the first early trigger, the uncoordinated stampede size, the late-refresh
//! probability and the β solvers. Derivations are in `paper-notes.md`.
//!
//! Notation: `r` calls per second (Poisson), `δ` the computation time (s), `s = δβ`. The first
//! trigger comes a lead `G` before expiry with `P(G ≤ g) = exp(−rs·e^(−g/s))` (Gumbel, scale
//! `s`), so for a long TTL `E[max(G, 0)] = s(ln(rs) + γ + E₁(rs))`.
//!
//! ```
//! use herdless::xfetch::theory::{expected_lead, solve_beta, stampede_size};
//! assert!((stampede_size(1.0) - std::f64::consts::E).abs() < 1e-12);
//! let beta = solve_beta(1000.0, 0.05, expected_lead(1000.0, 0.05, 1.0));
//! assert!((beta - 1.0).abs() < 1e-9);
//! ```

use super::E_MAX;

/// The Euler–Mascheroni constant γ, the mean of a standard Gumbel variable.
pub const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Smallest β the solvers return (automatic β included).
///
/// Below it the uncoordinated stampede `e^(1/β)` exceeds 4.8·10⁸ and the first trigger almost
/// never comes a full `delta` before expiry unless `rδβ·e^(−1/β)` is huge, so the refresh lands
/// late.
pub const BETA_MIN: f64 = 0.05;

/// Largest β the solvers return (automatic β included).
///
/// Above it a call one `delta` before expiry triggers with probability over 95 %: XFetch is no
/// longer probabilistic but "refresh whenever inside a fixed window", and that window is better
/// configured directly.
pub const BETA_MAX: f64 = 20.0;

/// The largest share of cycles whose refresh may land after expiry that automatic β accepts
/// for a process-local store (callers then wait).
pub const LATE_REFRESH_BOUND: f64 = 0.05;

/// How far before expiry a value of computation time `delta` can trigger a refresh at `beta`:
/// `δ·β·E_MAX` (beyond it no draw can fire, so the hit path skips the draw exactly).
#[inline]
pub fn reach(delta: f64, beta: f64) -> f64 {
    delta * beta * E_MAX
}

/// The uncoordinated stampede: the expected number of callers that recompute in one cycle
/// without a refresh lock, `e^(1/β)`, independent of the rate and δ.
pub fn stampede_size(beta: f64) -> f64 {
    (1.0 / beta).exp()
}

/// `E[max(G, 0)]` (seconds) for a long TTL: `δβ(ln(rδβ) + γ + E₁(rδβ))`.
pub fn expected_lead(rate_per_s: f64, delta_s: f64, beta: f64) -> f64 {
    long_ttl_lead(rate_per_s, delta_s * beta)
}

/// The probability that the first trigger comes less than δ before expiry, i.e. the refresh
/// lands after expiry: `exp(−rδβ·e^(−1/β))`.
pub fn late_refresh_probability(rate_per_s: f64, delta_s: f64, beta: f64) -> f64 {
    (-(rate_per_s * delta_s * beta) * (-1.0 / beta).exp()).exp()
}

/// The β in `[BETA_MIN, BETA_MAX]` whose [`expected_lead`] is `lead_s`, clamped to the bounds
/// when no β reaches it. The lead grows strictly with β, so bisection on `ln β` finds it.
pub fn solve_beta(rate_per_s: f64, delta_s: f64, lead_s: f64) -> f64 {
    if !(rate_per_s > 0.0 && delta_s > 0.0 && lead_s > 0.0) {
        return 1.0;
    }
    let lead = |beta: f64| expected_lead(rate_per_s, delta_s, beta);
    if lead(BETA_MIN) >= lead_s {
        return BETA_MIN;
    }
    if lead(BETA_MAX) <= lead_s {
        return BETA_MAX;
    }
    let (mut lo, mut hi) = (BETA_MIN.ln(), BETA_MAX.ln());
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if lead(mid.exp()) < lead_s {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-14 {
            break;
        }
    }
    (0.5 * (lo + hi)).exp()
}

/// The smallest β whose refresh lands after expiry with probability at most `epsilon`:
/// `exp(−rδβ·e^(−1/β)) ≤ ε` ⟺ `ln(rδ) + ln β − 1/β ≥ ln ln(1/ε)`, increasing in β.
pub fn beta_for_late_bound(rate_per_s: f64, delta_s: f64, epsilon: f64) -> f64 {
    if !(rate_per_s > 0.0 && delta_s > 0.0 && epsilon > 0.0 && epsilon < 1.0) {
        return BETA_MIN;
    }
    let need = (1.0 / epsilon).ln().ln();
    let f = |b: f64| (rate_per_s * delta_s).ln() + b.ln() - 1.0 / b;
    if f(BETA_MIN) >= need {
        return BETA_MIN;
    }
    if f(BETA_MAX) < need {
        return BETA_MAX;
    }
    let (mut lo, mut hi) = (BETA_MIN, BETA_MAX);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if f(mid) < need {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// `E[max(G, 0)]` for `ttl → ∞` with `s = δβ`: `s(ln(rs) + γ + E₁(rs))`.
pub(crate) fn long_ttl_lead(r: f64, s: f64) -> f64 {
    let x = r * s;
    if x <= 1.0 {
        // ln x + γ + E₁(x) = Ein(x): avoids the cancellation of ln x against E₁(x).
        s * ein(x)
    } else {
        s * (x.ln() + EULER_GAMMA + (-x).exp() * ex1(x, x.ln()))
    }
}

/// `Ein(x) = Σ_{k≥1} (−1)^(k+1) x^k / (k·k!) = E₁(x) + γ + ln x`, for `0 ≤ x ≤ 1`.
pub(crate) fn ein(x: f64) -> f64 {
    let (mut sum, mut term) = (0.0, 1.0);
    for k in 1..=40 {
        let kf = k as f64;
        term *= -x / kf; // (−x)^k / k!
        sum -= term / kf;
        if (term / kf).abs() <= 1e-17 * sum.abs() {
            break;
        }
    }
    sum
}

/// `e^x·E₁(x)` for `x ≥ 0`, given `ln x` too (so that an underflowed `x` keeps its size).
pub(crate) fn ex1(x: f64, ln_x: f64) -> f64 {
    if x <= 1.0 {
        x.exp() * (-EULER_GAMMA - ln_x + ein(x))
    } else {
        // Continued fraction e^x·E₁(x) = 1/(x+1− 1/(x+3− 4/(x+5− …))), modified Lentz.
        let tiny = 1e-300;
        let mut b = x + 1.0;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..=500 {
            let an = -((i * i) as f64);
            b += 2.0;
            d = 1.0 / (an * d + b);
            c = b + an / c;
            let del = c * d;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solved_beta_gives_the_target_lead() {
        for &(r, d, lead) in &[(1e6, 0.2, 0.4), (100.0, 0.2, 0.4), (10.0, 0.01, 0.05)] {
            let b = solve_beta(r, d, lead);
            let got = expected_lead(r, d, b);
            assert!(
                (got - lead).abs() < 1e-6 * lead.max(1.0),
                "r={r}: β={b} lead={got}"
            );
        }
    }

    #[test]
    fn late_bound_beta_meets_its_bound() {
        for &(r, d) in &[(100.0, 0.2), (1e4, 0.2), (10.0, 0.05)] {
            let b = beta_for_late_bound(r, d, LATE_REFRESH_BOUND);
            let p_late = late_refresh_probability(r, d, b);
            assert!(
                (p_late - LATE_REFRESH_BOUND).abs() < 1e-6,
                "r={r}: β={b} p={p_late}"
            );
        }
        // At high rates the bound is loose: the lead target decides.
        assert!(beta_for_late_bound(1e6, 0.2, LATE_REFRESH_BOUND) < solve_beta(1e6, 0.2, 0.25));
    }

    #[test]
    fn lead_shrinks_beta_as_rate_grows() {
        assert!(solve_beta(1e6, 0.2, 0.4) < solve_beta(1e3, 0.2, 0.4));
    }
}
