//! The XFetch decision law (Vattani, Chierichetti, Lowenstein, PVLDB 8(8) 2015), pure.
//!
//! Nothing here reads a clock or a random number generator: the caller passes the remaining
//! time to expiry (`gap`), the last computation time (`delta`), the tuning factor `beta` and an
//! exponential draw `e`. That keeps the law exact under test (manual clock, seeded RNG).
//!
//! A call at gap `g` recomputes early when `delta · beta · e ≥ g` with `e = −ln U`,
//! `U ∈ (0, 1]`, so the probability per call is `P(e ≥ g/(δβ)) = exp(−g/(δβ))`.
//!
//! ```
//! use herdless::xfetch::{decide, Decision};
//! // 10 ms left, the value took 5 ms to compute, beta = 1, a large draw: refresh now.
//! assert_eq!(decide(10_000.0, 5_000.0, 1.0, 2.5), Decision::RefreshEarly);
//! // A small draw keeps serving the value.
//! assert_eq!(decide(10_000.0, 5_000.0, 1.0, 0.1), Decision::Fresh);
//! // No time left: the value has expired, whatever the draw.
//! assert_eq!(decide(0.0, 5_000.0, 1.0, 30.0), Decision::Expired);
//! ```

pub mod theory;

/// What a caller holding a cached value should do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve the value; nothing to do.
    Fresh,
    /// Serve the value and start one background recomputation.
    RefreshEarly,
    /// The value is past its expiry: it must not be served as fresh.
    Expired,
}

/// The largest draw [`exp1_from_bits`] can return: `−ln 2⁻⁵³ = 53 · ln 2 ≈ 36.74`.
///
/// Because the draw is bounded, a caller whose `gap > delta · beta · E_MAX` knows the answer is
/// [`Decision::Fresh`] without drawing at all. The engine uses this to skip the RNG (and the
/// precise clock) on almost every hit, and the skip is exact, not an approximation.
pub const E_MAX: f64 = 36.736_800_569_677_1;

/// Decides what to do with a value that has `gap` left before expiry.
///
/// `gap` and `delta` are in the same unit (the engine uses microseconds). `beta = 0` never
/// refreshes early; `beta = ∞` always does while the value is unexpired.
#[inline]
pub fn decide(gap: f64, delta: f64, beta: f64, e: f64) -> Decision {
    if gap <= 0.0 {
        return Decision::Expired;
    }
    if beta == f64::INFINITY {
        return Decision::RefreshEarly;
    }
    if delta * beta * e >= gap {
        Decision::RefreshEarly
    } else {
        Decision::Fresh
    }
}

/// True when a draw could change the outcome, i.e. `gap ≤ delta · beta · E_MAX`.
#[inline]
pub fn draw_needed(gap: f64, delta: f64, beta: f64) -> bool {
    gap <= 0.0 || beta == f64::INFINITY || gap <= delta * beta * E_MAX
}

/// The probability that one call at `gap` refreshes early: `exp(−gap / (delta · beta))`.
///
/// ```
/// let p = herdless::xfetch::refresh_probability(1.0, 1.0, 1.0);
/// assert!((p - (-1.0f64).exp()).abs() < 1e-12);
/// ```
pub fn refresh_probability(gap: f64, delta: f64, beta: f64) -> f64 {
    if gap <= 0.0 || beta == f64::INFINITY {
        return 1.0;
    }
    let scale = delta * beta;
    if scale <= 0.0 {
        return 0.0;
    }
    (-gap / scale).exp()
}

/// Turns 64 random bits into an `Exp(1)` draw `e = −ln U` with `U ∈ (0, 1]` on a 2⁻⁵³ grid.
///
/// This is the inverse-CDF form of the paper's `−log(rand())`; it is bounded by [`E_MAX`].
///
/// ```
/// use herdless::xfetch::{exp1_from_bits, E_MAX};
/// assert_eq!(exp1_from_bits(u64::MAX), 0.0); // U = 1
/// assert!((exp1_from_bits(0) - E_MAX).abs() < 1e-9); // U = 2^-53
/// ```
#[inline]
pub fn exp1_from_bits(bits: u64) -> f64 {
    let u = ((bits >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_zero_never_refreshes_early() {
        assert_eq!(decide(1.0, 1e9, 0.0, E_MAX), Decision::Fresh);
        assert!(!draw_needed(1.0, 1e9, 0.0));
    }

    #[test]
    fn beta_infinite_always_refreshes_before_expiry() {
        assert_eq!(
            decide(1e12, 1.0, f64::INFINITY, 0.0),
            Decision::RefreshEarly
        );
        assert_eq!(decide(-1.0, 1.0, f64::INFINITY, 0.0), Decision::Expired);
    }

    #[test]
    fn skip_is_exact() {
        // Just past the cutoff no draw can trigger; at the cutoff the largest draw does.
        let (delta, beta) = (1000.0, 1.0);
        let cutoff = delta * beta * E_MAX;
        assert!(!draw_needed(cutoff * 1.000_001, delta, beta));
        assert_eq!(
            decide(cutoff * 1.000_001, delta, beta, exp1_from_bits(0)),
            Decision::Fresh
        );
        assert!(draw_needed(cutoff, delta, beta));
    }
}
