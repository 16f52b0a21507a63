//! A throwaway Postgres cluster (initdb into a temp dir).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::binaries;
use crate::error::{Result, TestkitError};
use crate::port::free_port;
use crate::process::{Outcome, Proc, READY_TIMEOUT, START_ATTEMPTS, run_command};
use crate::tls::TlsCerts;

const MARKER: &str = "database system is ready to accept connections";
const PSQL_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A Postgres server: `initdb` into a temp dir (superuser `postgres`, trust
/// auth), `wal_level=logical`, `max_replication_slots=10`,
/// `max_wal_senders=10`, listening on 127.0.0.1 and a free port, its unix
/// socket in the temp dir. `fsync` is off (crash-safe against a killed
/// process, not against a power loss; fine for tests).
///
/// When the tests run as root, `initdb` and `postgres` run as the `postgres`
/// system user and the temp dir is handed to it.
///
/// Dropping it shuts Postgres down immediately (SIGQUIT), SIGKILLs the whole
/// process group as a backstop, and removes the temp dir.
#[derive(Debug)]
pub struct Postgres {
    // Field order matters: the process is killed before the dir is removed.
    proc: Proc,
    port: u16,
    psql: PathBuf,
    tls: bool,
    dir: TempDir,
}

impl Postgres {
    /// Runs `initdb`, starts `postgres` and waits until `select 1` works.
    pub fn start() -> Result<Self> {
        Self::launch(false)
    }

    /// As [`start`](Self::start), with `ssl = on` and certificates for
    /// 127.0.0.1/localhost generated into the temp dir (see
    /// [`tls`](Self::tls)), and TCP connections only over TLS (`hostssl`
    /// in `pg_hba.conf`; [`psql`](Self::psql) uses libpq's default
    /// `sslmode=prefer`).
    pub fn start_tls() -> Result<Self> {
        Self::launch(true)
    }

    fn launch(tls: bool) -> Result<Self> {
        let initdb = binaries::postgres("initdb")?;
        let postgres = binaries::postgres("postgres")?;
        let psql = binaries::postgres("psql")?;
        let user = unprivileged_user()?;
        let dir = tempfile::Builder::new().prefix("tiercache-pg-").tempdir()?;
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir)?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid))?;
        }

        let mut command = Command::new(&initdb);
        command
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .current_dir(dir.path())
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = user {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, gid);
        }
        let output = run_command(&mut command, Duration::from_secs(120))?;
        if !output.status.success() {
            return Err(TestkitError::Command(format!(
                "initdb failed ({}):\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }

        let mut conf = String::from("\n# tiercache-testkit\n");
        let _ = writeln!(conf, "listen_addresses = '127.0.0.1'");
        let _ = writeln!(conf, "unix_socket_directories = '{}'", socket_dir.display());
        for line in [
            "wal_level = logical",
            "max_replication_slots = 10",
            "max_wal_senders = 10",
            "fsync = off",
            // On: a commit is flushed (to the page cache, with fsync off)
            // before it returns, so logical decoding sees it at once. Off,
            // it waits for the WAL writer (200 ms, up to 3x that), and the
            // sidecar's measured lag would be the test server's, not its own.
            "synchronous_commit = on",
            "full_page_writes = off",
        ] {
            let _ = writeln!(conf, "{line}");
        }
        if tls {
            let tls_dir = dir.path().join("tls");
            std::fs::create_dir(&tls_dir)?;
            let certs = TlsCerts::generate_in(&tls_dir)?;
            if let Some((uid, gid)) = user {
                for path in [
                    tls_dir.clone(),
                    certs.ca_cert_path(),
                    certs.server_cert_path(),
                    certs.server_key_path(),
                    certs.client_cert_path(),
                    certs.client_key_path(),
                ] {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
                }
            }
            let _ = writeln!(conf, "ssl = on");
            let _ = writeln!(
                conf,
                "ssl_cert_file = '{}'",
                certs.server_cert_path().display()
            );
            let _ = writeln!(
                conf,
                "ssl_key_file = '{}'",
                certs.server_key_path().display()
            );
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 local replication all trust\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostssl replication all 127.0.0.1/32 trust\n",
            )?;
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?
            .write_all(conf.as_bytes())?;

        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let args: Vec<OsString> = vec![
                "-D".into(),
                data.clone().into_os_string(),
                "-p".into(),
                port.to_string().into(),
            ];
            let mut proc = Proc::new(
                format!("postgres on 127.0.0.1:{port}"),
                &postgres,
                args,
                dir.path(),
                dir.path().join("postgres.log"),
            )
            .run_as(user)
            .kill_group()
            .drop_signal("QUIT");
            match proc.start_and_wait(MARKER, &mut || select_one(&psql, port), READY_TIMEOUT) {
                Outcome::Ready => {
                    return Ok(Postgres {
                        proc,
                        port,
                        psql,
                        tls,
                        dir,
                    });
                }
                Outcome::Retry(e) => last_error = Some(e),
                Outcome::Failed(e) => return Err(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| TestkitError::Command("postgres: no start attempt made".to_owned())))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The TLS material of a server started with [`start_tls`](Self::start_tls).
    pub fn tls(&self) -> Option<TlsCerts> {
        self.tls.then(|| TlsCerts::at(&self.dir.path().join("tls")))
    }

    /// The CA certificate (PEM file) a client must trust to talk to a TLS
    /// server.
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.tls().map(|t| t.ca_cert_path())
    }

    /// Runs `psql -At -c SQL` against the `postgres` database as `postgres`
    /// (with `ON_ERROR_STOP`), returning stdout without its trailing newline;
    /// a failure's error carries psql's stderr.
    pub fn psql(&self, sql: &str) -> Result<String> {
        psql(&self.psql, self.port, sql)
    }

    /// Stops the server (SIGINT: fast shutdown, open sessions are ended) and
    /// waits for it to exit (SIGKILL after 15 s).
    pub fn stop(&mut self) {
        self.proc.terminate("INT", STOP_TIMEOUT);
    }

    /// Kills the postmaster and all its backends (SIGKILL to the process
    /// group) and waits: a crash; [`Postgres::restart`] then runs recovery.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same port and data dir (stopping it
    /// first if it still runs) and waits until `select 1` works.
    pub fn restart(&mut self) -> Result<()> {
        if self.proc.started() {
            self.stop();
        }
        let (psql, port) = (self.psql.clone(), self.port);
        self.proc
            .restart_and_wait(MARKER, &mut || select_one(&psql, port), READY_TIMEOUT)
    }

    /// Whether the postmaster is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The server's log file (every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.proc.log_path().to_path_buf()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The unix socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The temp dir (data dir, socket dir, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn psql(binary: &Path, port: u16, sql: &str) -> Result<String> {
    let mut command = Command::new(binary);
    command
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-d", "postgres", "-p"])
        .arg(port.to_string())
        .arg("-c")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", "5")
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS");
    let output = run_command(&mut command, PSQL_TIMEOUT)?;
    if !output.status.success() {
        return Err(TestkitError::Command(format!(
            "psql on port {port} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout.trim_end_matches(['\n', '\r']).to_owned())
}

fn select_one(binary: &Path, port: u16) -> bool {
    psql(binary, port, "select 1").is_ok_and(|out| out == "1")
}

/// `Some((uid, gid))` of the `postgres` user when running as root (Postgres
/// refuses to run as root), `None` otherwise.
fn unprivileged_user() -> Result<Option<(u32, u32)>> {
    if id(&["-u"])? != 0 {
        return Ok(None);
    }
    let uid = id(&["-u", "postgres"]);
    let gid = id(&["-g", "postgres"]);
    match (uid, gid) {
        (Ok(uid), Ok(gid)) => Ok(Some((uid, gid))),
        _ => Err(TestkitError::Command(
            "running as root, but there is no `postgres` user to run Postgres as \
             (install the Debian package `postgresql`)"
                .to_owned(),
        )),
    }
}

fn id(args: &[&str]) -> Result<u32> {
    let output = run_command(Command::new("id").args(args), Duration::from_secs(10))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(TestkitError::Command(format!(
            "id {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim_end()
        )));
    }
    text.trim()
        .parse::<u32>()
        .map_err(|_| TestkitError::Command(format!("id {args:?}: unexpected output {text:?}")))
}
