//! Which β? The closed-form advisor next to the simulator, for one workload and several β.
//!
//! ```text
//! cargo run --example beta_advisor -- --rate 100 --delta-ms 200 --ttl-ms 1000 --beta 0.3,0.5,1,2
//! cargo run --example beta_advisor -- --json
//! ```
//!
//! Flags: `--rate` calls/s (default 100), `--delta-ms` computation time (default 200), `--ttl-ms`
//! (default 1000), `--beta LIST` comma-separated (default `0.3,0.5,1,2`), `--seed` (default 1),
//! `--cycles` simulated per β and strategy (default 20000), `--json` for one JSON object per β per
//! line. `--plot FILE` writes an SVG chart of the expected lead and stampede size against β.
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

const USAGE: &str = "usage: beta_advisor [--rate CALLS_PER_S] [--delta-ms MS] [--ttl-ms MS] \
[--beta B1,B2,...] [--seed N] [--cycles N] [--json] [--plot FILE.svg]";

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

fn json_line(r: &Row) -> String {
    format!(
        "{{\"beta\":{},\"expected_lead_ms\":{:.3},\"simulated_lead_ms\":{:.3},\
         \"expected_stampede\":{:.4},\"simulated_stampede\":{:.4},\
         \"hard_miss_probability\":{},\"runs_per_cycle\":{:.4}}}",
        r.advice.beta,
        ms(r.advice.expected_lead),
        ms(r.coordinated.mean_lead),
        r.advice.expected_stampede,
        r.uncoordinated.mean_stampede,
        r.advice.hard_miss_probability,
        r.coordinated.runs_per_cycle,
    )
}

fn print_table(o: &Options, rows: &[Row]) {
    println!(
        "rate {} calls/s, delta {} ms, ttl {} ms, {} cycles per simulation, seed {}",
        o.rate, o.delta_ms, o.ttl_ms, o.cycles, o.seed
    );
    println!(
        "{:>6} | {:>9} {:>9} | {:>9} {:>9}  | {:>9} {:>9} {:>10} | {:>8} {:>8}",
        "beta",
        "lead ms",
        "sim",
        "stampede",
        "sim",
        "P(hard)",
        "P(late)",
        "P(overlap)",
        "runs/cyc",
        "runs/s"
    );
    println!("{}", "-".repeat(105));
    for r in rows {
        let a = &r.advice;
        let mark = if a.overlap_probability > 0.01 {
            '*'
        } else {
            ' '
        };
        println!(
            "{:>6} | {:>9.2} {:>9.2} | {:>9.3} {:>9.3}{mark} | {:>9.2e} {:>9.2e} {:>10.2e} | {:>8.3} {:>8.3}",
            a.beta,
            ms(a.expected_lead),
            ms(r.coordinated.mean_lead),
            a.expected_stampede,
            r.uncoordinated.mean_stampede,
            a.hard_miss_probability,
            a.late_refresh_probability,
            a.overlap_probability,
            r.coordinated.runs_per_cycle,
            r.coordinated.runs_per_second,
        );
    }
    println!(
        "lead: how long before expiry the first refresh starts (sim: with herdless's lock)\n\
         stampede: recomputations per cycle without a lock (* = cycles overlap, not comparable)\n\
         P(hard): no early trigger before expiry; P(late): the refresh lands after expiry\n\
         runs/cyc, runs/s: simulated with herdless's try-lock"
    );
}

fn main() -> ExitCode {
    let o = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("error: {msg}");
            }
            eprintln!("{USAGE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let w = Workload {
        rate_per_s: o.rate,
        delta: Duration::from_secs_f64(o.delta_ms / 1e3),
        ttl: Duration::from_secs_f64(o.ttl_ms / 1e3),
    };
    let rows: Result<Vec<Row>, TuneError> = o.betas.iter().map(|&b| row(&o, &w, b)).collect();
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
            println!("{}", json_line(r));
        }
    } else {
        print_table(&o, &rows);
    }
    ExitCode::SUCCESS
}
