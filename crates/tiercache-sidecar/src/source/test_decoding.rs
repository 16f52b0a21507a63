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

/// The earliest year [`parse_timestamptz`] accepts (AD 1: Postgres prints
/// earlier dates with a ` BC` suffix, which is not accepted).
pub const TIMESTAMP_MIN_YEAR: i64 = 1;
/// The latest year [`parse_timestamptz`] accepts (Postgres's own limit;
/// times after 294247-01-10 04:00:54.775807 UTC do not fit in `i64` µs and
/// give `None`).
pub const TIMESTAMP_MAX_YEAR: i64 = 294_276;
/// The largest UTC offset, in hours, [`parse_timestamptz`] accepts
/// (Postgres's limit is 15:59:59).
pub const TIMESTAMP_MAX_OFFSET_HOURS: i64 = 15;

/// Parses Postgres's ISO timestamptz text (`2024-05-01 12:34:56.123456+00`,
/// `+05:30`, `-03:00:00`) into µs since the Unix epoch.
///
/// Every field must be ASCII digits only, of bounded width, within its range:
/// year [`TIMESTAMP_MIN_YEAR`]..=[`TIMESTAMP_MAX_YEAR`] (up to 6 digits),
/// month 1-12, day 1 to the month's length, hour 0-23, minute and second
/// 0-59 (1 or 2 digits each), an optional fraction of 1 to 6 digits, and an
/// offset `±HH[:MM[:SS]]` of at most [`TIMESTAMP_MAX_OFFSET_HOURS`] hours.
/// The year bounds hold for the UTC instant as well: `0001-01-01 02:00:00+05`
/// is year 0 in UTC, which [`format_timestamptz`] could not print back, so it
/// is `None`.
/// Anything else, including a result that does not fit in `i64`, is `None`:
/// no input panics or wraps.
pub fn parse_timestamptz(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_once(' ')?;
    let mut d = date.split('-');
    let year = field(d.next()?, 6, TIMESTAMP_MIN_YEAR, TIMESTAMP_MAX_YEAR)?;
    let month = field(d.next()?, 2, 1, 12)?;
    let day = field(d.next()?, 2, 1, days_in_month(year, month)?)?;
    if d.next().is_some() {
        return None;
    }
    // Time, then the offset sign.
    let sign_at = rest.find(['+', '-'])?;
    let (time, offset) = rest.split_at(sign_at);
    let mut t = time.split(':');
    let hour = field(t.next()?, 2, 0, 23)?;
    let minute = field(t.next()?, 2, 0, 59)?;
    let sec_text = t.next()?;
    if t.next().is_some() {
        return None;
    }
    let (sec, frac) = match sec_text.split_once('.') {
        Some((sec, frac)) => (sec, Some(frac)),
        None => (sec_text, None),
    };
    let sec = field(sec, 2, 0, 59)?;
    let micros = match frac {
        None => 0,
        Some(frac) => {
            // `frac` is 1 to 6 digits: `.5` is 500000 µs.
            let digits = field(frac, 6, 0, 999_999)?;
            let scale = 10i64.checked_pow(u32::try_from(6usize.checked_sub(frac.len())?).ok()?)?;
            digits.checked_mul(scale)?
        }
    };
    // `offset` starts with the (one-byte) sign found above.
    let neg = offset.starts_with('-');
    let mut o = offset.get(1..)?.split(':');
    let oh = field(o.next()?, 2, 0, TIMESTAMP_MAX_OFFSET_HOURS)?;
    let om = o.next().map_or(Some(0), |x| field(x, 2, 0, 59))?;
    let os = o.next().map_or(Some(0), |x| field(x, 2, 0, 59))?;
    if o.next().is_some() {
        return None;
    }
    let off = oh
        .checked_mul(3600)?
        .checked_add(om.checked_mul(60)?)?
        .checked_add(os)?;
    let off = if neg { off.checked_neg()? } else { off };
    let days = days_from_civil(year, month, day)?;
    let secs = days
        .checked_mul(86_400)?
        .checked_add(hour.checked_mul(3600)?)?
        .checked_add(minute.checked_mul(60)?)?
        .checked_add(sec)?
        .checked_sub(off)?;
    // The offset can carry a time in year 1 into year 0 (UTC).
    if secs < days_from_civil(TIMESTAMP_MIN_YEAR, 1, 1)?.checked_mul(86_400)? {
        return None;
    }
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// A number field of a timestamp: 1 to `max_width` ASCII digits (no sign,
/// no spaces) whose value is within `min..=max`.
fn field(s: &str, max_width: usize, min: i64, max: i64) -> Option<i64> {
    if s.is_empty() || s.len() > max_width || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // At most `max_width` (≤ 18) digits: the parse cannot overflow, and
    // `ok()` covers it anyway.
    let n: i64 = s.parse().ok()?;
    (min..=max).contains(&n).then_some(n)
}

/// The number of days of `month` (1-12) of proleptic Gregorian `year`.
fn days_in_month(year: i64, month: i64) -> Option<i64> {
    Some(match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 => {
            let leap = year.checked_rem_euclid(4)? == 0
                && (year.checked_rem_euclid(100)? != 0 || year.checked_rem_euclid(400)? == 0);
            if leap { 29 } else { 28 }
        }
        _ => return None,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`), `None` if the arithmetic would overflow.
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y.checked_div_euclid(400)?;
    let yoe = y.checked_rem_euclid(400)?;
    let mp = m.checked_add(9)?.checked_rem_euclid(12)?;
    let doy = mp
        .checked_mul(153)?
        .checked_add(2)?
        .checked_div(5)?
        .checked_add(d)?
        .checked_sub(1)?;
    let doe = yoe
        .checked_mul(365)?
        .checked_add(yoe.checked_div(4)?)?
        .checked_sub(yoe.checked_div(100)?)?
        .checked_add(doy)?;
    era.checked_mul(146_097)?
        .checked_add(doe)?
        .checked_sub(719_468)
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

    #[test]
    fn overflowing_timestamps_are_none_not_a_panic() {
        // Issue 11 case 7: each of these overflowed `i64` arithmetic.
        assert_eq!(parse_timestamptz("7-7-4 3:5:9+9999999999999999"), None);
        assert_eq!(parse_timestamptz("7-5-2 9844679083:9:4+6"), None);
        assert_eq!(parse_timestamptz("2-1-8 9:7:9+5:223372036854775807"), None);
        assert_eq!(parse_timestamptz("9223372036854775807-1-1 0:0:0+0"), None);
        assert_eq!(parse_timestamptz("2024-05-01 00:00:00.9999999999+00"), None);
        // The last day Postgres can represent does not fit in i64 µs; the
        // last µs that does is i64::MAX.
        assert_eq!(parse_timestamptz("294276-12-31 23:59:59.999999+00"), None);
        assert_eq!(
            parse_timestamptz("294247-01-10 04:00:54.775807+00"),
            Some(i64::MAX)
        );
        assert_eq!(parse_timestamptz("294247-01-10 04:00:54.775808+00"), None);
        assert_eq!(parse_timestamptz("294247-01-10 04:00:55-00:00:01"), None);
        assert_eq!(
            parse_timestamptz("294247-01-10 04:00:55.775807+00:00:01"),
            Some(i64::MAX)
        );
        // ... but a year within the range does.
        assert_eq!(
            parse_timestamptz("200000-01-01 00:00:00+00"),
            Some(6_249_223_180_800_000_000)
        );
    }

    #[test]
    fn commit_with_an_overflowing_timestamp_is_still_a_commit() {
        // The commit must not be lost (its transaction's changes are applied
        // at the COMMIT line): only its time is unknown.
        assert_eq!(
            parse("COMMIT(at 2-1-8 9:7:9+5:223372036854775807)").unwrap(),
            Record::Commit { time_us: None }
        );
        assert_eq!(
            parse("COMMIT 7 (at 7-7-4 3:5:9+9999999999999999)").unwrap(),
            Record::Commit { time_us: None }
        );
        assert_eq!(
            parse("COMMIT 7 (at 7-5-2 9844679083:9:4+6)").unwrap(),
            Record::Commit { time_us: None }
        );
    }

    /// 0001-01-01T00:00:00Z in µs since the Unix epoch.
    const YEAR_1_UTC_US: i64 = -62_135_596_800_000_000;

    /// Fuzz finding (`fuzz/seeds/test_decoding/year-0-in-utc`): the year
    /// bounds hold for the UTC instant, not only for the local date, so a
    /// positive offset cannot carry year 1 into year 0.
    #[test]
    fn year_bounds_hold_after_the_offset() {
        assert_eq!(parse_timestamptz("1-01-1 2:1:4+5:59"), None);
        assert_eq!(parse_timestamptz("0001-01-01 00:00:00+00:00:01"), None);
        assert_eq!(
            parse_timestamptz("0001-01-01 00:00:00+00"),
            Some(YEAR_1_UTC_US)
        );
        assert_eq!(
            parse_timestamptz("0001-01-01 00:00:00-15:59:59"),
            Some(YEAR_1_UTC_US + 57_599_000_000)
        );
        assert_eq!(
            parse("COMMIT (at 1-01-1 2:1:4+5:59)"),
            Ok(Record::Commit { time_us: None })
        );
    }

    #[test]
    fn timestamp_fields_are_bounded() {
        for bad in [
            "2024-13-01 00:00:00+00",
            "2024-00-01 00:00:00+00",
            "2024-02-30 00:00:00+00",
            "2023-02-29 00:00:00+00",
            "2024-04-31 00:00:00+00",
            "2024-01-00 00:00:00+00",
            "2024-01-01 24:00:00+00",
            "2024-01-01 00:60:00+00",
            "2024-01-01 00:00:60+00",
            "2024-01-01 00:00:00+16",
            "2024-01-01 00:00:00+00:60",
            "2024-01-01 00:00:00+00:00:60",
            "2024-01-01 00:00:00+00:00:00:00",
            "2024-01-01 00:00:00:00+00",
            "2024-01-01 00:00:00.+00",
            "2024-01-01 00:00:00.1234567+00",
            "2024-01-01 00:00:00.12a+00",
            "2024-01-01 00:00:00+",
            "2024-01-01 00:00:00",
            "2024-+1-01 00:00:00+00",
            "2024-01-01 +1:00:00+00",
            "2024-01-01 00:00:00++1",
            "0000-01-01 00:00:00+00",
            "1000000-01-01 00:00:00+00",
            "0001-01-01 00:00:00+00 BC",
            "2024-01-01-01 00:00:00+00",
            "2024-01-01 00:00:00+00 ",
            "2024-01-01 ٣:00:00+00",
        ] {
            // (A trailing space is trimmed, so that one parses.)
            if bad.ends_with(' ') {
                assert!(parse_timestamptz(bad).is_some(), "{bad:?}");
            } else {
                assert_eq!(parse_timestamptz(bad), None, "{bad:?}");
            }
        }
        assert_eq!(
            parse_timestamptz("2024-02-29 00:00:00+00"),
            Some(1_709_164_800_000_000)
        );
        assert_eq!(
            parse_timestamptz("1969-12-31 23:59:59.5+00"),
            Some(-500_000)
        );
        assert_eq!(
            parse_timestamptz("0001-01-01 00:00:00+00"),
            Some(-62_135_596_800_000_000)
        );
        assert_eq!(
            parse_timestamptz("2024-05-01 12:34:56.123456+15:59:59"),
            Some(1_714_566_896_123_456 - 57_599_000_000)
        );
    }

    mod proptests {
        use super::super::*;
        use super::YEAR_1_UTC_US;
        use chrono::{FixedOffset, NaiveDate, TimeZone};
        use proptest::prelude::*;
        use proptest::test_runner::Config;

        // Failures are not persisted (no proptest-regressions files in the
        // source tree): a failing input is turned into a named unit test.
        fn config(cases: u32) -> Config {
            Config {
                cases,
                failure_persistence: None,
                ..Config::default()
            }
        }

        /// A number field: mostly a value in `0..=max` printed as Postgres
        /// does (zero-padded to `width`), sometimes one just out of range
        /// with random zero padding, sometimes any digits of width 1 to 20.
        fn num(max: u64, width: usize) -> impl Strategy<Value = String> {
            prop_oneof![
                12 => (0..=max).prop_map(move |v| format!("{v:0width$}")),
                1 => (0..=max.saturating_add(2), 0usize..=3).prop_map(|(v, pad)| {
                    format!("{}{v}", "0".repeat(pad))
                }),
                1 => "[0-9]{1,20}",
            ]
        }

        /// A near-valid timestamp's pieces: (year, month, day), (hour,
        /// minute, second, fraction), (sign, offset hours, minutes, seconds).
        type Parts = (
            (String, String, String),
            (String, String, String, Option<String>),
            (char, String, Option<String>, Option<String>),
        );

        fn ts_parts() -> impl Strategy<Value = Parts> {
            (
                (
                    prop_oneof![num(3000, 4), num(300_000, 4)],
                    num(12, 2),
                    num(31, 2),
                ),
                (
                    num(23, 2),
                    num(59, 2),
                    num(59, 2),
                    proptest::option::of(prop_oneof![4 => "[0-9]{1,6}", 1 => "[0-9]{7,9}"]),
                ),
                (
                    prop_oneof![Just('+'), Just('-')],
                    num(15, 2),
                    proptest::option::of(num(59, 2)),
                    proptest::option::of(num(59, 2)),
                ),
            )
        }

        fn render(p: &Parts) -> String {
            let ((y, mo, d), (h, mi, s, frac), (sign, oh, om, os)) = p;
            let mut out = format!("{y}-{mo}-{d} {h}:{mi}:{s}");
            if let Some(f) = frac {
                out.push('.');
                out.push_str(f);
            }
            out.push(*sign);
            out.push_str(oh);
            if let Some(om) = om {
                out.push(':');
                out.push_str(om);
                if let Some(os) = os {
                    out.push(':');
                    out.push_str(os);
                }
            }
            out
        }

        /// The reference: the documented field rules, then chrono (on the
        /// year shifted by whole 400-year Gregorian cycles of 146097 days
        /// where chrono's range ends), in i128.
        fn reference(p: &Parts) -> Option<i64> {
            fn f(s: &str, width: usize, min: u32, max: u32) -> Option<u32> {
                if s.len() > width {
                    return None;
                }
                let v: u32 = s.parse().ok()?;
                (min..=max).contains(&v).then_some(v)
            }
            const CYCLE_US: i128 = 146_097 * 86_400 * 1_000_000;
            let ((y, mo, d), (h, mi, s, frac), (sign, oh, om, os)) = p;
            let year = f(y, 6, 1, 294_276)?;
            let cycles = if year > 200_000 { (year - 1) / 400 } else { 0 };
            let date = NaiveDate::from_ymd_opt(
                i32::try_from(year - cycles * 400).ok()?,
                f(mo, 2, 1, 12)?,
                f(d, 2, 1, 31)?,
            )?;
            let micros = match frac {
                None => 0,
                Some(fr) if fr.len() <= 6 => {
                    fr.parse::<u32>().ok()? * 10u32.pow(6 - fr.len() as u32)
                }
                Some(_) => return None,
            };
            let time =
                date.and_hms_micro_opt(f(h, 2, 0, 23)?, f(mi, 2, 0, 59)?, f(s, 2, 0, 59)?, micros)?;
            let (om, os) = match om {
                None => (0, 0),
                Some(om) => (
                    f(om, 2, 0, 59)?,
                    os.as_deref().map_or(Some(0), |x| f(x, 2, 0, 59))?,
                ),
            };
            let off = i32::try_from(f(oh, 2, 0, 15)? * 3600 + om * 60 + os).ok()?;
            let tz = FixedOffset::east_opt(if *sign == '-' { -off } else { off })?;
            let us = tz.from_local_datetime(&time).single()?.timestamp_micros();
            i64::try_from(i128::from(us) + i128::from(cycles) * CYCLE_US)
                .ok()
                .filter(|us| *us >= YEAR_1_UTC_US)
        }

        /// A test_decoding-like line around the grammar, with random numbers.
        fn near_valid_line() -> impl Strategy<Value = String> {
            let ident = prop_oneof!["[a-z_][a-z0-9_$]{0,8}", "\"([^\"]|\"\"){0,8}\"", ".{0,4}",];
            let value = prop_oneof![
                "[0-9]{1,25}",
                "'([^']|''){0,10}'",
                "B'[01]{0,8}'",
                Just("null".to_owned()),
                Just("unchanged-toast-datum".to_owned()),
                ".{0,6}",
            ];
            let column = (ident.clone(), "[a-z \\[\\]]{0,12}", value)
                .prop_map(|(n, t, v)| format!("{n}[{t}]:{v}"));
            let columns = proptest::collection::vec(column, 0..5).prop_map(|c| c.join(" "));
            prop_oneof![
                (ts_parts(), "[0-9]{0,25}")
                    .prop_map(|(p, xid)| format!("COMMIT {xid} (at {})", render(&p))),
                "[0-9]{0,25}".prop_map(|xid| format!("BEGIN {xid}")),
                (
                    ident.clone(),
                    ident.clone(),
                    prop_oneof![
                        Just("INSERT"),
                        Just("UPDATE"),
                        Just("DELETE"),
                        Just("TRUNCATE"),
                        Just("UPSERT"),
                        Just(""),
                    ],
                    columns.clone(),
                    proptest::option::of(columns),
                )
                    .prop_map(|(s, t, op, a, b)| match b {
                        Some(b) => format!("table {s}.{t}: {op}: old-key: {a} new-tuple: {b}"),
                        None => format!("table {s}.{t}: {op}: {a}"),
                    }),
                (
                    "[0-9]{1,3}",
                    ".{0,12}",
                    prop_oneof!["[0-9]{1,25}", Just(String::new())],
                    ".{0,12}",
                )
                    .prop_map(|(tx, prefix, sz, content)| format!(
                        "message: transactional: {tx} prefix: {prefix}, sz: {sz} content:{content}"
                    )),
            ]
        }

        proptest! {
            #![proptest_config(config(512))]

            #[test]
            fn parse_never_panics_on_any_string(s in any::<String>()) {
                let _ = parse(&s);
            }

            #[test]
            fn parse_never_panics_on_prefixed_garbage(
                head in prop_oneof![
                    Just("BEGIN"), Just("COMMIT"), Just("COMMIT (at "), Just("message: "),
                    Just("message: transactional: 1 prefix: "), Just("table "),
                    Just("table public.t: INSERT: "), Just("table public.t: UPDATE: old-key: "),
                ],
                tail in any::<String>(),
            ) {
                let _ = parse(&format!("{head}{tail}"));
            }

            #[test]
            fn parse_never_panics_on_near_valid_lines(line in near_valid_line()) {
                let r = parse(&line);
                // Every prefix and suffix (on char boundaries) too.
                for (i, _) in line.char_indices() {
                    let _ = parse(&line[..i]);
                    let _ = parse(&line[i..]);
                }
                if let Ok(Record::Message { content, .. }) = r {
                    prop_assert!(line.ends_with(&content));
                }
            }

            #[test]
            fn timestamptz_never_panics_on_any_string(s in any::<String>()) {
                let _ = parse_timestamptz(&s);
            }

            #[test]
            fn commit_time_is_the_timestamp_of_its_line(p in ts_parts()) {
                let text = render(&p);
                let line = format!("COMMIT 7 (at {text})");
                prop_assert_eq!(
                    parse(&line),
                    Ok(Record::Commit { time_us: parse_timestamptz(&text) })
                );
            }

            #[test]
            fn near_valid_timestamps_match_the_reference(p in ts_parts()) {
                prop_assert_eq!(parse_timestamptz(&render(&p)), reference(&p), "{}", render(&p));
            }

            #[test]
            fn valid_timestamps_match_chrono(
                year in 1i32..=262_000,
                month in 1u32..=12,
                day in 1u32..=31,
                hms in (0u32..24, 0u32..60, 0u32..60),
                frac_digits in 0usize..=6,
                frac in 0u32..1_000_000,
                offset in -(15 * 3600 + 59 * 60 + 59)..=(15 * 3600 + 59 * 60 + 59i32),
                offset_form in 0u8..3,
            ) {
                let (h, mi, s) = hms;
                let valid = NaiveDate::from_ymd_opt(year, month, day);
                let frac_text = format!("{frac:06}");
                let frac_text = &frac_text[..frac_digits];
                let micros = if frac_digits == 0 {
                    0
                } else {
                    frac_text.parse::<u32>().unwrap() * 10u32.pow(6 - frac_digits as u32)
                };
                // Drop the offset parts the chosen form leaves out.
                let a = offset.unsigned_abs();
                let (oh, om, os) = match offset_form {
                    0 => (a / 3600, 0, 0),
                    1 => (a / 3600, a / 60 % 60, 0),
                    _ => (a / 3600, a / 60 % 60, a % 60),
                };
                let sign = if offset < 0 { '-' } else { '+' };
                let mut text = format!("{year:04}-{month:02}-{day:02} {h:02}:{mi:02}:{s:02}");
                if frac_digits > 0 {
                    text.push('.');
                    text.push_str(frac_text);
                }
                text.push_str(&format!("{sign}{oh:02}"));
                if offset_form >= 1 {
                    text.push_str(&format!(":{om:02}"));
                }
                if offset_form >= 2 {
                    text.push_str(&format!(":{os:02}"));
                }
                let got = parse_timestamptz(&text);
                match valid {
                    None => prop_assert_eq!(got, None, "{}", text),
                    Some(date) => {
                        let off = i32::try_from(oh * 3600 + om * 60 + os).unwrap();
                        let tz = FixedOffset::east_opt(if offset < 0 { -off } else { off }).unwrap();
                        let local = date.and_hms_micro_opt(h, mi, s, micros).unwrap();
                        let want = tz.from_local_datetime(&local).single().unwrap().timestamp_micros();
                        let want = Some(want).filter(|us| *us >= YEAR_1_UTC_US);
                        prop_assert_eq!(got, want, "{}", text);
                    }
                }
            }
        }
    }
}
