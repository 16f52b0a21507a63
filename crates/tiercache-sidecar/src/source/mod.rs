//! Change sources: [`notify`] (LISTEN/NOTIFY) and [`logical`] (a logical
//! replication slot decoded by `test_decoding`, parsed by
//! [`test_decoding`]), and what they share: connecting, reconnecting with
//! backoff, and checking the rules against the catalog.

pub mod logical;
pub mod notify;
pub mod test_decoding;

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{ConfigError, SourceConfig, SourceKind};
use crate::rules::RuleSet;
use crate::{Error, Shutdown, Sidecar};

/// Connects to the source database (TLS as [`pg_config`] and [`pg_tls`]
/// say; `application_name` `tiercache-sidecar`, TCP keepalives, the
/// configured connect timeout) and drives the connection in a task. The
/// caller aborts the task when done.
pub(crate) async fn connect(
    cfg: &SourceConfig,
) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = pg_config(cfg).connect(pg_tls(cfg)).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection ended: {e}");
        }
    });
    Ok((client, task))
}

/// The `tokio_postgres::Config` of the source.
pub(crate) fn pg_config(cfg: &SourceConfig) -> tokio_postgres::Config {
    let url = cfg.database_url.as_deref().unwrap_or_default();
    let mut pg: tokio_postgres::Config = url.parse().unwrap_or_default();
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
    }
    if pg.get_application_name().is_none() {
        pg.application_name("tiercache-sidecar");
    }
    pg.keepalives(true).keepalives_idle(Duration::from_secs(10));
    // TLS only when asked for: a CA to trust, or `sslmode` in the URL. (A
    // bare URL used to mean no TLS at all; it still does.)
    if !url.contains("sslmode=") {
        pg.ssl_mode(if cfg.tls_ca_cert.is_some() {
            SslMode::Require
        } else {
            SslMode::Disable
        });
    }
    pg
}

/// The TLS connector: rustls (ring), trusting `source.tls_ca_cert`, or the
/// system's roots when it is unset. Used only when the `sslmode` of
/// [`pg_config`] asks for TLS.
pub(crate) fn pg_tls(cfg: &SourceConfig) -> MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.tls_ca_cert {
        Some(path) => match read_pem_certs(path) {
            Ok(certs) => {
                let (_, bad) = roots.add_parsable_certificates(certs);
                if bad > 0 {
                    tracing::warn!(
                        "source.tls_ca_cert: {} certificate(s) in {} could not be used",
                        bad,
                        path.display()
                    );
                }
            }
            // Checked at start; a file gone since fails the handshake (no
            // root trusted), which the error and the log then say.
            Err(e) => tracing::error!("source.tls_ca_cert: {}: {e}", path.display()),
        },
        // The system's roots only when the URL asks for TLS: reading them
        // costs every (re)connect a scan of the system's certificate files.
        None if cfg
            .database_url
            .as_deref()
            .is_some_and(|u| u.contains("sslmode=")) =>
        {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
        // No TLS will be negotiated (`pg_config` disables it).
        None => {}
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        Err(e) => {
            tracing::error!("rustls with ring: {e}; falling back to rustls' default provider");
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    };
    MakeRustlsConnect::new(config)
}

fn read_pem_certs(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".to_owned());
    }
    Ok(certs)
}

/// A task aborted when this guard is dropped.
pub(crate) struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a source session ended, other than by shutdown.
pub(crate) enum SessionEnd {
    /// The connection failed or broke: reconnect after a backoff.
    Lost {
        /// Why (for the log).
        error: String,
        /// The session had connected (reset the backoff).
        was_connected: bool,
    },
    /// Retrying cannot help.
    Fatal(Error),
}

/// Runs `session` until it ends with shutdown or a fatal error, reconnecting
/// with backoff after each lost connection.
pub(crate) async fn reconnect_loop<'a, F, Fut>(
    sc: &'a Sidecar,
    shutdown: &'a Shutdown,
    mut session: F,
) -> Result<(), Error>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Result<(), SessionEnd>> + 'a,
{
    let retry = &sc.config().retry;
    let mut delay = retry.initial();
    let mut reconnect = false;
    loop {
        if shutdown.is_triggered() {
            return Ok(());
        }
        match session(reconnect).await {
            Ok(()) => return Ok(()),
            Err(SessionEnd::Fatal(e)) => return Err(e),
            Err(SessionEnd::Lost {
                error,
                was_connected,
            }) => {
                let status = sc.status();
                status.set_connected(false);
                metrics::counter!("tiercache_sidecar_errors_total", "op" => "source").increment(1);
                if was_connected {
                    delay = retry.initial();
                    reconnect = true;
                    metrics::counter!("tiercache_sidecar_reconnects_total").increment(1);
                }
                tracing::warn!("source connection lost, reconnecting in {delay:?}: {error}");
                if !shutdown.sleep(delay).await {
                    return Ok(());
                }
                delay = (delay * 2).min(retry.max());
            }
        }
    }
}

/// [`validate_catalog`] at the start of a source session: logs the warnings,
/// and turns a broken connection into [`SessionEnd::Lost`] (reconnect) and
/// anything else into [`SessionEnd::Fatal`].
pub(crate) async fn check_catalog_for_session(
    client: &Client,
    rules: &RuleSet,
    kind: SourceKind,
) -> Result<(), SessionEnd> {
    let warnings = validate_catalog(client, rules, kind)
        .await
        .map_err(|e| match e {
            e @ Error::Postgres { .. } => SessionEnd::Lost {
                error: e.to_string(),
                was_connected: false,
            },
            other => SessionEnd::Fatal(other),
        })?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(())
}

/// Checks every rule against the catalog: the table exists and has every
/// referenced column. Errors name the config field; warnings (e.g. a table
/// without `REPLICA IDENTITY FULL` under `logical`) are returned.
pub(crate) async fn validate_catalog(
    client: &Client,
    rules: &RuleSet,
    kind: SourceKind,
) -> Result<Vec<String>, Error> {
    let mut warnings = Vec::new();
    for t in rules.tables() {
        let row = client
            .query_opt(
                "SELECT c.oid::int8, c.relreplident::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&t.schema, &t.table],
            )
            .await
            .map_err(Error::postgres(format!(
                "looking up table {}.{}",
                t.schema, t.table
            )))?;
        let Some(row) = row else {
            let field = format!("rules[{}].table", t.rules.first().copied().unwrap_or(0));
            return Err(ConfigError::invalid(
                field,
                format!("table {}.{} does not exist", t.schema, t.table),
            )
            .into());
        };
        let oid: i64 = row.get(0);
        let ident: String = row.get(1);
        let cols: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::int8::oid \
                 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&oid],
            )
            .await
            .map_err(Error::postgres(format!(
                "listing the columns of {}.{}",
                t.schema, t.table
            )))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (col, field) in &t.fields {
            if !cols.iter().any(|c| c == col) {
                return Err(ConfigError::invalid(
                    field.clone(),
                    format!(
                        "unknown column placeholder {{{col}}} (table {}.{} has columns: {})",
                        t.schema,
                        t.table,
                        cols.join(", ")
                    ),
                )
                .into());
            }
        }
        if kind == SourceKind::Logical && ident != "f" && !t.columns.is_empty() {
            warnings.push(format!(
                "table {}.{} is not REPLICA IDENTITY FULL: updates and deletes carry only the \
                 replica identity of the old row, so templates over other columns miss the old \
                 values (run `tiercache-sidecar sql`)",
                t.schema, t.table
            ));
        }
    }
    Ok(warnings)
}

/// `"ident"` with embedded quotes doubled.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'literal'` with embedded quotes doubled.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
