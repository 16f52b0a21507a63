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
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use tiercache_core::{CacheKey, Error, Outcome, Tier};
use tower_service::Service;

use super::body::CacheBody;
use super::future::ResponseFuture;
use super::handle::CacheHandle;
use super::key::{RequestKey, VariantKey};
use super::layer::Config;
use super::load::{Built, Delivered, LoadCtx, Mode, conditional, load};
use super::policy::request_no_cache;
use super::response::{CACHE_STATUS, CachedResponse};
use super::serve::{Ask, AskOwned, MISS, STATUS_METHOD, STATUS_MISS, X_CACHE, appended, respond};

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
        let head = req.method() == Method::HEAD;
        let cacheable = c.methods.contains(req.method())
            && (c.cache_authorized || !req.headers().contains_key(header::AUTHORIZATION));
        if !cacheable {
            req.extensions_mut()
                .insert(CacheHandle::new(Arc::clone(&self.config)));
            if !is_safe(req.method()) {
                // RFC 9111 4.4: a non-error answer invalidates the URIs.
                let targets = Targets::of(&req);
                let fut = self.inner.call(req);
                return ResponseFuture::cached(Box::pin(invalidate_after(
                    Arc::clone(&self.config),
                    fut,
                    targets,
                )));
            }
            return ResponseFuture::bypass(self.inner.call(req), Arc::clone(&self.config));
        }
        // HEAD is answered from the stored GET response.
        let method = if head { &Method::GET } else { req.method() };
        let key = c.key(method, req.uri(), req.headers());
        let revalidate = c.request_no_cache && request_no_cache(req.headers());
        // A fresh local hit is answered here: no service clone, no boxed
        // future, the key hashed from the request's parts as it stands.
        // A panic in here is a cache failure, not the client's: the request
        // goes on to the lookup, and from there to the service.
        if !revalidate {
            // Written in place: a response is large, and each move of it
            // through a `Result` or an `Option` is a copy a hit pays for.
            let mut hit = None;
            let answered = std::panic::catch_unwind(AssertUnwindSafe(|| {
                local_hit(c, key, Ask::of(req.headers(), head), &mut hit);
            }));
            if answered.is_ok()
                && let Some(resp) = hit
            {
                return ResponseFuture::ready(resp);
            }
        }
        let key = key.render();
        // The ready service is the one to call; leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        ResponseFuture::cached(Box::pin(async move {
            if head {
                head_lookup(config, inner, req, key).await
            } else {
                lookup(config, inner, req, key, revalidate).await
            }
        }))
    }
}

/// A fresh local hit, answered into `out`: the response under the
/// request's key, or the variant a marker there points to (RFC 9111 4.1).
/// `out` stays `None` on a miss.
fn local_hit<B: Body>(
    c: &Config,
    key: RequestKey<'_>,
    ask: Ask<'_>,
    out: &mut Option<Response<CacheBody<B>>>,
) {
    let marker = c.cache.with_local(&key, |hit| {
        let cached = hit.value?;
        match cached.variants() {
            None => {
                *out = Some(respond(cached, Outcome::Hit(Tier::Local), hit.age, ask));
                None
            }
            Some(_) => Some(Arc::clone(cached)),
        }
    });
    if let Some(Some(marker)) = marker {
        let variant = VariantKey {
            base: key,
            names: marker.variants().unwrap_or_default(),
        };
        c.cache.with_local(&variant, |hit| {
            if let Some(cached) = hit.value.filter(|v| v.variants().is_none()) {
                *out = Some(respond(cached, Outcome::Hit(Tier::Local), hit.age, ask));
            }
        });
    }
}

/// Methods RFC 9110 9.2.1 calls safe: their answers never invalidate.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The cache key of `uri` as any request without vary headers has it, and
/// the tag every stored variant of it carries when the key has vary headers.
fn uri_key(config: &Config, uri: &Uri) -> String {
    let empty = HeaderMap::new();
    RequestKey {
        method: &Method::GET,
        uri,
        headers: &empty,
        vary: &[],
        sort_query: config.sort_query,
    }
    .render()
}

/// The tag of every stored response for `uri` (see [`uri_key`]).
pub(crate) fn uri_tag(config: &Config, uri: &Uri) -> String {
    uri_key_and_tag(config, uri).1
}

/// [`uri_key`] and [`uri_tag`] at once.
pub(crate) fn uri_key_and_tag(config: &Config, uri: &Uri) -> (String, String) {
    let key = uri_key(config, uri);
    let tag = format!("tc-uri:{}", key.strip_prefix("GET ").unwrap_or(&key));
    (key, tag)
}

/// The URIs an unsafe request's answer invalidates (RFC 9111 4.4): its
/// target, and the `Location` / `Content-Location` of the answer when they
/// are on the same origin.
struct Targets {
    uri: Uri,
    authority: Option<String>,
}

impl Targets {
    fn of<B>(req: &Request<B>) -> Self {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_ascii_lowercase())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_ascii_lowercase)
            });
        Self {
            uri: req.uri().clone(),
            authority,
        }
    }

    /// The target URI and those of `headers` on the same origin.
    fn uris(&self, headers: &HeaderMap) -> Vec<Uri> {
        let mut out = vec![self.uri.clone()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(uri) = headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<Uri>().ok())
            else {
                continue;
            };
            let same_origin = match uri.authority() {
                None => uri.path().starts_with('/'),
                Some(a) => self
                    .authority
                    .as_deref()
                    .is_some_and(|ours| a.as_str().eq_ignore_ascii_case(ours)),
            };
            if same_origin {
                out.push(uri);
            }
        }
        out
    }
}

/// Calls the service with an unsafe request; a non-error answer invalidates
/// its target URIs in both tiers and on every instance, before the answer
/// is returned (so the client's next read sees its own write).
async fn invalidate_after<F, ResBody, E>(
    config: Arc<Config>,
    fut: F,
    targets: Targets,
) -> Result<Response<CacheBody<ResBody>>, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body<Data = Bytes>,
{
    let mut resp = fut.await?;
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        let (keys, tags): (Vec<String>, Vec<String>) = targets
            .uris(resp.headers())
            .iter()
            .map(|u| uri_key_and_tag(&config, u))
            .unzip();
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let _ = AssertUnwindSafe(config.cache.invalidate_many(&keys, &tags))
            .catch_unwind()
            .await;
    }
    let h = resp.headers_mut();
    h.remove(&config.tags_header);
    if let Some(own) = &config.own_targeted {
        h.remove(own);
    }
    h.insert(CACHE_STATUS, STATUS_METHOD);
    Ok(resp.map(CacheBody::inner))
}

/// A `HEAD` request: a stored `GET` response answers it (its headers, its
/// validators); otherwise it goes to the service and nothing is stored (a
/// `HEAD` answer has no body to store, and no validator may be made from
/// its empty one).
async fn head_lookup<S, ReqBody, ResBody>(
    config: Arc<Config>,
    svc: S,
    req: Request<ReqBody>,
    key: String,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    ResBody: Body<Data = Bytes>,
{
    let mut found = AssertUnwindSafe(config.cache.lookup(&key))
        .catch_unwind()
        .await;
    if let Ok(Some(f)) = &found
        && let Some(names) = f.value.as_deref().and_then(CachedResponse::variants)
    {
        let variant = VariantKey {
            base: config.key(&Method::GET, req.uri(), req.headers()),
            names,
        }
        .render();
        found = AssertUnwindSafe(config.cache.lookup(&variant))
            .catch_unwind()
            .await;
    }
    match found {
        Ok(Some(f)) => {
            if let Some(cached) = f.value.as_deref().filter(|c| c.variants().is_none()) {
                let ask = AskOwned::of(req.headers(), true);
                return Ok(respond(cached, f.outcome, f.age(), ask.borrow()));
            }
        }
        Ok(None) => {}
        Err(_) => config.internal_failure(&key).await,
    }
    forward(config, svc, Some(req), None).await
}

type Fetch =
    Result<Result<tiercache_core::Fetched<CachedResponse>, Error>, Box<dyn std::any::Any + Send>>;

/// One engine lookup of `key`, loading from the service on a miss (this
/// caller's request, if it leads the load). A panic inside is returned, not
/// propagated.
#[allow(clippy::too_many_arguments)]
async fn fetch_key<S, ReqBody, ResBody>(
    config: &Arc<Config>,
    svc: &mut S,
    key: &String,
    slot: &mut Option<Request<ReqBody>>,
    own_rx: &mut Option<oneshot::Receiver<Delivered<ResBody, S::Error>>>,
    ask: &AskOwned,
    mode: impl FnOnce(&Request<ReqBody>) -> Mode,
) -> Fetch
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    AssertUnwindSafe(config.cache.fetch_revalidating(key, |old| {
        let (tx, rx) = oneshot::channel();
        *own_rx = Some(rx);
        let mut ctx = None;
        let call = slot.take().map(|mut req| {
            ctx = Some(LoadCtx {
                uri_tag: uri_tag(config, req.uri()),
                tag_uri: !config.vary.is_empty(),
                mode: mode(&req),
                ask: ask.clone(),
            });
            conditional(&mut req, old.as_deref());
            req.extensions_mut()
                .insert(CacheHandle::new(Arc::clone(config)));
            svc.call(req)
        });
        let ctx = ctx.unwrap_or_else(|| LoadCtx {
            uri_tag: String::new(),
            tag_uri: false,
            mode: Mode::Variant {
                names: Vec::new(),
                primary: String::new(),
            },
            ask: AskOwned::default(),
        });
        load(Arc::clone(config), call, old, ctx, tx)
    }))
    .catch_unwind()
    .await
}

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
    let ask = AskOwned::of(req.headers(), false);
    if revalidate {
        config.cache.invalidate(&key).await;
    }
    // The request stays here unless this caller leads the load, so a caller
    // the cache cannot answer (the leader's response was not cacheable) can
    // still call the service itself.
    let mut slot = Some(req);
    // Made only when this caller leads a load: a hit allocates no channel.
    let mut own_rx: Option<oneshot::Receiver<Delivered<ResBody, S::Error>>> = None;
    let mut fetched = fetch_key(
        &config,
        &mut svc,
        &key,
        &mut slot,
        &mut own_rx,
        &ask,
        |req| Mode::Primary {
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        },
    )
    .await;
    let mut failed_key = &key;
    // A marker: the response varies on request headers; its variant for
    // this request has a key of its own (RFC 9111 4.1).
    let variant = match (&fetched, &slot) {
        (Ok(Ok(f)), Some(req)) => {
            f.value
                .as_deref()
                .and_then(CachedResponse::variants)
                .map(|names| {
                    let key = VariantKey {
                        base: config.key(&Method::GET, req.uri(), req.headers()),
                        names,
                    }
                    .render();
                    (key, names.to_vec())
                })
        }
        _ => None,
    };
    if let Some((variant_key, names)) = &variant {
        let primary = key.clone();
        fetched = fetch_key(
            &config,
            &mut svc,
            variant_key,
            &mut slot,
            &mut own_rx,
            &ask,
            |_| Mode::Variant {
                names: names.clone(),
                primary,
            },
        )
        .await;
        failed_key = variant_key;
    }
    // The cache failed inside (a panic on something it stored): fail open
    // as when Redis is down. The entry is dropped and the failure counted;
    // the request goes to the service (or, if this caller already led a
    // load, its own response is served).
    let fetched = match fetched {
        Ok(f) => f,
        Err(_) => {
            config.internal_failure(failed_key).await;
            if let Some(Ok(Some(own))) = own_rx.map(|mut rx| rx.try_recv()) {
                return own.map(miss);
            }
            return forward(config, svc, slot, None).await;
        }
    };
    // A stale copy stands in for a failed origin only as far as the
    // response allows (`stale-if-error`, the cache's grace; never past
    // `must-revalidate`).
    let stale_ok = |f: &tiercache_core::Fetched<CachedResponse>| {
        f.outcome == Outcome::Stale
            && f.value.as_deref().is_some_and(|c| {
                let m = c.meta();
                let secs = Duration::from_secs;
                m.stale_if_error > 0
                    && secs(m.initial_age).saturating_add(f.age())
                        <= secs(m.lifetime).saturating_add(secs(m.stale_if_error))
            })
    };
    // This caller led the load and its response is not the stored one: it
    // is served as it is (a service error too, unless a stale value stands
    // in).
    if let Some(own) = own_rx.and_then(|mut rx| rx.try_recv().ok().flatten()) {
        match (own, &fetched) {
            // The origin failed (an error or a 5xx) and a stale copy may
            // stand in: serve that instead.
            (Err(_), Ok(f)) if stale_ok(f) => {}
            (Ok(r), Ok(f)) if stale_ok(f) && r.status().is_server_error() => {}
            (own, _) => return own.map(miss),
        }
    }
    match fetched {
        Ok(f) => match f.value.as_deref() {
            Some(cached)
                if cached.variants().is_none() && (f.outcome != Outcome::Stale || stale_ok(&f)) =>
            {
                Ok(respond(cached, f.outcome, f.age(), ask.borrow()))
            }
            _ => forward(config, svc, slot, None).await,
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
            if let Some(own) = &config.own_targeted {
                resp.headers_mut().remove(own);
            }
            Ok(miss(resp.map(CacheBody::inner)))
        }
        None => {
            let status = match &error {
                Some(Error::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!(error = ?error, %status, "response load failed");
            let mut resp = Response::new(CacheBody::empty());
            *resp.status_mut() = status;
            Ok(miss(resp))
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
}

/// A response that went to the origin: `x-cache: miss` and its
/// `Cache-Status` member after any from caches nearer the origin. One the
/// cache built itself for a load it led has both already.
fn miss<B>(mut resp: Response<B>) -> Response<B> {
    if resp.extensions().get::<Built>().is_some() {
        return resp;
    }
    let h = resp.headers_mut();
    h.insert(X_CACHE, MISS);
    let status = appended(h.get(CACHE_STATUS), STATUS_MISS);
    h.insert(CACHE_STATUS, status);
    resp
}
