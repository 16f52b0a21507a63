//! The `logical` source: a logical replication slot with the built-in
//! `test_decoding` output plugin, read through the SQL functions.
//!
//! Each poll runs
//! `pg_logical_slot_peek_changes(slot, NULL, batch_size, 'include-xids', '1', 'include-timestamp', 'on')`
//! (whole transactions, commit timestamps on the `COMMIT` lines), maps the
//! changes of committed transactions to invalidations, applies them (shared
//! tier, then bus, retried until they succeed; see
//! [`Sinks::apply`](crate::sink::Sinks::apply) for a failing shared tier)
//! and only then moves the slot
//! with `pg_replication_slot_advance(slot, lsn)` to the end of the last
//! commit read. A sidecar that crashes, is killed or stopped, or loses its
//! connection reads the unapplied changes again: at least once, and applying
//! a change twice is harmless.
//!
//! Changes of tables without rules are skipped, but the slot still advances
//! over them. When nothing at all arrives for `heartbeat_ms` while the slot
//! lags the WAL by more than `heartbeat_min_lag_bytes` (WAL of other
//! databases, checkpoints), the sidecar writes a tiny non-transactional
//! `pg_logical_emit_message(false, 'tiercache-heartbeat', '')` so the slot
//! can move over it: an idle sidecar never makes Postgres keep WAL forever.
//!
//! Explicit invalidations: `pg_logical_emit_message(true, 'tiercache', json)`
//! inside a transaction (see [`crate::emit`]) is applied when, and only if,
//! that transaction commits.
//!
//! Requirements: `wal_level = logical`, a free replication slot
//! (`max_replication_slots`), a role with `REPLICATION` (or superuser), and
//! `REPLICA IDENTITY FULL` on the rule tables so updates and deletes carry
//! every column of the old row (`tiercache-sidecar sql` prints it). A slot
//! keeps WAL until the sidecar consumes it: monitor
//! `tiercache_sidecar_slot_lag_bytes`, and drop the slot
//! (`SELECT pg_drop_replication_slot('tiercache')`) when retiring the sidecar.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::test_decoding::{self, Record};
use super::{AbortOnDrop, SessionEnd, quote_ident, quote_literal};
use crate::config::Config;
use crate::rules::{ExplicitInvalidation, Op, Planned, RowChange, RuleSet};
use crate::sink::{Batch, now_us};
use crate::{Error, Shutdown, Sidecar, SourceKind};

/// The prefix of explicit invalidation messages.
pub const MESSAGE_PREFIX: &str = "tiercache";
/// The prefix of the sidecar's own heartbeat messages.
pub const HEARTBEAT_PREFIX: &str = "tiercache-heartbeat";

const PEEK: &str = "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2, \
                    'include-xids', '1', 'include-timestamp', 'on')";
const ADVANCE: &str = "SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::text::pg_lsn)";
/// A peek that takes longer than this is taken for a hung connection.
const PEEK_TIMEOUT: Duration = Duration::from_secs(120);
const SLOT_LAG: &str = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8 \
                        FROM pg_replication_slots WHERE slot_name = $1";

/// Parses `X/Y` (each 1 to 8 hex digits, Postgres's `pg_lsn` text) into a
/// 64-bit LSN; `None` for anything else (a sign, a wider half, other
/// characters), never a truncated value.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from(lsn_half(hi)?) << 32) | u64::from(lsn_half(lo)?))
}

/// One half of an LSN: 1 to 8 hex digits.
fn lsn_half(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Formats a 64-bit LSN as `X/Y`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The SQL that sets up the `logical` source.
pub fn setup_sql(config: &Config, rules: &RuleSet) -> String {
    let slot = &config.source.slot;
    let mut out = String::new();
    out.push_str(&format!(
        "-- tiercache-sidecar: logical replication slot {slot:?} (test_decoding).\n\
         -- Requires wal_level = logical (postgresql.conf; restart), a free slot\n\
         -- (max_replication_slots) and a role with REPLICATION or superuser.\n\
         -- The slot keeps WAL until the sidecar has applied it: watch\n\
         -- tiercache_sidecar_slot_lag_bytes, and drop the slot when retiring the sidecar:\n\
         --   SELECT pg_drop_replication_slot({lit});\n\
         -- `tiercache-sidecar run` also creates the slot when it is missing (create_slot = true).\n\
         SELECT pg_create_logical_replication_slot({lit}, 'test_decoding')\n\
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {lit});\n\n\
         -- Old rows of UPDATE and DELETE carry every column (for templates over\n\
         -- non-key columns, e.g. an old category tag).\n",
        lit = quote_literal(slot)
    ));
    for t in rules.tables() {
        out.push_str(&format!(
            "ALTER TABLE {}.{} REPLICA IDENTITY FULL;\n",
            quote_ident(&t.schema),
            quote_ident(&t.table)
        ));
    }
    out.push_str(
        "\n-- Explicit invalidations, applied only if the transaction commits:\n\
         --   SELECT pg_logical_emit_message(true, 'tiercache',\n\
         --     '{\"namespace\":\"products\",\"keys\":[\"42\"],\"tags\":[\"category:books\"]}');\n",
    );
    out
}

/// `check` for the `logical` source: wal_level and the slot.
pub(crate) async fn check(client: &Client, config: &Config) -> Result<Vec<String>, Error> {
    let mut report = Vec::new();
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(Error::postgres("SHOW wal_level"))?
        .get(0);
    if wal_level != "logical" {
        return Err(Error::Unsuitable(format!(
            "wal_level is {wal_level:?}; the logical source needs wal_level = logical"
        )));
    }
    let slot = client
        .query_opt(
            "SELECT plugin::text, (database = current_database())::bool FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&config.source.slot],
        )
        .await
        .map_err(Error::postgres("looking up the slot"))?;
    match slot {
        Some(row) => {
            let plugin: Option<String> = row.get(0);
            let same_db: Option<bool> = row.get(1);
            check_slot(&config.source.slot, plugin, same_db)?;
            client
                .query(SLOT_LAG, &[&config.source.slot])
                .await
                .map_err(Error::postgres("reading the slot's lag"))?;
            report.push(format!(
                "logical: slot {:?} exists (test_decoding)",
                config.source.slot
            ));
        }
        None if config.source.create_slot => report.push(format!(
            "logical: slot {:?} does not exist yet; `run` will create it",
            config.source.slot
        )),
        None => {
            return Err(Error::Unsuitable(format!(
                "slot {:?} does not exist and source.create_slot is false (see `tiercache-sidecar sql`)",
                config.source.slot
            )));
        }
    }
    Ok(report)
}

fn check_slot(slot: &str, plugin: Option<String>, same_db: Option<bool>) -> Result<(), Error> {
    if plugin.as_deref() != Some("test_decoding") {
        return Err(Error::Unsuitable(format!(
            "slot {slot:?} uses plugin {plugin:?}, not test_decoding (drop it or choose another source.slot)"
        )));
    }
    if same_db != Some(true) {
        return Err(Error::Unsuitable(format!(
            "slot {slot:?} belongs to another database than source.database_url's"
        )));
    }
    Ok(())
}

pub(crate) async fn run(sc: &Sidecar, shutdown: &Shutdown) -> Result<(), Error> {
    super::reconnect_loop(sc, shutdown, |_reconnect| session(sc, shutdown)).await
}

fn lost(was_connected: bool) -> impl Fn(tokio_postgres::Error) -> SessionEnd {
    move |e| SessionEnd::Lost {
        // tokio-postgres's `Display` leaves the server's message out.
        error: crate::PgMessage(&e).to_string(),
        was_connected,
    }
}

async fn session(sc: &Sidecar, shutdown: &Shutdown) -> Result<(), SessionEnd> {
    let cfg = &sc.config().source;
    let (client, task) = super::connect(cfg).await.map_err(lost(false))?;
    let _guard = AbortOnDrop(task);
    client
        .batch_execute("SET TimeZone = 'UTC'")
        .await
        .map_err(lost(false))?;
    super::check_catalog_for_session(&client, sc.rules(), SourceKind::Logical).await?;
    ensure_slot(&client, sc.config()).await?;
    let status = sc.status();
    status.set_connected(true);
    tracing::info!(slot = %cfg.slot, "logical source connected");

    let lost = lost(true);
    let batch_size = i32::try_from(cfg.batch_size).unwrap_or(i32::MAX);
    let poll = Duration::from_millis(cfg.poll_interval_ms);
    let mut last_activity = Instant::now();
    let mut last_lag_check: Option<Instant> = None;
    let mut lag_bytes: i64 = -1;
    loop {
        if shutdown.is_triggered() {
            return Ok(());
        }
        if last_lag_check.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_lag_check = Some(Instant::now());
            if let Some(row) = client
                .query_opt(SLOT_LAG, &[&cfg.slot])
                .await
                .map_err(&lost)?
            {
                let lag: Option<f64> = row.get(0);
                lag_bytes = lag.map_or(-1, |l| l as i64);
                status.set_slot_lag(lag_bytes);
            }
        }
        let rows =
            tokio::time::timeout(PEEK_TIMEOUT, client.query(PEEK, &[&cfg.slot, &batch_size]))
                .await
                .map_err(|_| SessionEnd::Lost {
                    error: "peek timed out".into(),
                    was_connected: true,
                })?
                .map_err(&lost)?;
        if rows.is_empty() {
            if cfg.heartbeat_ms > 0
                && last_activity.elapsed() >= Duration::from_millis(cfg.heartbeat_ms)
                && lag_bytes > cfg.heartbeat_min_lag_bytes as i64
            {
                tracing::debug!(
                    lag_bytes,
                    "idle: emitting a heartbeat so the slot can advance"
                );
                if let Err(e) = client
                    .execute(
                        "SELECT pg_logical_emit_message(false, $1, '')",
                        &[&HEARTBEAT_PREFIX],
                    )
                    .await
                {
                    tracing::warn!("cannot emit a heartbeat message: {e}");
                }
                last_activity = Instant::now();
            }
            if !shutdown.sleep(poll).await {
                return Ok(());
            }
            continue;
        }
        last_activity = Instant::now();
        let lines: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        let decoded = decode(&lines, sc.rules());
        status.add_changes(decoded.changes);
        metrics::counter!("tiercache_sidecar_changes_read_total", "source" => "logical")
            .increment(decoded.changes);
        metrics::counter!("tiercache_sidecar_changes_ignored_total", "source" => "logical")
            .increment(decoded.ignored);
        if sc.sinks().apply(&decoded.batch, shutdown).await.is_err() {
            // Stopped mid-batch: leave the slot where it is.
            return Ok(());
        }
        if let Some(lsn) = decoded.advance_to {
            client
                .query(ADVANCE, &[&cfg.slot, &format_lsn(lsn)])
                .await
                .map_err(&lost)?;
            status.applied();
            tracing::debug!(lsn = %format_lsn(lsn), changes = decoded.changes, "slot advanced");
        } else {
            // Rows arrived but none of them lets the slot move (`decode`
            // logged why, e.g. an LSN that cannot be parsed or passed): the
            // slot stays where it is and the same rows come again. Wait
            // instead of peeking them in a tight loop.
            tracing::warn!(
                rows = lines.len(),
                "read rows but none lets the slot advance; the slot stays put"
            );
            if !shutdown.sleep(poll).await {
                return Ok(());
            }
        }
    }
}

async fn ensure_slot(client: &Client, config: &Config) -> Result<(), SessionEnd> {
    let slot = &config.source.slot;
    let lost = lost(false);
    let row = client
        .query_opt(
            "SELECT plugin::text, (database = current_database())::bool FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(&lost)?;
    match row {
        Some(row) => check_slot(slot, row.get(0), row.get(1)).map_err(SessionEnd::Fatal),
        None if config.source.create_slot => {
            match client
                .query(
                    "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
                    &[slot],
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(slot = %slot, "created logical replication slot");
                    Ok(())
                }
                Err(e) => {
                    let code = e.code().map(|c| c.code().to_owned());
                    match code.as_deref() {
                        // Created concurrently by another sidecar: fine.
                        Some("42710") => Ok(()),
                        // wal_level, privileges, no free slot: not retryable.
                        Some("55000" | "42501" | "53400") => {
                            Err(SessionEnd::Fatal(Error::Postgres {
                                context: format!("cannot create slot {slot:?}"),
                                source: e,
                            }))
                        }
                        _ => Err(lost(e)),
                    }
                }
            }
        }
        None => Err(SessionEnd::Fatal(Error::Unsuitable(format!(
            "slot {slot:?} does not exist and source.create_slot is false"
        )))),
    }
}

/// The result of decoding one batch of `test_decoding` rows.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The invalidations.
    pub batch: Batch,
    /// Where the slot may advance once `batch` is applied.
    pub advance_to: Option<u64>,
    /// Row changes and messages read.
    pub changes: u64,
    /// Row changes of tables without rules.
    pub ignored: u64,
}

enum Pending {
    Change(RowChange),
    Explicit(ExplicitInvalidation),
}

/// Where the slot may move once a batch is applied: past a row, or to it.
#[derive(Clone, Copy)]
enum Mark {
    /// To the row's LSN (a `COMMIT`).
    At,
    /// Just past it (a non-transactional message).
    After,
}

/// Moves `out.advance_to` up to the row at `lsn_text` (never down). An LSN
/// that cannot be parsed, or that has no successor (`FFFFFFFF/FFFFFFFF`), is
/// logged and counted and moves nothing: the row's changes are still in the
/// batch, and the slot will not be moved past them on their account (they
/// are read again: at least once). Nothing wraps around to LSN 0.
fn advance(out: &mut Decoded, lsn_text: &str, mark: Mark) {
    let to = match (parse_lsn(lsn_text), mark) {
        (Some(lsn), Mark::At) => Some(lsn),
        (Some(lsn), Mark::After) => {
            let next = lsn.checked_add(1);
            if next.is_none() {
                tracing::error!(
                    lsn = %lsn_text,
                    "a message at the last possible LSN: the slot cannot move past it"
                );
            }
            next
        }
        (None, _) => {
            tracing::error!(
                lsn = %lsn_text,
                "unparseable LSN from peek: the slot is not moved on this row's account"
            );
            None
        }
    };
    match to {
        Some(lsn) => out.advance_to = Some(out.advance_to.map_or(lsn, |a| a.max(lsn))),
        None => {
            metrics::counter!("tiercache_sidecar_errors_total", "op" => "decode").increment(1);
        }
    }
}

/// Decodes `(lsn, data)` rows of `pg_logical_slot_peek_changes` into
/// invalidations. Changes count only once their transaction's `COMMIT` is
/// read (peek returns whole transactions).
///
/// Never panics, whatever the rows hold. A line that cannot be parsed is
/// logged, counted and skipped; a row's LSN is only used to say where the
/// slot may move ([`Decoded::advance_to`]), so a row whose LSN cannot be
/// parsed (or, at `FFFFFFFF/FFFFFFFF`, passed) is still decoded but moves
/// nothing.
pub fn decode(rows: &[(String, String)], rules: &RuleSet) -> Decoded {
    let mut out = Decoded::default();
    let mut pending: Vec<Pending> = Vec::new();
    for (lsn, data) in rows {
        let record = match test_decoding::parse(data) {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("tiercache_sidecar_errors_total", "op" => "decode").increment(1);
                tracing::error!("{e}");
                continue;
            }
        };
        match record {
            Record::Begin => pending.clear(),
            Record::Change(c) => {
                out.changes += 1;
                if rules.covers(&c.schema, &c.table) {
                    pending.push(Pending::Change(c));
                } else {
                    out.ignored += 1;
                }
            }
            Record::Truncate { tables } => {
                out.changes += 1;
                for (schema, table) in tables {
                    if rules.covers(&schema, &table) {
                        pending.push(Pending::Change(RowChange {
                            schema,
                            table,
                            op: Op::Truncate,
                            old: None,
                            new: None,
                        }));
                    } else {
                        out.ignored += 1;
                    }
                }
            }
            Record::Message {
                transactional,
                prefix,
                content,
            } => {
                if prefix != MESSAGE_PREFIX {
                    if !transactional {
                        // A heartbeat (or someone else's message): nothing
                        // to apply; the slot may move just past it.
                        advance(&mut out, lsn, Mark::After);
                    }
                    continue;
                }
                out.changes += 1;
                match serde_json::from_str::<ExplicitInvalidation>(&content) {
                    Ok(inv) if transactional => pending.push(Pending::Explicit(inv)),
                    Ok(inv) => {
                        out.batch.push(rules.plan_explicit(inv, Some(now_us())));
                        advance(&mut out, lsn, Mark::After);
                    }
                    Err(e) => {
                        metrics::counter!("tiercache_sidecar_errors_total", "op" => "message")
                            .increment(1);
                        tracing::error!(
                            "ignoring a malformed tiercache message ({e}); expected \
                             {{\"namespace\":..,\"keys\":[..],\"tags\":[..]}}: {content:?}"
                        );
                        if !transactional {
                            advance(&mut out, lsn, Mark::After);
                        }
                    }
                }
            }
            Record::Commit { time_us } => {
                if time_us.is_none() && data.contains("(at ") {
                    metrics::counter!("tiercache_sidecar_errors_total", "op" => "decode")
                        .increment(1);
                    tracing::warn!("unparseable commit time, using the time it was read: {data:?}");
                }
                let t = time_us.or_else(|| Some(now_us()));
                for p in pending.drain(..) {
                    let planned: Vec<Planned> = match p {
                        Pending::Change(c) => rules.plan(&c, t),
                        Pending::Explicit(inv) => vec![rules.plan_explicit(inv, t)],
                    };
                    for p in planned {
                        out.batch.push(p);
                    }
                }
                advance(&mut out, lsn, Mark::At);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        let c = Config::parse(
            r#"
            [source]
            kind = "logical"
            database_url = "postgres://u@h/db"
            [bus]
            kind = "redis"
            url = "redis://h:1"
            [[rules]]
            table = "products"
            namespace = "products"
            keys = ["{id}"]
            tags = ["category:{category}"]
            "#,
        )
        .unwrap();
        RuleSet::from_config(&c).unwrap()
    }

    fn rows(lines: &[(&str, &str)]) -> Vec<(String, String)> {
        lines
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn lsn_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn decodes_transactions_and_advances_to_last_commit() {
        let d = decode(
            &rows(&[
                ("0/100", "BEGIN 1"),
                (
                    "0/100",
                    "table public.products: UPDATE: old-key: id[bigint]:1 category[text]:'a' new-tuple: id[bigint]:1 category[text]:'b'",
                ),
                ("0/110", "table public.audit: INSERT: id[bigint]:9"),
                ("0/120", "COMMIT 1 (at 2024-05-01 12:34:56.123456+00)"),
                ("0/130", "BEGIN 2"),
                ("0/140", "table public.audit: INSERT: id[bigint]:10"),
                ("0/150", "COMMIT 2 (at 2024-05-01 12:34:57+00)"),
                (
                    "0/160",
                    "message: transactional: 0 prefix: tiercache-heartbeat, sz: 0 content:",
                ),
            ]),
            &rules(),
        );
        assert_eq!(d.changes, 3);
        assert_eq!(d.ignored, 2);
        assert_eq!(d.advance_to, Some(0x161));
        let m = d.batch.messages();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].keys, vec!["1"]);
        assert_eq!(m[0].tags, vec!["category:a", "category:b"]);
        assert_eq!(m[0].source_time_us, Some(1_714_566_896_123_456));
    }

    #[test]
    fn explicit_messages_apply_at_commit() {
        let content = r#"{"namespace":"other","keys":["x"],"tags":["t"]}"#;
        let msg = format!(
            "message: transactional: 1 prefix: tiercache, sz: {} content:{content}",
            content.len()
        );
        let d = decode(
            &rows(&[("0/1", "BEGIN 5"), ("0/2", &msg), ("0/3", "COMMIT 5")]),
            &rules(),
        );
        let m = d.batch.messages();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].namespace, "other");
        assert_eq!(m[0].keys, vec!["x"]);
        assert_eq!(d.advance_to, Some(3));
        let bad = "message: transactional: 1 prefix: tiercache, sz: 3 content:{x}";
        let d = decode(
            &rows(&[("0/1", "BEGIN 5"), ("0/2", bad), ("0/3", "COMMIT 5")]),
            &rules(),
        );
        assert!(d.batch.is_empty());
        assert_eq!(d.advance_to, Some(3));
    }

    #[test]
    fn setup_sql_has_slot_and_replica_identity() {
        let c = Config::parse(
            r#"
            [source]
            kind = "logical"
            database_url = "postgres://u@h/db"
            [bus]
            kind = "redis"
            url = "redis://h:1"
            [[rules]]
            table = "products"
            namespace = "products"
            keys = ["{id}"]
            "#,
        )
        .unwrap();
        let sql = crate::setup_sql(&c).unwrap();
        assert!(sql.contains("pg_create_logical_replication_slot('tiercache', 'test_decoding')"));
        assert!(sql.contains("ALTER TABLE \"public\".\"products\" REPLICA IDENTITY FULL;"));
    }

    #[test]
    fn lsn_parse_rejects_what_would_truncate_or_wrap() {
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("ab/cd"), Some(0xab_0000_00cd));
        for bad in [
            "100000000/0",
            "0/100000000",
            "+1/2",
            "1/+2",
            "-1/2",
            "/1",
            "1/",
            "1/2/3",
            "1 /2",
            "0x1/2",
            "١/2",
            "",
        ] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_message_at_the_last_lsn_does_not_wrap_the_slot_to_zero() {
        // Issue 11 case 7: `lsn + 1` at FFFFFFFF/FFFFFFFF.
        let heartbeat = "message: transactional: 0 prefix: tiercache-heartbeat, sz: 0 content:";
        let d = decode(&rows(&[("FFFFFFFF/FFFFFFFF", heartbeat)]), &rules());
        assert_eq!(d.advance_to, None);
        // An explicit non-transactional invalidation there is still applied;
        // only the slot does not move past it.
        let content = r#"{"namespace":"other","keys":["x"]}"#;
        let msg = format!(
            "message: transactional: 0 prefix: tiercache, sz: {} content:{content}",
            content.len()
        );
        let d = decode(
            &rows(&[
                ("0/10", "BEGIN 1"),
                ("0/10", "table public.products: INSERT: id[bigint]:1"),
                ("0/20", "COMMIT 1"),
                ("FFFFFFFF/FFFFFFFF", &msg),
            ]),
            &rules(),
        );
        assert_eq!(d.advance_to, Some(0x20));
        let m = d.batch.messages();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].namespace, "other");
        // One below the last LSN still moves just past it.
        let d = decode(&rows(&[("FFFFFFFF/FFFFFFFE", heartbeat)]), &rules());
        assert_eq!(d.advance_to, Some(u64::MAX));
    }

    #[test]
    fn a_row_with_an_unparseable_lsn_is_decoded_but_moves_nothing() {
        let change = "table public.products: INSERT: id[bigint]:1 category[text]:'a'";
        // A change row: its LSN is not needed; the change is not dropped.
        let d = decode(
            &rows(&[("0/1", "BEGIN 1"), ("1/+2", change), ("0/3", "COMMIT 1")]),
            &rules(),
        );
        assert_eq!(d.batch.messages().len(), 1);
        assert_eq!(d.advance_to, Some(3));
        // A commit row: its changes are in the batch, the slot stays.
        let d = decode(
            &rows(&[
                ("0/1", "BEGIN 1"),
                ("0/2", change),
                ("100000000/3", "COMMIT 1"),
            ]),
            &rules(),
        );
        assert_eq!(d.batch.messages().len(), 1);
        assert_eq!(d.advance_to, None);
    }

    #[test]
    fn a_commit_with_an_overflowing_time_is_applied_at_read_time() {
        let before = now_us();
        let d = decode(
            &rows(&[
                ("0/1", "BEGIN 1"),
                ("0/2", "table public.products: INSERT: id[bigint]:1"),
                ("0/3", "COMMIT(at 2-1-8 9:7:9+5:223372036854775807)"),
            ]),
            &rules(),
        );
        assert_eq!(d.advance_to, Some(3));
        let m = d.batch.messages();
        assert_eq!(m.len(), 1);
        let t = m[0].source_time_us.unwrap();
        assert!(t >= before && t <= now_us(), "{t}");
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::Config as PropConfig;

        // Failures are not persisted (no proptest-regressions files in the
        // source tree): a failing input is turned into a named unit test.
        fn config(cases: u32) -> PropConfig {
            PropConfig {
                cases,
                failure_persistence: None,
                ..PropConfig::default()
            }
        }

        /// LSN text: well-formed (including the extremes), near-valid
        /// (random widths, signs) or anything.
        fn lsn_text() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => any::<u64>().prop_map(format_lsn),
                1 => prop_oneof![
                    Just(u64::MAX),
                    Just(u64::MAX - 1),
                    Just(0),
                    Just(0xFFFF_FFFF),
                ]
                .prop_map(format_lsn),
                1 => "[+-]?[0-9a-fA-F]{0,18}/[+-]?[0-9a-fA-F]{0,18}",
                1 => ".{0,20}",
            ]
        }

        fn data_line() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("BEGIN 1".to_owned()),
                Just("COMMIT 1".to_owned()),
                "COMMIT 1 \\(at [0-9]{1,7}-[0-9]{1,3}-[0-9]{1,3} [0-9]{1,12}:[0-9]{1,3}:[0-9]{1,3}(\\.[0-9]{1,8})?[+-][0-9]{1,20}(:[0-9]{1,20})?\\)",
                "table public\\.(products|audit): (INSERT|UPDATE|DELETE): id\\[bigint\\]:[0-9]{1,5}( category\\[text\\]:'[a-z]{0,3}')?",
                "table public\\.(products|audit), public\\.b: TRUNCATE: \\(no-flags\\)",
                (
                    prop_oneof![Just("0"), Just("1")],
                    prop_oneof![Just("tiercache"), Just("tiercache-heartbeat"), Just("x")],
                    prop_oneof![
                        Just(String::new()),
                        Just(r#"{"namespace":"p","keys":["1"],"tags":["t"]}"#.to_owned()),
                        ".{0,10}",
                    ],
                )
                    .prop_map(|(tx, prefix, content)| format!(
                        "message: transactional: {tx} prefix: {prefix}, sz: {} content:{content}",
                        content.len()
                    )),
                any::<String>(),
            ]
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn parse_lsn_never_panics(s in any::<String>()) {
                let _ = parse_lsn(&s);
            }

            #[test]
            fn lsn_round_trips_for_every_u64(lsn in any::<u64>()) {
                prop_assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
            }

            #[test]
            fn parse_lsn_matches_the_reference(
                hi in "[0-9a-fA-F]{0,12}",
                lo in "[0-9a-fA-F]{0,12}",
            ) {
                let want = if (1..=8).contains(&hi.len()) && (1..=8).contains(&lo.len()) {
                    Some((u64::from_str_radix(&hi, 16).unwrap() << 32)
                        | u64::from_str_radix(&lo, 16).unwrap())
                } else {
                    None
                };
                prop_assert_eq!(parse_lsn(&format!("{hi}/{lo}")), want);
            }

            #[test]
            fn decode_never_panics_and_never_wraps(
                rows in proptest::collection::vec((lsn_text(), data_line()), 0..12),
            ) {
                let d = decode(&rows, &rules());
                if let Some(a) = d.advance_to {
                    // The slot only ever moves to a row's own LSN or just
                    // past it: never to a wrapped or invented position.
                    let ok = rows.iter().filter_map(|(l, _)| parse_lsn(l)).any(|l| {
                        a == l || l.checked_add(1) == Some(a)
                    });
                    prop_assert!(ok, "advance_to {a:#x} from {rows:?}");
                }
            }
        }
    }
}
