//! The rule suite of the HTTP and generic layers, run against any shared tier
//! and bus: `tests/embedded.rs` (in-process) and `tests/redis.rs` (a real
//! redis-server, and NATS where available).
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tiercache_core::backend::{Bus, InProcessBus, InProcessSharedTier, SharedTier};
use tiercache_core::{Cache, CacheBuilder};
use tiercache_tower::{CacheHandle, CacheLayer, CachedResponse, HttpCacheLayer, ResponseCodec};
use tower::{Service, ServiceExt};

pub mod rfc;

/// Where the caches of a test live: a shared tier and a bus.
#[derive(Clone)]
pub struct Env {
    pub tier: Arc<dyn SharedTier>,
    pub bus: Arc<dyn Bus>,
}

impl Env {
    /// The in-process shared tier and bus, fresh for one test.
    pub fn embedded() -> Self {
        Self {
            tier: Arc::new(InProcessSharedTier::default()),
            bus: Arc::new(InProcessBus::new()),
        }
    }

    /// A namespace no other test uses (tests may share a Redis server).
    pub fn namespace(name: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let mut name: String = name.chars().take(40).collect();
        name = name.replace('_', "-");
        format!("{name}-{nanos:x}-{n}")
    }

    pub fn builder<V>(&self, ns: &str) -> CacheBuilder<String, V>
    where
        V: Send + Sync + 'static,
    {
        Cache::builder(ns.to_owned())
            .shared_tier_arc(Arc::clone(&self.tier))
            .bus_arc(Arc::clone(&self.bus))
    }

    /// An HTTP response cache in namespace `ns`, its local tier trusted.
    pub async fn http_cache_in(
        &self,
        ns: &str,
        f: impl FnOnce(CacheBuilder<String, CachedResponse>) -> CacheBuilder<String, CachedResponse>,
    ) -> Cache<String, CachedResponse> {
        let cache = f(self.builder(ns)).build_with_codec(ResponseCodec).unwrap();
        trusted(&cache).await;
        cache
    }

    pub async fn http_cache(&self, name: &str) -> Cache<String, CachedResponse> {
        self.http_cache_in(&Self::namespace(name), |b| b).await
    }
}

/// Waits until the cache hears its bus (until then local fills are capped).
pub async fn trusted<V>(cache: &Cache<String, V>)
where
    V: Send + Sync + 'static,
{
    for _ in 0..200 {
        if cache.local_trusted() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Origin calls per route.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<HashMap<String, usize>>>);

impl Calls {
    pub fn bump(&self, name: &str) -> usize {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(name.to_owned()).or_default();
        *n += 1;
        *n
    }

    pub fn get(&self, name: &str) -> usize {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

async fn plain(State(calls): State<Calls>) -> impl IntoResponse {
    let n = calls.bump("plain");
    ([("x-cache-tags", "plain, all")], format!("plain {n}"))
}

async fn post_plain(State(calls): State<Calls>) -> impl IntoResponse {
    let n = calls.bump("post");
    ([("x-cache-tags", "posted")], format!("posted {n}"))
}

async fn item(State(calls): State<Calls>, Path(id): Path<u32>) -> impl IntoResponse {
    let n = calls.bump(&format!("item{id}"));
    (
        [("x-cache-tags", format!("items item:{id}"))],
        format!("item {id} v{n}"),
    )
}

async fn update_item(Path(id): Path<u32>, cache: CacheHandle) -> StatusCode {
    cache.invalidate_tag(&format!("item:{id}")).await;
    StatusCode::NO_CONTENT
}

async fn cache_control(
    State(calls): State<Calls>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let v = q.get("v").cloned().unwrap_or_default();
    let n = calls.bump(&format!("cc:{v}"));
    ([(header::CACHE_CONTROL, v)], format!("cc {n}"))
}

async fn vary(
    State(calls): State<Calls>,
    Path(v): Path<String>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let n = calls.bump(&format!("vary:{v}"));
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    ([(header::VARY, v)], format!("{accept} {n}"))
}

async fn cookie(State(calls): State<Calls>) -> impl IntoResponse {
    let n = calls.bump("cookie");
    ([(header::SET_COOKIE, "session=abc")], format!("cookie {n}"))
}

async fn status(State(calls): State<Calls>, Path(code): Path<u16>) -> Response<Body> {
    let n = calls.bump(&format!("status:{code}"));
    let status = StatusCode::from_u16(code).unwrap();
    (status, format!("status {code} {n}")).into_response()
}

/// `n` chunks of 1000 bytes, each filled with its index's letter.
pub fn big_body(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| std::iter::repeat_n(b'a' + (i % 26) as u8, 1000))
        .collect()
}

async fn big(State(calls): State<Calls>, Path(n): Path<usize>) -> Response<Body> {
    calls.bump(&format!("big:{n}"));
    let chunks: Vec<Result<Bytes, Infallible>> = (0..n)
        .map(|i| Ok(Bytes::from(vec![b'a' + (i % 26) as u8; 1000])))
        .collect();
    Response::new(Body::from_stream(futures::stream::iter(chunks)))
}

async fn conditional(State(calls): State<Calls>, headers: HeaderMap) -> impl IntoResponse {
    let n = calls.bump("etag");
    if headers.contains_key(header::IF_NONE_MATCH) {
        calls.bump("etag:conditional-reached-origin");
    }
    format!("etag body {n}")
}

async fn flaky(State(calls): State<Calls>) -> Response<Body> {
    let n = calls.bump("flaky");
    if n == 1 {
        "fresh".into_response()
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response()
    }
}

async fn slow(State(calls): State<Calls>) -> impl IntoResponse {
    let n = calls.bump("slow");
    tokio::time::sleep(Duration::from_millis(100)).await;
    format!("slow {n}")
}

async fn private_slow(State(calls): State<Calls>) -> impl IntoResponse {
    let n = calls.bump("private");
    tokio::time::sleep(Duration::from_millis(50)).await;
    ([(header::CACHE_CONTROL, "private")], format!("private {n}"))
}

/// `n` values of one header (an origin can send more than `http`'s map
/// limit of distinct entries: repeated values do not count toward it).
async fn many(State(calls): State<Calls>, Path(n): Path<usize>) -> Response<Body> {
    let c = calls.bump(&format!("many:{n}"));
    let mut resp = format!("many {c}").into_response();
    for i in 0..n {
        resp.headers_mut().append("x-many", i.into());
    }
    resp
}

/// A response tagged with the raw bytes of the (percent-decoded) path
/// segment: `/tagged/products%20category%3Acaf%C3%A9` sends
/// `x-cache-tags: products category:café` in UTF-8.
async fn tagged(State(calls): State<Calls>, Path(tags): Path<String>) -> Response<Body> {
    let n = calls.bump(&format!("tagged:{tags}"));
    let mut resp = format!("tagged {n}").into_response();
    resp.headers_mut().insert(
        "x-cache-tags",
        header::HeaderValue::from_bytes(tags.as_bytes()).unwrap(),
    );
    resp
}

/// A tag of `n` bytes.
async fn long_tag(State(calls): State<Calls>, Path(n): Path<usize>) -> Response<Body> {
    let c = calls.bump(&format!("longtag:{n}"));
    let mut resp = format!("longtag {c}").into_response();
    resp.headers_mut().insert(
        "x-cache-tags",
        header::HeaderValue::from_str(&"t".repeat(n)).unwrap(),
    );
    resp
}

/// A tags header that is not UTF-8.
async fn bad_tags(State(calls): State<Calls>) -> Response<Body> {
    let n = calls.bump("badtags");
    let mut resp = format!("badtags {n}").into_response();
    resp.headers_mut().insert(
        "x-cache-tags",
        header::HeaderValue::from_bytes(b"ok \xff").unwrap(),
    );
    resp
}

async fn planted(State(calls): State<Calls>) -> impl IntoResponse {
    format!("origin {}", calls.bump("planted"))
}

/// The test app with `layer` on every route.
pub fn router(layer: HttpCacheLayer, calls: &Calls) -> Router {
    Router::new()
        .route("/plain", routing::get(plain).post(post_plain))
        .route("/items/{id}", routing::get(item).put(update_item))
        .route("/cc", routing::get(cache_control))
        .route("/vary/{v}", routing::get(vary))
        .route("/cookie", routing::get(cookie))
        .route("/status/{code}", routing::get(status))
        .route("/big/{n}", routing::get(big))
        .route("/etag", routing::get(conditional))
        .route("/flaky", routing::get(flaky))
        .route("/slow", routing::get(slow))
        .route("/private", routing::get(private_slow))
        .route("/many/{n}", routing::get(many))
        .route("/tagged/{tags}", routing::get(tagged))
        .route("/badtags", routing::get(bad_tags))
        .route("/longtag/{n}", routing::get(long_tag))
        .route("/planted", routing::get(planted))
        .layer(layer)
        .with_state(calls.clone())
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .map_or("", |v| v.to_str().unwrap())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub fn req(method: &str, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap()
}

pub fn req_with(uri: &str, name: &str, value: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .header(name, value)
        .body(Body::empty())
        .unwrap()
}

pub async fn get(app: &Router, uri: &str) -> Answer {
    send(app, req("GET", uri)).await
}

// ---------------------------------------------------------------- the rules

pub async fn hit_miss_and_age(env: Env) {
    let calls = Calls::default();
    let app = router(HttpCacheLayer::new(env.http_cache("hit").await), &calls);
    let first = get(&app, "/plain").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.x_cache(), "miss");
    assert_eq!(first.text(), "plain 1");
    assert_eq!(first.header("age"), Some("0"));
    assert!(
        first.header("x-cache-tags").is_none(),
        "tags header stripped"
    );
    assert_eq!(
        first.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = get(&app, "/plain").await;
    assert_eq!(second.x_cache(), "hit");
    assert_eq!(second.text(), "plain 1");
    let age: u64 = second.header("age").unwrap().parse().unwrap();
    assert!((1..5).contains(&age), "age {age}");
    assert_eq!(second.header("etag"), first.header("etag"));
    assert!(second.header("x-cache-tags").is_none());
    // The stored response carries its length: exactly the body served.
    let len = second.body.len().to_string();
    assert_eq!(second.header("content-length"), Some(len.as_str()));
    assert_eq!(second.headers.get_all("content-length").iter().count(), 1);
    assert_eq!(calls.get("plain"), 1);
}

pub async fn etag_and_304(env: Env) {
    let calls = Calls::default();
    let app = router(HttpCacheLayer::new(env.http_cache("etag").await), &calls);
    // A conditional request on a miss is forwarded as it is (RFC 9111
    // 4.3.1); the origin's full answer is stored.
    let first = send(&app, req_with("/etag", "if-none-match", "\"nope\"")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "etag body 1");
    assert_eq!(calls.get("etag:conditional-reached-origin"), 1);
    let etag = first.header("etag").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 34,
        "{etag}"
    );
    let not_modified = send(&app, req_with("/etag", "if-none-match", &etag)).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    assert_eq!(not_modified.x_cache(), "hit");
    let weak = send(
        &app,
        req_with("/etag", "if-none-match", &format!("W/{etag}")),
    )
    .await;
    assert_eq!(weak.status, StatusCode::NOT_MODIFIED);
    let other = send(&app, req_with("/etag", "if-none-match", "\"other\"")).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.text(), "etag body 1");
    assert_eq!(calls.get("etag"), 1);
}

pub async fn vary_configured(env: Env) {
    let calls = Calls::default();
    let layer = HttpCacheLayer::new(env.http_cache("vary").await).vary([header::ACCEPT]);
    let handle = layer.handle();
    let app = router(layer, &calls);
    let json = || req_with("/vary/accept", "accept", "application/json");
    let html = || req_with("/vary/accept", "accept", "text/html");
    assert_eq!(
        handle.key_for(&json()),
        "GET /vary/accept |accept=application/json"
    );
    let a = send(&app, json()).await;
    assert_eq!(
        (a.x_cache(), a.text().as_str()),
        ("miss", "application/json 1")
    );
    let b = send(&app, html()).await;
    assert_eq!((b.x_cache(), b.text().as_str()), ("miss", "text/html 2"));
    let a2 = send(&app, json()).await;
    assert_eq!(
        (a2.x_cache(), a2.text().as_str()),
        ("hit", "application/json 1")
    );
    let b2 = send(&app, html()).await;
    assert_eq!((b2.x_cache(), b2.text().as_str()), ("hit", "text/html 2"));
    assert_eq!(b2.header("vary"), Some("accept"));
    assert_eq!(calls.get("vary:accept"), 2);
}

pub async fn vary_unconfigured_and_star(env: Env) {
    let calls = Calls::default();
    let app = router(
        HttpCacheLayer::new(env.http_cache("vary-star").await).vary([header::ACCEPT]),
        &calls,
    );
    // `Vary: *`: never reused.
    for _ in 0..3 {
        let a = get(&app, "/vary/*").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.x_cache(), "miss");
    }
    assert_eq!(calls.get("vary:*"), 3);
    // A header not configured: stored per variant of it (RFC 9111 4.1),
    // never served to a request with another value.
    for (path, name, count) in [
        (
            "/vary/accept-language",
            "accept-language",
            "vary:accept-language",
        ),
        ("/vary/accept,%20cookie", "cookie", "vary:accept, cookie"),
    ] {
        assert_eq!(get(&app, path).await.x_cache(), "miss", "{path}");
        assert_eq!(get(&app, path).await.x_cache(), "hit", "{path}");
        let fr = send(&app, req_with(path, name, "fr")).await;
        assert_eq!(fr.x_cache(), "miss", "{path} fr");
        let fr = send(&app, req_with(path, name, "fr")).await;
        assert_eq!(fr.x_cache(), "hit", "{path} fr");
        let de = send(&app, req_with(path, name, "de")).await;
        assert_eq!(de.x_cache(), "miss", "{path} de");
        assert_eq!(get(&app, path).await.x_cache(), "hit", "{path} without");
        assert_eq!(calls.get(count), 3, "{path}");
    }
}

pub async fn response_cache_control(env: Env) {
    let calls = Calls::default();
    let app = router(HttpCacheLayer::new(env.http_cache("cc").await), &calls);
    for v in [
        "no-store",
        "private",
        "no-cache",
        "public,%20max-age=0",
        "private=%22x%22",
    ] {
        for _ in 0..2 {
            let a = get(&app, &format!("/cc?v={v}")).await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.x_cache(), "miss", "{v}");
        }
        let v = v.replace("%20", " ").replace("%22", "\"");
        assert_eq!(calls.get(&format!("cc:{v}")), 2, "{v}");
    }
    let cacheable = get(&app, "/cc?v=public").await;
    assert_eq!(cacheable.x_cache(), "miss");
    assert_eq!(get(&app, "/cc?v=public").await.x_cache(), "hit");
}

pub async fn max_age_is_the_ttl(env: Env) {
    let calls = Calls::default();
    let ns = Env::namespace("max-age");
    // The cache's own TTL is long: only the response's max-age can expire it.
    let cache = env
        .http_cache_in(&ns, |b| b.ttl(Duration::from_secs(600)).ttl_jitter(0.0))
        .await;
    let app = router(HttpCacheLayer::new(cache), &calls);
    for uri in ["/cc?v=max-age=1", "/cc?v=max-age=600,%20s-maxage=1"] {
        assert_eq!(get(&app, uri).await.x_cache(), "miss");
        assert_eq!(get(&app, uri).await.x_cache(), "hit");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let again = get(&app, uri).await;
        assert_eq!(again.x_cache(), "miss", "{uri} expired after its max-age");
        assert_eq!(again.text(), "cc 2");
    }
    // Without max-age the cache's TTL applies: still there.
    assert_eq!(get(&app, "/cc?v=public").await.x_cache(), "miss");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(get(&app, "/cc?v=public").await.x_cache(), "hit");
}

pub async fn set_cookie_not_cached(env: Env) {
    let calls = Calls::default();
    let cache = env.http_cache("cookie").await;
    let app = router(HttpCacheLayer::new(cache.clone()), &calls);
    for _ in 0..3 {
        let a = get(&app, "/cookie").await;
        assert_eq!(a.x_cache(), "miss");
        assert_eq!(a.header("set-cookie"), Some("session=abc"));
    }
    assert_eq!(calls.get("cookie"), 3);
    // Not storing a response is not a failed load.
    let stats = cache.stats();
    assert_eq!(stats.not_stored, 3);
    assert_eq!(stats.load_errors, 0);
}

pub async fn methods(env: Env) {
    let calls = Calls::default();
    let app = router(HttpCacheLayer::new(env.http_cache("methods").await), &calls);
    for i in 1..=3 {
        let a = send(&app, req("POST", "/plain")).await;
        assert_eq!(a.text(), format!("posted {i}"));
        assert!(a.header("x-cache").is_none(), "POST is not looked up");
        assert!(a.header("x-cache-tags").is_none(), "tags stripped on POST");
    }
    // HEAD is answered from a stored GET; without one it goes to the
    // origin and nothing is stored (no validator from an empty body).
    let h1 = send(&app, req("HEAD", "/plain")).await;
    assert_eq!(h1.x_cache(), "miss");
    assert!(h1.body.is_empty());
    let h2 = send(&app, req("HEAD", "/plain")).await;
    assert_eq!(h2.x_cache(), "miss");
    let g = get(&app, "/plain").await;
    assert_eq!(g.x_cache(), "miss");
    assert_eq!(get(&app, "/plain").await.x_cache(), "hit");
    let h3 = send(&app, req("HEAD", "/plain")).await;
    assert_eq!(h3.x_cache(), "hit");
    assert!(h3.body.is_empty());
    assert_eq!(h3.header("etag"), g.header("etag"), "the GET's validator");
    assert_eq!(h3.header("content-length"), g.header("content-length"));
    assert_eq!(calls.get("plain"), 3);
    // Only GET configured: HEAD passes through.
    let calls = Calls::default();
    let app = router(
        HttpCacheLayer::new(env.http_cache("methods-get").await).methods([http::Method::GET]),
        &calls,
    );
    assert!(
        send(&app, req("HEAD", "/plain"))
            .await
            .header("x-cache")
            .is_none()
    );
    // Requests with credentials pass through unless allowed.
    let auth = || req_with("/plain", "authorization", "Bearer x");
    assert!(send(&app, auth()).await.header("x-cache").is_none());
    assert!(send(&app, auth()).await.header("x-cache").is_none());
    assert_eq!(calls.get("plain"), 3);
}

pub async fn statuses_and_negatives(env: Env) {
    let calls = Calls::default();
    let ns = Env::namespace("statuses");
    let cache = env
        .http_cache_in(&ns, |b| b.negative_jitter(0.0).ttl_jitter(0.0))
        .await;
    let app = router(
        HttpCacheLayer::new(cache).negative_ttl(Duration::from_secs(1)),
        &calls,
    );
    for code in [200u16, 203, 204, 301] {
        let uri = format!("/status/{code}");
        let a = get(&app, &uri).await;
        assert_eq!((a.status.as_u16(), a.x_cache()), (code, "miss"));
        let b = get(&app, &uri).await;
        assert_eq!((b.status.as_u16(), b.x_cache()), (code, "hit"), "{code}");
        assert_eq!(b.body, a.body);
    }
    for code in [201u16, 302, 400, 403, 500, 503] {
        let uri = format!("/status/{code}");
        for _ in 0..2 {
            let a = get(&app, &uri).await;
            assert_eq!((a.status.as_u16(), a.x_cache()), (code, "miss"));
        }
        assert_eq!(calls.get(&format!("status:{code}")), 2, "{code}");
    }
    // 404 and 410: the response itself, cached for the negative TTL.
    for code in [404u16, 410] {
        let uri = format!("/status/{code}");
        assert_eq!(get(&app, &uri).await.x_cache(), "miss");
        let hit = get(&app, &uri).await;
        assert_eq!((hit.status.as_u16(), hit.x_cache()), (code, "hit"));
        assert_eq!(hit.text(), format!("status {code} 1"));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for code in [404u16, 410] {
        let again = get(&app, &format!("/status/{code}")).await;
        assert_eq!(again.x_cache(), "miss", "{code} negative expired");
        assert_eq!(again.text(), format!("status {code} 2"));
    }
    // Positives are still there (the cache's TTL).
    assert_eq!(get(&app, "/status/200").await.x_cache(), "hit");
}

pub async fn tags_and_invalidation(env: Env) {
    let calls = Calls::default();
    let layer = HttpCacheLayer::new(env.http_cache("tags").await);
    let handle = layer.handle();
    let app = router(layer, &calls);
    for id in [1, 2] {
        let a = get(&app, &format!("/items/{id}")).await;
        assert!(a.header("x-cache-tags").is_none());
        assert_eq!(get(&app, &format!("/items/{id}")).await.x_cache(), "hit");
    }
    // A write handler invalidates one item's tag through the extracted handle.
    let put = send(&app, req("PUT", "/items/1")).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let one = get(&app, "/items/1").await;
    assert_eq!((one.x_cache(), one.text().as_str()), ("miss", "item 1 v2"));
    assert_eq!(get(&app, "/items/2").await.x_cache(), "hit");
    // A tag shared by both.
    handle.invalidate_tag("items").await;
    assert_eq!(get(&app, "/items/1").await.x_cache(), "miss");
    assert_eq!(get(&app, "/items/2").await.x_cache(), "miss");
    // Several tags at once; keys by URI.
    assert_eq!(get(&app, "/plain").await.x_cache(), "miss");
    handle.invalidate_tags(&["nothing", "all"]).await;
    assert_eq!(get(&app, "/plain").await.x_cache(), "miss");
    handle.invalidate_uri(&"/plain".parse().unwrap()).await;
    assert_eq!(get(&app, "/plain").await.x_cache(), "miss");
    handle.invalidate_key("GET /plain").await;
    assert_eq!(get(&app, "/plain").await.x_cache(), "miss");
    assert_eq!(get(&app, "/plain").await.x_cache(), "hit");
}

pub async fn large_body_streams_through(env: Env) {
    let calls = Calls::default();
    let app = router(
        HttpCacheLayer::new(env.http_cache("big").await).max_body_size(4500),
        &calls,
    );
    for _ in 0..2 {
        let a = get(&app, "/big/10").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.x_cache(), "miss");
        assert_eq!(a.body.len(), 10_000);
        assert_eq!(a.body.as_ref(), big_body(10).as_slice(), "no byte lost");
    }
    assert_eq!(calls.get("big:10"), 2);
    // Within the limit: cached.
    let small = get(&app, "/big/4").await;
    assert_eq!(small.body.as_ref(), big_body(4).as_slice());
    let again = get(&app, "/big/4").await;
    assert_eq!(again.x_cache(), "hit");
    assert_eq!(again.body.as_ref(), big_body(4).as_slice());
    assert_eq!(calls.get("big:4"), 1);
}

pub async fn request_no_cache(env: Env) {
    let calls = Calls::default();
    let ignored = router(HttpCacheLayer::new(env.http_cache("nc-off").await), &calls);
    let no_cache = || req_with("/plain", "cache-control", "no-cache");
    assert_eq!(get(&ignored, "/plain").await.x_cache(), "miss");
    assert_eq!(send(&ignored, no_cache()).await.x_cache(), "hit");
    assert_eq!(calls.get("plain"), 1);

    let calls = Calls::default();
    let honored = router(
        HttpCacheLayer::new(env.http_cache("nc-on").await).honor_request_no_cache(true),
        &calls,
    );
    assert_eq!(get(&honored, "/plain").await.x_cache(), "miss");
    let reload = send(&honored, no_cache()).await;
    assert_eq!(
        (reload.x_cache(), reload.text().as_str()),
        ("miss", "plain 2")
    );
    let pragma = send(&honored, req_with("/plain", "pragma", "no-cache")).await;
    assert_eq!(
        (pragma.x_cache(), pragma.text().as_str()),
        ("miss", "plain 3")
    );
    let after = get(&honored, "/plain").await;
    assert_eq!((after.x_cache(), after.text().as_str()), ("hit", "plain 3"));
}

pub async fn singleflight(env: Env) {
    let calls = Calls::default();
    let app = router(HttpCacheLayer::new(env.http_cache("flight").await), &calls);
    let answers = futures::future::join_all((0..20).map(|_| {
        let app = app.clone();
        tokio::spawn(async move { get(&app, "/slow").await })
    }))
    .await;
    for a in answers {
        let a = a.unwrap();
        assert_eq!((a.status, a.text().as_str()), (StatusCode::OK, "slow 1"));
    }
    assert_eq!(calls.get("slow"), 1);
    // Responses that may not be stored: every waiter gets its own.
    let answers = futures::future::join_all((0..5).map(|_| {
        let app = app.clone();
        tokio::spawn(async move { get(&app, "/private").await })
    }))
    .await;
    let mut bodies: Vec<String> = answers.into_iter().map(|a| a.unwrap().text()).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 5, "{bodies:?}");
    assert_eq!(calls.get("private"), 5);
}

pub async fn stale_within_grace(env: Env) {
    let calls = Calls::default();
    let ns = Env::namespace("grace");
    let cache = env
        .http_cache_in(&ns, |b| {
            b.ttl(Duration::from_secs(1))
                .ttl_jitter(0.0)
                .grace(Duration::from_secs(60))
        })
        .await;
    let app = router(HttpCacheLayer::new(cache), &calls);
    let first = get(&app, "/flaky").await;
    assert_eq!((first.x_cache(), first.text().as_str()), ("miss", "fresh"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The origin answers 500: the stale copy stands in.
    let stale = get(&app, "/flaky").await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!((stale.x_cache(), stale.text().as_str()), ("stale", "fresh"));
    assert_eq!(calls.get("flaky"), 2);
}

pub async fn keys_and_sorted_query(env: Env) {
    let calls = Calls::default();
    let layer = HttpCacheLayer::new(env.http_cache("keys").await)
        .vary([header::ACCEPT])
        .sort_query(true);
    let handle = layer.handle();
    let app = router(layer, &calls);
    assert_eq!(
        handle.key_for(&req_with("/products/1?a=1", "accept", "application/json")),
        "GET /products/1?a=1 |accept=application/json"
    );
    assert_eq!(get(&app, "/status/200?b=2&a=1").await.x_cache(), "miss");
    assert_eq!(get(&app, "/status/200?a=1&b=2").await.x_cache(), "hit");
    assert_eq!(get(&app, "/status/200?a=1").await.x_cache(), "miss");
}

/// Two instances (each its own cache and router) on one shared tier and one
/// bus: a tag invalidated on one is dropped from the other's local tier.
pub async fn two_instances_share_invalidations(env: Env) {
    two_instances(env.clone(), env).await
}

/// [`two_instances_share_invalidations`] with each instance's own
/// connections (`env_a` and `env_b` reach the same shared tier and bus).
pub async fn two_instances(env_a: Env, env_b: Env) {
    let ns = Env::namespace("two");
    let calls = Calls::default();
    let a = router(
        HttpCacheLayer::new(env_a.http_cache_in(&ns, |b| b).await),
        &calls,
    );
    let b = router(
        HttpCacheLayer::new(env_b.http_cache_in(&ns, |b| b).await),
        &calls,
    );
    assert_eq!(get(&a, "/items/7").await.x_cache(), "miss");
    // B finds it in the shared tier, then in its local tier.
    assert_eq!(get(&b, "/items/7").await.x_cache(), "hit");
    assert_eq!(get(&b, "/items/7").await.x_cache(), "hit");
    assert_eq!(calls.get("item7"), 1);
    // A write on A.
    assert_eq!(
        send(&a, req("PUT", "/items/7")).await.status,
        StatusCode::NO_CONTENT
    );
    let mut dropped = false;
    for _ in 0..100 {
        let answer = get(&b, "/items/7").await;
        if answer.text() != "item 7 v1" {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dropped, "B still serves the invalidated response");
    assert_eq!(get(&a, "/items/7").await.x_cache(), "hit");
    assert_eq!(calls.get("item7"), 2);
}

// ------------------------------------------------- non-axum HTTP services

#[derive(Debug)]
pub struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

/// A plain tower HTTP service whose first call fails: the error reaches the
/// caller and nothing is cached.
pub async fn http_service_errors_not_cached(env: Env) {
    let calls = Calls::default();
    let c = calls.clone();
    let svc = tower::service_fn(move |_req: Request<Body>| {
        let n = c.bump("svc");
        async move {
            if n == 1 {
                Err(Boom)
            } else {
                Ok(Response::new(http_body_util::Full::new(Bytes::from(
                    format!("ok {n}"),
                ))))
            }
        }
    });
    let mut svc = tower::ServiceBuilder::new()
        .layer(HttpCacheLayer::new(env.http_cache("svc-err").await))
        .service(svc);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(req("GET", "/x"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "boom");
    let ok = svc
        .ready()
        .await
        .unwrap()
        .call(req("GET", "/x"))
        .await
        .unwrap();
    assert_eq!(ok.headers()["x-cache"], "miss");
    assert_eq!(ok.into_body().collect().await.unwrap().to_bytes(), "ok 2");
    let hit = svc
        .ready()
        .await
        .unwrap()
        .call(req("GET", "/x"))
        .await
        .unwrap();
    assert_eq!(hit.headers()["x-cache"], "hit");
    assert_eq!(hit.into_body().collect().await.unwrap().to_bytes(), "ok 2");
    assert_eq!(calls.get("svc"), 2);
}

/// A service that panics if called without a successful `poll_ready` on
/// that very instance (clones start unready).
#[derive(Debug)]
pub struct MustBeReady<S> {
    inner: S,
    ready: bool,
}

impl<S> MustBeReady<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            ready: false,
        }
    }
}

impl<S: Clone> Clone for MustBeReady<S> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone())
    }
}

impl<S: Service<R>, R> Service<R> for MustBeReady<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        let p = self.inner.poll_ready(cx);
        if p.is_ready() {
            self.ready = true;
        }
        p
    }

    fn call(&mut self, req: R) -> S::Future {
        assert!(self.ready, "called without poll_ready");
        self.ready = false;
        self.inner.call(req)
    }
}

pub async fn http_poll_ready_honoured(env: Env) {
    let calls = Calls::default();
    let c = calls.clone();
    let svc = MustBeReady::new(tower::service_fn(move |r: Request<Body>| {
        let n = c.bump(r.uri().path());
        async move { Ok::<_, Infallible>(Response::new(Body::from(format!("n{n}")))) }
    }));
    let mut svc = tower::ServiceBuilder::new()
        .layer(HttpCacheLayer::new(env.http_cache("ready").await))
        .service(svc);
    for path in ["/a", "/a", "/b", "/a"] {
        svc.ready()
            .await
            .unwrap()
            .call(req("GET", path))
            .await
            .unwrap();
    }
    svc.ready()
        .await
        .unwrap()
        .call(req("POST", "/a"))
        .await
        .unwrap();
    assert_eq!(calls.get("/a"), 2);
    assert_eq!(calls.get("/b"), 1);
}

// ------------------------------------------------------ the generic layer

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Product {
    pub id: u32,
    pub name: Option<String>,
}

#[derive(Debug)]
pub struct DbDown(pub u32);

impl std::fmt::Display for DbDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database down for {}", self.0)
    }
}

impl std::error::Error for DbDown {}

pub async fn generic_layer(env: Env) {
    let ns = Env::namespace("generic");
    let cache: Cache<String, Product> = env
        .builder(&ns)
        .negative_jitter(0.0)
        .ttl_jitter(0.0)
        .build()
        .unwrap();
    trusted(&cache).await;
    let calls = Calls::default();
    let c = calls.clone();
    // ids >= 100 do not exist; id 13 fails once.
    let origin = MustBeReady::new(tower::service_fn(move |id: u32| {
        let n = c.bump(&id.to_string());
        async move {
            if id == 13 && n == 1 {
                return Err(DbDown(id));
            }
            let name = (id < 100).then(|| format!("product {id} v{n}"));
            Ok(Product { id, name })
        }
    }));
    let layer = CacheLayer::new(cache.clone(), |id: &u32| {
        (*id != 0).then(|| format!("p:{id}"))
    })
    .tags(|p: &Product| vec![format!("product:{}", p.id), "products".into()])
    .negative(|p: &Product| p.name.is_none())
    .negative_ttl(Duration::from_secs(1));
    let mut svc = tower::ServiceBuilder::new().layer(layer).service(origin);
    let mut call = async |id: u32| svc.ready().await.unwrap().call(id).await;

    let p = call(1).await.unwrap();
    assert_eq!(p.name.as_deref(), Some("product 1 v1"));
    assert_eq!(call(1).await.unwrap(), p);
    assert_eq!(calls.get("1"), 1);
    // Tags.
    cache.invalidate_tag("product:1").await;
    assert_eq!(call(1).await.unwrap().name.as_deref(), Some("product 1 v2"));
    // Key None: bypass.
    call(0).await.unwrap();
    call(0).await.unwrap();
    assert_eq!(calls.get("0"), 2);
    // Errors: not cached, the caller gets the service's own error.
    let err = call(13).await.unwrap_err();
    assert!(err.downcast_ref::<DbDown>().is_some(), "{err}");
    assert_eq!(
        call(13).await.unwrap().name.as_deref(),
        Some("product 13 v2")
    );
    assert_eq!(
        call(13).await.unwrap().name.as_deref(),
        Some("product 13 v2")
    );
    // Negatives for the negative TTL only.
    assert_eq!(call(404).await.unwrap().name, None);
    assert_eq!(call(404).await.unwrap().name, None);
    assert_eq!(calls.get("404"), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    call(404).await.unwrap();
    assert_eq!(calls.get("404"), 2);
    assert_eq!(call(1).await.unwrap().name.as_deref(), Some("product 1 v2"));
    assert_eq!(calls.get("1"), 2);
}

pub async fn generic_singleflight_and_waiters_errors(env: Env) {
    let ns = Env::namespace("generic-flight");
    let cache: Cache<String, String> = env.builder(&ns).build().unwrap();
    trusted(&cache).await;
    let calls = Calls::default();
    let c = calls.clone();
    let origin = tower::service_fn(move |key: String| {
        let n = c.bump(&key);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if key == "bad" {
                Err(DbDown(n as u32))
            } else {
                Ok(format!("{key} {n}"))
            }
        }
    });
    let svc = tower::ServiceBuilder::new()
        .layer(CacheLayer::new(cache, |k: &String| Some(k.clone())))
        .service(origin);
    let run = |key: &'static str| {
        futures::future::join_all((0..10).map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(key.to_owned()).await })
        }))
    };
    for r in run("good").await {
        assert_eq!(r.unwrap().unwrap(), "good 1");
    }
    assert_eq!(calls.get("good"), 1);
    let results = run("bad").await;
    assert_eq!(calls.get("bad"), 1, "one call for every waiter");
    let mut own = 0;
    for r in results {
        let e = r.unwrap().unwrap_err();
        if e.downcast_ref::<DbDown>().is_some() {
            own += 1;
        } else {
            let e = e.downcast_ref::<tiercache_core::Error>().unwrap();
            assert!(e.to_string().contains("database down"), "{e}");
        }
    }
    assert_eq!(own, 1, "the leader gets the service's own error");
}

// ------------------------------------------- hardening (issue 11)

/// An instance of the same cache with its local tier off: every read goes
/// to the shared tier and decodes what is stored there.
async fn shared_only(env: &Env, ns: &str) -> Cache<String, CachedResponse> {
    env.http_cache_in(ns, |b| b.local_capacity(0)).await
}

/// An origin's `max-age` far past what a clock can add: the response is
/// stored (clamped) and every later read, on any instance, answers 200.
pub async fn origin_huge_max_age(env: Env) {
    let calls = Calls::default();
    let ns = Env::namespace("huge-max-age");
    let a = router(
        HttpCacheLayer::new(env.http_cache_in(&ns, |b| b).await),
        &calls,
    );
    let b = router(HttpCacheLayer::new(shared_only(&env, &ns).await), &calls);
    for v in [
        "max-age=99999999999",
        "max-age=18446744073709551615",
        "s-maxage=18446744073709551615",
        "max-age=99999999999999999999999999",
    ] {
        let uri = format!("/cc?v={v}");
        let first = get(&a, &uri).await;
        assert_eq!(first.status, StatusCode::OK, "{v}");
        assert_eq!(first.x_cache(), "miss", "{v}");
        for app in [&a, &b, &b] {
            let again = get(app, &uri).await;
            assert_eq!(again.status, StatusCode::OK, "{v}");
            assert_eq!(again.text(), first.text(), "{v}");
        }
    }
    // RFC 9111 1.2.2: a delta too large to represent is taken as the
    // largest one, not as 0.
    assert_eq!(calls.get("cc:max-age=99999999999999999999999999"), 1);
}

/// 32,769 values of one header: the response is served, not stored (and
/// so never read back into a map that would panic); a stored value with
/// that many fields is corrupt: deleted, and the request goes to the origin.
pub async fn many_header_values(env: Env) {
    let calls = Calls::default();
    let ns = Env::namespace("many-headers");
    let cache = env.http_cache_in(&ns, |b| b).await;
    let a = router(HttpCacheLayer::new(cache.clone()), &calls);
    let b = router(HttpCacheLayer::new(shared_only(&env, &ns).await), &calls);
    for app in [&a, &b, &a] {
        let r = get(app, "/many/32769").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers.get_all("x-many").iter().count(), 32_769);
    }
    assert_eq!(calls.get("many:32769"), 3, "not stored");
    // A modest count is stored as usual.
    assert_eq!(get(&a, "/many/10").await.x_cache(), "miss");
    assert_eq!(get(&b, "/many/10").await.x_cache(), "hit");
    // The bytes, planted in the shared tier under a URL's key.
    let sk = cache.key_format().storage_key("GET /planted");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let times = tiercache_core::fuzz_targets::envelope_format::Times {
        written_ms: now,
        soft_ms: now + 60_000,
        fresh_ms: now + 60_000,
        stale_ms: now + 60_000,
    };
    let mut poison = vec![0x01, 0x00, 0xc8, 0x00, 0x81, 0x80, 0x02];
    poison.extend(std::iter::repeat_n(0u8, 32_769));
    let bytes = tiercache_core::fuzz_targets::envelope_format::encode(
        false,
        times,
        &[],
        &poison,
        usize::MAX,
    )
    .unwrap();
    env.tier
        .set(&sk, Bytes::from(bytes), Duration::from_secs(60))
        .await
        .unwrap();
    let r = get(&b, "/planted").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "origin 1"));
    // Deleted: the origin's answer took its place.
    let r = get(&b, "/planted").await;
    assert_eq!((r.x_cache(), r.text().as_str()), ("hit", "origin 1"));
}

/// Tags in UTF-8 (raw or percent-encoded) are recorded exactly, so their
/// invalidation reaches the response; tags that cannot be recorded keep
/// the response out of the cache.
pub async fn tags_recorded_exactly_or_not_stored(env: Env) {
    let calls = Calls::default();
    let layer = HttpCacheLayer::new(env.http_cache("tags-exact").await);
    let handle = layer.handle();
    let app = router(layer, &calls);
    let raw = "/tagged/products%20category%3Acaf%C3%A9";
    let escaped = "/tagged/category%3Acaf%25C3%25A9";
    for uri in [raw, escaped] {
        assert_eq!(get(&app, uri).await.x_cache(), "miss");
        assert_eq!(get(&app, uri).await.x_cache(), "hit");
    }
    handle.invalidate_tag("category:café").await;
    for uri in [raw, escaped] {
        let again = get(&app, uri).await;
        assert_eq!(again.x_cache(), "miss", "{uri} invalidated by its tag");
        assert!(again.header("x-cache-tags").is_none());
    }
    // A tag that cannot be recorded: the response is served, never stored.
    for uri in ["/longtag/65536", "/tagged/bad%25zz", "/badtags"] {
        for _ in 0..2 {
            let r = get(&app, uri).await;
            assert_eq!(r.status, StatusCode::OK, "{uri}");
            assert_eq!(r.x_cache(), "miss", "{uri}");
            assert!(r.header("x-cache-tags").is_none());
        }
    }
    assert_eq!(calls.get("badtags"), 2);
    assert_eq!(calls.get("longtag:65536"), 2);
    // At the limit, stored.
    assert_eq!(get(&app, "/longtag/65535").await.x_cache(), "miss");
    assert_eq!(get(&app, "/longtag/65535").await.x_cache(), "hit");
    assert_eq!(calls.get("tagged:bad%zz"), 2);
}

/// A rule: an async test body taking the environment.
pub type Rule = fn(Env) -> BoxFuture<'static, ()>;

/// Calls `$m!(rule, rule, ...)` with every rule's name.
#[macro_export]
macro_rules! with_rules {
    ($m:ident) => {
        $m!(
            hit_miss_and_age,
            etag_and_304,
            vary_configured,
            vary_unconfigured_and_star,
            response_cache_control,
            max_age_is_the_ttl,
            set_cookie_not_cached,
            methods,
            statuses_and_negatives,
            tags_and_invalidation,
            large_body_streams_through,
            request_no_cache,
            singleflight,
            stale_within_grace,
            keys_and_sorted_query,
            two_instances_share_invalidations,
            http_service_errors_not_cached,
            http_poll_ready_honoured,
            generic_layer,
            generic_singleflight_and_waiters_errors,
            origin_huge_max_age,
            many_header_values,
            tags_recorded_exactly_or_not_stored
        );
    };
}

macro_rules! make_all {
    ($($name:ident),*) => {
        /// Every rule, by name.
        pub fn all() -> Vec<(&'static str, Rule)> {
            vec![$((
                stringify!($name),
                (|env: Env| -> BoxFuture<'static, ()> { Box::pin($name(env)) }) as Rule,
            )),*]
        }
    };
}

with_rules!(make_all);
