//! The origin: the `products` table in Postgres (sqlx).
//!
//! Every read that reaches Postgres increments
//! `products_db_reads_total{kind="by_id"|"by_category"|"ids"}`, so what the
//! cache saves is visible in `/metrics`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};

/// The table, created at start when missing. `REPLICA IDENTITY FULL` lets the
/// sidecar's logical source see the old category of an updated or deleted
/// row, so both categories' lists are invalidated when a product moves.
pub const SCHEMA: &str = include_str!("../schema.sql");

/// Categories the seeder draws from.
pub const SEED_CATEGORIES: &[&str] = &[
    "books", "games", "music", "garden", "kitchen", "toys", "tools", "sports",
];

/// Lists are cut to this many products (the lowest ids).
pub const LIST_LIMIT: i64 = 1000;

/// A row of `products`, and the JSON the API answers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
    pub category: String,
    pub updated_at: DateTime<Utc>,
}

/// The fields a client sends to create or replace a product.
#[derive(Clone, Debug)]
pub struct ProductInput {
    pub name: String,
    pub price_cents: i64,
    pub category: String,
}

/// The database handle (a connection pool; cheap to clone).
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
}

const COLUMNS: &str = "id, name, price_cents, category, updated_at";

fn read(kind: &'static str) {
    metrics::counter!("products_db_reads_total", "kind" => kind).increment(1);
}

impl Db {
    /// Connects, retrying for up to `wait` while Postgres is starting.
    pub async fn connect(url: &str, pool_size: u32, wait: Duration) -> Result<Self, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let attempt = PgPoolOptions::new()
                .max_connections(pool_size)
                .acquire_timeout(Duration::from_secs(3))
                .connect(url)
                .await;
            match attempt {
                Ok(pool) => return Ok(Self { pool }),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "postgres not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates the table and its index when missing. Instances starting
    /// together serialise on an advisory lock (concurrent `CREATE TABLE IF
    /// NOT EXISTS` can otherwise fail on the catalog's unique index).
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(7207)")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
        tx.commit().await
    }

    /// Whether Postgres answers.
    pub async fn ping(&self) -> bool {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .is_ok()
    }

    /// One product.
    pub async fn by_id(&self, id: i64) -> Result<Option<Product>, sqlx::Error> {
        read("by_id");
        sqlx::query_as::<_, Product>(&format!("SELECT {COLUMNS} FROM products WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// The products of a category, lowest ids first, at most [`LIST_LIMIT`].
    pub async fn by_category(&self, category: &str) -> Result<Vec<Product>, sqlx::Error> {
        read("by_category");
        sqlx::query_as::<_, Product>(&format!(
            "SELECT {COLUMNS} FROM products WHERE category = $1 ORDER BY id LIMIT $2"
        ))
        .bind(category)
        .bind(LIST_LIMIT)
        .fetch_all(&self.pool)
        .await
    }

    /// Every id, rendered as the cache renders `i64` keys (the Bloom guard's
    /// key universe).
    pub async fn all_ids(&self) -> Result<Vec<String>, sqlx::Error> {
        read("ids");
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM products")
            .fetch_all(&self.pool)
            .await?;
        Ok(ids.into_iter().map(|id| id.to_string()).collect())
    }

    /// Inserts a product.
    pub async fn insert(&self, p: &ProductInput) -> Result<Product, sqlx::Error> {
        sqlx::query_as::<_, Product>(&format!(
            "INSERT INTO products (name, price_cents, category) VALUES ($1, $2, $3) \
             RETURNING {COLUMNS}"
        ))
        .bind(&p.name)
        .bind(p.price_cents)
        .bind(&p.category)
        .fetch_one(&self.pool)
        .await
    }

    /// Replaces a product's fields; `None` when there is no such product.
    pub async fn update(&self, id: i64, p: &ProductInput) -> Result<Option<Product>, sqlx::Error> {
        sqlx::query_as::<_, Product>(&format!(
            "UPDATE products SET name = $2, price_cents = $3, category = $4, updated_at = now() \
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(&p.name)
        .bind(p.price_cents)
        .bind(&p.category)
        .fetch_optional(&self.pool)
        .await
    }

    /// Deletes a product; `false` when there was none.
    pub async fn delete(&self, id: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM products WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Inserts `n` products with random names, prices and categories from
    /// [`SEED_CATEGORIES`]; returns the lowest and highest new id.
    pub async fn seed(&self, n: u32) -> Result<Option<(i64, i64)>, sqlx::Error> {
        let categories: Vec<String> = SEED_CATEGORIES.iter().map(|c| (*c).to_owned()).collect();
        sqlx::query_as::<_, (Option<i64>, Option<i64>)>(
            "WITH new AS ( \
               INSERT INTO products (name, price_cents, category) \
               SELECT initcap(($2::text[])[1 + (g % array_length($2::text[], 1))]) || ' item ' \
                        || substr(md5(random()::text), 1, 6), \
                      100 + floor(random() * 20000)::bigint, \
                      ($2::text[])[1 + ((g * 7 + floor(random() * 3)::int) % array_length($2::text[], 1))] \
               FROM generate_series(1, $1::int) AS g \
               RETURNING id) \
             SELECT min(id), max(id) FROM new",
        )
        .bind(n as i32)
        .bind(&categories)
        .fetch_one(&self.pool)
        .await
        .map(|(lo, hi)| lo.zip(hi))
    }
}
