//! SVG plots (plotters, SVG backend only: no font or bitmap libraries needed).
//!
//! - `c2c-latency.svg`: p50 / p99 / p99.9 send → receive latency against offered load, one
//!   colour per target, from an open-loop sweep.
//! - `idle-rss.svg`: server (and generator) RSS against established connections.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use plotters::prelude::*;

use crate::scenarios::c2c::{C2cSuite, SweepPoint};
use crate::scenarios::idle::IdleReport;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 560;

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// Writes `c2c-latency.svg` into `dir` from the suite's sweep; `None` when there was no sweep.
pub fn c2c_latency(dir: &Path, suite: &C2cSuite) -> anyhow::Result<Option<PathBuf>> {
    if suite.sweep_magpie.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join("c2c-latency.svg");
    let series: Vec<(&str, &[SweepPoint], RGBColor)> = [
        (
            "magpie",
            suite.sweep_magpie.as_slice(),
            RGBColor(200, 60, 40),
        ),
        ("relay", suite.sweep_relay.as_slice(), RGBColor(40, 90, 200)),
    ]
    .into_iter()
    .filter(|(_, points, _)| !points.is_empty())
    .collect();
    let ms = |us: u64| (us.max(1) as f64) / 1e3;
    let x_max = series
        .iter()
        .flat_map(|(_, p, _)| p.iter().map(|p| p.offered_per_sec))
        .fold(1.0, f64::max)
        * 1.05;
    let y_max = series
        .iter()
        .flat_map(|(_, p, _)| p.iter().map(|p| ms(p.run.latency.p999_us)))
        .fold(1.0, f64::max)
        * 2.0;
    let y_min = series
        .iter()
        .flat_map(|(_, p, _)| p.iter().map(|p| ms(p.run.latency.p50_us)))
        .fold(f64::MAX, f64::min)
        .clamp(0.001, 1.0)
        / 2.0;

    let root = SVGBackend::new(&path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "c2c send -> receive latency vs offered load ({} users, {} B)",
                suite.magpie.users, suite.magpie.size
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered load (messages/s)")
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(err)?;
    for (name, points, color) in &series {
        for (label, pick) in [("p50", 0usize), ("p99", 1), ("p99.9", 2)] {
            let data: Vec<(f64, f64)> = points
                .iter()
                .map(|p| {
                    let l = &p.run.latency;
                    let v = [l.p50_us, l.p99_us, l.p999_us][pick];
                    (p.offered_per_sec, ms(v))
                })
                .collect();
            let stroke = match pick {
                0 => color.stroke_width(1),
                1 => color.stroke_width(3),
                _ => color.mix(0.5).stroke_width(2),
            };
            chart
                .draw_series(LineSeries::new(data.clone(), stroke))
                .map_err(err)?
                .label(format!("{name} {label}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], stroke));
            chart
                .draw_series(
                    data.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    drop(chart);
    drop(root);
    Ok(Some(path))
}

/// Writes `idle-rss.svg` into `dir`.
pub fn idle_rss(dir: &Path, report: &IdleReport) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("idle-rss.svg");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let x_max = report
        .series
        .iter()
        .map(|p| p.connections as f64)
        .fold(1.0, f64::max)
        * 1.05;
    let y_max = report
        .series
        .iter()
        .map(|p| mib(p.server_rss_bytes.max(p.generator_rss_bytes)))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(&path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let per_conn = report
        .rss_per_connection_bytes
        .map(|b| format!(", {b:.0} B per connection"))
        .unwrap_or_default();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("idle authenticated connections: RSS{per_conn}"),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("RSS (MiB)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    let server_color = RGBColor(200, 60, 40);
    let generator_color = RGBColor(120, 120, 120);
    let server: Vec<(f64, f64)> = report
        .series
        .iter()
        .map(|p| (p.connections as f64, mib(p.server_rss_bytes)))
        .collect();
    let generator: Vec<(f64, f64)> = report
        .series
        .iter()
        .map(|p| (p.connections as f64, mib(p.generator_rss_bytes)))
        .collect();
    if report.rss_before_bytes.is_some() {
        chart
            .draw_series(LineSeries::new(
                server.clone(),
                server_color.stroke_width(3),
            ))
            .map_err(err)?
            .label("server (magpie)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], server_color.stroke_width(3))
            });
        chart
            .draw_series(
                server
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, server_color.filled())),
            )
            .map_err(err)?;
    }
    chart
        .draw_series(LineSeries::new(generator, generator_color.stroke_width(1)))
        .map_err(err)?
        .label("generator (magpie-bench)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], generator_color));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    drop(chart);
    drop(root);
    Ok(path)
}
