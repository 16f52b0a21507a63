//! A server child process with a log file, readiness polling and signals.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Result, TestkitError};

/// How long a server gets to become ready.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a graceful stop may take before the process is killed.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a first start is retried with new ports when the port was taken.
pub(crate) const START_ATTEMPTS: usize = 8;
/// How many log lines a [`TestkitError::NotReady`] carries.
const LOG_TAIL_LINES: usize = 40;
const POLL: Duration = Duration::from_millis(50);

/// Log fragments (lower case) that mean "try again": the port (or a lock)
/// is still held by someone else.
const RETRYABLE: &[&str] = &[
    "address already in use",
    "pre-existing shared memory block",
    "lock file",
];

/// How a start attempt ended.
pub(crate) enum Outcome {
    /// The server is up.
    Ready,
    /// The server exited because its port (or a lock) was taken; the error
    /// describes it should no retry be possible.
    Retry(TestkitError),
    /// Anything else.
    Failed(TestkitError),
}

/// A server process: how to (re)start it, where it logs, and the running child.
#[derive(Debug)]
pub(crate) struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    cwd: PathBuf,
    log_path: PathBuf,
    user: Option<(u32, u32)>,
    kill_group: bool,
    drop_signal: Option<&'static str>,
    child: Option<Child>,
    log_offset: u64,
}

impl Proc {
    pub(crate) fn new(
        name: String,
        program: &Path,
        args: Vec<OsString>,
        cwd: &Path,
        log_path: PathBuf,
    ) -> Self {
        Proc {
            name,
            program: program.to_path_buf(),
            args,
            cwd: cwd.to_path_buf(),
            log_path,
            user: None,
            kill_group: false,
            drop_signal: None,
            child: None,
            log_offset: 0,
        }
    }

    /// Runs the process as this uid/gid (Postgres refuses to run as root).
    pub(crate) fn run_as(mut self, user: Option<(u32, u32)>) -> Self {
        self.user = user;
        self
    }

    /// Kills the whole process group, not only the direct child (Postgres
    /// backends are children of the postmaster).
    pub(crate) fn kill_group(mut self) -> Self {
        self.kill_group = true;
        self
    }

    /// On drop, first send this signal and wait briefly, then SIGKILL.
    pub(crate) fn drop_signal(mut self, signal: &'static str) -> Self {
        self.drop_signal = Some(signal);
        self
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether a child was started and not stopped/killed by us (no syscall).
    pub(crate) fn started(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        self.log_offset = log.metadata()?.len();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().map_err(|e| {
            TestkitError::Io(std::io::Error::new(
                e.kind(),
                format!("spawning {}: {e}", self.program.display()),
            ))
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the child is alive (reaps it if it exited).
    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// What the process logged since it was last spawned.
    pub(crate) fn log_since_start(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log_path)
            && file.seek(SeekFrom::Start(self.log_offset)).is_ok()
        {
            let mut bytes = Vec::new();
            if file.read_to_end(&mut bytes).is_ok() {
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        text
    }

    /// A [`TestkitError::NotReady`] for this process with the tail of its log.
    pub(crate) fn not_ready(&self, reason: &str) -> TestkitError {
        TestkitError::NotReady {
            server: format!("{} ({reason})", self.name),
            log: log_tail(&self.log_path),
        }
    }

    /// Spawns the process and waits until `marker` shows up in its log (since
    /// this spawn) and `probe` succeeds.
    pub(crate) fn start_and_wait(
        &mut self,
        marker: &str,
        probe: &mut dyn FnMut() -> bool,
        timeout: Duration,
    ) -> Outcome {
        if let Err(e) = self.spawn() {
            return Outcome::Failed(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown status".to_owned());
                let logged = self.log_since_start().to_ascii_lowercase();
                self.kill();
                let error = self.not_ready(&format!("exited while starting: {status}"));
                return if RETRYABLE.iter().any(|pattern| logged.contains(pattern)) {
                    Outcome::Retry(error)
                } else {
                    Outcome::Failed(error)
                };
            }
            if self.log_since_start().contains(marker) && probe() {
                return Outcome::Ready;
            }
            if Instant::now() >= deadline {
                self.kill();
                return Outcome::Failed(self.not_ready(&format!("not ready after {timeout:?}")));
            }
            thread::sleep(POLL);
        }
    }

    /// Restarts on the same arguments (same port), retrying while the port is
    /// still taken, until `timeout`.
    pub(crate) fn restart_and_wait(
        &mut self,
        marker: &str,
        probe: &mut dyn FnMut() -> bool,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.start_and_wait(marker, probe, left) {
                Outcome::Ready => return Ok(()),
                Outcome::Retry(e) => {
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    thread::sleep(Duration::from_millis(200));
                }
                Outcome::Failed(e) => return Err(e),
            }
        }
    }

    /// Sends `signal` (e.g. `TERM`) and waits up to `timeout` for the exit;
    /// kills the process if it does not exit in time.
    pub(crate) fn terminate(&mut self, signal: &str, timeout: Duration) {
        if let Some(pid) = self.pid()
            && self.is_running()
        {
            send_signal(signal, &pid.to_string());
            let deadline = Instant::now() + timeout;
            while self.is_running() && Instant::now() < deadline {
                thread::sleep(POLL);
            }
        }
        self.kill();
    }

    /// SIGSTOP: the process stays alive with its sockets open, but answers
    /// nothing (a hung server, or a partition, as its clients see it).
    /// Resumed by [`resume`](Self::resume), or killed as usual on drop.
    pub(crate) fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            send_signal("STOP", &pid.to_string());
        }
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub(crate) fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            send_signal("CONT", &pid.to_string());
        }
    }

    /// SIGKILL (the whole process group if so configured) and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.kill_group {
                send_signal("KILL", &format!("-{}", child.id()));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A paused process ignores SIGTERM until resumed.
        self.resume();
        match self.drop_signal {
            Some(signal) => self.terminate(signal, Duration::from_secs(3)),
            None => self.kill(),
        }
    }
}

/// `kill -s SIGNAL -- TARGET` (a negative target is a process group).
fn send_signal(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last lines of a log file.
pub(crate) fn log_tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

/// Runs a helper command to completion with a timeout, capturing its output.
pub(crate) fn run_command(command: &mut Command, timeout: Duration) -> Result<Output> {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            TestkitError::Io(std::io::Error::new(
                e.kind(),
                format!("spawning {description}: {e}"),
            ))
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out_reader = read_all(stdout.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err_reader = read_all(stderr.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TestkitError::Command(format!(
                "{description} timed out after {timeout:?}"
            )));
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}
