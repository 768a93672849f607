//! Writing results: a JSON file and an SVG chart (latency percentiles over
//! time, and claims issued per second in 100 ms buckets).

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::record::Bucket;

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// Two panels over time since t0: latency p50 / p99 / max (ms) and claims/s.
pub fn write_chart(path: &Path, title: &str, timeline: &[Bucket]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    draw(path, title, timeline).map_err(|e| format!("chart {}: {e}", path.display()))
}

fn draw(path: &Path, title: &str, timeline: &[Bucket]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (top, bottom) = root.split_vertically(340);
    let x_end = timeline
        .last()
        .map(|b| (b.start_ms + crate::record::BUCKET_MS) as f64 / 1000.0)
        .unwrap_or(1.0);
    let secs = |b: &Bucket| b.start_ms as f64 / 1000.0;

    let y_latency = timeline.iter().map(|b| b.max_ms).fold(1.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&top)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .caption(
            "latency by answer time (100 ms buckets)",
            ("sans-serif", 16),
        )
        .build_cartesian_2d(0.0..x_end, 0.0..y_latency)?;
    chart
        .configure_mesh()
        .x_desc("seconds after t0")
        .y_desc("ms")
        .draw()?;
    for (name, color, f) in [
        ("p50", BLUE, (|b: &Bucket| b.p50_ms) as fn(&Bucket) -> f64),
        ("p99", RED, |b: &Bucket| b.p99_ms),
        ("max", BLACK, |b: &Bucket| b.max_ms),
    ] {
        chart
            .draw_series(LineSeries::new(
                timeline.iter().map(|b| (secs(b), f(b))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    let y_rate = timeline
        .iter()
        .map(|b| b.claims_per_second.max(b.answers as f64 * 10.0))
        .fold(1.0, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .caption("per second, in 100 ms buckets", ("sans-serif", 16))
        .build_cartesian_2d(0.0..x_end, 0.0..y_rate)?;
    chart
        .configure_mesh()
        .x_desc("seconds after t0")
        .y_desc("per second")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            timeline.iter().map(|b| (secs(b), b.answers as f64 * 10.0)),
            MAGENTA.stroke_width(1),
        ))?
        .label("answers/s (all outcomes)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MAGENTA));
    chart
        .draw_series(LineSeries::new(
            timeline.iter().map(|b| (secs(b), b.claims_per_second)),
            GREEN.stroke_width(2),
        ))?
        .label("claims issued/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
