//! A small parser of the Prometheus text exposition format (version 0.0.4),
//! enough for `stats`: samples with their labels and values; `# HELP` /
//! `# TYPE` lines and timestamps are skipped.
//!
//! Why not a crate: the one on crates.io for this (`prometheus-parse`)
//! brings regex, lazy_static and chrono's full feature set for what is a
//! line format of a page of rules, and it fails a whole scrape on one bad
//! line. This parser keeps every line it understands, reports the others
//! with their line numbers, and never panics on any input (property-tested
//! in `tests/prom_parse.rs`).
//!
//! ```
//! let e = tiercache_cli::prom::parse(
//!     "# TYPE tiercache_hits_total counter\n\
//!      tiercache_hits_total{namespace=\"products\",tier=\"local\"} 42\n",
//! );
//! assert_eq!(e.samples[0].name, "tiercache_hits_total");
//! assert_eq!(e.samples[0].label("tier"), Some("local"));
//! assert_eq!(e.samples[0].value, 42.0);
//! assert!(e.errors.is_empty());
//! ```

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name (with a histogram's `_bucket`/`_sum`/`_count`).
    pub name: String,
    /// The labels, in order.
    pub labels: Vec<(String, String)>,
    /// The value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A line that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed exposition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    /// The samples, in order.
    pub samples: Vec<Sample>,
    /// The lines that were not understood.
    pub errors: Vec<LineError>,
}

/// Parses `text`; lines that are not understood are listed in
/// [`Exposition::errors`], and the rest is kept.
pub fn parse(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_sample(line) {
            Ok(s) => e.samples.push(s),
            Err(reason) => e.errors.push(LineError {
                line: i + 1,
                reason,
            }),
        }
    }
    e
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.pos..).and_then(|r| r.chars().next())
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }
    fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.bump();
        }
    }
    /// `[a-zA-Z_:][a-zA-Z0-9_:]*` (`colon` false: no colons, for labels).
    fn name(&mut self, colon: bool) -> Option<&'a str> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            let ok = c.is_ascii_alphabetic()
                || c == '_'
                || (colon && c == ':')
                || (self.pos > start && c.is_ascii_digit());
            if !ok {
                break;
            }
            self.bump();
        }
        (self.pos > start).then(|| self.s.get(start..self.pos).unwrap_or(""))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let mut c = Cursor { s: line, pos: 0 };
    let name = c.name(true).ok_or("no metric name")?.to_owned();
    let mut labels = Vec::new();
    c.skip_ws();
    if c.peek() == Some('{') {
        c.bump();
        loop {
            c.skip_ws();
            if c.peek() == Some('}') {
                c.bump();
                break;
            }
            let key = c.name(false).ok_or("bad label name")?.to_owned();
            c.skip_ws();
            if c.bump() != Some('=') {
                return Err(format!("label {key}: expected '='"));
            }
            c.skip_ws();
            if c.bump() != Some('"') {
                return Err(format!("label {key}: expected '\"'"));
            }
            let mut value = String::new();
            loop {
                match c.bump() {
                    None => return Err(format!("label {key}: unterminated value")),
                    Some('"') => break,
                    Some('\\') => match c.bump() {
                        Some('n') => value.push('\n'),
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some(other) => {
                            value.push('\\');
                            value.push(other);
                        }
                        None => return Err(format!("label {key}: unterminated value")),
                    },
                    Some(ch) => value.push(ch),
                }
            }
            labels.push((key, value));
            c.skip_ws();
            match c.bump() {
                Some(',') => {}
                Some('}') => break,
                _ => return Err("expected ',' or '}' after a label".to_owned()),
            }
        }
    }
    let mut fields = c.rest().split_whitespace();
    let raw = fields.next().ok_or("no value")?;
    let value = raw
        .parse::<f64>()
        .map_err(|_| format!("bad value {raw:?}"))?;
    if let Some(ts) = fields.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("bad timestamp {ts:?}"));
    }
    if fields.next().is_some() {
        return Err("trailing fields".to_owned());
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_exporters_write() {
        let e = parse(
            "# HELP x y\n# TYPE x counter\n\
             a 1\n\
             b{} 2 1700000000000\n\
             c{l=\"v\",m=\"a\\\"b\\\\c\\nd\",} +Inf\n\
             d{le=\"0.5\"} NaN\n\
             e{q=\"ü{}\"} -3.5e2\n",
        );
        assert!(e.errors.is_empty(), "{:?}", e.errors);
        assert_eq!(e.samples.len(), 5);
        assert_eq!(e.samples[2].label("m"), Some("a\"b\\c\nd"));
        assert!(e.samples[2].value.is_infinite());
        assert!(e.samples[3].value.is_nan());
        assert_eq!(e.samples[4].label("q"), Some("ü{}"));
        assert_eq!(e.samples[4].value, -350.0);
    }

    #[test]
    fn reports_bad_lines_and_keeps_the_rest() {
        let e = parse("a 1\n{x} 2\nb{l=\"v} 3\nc 1 2 3\nd x\ne 5\n");
        assert_eq!(e.samples.len(), 2);
        assert_eq!(
            e.errors.iter().map(|x| x.line).collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
    }
}
