//! The sidecar's fuzz targets: its decoders of what Postgres sends
//! (`test_decoding` lines, LSNs, NOTIFY payloads), through their public
//! entry points. The engine's and the HTTP layer's targets live in their
//! crates (`tiercache_core::fuzz_targets`, `tiercache_tower::fuzz_targets`,
//! feature `fuzzing`), next to the proptest runs of the same functions; the
//! sidecar's own proptests (`source::{test_decoding, logical,
//! notify}::tests::proptests`) are the bounded runs of these.
//!
//! Each target takes arbitrary bytes (as UTF-8, lossy) and asserts what
//! must hold beyond "no panic".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use tiercache_sidecar::sink::now_us;
use tiercache_sidecar::source::logical::{self, format_lsn, parse_lsn};
use tiercache_sidecar::source::notify;
use tiercache_sidecar::source::test_decoding::{
    self, Record, TIMESTAMP_MAX_YEAR, TIMESTAMP_MIN_YEAR, parse_timestamptz,
};
use tiercache_sidecar::{Config, RuleSet};

/// The rules the decoders map rows with: the example config's, plus a
/// second namespace with short keys (hashed past 48 bytes).
const CONFIG: &str = r#"
[source]
kind = "logical"
database_url = "postgres://tiercache@127.0.0.1:5432/app"

[bus]
kind = "nats"
url = "nats://127.0.0.1:4222"

[[rules]]
table = "products"
schema = "public"
namespace = "products"
keys = ["{id}"]
tags = ["products", "category:{category}"]
max_key_len = 250

[[rules]]
table = "audit"
namespace = "audit"
keys = ["{id}:{name}", "static"]
tags = ["audit:{name}"]
max_key_len = 48
"#;

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        let config = Config::parse(CONFIG).expect("the embedded config parses");
        RuleSet::from_config(&config).expect("the embedded rules compile")
    })
}

/// Civil date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `us` (µs since the epoch) as Postgres prints a UTC timestamptz.
fn format_timestamptz(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}+00",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// [`test_decoding::parse`] on the data as one line, and
/// [`parse_timestamptz`] on it.
///
/// Invariants: a message's content is the end of its line (and as long as
/// its `sz` says); a commit's time is the timestamp between its `(at ` and
/// its last `)`; an insert has no old row and a delete no new one; a parsed
/// timestamp is within the documented years, and printed back in UTC it
/// parses to the same instant.
pub fn test_decoding(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    match test_decoding::parse(&line) {
        Ok(Record::Message { content, .. }) => {
            assert!(line.ends_with(&content), "content is the line's end");
            // `sz: N content:` right before it, N its length (leading
            // zeros allowed: found by this target).
            let head = line[..line.len() - content.len()]
                .strip_suffix(" content:")
                .expect("` content:` before the content");
            let digits = head.len() - head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
            assert_eq!(
                head[head.len() - digits..].parse::<usize>().ok(),
                Some(content.len()),
                "the content's size is its sz"
            );
        }
        Ok(Record::Commit { time_us }) => {
            let rest = &line["COMMIT".len()..];
            let want = match (rest.find("(at "), rest.rfind(')')) {
                (Some(a), Some(b)) if b > a + 4 => parse_timestamptz(&rest[a + 4..b]),
                _ => None,
            };
            assert_eq!(time_us, want, "the commit's time");
        }
        Ok(Record::Change(c)) => {
            use tiercache_sidecar::rules::Op;
            match c.op {
                Op::Insert => assert!(c.old.is_none()),
                Op::Delete => assert!(c.new.is_none()),
                _ => {}
            }
        }
        Ok(Record::Begin | Record::Truncate { .. }) | Err(_) => {}
    }
    check_timestamp(&line);
    if let Some(i) = line.find("(at ") {
        check_timestamp(line[i + 4..].trim_end_matches(')'));
    }
}

fn check_timestamp(text: &str) {
    let Some(us) = parse_timestamptz(text) else {
        return;
    };
    let printed = format_timestamptz(us);
    let year: i64 = printed
        .split('-')
        .next()
        .and_then(|y| y.parse().ok())
        .expect("a year");
    assert!(
        (TIMESTAMP_MIN_YEAR..=TIMESTAMP_MAX_YEAR).contains(&year),
        "{text:?} is in year {year}"
    );
    assert_eq!(
        parse_timestamptz(&printed),
        Some(us),
        "{text:?} printed as {printed:?}"
    );
}

/// [`logical::decode`] on rows of the data: one per line, the LSN before
/// the first tab and the `test_decoding` text after it (a line without a
/// tab is text at LSN `0/1`); and [`parse_lsn`] on each LSN.
///
/// Invariants: an LSN that parses prints back to itself; the slot only
/// ever moves to a row's own LSN or just past it (never to a wrapped or
/// invented position, whatever `FFFFFFFF/FFFFFFFF` or garbage came
/// before).
pub fn logical(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let rows: Vec<(String, String)> = text
        .split('\n')
        .map(|l| match l.split_once('\t') {
            Some((lsn, data)) => (lsn.to_owned(), data.to_owned()),
            None => ("0/1".to_owned(), l.to_owned()),
        })
        .collect();
    for (lsn, _) in &rows {
        if let Some(l) = parse_lsn(lsn) {
            assert_eq!(parse_lsn(&format_lsn(l)), Some(l), "{lsn:?}");
        }
    }
    let d = logical::decode(&rows, rules());
    if let Some(a) = d.advance_to {
        let ok = rows
            .iter()
            .filter_map(|(l, _)| parse_lsn(l))
            .any(|l| a == l || l.checked_add(1) == Some(a));
        assert!(ok, "advance_to {a:#x} from {rows:?}");
    }
}

/// The end of the `ts` range a NOTIFY payload may carry (10000-01-01), in
/// ms since the epoch (as the sidecar's own bound).
const MAX_TS_MS: i64 = 253_402_300_800_000;

/// [`notify::decode`] on the data's lines, each a NOTIFY payload.
///
/// Invariants: at most one ignored change per payload; every time in the
/// batch is a payload's plausible `ts` (1970 to 9999) or the time it was
/// read, never a saturated or wrapped one.
pub fn notify(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let payloads: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let before = now_us();
    let (batch, ignored) = notify::decode(&payloads, rules());
    let after = now_us();
    assert!(ignored <= payloads.len() as u64);
    for m in batch.messages() {
        for &t in m.lag_samples.iter().chain(m.source_time_us.iter()) {
            assert!(
                (0..=MAX_TS_MS * 1000).contains(&t) || (before..=after).contains(&t),
                "time {t} from {payloads:?}"
            );
        }
    }
}
