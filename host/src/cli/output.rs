//! How commands print: one JSON document with `--json`, aligned tables
//! otherwise. Sizes and times are formatted here and nowhere else.

use std::io::Write;

use crate::error::{Error, Result};

/// Where a command's data goes.
pub struct Out {
    /// Print JSON instead of tables.
    pub json: bool,
}

impl Out {
    /// Prints `value` as JSON, or `human()` as text.
    pub fn emit<T: serde::Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> Result<()> {
        let text = if self.json {
            let mut s = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
                what: "output".into(),
                source: e,
            })?;
            s.push('\n');
            s
        } else {
            human()
        };
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`drivers image ls | head`) is not an error worth a message.
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
        Ok(())
    }
}

/// Renders rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `1.5 GiB`-style sizes, binary units.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses `50M`, `4G`, `1048576`, `1.5GiB` into bytes (binary units).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512M or 4G"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use K, M, G or T)")),
    };
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?} is not a positive size"));
    }
    Ok(bytes as u64)
}

/// An epoch time as `2026-11-24 10:00:00` (UTC), or `-` for 0.
pub fn time(secs: i64) -> String {
    if secs <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_owned()
}

/// `sha256:0123456789ab` from a full digest, for tables.
pub fn short(d: &str) -> String {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() > 12 => format!("sha256:{}", &h[..12]),
        _ => d.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes users type parse to the bytes they mean; nonsense is refused.
    #[test]
    fn sizes_parse() {
        for (s, n) in [
            ("50M", 50 << 20),
            ("4G", 4 << 30),
            ("1048576", 1 << 20),
            ("1.5GiB", 3 << 29),
            ("10k", 10 << 10),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for bad in ["", "x", "-1G", "0", "5Q", "1..2M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    /// Tables align every column on its widest cell.
    #[test]
    fn tables_align() {
        let t = table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A     LONGER\nxxxx  y\n");
    }
}
