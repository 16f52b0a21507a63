//! [`CacheConfig`]: every value setting of [`CacheBuilder`] as data, loaded
//! from a TOML file and environment variables (feature `config`), so that
//! an operator tunes TTLs, jitter, bounds and the staleness bound without a
//! rebuild.
//!
//! Durations are written as humantime strings (`"500ms"`, `"5m"`,
//! `"1h 30m"`); sizes in bytes. A setting left out keeps the builder's
//! default. Unknown settings are refused, and every error names the setting
//! (and the file or the environment variable it came from).
//!
//! ```toml
//! ttl = "10m"
//! ttl_jitter = 0.2
//! grace = "1h"
//! local_capacity = 268435456
//! staleness_bound = "750ms"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CacheBuilder;

/// The value settings of a [`CacheBuilder`], as a file or the environment
/// gives them (see the [module docs](self)). `None` keeps the default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// [`CacheBuilder::local_capacity`], in bytes.
    pub local_capacity: Option<u64>,
    /// [`CacheBuilder::local_ttl`].
    #[serde(default, with = "humantime_serde")]
    pub local_ttl: Option<Duration>,
    /// [`CacheBuilder::ttl`].
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// [`CacheBuilder::ttl_jitter`].
    pub ttl_jitter: Option<f64>,
    /// [`CacheBuilder::negative_ttl`].
    #[serde(default, with = "humantime_serde")]
    pub negative_ttl: Option<Duration>,
    /// [`CacheBuilder::negative_jitter`].
    pub negative_jitter: Option<f64>,
    /// [`CacheBuilder::soft_ttl`] (refresh-ahead).
    #[serde(default, with = "humantime_serde")]
    pub soft_ttl: Option<Duration>,
    /// [`CacheBuilder::grace`].
    #[serde(default, with = "humantime_serde")]
    pub grace: Option<Duration>,
    /// [`CacheBuilder::max_key_len`].
    pub max_key_len: Option<usize>,
    /// [`CacheBuilder::max_value_size`], in bytes.
    pub max_value_size: Option<usize>,
    /// [`CacheBuilder::compress_at`], in bytes.
    pub compress_at: Option<usize>,
    /// [`CacheBuilder::batch_shared_reads`].
    pub batch_shared_reads: Option<bool>,
    /// `false`: [`CacheBuilder::no_leases`].
    pub leases: Option<bool>,
    /// [`CacheBuilder::lease_ttl`].
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
    /// [`CacheBuilder::lease_wait`].
    #[serde(default, with = "humantime_serde")]
    pub lease_wait: Option<Duration>,
    /// [`CacheBuilder::soft_timeout`].
    #[serde(default, with = "humantime_serde")]
    pub soft_timeout: Option<Duration>,
    /// [`CacheBuilder::hard_timeout`].
    #[serde(default, with = "humantime_serde")]
    pub hard_timeout: Option<Duration>,
    /// [`CacheBuilder::staleness_bound`].
    #[serde(default, with = "humantime_serde")]
    pub staleness_bound: Option<Duration>,
    /// [`CacheBuilder::unsynced_local_ttl`].
    #[serde(default, with = "humantime_serde")]
    pub unsynced_local_ttl: Option<Duration>,
    /// [`CacheBuilder::bus_liveness`].
    #[serde(default, with = "humantime_serde")]
    pub bus_liveness: Option<Duration>,
    /// [`CacheBuilder::signing_key`] (its bytes, as text).
    pub signing_key: Option<String>,
}

/// Every setting's name, as the file and the environment spell it.
pub const SETTINGS: [&str; 21] = [
    "local_capacity",
    "local_ttl",
    "ttl",
    "ttl_jitter",
    "negative_ttl",
    "negative_jitter",
    "soft_ttl",
    "grace",
    "max_key_len",
    "max_value_size",
    "compress_at",
    "batch_shared_reads",
    "leases",
    "lease_ttl",
    "lease_wait",
    "soft_timeout",
    "hard_timeout",
    "staleness_bound",
    "unsynced_local_ttl",
    "bus_liveness",
    "signing_key",
];

/// Why a [`CacheConfig`] could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read cache config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A setting is unknown or has a value of the wrong kind; `origin` is
    /// the file or the environment variable, and `message` names the
    /// setting.
    #[error("invalid cache config in {origin}: {message}")]
    Invalid {
        /// The file, or the environment variable.
        origin: String,
        /// What is wrong, naming the setting.
        message: String,
    },
}

impl CacheConfig {
    /// Parses TOML text (`origin` names it in errors: a path, say).
    ///
    /// # Errors
    ///
    /// [`ConfigFileError::Invalid`], naming the setting.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigFileError> {
        toml::from_str(text).map_err(|e| ConfigFileError::Invalid {
            origin: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Parses the table `section` of TOML text (a file that configures
    /// several caches gives each a table); a missing table is all defaults.
    ///
    /// # Errors
    ///
    /// [`ConfigFileError::Invalid`], naming the setting (or the section).
    pub fn from_toml_section(
        text: &str,
        origin: &str,
        section: &str,
    ) -> Result<Self, ConfigFileError> {
        let invalid = |message: String| ConfigFileError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let mut doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        match doc.remove(section) {
            None => Ok(Self::default()),
            // Parsed again as text: a table converted directly would not
            // name the setting in its errors.
            Some(toml::Value::Table(t)) => toml::to_string(&t)
                .map_err(|e| invalid(format!("[{section}]: {e}")))
                .and_then(|text| {
                    toml::from_str(&text)
                        .map_err(|e: toml::de::Error| invalid(format!("[{section}]: {e}")))
                }),
            Some(_) => Err(invalid(format!("`{section}` is not a table"))),
        }
    }

    /// Reads and parses a TOML file: the whole file, or its table
    /// `section`.
    ///
    /// # Errors
    ///
    /// [`ConfigFileError::Read`], or [`ConfigFileError::Invalid`] naming the
    /// setting.
    pub fn from_file(
        path: impl AsRef<Path>,
        section: Option<&str>,
    ) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let origin = path.display().to_string();
        match section {
            Some(s) => Self::from_toml_section(&text, &origin, s),
            None => Self::from_toml(&text, &origin),
        }
    }

    /// The settings found in environment variables named `prefix` followed
    /// by the setting in capitals (`TIERCACHE_TTL=5m` for prefix
    /// `TIERCACHE_`). A value is read as TOML (`0.2`, `true`, `1048576`),
    /// or else as a string (`5m`).
    ///
    /// # Errors
    ///
    /// [`ConfigFileError::Invalid`] naming the variable.
    pub fn from_env(prefix: &str) -> Result<Self, ConfigFileError> {
        Self::from_vars(prefix, |name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    fn from_vars(
        prefix: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigFileError> {
        let mut out = CacheConfig::default();
        for setting in SETTINGS {
            let name = format!("{prefix}{}", setting.to_ascii_uppercase());
            let Some(raw) = var(&name) else { continue };
            let mut table = toml::Table::new();
            let value = format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            table.insert(setting.to_owned(), value);
            let one: CacheConfig =
                table
                    .try_into()
                    .map_err(|e: toml::de::Error| ConfigFileError::Invalid {
                        origin: name.clone(),
                        message: format!("{setting}: {}", e.message()),
                    })?;
            out = out.or(one);
        }
        Ok(out)
    }

    /// The file at `path` (when given; its table `section` when given),
    /// then the environment variables with `env_prefix` over it.
    ///
    /// # Errors
    ///
    /// As [`from_file`](Self::from_file) and [`from_env`](Self::from_env).
    pub fn load(
        path: Option<&Path>,
        section: Option<&str>,
        env_prefix: &str,
    ) -> Result<Self, ConfigFileError> {
        let file = match path {
            Some(p) => Self::from_file(p, section)?,
            None => Self::default(),
        };
        Ok(Self::from_env(env_prefix)?.or(file))
    }

    /// These settings, with `other`'s where these have none.
    pub fn or(self, other: CacheConfig) -> CacheConfig {
        CacheConfig {
            local_capacity: self.local_capacity.or(other.local_capacity),
            local_ttl: self.local_ttl.or(other.local_ttl),
            ttl: self.ttl.or(other.ttl),
            ttl_jitter: self.ttl_jitter.or(other.ttl_jitter),
            negative_ttl: self.negative_ttl.or(other.negative_ttl),
            negative_jitter: self.negative_jitter.or(other.negative_jitter),
            soft_ttl: self.soft_ttl.or(other.soft_ttl),
            grace: self.grace.or(other.grace),
            max_key_len: self.max_key_len.or(other.max_key_len),
            max_value_size: self.max_value_size.or(other.max_value_size),
            compress_at: self.compress_at.or(other.compress_at),
            batch_shared_reads: self.batch_shared_reads.or(other.batch_shared_reads),
            leases: self.leases.or(other.leases),
            lease_ttl: self.lease_ttl.or(other.lease_ttl),
            lease_wait: self.lease_wait.or(other.lease_wait),
            soft_timeout: self.soft_timeout.or(other.soft_timeout),
            hard_timeout: self.hard_timeout.or(other.hard_timeout),
            staleness_bound: self.staleness_bound.or(other.staleness_bound),
            unsynced_local_ttl: self.unsynced_local_ttl.or(other.unsynced_local_ttl),
            bus_liveness: self.bus_liveness.or(other.bus_liveness),
            signing_key: self.signing_key.or(other.signing_key),
        }
    }
}

impl<K, V> CacheBuilder<K, V> {
    /// Applies every setting `config` gives (the others keep their values).
    /// Values are checked by [`build`](Self::build), whose errors name the
    /// setting.
    pub fn config(self, config: &CacheConfig) -> Self {
        let c = config.clone();
        let mut b = self;
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = c.$field {
                    b = b.$field(v);
                }
            )*};
        }
        set!(
            local_capacity,
            local_ttl,
            ttl,
            ttl_jitter,
            negative_ttl,
            negative_jitter,
            soft_ttl,
            grace,
            max_key_len,
            max_value_size,
            compress_at,
            batch_shared_reads,
            lease_ttl,
            lease_wait,
            soft_timeout,
            hard_timeout,
            staleness_bound,
            unsynced_local_ttl,
            bus_liveness
        );
        if c.leases == Some(false) {
            b = b.no_leases();
        }
        if let Some(key) = c.signing_key {
            b = b.signing_key(key.into_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_file_sets_what_it_names() {
        let c = CacheConfig::from_toml(
            "ttl = \"10m\"\nttl_jitter = 0.2\ngrace = \"1h 30m\"\nlocal_capacity = 1048576\nleases = false\n",
            "cache.toml",
        )
        .expect("valid");
        assert_eq!(c.ttl, Some(Duration::from_secs(600)));
        assert_eq!(c.ttl_jitter, Some(0.2));
        assert_eq!(c.grace, Some(Duration::from_secs(5400)));
        assert_eq!(c.local_capacity, Some(1 << 20));
        assert_eq!(c.leases, Some(false));
        assert_eq!(c.staleness_bound, None, "left out: the default");
    }

    #[test]
    fn errors_name_the_setting_and_where_it_came_from() {
        let e = CacheConfig::from_toml("tll = \"5m\"\n", "cache.toml").expect_err("unknown");
        let text = e.to_string();
        assert!(
            text.contains("cache.toml") && text.contains("tll"),
            "{text}"
        );
        let e = CacheConfig::from_toml("ttl = \"five minutes\"\n", "cache.toml")
            .expect_err("bad duration");
        assert!(e.to_string().contains("ttl"), "{e}");
        let e = CacheConfig::from_toml("max_key_len = \"x\"\n", "c.toml").expect_err("kind");
        assert!(e.to_string().contains("max_key_len"), "{e}");

        let vars = HashMap::from([("T_GRACE".to_owned(), "soon".to_owned())]);
        let e = CacheConfig::from_vars("T_", |n| vars.get(n).cloned()).expect_err("bad");
        let text = e.to_string();
        assert!(text.contains("T_GRACE") && text.contains("grace"), "{text}");
    }

    #[test]
    fn a_section_configures_one_cache_of_several() {
        let text = "[rows]\nttl = \"1m\"\n[responses]\nttl = \"5s\"\n";
        let rows = CacheConfig::from_toml_section(text, "f", "rows").expect("rows");
        assert_eq!(rows.ttl, Some(Duration::from_secs(60)));
        let none = CacheConfig::from_toml_section(text, "f", "other").expect("absent");
        assert_eq!(none, CacheConfig::default());
        let e = CacheConfig::from_toml_section("[rows]\nttl = 5\n", "f", "rows").expect_err("kind");
        assert!(
            e.to_string().contains("[rows]") && e.to_string().contains("ttl"),
            "{e}"
        );
        let e = CacheConfig::from_toml_section("rows = 1\n", "f", "rows").expect_err("not a table");
        assert!(e.to_string().contains("rows"), "{e}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let vars = HashMap::from([
            ("T_TTL".to_owned(), "2m".to_owned()),
            ("T_TTL_JITTER".to_owned(), "0.3".to_owned()),
            ("T_BATCH_SHARED_READS".to_owned(), "false".to_owned()),
            ("T_SIGNING_KEY".to_owned(), "s3cret".to_owned()),
        ]);
        let env = CacheConfig::from_vars("T_", |n| vars.get(n).cloned()).expect("valid");
        let file = CacheConfig::from_toml("ttl = \"10m\"\ngrace = \"1m\"\n", "f").expect("valid");
        let c = env.or(file);
        assert_eq!(c.ttl, Some(Duration::from_secs(120)), "env wins");
        assert_eq!(c.grace, Some(Duration::from_secs(60)), "file fills in");
        assert_eq!(c.ttl_jitter, Some(0.3));
        assert_eq!(c.batch_shared_reads, Some(false));
        assert_eq!(c.signing_key.as_deref(), Some("s3cret"));
    }

    #[test]
    fn every_setting_is_listed_and_round_trips() {
        let all = CacheConfig {
            local_capacity: Some(1),
            local_ttl: Some(Duration::from_secs(1)),
            ttl: Some(Duration::from_secs(2)),
            ttl_jitter: Some(0.1),
            negative_ttl: Some(Duration::from_secs(3)),
            negative_jitter: Some(0.2),
            soft_ttl: Some(Duration::from_secs(1)),
            grace: Some(Duration::from_secs(4)),
            max_key_len: Some(100),
            max_value_size: Some(1000),
            compress_at: Some(10),
            batch_shared_reads: Some(true),
            leases: Some(true),
            lease_ttl: Some(Duration::from_secs(5)),
            lease_wait: Some(Duration::from_millis(6)),
            soft_timeout: Some(Duration::from_millis(7)),
            hard_timeout: Some(Duration::from_secs(8)),
            staleness_bound: Some(Duration::from_millis(900)),
            unsynced_local_ttl: Some(Duration::from_millis(800)),
            bus_liveness: Some(Duration::from_millis(700)),
            signing_key: Some("k".into()),
        };
        let text = toml::to_string(&all).expect("serializes");
        let table: toml::Table = text.parse().expect("toml");
        let mut names: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut listed = SETTINGS.to_vec();
        names.sort_unstable();
        listed.sort_unstable();
        assert_eq!(names, listed, "SETTINGS names every field");
        assert_eq!(CacheConfig::from_toml(&text, "t").expect("parses"), all);
    }

    #[tokio::test]
    async fn a_builder_takes_the_settings_and_build_checks_them() {
        let ok = CacheConfig::from_toml("ttl = \"1m\"\ngrace = \"5m\"\n", "f").expect("valid");
        let cache = crate::Cache::<u64, String>::builder("cfg-ok")
            .local_only()
            .config(&ok)
            .build()
            .expect("builds");
        assert_eq!(cache.grace(), Duration::from_secs(300));
        let bad = CacheConfig::from_toml("ttl_jitter = 1.5\n", "f").expect("parses");
        let e = crate::Cache::<u64, String>::builder("cfg-bad")
            .local_only()
            .config(&bad)
            .build()
            .expect_err("out of range");
        assert_eq!(e.field, "ttl_jitter");
    }
}
