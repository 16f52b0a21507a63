//! A parser of the text the built-in `test_decoding` output plugin produces
//! (with `include-xids` and `include-timestamp` on):
//!
//! ```text
//! BEGIN 745
//! table public.products: INSERT: id[bigint]:1 name[text]:'it''s' category[text]:null
//! table public.products: UPDATE: old-key: id[bigint]:1 ... new-tuple: id[bigint]:1 ...
//! table public.products: DELETE: id[bigint]:1
//! table public.a, public.b: TRUNCATE: (no-flags)
//! message: transactional: 1 prefix: tiercache, sz: 31 content:{"namespace":"products"}
//! COMMIT 745 (at 2024-05-01 12:34:56.123456+00)
//! ```
//!
//! Values are printed as SQL literals: numbers and booleans bare, bit strings
//! as `B'0101'`, everything else single-quoted with embedded quotes doubled;
//! `null` for NULL and `unchanged-toast-datum` for a TOASTed value an update
//! left alone. Identifiers are double-quoted when they need to be.

use crate::rules::{Op, Row, RowChange, Value};

/// One line of `test_decoding` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A transaction starts.
    Begin,
    /// A transaction committed, at this time (µs since the Unix epoch) when
    /// the line carries one.
    Commit {
        /// The commit time.
        time_us: Option<i64>,
    },
    /// A row changed.
    Change(RowChange),
    /// Tables were truncated.
    Truncate {
        /// `(schema, table)` of each.
        tables: Vec<(String, String)>,
    },
    /// A `pg_logical_emit_message` message.
    Message {
        /// Sent with `transactional = true`.
        transactional: bool,
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: String,
    },
}

/// Why a line could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse test_decoding output at byte {at}: {reason}: {line:?}")]
pub struct ParseError {
    /// Byte offset in the line.
    pub at: usize,
    /// What was expected.
    pub reason: String,
    /// The line (cut to 200 bytes).
    pub line: String,
}

/// Parses one line.
pub fn parse(line: &str) -> Result<Record, ParseError> {
    let mut p = Parser { s: line, pos: 0 };
    p.record()
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, ParseError> {
        let mut cut = self.s.len().min(200);
        while !self.s.is_char_boundary(cut) {
            cut -= 1;
        }
        Err(ParseError {
            at: self.pos,
            reason: reason.into(),
            line: self.s[..cut].to_owned(),
        })
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.rest().starts_with(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, lit: &str) -> Result<(), ParseError> {
        if self.eat(lit) {
            Ok(())
        } else {
            self.err(format!("expected {lit:?}"))
        }
    }

    fn skip_spaces(&mut self) {
        while self.rest().starts_with(' ') {
            self.pos += 1;
        }
    }

    fn record(&mut self) -> Result<Record, ParseError> {
        if self.eat("BEGIN") {
            return Ok(Record::Begin);
        }
        if self.eat("COMMIT") {
            let rest = self.rest();
            let time_us = match (rest.find("(at "), rest.rfind(')')) {
                (Some(a), Some(b)) if b > a + 4 => parse_timestamptz(&rest[a + 4..b]),
                _ => None,
            };
            return Ok(Record::Commit { time_us });
        }
        if self.eat("message: ") {
            return self.message();
        }
        if self.eat("table ") {
            return self.table_change();
        }
        self.err("unknown record")
    }

    fn message(&mut self) -> Result<Record, ParseError> {
        self.expect("transactional: ")?;
        let transactional = if self.eat("1") {
            true
        } else if self.eat("0") {
            false
        } else {
            return self.err("expected 0 or 1");
        };
        self.expect(" prefix: ")?;
        // The prefix is printed raw and ends at ", sz: ".
        let Some(end) = self.rest().find(", sz: ") else {
            return self.err("expected \", sz: \"");
        };
        let prefix = self.rest()[..end].to_owned();
        self.pos += end + ", sz: ".len();
        let digits = self.rest().bytes().take_while(u8::is_ascii_digit).count();
        let sz: usize = match self.rest()[..digits].parse() {
            Ok(n) => n,
            Err(_) => return self.err("expected a size"),
        };
        self.pos += digits;
        self.expect(" content:")?;
        let content = self.rest();
        if content.len() != sz {
            return self.err(format!(
                "content is {} bytes, header says {sz}",
                content.len()
            ));
        }
        Ok(Record::Message {
            transactional,
            prefix,
            content: content.to_owned(),
        })
    }

    fn ident(&mut self) -> Result<String, ParseError> {
        if self.eat("\"") {
            let mut out = String::new();
            loop {
                let rest = self.rest();
                match rest.find('"') {
                    None => return self.err("unterminated quoted identifier"),
                    Some(i) => {
                        out.push_str(&rest[..i]);
                        self.pos += i + 1;
                        if self.eat("\"") {
                            out.push('"');
                        } else {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        let n = self
            .rest()
            .char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '$'))
            .map_or(self.rest().len(), |(i, _)| i);
        if n == 0 {
            return self.err("expected an identifier");
        }
        let id = self.rest()[..n].to_owned();
        self.pos += n;
        Ok(id)
    }

    fn qualified(&mut self) -> Result<(String, String), ParseError> {
        let schema = self.ident()?;
        self.expect(".")?;
        let table = self.ident()?;
        Ok((schema, table))
    }

    fn table_change(&mut self) -> Result<Record, ParseError> {
        let mut tables = vec![self.qualified()?];
        while self.eat(", ") {
            tables.push(self.qualified()?);
        }
        self.expect(": ")?;
        let op_len = self.rest().find(':').unwrap_or(0);
        let op = match Op::parse(&self.rest()[..op_len]) {
            Some(op) => op,
            None => return self.err("expected INSERT, UPDATE, DELETE or TRUNCATE"),
        };
        self.pos += op_len + 1;
        if op == Op::Truncate {
            return Ok(Record::Truncate { tables });
        }
        if tables.len() != 1 {
            return self.err("several tables in a row change");
        }
        let (schema, table) = tables.remove(0);
        self.skip_spaces();
        let (old, new) = if self.eat("(no-tuple-data)") {
            (None, None)
        } else if op == Op::Update && self.eat("old-key:") {
            let old = self.columns(true)?;
            self.expect("new-tuple:")?;
            let new = self.columns(false)?;
            (Some(old), Some(new))
        } else {
            let row = self.columns(false)?;
            match op {
                Op::Delete => (Some(row), None),
                _ => (None, Some(row)),
            }
        };
        Ok(Record::Change(RowChange {
            schema,
            table,
            op,
            old,
            new,
        }))
    }

    /// Columns up to the end, or (when `until_new_tuple`) up to `new-tuple:`.
    fn columns(&mut self, until_new_tuple: bool) -> Result<Row, ParseError> {
        let mut row = Row::new();
        loop {
            self.skip_spaces();
            if self.rest().is_empty() {
                if until_new_tuple {
                    return self.err("expected \"new-tuple:\"");
                }
                return Ok(row);
            }
            if until_new_tuple && self.rest().starts_with("new-tuple:") {
                return Ok(row);
            }
            let name = self.ident()?;
            self.expect("[")?;
            // The type name may itself contain brackets (`integer[]`).
            let mut depth = 1usize;
            let mut end = None;
            for (i, c) in self.rest().char_indices() {
                match c {
                    '[' => depth += 1,
                    ']' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let Some(end) = end else {
                return self.err("unterminated type name");
            };
            self.pos += end + 1;
            self.expect(":")?;
            let value = self.value()?;
            row.insert(name, value);
        }
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        if self.rest().starts_with('\'') {
            return self.quoted().map(Value::Text);
        }
        if self.rest().starts_with("B'") {
            self.pos += 1;
            return self.quoted().map(Value::Text);
        }
        let n = self.rest().find(' ').unwrap_or(self.rest().len());
        let token = &self.rest()[..n];
        let v = match token {
            "null" => Value::Null,
            "unchanged-toast-datum" => Value::UnchangedToast,
            "" => return self.err("expected a value"),
            t => Value::Text(t.to_owned()),
        };
        self.pos += n;
        Ok(v)
    }

    fn quoted(&mut self) -> Result<String, ParseError> {
        self.expect("'")?;
        let mut out = String::new();
        loop {
            let rest = self.rest();
            match rest.find('\'') {
                None => return self.err("unterminated quoted value"),
                Some(i) => {
                    out.push_str(&rest[..i]);
                    self.pos += i + 1;
                    if self.eat("'") {
                        out.push('\'');
                    } else {
                        return Ok(out);
                    }
                }
            }
        }
    }
}

/// Parses Postgres's ISO timestamptz text (`2024-05-01 12:34:56.123456+00`,
/// `+05:30`, `-03:00:00`) into µs since the Unix epoch.
pub fn parse_timestamptz(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_once(' ')?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    if d.next().is_some() {
        return None;
    }
    // Time, then the offset sign.
    let sign_at = rest.find(['+', '-'])?;
    let (time, offset) = rest.split_at(sign_at);
    let mut t = time.split(':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let sec_text = t.next()?;
    let (sec, frac) = sec_text.split_once('.').unwrap_or((sec_text, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut micros: i64 = 0;
    for (i, c) in frac.chars().take(6).enumerate() {
        micros += i64::from(c.to_digit(10)? as u8) * 10i64.pow(5 - i as u32);
    }
    let neg = offset.starts_with('-');
    let mut o = offset[1..].split(':');
    let oh: i64 = o.next()?.parse().ok()?;
    let om: i64 = o.next().map_or(Some(0), |x| x.parse().ok())?;
    let os: i64 = o.next().map_or(Some(0), |x| x.parse().ok())?;
    let off = (oh * 3600 + om * 60 + os) * if neg { -1 } else { 1 };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + sec - off;
    Some(secs * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn change(line: &str) -> RowChange {
        match parse(line).unwrap() {
            Record::Change(c) => c,
            other => panic!("not a change: {other:?}"),
        }
    }

    #[test]
    fn begin_and_commit_with_timestamp() {
        assert_eq!(parse("BEGIN 745").unwrap(), Record::Begin);
        assert_eq!(
            parse("COMMIT 745 (at 1970-01-01 00:00:01.5+00)").unwrap(),
            Record::Commit {
                time_us: Some(1_500_000)
            }
        );
        assert_eq!(
            parse("COMMIT 745").unwrap(),
            Record::Commit { time_us: None }
        );
    }

    #[test]
    fn timestamps_with_offsets() {
        assert_eq!(
            parse_timestamptz("2024-05-01 12:34:56.123456+00"),
            Some(1_714_566_896_123_456)
        );
        assert_eq!(
            parse_timestamptz("2024-05-01 18:04:56.123456+05:30"),
            Some(1_714_566_896_123_456)
        );
        assert_eq!(
            parse_timestamptz("2024-05-01 09:34:56.123456-03"),
            Some(1_714_566_896_123_456)
        );
        assert_eq!(
            parse_timestamptz("2000-01-01 00:00:00+00"),
            Some(946_684_800_000_000)
        );
        assert_eq!(parse_timestamptz("garbage"), None);
    }

    #[test]
    fn insert_with_quotes_nulls_and_types() {
        let c = change(
            "table public.products: INSERT: id[bigint]:1 name[text]:'it''s a ''quote'' ' \
             price[numeric]:9.50 active[boolean]:true tags[text[]]:'{a,\"b c\"}' \
             note[character varying]:null bits[bit(4)]:B'0101' empty[text]:''",
        );
        assert_eq!(c.schema, "public");
        assert_eq!(c.table, "products");
        assert_eq!(c.op, Op::Insert);
        assert!(c.old.is_none());
        let n = c.new.unwrap();
        assert_eq!(n["id"], t("1"));
        assert_eq!(n["name"], t("it's a 'quote' "));
        assert_eq!(n["price"], t("9.50"));
        assert_eq!(n["active"], t("true"));
        assert_eq!(n["tags"], t("{a,\"b c\"}"));
        assert_eq!(n["note"], Value::Null);
        assert_eq!(n["bits"], t("0101"));
        assert_eq!(n["empty"], t(""));
    }

    #[test]
    fn update_with_old_key_and_unchanged_toast() {
        let c = change(
            "table public.products: UPDATE: old-key: id[bigint]:1 category[text]:'new-tuple: x' \
             body[text]:'old' new-tuple: id[bigint]:1 category[text]:'games' body[text]:unchanged-toast-datum",
        );
        assert_eq!(c.op, Op::Update);
        let old = c.old.unwrap();
        assert_eq!(old["category"], t("new-tuple: x"));
        assert_eq!(old["body"], t("old"));
        let new = c.new.unwrap();
        assert_eq!(new["category"], t("games"));
        assert_eq!(new["body"], Value::UnchangedToast);
    }

    #[test]
    fn update_without_old_key_and_delete() {
        let c = change("table public.products: UPDATE: id[bigint]:2 category[text]:'b'");
        assert!(c.old.is_none());
        assert_eq!(c.new.unwrap()["id"], t("2"));
        let c = change("table public.products: DELETE: id[bigint]:2");
        assert_eq!(c.op, Op::Delete);
        assert_eq!(c.old.unwrap()["id"], t("2"));
        let c = change("table public.products: DELETE: (no-tuple-data)");
        assert!(c.old.is_none() && c.new.is_none());
    }

    #[test]
    fn quoted_identifiers() {
        let c = change(
            "table \"My Schema\".\"Odd \"\"T\"\"\": INSERT: \"Col A\"[integer]:3 \"x]y\"[text]:'v'",
        );
        assert_eq!(c.schema, "My Schema");
        assert_eq!(c.table, "Odd \"T\"");
        let n = c.new.unwrap();
        assert_eq!(n["Col A"], t("3"));
        assert_eq!(n["x]y"], t("v"));
    }

    #[test]
    fn truncate_lists_tables() {
        assert_eq!(
            parse("table public.a, public.b: TRUNCATE: restart_seqs cascade").unwrap(),
            Record::Truncate {
                tables: vec![("public".into(), "a".into()), ("public".into(), "b".into())]
            }
        );
        assert!(matches!(
            parse("table public.a: TRUNCATE: (no-flags)").unwrap(),
            Record::Truncate { .. }
        ));
    }

    #[test]
    fn messages() {
        let content = r#"{"namespace":"p","keys":["1"]}"#;
        let line = format!(
            "message: transactional: 1 prefix: tiercache, sz: {} content:{content}",
            content.len()
        );
        assert_eq!(
            parse(&line).unwrap(),
            Record::Message {
                transactional: true,
                prefix: "tiercache".into(),
                content: content.into()
            }
        );
        assert_eq!(
            parse("message: transactional: 0 prefix: tiercache-heartbeat, sz: 0 content:").unwrap(),
            Record::Message {
                transactional: false,
                prefix: "tiercache-heartbeat".into(),
                content: String::new()
            }
        );
        assert!(parse("message: transactional: 1 prefix: x, sz: 5 content:ab").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for line in [
            "",
            "table",
            "table public.x: UPSERT: a[int]:1",
            "table public.x: INSERT: a[int:1",
            "table public.x: INSERT: a[int]:'unterminated",
            "table public.x: UPDATE: old-key: a[int]:1",
            "table \"unterminated: INSERT:",
            "message: transactional: 2",
            "héllo wörld",
        ] {
            assert!(parse(line).is_err(), "{line:?}");
        }
        // Every prefix of a valid line parses or fails, without a panic.
        let good = "table public.p: UPDATE: old-key: id[bigint]:1 n[text]:'a''b' new-tuple: id[bigint]:1 n[text]:null";
        for i in 0..good.len() {
            if good.is_char_boundary(i) {
                let _ = parse(&good[..i]);
            }
        }
    }
}
