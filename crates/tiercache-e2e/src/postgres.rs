//! The `kv` table of the consistency checkers (a version per key, in a real
//! Postgres), and the check that every tier agrees with it.

use tiercache::core::Cache;
use tiercache_redis::RedisSharedTier;

/// A client of the Postgres at `url`, its connection driven by a task.
pub async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Creates `kv (id, version)` with keys `0..keys`, each at version 0.
pub async fn create_kv(admin: &tokio_postgres::Client, keys: i64) {
    admin
        .batch_execute("create table kv (id bigint primary key, version bigint not null)")
        .await
        .unwrap();
    for k in 0..keys {
        admin
            .execute("insert into kv values ($1, 0)", &[&k])
            .await
            .unwrap();
    }
}

/// After quiescence: every instance's local tier, and Redis, hold the
/// version Postgres has for each key (or nothing).
pub async fn assert_tiers_match_postgres(
    admin: &tokio_postgres::Client,
    keys: i64,
    ns: &str,
    redis_url: &str,
    caches: &[Cache<i64, i64>],
) {
    if let Err(e) = tiers_match_postgres(admin, keys, ns, redis_url, caches).await {
        panic!("{e}");
    }
}

/// Whether every instance's local tier, and Redis, hold the version
/// Postgres has for each key (or nothing); the first difference if not.
pub async fn tiers_match_postgres(
    admin: &tokio_postgres::Client,
    keys: i64,
    ns: &str,
    redis_url: &str,
    caches: &[Cache<i64, i64>],
) -> Result<(), String> {
    let checker: Cache<i64, i64> = Cache::builder(ns)
        .shared_tier(
            RedisSharedTier::builder()
                .url(redis_url)
                .build()
                .await
                .unwrap(),
        )
        .no_bus()
        .local_capacity(0)
        .build()
        .unwrap();
    for k in 0..keys {
        let truth: i64 = admin
            .query_one("select version from kv where id = $1", &[&k])
            .await
            .unwrap()
            .get(0);
        for (i, c) in caches.iter().enumerate() {
            let got = c.get(&k).await.map(|v| *v);
            if got.is_some() && got != Some(truth) {
                return Err(format!(
                    "instance {i} holds {got:?} for key {k}, Postgres {truth}"
                ));
            }
        }
        let shared = checker.get(&k).await.map(|v| *v);
        if shared.is_some() && shared != Some(truth) {
            return Err(format!(
                "Redis holds {shared:?} for key {k}, Postgres {truth}"
            ));
        }
    }
    Ok(())
}

/// Commits the next version of `key`; returns it.
pub async fn bump(db: &tokio_postgres::Client, key: i64) -> i64 {
    db.query_one(
        "update kv set version = version + 1 where id = $1 returning version",
        &[&key],
    )
    .await
    .unwrap()
    .get(0)
}

/// Reads the version of `key` (a loader's origin call).
pub async fn version_of(
    db: &tokio_postgres::Client,
    key: i64,
) -> Result<i64, tokio_postgres::Error> {
    Ok(db
        .query_one("select version from kv where id = $1", &[&key])
        .await?
        .get(0))
}
