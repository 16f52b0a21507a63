//! The products example: an axum API over Postgres, cached with tiercache
//! (an HTTP response cache in front of the read routes, a row cache with a
//! Bloom guard on ids and negative caching below it, a Redis shared tier, a
//! NATS bus, jittered TTLs), kept fresh by `tiercache-sidecar` from
//! Postgres's change stream. See examples/products/README.md for the
//! walk-through.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:15432/postgres \
//! REDIS_URL=redis://127.0.0.1:16379 NATS_URL=nats://127.0.0.1:14222 \
//! LISTEN_ADDR=127.0.0.1:8081 cargo run -p tiercache-products
//!
//! cargo run -p tiercache-products -- --seed 1000   # insert 1000 products, exit
//! ```
#![allow(missing_docs)]

mod cache;
mod config;
mod db;
mod error;
mod routes;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::config::Settings;
use crate::db::Db;
use crate::routes::AppState;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Buckets of `tiercache_load_duration_seconds` (origin loads) and of the
/// app's request latency, in seconds.
const LOAD_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of `tiercache_commit_to_evict_seconds`, finer around the
/// staleness bound (0.5 s by default) that the alert rules compare with.
const EVICT_LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
];

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // sqlx logs Postgres notices ("relation already exists,
                // skipping") at info.
                tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = Settings::parse();
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> Result<(), BoxError> {
    let db = Db::connect(
        &settings.database_url,
        settings.pool_size,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| format!("cannot connect to DATABASE_URL: {e}"))?;
    db.migrate()
        .await
        .map_err(|e| format!("cannot create the products table: {e}"))?;

    if let Some(n) = settings.seed {
        match db.seed(n).await? {
            Some((lo, hi)) => println!("seeded {n} products (ids {lo}..={hi})"),
            None => println!("seeded 0 products"),
        }
        return Ok(());
    }

    // The recorder first: the caches register their counters when built.
    // The engine's histograms as Prometheus histograms (buckets, not a
    // summary), so that a dashboard can aggregate them across instances
    // with `histogram_quantile` (deploy/grafana/).
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tiercache_load_duration_seconds".into()),
            LOAD_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("tiercache_commit_to_evict_seconds".into()),
            EVICT_LAG_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("products_http_request_duration_seconds".into()),
            LOAD_BUCKETS,
        )?
        .install_recorder()?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });

    let caches = cache::build(&settings, &db).await?;
    // Serve once the Bloom guard knows the ids (it answers "maybe" until
    // then, so this only keeps early 404s off Postgres).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !caches.products.bloom_ready() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !caches.products.bloom_ready() {
        tracing::warn!("bloom guard not built yet; serving anyway");
    }

    let listener = tokio::net::TcpListener::bind(settings.listen_addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen_addr))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        shared = caches.shared,
        bus = caches.bus,
        settings = %settings.redacted(),
        "products API listening"
    );
    let app = routes::router(AppState {
        db,
        caches,
        metrics,
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
