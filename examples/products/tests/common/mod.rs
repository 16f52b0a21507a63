//! The products stack for the tests beside this module: the example app,
//! twice, and the real `tiercache-sidecar` binary, over real Postgres,
//! Redis and NATS (JetStream) from tiercache-testkit, spoken to over HTTP.
//! Used by `products_e2e.rs` and `metrics_exported.rs`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tiercache_testkit::{NatsServer, Postgres, RedisServer, free_port};

pub const SEED: u32 = 2000;
pub const SCHEMA: &str = include_str!("../../schema.sql");

// ---------------------------------------------------------------------------
// Processes

/// A child process killed (SIGKILL) and reaped on drop; output in a log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); log:\n{}",
                self.name,
                tail(&self.log, 40)
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Builds the sidecar; returns the app's and the sidecar's executables.
pub fn build_binaries() -> (PathBuf, PathBuf) {
    let output = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "-p",
            "tiercache-sidecar",
            "--bin",
            "tiercache-sidecar",
            "--message-format=json-render-diagnostics",
        ])
        // `cargo test --release` spawns release binaries.
        .args((!cfg!(debug_assertions)).then_some("--release"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(output.status.success(), "cargo build failed");
    let mut sidecar = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        if msg["target"]["name"] == "tiercache-sidecar" {
            sidecar = Some(PathBuf::from(exe));
        }
    }
    (
        PathBuf::from(env!("CARGO_BIN_EXE_products")),
        sidecar.expect("cargo reported no tiercache-sidecar executable"),
    )
}

// ---------------------------------------------------------------------------
// HTTP

#[derive(Clone)]
pub struct Http {
    pub client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub x_cache: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// A response header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

impl Http {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(256)
                .build(connector),
        }
    }

    pub async fn send(&self, method: &str, url: &str, body: Option<&str>) -> Result<Resp, String> {
        self.send_with(method, url, body, &[]).await
    }

    pub async fn send_with(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Resp, String> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{method} {url}: {e}"))?;
            let status = resp.status().as_u16();
            let x_cache = resp
                .headers()
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{method} {url}: body: {e}"))?
                .to_bytes();
            Ok(Resp {
                status,
                x_cache,
                headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| format!("{method} {url}: timed out"))?
    }

    pub async fn get(&self, url: &str) -> Result<Resp, String> {
        self.send("GET", url, None).await
    }

    /// `products_db_reads_total{kind=..}` of one instance.
    pub async fn db_reads(&self, base: &str, kind: &str) -> u64 {
        let text = self.get(&format!("{base}/metrics")).await.expect("metrics");
        let text = String::from_utf8_lossy(&text.body).into_owned();
        let prefix = format!("products_db_reads_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
    }
}

// ---------------------------------------------------------------------------
// The stack

pub struct Stack {
    // Children first: they die before the servers.
    pub apps: Vec<Proc>,
    pub sidecar: Proc,
    pub sidecar_url: String,
    pub urls: Vec<String>,
    pub pg: Postgres,
    pub redis: Arc<Mutex<RedisServer>>,
    pub _nats: NatsServer,
    pub _logs: Logs,
}

/// The processes' log directory: deleted after a passing run, kept (and its
/// logs' tails printed) after a failing one.
pub struct Logs(pub Option<tempfile::TempDir>);

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(dir) = self.0.take() else { return };
        let path = dir.keep();
        eprintln!("stack test failed; logs kept in {}", path.display());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            eprintln!("---- {} (last 80 lines)\n{}", f.display(), tail(&f, 80));
        }
    }
}

pub async fn wait_healthy(http: &Http, proc: &mut Proc, url: &str, need_bloom: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        proc.assert_alive();
        if let Ok(r) = http.get(&format!("{url}/healthz")).await
            && r.status == 200
        {
            if !need_bloom {
                return;
            }
            let j = r.json();
            if j["bloom_ready"] == true && j["bus_synced"] == true {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} not healthy after 60 s; log:\n{}",
            proc.name,
            tail(&proc.log, 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn start_stack(http: &Http, rt: &tokio::runtime::Runtime) -> Stack {
    let (app_bin, sidecar_bin) = build_binaries();
    let pg = Postgres::start().expect("postgres");
    let redis = RedisServer::start().expect("redis");
    let nats = NatsServer::start_jetstream().expect("nats");
    let logs = tempfile::Builder::new()
        .prefix("products-stack-")
        .tempdir()
        .expect("tempdir");
    // The sidecar checks its rule against the table: create it first.
    pg.psql(SCHEMA).expect("schema");

    let seed = Command::new(&app_bin)
        .arg("--seed")
        .arg(SEED.to_string())
        .env("DATABASE_URL", pg.url())
        .output()
        .expect("run products --seed");
    assert!(
        seed.status.success(),
        "seed failed: {}",
        String::from_utf8_lossy(&seed.stderr)
    );

    let sidecar_port = free_port().expect("port");
    let mut cmd = Command::new(&sidecar_bin);
    cmd.args(["run", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("sidecar.toml"))
        .env("TIERCACHE_DATABASE_URL", pg.url())
        .env("TIERCACHE_REDIS_URL", redis.url())
        .env("TIERCACHE_NATS_URL", nats.url())
        .env("TIERCACHE_HTTP_LISTEN", format!("127.0.0.1:{sidecar_port}"))
        .env("RUST_LOG", "info,tiercache_sidecar=debug");
    let mut sidecar = Proc::spawn("sidecar", cmd, logs.path().join("sidecar.log"));
    rt.block_on(wait_healthy(
        http,
        &mut sidecar,
        &format!("http://127.0.0.1:{sidecar_port}"),
        false,
    ));

    let mut apps = Vec::new();
    let mut urls = Vec::new();
    for i in 1..=2 {
        let port = free_port().expect("port");
        let mut cmd = Command::new(&app_bin);
        cmd.env("DATABASE_URL", pg.url())
            .env("REDIS_URL", redis.url())
            .env("NATS_URL", nats.url())
            .env("NATS_STREAM", "TIERCACHE")
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,tiercache_core::cache::coherence=debug");
        apps.push(Proc::spawn(
            &format!("app{i}"),
            cmd,
            logs.path().join(format!("app{i}.log")),
        ));
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    for (p, u) in apps.iter_mut().zip(&urls) {
        rt.block_on(wait_healthy(http, p, u, true));
    }
    Stack {
        apps,
        sidecar,
        sidecar_url: format!("http://127.0.0.1:{sidecar_port}"),
        urls,
        pg,
        redis: Arc::new(Mutex::new(redis)),
        _nats: nats,
        _logs: Logs(Some(logs)),
    }
}
