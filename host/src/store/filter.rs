//! containerd's filter language, for `walk`: `kind==active,labels."a.b"==x`.
//!
//! Within one filter, comma-separated selectors must all match (AND); a list
//! of filters matches if any does (OR). A selector is a field path, optionally
//! followed by `==`, `!=` or `~=` (regular expression) and a value. A bare
//! field path matches when the field is present. Field path components and
//! values may be double-quoted, with backslash escapes.

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// A parsed filter list (OR of ANDs). An empty list matches everything.
#[derive(Clone, Debug, Default)]
pub struct Filters(Vec<Vec<(Selector, Option<regex::Regex>)>>);

/// Answers field lookups for one object; `None` means absent.
pub trait Fields {
    /// The value at `path`, e.g. `["labels", "a.b"]`.
    fn field(&self, path: &[String]) -> Option<String>;
}

impl Filters {
    /// Parses each filter string.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the filter and the position of the mistake.
    pub fn parse(filters: &[&str]) -> Result<Filters> {
        let mut out = Vec::new();
        for f in filters {
            let sels = parse_one(f).map_err(|reason| Error::Invalid {
                field: "filter",
                reason: format!("{f:?}: {reason}"),
            })?;
            let mut compiled = Vec::new();
            for s in sels {
                let re = match &s.op {
                    Op::Matches(pat) => {
                        Some(regex::Regex::new(pat).map_err(|e| Error::Invalid {
                            field: "filter",
                            reason: format!("{f:?}: bad regular expression: {e}"),
                        })?)
                    }
                    _ => None,
                };
                compiled.push((s, re));
            }
            out.push(compiled);
        }
        Ok(Filters(out))
    }

    /// Whether `obj` passes.
    pub fn matches(&self, obj: &dyn Fields) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|all| {
                all.iter().all(|(s, re)| {
                    let v = obj.field(&s.path);
                    match &s.op {
                        Op::Present => v.is_some(),
                        Op::Equal(x) => v.as_deref() == Some(x.as_str()),
                        Op::NotEqual(x) => v.as_deref().unwrap_or("") != x,
                        Op::Matches(_) => {
                            v.is_some_and(|v| re.as_ref().is_some_and(|re| re.is_match(&v)))
                        }
                    }
                })
            })
    }
}

struct Scanner<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn quoted(&mut self) -> Result<String, String> {
        let start = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(format!("unterminated quote at {start}")),
                Some(b'"') => {
                    self.pos += 1;
                    return String::from_utf8(out).map_err(|_| "quoted text is not UTF-8".into());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.peek().ok_or("dangling backslash")?;
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// A field path component: quoted, or `[A-Za-z0-9_]+`.
    fn field(&mut self) -> Result<String, String> {
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(format!("expected a field name at {start}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }

    /// A value: quoted, or everything up to the next comma (trimmed).
    fn value(&mut self) -> Result<String, String> {
        self.skip_space();
        if self.peek() == Some(b'"') {
            return self.quoted();
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| c != b',') {
            self.pos += 1;
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos])
            .trim()
            .to_owned())
    }
}

fn parse_one(f: &str) -> Result<Vec<Selector>, String> {
    let mut sc = Scanner {
        s: f.as_bytes(),
        pos: 0,
    };
    let mut out = Vec::new();
    loop {
        sc.skip_space();
        let mut path = vec![sc.field()?];
        while sc.peek() == Some(b'.') {
            sc.pos += 1;
            path.push(sc.field()?);
        }
        sc.skip_space();
        let rest = &sc.s[sc.pos..];
        let op = if rest.starts_with(b"==") || rest.starts_with(b"!=") || rest.starts_with(b"~=") {
            let kind = rest[0];
            sc.pos += 2;
            let v = sc.value()?;
            match kind {
                b'=' => Op::Equal(v),
                b'!' => Op::NotEqual(v),
                _ => Op::Matches(v),
            }
        } else {
            Op::Present
        };
        out.push(Selector { path, op });
        sc.skip_space();
        match sc.peek() {
            None => return Ok(out),
            Some(b',') => sc.pos += 1,
            Some(c) => return Err(format!("unexpected {:?} at {}", c as char, sc.pos)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Obj(BTreeMap<&'static str, &'static str>);
    impl Fields for Obj {
        fn field(&self, path: &[String]) -> Option<String> {
            self.0.get(path.join(".").as_str()).map(|s| s.to_string())
        }
    }

    /// Table of containerd filter expressions and whether they match one
    /// object; guards AND within a filter, OR across filters, quoting,
    /// presence and inequality with absent fields.
    #[test]
    fn containerd_filter_semantics() {
        let o = Obj(BTreeMap::from([
            ("name", "a-wl"),
            ("kind", "active"),
            ("parent", "p-wl"),
            ("labels.l", "2"),
            ("labels.containerd.io/gc.root", "check-walk"),
        ]));
        let cases: &[(&[&str], bool)] = &[
            (&[], true),
            (&["kind==active"], true),
            (&["kind==view"], false),
            (&[r#"labels."containerd.io/gc.root"==check-walk"#], true),
            (
                &[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#],
                true,
            ),
            (&["name==p", "name==a-wl"], true),
            (&["name==a-wl,labels.l"], true),
            (&["name==a-wl,labels.missing"], false),
            (&[r#"parent!="""#], true),
            (&["labels.l==2"], true),
            (&["labels.l!=2"], false),
            (&["labels.missing!=x"], true),
            (&["name~=^a-"], true),
            (&["name~=^b"], false),
        ];
        for (filters, want) in cases {
            let f = Filters::parse(filters).unwrap();
            assert_eq!(f.matches(&o), *want, "{filters:?}");
        }
    }

    /// Malformed filters are refused with a message, never matched loosely.
    #[test]
    fn malformed_filters_are_refused() {
        for bad in [r#"labels."open"#, "==x", "name==a,", "name~=("] {
            assert!(Filters::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
