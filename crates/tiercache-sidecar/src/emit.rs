//! Explicit invalidations from inside the application's own transactions.
//!
//! With the `logical` source, a transactional logical message with the
//! prefix `tiercache` is applied when (and only if) its transaction commits,
//! in commit order with the row changes:
//!
//! ```sql
//! BEGIN;
//! UPDATE prices SET ... ;
//! SELECT pg_logical_emit_message(true, 'tiercache',
//!   '{"namespace":"products","keys":["42","43"],"tags":["category:books"]}');
//! COMMIT;
//! ```
//!
//! Any client can send that SQL. The JSON has `namespace` (required),
//! `keys` and `tags` (the application's rendered keys without namespace;
//! default empty) and `created` (default false). The namespace's
//! `max_key_len` is taken from a rule with the same namespace (else 250).
//!
//! With the `notify` source, `SELECT pg_notify('tiercache', '<same json>')`
//! does the same (also only on commit, but lost if the sidecar is not
//! listening).
//!
//! For sqlx users:
//!
//! ```no_run
//! # async fn f(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE products SET price = price * 2 WHERE category = 'books'")
//!     .execute(&mut *tx)
//!     .await?;
//! tiercache_sidecar::emit::invalidate_in_tx(&mut tx, "products", &[] as &[&str], &["category:books"])
//!     .await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```

use serde::Serialize;

use crate::source::logical::MESSAGE_PREFIX;

#[derive(Serialize)]
struct Message<'a> {
    namespace: &'a str,
    keys: Vec<&'a str>,
    tags: Vec<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    created: bool,
}

/// The JSON content of an explicit invalidation.
pub fn invalidation_json<K: AsRef<str>, T: AsRef<str>>(
    namespace: &str,
    keys: &[K],
    tags: &[T],
) -> String {
    let m = Message {
        namespace,
        keys: keys.iter().map(AsRef::as_ref).collect(),
        tags: tags.iter().map(AsRef::as_ref).collect(),
        created: false,
    };
    serde_json::to_string(&m).unwrap_or_default()
}

/// Emits an explicit invalidation of `keys` and `tags` in `namespace` as a
/// transactional logical message inside the caller's transaction (pass
/// `&mut tx` or `&mut *tx`): the `logical` source applies it if and when the
/// transaction commits.
pub async fn invalidate_in_tx<K: AsRef<str>, T: AsRef<str>>(
    conn: &mut sqlx::PgConnection,
    namespace: &str,
    keys: &[K],
    tags: &[T],
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_logical_emit_message(true, $1::text, $2::text)")
        .bind(MESSAGE_PREFIX)
        .bind(invalidation_json(namespace, keys, tags))
        .execute(conn)
        .await?;
    Ok(())
}

/// Sends an explicit invalidation with `pg_notify(channel, json)` inside the
/// caller's transaction, for the `notify` source.
pub async fn notify_in_tx<K: AsRef<str>, T: AsRef<str>>(
    conn: &mut sqlx::PgConnection,
    channel: &str,
    namespace: &str,
    keys: &[K],
    tags: &[T],
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(invalidation_json(namespace, keys, tags))
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::ExplicitInvalidation;

    #[test]
    fn json_round_trips_through_the_parser() {
        let j = invalidation_json("products", &["1", "it's \"x\""], &["category:b"]);
        let inv: ExplicitInvalidation = serde_json::from_str(&j).unwrap();
        assert_eq!(inv.namespace, "products");
        assert_eq!(inv.keys, vec!["1", "it's \"x\""]);
        assert_eq!(inv.tags, vec!["category:b"]);
    }
}
