//! A `nats-server`, core or with JetStream.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::binaries;
use crate::error::{Result, TestkitError};
use crate::port::free_port;
use crate::process::{Outcome, Proc, READY_TIMEOUT, START_ATTEMPTS, STOP_TIMEOUT};

const MARKER: &str = "Server is ready";

/// A `nats-server` on 127.0.0.1 and a free port, logging to `nats.log` in
/// its temp dir; with JetStream, the store dir is in the temp dir too and
/// survives [`NatsServer::restart`].
///
/// Dropping it kills the process (SIGKILL), waits for it and removes the
/// temp dir.
#[derive(Debug)]
pub struct NatsServer {
    // Field order matters: the process is killed before the dir is removed.
    proc: Proc,
    port: u16,
    jetstream: bool,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a core NATS server and waits until it is ready (the "Server is
    /// ready" log line and an `INFO` greeting on connect).
    pub fn start() -> Result<Self> {
        Self::launch(false)
    }

    /// Starts a NATS server with JetStream (`-js`, store dir in the temp dir)
    /// and waits until it is ready.
    pub fn start_jetstream() -> Result<Self> {
        Self::launch(true)
    }

    fn launch(jetstream: bool) -> Result<Self> {
        let binary = binaries::nats_server()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("tiercache-nats-")
                .tempdir()?;
            let port = free_port()?;
            let mut args: Vec<OsString> = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string().into(),
            ];
            if jetstream {
                args.push("-js".into());
                args.push("-sd".into());
                args.push(dir.path().join("jetstream").into_os_string());
            }
            let mut proc = Proc::new(
                format!("nats-server on 127.0.0.1:{port}"),
                &binary,
                args,
                dir.path(),
                dir.path().join("nats.log"),
            );
            match proc.start_and_wait(MARKER, &mut || greets(port), READY_TIMEOUT) {
                Outcome::Ready => {
                    return Ok(NatsServer {
                        proc,
                        port,
                        jetstream,
                        dir,
                    });
                }
                Outcome::Retry(e) => last_error = Some(e),
                Outcome::Failed(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            TestkitError::Command("nats-server: no start attempt made".to_owned())
        }))
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Whether JetStream is enabled.
    pub fn jetstream(&self) -> bool {
        self.jetstream
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

    /// Starts the server again on the same port with the same store dir
    /// (stopping it first if it still runs) and waits until it is ready.
    pub fn restart(&mut self) -> Result<()> {
        if self.proc.started() {
            self.stop();
        }
        let port = self.port;
        self.proc
            .restart_and_wait(MARKER, &mut || greets(port), READY_TIMEOUT)
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The server's log file (every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.proc.log_path().to_path_buf()
    }

    /// The server's temp dir (log, JetStream store under `jetstream/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Connects and reads the `INFO {...}` greeting.
fn greets(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ")
}
