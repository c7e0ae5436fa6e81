//! Which β? Recommends one for the workload given, and shows the closed-form advisor next to
//! the simulator for several β.
//!
//! ```text
//! cargo run --example beta_advisor -- --rate 100 --delta-ms 200 --ttl-ms 1000 --beta 0.3,0.5,1,2
//! cargo run --example beta_advisor -- --json
//! cargo run --example beta_advisor -- --help
//! ```
//!
//! The recommendation is the β that automatic β (`memoize_stampede`'s default) would pick for
//! this rate: it aims the first refresh at 1.25 δ before expiry (the refresh then lands a
//! quarter δ before the value expires: about one refresh per TTL, nobody waits), raised where
//! needed so that fewer than 5 % of the refreshes land after expiry.
//!
//! Columns: `expected_*` and the probabilities come from `herdless::tune::advise`. Two
//! simulations run per β (`herdless::sim`): herdless's try-lock (`Strategy::XFetchCoordinated`)
//! gives `simulated_lead_ms` and `runs_per_cycle` (exactly 1 by construction of the lock);
//! uncoordinated XFetch (`Strategy::XFetch`, every trigger recomputes, the situation the stampede
//! formula describes) gives `simulated_stampede`. The stampede formula assumes isolated cycles;
//! rows whose `P(overlap)` exceeds 1 % are marked `*` in the table: there the uncoordinated
//! stampedes run into each other and per-cycle counts stop being comparable.

#[path = "support/plot.rs"]
mod plot;

use std::process::ExitCode;
use std::time::Duration;

use herdless::sim::{simulate, SimConfig, SimReport, Strategy};
use herdless::tune::{advise, Advice, TuneError, Workload};
use herdless::xfetch::theory::{beta_for_late_bound, solve_beta, LATE_REFRESH_BOUND};
use herdless::LeadTarget;

/// The β recommended for a workload, and why.
struct Recommendation {
    beta: f64,
    /// The lead it aims at.
    target: Duration,
    /// The β that reaches that lead on average.
    beta_for_target: f64,
    /// The smallest β whose refresh lands late in at most `LATE_REFRESH_BOUND` of the cycles.
    beta_for_late: f64,
}

/// What automatic β picks for this rate: the lead target of `LeadTarget::default()`, raised to
/// keep late refreshes under the bound (as it does for a store local to the process).
fn recommend(w: &Workload) -> Recommendation {
    let delta = w.delta.as_secs_f64();
    let target = match LeadTarget::default() {
        LeadTarget::DeltaMultiple(k) => w.delta.mul_f64(k),
        LeadTarget::Fixed(d) => d,
    };
    let beta_for_target = solve_beta(w.rate_per_s, delta, target.as_secs_f64());
    let beta_for_late = beta_for_late_bound(w.rate_per_s, delta, LATE_REFRESH_BOUND);
    Recommendation {
        beta: beta_for_target.max(beta_for_late),
        target,
        beta_for_target,
        beta_for_late,
    }
}

const USAGE: &str =
    "beta_advisor: which XFetch β for a workload? Recommends one and compares several,
closed form next to simulation, without coordination and with herdless's lock.

usage: beta_advisor [FLAGS]   (also --flag=value)

  --rate CALLS_PER_S   request rate of one key                        [default: 100]
  --delta-ms MS        how long one computation takes (δ)             [default: 200]
  --ttl-ms MS          how long a computed value stays valid          [default: 1000]
  --beta B1,B2,...     β values to compare (the recommended β is added) [default: 0.3,0.5,1,2]
  --seed N             simulator seed                                 [default: 1]
  --cycles N           simulated cycles per β and strategy            [default: 20000]
  --json               one JSON object per β per line                 [default: off]
  --plot FILE.svg      chart of expected lead and stampede size vs β  [default: none]
  -h, --help           print this help and exit
";

#[derive(Debug)]
struct Options {
    rate: f64,
    delta_ms: f64,
    ttl_ms: f64,
    betas: Vec<f64>,
    seed: u64,
    cycles: u64,
    json: bool,
    /// Write an SVG chart of expected lead and stampede size against β to this file.
    plot: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rate: 100.0,
            delta_ms: 200.0,
            ttl_ms: 1000.0,
            betas: vec![0.3, 0.5, 1.0, 2.0],
            seed: 1,
            cycles: 20_000,
            json: false,
            plot: None,
        }
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{flag}: cannot read {value:?} as a number"))
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        if flag == "--json" {
            o.json = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => return Err(format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "--rate" => o.rate = number(&flag, &value)?,
            "--delta-ms" => o.delta_ms = number(&flag, &value)?,
            "--ttl-ms" => o.ttl_ms = number(&flag, &value)?,
            "--seed" => o.seed = number(&flag, &value)?,
            "--cycles" => o.cycles = number(&flag, &value)?,
            "--beta" => {
                o.betas = value
                    .split(',')
                    .filter(|b| !b.trim().is_empty())
                    .map(|b| number(&flag, b))
                    .collect::<Result<_, _>>()?;
                if o.betas.is_empty() {
                    return Err("--beta: empty list".into());
                }
            }
            "--plot" => o.plot = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    for (name, v) in [("--delta-ms", o.delta_ms), ("--ttl-ms", o.ttl_ms)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{name} must be a positive number of milliseconds"));
        }
    }
    Ok(o)
}

/// One line of output: the closed form and the two simulations for one β.
struct Row {
    advice: Advice,
    uncoordinated: SimReport,
    coordinated: SimReport,
}

fn row(o: &Options, w: &Workload, beta: f64) -> Result<Row, TuneError> {
    let advice = advise(w, beta)?;
    let sim = |strategy| {
        let mut cfg = SimConfig::new(w.rate_per_s, w.delta, w.ttl, strategy);
        cfg.cycles = o.cycles;
        cfg.seed = o.seed;
        simulate(&cfg)
    };
    Ok(Row {
        advice,
        uncoordinated: sim(Strategy::XFetch { beta })?,
        coordinated: sim(Strategy::XFetchCoordinated { beta })?,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn json_line(r: &Row, rec: &Recommendation) -> String {
    format!(
        "{{\"beta\":{},\"expected_lead_ms\":{:.3},\"simulated_lead_ms\":{:.3},\
         \"expected_stampede\":{:.4},\"simulated_stampede\":{:.4},\
         \"hard_miss_probability\":{},\"runs_per_cycle\":{:.4},\"recommended\":{}}}",
        r.advice.beta,
        ms(r.advice.expected_lead),
        ms(r.coordinated.mean_lead),
        r.advice.expected_stampede,
        r.uncoordinated.mean_stampede,
        r.advice.hard_miss_probability,
        r.coordinated.runs_per_cycle,
        (r.advice.beta - rec.beta).abs() < 1e-9,
    )
}

fn print_table(o: &Options, rows: &[Row], rec: &Recommendation) {
    println!(
        "rate {} calls/s, delta {} ms, ttl {} ms, {} cycles per simulation, seed {}",
        o.rate, o.delta_ms, o.ttl_ms, o.cycles, o.seed
    );
    println!(
        "{:>6} | {:<42} | {:<32} | HERDLESS (try-lock)",
        "", "first refresh (same with or without lock)", "UNCOORDINATED cache (no lock)",
    );
    println!(
        "{:>6} | {:>9} {:>9} {:>9} {:>9}  | {:>9} {:>9}  {:>10} | {:>8} {:>8}",
        "beta",
        "lead ms",
        "sim",
        "P(hard)",
        "P(late)",
        "stampede",
        "sim",
        "P(overlap)",
        "runs/cyc",
        "runs/s"
    );
    println!("{}", "-".repeat(108));
    for r in rows {
        let a = &r.advice;
        let mark = if a.overlap_probability > 0.01 {
            '*'
        } else {
            ' '
        };
        let note = if (a.beta - rec.beta).abs() < 1e-9 {
            "  <- recommended"
        } else {
            ""
        };
        println!(
            "{:>6.3} | {:>9.2} {:>9.2} {:>9.2e} {:>9.2e}  | {:>9.3} {:>9.3}{mark} {:>10.2e} | {:>8.3} {:>8.3}{note}",
            a.beta,
            ms(a.expected_lead),
            ms(r.coordinated.mean_lead),
            a.hard_miss_probability,
            a.late_refresh_probability,
            a.expected_stampede,
            r.uncoordinated.mean_stampede,
            a.overlap_probability,
            r.coordinated.runs_per_cycle,
            r.coordinated.runs_per_second,
        );
    }
    println!(
        "lead: how long before expiry the first refresh starts (model; sim: simulated with herdless's lock)\n\
         P(hard): no early trigger before expiry; P(late): the refresh lands after expiry (with herdless \
         those callers wait for it)\n\
         UNCOORDINATED: every trigger recomputes (plain XFetch, e.g. DiskCache): stampede = runs per \
         cycle (* = cycles overlap, not comparable)\n\
         HERDLESS: a trigger only tries the lock, so every cycle runs the body once (runs/cyc = 1); \
         beta only moves when that run starts"
    );
}

/// The recommendation in words, with the advisor's figures for the recommended β.
fn print_recommendation(w: &Workload, rec: &Recommendation) {
    let delta_ms = ms(w.delta);
    println!(
        "\nrecommended: beta = {:.3}  (memoize_stampede's automatic β picks this from the rate it \
         measures; .beta({:.3}) fixes it)",
        rec.beta, rec.beta
    );
    println!(
        "  aims the first refresh at {:.0} ms before expiry (1.25 x delta): the refresh then lands \
         {:.0} ms before the value expires, so there is about one refresh per TTL and nobody waits;",
        ms(rec.target),
        ms(rec.target) - delta_ms
    );
    if rec.beta_for_late > rec.beta_for_target {
        println!(
            "  beta {:.3} reaches that lead on average, but at {} calls/s its refresh would land \
             after expiry too often; raised to {:.3} so that at most {:.0} % do.",
            rec.beta_for_target,
            w.rate_per_s,
            rec.beta,
            LATE_REFRESH_BOUND * 100.0
        );
    } else {
        println!(
            "  at {} calls/s a larger beta would start refreshing earlier and refresh more often \
             (the lead grows with ln(rate)); a smaller one would land refreshes after expiry.",
            w.rate_per_s
        );
    }
    if let Ok(a) = advise(w, rec.beta) {
        println!(
            "  with it: lead {:.1} ms, P(late) {:.2e}, about {:.2} refreshes/s with herdless \
             (one per {:.0} ms cycle).",
            ms(a.expected_lead),
            a.late_refresh_probability,
            1.0 / a.expected_cycle.as_secs_f64(),
            ms(a.expected_cycle)
        );
    }
    if rec.target >= w.ttl {
        println!(
            "  warning: the TTL is shorter than the lead target: the value expires before a \
             refresh could land in time; use a TTL of several delta."
        );
    }
}

fn main() -> ExitCode {
    let o = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            if msg.is_empty() {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("beta_advisor: error: {msg}\nrun `beta_advisor --help` for the flags and their defaults");
            return ExitCode::from(2);
        }
    };
    let w = Workload {
        rate_per_s: o.rate,
        delta: Duration::from_secs_f64(o.delta_ms / 1e3),
        ttl: Duration::from_secs_f64(o.ttl_ms / 1e3),
    };
    let rec = recommend(&w);
    let mut betas = o.betas.clone();
    if !betas.iter().any(|b| (b - rec.beta).abs() < 1e-9) {
        betas.push(rec.beta);
    }
    betas.sort_by(f64::total_cmp);
    let rows: Result<Vec<Row>, TuneError> = betas.iter().map(|&b| row(&o, &w, b)).collect();
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(file) = &o.plot {
        let points: Vec<(f64, f64, f64)> = rows
            .iter()
            .map(|r| {
                (
                    r.advice.beta,
                    ms(r.advice.expected_lead),
                    r.advice.expected_stampede,
                )
            })
            .collect();
        let title = format!(
            "XFetch at {} calls/s, δ = {} ms, TTL = {} ms",
            o.rate, o.delta_ms, o.ttl_ms
        );
        if let Err(e) = plot::plot_beta(std::path::Path::new(file), &title, &points) {
            eprintln!("error: --plot {file}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if o.json {
        for r in &rows {
            println!("{}", json_line(r, &rec));
        }
    } else {
        print_table(&o, &rows, &rec);
        print_recommendation(&w, &rec);
    }
    ExitCode::SUCCESS
}
