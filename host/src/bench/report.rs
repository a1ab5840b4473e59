//! What a bench run measured: raw samples per (column, metric), the table
//! of medians and spreads, and the JSON document of `--json`.

use super::Plan;

/// The unit of a metric's samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Seconds.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Megabytes (10⁶ bytes) per second.
    MbPerS,
    /// Bytes.
    Bytes,
}

impl Unit {
    fn label(self) -> &'static str {
        match self {
            Unit::S => "s",
            Unit::Ms => "ms",
            Unit::Us => "µs",
            Unit::MbPerS => "MB/s",
            Unit::Bytes => "MiB",
        }
    }

    /// `v` in this unit as the table shows it.
    fn show(self, v: f64) -> String {
        let v = if self == Unit::Bytes {
            v / (1024.0 * 1024.0)
        } else {
            v
        };
        if v.abs() >= 100.0 {
            format!("{v:.0}")
        } else if v.abs() >= 10.0 {
            format!("{v:.1}")
        } else if v.abs() >= 1.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.3}")
        }
    }
}

/// One measured quantity of one column.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Metric {
    /// Stable id, e.g. `import_s`, `read_us_d500`.
    pub id: String,
    /// The workload of the issue it belongs to (1–7).
    pub workload: u8,
    /// What the table row says.
    pub label: String,
    /// Unit of the samples.
    pub unit: Unit,
    /// Every sample, in the order taken.
    pub samples: Vec<f64>,
    /// Why the workload failed (samples taken before the failure are kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Metric {
    /// An empty metric.
    pub fn new(id: impl Into<String>, workload: u8, label: impl Into<String>, unit: Unit) -> Self {
        Metric {
            id: id.into(),
            workload,
            label: label.into(),
            unit,
            samples: Vec::new(),
            error: None,
        }
    }

    /// The median of the samples.
    pub fn median(&self) -> Option<f64> {
        median(&self.samples)
    }

    /// The first and third quartiles of the samples: the spread shown,
    /// robust against the odd sample a shared machine throws in.
    pub fn range(&self) -> Option<(f64, f64)> {
        Some((
            quantile(&self.samples, 0.25)?,
            quantile(&self.samples, 0.75)?,
        ))
    }

    /// `median ±spread%` (spread: half the interquartile range, relative
    /// to the median), or the error.
    fn cell(&self) -> String {
        match (self.median(), self.range(), &self.error) {
            (_, _, Some(e)) if self.samples.is_empty() => format!("FAILED: {}", first_words(e)),
            (Some(m), Some((lo, hi)), err) => {
                let spread = if m.abs() > f64::EPSILON && self.samples.len() > 1 {
                    format!(" ±{:.0}%", (hi - lo) / 2.0 / m.abs() * 100.0)
                } else {
                    String::new()
                };
                let partial = if err.is_some() { " (partial)" } else { "" };
                format!("{}{spread}{partial}", self.unit.show(m))
            }
            _ => "-".into(),
        }
    }
}

/// The median of `v` (mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    quantile(v, 0.5)
}

/// The `q` quantile of `v`, linearly interpolated between order
/// statistics (the usual "type 7" definition).
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(s[lo] + (s[hi] - s[lo]) * (pos - lo as f64))
}

/// An error shortened for a table cell.
fn first_words(e: &str) -> String {
    const MAX: usize = 60;
    let one = e.replace('\n', " ");
    if one.chars().count() <= MAX {
        one
    } else {
        one.chars().take(MAX - 1).collect::<String>() + "…"
    }
}

/// One column of the table: a backend, or the physical floor.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Column {
    /// Backend name, or `floor`.
    pub name: String,
    /// The filesystem the column's data lived on.
    pub filesystem: String,
    /// Its metrics.
    pub metrics: Vec<Metric>,
    /// Why the column stopped early, if it did (set-up failed, interrupted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Column {
    /// The metric `id`, if measured.
    pub fn metric(&self, id: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.id == id)
    }
}

/// The whole run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Kernel, CPUs, the scratch filesystem.
    pub machine: serde_json::Value,
    /// The image of workload 1.
    pub image: String,
    /// Its layers' uncompressed bytes.
    pub image_bytes: u64,
    /// Counts and repetitions.
    pub plan: Plan,
    /// Backends, then the floor.
    pub columns: Vec<Column>,
}

impl Report {
    /// Rows in a stable order: the order metrics were first seen.
    pub fn rows(&self) -> Vec<(String, u8, String, Unit)> {
        let mut rows: Vec<(String, u8, String, Unit)> = Vec::new();
        for c in &self.columns {
            for m in &c.metrics {
                if !rows.iter().any(|r| r.0 == m.id) {
                    rows.push((m.id.clone(), m.workload, m.label.clone(), m.unit));
                }
            }
        }
        rows.sort_by_key(|r| r.1.min(6));
        rows
    }

    /// The human table: one row per metric, backends (and the floor) as
    /// columns, then every error in full.
    pub fn table(&self) -> String {
        let mut header = vec!["WORKLOAD".to_owned()];
        header.extend(self.columns.iter().map(|c| c.name.to_uppercase()));
        let mut rows = Vec::new();
        for (id, w, label, unit) in self.rows() {
            let mut r = vec![format!("{w}. {label} ({})", unit.label())];
            for c in &self.columns {
                r.push(c.metric(&id).map_or_else(|| "".into(), Metric::cell));
            }
            rows.push(r);
        }
        let h: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut out = crate::cli::table(&h, &rows);
        let p = &self.plan;
        out.push_str(&format!(
            "\nmedian ±half the interquartile range, relative to the median; {} runs; {} containers, {} mount cycles, depths {:?}; \
             image {:.1} MB uncompressed; floor on {}\n",
            p.reps,
            p.containers,
            p.mount_cycles,
            p.depths,
            self.image_bytes as f64 / 1e6,
            self.columns
                .iter()
                .find(|c| c.name == "floor")
                .map_or("-", |c| c.filesystem.as_str()),
        ));
        let mut errors = Vec::new();
        for c in &self.columns {
            if let Some(e) = &c.error {
                errors.push(format!("{}: {e}", c.name));
            }
            for m in &c.metrics {
                if let Some(e) = &m.error {
                    errors.push(format!("{} / {}: {e}", c.name, m.id));
                }
            }
        }
        if !errors.is_empty() {
            out.push_str("\nfailures:\n");
            for e in errors {
                out.push_str(&format!("  {e}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{Metric, Unit, median, quantile};

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.25), Some(2.0));
        assert_eq!(quantile(&[1.0, 2.0], 0.75), Some(1.75));
    }

    #[test]
    fn cells_show_median_spread_and_failures() {
        let mut m = Metric::new("x", 1, "x", Unit::Ms);
        assert_eq!(m.cell(), "-");
        m.samples = vec![10.0, 12.0, 14.0];
        // IQR 11..13 around 12: ±1/12.
        assert_eq!(m.cell(), "12.0 ±8%");
        m.error = Some("boom".into());
        assert_eq!(m.cell(), "12.0 ±8% (partial)");
        let mut f = Metric::new("y", 5, "y", Unit::Us);
        f.error = Some("layer 501 of a chain: too deep".into());
        assert_eq!(f.cell(), "FAILED: layer 501 of a chain: too deep");
    }
}
