//! The error of building a Redis shared tier or bus.

/// Why a [`RedisSharedTier`](crate::RedisSharedTier) or [`RedisBus`](crate::RedisBus)
/// could not be built.
///
/// Named `BuildError` so that it does not shadow [`redis::RedisError`], which
/// it keeps as its [`source`](std::error::Error::source) when redis-rs is
/// the one that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A builder field has an invalid value. `field` is the builder method's name.
    #[error("invalid redis config: `{field}`: {reason}")]
    Config {
        /// The builder field at fault, as named by its builder method.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
        /// The redis-rs error that found it wrong (an unparsable URL), if any.
        #[source]
        source: Option<redis::RedisError>,
    },
    /// The first connection could not be established (and the builder was not
    /// told to connect lazily).
    #[error("could not connect to redis: {0}")]
    Connect(#[source] redis::RedisError),
}

/// The former name of [`BuildError`].
#[deprecated(note = "renamed `BuildError` (it shadowed `redis::RedisError`)")]
pub type RedisError = BuildError;

impl BuildError {
    /// A config error that no redis-rs error caused.
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        BuildError::Config {
            field,
            reason: reason.into(),
            source: None,
        }
    }

    /// A config error that redis-rs reported: `reason` says what was being
    /// checked, the error follows it in the message and is kept as the source.
    pub(crate) fn config_from(
        field: &'static str,
        reason: impl std::fmt::Display,
        source: redis::RedisError,
    ) -> Self {
        BuildError::Config {
            field,
            reason: format!("{reason}: {source}"),
            source: Some(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn connect_keeps_the_redis_error() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = BuildError::Connect(redis::RedisError::from(io));
        assert!(
            e.to_string().starts_with("could not connect to redis: "),
            "{e}"
        );
        let source = e.source().expect("a source");
        let redis = source
            .downcast_ref::<redis::RedisError>()
            .expect("the redis error");
        assert!(redis.is_io_error());
    }

    #[test]
    fn config_keeps_the_parse_error() {
        use redis::IntoConnectionInfo as _;
        let Err(parse) = "nope://x".into_connection_info() else {
            panic!("`nope://x` parsed");
        };
        let e = BuildError::config_from("url", "`nope://x`", parse);
        assert!(
            e.to_string()
                .starts_with("invalid redis config: `url`: `nope://x`: "),
            "{e}"
        );
        assert!(
            e.source()
                .and_then(|s| s.downcast_ref::<redis::RedisError>())
                .is_some()
        );
        let plain = BuildError::config("call_timeout", "must be more than zero");
        assert_eq!(
            plain.to_string(),
            "invalid redis config: `call_timeout`: must be more than zero"
        );
        assert!(plain.source().is_none());
    }
}
