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
use crate::tls::TlsCerts;

pub(crate) const MARKER: &str = "Server is ready";

/// How clients of a [`NatsServer`] must authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// `authorization { token: ... }`
    Token(String),
    /// `authorization { user: ..., password: ... }`
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .finish_non_exhaustive(),
        }
    }
}

/// How to start a [`NatsServer`]: JetStream, TLS, authentication.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct NatsOptions {
    pub(crate) jetstream: bool,
    pub(crate) tls: bool,
    pub(crate) auth: Option<NatsAuth>,
}

impl NatsOptions {
    /// A core server, plain text, no authentication.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enables JetStream (store dir in the temp dir).
    pub fn jetstream(mut self, on: bool) -> Self {
        self.jetstream = on;
        self
    }

    /// Requires TLS (`tls { cert_file, key_file }`), with a CA and a server
    /// certificate generated into the temp dir.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Requires clients to authenticate.
    pub fn auth(mut self, auth: NatsAuth) -> Self {
        self.auth = Some(auth);
        self
    }
}

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
    // A flag, not the certs: the files are in `dir`, and the struct stays
    // small for enums that hold one.
    tls: bool,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a core NATS server and waits until it is ready (the "Server is
    /// ready" log line and an `INFO` greeting on connect).
    pub fn start() -> Result<Self> {
        Self::start_with(NatsOptions::new())
    }

    /// Starts a NATS server with JetStream (`-js`, store dir in the temp dir)
    /// and waits until it is ready.
    pub fn start_jetstream() -> Result<Self> {
        Self::start_with(NatsOptions::new().jetstream(true))
    }

    /// Starts a core NATS server that requires TLS, with a CA and a server
    /// certificate for 127.0.0.1/localhost generated into its temp dir (see
    /// [`tls`](Self::tls)). [`url`](Self::url) is `tls://...`.
    pub fn start_tls() -> Result<Self> {
        Self::start_with(NatsOptions::new().tls(true))
    }

    /// Starts a server as `options` say and waits until it is ready.
    pub fn start_with(options: NatsOptions) -> Result<Self> {
        let jetstream = options.jetstream;
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
            let tls = if options.tls {
                Some(TlsCerts::generate_in(dir.path())?)
            } else {
                None
            };
            if tls.is_some() || options.auth.is_some() {
                let conf = write_config(dir.path(), tls.as_ref(), options.auth.as_ref())?;
                args.push("-c".into());
                args.push(conf.into_os_string());
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
                        tls: tls.is_some(),
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

    /// `nats://127.0.0.1:PORT`, or `tls://127.0.0.1:PORT` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The TLS material of a server started with TLS.
    pub fn tls(&self) -> Option<TlsCerts> {
        self.tls.then(|| TlsCerts::at(self.dir.path()))
    }

    /// The CA certificate (PEM file) a client must trust to talk to a TLS
    /// server.
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.tls().map(|t| t.ca_cert_path())
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

/// A config file with the TLS and authorization blocks (the listen address
/// and port stay on the command line, so a restart keeps them).
pub(crate) fn write_config(
    dir: &Path,
    tls: Option<&TlsCerts>,
    auth: Option<&NatsAuth>,
) -> Result<PathBuf> {
    let mut text = String::new();
    if let Some(certs) = tls {
        text.push_str(&format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  timeout: 5\n}}\n",
            quote(&certs.server_cert_path()),
            quote(&certs.server_key_path()),
        ));
    }
    match auth {
        None => {}
        Some(NatsAuth::Token(token)) => {
            text.push_str(&format!(
                "authorization {{\n  token: {}\n}}\n",
                json_string(token)
            ));
        }
        Some(NatsAuth::UserPassword { user, password }) => {
            text.push_str(&format!(
                "authorization {{\n  user: {}\n  password: {}\n}}\n",
                json_string(user),
                json_string(password)
            ));
        }
    }
    let path = dir.join("nats.conf");
    std::fs::write(&path, text)?;
    Ok(path)
}

pub(crate) fn quote(path: &Path) -> String {
    json_string(&path.display().to_string())
}

/// A double-quoted string for the NATS config format.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Connects and reads the `INFO {...}` greeting.
pub(crate) fn greets(port: u16) -> bool {
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
