//! The closed forms of `herdless::tune` against the simulator of `herdless::sim`.
//!
//! Every statistical assertion checks its own power first: the tolerance must exceed four
//! standard errors of the simulated mean, so that a wrong formula (e^β for e^(1/β), a lead without
//! the γ term) cannot pass by luck, and the right one does not fail by bad luck.

use std::time::Duration;

use herdless::sim::{simulate, ComputeTime, SimConfig, SimReport, Strategy};
use herdless::tune::{
    advise, beta_for_lead, Advice, TuneError, Workload, EULER_GAMMA, MAX_BETA, MIN_BETA,
};

const TOL: f64 = 0.03;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn workload(rate: f64, delta: f64, ttl: f64) -> Workload {
    Workload {
        rate_per_s: rate,
        delta: secs(delta),
        ttl: secs(ttl),
    }
}

fn run(w: &Workload, strategy: Strategy, cycles: u64, seed: u64) -> SimReport {
    let mut cfg = SimConfig::new(w.rate_per_s, w.delta, w.ttl, strategy);
    cfg.cycles = cycles;
    cfg.seed = seed;
    simulate(&cfg).expect("valid config")
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// Asserts `sim` is within `TOL` of `expected`, and that `TOL` is at least four standard errors.
fn assert_agrees(what: &str, sim: f64, se: f64, expected: f64) {
    assert!(
        4.0 * se < TOL * expected,
        "{what}: too few cycles for a {TOL} test (se {se}, expected {expected})"
    );
    assert!(
        rel(sim, expected) < TOL,
        "{what}: simulated {sim} ± {se}, closed form {expected}"
    );
}

/// The Gumbel approximation of the lead, `δβ(ln(rδβ) + γ)`, and the γ-less wrong one.
fn gumbel_lead(w: &Workload, beta: f64, gamma: f64) -> f64 {
    let s = w.delta.as_secs_f64() * beta;
    s * ((w.rate_per_s * s).ln() + gamma)
}

/// Uncoordinated XFetch at r ∈ {10, 100, 1000}/s (δ shrinking with r, so rδ = 5, 10, 20 and both
/// the late-refresh regime and the asymptotic one appear) plus one case far in the asymptotic
/// regime (rδβ·e^(−1/β) ≥ 13).
fn check_uncoordinated_xfetch(beta: f64) {
    let cases = [(10.0, 0.5), (100.0, 0.1), (1000.0, 0.02), (1000.0, 0.2)];
    let mut asymptotic_checked = false;
    for (i, (rate, delta)) in cases.into_iter().enumerate() {
        let w = workload(rate, delta, 600.0);
        let a: Advice = advise(&w, beta).unwrap();
        assert!(a.overlap_probability < 1e-9, "cycles must be isolated here");
        let rep = run(&w, Strategy::XFetch { beta }, 40_000, 100 + i as u64);
        let tag = format!("beta {beta}, rate {rate}, delta {delta}");
        let (lead, lead_se) = (
            rep.mean_lead.as_secs_f64(),
            rep.lead_std_error.as_secs_f64(),
        );

        assert_agrees(
            &format!("stampede, {tag}"),
            rep.mean_stampede,
            rep.stampede_std_error,
            a.expected_stampede,
        );
        assert_agrees(
            &format!("lead, {tag}"),
            lead,
            lead_se,
            a.expected_lead.as_secs_f64(),
        );
        assert!((rep.runs_per_cycle - rep.mean_stampede).abs() < 1e-9);

        // Where the exact mean is within 0.5 % of its limit, the simulator reproduces e^(1/β)...
        let limit = (1.0 / beta).exp();
        if rel(a.expected_stampede, limit) < 0.005 {
            asymptotic_checked = true;
            assert!(rel(rep.mean_stampede, limit) < TOL, "e^(1/β), {tag}");
        }
        // ... and the Gumbel lead where hard misses are negligible.
        if a.hard_miss_probability < 1e-3 {
            assert!(
                rel(lead, gumbel_lead(&w, beta, EULER_GAMMA)) < TOL,
                "Gumbel, {tag}"
            );
        }
        // Wrong formulas fail.
        if beta != 1.0 {
            assert!(
                rel(rep.mean_stampede, beta.exp()) > TOL,
                "e^β passes, {tag}"
            );
        }
        assert!(
            rel(lead, gumbel_lead(&w, beta, 0.0)) > TOL,
            "lead without γ passes, {tag}"
        );
    }
    assert!(asymptotic_checked);
}

#[test]
fn uncoordinated_xfetch_beta_half_matches_closed_forms() {
    check_uncoordinated_xfetch(0.5);
}

#[test]
fn uncoordinated_xfetch_beta_one_matches_closed_forms() {
    check_uncoordinated_xfetch(1.0);
}

#[test]
fn uncoordinated_xfetch_beta_two_matches_closed_forms() {
    check_uncoordinated_xfetch(2.0);
}

#[test]
fn stampede_is_geometric_in_the_high_rate_limit() {
    // N − 1 is geometric: P(N = k) = q(1 − q)^(k−1) with q = e^(−1/β).
    let (w, beta, cycles) = (workload(1000.0, 0.2, 600.0), 1.0, 40_000);
    let rep = run(&w, Strategy::XFetch { beta }, cycles, 7);
    let q = (-1.0f64 / beta).exp();
    for k in 1..=4 {
        let p = q * (1.0 - q).powi(k as i32 - 1);
        let got = rep.stampede_histogram[k] as f64 / cycles as f64;
        let se = (p * (1.0 - p) / cycles as f64).sqrt();
        assert!(
            (got - p).abs() < 4.0 * se,
            "P(N = {k}) = {got}, geometric {p}"
        );
    }
}

#[test]
fn coordinated_xfetch_runs_once_per_cycle_and_matches_short_ttl_forms() {
    // rδβ = 2 and a short TTL: 14 % of cycles end in a hard miss, half the refreshes land late.
    let w = workload(10.0, 0.2, 1.0);
    let beta = 1.0;
    let a = advise(&w, beta).unwrap();
    assert!(a.hard_miss_probability > 0.1 && a.late_refresh_probability > 0.4);
    let cycles = 20_000;
    let rep = run(&w, Strategy::XFetchCoordinated { beta }, cycles, 3);

    assert_eq!(rep.runs, rep.cycles);
    assert_eq!(rep.stampede_histogram, vec![0, cycles]);
    assert!(rep.waiters > 0 && rep.mean_wait < w.delta);

    for (what, got, p) in [
        ("hard miss", rep.hard_miss_fraction, a.hard_miss_probability),
        (
            "late",
            rep.late_refresh_fraction,
            a.late_refresh_probability,
        ),
    ] {
        let se = (p * (1.0 - p) / cycles as f64).sqrt();
        assert!((got - p).abs() < 4.0 * se, "{what}: {got} vs {p}");
    }
    assert_agrees(
        "coordinated lead",
        rep.mean_lead.as_secs_f64(),
        rep.lead_std_error.as_secs_f64(),
        a.expected_lead.as_secs_f64(),
    );
    let cycle = rep.virtual_time.as_secs_f64() / rep.cycles as f64;
    assert!(rel(cycle, a.expected_cycle.as_secs_f64()) < 0.01);
}

#[test]
fn coordination_holds_with_random_compute_times() {
    let mut cfg = SimConfig::new(
        500.0,
        secs(0.1),
        secs(2.0),
        Strategy::XFetchCoordinated { beta: 0.5 },
    );
    cfg.compute = ComputeTime::Uniform {
        min: secs(0.05),
        max: secs(0.3),
    };
    cfg.cycles = 5_000;
    let rep = simulate(&cfg).unwrap();
    assert_eq!(rep.runs, rep.cycles);
    assert_eq!(rep.mean_stampede, 1.0);
    // Without the lock the same workload stampedes.
    cfg.strategy = Strategy::XFetch { beta: 0.5 };
    assert!(simulate(&cfg).unwrap().mean_stampede > 3.0);
}

#[test]
fn barrier_computes_once_per_hard_miss() {
    let (rate, delta) = (100.0, 0.05);
    let w = workload(rate, delta, 1.0);
    let rep = run(&w, Strategy::Barrier, 5_000, 5);
    assert_eq!(rep.runs, rep.cycles);
    assert_eq!(rep.hard_misses, rep.cycles);
    assert_eq!(rep.late_refreshes, rep.cycles);
    // Per cycle: one computer waits δ, ~rδ callers arrive during it and wait δ/2 on average.
    let waiters = rep.waiters as f64 / rep.cycles as f64;
    assert!(rel(waiters, 1.0 + rate * delta) < TOL);
    let mean_wait = (delta + rate * delta * delta / 2.0) / (1.0 + rate * delta);
    assert!(rel(rep.mean_wait.as_secs_f64(), mean_wait) < TOL);
}

#[test]
fn plain_ttl_stampede_is_one_plus_r_delta() {
    let mut prev = 0.0;
    for delta in [0.005, 0.05, 0.5] {
        let w = workload(100.0, delta, 1.0);
        let rep = run(&w, Strategy::PlainTtl, 6_000, 9);
        let expected = advise(&w, 0.0).unwrap().expected_stampede;
        assert!((expected - (1.0 + 100.0 * delta)).abs() < 1e-9);
        assert_agrees(
            "plain TTL",
            rep.mean_stampede,
            rep.stampede_std_error,
            expected,
        );
        assert!(rep.mean_stampede > prev, "grows with rδ");
        prev = rep.mean_stampede;
        assert_eq!(rep.hard_miss_fraction, 1.0);
        // XFetch with β = 0 is plain TTL, draw for draw.
        assert_eq!(run(&w, Strategy::XFetch { beta: 0.0 }, 6_000, 9), rep);
    }
}

#[test]
fn thinning_matches_drawing_for_every_call() {
    let w = workload(100.0, 0.05, 600.0);
    let a = advise(&w, 1.0).unwrap();
    let mut cfg = SimConfig::new(w.rate_per_s, w.delta, w.ttl, Strategy::XFetch { beta: 1.0 });
    cfg.cycles = 10_000;
    let thin = simulate(&cfg).unwrap();
    cfg.thinning = false;
    let every = simulate(&cfg).unwrap();
    for rep in [&thin, &every] {
        assert_agrees(
            "stampede",
            rep.mean_stampede,
            rep.stampede_std_error,
            a.expected_stampede,
        );
        assert_agrees(
            "lead",
            rep.mean_lead.as_secs_f64(),
            rep.lead_std_error.as_secs_f64(),
            a.expected_lead.as_secs_f64(),
        );
    }
    let calls = |r: &SimReport| r.calls as f64 / r.virtual_time.as_secs_f64();
    assert!(rel(calls(&thin), 100.0) < 0.01 && rel(calls(&every), 100.0) < 0.01);
}

/// `E[max(G, 0)]` when the first trigger's lead `G` has `P(G < w − y) = exp(−Λ(y))`:
/// `w − ∫₀ʷ exp(−Λ(y)) dy` (Simpson).
fn window_lead(w: f64, cap: impl Fn(f64) -> f64) -> f64 {
    let n = 10_000;
    let h = w / n as f64;
    let sum: f64 = (0..=n)
        .map(|i| {
            let k = if i == 0 || i == n {
                1.0
            } else {
                (2 + 2 * (i % 2)) as f64
            };
            k * (-cap(i as f64 * h)).exp()
        })
        .sum();
    w - sum * h / 3.0
}

#[test]
fn fixed_window_and_constant_probability_leads() {
    let (rate, window) = (100.0, 0.1);
    let w = workload(rate, 0.01, 600.0);
    let win = secs(window);

    // Per-call probability 1 − gap/window: Λ(y) = r·y²/(2·window) over the last y of the window.
    let rep = run(&w, Strategy::FixedWindow { window: win }, 10_000, 2);
    let expected = window_lead(window, |y| rate * y * y / (2.0 * window));
    let got = rep.mean_lead.as_secs_f64();
    assert_agrees(
        "fixed window",
        got,
        rep.lead_std_error.as_secs_f64(),
        expected,
    );
    assert!(got < window && rep.mean_stampede > 1.0);

    // Constant p inside the window: Λ(y) = r·p·y, thinned or not.
    let p = 0.2;
    let expected = window_lead(window, |y| rate * p * y);
    let mut cfg = SimConfig::new(
        rate,
        w.delta,
        w.ttl,
        Strategy::ConstantProbability { p, window: win },
    );
    cfg.cycles = 10_000;
    for thinning in [true, false] {
        cfg.thinning = thinning;
        let rep = simulate(&cfg).unwrap();
        let got = rep.mean_lead.as_secs_f64();
        assert_agrees(
            "constant p",
            got,
            rep.lead_std_error.as_secs_f64(),
            expected,
        );
    }

    // p = 0 never refreshes early.
    let zero = run(
        &w,
        Strategy::ConstantProbability {
            p: 0.0,
            window: win,
        },
        500,
        4,
    );
    assert_eq!(zero.hard_miss_fraction, 1.0);
}

#[test]
fn same_seed_same_report() {
    let w = workload(1000.0, 0.02, 5.0);
    let s = Strategy::XFetch { beta: 1.0 };
    assert_eq!(run(&w, s, 2_000, 42), run(&w, s, 2_000, 42));
    assert_ne!(run(&w, s, 2_000, 42), run(&w, s, 2_000, 43));
}

#[test]
fn lead_grows_with_ln_rate_and_fills_the_ttl() {
    // Long TTL: each factor 100 in rate adds δβ·ln 100 to the lead.
    let lead = |rate| {
        advise(&workload(rate, 0.2, 600.0), 1.0)
            .unwrap()
            .expected_lead
    };
    let (a, b, c) = (lead(700.0), lead(70_000.0), lead(7e6));
    let step = 0.2 * 100f64.ln();
    assert!(((b - a).as_secs_f64() - step).abs() < 1e-4 * step);
    assert!(((c - b).as_secs_f64() - step).abs() < 1e-4 * step);

    // DiskCache's case (~70k calls/s, δ = 200 ms, TTL 1 s, β = 1): the refresh starts almost
    // as soon as the value is written, a cycle lasts ~δ: ~50 refreshes per 10 s instead of ~10.
    let w = workload(70_000.0, 0.2, 1.0);
    let a = advise(&w, 1.0).unwrap();
    assert!(a.ttl_fraction_lost > 0.99);
    let rep = run(&w, Strategy::XFetchCoordinated { beta: 1.0 }, 2_000, 1);
    let per_10s = 10.0 * rep.runs_per_second;
    assert!(rel(per_10s, 10.0 / a.expected_cycle.as_secs_f64()) < 0.01);
    assert!((45.0..55.0).contains(&per_10s), "{per_10s}");
}

#[test]
fn beta_for_lead_inverts_the_lead() {
    for (rate, delta, target) in [
        (1000.0, 0.05, 0.224),
        (10.0, 0.2, 0.5),
        (70_000.0, 0.2, 0.3),
        (0.5, 1.0, 1.0),
    ] {
        let beta = beta_for_lead(rate, secs(delta), secs(target)).unwrap();
        assert!((MIN_BETA..=MAX_BETA).contains(&beta));
        let lead = advise(&workload(rate, delta, 1e5), beta)
            .unwrap()
            .expected_lead;
        assert!(
            rel(lead.as_secs_f64(), target) < 1e-6,
            "{rate} {delta} {target}"
        );
    }
    let short = beta_for_lead(100.0, secs(0.1), secs(0.1)).unwrap();
    let long = beta_for_lead(100.0, secs(0.1), secs(0.5)).unwrap();
    assert!(short < long);
    // Far too long a lead for the rate, and far too short a one.
    for target in [3600.0, 1e-6] {
        let err = beta_for_lead(1.0 / 60.0, secs(0.2), secs(target)).unwrap_err();
        assert!(matches!(err, TuneError::NoSolution { .. }), "{err}");
        assert!(err.to_string().contains("target_lead"));
    }
}

#[test]
fn invalid_inputs_name_their_field() {
    let ok = workload(10.0, 0.1, 1.0);
    let field = |e: TuneError| match e {
        TuneError::InvalidField { field, .. } => {
            assert!(e.to_string().contains(field));
            field
        }
        other => panic!("{other}"),
    };
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let w = Workload {
            rate_per_s: rate,
            ..ok
        };
        assert_eq!(field(advise(&w, 1.0).unwrap_err()), "rate_per_s");
    }
    let w = Workload {
        delta: Duration::ZERO,
        ..ok
    };
    assert_eq!(field(advise(&w, 1.0).unwrap_err()), "delta");
    let w = Workload {
        ttl: Duration::ZERO,
        ..ok
    };
    assert_eq!(field(advise(&w, 1.0).unwrap_err()), "ttl");
    for beta in [-0.1, f64::NAN, f64::INFINITY] {
        assert_eq!(field(advise(&ok, beta).unwrap_err()), "beta");
    }
    let err = beta_for_lead(10.0, secs(0.1), Duration::ZERO).unwrap_err();
    assert_eq!(field(err), "target_lead");

    let base = SimConfig::new(10.0, secs(0.1), secs(1.0), Strategy::PlainTtl);
    let bad = [
        (SimConfig { cycles: 0, ..base }, "cycles"),
        (
            SimConfig {
                rate_per_s: -5.0,
                ..base
            },
            "rate_per_s",
        ),
        (
            SimConfig {
                ttl: Duration::ZERO,
                ..base
            },
            "ttl",
        ),
        (
            SimConfig {
                compute: ComputeTime::Uniform {
                    min: secs(0.2),
                    max: secs(0.1),
                },
                ..base
            },
            "compute",
        ),
        (
            SimConfig {
                strategy: Strategy::XFetchCoordinated { beta: f64::NAN },
                ..base
            },
            "beta",
        ),
        (
            SimConfig {
                strategy: Strategy::FixedWindow {
                    window: Duration::ZERO,
                },
                ..base
            },
            "window",
        ),
        (
            SimConfig {
                strategy: Strategy::ConstantProbability {
                    p: 1.5,
                    window: secs(0.1),
                },
                ..base
            },
            "p",
        ),
    ];
    for (cfg, name) in bad {
        assert_eq!(field(simulate(&cfg).unwrap_err()), name);
    }
}
