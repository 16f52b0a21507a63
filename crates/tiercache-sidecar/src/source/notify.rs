//! The `notify` source: per-table triggers send the changed rows with
//! `pg_notify(channel, json)`; the sidecar `LISTEN`s.
//!
//! `tiercache-sidecar sql` prints, per rule table, a trigger function that
//! builds (with `json_build_object`, every value cast to `text`) only the
//! columns the rules read, from `OLD` and `NEW`:
//!
//! ```json
//! {"schema":"public","table":"products","op":"UPDATE","ts":1714566896123.456,
//!  "old":{"category":"books","id":"1"},"new":{"category":"games","id":"1"}}
//! ```
//!
//! `ts` is `extract(epoch from clock_timestamp()) * 1000` when the trigger ran
//! (just before the commit), for the lag metric. Plus a statement trigger
//! for `TRUNCATE`, which invalidates the rules' static tags (no rows known).
//!
//! Limits, by design of NOTIFY:
//!
//! - **At most once.** Notifications are delivered only to sessions listening
//!   at commit time: nothing committed while the sidecar is down or
//!   reconnecting is delivered (the sidecar counts each reconnect in
//!   `tiercache_sidecar_notify_gaps_total`). Use the `logical` source where a
//!   lost invalidation is not acceptable.
//! - **8000 bytes per payload.** Only rule columns are sent, so payloads are
//!   small; a row whose payload would still exceed the limit is sent as
//!   `{"schema","table","op","ts","overflow":true}` (the write never fails
//!   because of the sidecar), which invalidates only static tags.
//! - Triggers run inside the writing transaction: a bulk `UPDATE` of a
//!   million rows queues a million notifications.
//!
//! Explicit invalidations: `SELECT pg_notify('tiercache',
//! '{"namespace":"products","keys":["42"],"tags":[]}')` (delivered only if
//! the transaction commits; see [`crate::emit::notify_in_tx`]).

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use super::{AbortOnDrop, SessionEnd, quote_ident, quote_literal};
use crate::config::Config;
use crate::rules::{ExplicitInvalidation, Op, Row, RowChange, RuleSet, Value};
use crate::sink::{Batch, now_us};
use crate::{Error, Shutdown, Sidecar, SourceKind};

/// The name of the row trigger the setup SQL creates on each rule table.
pub const TRIGGER_NAME: &str = "tiercache_notify";
/// Postgres's NOTIFY payload limit (bytes, exclusive).
pub const PAYLOAD_LIMIT: usize = 8000;

/// The function a rule table's triggers execute.
pub fn function_name(table: &str) -> String {
    format!("tiercache_notify_{table}")
}

/// The SQL that sets up the `notify` source: one trigger function and two
/// triggers (rows; TRUNCATE) per rule table.
pub fn setup_sql(config: &Config, rules: &RuleSet) -> String {
    let channel = quote_literal(&config.source.channel);
    let mut out = format!(
        "-- tiercache-sidecar: NOTIFY triggers on channel {:?}.\n\
         -- Each changed row sends the rule columns of its old and new versions;\n\
         -- payloads over {PAYLOAD_LIMIT} bytes (Postgres's limit) are cut to the table and\n\
         -- operation. Nothing is delivered while the sidecar is not listening:\n\
         -- use kind = \"logical\" where no invalidation may be lost.\n\
         -- Re-run this after changing the rules (CREATE OR REPLACE).\n",
        config.source.channel
    );
    for t in rules.tables() {
        let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table));
        let func = format!(
            "{}.{}",
            quote_ident(&t.schema),
            quote_ident(&function_name(&t.table))
        );
        let object = |rec: &str| {
            if t.columns.is_empty() {
                return "'{}'::json".to_owned();
            }
            let args: Vec<String> = t
                .columns
                .iter()
                .map(|c| format!("{}, {rec}.{}::text", quote_literal(c), quote_ident(c)))
                .collect();
            format!("json_build_object({})", args.join(", "))
        };
        out.push_str(&format!(
            r#"
CREATE OR REPLACE FUNCTION {func}() RETURNS trigger
LANGUAGE plpgsql AS $tiercache$
DECLARE
  old_row json;
  new_row json;
  ts numeric := extract(epoch from clock_timestamp()) * 1000;
  payload text;
BEGIN
  IF TG_OP = 'UPDATE' OR TG_OP = 'DELETE' THEN
    old_row := {old};
  END IF;
  IF TG_OP = 'UPDATE' OR TG_OP = 'INSERT' THEN
    new_row := {new};
  END IF;
  payload := json_build_object('schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME, 'op', TG_OP,
    'ts', ts, 'old', old_row, 'new', new_row)::text;
  IF octet_length(payload) >= {PAYLOAD_LIMIT} THEN
    payload := json_build_object('schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME, 'op', TG_OP,
      'ts', ts, 'overflow', true)::text;
  END IF;
  PERFORM pg_notify({channel}, payload);
  RETURN NULL;
END
$tiercache$;
DROP TRIGGER IF EXISTS {trig} ON {table};
CREATE TRIGGER {trig} AFTER INSERT OR UPDATE OR DELETE ON {table}
  FOR EACH ROW EXECUTE FUNCTION {func}();
DROP TRIGGER IF EXISTS {trig_t} ON {table};
CREATE TRIGGER {trig_t} AFTER TRUNCATE ON {table}
  FOR EACH STATEMENT EXECUTE FUNCTION {func}();
"#,
            old = object("OLD"),
            new = object("NEW"),
            trig = quote_ident(TRIGGER_NAME),
            trig_t = quote_ident(&format!("{TRIGGER_NAME}_truncate")),
        ));
    }
    out
}

/// `check` for the `notify` source: each rule table has the trigger.
pub(crate) async fn check(
    client: &Client,
    _config: &Config,
    rules: &RuleSet,
) -> Result<Vec<String>, Error> {
    let mut report = Vec::new();
    for t in rules.tables() {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND g.tgname = $3 AND g.tgenabled <> 'D'",
                &[&t.schema, &t.table, &TRIGGER_NAME],
            )
            .await
            .map_err(Error::postgres(format!(
                "looking up the trigger of {}.{}",
                t.schema, t.table
            )))?
            .get(0);
        if n == 0 {
            report.push(format!(
                "warning: {}.{} has no enabled {TRIGGER_NAME} trigger: its changes will not be \
                 seen (run the output of `tiercache-sidecar sql`)",
                t.schema, t.table
            ));
        } else {
            report.push(format!("notify: {}.{} has its trigger", t.schema, t.table));
        }
    }
    Ok(report)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RowPayload {
    schema: String,
    table: String,
    op: String,
    #[serde(default)]
    ts: Option<f64>,
    #[serde(default)]
    old: Option<HashMap<String, Option<String>>>,
    #[serde(default)]
    new: Option<HashMap<String, Option<String>>>,
    #[serde(default)]
    overflow: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Payload {
    Row(RowPayload),
    Explicit(ExplicitInvalidation),
}

/// The end of the `ts` range a payload may carry: 10000-01-01T00:00:00Z, in
/// ms since the epoch.
const MAX_TS_MS: f64 = 253_402_300_800_000.0;

/// A payload's `ts` (ms since the epoch, with a fraction) as µs: `None` when
/// it is not a time a trigger can have read (before 1970, from year 10000 on,
/// or not finite), so no outside number reaches the clock arithmetic of the
/// lag metric saturated or wrapped.
fn ts_to_us(ms: f64) -> Option<i64> {
    if !(0.0..MAX_TS_MS).contains(&ms) {
        return None;
    }
    // At most 2.6e17 µs here: the conversion is exact in range (truncating
    // the sub-µs fraction, as before).
    Some((ms * 1000.0) as i64)
}

fn to_row(m: HashMap<String, Option<String>>) -> Row {
    m.into_iter()
        .map(|(k, v)| (k, v.map_or(Value::Null, Value::Text)))
        .collect()
}

/// Decodes notification payloads into invalidations; returns the batch and
/// the number of row changes of tables without rules.
///
/// Never panics, whatever the payloads hold: a payload that is not one of
/// the two JSON shapes, or has an unknown `op`, is logged, counted and
/// skipped; an implausible `ts` is replaced by the time it was read.
pub fn decode(payloads: &[String], rules: &RuleSet) -> (Batch, u64) {
    let mut batch = Batch::new();
    let mut ignored = 0;
    for text in payloads {
        match serde_json::from_str::<Payload>(text) {
            Ok(Payload::Row(p)) => {
                let Some(op) = Op::parse(&p.op) else {
                    tracing::error!(op = %p.op, "unknown operation in notification");
                    continue;
                };
                if !rules.covers(&p.schema, &p.table) {
                    ignored += 1;
                    continue;
                }
                let t = Some(match p.ts {
                    None => now_us(),
                    Some(ms) => ts_to_us(ms).unwrap_or_else(|| {
                        metrics::counter!("tiercache_sidecar_errors_total", "op" => "decode")
                            .increment(1);
                        tracing::warn!(
                            ts = ms,
                            "notification ts out of range, using the time it was read"
                        );
                        now_us()
                    }),
                });
                let change = if p.overflow {
                    metrics::counter!("tiercache_sidecar_notify_overflow_total").increment(1);
                    tracing::warn!(
                        table = %format!("{}.{}", p.schema, p.table),
                        "notification payload exceeded {PAYLOAD_LIMIT} bytes: only static tags are invalidated"
                    );
                    RowChange {
                        schema: p.schema,
                        table: p.table,
                        op: Op::Truncate,
                        old: None,
                        new: None,
                    }
                } else {
                    RowChange {
                        schema: p.schema,
                        table: p.table,
                        op,
                        old: p.old.map(to_row),
                        new: p.new.map(to_row),
                    }
                };
                for planned in rules.plan(&change, t) {
                    batch.push(planned);
                }
            }
            Ok(Payload::Explicit(inv)) => batch.push(rules.plan_explicit(inv, Some(now_us()))),
            Err(e) => {
                metrics::counter!("tiercache_sidecar_errors_total", "op" => "decode").increment(1);
                tracing::error!("ignoring a malformed notification ({e}): {text:?}");
            }
        }
    }
    (batch, ignored)
}

pub(crate) async fn run(sc: &Sidecar, shutdown: &Shutdown) -> Result<(), Error> {
    super::reconnect_loop(sc, shutdown, |reconnect| session(sc, shutdown, reconnect)).await
}

fn lost(was_connected: bool) -> impl Fn(tokio_postgres::Error) -> SessionEnd {
    move |e| SessionEnd::Lost {
        // tokio-postgres's `Display` leaves the server's message out.
        error: crate::PgMessage(&e).to_string(),
        was_connected,
    }
}

async fn session(sc: &Sidecar, shutdown: &Shutdown, reconnect: bool) -> Result<(), SessionEnd> {
    let cfg = &sc.config().source;
    let (client, mut connection) = super::pg_config(cfg)
        .connect(super::pg_tls(cfg))
        .await
        .map_err(lost(false))?;
    let channel = cfg.channel.clone();
    let (tx, mut rx) = mpsc::channel::<String>(65_536);
    let task = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if n.channel() == channel && tx.send(n.payload().to_owned()).await.is_err() {
                        break;
                    }
                }
                Ok(AsyncMessage::Notice(n)) => tracing::debug!("postgres notice: {n}"),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("postgres connection ended: {e}");
                    break;
                }
            }
        }
    });
    let _guard = AbortOnDrop(task);
    super::check_catalog_for_session(&client, sc.rules(), SourceKind::Notify).await?;
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(&cfg.channel)))
        .await
        .map_err(lost(false))?;
    let status = sc.status();
    status.set_connected(true);
    if reconnect {
        metrics::counter!("tiercache_sidecar_notify_gaps_total").increment(1);
        tracing::warn!(
            "notify source reconnected: changes committed while disconnected were not delivered"
        );
    }
    tracing::info!(channel = %cfg.channel, "notify source listening");

    let lost = lost(true);
    let batch_max = cfg.batch_size as usize;
    let mut ping = tokio::time::interval(Duration::from_millis(cfg.keepalive_ms));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => return Ok(()),
            first = rx.recv() => {
                let Some(first) = first else {
                    return Err(SessionEnd::Lost {
                        error: "connection closed".into(),
                        was_connected: true,
                    });
                };
                let mut payloads = vec![first];
                while payloads.len() < batch_max {
                    match rx.try_recv() {
                        Ok(p) => payloads.push(p),
                        Err(_) => break,
                    }
                }
                let (batch, ignored) = decode(&payloads, sc.rules());
                status.add_changes(payloads.len() as u64);
                metrics::counter!("tiercache_sidecar_changes_read_total", "source" => "notify")
                    .increment(payloads.len() as u64);
                metrics::counter!("tiercache_sidecar_changes_ignored_total", "source" => "notify")
                    .increment(ignored);
                if sc.sinks().apply(&batch, shutdown).await.is_err() {
                    return Ok(());
                }
                status.applied();
            }
            _ = ping.tick() => {
                match tokio::time::timeout(
                    Duration::from_millis(cfg.keepalive_ms.max(1000)),
                    client.simple_query("SELECT 1"),
                ).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(lost(e)),
                    Err(_) => return Err(SessionEnd::Lost {
                        error: "keepalive query timed out".into(),
                        was_connected: true,
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"
            [source]
            kind = "notify"
            database_url = "postgres://u@h/db"
            [bus]
            kind = "redis"
            url = "redis://h:1"
            [[rules]]
            table = "products"
            namespace = "products"
            keys = ["{id}"]
            tags = ["products", "category:{category}"]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn decodes_rows_explicit_and_garbage() {
        let c = config();
        let rules = RuleSet::from_config(&c).unwrap();
        let (batch, ignored) = decode(
            &[
                r#"{"schema":"public","table":"products","op":"UPDATE","ts":1000.5,
                    "old":{"id":"1","category":"a"},"new":{"id":"1","category":"b"}}"#
                    .into(),
                r#"{"schema":"public","table":"audit","op":"INSERT","ts":1,"old":null,"new":{"id":"1"}}"#
                    .into(),
                r#"{"namespace":"x","keys":["k"]}"#.into(),
                r#"{"schema":"public","table":"products","op":"DELETE","ts":2,"overflow":true}"#
                    .into(),
                "not json".into(),
            ],
            &rules,
        );
        assert_eq!(ignored, 1);
        let m = batch.messages();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].keys, vec!["1"]);
        assert_eq!(m[0].tags, vec!["products", "category:a", "category:b"]);
        assert_eq!(m[0].source_time_us, Some(2_000));
        assert_eq!(m[1].namespace, "x");
    }

    #[test]
    fn setup_sql_builds_triggers_from_rule_columns() {
        let c = config();
        let sql = crate::setup_sql(&c).unwrap();
        assert!(
            sql.contains(
                "json_build_object('category', OLD.\"category\"::text, 'id', OLD.\"id\"::text)"
            ),
            "{sql}"
        );
        assert!(sql.contains("pg_notify('tiercache', payload)"));
        assert!(sql.contains("CREATE TRIGGER \"tiercache_notify\" AFTER INSERT OR UPDATE OR DELETE ON \"public\".\"products\""));
        assert!(sql.contains("AFTER TRUNCATE"));
    }

    #[test]
    fn out_of_range_ts_is_replaced_by_read_time() {
        assert_eq!(ts_to_us(1000.5), Some(1_000_500));
        assert_eq!(ts_to_us(0.0), Some(0));
        for bad in [
            -1.0,
            -1e300,
            1e300,
            1e19,
            MAX_TS_MS,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert_eq!(ts_to_us(bad), None, "{bad}");
        }
        let rules = RuleSet::from_config(&config()).unwrap();
        for ts in ["-1e300", "1e300", "-9223372036854775808", "1e19", "-0.5"] {
            let before = now_us();
            let (batch, _) = decode(
                &[format!(
                    r#"{{"schema":"public","table":"products","op":"INSERT","ts":{ts},"new":{{"id":"1"}}}}"#
                )],
                &rules,
            );
            let m = batch.messages();
            assert_eq!(m.len(), 1, "{ts}");
            let t = m[0].source_time_us.unwrap();
            assert!(t >= before && t <= now_us(), "{ts}: {t}");
        }
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::Config as PropConfig;

        // Failures are not persisted (no proptest-regressions files in the
        // source tree): a failing input is turned into a named unit test.
        fn prop_config(cases: u32) -> PropConfig {
            PropConfig {
                cases,
                failure_persistence: None,
                ..PropConfig::default()
            }
        }

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("public".to_owned()),
                Just("products".to_owned()),
                Just("id".to_owned()),
                Just("category".to_owned()),
                ".{0,8}",
            ]
        }

        fn row() -> impl Strategy<Value = Option<HashMap<String, Option<String>>>> {
            proptest::option::of(proptest::collection::hash_map(
                text(),
                proptest::option::of(".{0,8}"),
                0..4,
            ))
        }

        /// A row payload as the trigger builds it, with random fields and
        /// any `ts` (serde_json writes NaN and infinities as `null`).
        fn row_payload() -> impl Strategy<Value = String> {
            (
                (text(), text()),
                prop_oneof![
                    Just("INSERT".to_owned()),
                    Just("UPDATE".to_owned()),
                    Just("DELETE".to_owned()),
                    Just("TRUNCATE".to_owned()),
                    ".{0,8}",
                ],
                proptest::option::of(prop_oneof![
                    any::<f64>(),
                    0.0..MAX_TS_MS,
                    Just(-1e300),
                    Just(1e300),
                    Just(i64::MIN as f64),
                ]),
                (row(), row()),
                any::<bool>(),
            )
                .prop_map(|((schema, table), op, ts, (old, new), overflow)| {
                    let mut v = serde_json::json!({
                        "schema": schema, "table": table, "op": op, "ts": ts,
                        "old": old, "new": new,
                    });
                    if overflow {
                        v["overflow"] = serde_json::Value::Bool(true);
                    }
                    v.to_string()
                })
        }

        fn explicit_payload() -> impl Strategy<Value = String> {
            (
                text(),
                proptest::collection::vec(".{0,8}", 0..4),
                proptest::collection::vec(".{0,8}", 0..4),
                any::<bool>(),
            )
                .prop_map(|(namespace, keys, tags, created)| {
                    serde_json::json!({
                        "namespace": namespace, "keys": keys, "tags": tags, "created": created,
                    })
                    .to_string()
                })
        }

        fn payload() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => row_payload(),
                1 => explicit_payload(),
                // Near-valid: a valid payload cut short, or with a number
                // of random width as `ts`.
                1 => (row_payload(), any::<proptest::sample::Index>()).prop_map(|(p, i)| {
                    let mut cut = i.index(p.len() + 1);
                    while !p.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    p[..cut].to_owned()
                }),
                1 => "-?[0-9]{1,40}(\\.[0-9]{0,20})?(e-?[0-9]{1,4})?".prop_map(|n| format!(
                    r#"{{"schema":"public","table":"products","op":"DELETE","ts":{n},"old":{{"id":"1"}}}}"#
                )),
                1 => any::<String>(),
            ]
        }

        proptest! {
            #![proptest_config(prop_config(256))]

            #[test]
            fn decode_never_panics_and_times_stay_in_range(
                payloads in proptest::collection::vec(payload(), 0..6),
            ) {
                let rules = RuleSet::from_config(&config()).unwrap();
                let before = now_us();
                let (batch, ignored) = decode(&payloads, &rules);
                let after = now_us();
                prop_assert!(ignored <= payloads.len() as u64);
                for m in batch.messages() {
                    for &t in m.lag_samples.iter().chain(m.source_time_us.iter()) {
                        // Either the payload's own plausible ts, or the
                        // time it was read.
                        prop_assert!(
                            (0..=MAX_TS_MS as i64 * 1000).contains(&t) || (before..=after).contains(&t),
                            "{t}"
                        );
                    }
                }
            }
        }
    }
}
