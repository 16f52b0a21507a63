//! A load: the origin's answer turned into an engine entry, or refused (the
//! caller that led the load then gets the origin's response as it is), and
//! revalidation (RFC 9111 4.3): a 304 to the cache's conditional request
//! refreshes the stored response instead of replacing it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use futures::channel::oneshot;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use tiercache_core::{CacheKey, Entry, NotStored};

use crate::BoxError;

use super::body::{CacheBody, Collected, collect_limited};
use super::key::VariantKey;
use super::layer::Config;
use super::policy::{TagError, strip_for_storage, take_tags};
use super::response::{CachedResponse, number_value};
use super::serve::AskOwned;
use super::store::Plan;

/// The answer handed to the caller that led the load, when it is not the
/// stored one.
pub(crate) type Delivered<B, E> = Result<Response<CacheBody<B>>, E>;

/// A load that failed (the engine counts a load error; within grace,
/// waiters may get the stale copy). A response the cache merely may not
/// store is [`NotStored`] instead. Either way the caller that led the load
/// gets its own response through the side channel.
#[derive(Debug)]
pub(crate) enum LoadFailed {
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

/// Prepares the request a load sends: byte ranges are dropped (the whole
/// response is loaded, stored and the range served from it), and when a
/// stale copy is at hand, the cache's own validators replace the client's
/// (RFC 9111 4.3.1). Without one, the client's conditional headers go as
/// they are: an origin's 304 to them is passed back, not stored.
pub(crate) fn conditional<B>(req: &mut Request<B>, old: Option<&CachedResponse>) {
    let h = req.headers_mut();
    h.remove(header::RANGE);
    h.remove(header::IF_RANGE);
    let Some(old) = old else { return };
    h.remove(header::IF_NONE_MATCH);
    h.remove(header::IF_MODIFIED_SINCE);
    h.remove(header::IF_MATCH);
    h.remove(header::IF_UNMODIFIED_SINCE);
    if old.meta().origin_etag {
        h.insert(header::IF_NONE_MATCH, old.etag().clone());
    }
    if let Some(lm) = old.headers().get(header::LAST_MODIFIED) {
        h.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// What a load stores under, beyond its key.
pub(crate) struct LoadCtx {
    /// The tag of every stored response of the request's URI, attached
    /// where the key alone does not name all of them (vary headers).
    pub(crate) uri_tag: String,
    /// Attach `uri_tag` to every response (configured vary headers).
    pub(crate) tag_uri: bool,
    pub(crate) mode: Mode,
    /// The client's conditional and range headers, for a response this
    /// load hands straight to the caller that led it.
    pub(crate) ask: AskOwned,
}

/// Which key a load fills.
pub(crate) enum Mode {
    /// The request's own key. A response that varies on request headers
    /// the key does not hold is stored under its variant's key, and a
    /// marker naming those headers under this one.
    Primary {
        /// The request's method, URI and headers, to name its variant.
        uri: Uri,
        headers: HeaderMap,
    },
    /// One variant's key (a marker named `names`); `primary` is the key of
    /// the marker, dropped when the origin's `Vary` has changed.
    Variant {
        names: Vec<HeaderName>,
        primary: String,
    },
}

/// Runs a load: `call` (the origin), then the decision to store.
pub(crate) async fn load<F, ResBody, E>(
    config: Arc<Config>,
    call: Option<F>,
    old: Option<Arc<CachedResponse>>,
    ctx: LoadCtx,
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
    let request_time = SystemTime::now();
    let resp = match call.await {
        Ok(resp) => resp,
        Err(e) => {
            let _ = tx.send(Err(e));
            return Err(Box::new(LoadFailed::Service));
        }
    };
    let response_time = SystemTime::now();
    let (mut parts, body) = resp.into_parts();
    let tags = match take_tags(&mut parts.headers, &config.tags_header) {
        Ok(tags) => tags,
        Err(e) => {
            config.tags_rejected(&e);
            let _ = tx.send(Ok(pass_on(&config, parts, CacheBody::inner(body))));
            return Err(Box::new(NotStored::new(e.as_str())));
        }
    };
    if parts.status == StatusCode::NOT_MODIFIED
        && let Some(old) = old
    {
        let uri_tag =
            (ctx.tag_uri || matches!(ctx.mode, Mode::Variant { .. })).then(|| ctx.uri_tag.clone());
        return freshen(
            &config,
            &old,
            &parts.headers,
            tags,
            uri_tag,
            request_time,
            response_time,
            &ctx.ask,
            tx,
        )
        .map(Some);
    }
    if parts.status.is_server_error() {
        let status = parts.status;
        let _ = tx.send(Ok(pass_on(&config, parts, CacheBody::inner(body))));
        return Err(Box::new(LoadFailed::ServerError(status)));
    }
    let plan = match config.plan(parts.status, &parts.headers, request_time, response_time) {
        Ok(plan) => plan,
        Err(why) => {
            let _ = tx.send(Ok(pass_on(&config, parts, CacheBody::inner(body))));
            return Err(Box::new(NotStored::new(why)));
        }
    };
    // This cache's own targeted field has been read: never passed on.
    if let Some(own) = &config.own_targeted {
        parts.headers.remove(own);
    }
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
            // own insertion (which would grow the cloned map). Not for
            // statuses without a body.
            if !parts.headers.contains_key(header::CONTENT_LENGTH)
                && !parts.status.is_informational()
                && parts.status != StatusCode::NO_CONTENT
                && parts.status != StatusCode::NOT_MODIFIED
            {
                parts.headers.insert(
                    header::CONTENT_LENGTH,
                    number_value(u64::try_from(bytes.len()).unwrap_or(u64::MAX)),
                );
            }
            // `plan` checked the count: this cannot fail (and if it did, the
            // caller would get an error response, not a panic).
            let cached = CachedResponse::new(parts.status, parts.headers, bytes, etag)
                .map_err(|e| -> BoxError { Box::new(e) })?;
            store(&config, cached, plan, tags, ctx, tx).await
        }
    }
}

/// The origin's response as it is, for the caller that led the load, less
/// this cache's own targeted field (meant for it alone).
fn pass_on<B>(config: &Config, mut parts: http::response::Parts, body: B) -> Response<B> {
    if let Some(own) = &config.own_targeted {
        parts.headers.remove(own);
    }
    Response::from_parts(parts, body)
}

/// A response the cache built itself (from a stored one) for the caller
/// that led a load: served as it is, its `x-cache` and `Cache-Status` set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Built;

/// The entry for a storable response, by the load's mode (RFC 9111 4.1).
async fn store<ResBody, E>(
    config: &Config,
    cached: CachedResponse,
    plan: Plan,
    tags: Vec<String>,
    ctx: LoadCtx,
    tx: oneshot::Sender<Delivered<ResBody, E>>,
) -> Result<Option<Entry<CachedResponse>>, BoxError>
where
    ResBody: Body<Data = Bytes>,
{
    let varies = !plan.variants.is_empty();
    let uri_tag = (ctx.tag_uri || varies).then(|| ctx.uri_tag.clone());
    match ctx.mode {
        Mode::Primary { .. } if !varies => Ok(Some(entry(cached, plan, tags, uri_tag))),
        Mode::Primary { uri, headers } => {
            // The response under the variant's key; a marker under this one.
            let variant_key = VariantKey {
                base: config.key(&http::Method::GET, &uri, &headers),
                names: &plan.variants,
            }
            .render();
            let marker = CachedResponse::variants_marker(plan.variants.clone());
            let mut pointer = Entry::new(marker).tags(uri_tag.clone());
            pointer.ttl = plan.ttl;
            pointer.grace = Some(plan.keep);
            let variant = entry(cached, plan, tags, uri_tag);
            let served = super::serve::respond::<ResBody>(
                &variant.value,
                tiercache_core::Outcome::Loaded,
                std::time::Duration::ZERO,
                ctx.ask.borrow(),
            );
            config.cache.insert_entry(&variant_key, variant).await;
            let mut served = served;
            served.extensions_mut().insert(Built);
            let _ = tx.send(Ok(served));
            Ok(Some(pointer))
        }
        Mode::Variant { names, .. } if names == plan.variants => {
            Ok(Some(entry(cached, plan, tags, uri_tag)))
        }
        Mode::Variant { primary, .. } => {
            // The origin's Vary changed: the marker goes, and the next
            // request stores under the new one.
            let served = super::serve::respond::<ResBody>(
                &cached,
                tiercache_core::Outcome::Loaded,
                std::time::Duration::ZERO,
                ctx.ask.borrow(),
            );
            config.cache.invalidate(&primary).await;
            let mut served = served;
            served.extensions_mut().insert(Built);
            let _ = tx.send(Ok(served));
            Err(Box::new(NotStored::new("the response's Vary changed")))
        }
    }
}

/// The engine entry for a stored response.
fn entry(
    cached: CachedResponse,
    plan: Plan,
    tags: Vec<String>,
    uri_tag: Option<String>,
) -> Entry<CachedResponse> {
    let cached = cached.with_meta(plan.meta).with_tags(tags.clone());
    let mut entry = Entry::new(cached).tags(tags).tags(uri_tag);
    entry.ttl = plan.ttl;
    entry.refresh_after = plan.refresh_after;
    entry.grace = Some(plan.keep);
    entry
}

/// Headers a 304 does not update in the stored response (RFC 9111 3.2):
/// they describe the stored body.
const KEEP_ON_FRESHEN: [header::HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::TRANSFER_ENCODING,
];

/// RFC 9111 4.3.4: a 304 to the cache's conditional request. The stored
/// response's headers are updated with the 304's, its freshness computed
/// anew, and it is stored again with its body.
#[allow(clippy::too_many_arguments)]
fn freshen<ResBody, E>(
    config: &Config,
    old: &CachedResponse,
    fresh: &HeaderMap,
    tags: Vec<String>,
    uri_tag: Option<String>,
    request_time: SystemTime,
    response_time: SystemTime,
    ask: &AskOwned,
    tx: oneshot::Sender<Delivered<ResBody, E>>,
) -> Result<Entry<CachedResponse>, BoxError>
where
    ResBody: Body<Data = Bytes>,
{
    metrics::counter!(
        "tiercache_http_revalidated_total",
        "namespace" => config.cache.namespace().to_owned()
    )
    .increment(1);
    let mut update = fresh.clone();
    let new_etag = strip_for_storage(&mut update);
    for name in &KEEP_ON_FRESHEN {
        update.remove(name);
    }
    let mut headers = old.headers().clone();
    for own in [
        super::serve::X_CACHE,
        header::AGE,
        super::response::CACHE_STATUS,
        header::ETAG,
    ] {
        headers.remove(own);
    }
    for name in update.keys() {
        headers.remove(name);
    }
    for (name, value) in &update {
        headers.append(name.clone(), value.clone());
    }
    // Freshness from the merged fields, with the 304's own Age.
    let mut judged = headers.clone();
    if let Some(age) = fresh.get(header::AGE) {
        judged.insert(header::AGE, age.clone());
    }
    let plan = config.plan(old.status(), &judged, request_time, response_time);
    if let Some(own) = &config.own_targeted {
        headers.remove(own);
    }
    let etag = new_etag.or_else(|| old.meta().origin_etag.then(|| old.etag().clone()));
    // Tags of the stored response stay unless the 304 names new ones.
    let tags = if tags.is_empty() {
        old.tags().to_vec()
    } else {
        tags
    };
    let cached = CachedResponse::new(old.status(), headers, old.body().clone(), etag)
        .map_err(|e| -> BoxError { Box::new(e) })?;
    // RFC 9211: the stale response was validated with the origin.
    let revalidated = |cached: &CachedResponse| {
        let mut resp = super::serve::respond::<ResBody>(
            cached,
            tiercache_core::Outcome::Loaded,
            std::time::Duration::ZERO,
            ask.borrow(),
        );
        super::serve::set_status(&mut resp, cached, super::serve::STATUS_REVALIDATED);
        resp.extensions_mut().insert(Built);
        resp
    };
    match plan {
        Ok(plan) => {
            let e = entry(cached, plan, tags, uri_tag);
            let _ = tx.send(Ok(revalidated(&e.value)));
            Ok(e)
        }
        Err(why) => {
            // Good to answer this request with, not to store.
            let _ = tx.send(Ok(revalidated(&cached)));
            Err(Box::new(NotStored::new(why)))
        }
    }
}

impl Config {
    /// A response not stored because its tags cannot be recorded exactly:
    /// counted, and logged at most once per interval.
    pub(crate) fn tags_rejected(&self, e: &TagError) {
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
}
