//! Finding server binaries.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, TestkitError};

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Looks `name` up in `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Looks `name` up in `PATH`, or fails with [`TestkitError::MissingBinary`].
pub(crate) fn require(name: &str, debian_package: &str) -> Result<PathBuf> {
    find_in_path(name).ok_or_else(|| TestkitError::missing(name, debian_package))
}

pub(crate) fn redis_server() -> Result<PathBuf> {
    require("redis-server", "redis-server")
}

pub(crate) fn redis_cli() -> Result<PathBuf> {
    require("redis-cli", "redis-tools")
}

pub(crate) fn nats_server() -> Result<PathBuf> {
    require("nats-server", "nats-server")
}

/// Directories that may hold the Postgres server binaries, best first: the
/// directory of the `initdb` found in `PATH` (symlinks resolved, so that
/// `initdb`, `postgres` and `psql` come from one version), then
/// `/usr/lib/postgresql/*/bin`, newest version first.
fn postgres_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(initdb) = find_in_path("initdb")
        && let Ok(real) = std::fs::canonicalize(initdb)
        && let Some(parent) = real.parent()
    {
        dirs.push(parent.to_path_buf());
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    dirs.extend(versioned.into_iter().map(|(_, dir)| dir));
    dirs
}

/// Finds a Postgres binary (`initdb`, `postgres`, `psql`) in the directory of
/// `initdb`, in `/usr/lib/postgresql/*/bin`, then in `PATH`.
pub(crate) fn postgres(name: &str) -> Result<PathBuf> {
    let package = if name == "psql" {
        "postgresql-client"
    } else {
        "postgresql"
    };
    postgres_dirs()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .or_else(|| find_in_path(name))
        .ok_or_else(|| TestkitError::missing(name, package))
}
