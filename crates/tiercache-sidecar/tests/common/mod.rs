//! Shared helpers of the integration tests: a real Postgres from the
//! testkit, a sidecar over in-process (or given) sinks, and a bus inbox.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tiercache_core::backend::{
    Bus, BusEvent, InProcessBus, InProcessSharedTier, Invalidation, MessageCodec, OriginSignal,
    SharedTier,
};
use tiercache_sidecar::config::RetryConfig;
use tiercache_sidecar::{Config, Shutdown, ShutdownTrigger, Sidecar, Sinks};
use tiercache_testkit::Postgres;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const SCHEMA: &str = "
    CREATE TABLE products (id bigint PRIMARY KEY, name text, category text, body text);
    CREATE TABLE audit (id bigserial PRIMARY KEY, note text);
    INSERT INTO products SELECT g, 'p' || g, 'books', 'x' FROM generate_series(1, 300) g;
";

/// Starts Postgres with the test schema.
pub async fn start_pg() -> Postgres {
    tokio::task::spawn_blocking(|| {
        let pg = Postgres::start().expect("postgres starts");
        pg.psql(SCHEMA).expect("schema");
        pg
    })
    .await
    .unwrap()
}

/// Runs SQL through psql (blocking, short).
pub fn psql(pg: &Postgres, sql: &str) -> String {
    match pg.psql(sql) {
        Ok(out) => out,
        Err(e) => panic!("psql {sql:?}: {e}"),
    }
}

/// The test config for `kind` ("notify" / "logical") against `url`. The bus
/// URL is a placeholder: tests pass their own sinks.
pub fn config_text(kind: &str, url: &str, slot: &str) -> String {
    format!(
        r#"
        [source]
        kind = "{kind}"
        database_url = "{url}"
        slot = "{slot}"
        poll_interval_ms = 20
        heartbeat_ms = 500
        heartbeat_min_lag_bytes = 0

        [bus]
        kind = "redis"
        url = "redis://127.0.0.1:1"

        [http]
        listen = ""

        [retry]
        initial_ms = 20
        max_ms = 500

        [[rules]]
        table = "products"
        namespace = "products"
        keys = ["{{id}}"]
        tags = ["products", "category:{{category}}"]
        "#
    )
}

pub fn config(kind: &str, pg: &Postgres) -> Config {
    Config::parse(&config_text(kind, &pg.url(), "tiercache")).unwrap()
}

/// Applies the setup SQL of `config` to `pg`.
pub fn setup(pg: &Postgres, config: &Config) {
    psql(pg, &tiercache_sidecar::setup_sql(config).unwrap());
}

/// In-process sinks shared across sidecar restarts.
#[derive(Clone)]
pub struct Sinks2 {
    pub shared: Arc<InProcessSharedTier>,
    pub bus: InProcessBus,
}

impl Sinks2 {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(InProcessSharedTier::default()),
            bus: InProcessBus::new(),
        }
    }

    pub fn sinks(&self) -> Sinks {
        Sinks::new(
            Some(self.shared.clone() as Arc<dyn SharedTier>),
            Some(Arc::new(self.bus.clone()) as Arc<dyn Bus>),
            MessageCodec::unsigned(),
            RetryConfig {
                initial_ms: 20,
                max_ms: 500,
            },
        )
    }
}

/// Sidecar logs at debug level, captured per test and printed on failure.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "tiercache_sidecar=debug,tiercache_testkit=debug",
        ))
        .with_test_writer()
        .try_init();
}

/// A running sidecar task.
pub struct Running {
    pub sidecar: Sidecar,
    pub trigger: ShutdownTrigger,
    pub task: JoinHandle<Result<(), tiercache_sidecar::Error>>,
}

impl Running {
    pub fn start(config: Config, sinks: Sinks) -> Self {
        Self::spawn(Sidecar::new(config, sinks).unwrap())
    }

    /// A sidecar with the sinks `config` names (real servers).
    pub async fn from_config(config: Config) -> Self {
        Self::spawn(Sidecar::from_config(config).await.unwrap())
    }

    fn spawn(sidecar: Sidecar) -> Self {
        init_tracing();
        let (trigger, shutdown) = Shutdown::new();
        let s = sidecar.clone();
        let task = tokio::spawn(async move { s.run(shutdown).await });
        Running {
            sidecar,
            trigger,
            task,
        }
    }

    pub async fn connected(&self, n: u64) {
        assert!(
            self.sidecar
                .status()
                .wait_connected(n, Duration::from_secs(30))
                .await,
            "sidecar did not connect"
        );
    }

    pub async fn stop(self) {
        self.trigger.trigger();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("sidecar stops")
            .unwrap()
            .unwrap();
    }
}

/// Decoded invalidations received on a namespace.
/// The invalidations published on a namespace (origin heartbeats left out).
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Invalidation>,
    /// The farewells, apart.
    farewells: mpsc::UnboundedReceiver<Invalidation>,
    _task: JoinHandle<()>,
}

impl Inbox {
    pub async fn subscribe(bus: &dyn Bus, namespace: &str, codec: MessageCodec) -> Self {
        let mut stream = bus.subscribe(namespace).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (farewell_tx, farewells) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                if let BusEvent::Message(bytes) = ev {
                    match codec.decode(&bytes) {
                        // Origin heartbeats and farewells say the sidecar
                        // is alive, not what changed.
                        Ok(m) if m.signal() == OriginSignal::Farewell => {
                            let _ = farewell_tx.send(m);
                        }
                        Ok(m) if m.signal() == OriginSignal::Heartbeat => {}
                        Ok(m) => {
                            if tx.send(m).is_err() {
                                break;
                            }
                        }
                        Err(e) => panic!("undecodable message: {e}"),
                    }
                }
            }
        });
        Inbox {
            rx,
            farewells,
            _task: task,
        }
    }

    /// The next farewell, or None after `timeout`.
    pub async fn farewell(&mut self, timeout: Duration) -> Option<Invalidation> {
        tokio::time::timeout(timeout, self.farewells.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Invalidation> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for a message that `pred` accepts (skipping others).
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Invalidation) -> bool,
    ) -> Invalidation {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(m) if pred(&m) => return m,
                Some(_) => continue,
                None => panic!("no matching message within {timeout:?}"),
            }
        }
    }

    /// Every message received within `quiet` of the previous one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Invalidation> {
        let mut out = Vec::new();
        while let Some(m) = self.next(quiet).await {
            out.push(m);
        }
        out
    }
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

pub const WAIT: Duration = Duration::from_secs(20);
