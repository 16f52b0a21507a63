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
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::config::Settings;
use crate::db::Db;
use crate::routes::AppState;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    let metrics = PrometheusBuilder::new().install_recorder()?;
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
