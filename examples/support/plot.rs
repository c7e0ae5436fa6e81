//! SVG charts for the examples (concurrency over time, latency over time, β advisor).
//!
//! Included by examples with `#[path = "support/plot.rs"] mod plot;`.
//!
//! Uses `plotters` with `default-features = false` and only the SVG backend, so building
//! needs no system libraries (no fontconfig/freetype): text is written as SVG `<text>`
//! elements (font-family `sans-serif`) and rendered by whatever displays the SVG; plotters
//! only estimates text extents for layout.
//!
//! Every chart has the same frame: a title, a legend strip under it (so the legend never
//! covers data), then the plot.
#![allow(dead_code)]

use std::error::Error;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

type PlotResult = Result<(), Box<dyn Error>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const SIZE: (u32, u32) = (900, 440);
const FONT: &str = "sans-serif";
/// Above this many step events, the concurrency chart is drawn per time bucket (max).
const MAX_STEP_EVENTS: usize = 4_000;
/// Number of time buckets used when a chart has to be downsampled.
const BUCKETS: usize = 1_500;

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREY: RGBColor = RGBColor(90, 90, 90);

/// Concurrent executions of the function body over time (a step chart), for one strategy.
///
/// `intervals` holds `(start_s, end_s)` of each body execution, in seconds since the run
/// started; the x axis spans `0..duration_s` and intervals are clipped to it. With many
/// intervals (over 2000) the chart shows the maximum concurrency in each of 1500 time
/// buckets (said in the legend), so the SVG stays small.
pub fn plot_concurrency(
    path: &Path,
    title: &str,
    intervals: &[(f64, f64)],
    duration_s: f64,
) -> PlotResult {
    let duration_s = positive_or(duration_s, 1.0);
    let mut events: Vec<(f64, i64)> = Vec::with_capacity(intervals.len() * 2);
    for &(start, end) in intervals {
        if !start.is_finite() || !end.is_finite() {
            continue;
        }
        let (start, end) = (start.clamp(0.0, duration_s), end.clamp(0.0, duration_s));
        if end > start {
            events.push((start, 1));
            events.push((end, -1));
        }
    }
    // Ends before starts at the same instant, so back-to-back runs do not stack up.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));

    let bucketed = events.len() > MAX_STEP_EVENTS;
    let steps: Vec<(f64, f64)> = if bucketed {
        bucket_max_steps(&events, duration_s, BUCKETS)
    } else {
        exact_steps(&events, duration_s)
    };
    let peak = steps.iter().map(|p| p.1).fold(0.0, f64::max);
    let y_max = (peak * 1.08).max(peak + 1.0).max(2.0).ceil();
    // Integer ticks only: concurrency is a count.
    let y_labels = (y_max as usize + 1).min(10);

    let series = if bucketed {
        format!(
            "concurrent executions (max per {} ms)",
            fmt_num(duration_s / BUCKETS as f64 * 1e3)
        )
    } else {
        "concurrent executions".to_owned()
    };
    let (root, strip, plot) = frame(path, title)?;
    legend(
        &strip,
        &[
            (series, BLUE, Mark::Line),
            (
                format!("peak {peak:.0}, {} executions", events.len() / 2),
                GREY,
                Mark::None,
            ),
        ],
    )?;
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .margin_top(4)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..duration_s, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("concurrent executions")
        .y_labels(y_labels)
        .y_label_formatter(&|v| fmt_num(*v))
        .x_label_formatter(&|v| fmt_num(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    chart.draw_series(
        AreaSeries::new(steps.iter().copied(), 0.0, BLUE.mix(0.25))
            .border_style(BLUE.stroke_width(2)),
    )?;
    root.present()?;
    Ok(())
}

/// Call latency over time: scatter of `(t_s, latency_ms)` samples, log-scale y axis (hits take
/// nanoseconds, misses hundreds of milliseconds: eight decades on one chart).
///
/// Samples are bucketed by time (10 ms buckets, or wider so there are at most 1500) and each
/// bucket contributes two points, its median and its maximum, so the SVG stays well under
/// 1 MB (about 200 KB at most) however many samples there are. The legend states the bucket
/// width; `what` says what one sample is (e.g. "slowest call per thread per ms"). Latencies
/// below 10 ns (including 0) are drawn as 10 ns.
pub fn plot_latency(
    path: &Path,
    title: &str,
    what: &str,
    samples: &[(f64, f64)],
    duration_s: f64,
) -> PlotResult {
    const FLOOR_MS: f64 = 1e-5;
    let duration_s = positive_or(duration_s, 1.0);
    let width = (duration_s / BUCKETS as f64).max(0.010);
    let n = ((duration_s / width).ceil() as usize).max(1);
    let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); n];
    for &(t, ms) in samples {
        if !t.is_finite() || !ms.is_finite() || !(0.0..=duration_s).contains(&t) {
            continue;
        }
        let i = ((t / width) as usize).min(n - 1);
        buckets[i].push(ms.max(FLOOR_MS));
    }
    let mut medians = Vec::new();
    let mut maxima = Vec::new();
    for (i, b) in buckets.iter_mut().enumerate() {
        if b.is_empty() {
            continue;
        }
        b.sort_by(f64::total_cmp);
        let t = (i as f64 + 0.5) * width;
        medians.push((t, b[b.len() / 2]));
        maxima.push((t, b[b.len() - 1]));
    }
    let lo = medians.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = maxima.iter().map(|p| p.1).fold(0.0, f64::max);
    let (mut y_lo, mut y_hi) = (FLOOR_MS, 1e3);
    if lo.is_finite() && hi > 0.0 {
        y_lo = 10f64.powf(lo.log10().floor());
        y_hi = 10f64.powf(hi.log10().ceil()).max(y_lo * 10.0);
    }
    // Widen a hair so the decade ends survive rounding in plotters' tick computation.
    let (y_lo, y_hi) = (y_lo * 0.999, y_hi * 1.001);

    let bucket = format!("per {} ms bucket", fmt_num(width * 1e3));
    let (root, strip, plot) = frame(path, title)?;
    legend(
        &strip,
        &[
            (format!("median {bucket}"), BLUE, Mark::Dot),
            (format!("max {bucket}"), ORANGE, Mark::Dot),
            (
                format!("{} samples: {what}", samples.len()),
                GREY,
                Mark::None,
            ),
        ],
    )?;
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .margin_top(4)
        .x_label_area_size(40)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..duration_s, (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("call latency (log scale)")
        .y_label_formatter(&|v| fmt_ms(*v))
        .x_label_formatter(&|v| fmt_num(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    chart.draw_series(
        maxima
            .iter()
            .map(|&p| Circle::new(p, 2, ORANGE.mix(0.75).filled())),
    )?;
    chart.draw_series(
        medians
            .iter()
            .map(|&p| Circle::new(p, 2, BLUE.mix(0.75).filled())),
    )?;
    root.present()?;
    Ok(())
}

/// β advisor chart: expected lead (ms, left axis, blue) and expected stampede size (right
/// axis, orange, log scale) against β, as two lines with markers on a shared β axis.
///
/// `rows` holds `(beta, lead_ms, stampede)`; they are drawn in β order. The lead axis starts
/// at 0; the stampede size `e^(1/β)` spans decades over usual β ranges (22 026 at β = 0.1,
/// 1.4 at β = 3), so its axis is logarithmic.
pub fn plot_beta(path: &Path, title: &str, rows: &[(f64, f64, f64)]) -> PlotResult {
    let mut rows: Vec<(f64, f64, f64)> = rows
        .iter()
        .copied()
        .filter(|r| r.0.is_finite() && r.1.is_finite() && r.2.is_finite())
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (b_lo, b_hi) = padded(rows.iter().map(|r| r.0), 0.03);
    let (_, lead_hi) = padded(rows.iter().map(|r| r.1), 0.08);
    let lead_lo = rows.iter().map(|r| r.1).fold(0.0, f64::min);
    // Log axis: whole decades around the data, never below 0.1 (a stampede is at least ~1).
    let st_min = rows
        .iter()
        .map(|r| r.2)
        .fold(f64::INFINITY, f64::min)
        .max(0.1);
    let st_max = rows
        .iter()
        .map(|r| r.2)
        .fold(0.0, f64::max)
        .max(st_min * 10.0);
    let st_lo = if st_min.is_finite() {
        10f64.powf(st_min.log10().floor())
    } else {
        0.1
    };
    let st_hi = 10f64.powf(st_max.log10().ceil()).max(st_lo * 10.0);
    let (st_lo, st_hi) = (st_lo * 0.999, st_hi * 1.001);

    let (root, strip, plot) = frame(path, title)?;
    legend(
        &strip,
        &[
            ("expected lead (ms), left axis".to_owned(), BLUE, Mark::Dot),
            (
                "expected stampede size without a lock, right axis (log)".to_owned(),
                ORANGE,
                Mark::Triangle,
            ),
        ],
    )?;
    let mut chart = ChartBuilder::on(&plot)
        .margin(12)
        .margin_top(4)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(b_lo..b_hi, lead_lo..lead_hi)?
        .set_secondary_coord(b_lo..b_hi, (st_lo..st_hi).log_scale());
    chart
        .configure_mesh()
        .x_desc("β")
        .y_desc("expected lead (ms)")
        .y_label_formatter(&|v| fmt_num(*v))
        .x_label_formatter(&|v| fmt_num(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("stampede size, no lock (log scale)")
        .y_label_formatter(&|v| fmt_num(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;

    chart.draw_series(LineSeries::new(
        rows.iter().map(|r| (r.0, r.1)),
        BLUE.stroke_width(2),
    ))?;
    chart.draw_series(
        rows.iter()
            .map(|r| Circle::new((r.0, r.1), 3, BLUE.filled())),
    )?;
    chart.draw_secondary_series(LineSeries::new(
        rows.iter().map(|r| (r.0, r.2)),
        ORANGE.stroke_width(2),
    ))?;
    chart.draw_secondary_series(
        rows.iter()
            .map(|r| TriangleMarker::new((r.0, r.2), 4, ORANGE.filled())),
    )?;
    root.present()?;
    Ok(())
}

/// Legend marker drawn before a legend label.
#[derive(Clone, Copy)]
enum Mark {
    Line,
    Dot,
    Triangle,
    /// Plain note, no marker.
    None,
}

/// White SVG canvas with `title` on top; returns `(root, legend strip, plot area)`.
fn frame<'a>(
    path: &'a Path,
    title: &str,
) -> Result<(Area<'a>, Area<'a>, Area<'a>), Box<dyn Error>> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let below_title = root.titled(title, (FONT, 22))?;
    let (strip, plot) = below_title.split_vertically(24);
    Ok((root, strip, plot))
}

/// Draws `items` (label, colour, marker) in one centred row across `area`.
fn legend(area: &Area<'_>, items: &[(String, RGBColor, Mark)]) -> PlotResult {
    const MARK_W: i32 = 22;
    const GAP: i32 = 28;
    let style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let mut widths = Vec::with_capacity(items.len());
    for (label, _, mark) in items {
        let (w, _) = area.estimate_text_size(label, &style)?;
        let mark_w = if matches!(mark, Mark::None) {
            0
        } else {
            MARK_W + 6
        };
        widths.push(mark_w + w as i32);
    }
    let total: i32 = widths.iter().sum::<i32>() + GAP * (items.len() as i32 - 1).max(0);
    let (w, h) = area.dim_in_pixel();
    let y = h as i32 / 2;
    let mut x = ((w as i32 - total) / 2).max(0);
    for ((label, color, mark), width) in items.iter().zip(widths) {
        let mid = (x + MARK_W / 2, y);
        match mark {
            Mark::Line => area.draw(&PathElement::new(
                vec![(x, y), (x + MARK_W, y)],
                color.stroke_width(2),
            ))?,
            Mark::Dot => area.draw(&Circle::new(mid, 4, color.filled()))?,
            Mark::Triangle => area.draw(&TriangleMarker::new(mid, 5, color.filled()))?,
            Mark::None => {}
        }
        let text_x = if matches!(mark, Mark::None) {
            x
        } else {
            x + MARK_W + 6
        };
        let text_color = if matches!(mark, Mark::None) {
            GREY
        } else {
            BLACK
        };
        area.draw_text(label, &style.color(&text_color), (text_x, y))?;
        x += width + GAP;
    }
    Ok(())
}

/// Exact step function `(t, concurrency)` from sorted +1/-1 events, from 0 to `duration_s`.
fn exact_steps(events: &[(f64, i64)], duration_s: f64) -> Vec<(f64, f64)> {
    let mut pts = vec![(0.0, 0.0)];
    let mut level = 0i64;
    let mut i = 0;
    while i < events.len() {
        let t = events[i].0;
        while i < events.len() && events[i].0 == t {
            level += events[i].1;
            i += 1;
        }
        let prev = pts.last().map_or(0.0, |p| p.1);
        pts.push((t, prev));
        pts.push((t, level as f64));
    }
    pts.push((duration_s, level as f64));
    pts
}

/// Step function of the maximum concurrency within each of `n` equal time buckets.
fn bucket_max_steps(events: &[(f64, i64)], duration_s: f64, n: usize) -> Vec<(f64, f64)> {
    let width = duration_s / n as f64;
    let mut pts = Vec::with_capacity(2 * n);
    let mut level = 0i64;
    let mut i = 0;
    for b in 0..n {
        let end = (b + 1) as f64 * width;
        let mut max = level;
        while i < events.len() && (events[i].0 < end || b == n - 1) {
            level += events[i].1;
            max = max.max(level);
            i += 1;
        }
        pts.push((b as f64 * width, max as f64));
        pts.push((end, max as f64));
    }
    pts
}

/// `v` if it is finite and > 0, otherwise `default`.
fn positive_or(v: f64, default: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        default
    }
}

/// `(min, max)` of `values`, widened by `pad` (a fraction of the span) and never empty.
fn padded(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let d = (hi.abs() * 0.1).max(0.5);
        return (lo - d, hi + d);
    }
    let d = (hi - lo) * pad;
    (lo - d, hi + d)
}

/// A latency axis label: milliseconds as ms, smaller ones as µs or ns, so a log axis reads at
/// a glance.
fn fmt_ms(v: f64) -> String {
    if v >= 1.0 || v <= 0.0 || !v.is_finite() {
        format!("{} ms", fmt_num(v))
    } else if v >= 1e-3 {
        format!("{} µs", fmt_num(v * 1e3))
    } else {
        format!("{} ns", fmt_num(v * 1e6))
    }
}

/// Short axis-label formatting: at most 3 significant digits, no trailing zeros.
fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".to_owned();
    }
    let mag = v.abs().log10().floor() as i32;
    let decimals = (2 - mag).clamp(0, 9) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}
