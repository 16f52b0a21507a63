//! Whether a response may be stored, and for how long (RFC 9111 3 and 4.2):
//! the plan the load turns into an engine [`Entry`](tiercache_core::Entry).

use std::time::{Duration, SystemTime};

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName};

use super::freshness::{self, Lifetime};
use super::layer::Config;
use super::policy::{CacheControl, vary_extra};
use super::response::{Meta, headers_fit};

/// How a storable response is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Its TTL in the engine (`None`: the cache's TTL): what is left of
    /// its freshness lifetime, plus any `stale-while-revalidate` window.
    pub(crate) ttl: Option<Duration>,
    /// Refresh in the background from here (`stale-while-revalidate`).
    pub(crate) refresh_after: Option<Duration>,
    /// How long past its TTL the engine keeps it: to be served when the
    /// origin fails (within `stale_if_error`) or revalidated.
    pub(crate) keep: Duration,
    /// Stored with the response.
    pub(crate) meta: Meta,
    /// Request headers it varies on beyond the configured ones: it is
    /// stored per variant (RFC 9111 4.1).
    pub(crate) variants: Vec<HeaderName>,
}

/// Why a response is not stored (for logs and the `NotStored` reason).
pub(crate) type Refusal = &'static str;

impl Config {
    /// The directives this cache follows for a response: a targeted field
    /// (RFC 9213) over `Cache-Control`.
    pub(crate) fn cache_control(&self, headers: &HeaderMap) -> CacheControl {
        CacheControl::for_cache(headers, &self.targeted)
    }

    /// Whether a response may be stored, and how (RFC 9111 3: storing; 4.2:
    /// freshness and age). `request_time` and `response_time` are when the
    /// request went to the origin and when its answer came back.
    pub(crate) fn plan(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Result<Plan, Refusal> {
        let negative = if status == StatusCode::PARTIAL_CONTENT {
            // A part is never stored as if it were the whole.
            return Err("a partial (206) response");
        } else if self.statuses.contains(&status) {
            false
        } else if self.negative_statuses.contains(&status) {
            true
        } else {
            return Err("a status not configured to be stored");
        };
        if headers.contains_key(header::SET_COOKIE) {
            return Err("the response sets a cookie");
        }
        let Ok(variants) = vary_extra(headers, &self.vary) else {
            return Err("Vary: *");
        };
        if !headers_fit(headers) {
            return Err("too many header fields");
        }
        let cc = self.cache_control(headers);
        if cc.no_store {
            return Err("no-store");
        }
        if cc.private {
            return Err("private");
        }
        if cc.no_cache {
            // Reusable only after revalidation on every request: nothing
            // gained by storing it.
            return Err("no-cache");
        }
        let lifetime =
            match freshness::lifetime(headers, &cc, status, response_time, self.default_ttl) {
                Lifetime::Explicit(d) | Lifetime::Heuristic(d) => Some(d),
                Lifetime::CacheTtl => None,
                Lifetime::None => return Err("no freshness information"),
            };
        let initial_age = freshness::initial_age(headers, request_time, response_time);
        // What is left of its freshness; stale on arrival is not stored.
        let remaining = match lifetime {
            Some(l) => match l.checked_sub(initial_age) {
                Some(r) if !r.is_zero() => Some(r),
                _ => return Err("stale on arrival"),
            },
            None => None,
        };
        let revalidate = cc.revalidate_when_stale();
        let swr = cc
            .stale_while_revalidate
            .filter(|_| !revalidate && !negative)
            .map(Duration::from_secs);
        let stale_if_error = if revalidate {
            Duration::ZERO
        } else {
            cc.stale_if_error
                .map_or(Duration::ZERO, Duration::from_secs)
                .max(self.cache.grace())
        };
        let (ttl, refresh_after) = match (remaining, swr) {
            (Some(r), Some(w)) => (Some(r.saturating_add(w)), Some(r)),
            (r, _) => (r, None),
        };
        let ttl = if negative {
            Some(ttl.map_or(self.negative_ttl, |t| t.min(self.negative_ttl)))
        } else {
            ttl
        };
        let secs = |d: Duration| d.as_secs();
        Ok(Plan {
            ttl,
            refresh_after,
            keep: stale_if_error.max(if negative {
                Duration::ZERO
            } else {
                self.keep_for_revalidation
            }),
            meta: Meta {
                initial_age: secs(initial_age),
                lifetime: lifetime.map_or(u64::MAX, secs),
                stale_if_error: secs(stale_if_error),
                origin_etag: false,
            },
            variants,
        })
    }
}
