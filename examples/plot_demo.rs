//! Writes sample charts from synthetic data: `cargo run --example plot_demo [OUT_DIR]`
//! (default `/tmp/herdless-plot-demo`).

#[path = "support/plot.rs"]
mod plot;

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = match (args.next(), args.next()) {
        (None, _) => PathBuf::from("/tmp/herdless-plot-demo"),
        (Some(h), None) if h == "-h" || h == "--help" => {
            println!(
                "plot_demo: writes sample charts from synthetic data\n\n\
                 usage: plot_demo [OUT_DIR]\n\n  \
                 OUT_DIR     where to write the SVG files   [default: /tmp/herdless-plot-demo]\n  \
                 -h, --help  print this help and exit"
            );
            return Ok(());
        }
        (Some(dir), None) if !dir.starts_with('-') => PathBuf::from(dir),
        (Some(a), _) => {
            eprintln!("plot_demo: error: unexpected argument {a:?}\nrun `plot_demo --help`");
            std::process::exit(2);
        }
    };
    std::fs::create_dir_all(&out)?;
    let duration = 10.0;

    // A stampede every 2 s: 40 overlapping recomputations, then a lone one.
    let mut intervals = Vec::new();
    for k in 0..5 {
        let t0 = 0.5 + 2.0 * k as f64;
        intervals.extend((0..40).map(|i| (t0 + i as f64 * 0.004, t0 + 0.6 + i as f64 * 0.002)));
    }
    intervals.push((1.5, 2.1));
    plot::plot_concurrency(
        &out.join("concurrency.svg"),
        "No protection",
        &intervals,
        duration,
    )?;

    // 200k calls: ~0.01 ms hits, slow calls while a stampede is in progress.
    let samples: Vec<(f64, f64)> = (0..200_000)
        .map(|i| {
            let t = i as f64 * duration / 200_000.0;
            let jitter = ((i * 7919) % 1000) as f64 / 1000.0;
            let stampede = intervals.iter().any(|&(s, e)| t >= s && t < e);
            let ms = if stampede {
                50.0 + 600.0 * jitter
            } else {
                0.005 + 0.02 * jitter
            };
            (t, ms)
        })
        .collect();
    plot::plot_latency(
        &out.join("latency.svg"),
        "Call latency, no protection",
        "one call each",
        &samples,
        duration,
    )?;

    let rows: Vec<(f64, f64, f64)> = (1..=12)
        .map(|i| {
            let beta = i as f64 * 0.25;
            (beta, 120.0 * beta, 1.0 + 30.0 * (-1.5 * beta).exp())
        })
        .collect();
    plot::plot_beta(&out.join("beta.svg"), "β advisor (recompute 200 ms)", &rows)?;

    println!(
        "wrote concurrency.svg, latency.svg, beta.svg to {}",
        out.display()
    );
    Ok(())
}
