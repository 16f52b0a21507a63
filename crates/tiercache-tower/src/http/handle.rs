//! [`CacheHandle`]: invalidation from handlers.

use std::fmt;
use std::sync::Arc;

use http::{Request, Uri};
use tiercache_core::{Cache, CacheKey};

use super::layer::Config;
use super::response::CachedResponse;

/// A handle on an [`HttpCacheLayer`](super::HttpCacheLayer)'s cache, for
/// write handlers: invalidate tags (the common case) or keys.
///
/// The layer puts it in the extensions of every request it forwards to the
/// inner service, so with the `axum` feature a handler behind the layer takes
/// it as an extractor:
///
/// ```
/// use tiercache_tower::CacheHandle;
///
/// async fn update_product(cache: CacheHandle) -> &'static str {
///     // ... write to the database, then:
///     cache.invalidate_tag("products").await;
///     "updated"
/// }
/// ```
///
/// A handler not behind the layer (e.g. with `route_layer` on the `GET`
/// routes only) gets it from `.layer(axum::Extension(layer.handle()))`.
#[derive(Clone)]
pub struct CacheHandle {
    config: Arc<Config>,
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("cache", &self.config.cache)
            .finish()
    }
}

impl CacheHandle {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Self { config }
    }

    /// Drops every response tagged `tag`, on every instance. Returns the bus
    /// sequence number of the invalidation sent, if one was (as the engine's
    /// [`invalidate_tag`](tiercache_core::Cache::invalidate_tag)); the same
    /// holds for the other methods.
    pub async fn invalidate_tag(&self, tag: &str) -> Option<u64> {
        self.config.cache.invalidate_tag(tag).await
    }

    /// Drops every response tagged with one of `tags`, on every instance, as
    /// one bus message.
    pub async fn invalidate_tags(&self, tags: &[&str]) -> Option<u64> {
        self.config.cache.invalidate_many(&[], tags).await
    }

    /// Drops the response under `key` (as [`key_for`](Self::key_for) gives).
    pub async fn invalidate_key(&self, key: &str) -> Option<u64> {
        self.config.cache.invalidate(&key.to_owned()).await
    }

    /// Drops every stored response of `uri` (path and query), all its
    /// variants included, on every instance: what the layer does itself
    /// after a successful unsafe request (RFC 9111 4.4).
    pub async fn invalidate_uri(&self, uri: &Uri) -> Option<u64> {
        let (key, tag) = super::service::uri_key_and_tag(&self.config, uri);
        self.config
            .cache
            .invalidate_many(&[key], &[tag.as_str()])
            .await
    }

    /// The cache key of a request, as the layer computes it.
    pub fn key_for<B>(&self, req: &Request<B>) -> String {
        self.config
            .key(req.method(), req.uri(), req.headers())
            .render()
    }

    /// The underlying cache.
    pub fn cache(&self) -> &Cache<String, CachedResponse> {
        &self.config.cache
    }
}

/// The rejection of the [`CacheHandle`] extractor: the request carries no
/// handle, because the handler is not behind an
/// [`HttpCacheLayer`](super::HttpCacheLayer) and no
/// `Extension(layer.handle())` was added. A setup mistake, answered with
/// `500 Internal Server Error` and a plain-text body that says how to fix it.
#[cfg(feature = "axum")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "CacheHandle missing: put the handler behind HttpCacheLayer or add \
     .layer(Extension(layer.handle()))"
)]
#[non_exhaustive]
pub struct MissingCacheHandle;

#[cfg(feature = "axum")]
impl MissingCacheHandle {
    /// The status of the response: `500 Internal Server Error`.
    pub fn status(&self) -> http::StatusCode {
        http::StatusCode::INTERNAL_SERVER_ERROR
    }

    /// The body of the response (as `Display` says).
    pub fn body_text(&self) -> String {
        self.to_string()
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for MissingCacheHandle {
    fn into_response(self) -> axum_core::response::Response {
        (self.status(), self.body_text()).into_response()
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum_core::extract::FromRequestParts<S> for CacheHandle {
    type Rejection = MissingCacheHandle;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CacheHandle>()
            .cloned()
            .ok_or(MissingCacheHandle)
    }
}

#[cfg(all(test, feature = "axum"))]
mod tests {
    use axum_core::extract::FromRequestParts;
    use axum_core::response::IntoResponse;

    use super::*;

    #[tokio::test]
    async fn a_request_without_the_handle_is_rejected_by_name() {
        let (mut parts, ()) = Request::new(()).into_parts();
        let rejection = CacheHandle::from_request_parts(&mut parts, &())
            .await
            .expect_err("no handle in the extensions");
        assert_eq!(rejection, MissingCacheHandle);
        assert!(rejection.to_string().starts_with("CacheHandle missing"));
        let response = rejection.into_response();
        assert_eq!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/plain; charset=utf-8")
        );
    }
}
