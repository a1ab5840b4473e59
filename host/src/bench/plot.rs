//! `--plot FILE.svg`: one small bar chart per workload metric, backends
//! (and the floor) side by side, each bar the median (its value written
//! on top) with a whisker over the interquartile range. Lower is better everywhere except
//! throughput, which the panel title says.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{Report, Unit};

/// Colours per column, in column order (floor last, grey).
const PALETTE: &[RGBColor] = &[
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];
const FLOOR: RGBColor = RGBColor(0x99, 0x99, 0x99);

/// A bar's value in three significant digits or so.
fn short_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("{e}")
}

/// Draws `report` into `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<()> {
    let rows = report.rows();
    let cols = 3usize;
    let nrows = rows.len().div_ceil(cols).max(1);
    let (w, h) = (1200u32, 60 + 260 * nrows as u32);
    let root = SVGBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (title, body) = root.split_vertically(60);
    title
        .draw(&Text::new(
            format!(
                "drivers bench: median (bar, value on top) and interquartile range (whisker), {} runs; lower is better except MB/s",
                report.plan.reps
            ),
            (10, 20),
            ("sans-serif", 18).into_font(),
        ))
        .map_err(err)?;
    let kernel = report.machine["kernel"].as_str().unwrap_or("?");
    let cpus = report.machine["cpus"].as_u64().unwrap_or(0);
    title
        .draw(&Text::new(
            format!("{cpus} CPUs, Linux {kernel}; image {:.0} MB uncompressed; grey = floor (tar -x, mkdir, bind mount)", report.image_bytes as f64 / 1e6),
            (10, 42),
            ("sans-serif", 13).into_font(),
        ))
        .map_err(err)?;
    let panels = body.split_evenly((nrows, cols));
    let names: Vec<String> = report.columns.iter().map(|c| c.name.clone()).collect();
    for (panel, (id, w_no, label, unit)) in panels.iter().zip(rows.iter()) {
        let bars: Vec<(usize, f64, f64, f64)> = report
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let m = c.metric(id)?;
                let (lo, hi) = m.range()?;
                let scale = if *unit == Unit::Bytes {
                    1.0 / (1024.0 * 1024.0)
                } else {
                    1.0
                };
                Some((i, m.median()? * scale, lo * scale, hi * scale))
            })
            .collect();
        let ymax = bars.iter().map(|b| b.3).fold(0.0f64, f64::max).max(1e-9) * 1.15;
        let unit_label = match unit {
            Unit::S => "s",
            Unit::Ms => "ms",
            Unit::Us => "µs",
            Unit::MbPerS => "MB/s",
            Unit::Bytes => "MiB",
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{w_no}. {label} ({unit_label})"),
                ("sans-serif", 14),
            )
            .margin(8)
            .x_label_area_size(22)
            .y_label_area_size(48)
            // A segmented 0..n has n + 1 segments: one per column is 0..n-1.
            .build_cartesian_2d(
                (0..names.len().saturating_sub(1).max(1)).into_segmented(),
                0f64..ymax,
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(names.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|v| {
                format!("{v:.3}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_owned()
            })
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        let colour = |i: usize| {
            if names[i] == "floor" {
                FLOOR
            } else {
                PALETTE[i % PALETTE.len()]
            }
        };
        chart
            .draw_series(bars.iter().map(|&(i, med, _, _)| {
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), med),
                    ],
                    colour(i).filled(),
                );
                r.set_margin(0, 0, 12, 12);
                r
            }))
            .map_err(err)?;
        chart
            .draw_series(bars.iter().map(|&(i, _, lo, hi)| {
                PathElement::new(
                    vec![
                        (SegmentValue::CenterOf(i), lo),
                        (SegmentValue::CenterOf(i), hi),
                    ],
                    BLACK.stroke_width(2),
                )
            }))
            .map_err(err)?;
        chart
            .draw_series(bars.iter().map(|&(i, med, _, hi)| {
                Text::new(
                    short_value(med),
                    (SegmentValue::CenterOf(i), med.max(hi) + ymax * 0.02),
                    TextStyle::from(("sans-serif", 11).into_font())
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            }))
            .map_err(err)?;
        // A column that has no bar here failed this workload: say so.
        for (i, c) in report.columns.iter().enumerate() {
            let failed = c.metric(id).is_some_and(|m| m.samples.is_empty());
            if failed {
                chart
                    .draw_series(std::iter::once(Text::new(
                        "failed",
                        (SegmentValue::CenterOf(i), ymax * 0.05),
                        ("sans-serif", 12).into_font().color(&RED),
                    )))
                    .map_err(err)?;
            }
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
