//! The operator's settings for a plugin (`drivers plugin add --set
//! KEY=VALUE`), with parsers for the usual shapes: sizes, durations,
//! numbers, lists. Every error is a [`PolicyError::InvalidConfig`] naming
//! the key, which `drivers plugin add` shows as it is.

use crate::types::PolicyError;

/// Key-value settings, in the order the operator gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings(Vec<(String, String)>);

fn invalid(key: &str, value: &str, what: &str) -> PolicyError {
    PolicyError::InvalidConfig(format!("{key}={value:?}: {what}"))
}

impl Settings {
    /// Settings from key-value pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Settings {
        Settings(pairs)
    }

    /// Settings from `KEY=VALUE` strings, as on the command line.
    ///
    /// # Panics
    ///
    /// If a string has no `=`: meant for tests.
    pub fn parse(pairs: &[&str]) -> Settings {
        Settings(
            pairs
                .iter()
                .map(|p| {
                    let (k, v) = p.split_once('=').expect("KEY=VALUE");
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
        )
    }

    /// Every pair.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The value of `key` (the last one if given twice).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Pairs whose key starts with `prefix`, with the prefix removed, e.g.
    /// `image.` for `image.debian=2G`.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.0
            .iter()
            .filter_map(move |(k, v)| k.strip_prefix(prefix).map(|k| (k, v.as_str())))
    }

    /// Refuses keys not in `known` (an entry ending in `.` allows every key
    /// with that prefix), so a typo is an error instead of a silent default.
    pub fn only(&self, known: &[&str]) -> Result<(), PolicyError> {
        for (k, _) in &self.0 {
            let ok = known.iter().any(|n| {
                if n.ends_with('.') {
                    k.starts_with(n) && k.len() > n.len()
                } else {
                    k == n
                }
            });
            if !ok {
                return Err(PolicyError::InvalidConfig(format!(
                    "unknown setting {k:?} (known: {})",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// A size such as `512M`, `4G`, `1.5GiB` or `4096` (binary units).
    pub fn size(&self, key: &str) -> Result<Option<u64>, PolicyError> {
        self.get(key)
            .map(|v| parse_size(v).map_err(|why| invalid(key, v, &why)))
            .transpose()
    }

    /// A duration in seconds, such as `90s`, `30m`, `24h`, `7d` or `3600`.
    pub fn duration(&self, key: &str) -> Result<Option<u64>, PolicyError> {
        self.get(key)
            .map(|v| parse_duration(v).map_err(|why| invalid(key, v, &why)))
            .transpose()
    }

    /// A non-negative integer.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, PolicyError> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| invalid(key, v, "not a non-negative integer"))
            })
            .transpose()
    }

    /// A comma-separated list; empty items are dropped.
    pub fn list(&self, key: &str) -> Option<Vec<String>> {
        self.get(key).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }
}

/// Parses `512M`, `4G`, `1.5GiB`, `4096`: binary units, bytes by default.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| "not a size like 512M or 4G".to_owned())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown unit {other:?} (use K, M, G or T)")),
    };
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err("not a size".into());
    }
    Ok(bytes as u64)
}

/// Parses `90s`, `30m`, `24h`, `7d`, `3600` into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "not a duration like 30m, 24h or 7d".to_owned())?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => return Err(format!("unknown unit {other:?} (use s, m, h, d or w)")),
    };
    n.checked_mul(mult).ok_or_else(|| "too long".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes and durations parse in the units the README documents, and
    /// bad values name the key.
    #[test]
    fn parsers() {
        let s = Settings::parse(&["a=4G", "b=1.5K", "c=24h", "d=7d", "e=x", "f=10"]);
        assert_eq!(s.size("a").unwrap(), Some(4 << 30));
        assert_eq!(s.size("b").unwrap(), Some(1536));
        assert_eq!(s.size("f").unwrap(), Some(10));
        assert_eq!(s.duration("c").unwrap(), Some(86_400));
        assert_eq!(s.duration("d").unwrap(), Some(7 * 86_400));
        assert_eq!(s.size("missing").unwrap(), None);
        match s.size("e") {
            Err(PolicyError::InvalidConfig(m)) => assert!(m.starts_with("e=\"x\""), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(s.duration("a").is_err());
    }

    /// `only` refuses typos and accepts declared prefixes.
    #[test]
    fn only_known_keys() {
        let s = Settings::parse(&["default=1G", "image.web=2G"]);
        assert!(s.only(&["default", "image."]).is_ok());
        assert!(s.only(&["default"]).is_err());
        assert!(Settings::parse(&["image.=1"]).only(&["image."]).is_err());
        assert_eq!(
            s.with_prefix("image.").collect::<Vec<_>>(),
            vec![("web", "2G")]
        );
        assert_eq!(
            Settings::parse(&["k=a, b,,c"]).list("k"),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
    }
}
