//! `/healthz` and `/metrics` (Prometheus text), served by axum.
//!
//! Metrics recorded by the sidecar:
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `tiercache_sidecar_changes_read_total{source}` | counter | row changes and messages read |
//! | `tiercache_sidecar_changes_ignored_total{source}` | counter | changes of tables without rules |
//! | `tiercache_sidecar_invalidations_sent_total{namespace}` | counter | messages applied (shared tier + bus) |
//! | `tiercache_sidecar_keys_invalidated_total{namespace}` / `..._tags_...` | counter | keys / tags in them |
//! | `tiercache_sidecar_lag_seconds` | histogram | source commit (or trigger) time to publish done |
//! | `tiercache_sidecar_slot_lag_bytes` | gauge | `pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)` (logical) |
//! | `tiercache_sidecar_retries_total{op}` | counter | sink calls retried |
//! | `tiercache_sidecar_errors_total{op}` | counter | failed calls, undecodable input, lost connections |
//! | `tiercache_sidecar_reconnects_total` | counter | source reconnects |
//! | `tiercache_sidecar_notify_gaps_total` | counter | notify reconnects (changes meanwhile lost) |
//! | `tiercache_sidecar_source_connected` | gauge | 1 while the source is connected |
//! | `tiercache_sidecar_publish_backlog` | gauge | bus publishes queued, not yet out |
//! | `tiercache_sidecar_notify_overflow_total` | counter | notifications too large for `pg_notify` (`notify`) |
//! | `tiercache_sidecar_unrenderable_total{namespace}` | counter | templates a change could not fill |
//!
//! [`register_metrics`] registers them all (at zero) when the sidecar
//! starts, so that a scrape, a dashboard or an alert finds every series
//! before the first change or the first error: the Prometheus exporter
//! shows only what was registered. The shared tier's breaker gauge
//! (`tiercache_shared_breaker_open`) is registered when the Redis sink is
//! built, which is why `main` installs the recorder first.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::{Config, SourceKind};
use crate::{Error, Shutdown, Status};

/// The `op` labels of `tiercache_sidecar_errors_total` and (the sink's
/// calls, retried) `tiercache_sidecar_retries_total`.
const SOURCE_OPS: &[&str] = &["source", "decode", "message"];
const SINK_OPS: &[&str] = &["shared_invalidate", "shared_invalidate_tags", "bus_publish"];

/// Buckets of `tiercache_sidecar_lag_seconds`.
pub const LAG_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<Result<PrometheusHandle, Arc<BuildError>>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return
/// the same handle) and starts its upkeep task on the current runtime.
pub fn install_recorder() -> Result<PrometheusHandle, Error> {
    let result = HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("tiercache_sidecar_lag_seconds".into()),
                LAG_BUCKETS,
            )
            .map_err(Arc::new)?
            .install_recorder()
            .map_err(Arc::new)?;
        let upkeep = handle.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    upkeep.run_upkeep();
                }
            });
        }
        Ok(handle)
    });
    result.clone().map_err(Error::Metrics)
}

/// Registers every sidecar metric at zero with the installed recorder (see
/// the module docs), labelled by `config`'s source kind and its rules'
/// namespaces. Call it after [`install_recorder`]; a value already recorded
/// is left as it is.
pub fn register_metrics(config: &Config) {
    let source = match config.source.kind {
        SourceKind::Notify => "notify",
        SourceKind::Logical => "logical",
    };
    metrics::counter!("tiercache_sidecar_changes_read_total", "source" => source).increment(0);
    metrics::counter!("tiercache_sidecar_changes_ignored_total", "source" => source).increment(0);
    for &op in SOURCE_OPS.iter().chain(SINK_OPS) {
        metrics::counter!("tiercache_sidecar_errors_total", "op" => op).increment(0);
    }
    for &op in SINK_OPS {
        metrics::counter!("tiercache_sidecar_retries_total", "op" => op).increment(0);
    }
    metrics::counter!("tiercache_sidecar_reconnects_total").increment(0);
    match config.source.kind {
        SourceKind::Notify => {
            metrics::counter!("tiercache_sidecar_notify_gaps_total").increment(0);
            metrics::counter!("tiercache_sidecar_notify_overflow_total").increment(0);
        }
        // The slot's lag is only known for a slot; until the first poll
        // the gauge reads 0.
        SourceKind::Logical => metrics::gauge!("tiercache_sidecar_slot_lag_bytes").increment(0.0),
    }
    let mut namespaces: Vec<&str> = config.rules.iter().map(|r| r.namespace.as_str()).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    for ns in namespaces {
        let ns = ns.to_owned();
        metrics::counter!("tiercache_sidecar_invalidations_sent_total", "namespace" => ns.clone())
            .increment(0);
        metrics::counter!("tiercache_sidecar_keys_invalidated_total", "namespace" => ns.clone())
            .increment(0);
        metrics::counter!("tiercache_sidecar_tags_invalidated_total", "namespace" => ns.clone())
            .increment(0);
        metrics::counter!("tiercache_sidecar_unrenderable_total", "namespace" => ns).increment(0);
    }
    // Registering a histogram exports it (every bucket at 0) before the
    // first sample.
    drop(metrics::histogram!("tiercache_sidecar_lag_seconds"));
    metrics::gauge!("tiercache_sidecar_publish_backlog").increment(0.0);
    metrics::gauge!("tiercache_sidecar_source_connected").increment(0.0);
}

#[derive(Clone)]
struct AppState {
    status: Arc<Status>,
    metrics: PrometheusHandle,
}

/// The router: `GET /healthz` (200 while the source is connected, 503
/// otherwise, with a JSON body) and `GET /metrics`.
pub fn router(status: Arc<Status>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { status, metrics })
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let st = &s.status;
    let body = serde_json::json!({
        "status": if st.is_connected() { "ok" } else { "disconnected" },
        "source": format!("{:?}", st.source()).to_lowercase(),
        "connected": st.is_connected(),
        "connections": st.connections(),
        "changes_read": st.changes_read(),
        "batches_applied": st.batches_applied(),
        "last_applied_ms": st.last_applied_ms(),
        "slot_lag_bytes": st.slot_lag_bytes(),
    });
    let code = if st.is_connected() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// Binds `addr` and serves [`router`] until `shutdown`. Returns the bound
/// address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    status: Arc<Status>,
    metrics: PrometheusHandle,
    shutdown: Shutdown,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Http {
            context: format!("cannot listen on {addr}"),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| Error::Http {
        context: "cannot read the bound address".to_owned(),
        source,
    })?;
    let app = router(status, metrics);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await
        {
            tracing::error!("http server failed: {e}");
        }
    });
    Ok((local, task))
}
