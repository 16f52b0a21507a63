//! The public types of a lookup: the [`Entry`] a loader returns, the
//! [`Fetched`] answer with its [`Outcome`] and [`Tier`], the [`LocalHit`] of
//! the hot path, and the [`Applied`] invalidations a checker can follow.

use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use super::Cache;
use crate::clock::Clock;

/// A value to cache, with the tags it carries and, optionally, its own TTL.
///
/// Tags work like a CDN's surrogate keys: one
/// [`invalidate_tag`](Cache::invalidate_tag) drops every entry carrying it.
#[derive(Clone, Debug)]
pub struct Entry<V> {
    /// The value.
    pub value: V,
    /// Tags of the entry.
    pub tags: Vec<String>,
    /// A TTL for this entry instead of the cache's (still jittered).
    pub ttl: Option<Duration>,
    /// Refresh-ahead for this entry instead of the cache's `soft_ttl`: once
    /// this old (and still fresh), a read serves it and refreshes it in the
    /// background, once. At or past the TTL: no refresh-ahead.
    pub refresh_after: Option<Duration>,
    /// How long past its TTL this entry may be served stale (the origin
    /// failing or slow) instead of the cache's `grace`.
    pub grace: Option<Duration>,
}

impl<V> Entry<V> {
    /// An untagged entry with the cache's TTL.
    pub fn new(value: V) -> Self {
        Self {
            value,
            tags: Vec::new(),
            ttl: None,
            refresh_after: None,
            grace: None,
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds tags.
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Sets this entry's TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets this entry's refresh-ahead point ([`refresh_after`](Self::refresh_after)).
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.refresh_after = Some(after);
        self
    }

    /// Sets this entry's grace ([`grace`](Self::grace)).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    pub(super) fn life(&self) -> Life {
        Life {
            ttl: self.ttl,
            refresh_after: self.refresh_after,
            grace: self.grace,
        }
    }
}

/// An entry's own times, where it has any (else the cache's settings).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Life {
    pub(super) ttl: Option<Duration>,
    pub(super) refresh_after: Option<Duration>,
    pub(super) grace: Option<Duration>,
}

impl<V> From<V> for Entry<V> {
    fn from(value: V) -> Self {
        Entry::new(value)
    }
}

/// A fresh local entry, borrowed (see [`Cache::with_local`]).
#[derive(Debug)]
pub struct LocalHit<'a, V> {
    /// The value; `None` for a cached "no such item".
    pub value: Option<&'a Arc<V>>,
    /// When the value was loaded from the origin, in ms since the Unix epoch.
    pub written_ms: u64,
    /// How long ago that was.
    pub age: Duration,
}

/// Which tier answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// The in-process tier.
    Local,
    /// The shared tier (Redis).
    Shared,
}

/// How a lookup was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A fresh entry in a tier.
    Hit(Tier),
    /// This caller's load (or another instance's, after a lease wait).
    Loaded,
    /// Another caller's load in this process, waited for.
    Collapsed,
    /// A stale value (past its TTL, within grace) because the origin failed
    /// or was slow.
    Stale,
    /// The Bloom guard knew the key cannot exist.
    Rejected,
}

impl Outcome {
    /// Whether the answer came from the cache without waiting for the origin.
    pub fn is_hit(self) -> bool {
        matches!(self, Outcome::Hit(_) | Outcome::Rejected)
    }
}

/// The answer to [`Cache::fetch`]: the value and how it was found.
pub struct Fetched<V> {
    /// The value; `None` when the origin has no such item.
    pub value: Option<Arc<V>>,
    /// How the lookup was answered.
    pub outcome: Outcome,
    /// When the value was loaded from the origin, in ms since the Unix epoch.
    pub written_ms: u64,
    /// Its age when found, where the local tier's clock already told it
    /// (a local hit reads no wall clock).
    pub(super) age: Option<Duration>,
    /// The cache's clock, for [`age`](Self::age) otherwise.
    pub(super) clock: Clock,
}

impl<V: std::fmt::Debug> std::fmt::Debug for Fetched<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("value", &self.value)
            .field("outcome", &self.outcome)
            .field("written_ms", &self.written_ms)
            .field("age", &self.age)
            .finish()
    }
}

impl<V> Clone for Fetched<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            outcome: self.outcome,
            written_ms: self.written_ms,
            age: self.age,
            clock: self.clock.clone(),
        }
    }
}

impl<V> Fetched<V> {
    /// How long ago the value was loaded from the origin.
    pub fn age(&self) -> Duration {
        self.age.unwrap_or_else(|| {
            Duration::from_millis(self.clock.wall_ms().saturating_sub(self.written_ms))
        })
    }
}

/// An invalidation from another instance, applied here (see
/// [`Cache::subscribe_applied`]).
#[derive(Clone, Debug)]
pub struct Applied {
    /// The instance that sent it.
    pub sender_instance: u64,
    /// Its sequence number at that instance.
    pub seq: u64,
    /// The keys it dropped.
    pub keys: Vec<String>,
    /// The tags it dropped.
    pub tags: Vec<String>,
    /// It cleared the whole namespace, this way.
    pub clear: Option<ClearMode>,
    /// When it had been applied here (local entries evicted, fills revoked).
    pub at: std::time::Instant,
}

/// How [`Cache::clear`](crate::Cache::clear) drops a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClearMode {
    /// Every entry is gone: the next read of any key loads it.
    Hard,
    /// Every entry is stale: a read loads it again, and until that load
    /// succeeds the old value is served within its grace period (while
    /// another instance holds the key's lease, or when the origin fails),
    /// as for any entry past its TTL.
    Soft,
}

impl ClearMode {
    /// `"hard"` or `"soft"`, as metrics and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClearMode::Hard => "hard",
            ClearMode::Soft => "soft",
        }
    }
}
