//! The error of building a Redis shared tier or bus.

/// Why a [`RedisSharedTier`](crate::RedisSharedTier) or [`RedisBus`](crate::RedisBus)
/// could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// A builder field has an invalid value. `field` is the builder method's name.
    #[error("invalid redis config: `{field}`: {reason}")]
    Config {
        /// The builder field at fault, as named by its builder method.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The first connection could not be established (and the builder was not
    /// told to connect lazily).
    #[error("could not connect to redis: {0}")]
    Connect(String),
}

impl RedisError {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        RedisError::Config {
            field,
            reason: reason.into(),
        }
    }
}
