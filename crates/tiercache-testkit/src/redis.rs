//! A standalone `redis-server` (also the building block of the Sentinel set
//! and the cluster).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::binaries;
use crate::error::Result;
use crate::port::free_port;
use crate::process::{Outcome, Proc, READY_TIMEOUT, START_ATTEMPTS, STOP_TIMEOUT};
use crate::resp::ping_ok;
use crate::tls::TlsCerts;

/// What kind of redis-server process to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A data node (standalone, replica or cluster node).
    Server,
    /// `redis-server sentinel.conf --sentinel`.
    Sentinel,
}

/// How to configure a redis-server; the port (and cluster bus port) are chosen
/// per start attempt.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) mode: Mode,
    /// Extra lines for the config file.
    pub(crate) conf: Vec<String>,
    /// Extra command-line arguments.
    pub(crate) args: Vec<String>,
    /// Allocate a free port for `cluster-port` as well.
    pub(crate) cluster_bus: bool,
    /// Serve TLS only (`tls-port`, `port 0`) with certificates generated
    /// into the temp dir.
    pub(crate) tls: bool,
}

impl Spec {
    pub(crate) fn server() -> Self {
        Spec {
            mode: Mode::Server,
            conf: Vec::new(),
            args: Vec::new(),
            cluster_bus: false,
            tls: false,
        }
    }
}

/// A `redis-server` on `127.0.0.1` and a free port, in its own temp dir
/// (config file, data and `redis.log`), with persistence off
/// (`save ""`, `appendonly no`).
///
/// Dropping it kills the process (SIGKILL), waits for it and removes the
/// temp dir.
#[derive(Debug)]
pub struct RedisServer {
    // Field order matters: the process is killed before the dir is removed.
    proc: Proc,
    port: u16,
    bus_port: Option<u16>,
    mode: Mode,
    // A flag, not the certs: the files are in `dir`, and the struct stays
    // small for enums that hold one.
    tls: bool,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a standalone redis-server and waits until it answers `PING`.
    pub fn start() -> Result<Self> {
        Self::start_with_args(&[])
    }

    /// Starts a standalone redis-server with extra command-line arguments,
    /// e.g. `&["--requirepass", "secret"]`, and waits until it answers `PING`
    /// (`-NOAUTH` counts as an answer).
    pub fn start_with_args(extra: &[&str]) -> Result<Self> {
        let mut spec = Spec::server();
        spec.args = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::launch(spec)
    }

    /// Starts a standalone redis-server that speaks TLS only: `tls-port` on
    /// a free port, `port 0`, with a CA and a server certificate for
    /// 127.0.0.1/localhost generated into its temp dir (see
    /// [`tls`](Self::tls)); clients need no certificate of their own
    /// (`tls-auth-clients no`). [`url`](Self::url) is `rediss://...`.
    pub fn start_tls() -> Result<Self> {
        Self::start_tls_with_args(&[])
    }

    /// [`start_tls`](Self::start_tls) with extra command-line arguments, e.g.
    /// `&["--requirepass", "secret"]`.
    pub fn start_tls_with_args(extra: &[&str]) -> Result<Self> {
        let mut spec = Spec::server();
        spec.tls = true;
        spec.args = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::launch(spec)
    }

    pub(crate) fn launch(spec: Spec) -> Result<Self> {
        let binary = binaries::redis_server()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("tiercache-redis-")
                .tempdir()?;
            let port = free_port()?;
            let bus_port = if spec.cluster_bus {
                Some(free_port()?)
            } else {
                None
            };
            let tls = if spec.tls {
                Some(TlsCerts::generate_in(dir.path())?)
            } else {
                None
            };
            let conf_path = write_config(&spec, tls.as_ref(), dir.path(), port, bus_port)?;
            let mut args: Vec<OsString> = vec![conf_path.into_os_string()];
            if spec.mode == Mode::Sentinel {
                args.push("--sentinel".into());
            }
            args.extend(spec.args.iter().map(OsString::from));
            let kind = match spec.mode {
                Mode::Server => "redis-server",
                Mode::Sentinel => "redis-sentinel",
            };
            let mut proc = Proc::new(
                format!("{kind} on 127.0.0.1:{port}"),
                &binary,
                args,
                dir.path(),
                dir.path().join("redis.log"),
            );
            let tls_on = tls.is_some();
            match proc.start_and_wait(
                marker(spec.mode),
                &mut || probe(port, tls_on),
                READY_TIMEOUT,
            ) {
                Outcome::Ready => {
                    return Ok(RedisServer {
                        proc,
                        port,
                        bus_port,
                        mode: spec.mode,
                        tls: tls_on,
                        dir,
                    });
                }
                Outcome::Retry(e) => last_error = Some(e),
                Outcome::Failed(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            crate::error::TestkitError::Command("redis-server: no start attempt made".to_owned())
        }))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster bus port (`cluster-port`), for cluster nodes.
    pub fn cluster_bus_port(&self) -> Option<u16> {
        self.bus_port
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://127.0.0.1:PORT` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The TLS material of a server started with [`start_tls`](Self::start_tls).
    pub fn tls(&self) -> Option<TlsCerts> {
        self.tls.then(|| TlsCerts::at(self.dir.path()))
    }

    /// The CA certificate (PEM file) a client must trust to talk to a TLS
    /// server.
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.tls().map(|t| t.ca_cert_path())
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit
    /// (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        self.proc.terminate("TERM", STOP_TIMEOUT);
    }

    /// Pauses the server (SIGSTOP): alive, its sockets open, answering
    /// nothing, as a hung server or a partition looks to its clients.
    pub fn pause(&mut self) {
        self.proc.pause();
    }

    /// Resumes a [`pause`](Self::pause)d server (SIGCONT).
    pub fn resume(&mut self) {
        self.proc.resume();
    }

    /// Kills the server (SIGKILL) and waits for it: a crash.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same port with the same dir and
    /// config (stopping it first if it still runs), retrying while the port
    /// is briefly taken, and waits until it answers `PING`.
    pub fn restart(&mut self) -> Result<()> {
        if self.proc.started() {
            self.stop();
        }
        let port = self.port;
        let tls = self.tls;
        self.proc
            .restart_and_wait(marker(self.mode), &mut || probe(port, tls), READY_TIMEOUT)
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The OS process id, while started.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// The server's log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.proc.log_path().to_path_buf()
    }

    /// The server's temp dir (config file, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether we started it and did not stop or kill it since.
    pub(crate) fn started(&self) -> bool {
        self.proc.started()
    }
}

/// The log line a ready server prints.
fn marker(mode: Mode) -> &'static str {
    match mode {
        Mode::Server => "Ready to accept connections",
        Mode::Sentinel => "Sentinel ID is",
    }
}

/// Readiness: `PING` answered in plain text, or (TLS) the port accepts
/// connections (the log marker tells it is ours).
fn probe(port: u16, tls: bool) -> bool {
    if tls {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).is_ok()
    } else {
        ping_ok(port)
    }
}

fn write_config(
    spec: &Spec,
    tls: Option<&TlsCerts>,
    dir: &Path,
    port: u16,
    bus_port: Option<u16>,
) -> Result<PathBuf> {
    let mut lines = match tls {
        None => vec![format!("port {port}")],
        Some(certs) => vec![
            "port 0".to_owned(),
            format!("tls-port {port}"),
            format!("tls-cert-file \"{}\"", certs.server_cert_path().display()),
            format!("tls-key-file \"{}\"", certs.server_key_path().display()),
            format!("tls-ca-cert-file \"{}\"", certs.ca_cert_path().display()),
            "tls-auth-clients no".to_owned(),
        ],
    };
    lines.extend([
        "bind 127.0.0.1".to_owned(),
        format!("dir \"{}\"", dir.display()),
        "daemonize no".to_owned(),
        "logfile \"\"".to_owned(),
    ]);
    let name = match spec.mode {
        Mode::Server => {
            lines.push("save \"\"".to_owned());
            lines.push("appendonly no".to_owned());
            "redis.conf"
        }
        Mode::Sentinel => "sentinel.conf",
    };
    if let Some(bus_port) = bus_port {
        lines.push(format!("cluster-port {bus_port}"));
    }
    lines.extend(spec.conf.iter().cloned());
    let path = dir.join(name);
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&path, text)?;
    Ok(path)
}
