use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::channel::oneshot;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tiercache_core::{CacheKey, Entry, Error, NotStored, Outcome, Tier};
use tower_service::Service;

use crate::BoxError;

use super::body::{CacheBody, Collected, collect_limited};
use super::future::ResponseFuture;
use super::handle::CacheHandle;
use super::layer::Config;
use super::policy::{
    CacheControl, TagError, none_match, request_no_cache, strip_for_storage, take_tags,
    vary_covered,
};
use super::response::{CachedResponse, headers_fit, number_value};

/// `x-cache`, set on every response that went through a lookup.
pub(crate) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const HIT: HeaderValue = HeaderValue::from_static("hit");
const MISS: HeaderValue = HeaderValue::from_static("miss");
const STALE: HeaderValue = HeaderValue::from_static("stale");

/// The service of [`HttpCacheLayer`](super::HttpCacheLayer).
pub struct HttpCache<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: Clone> Clone for HttpCache<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for HttpCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCache")
            .field("inner", &self.inner)
            .field("cache", &self.config.cache)
            .finish()
    }
}

impl<S> HttpCache<S> {
    pub(super) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpCache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let c = &self.config;
        let cacheable = c.methods.contains(req.method())
            && (c.cache_authorized || !req.headers().contains_key(header::AUTHORIZATION));
        if !cacheable {
            req.extensions_mut()
                .insert(CacheHandle::new(Arc::clone(&self.config)));
            return ResponseFuture::bypass(self.inner.call(req), c.tags_header.clone());
        }
        let key = c.key(req.method(), req.uri(), req.headers());
        let revalidate = c.request_no_cache && request_no_cache(req.headers());
        // A fresh local hit is answered here: no service clone, no boxed
        // future, the key hashed from the request's parts as it stands.
        // A panic in here is a cache failure, not the client's: the request
        // goes on to the lookup, and from there to the service.
        if !revalidate
            && let Ok(Some(Some(resp))) = std::panic::catch_unwind(AssertUnwindSafe(|| {
                c.cache.with_local(&key, |hit| {
                    hit.value.map(|cached| {
                        respond(
                            cached,
                            Outcome::Hit(Tier::Local),
                            hit.age,
                            req.method() == Method::HEAD,
                            req.headers().get(header::IF_NONE_MATCH),
                        )
                    })
                })
            }))
        {
            return ResponseFuture::ready(resp);
        }
        let key = key.render();
        // The ready service is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::cached(Box::pin(lookup(
            Arc::clone(&self.config),
            inner,
            req,
            key,
            revalidate,
        )))
    }
}

type Delivered<B, E> = Result<Response<CacheBody<B>>, E>;

async fn lookup<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut svc: S,
    req: Request<ReqBody>,
    key: String,
    revalidate: bool,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    let head = req.method() == Method::HEAD;
    let if_none_match = req.headers().get(header::IF_NONE_MATCH).cloned();
    if revalidate {
        config.cache.invalidate(&key).await;
    }
    // The request stays here unless this caller leads the load, so a caller
    // the cache cannot answer (the leader's response was not cacheable) can
    // still call the service itself.
    let mut slot = Some(req);
    // Made only when this caller leads a load: a hit allocates no channel.
    let mut own_rx: Option<oneshot::Receiver<Delivered<ResBody, S::Error>>> = None;
    let fetched = AssertUnwindSafe(config.cache.fetch(&key, || {
        let (tx, rx) = oneshot::channel();
        own_rx = Some(rx);
        let call = slot.take().map(|mut req| {
            // Conditional requests are answered by the cache: the origin
            // is asked for the full response, which can be stored.
            req.headers_mut().remove(header::IF_NONE_MATCH);
            req.headers_mut().remove(header::IF_MODIFIED_SINCE);
            req.extensions_mut()
                .insert(CacheHandle::new(Arc::clone(&config)));
            svc.call(req)
        });
        load(Arc::clone(&config), call, head, tx)
    }))
    .catch_unwind()
    .await;
    // The cache failed inside (a panic on something it stored): fail open
    // as when Redis is down. The entry is dropped and the failure counted;
    // the request goes to the service (or, if this caller already led a
    // load, its own response is served).
    let fetched = match fetched {
        Ok(f) => f,
        Err(_) => {
            config.internal_failure(&key).await;
            if let Some(Ok(Some(own))) = own_rx.map(|mut rx| rx.try_recv()) {
                return own.map(|r| with_x_cache(r, MISS));
            }
            return forward(config, svc, slot, None).await;
        }
    };
    // This caller led the load and its response is not stored: it is served
    // as it is (a service error too, unless a stale value stands in).
    if let Some(own) = own_rx.and_then(|mut rx| rx.try_recv().ok().flatten()) {
        match (own, &fetched) {
            // The origin failed (an error or a 5xx) and grace has a stale
            // copy: serve that instead.
            (Err(_), Ok(f)) if f.outcome == Outcome::Stale => {}
            (Ok(r), Ok(f)) if f.outcome == Outcome::Stale && r.status().is_server_error() => {}
            (own, _) => return own.map(|r| with_x_cache(r, MISS)),
        }
    }
    match fetched {
        Ok(f) => match &f.value {
            Some(cached) => Ok(respond(
                cached,
                f.outcome,
                f.age(),
                head,
                if_none_match.as_ref(),
            )),
            None => forward(config, svc, slot, None).await,
        },
        Err(e) => forward(config, svc, slot, Some(e)).await,
    }
}

/// Calls the service directly (this caller's request is still here), or
/// answers the engine's error (the load panicked or timed out).
async fn forward<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut svc: S,
    mut slot: Option<Request<ReqBody>>,
    error: Option<Error>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    match slot.take() {
        Some(mut req) => {
            req.extensions_mut()
                .insert(CacheHandle::new(Arc::clone(&config)));
            let mut resp = svc.call(req).await?;
            resp.headers_mut().remove(&config.tags_header);
            Ok(with_x_cache(resp.map(CacheBody::inner), MISS))
        }
        None => {
            let status = match &error {
                Some(Error::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!(error = ?error, %status, "response load failed");
            let mut resp = Response::new(CacheBody::empty());
            *resp.status_mut() = status;
            Ok(with_x_cache(resp, MISS))
        }
    }
}

/// A load that failed (the engine counts a load error; within grace,
/// waiters get the stale copy). A response the cache merely may not store is
/// [`NotStored`] instead. Either way the caller that led the load gets its
/// own response through the side channel.
#[derive(Debug)]
enum LoadFailed {
    Service,
    ServerError(StatusCode),
    NoRequest,
}

impl fmt::Display for LoadFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadFailed::Service => f.write_str("the inner service failed"),
            LoadFailed::ServerError(s) => write!(f, "the inner service answered {s}"),
            LoadFailed::NoRequest => f.write_str("no request to send"),
        }
    }
}

impl std::error::Error for LoadFailed {}

async fn load<F, ResBody, E>(
    config: Arc<Config>,
    call: Option<F>,
    head: bool,
    tx: oneshot::Sender<Delivered<ResBody, E>>,
) -> Result<Option<Entry<CachedResponse>>, BoxError>
where
    F: Future<Output = Result<Response<ResBody>, E>> + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
    E: Send + 'static,
{
    let Some(call) = call else {
        return Err(Box::new(LoadFailed::NoRequest));
    };
    let resp = match call.await {
        Ok(resp) => resp,
        Err(e) => {
            let _ = tx.send(Err(e));
            return Err(Box::new(LoadFailed::Service));
        }
    };
    let (mut parts, body) = resp.into_parts();
    let tags = match take_tags(&mut parts.headers, &config.tags_header) {
        Ok(tags) => tags,
        Err(e) => {
            config.tags_rejected(&e);
            let _ = tx.send(Ok(Response::from_parts(parts, CacheBody::inner(body))));
            return Err(Box::new(NotStored::new(e.as_str())));
        }
    };
    let Some(ttl) = config.storable(&parts) else {
        let status = parts.status;
        let _ = tx.send(Ok(Response::from_parts(parts, CacheBody::inner(body))));
        return Err(if status.is_server_error() {
            Box::new(LoadFailed::ServerError(status))
        } else {
            Box::new(NotStored::new("the response may not be stored"))
        });
    };
    match collect_limited(body, config.max_body_size).await {
        Collected::Partial(body) => {
            let _ = tx.send(Ok(Response::from_parts(parts, body)));
            Err(Box::new(NotStored::new(
                "the response body is too large or did not end cleanly",
            )))
        }
        Collected::Complete(bytes) => {
            let etag = strip_for_storage(&mut parts.headers);
            // The length is known: stored, it spares every hit the server's
            // own insertion (which would grow the cloned map). Not for HEAD
            // (its empty body is not the length) nor statuses without a body.
            if !head
                && !parts.headers.contains_key(header::CONTENT_LENGTH)
                && !parts.status.is_informational()
                && parts.status != StatusCode::NO_CONTENT
                && parts.status != StatusCode::NOT_MODIFIED
            {
                parts.headers.insert(
                    header::CONTENT_LENGTH,
                    number_value(u64::try_from(bytes.len()).unwrap_or(u64::MAX)),
                );
            }
            // `storable` checked the count: this cannot fail (and if it
            // did, the caller would get an error response, not a panic).
            let cached = CachedResponse::new(parts.status, parts.headers, bytes, etag)
                .map_err(|e| -> BoxError { Box::new(e) })?;
            let mut entry = Entry::new(cached).tags(tags);
            entry.ttl = ttl;
            Ok(Some(entry))
        }
    }
}

impl Config {
    /// The cache panicked while answering `key`: counted, logged at most once
    /// per interval, and the entry dropped everywhere (a panic there too is
    /// swallowed: the request must still reach the service).
    async fn internal_failure(&self, key: &String) {
        metrics::counter!(
            "tiercache_http_internal_failures_total",
            "namespace" => self.cache.namespace().to_owned()
        )
        .increment(1);
        let total = self.internal_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.failure_log.due() {
            tracing::error!(
                ns = self.cache.namespace(),
                key = %key,
                total,
                "the cache failed internally; entry dropped, request sent to the service"
            );
        }
        let _ = AssertUnwindSafe(self.cache.invalidate(key))
            .catch_unwind()
            .await;
    }

    /// A response not stored because its tags cannot be recorded exactly:
    /// counted, and logged at most once per interval.
    fn tags_rejected(&self, e: &TagError) {
        metrics::counter!(
            "tiercache_http_tags_rejected_total",
            "namespace" => self.cache.namespace().to_owned()
        )
        .increment(1);
        let total = self.tags_rejected.fetch_add(1, Ordering::Relaxed) + 1;
        if self.tags_log.due() {
            tracing::warn!(
                ns = self.cache.namespace(),
                reason = e.as_str(),
                total,
                "response served but not cached: its tags cannot be recorded exactly"
            );
        }
    }

    /// Whether a response may be stored, and for how long (`Some(None)`:
    /// the cache's TTL).
    fn storable(&self, parts: &http::response::Parts) -> Option<Option<Duration>> {
        let negative = if self.statuses.contains(&parts.status) {
            false
        } else if self.negative_statuses.contains(&parts.status) {
            true
        } else {
            return None;
        };
        let h = &parts.headers;
        if h.contains_key(header::SET_COOKIE) || !vary_covered(h, &self.vary) || !headers_fit(h) {
            return None;
        }
        let cc = CacheControl::parse(h);
        if cc.no_store || cc.no_cache || cc.private {
            return None;
        }
        let asked = cc.shared_max_age();
        if asked.is_some_and(|t| t.is_zero()) {
            return None;
        }
        Some(if negative {
            Some(asked.map_or(self.negative_ttl, |t| t.min(self.negative_ttl)))
        } else {
            asked
        })
    }
}

fn with_x_cache<B>(mut resp: Response<B>, value: HeaderValue) -> Response<B> {
    resp.headers_mut().insert(X_CACHE, value);
    resp
}

/// A response from the cache: headers cloned from the stored map, the body
/// a clone of the stored `Bytes`; or 304 when `If-None-Match` matches.
fn respond<B: Body>(
    cached: &CachedResponse,
    outcome: Outcome,
    age: Duration,
    head: bool,
    if_none_match: Option<&HeaderValue>,
) -> Response<CacheBody<B>> {
    // The stored map already says `hit`; only other outcomes overwrite it.
    let (is_hit, x_cache) = match outcome {
        Outcome::Hit(_) | Outcome::Rejected => (true, HIT),
        Outcome::Stale => (false, STALE),
        _ => (false, MISS),
    };
    let age = number_value(age.as_secs());
    if let Some(inm) = if_none_match
        && cached.status().is_success()
        && none_match(inm, cached.etag())
    {
        let mut resp = Response::new(CacheBody::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let h = resp.headers_mut();
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::EXPIRES,
            header::VARY,
        ] {
            for v in cached.headers().get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        h.insert(header::ETAG, cached.etag().clone());
        h.insert(X_CACHE, x_cache);
        h.insert(header::AGE, age);
        return resp;
    }
    let body = if head {
        CacheBody::empty()
    } else {
        CacheBody::full(cached.body().clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = cached.status();
    let h = resp.headers_mut();
    // The stored map already holds etag, `x-cache: hit` and `age`: these
    // overwrite in place.
    *h = cached.headers().clone();
    if !is_hit {
        h.insert(X_CACHE, x_cache);
    }
    // In place, found by a walk over a handful of entries: no hashing.
    match h
        .iter_mut()
        .find_map(|(name, value)| (name == header::AGE).then_some(value))
    {
        Some(slot) => *slot = age,
        None => {
            h.insert(header::AGE, age);
        }
    }
    resp
}
