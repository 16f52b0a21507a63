//! Conformance of the HTTP layer to the caching RFCs (issue 12), written
//! from the RFC text: RFC 9111 (HTTP caching), RFC 9110 (conditional and
//! range requests), RFC 9211 (`Cache-Status`), RFC 9213 (targeted cache
//! control) and RFC 5861 (`stale-while-revalidate`, `stale-if-error`).
//!
//! One table, each case named by the section it checks: a scripted origin
//! (its responses in order, every request it receives recorded), the layer's
//! options, and steps (a request and what must come back: stored or not,
//! fresh or stale, which conditional headers reached the origin, the status
//! served). Every case has its own namespace, cache and layer; they all run
//! at once, and every failure is collected before the single assertion.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tiercache_core::CacheBuilder;
use tiercache_tower::{CachedResponse, HttpCacheLayer};
use tower::{Layer, Service, ServiceExt};

use super::{Answer, Boom, Env};

// ------------------------------------------------------------ the origin

/// One scripted origin response. Header values and the body may hold
/// tokens, resolved when the origin answers: `{now}`, `{now+N}`, `{now-N}`
/// (an IMF-fixdate N seconds from now), `{asctime+N}` (the same in the
/// obsolete asctime format) and `{req:name}` (the request's `name` header,
/// `-` when absent).
#[derive(Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    fail: bool,
}

/// A response with this status and body.
pub fn reply(status: u16, body: &'static str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body,
        fail: false,
    }
}

/// A 200 with this body.
pub fn ok(body: &'static str) -> Reply {
    reply(200, body)
}

/// A 304 with no body.
pub fn not_modified() -> Reply {
    reply(304, "")
}

/// The service fails (an `Err`, no response at all).
pub fn fail() -> Reply {
    Reply {
        fail: true,
        ..reply(0, "")
    }
}

impl Reply {
    /// Adds a header field line (repeat the name for several lines).
    pub fn h(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds `Cache-Control`.
    pub fn cc(self, value: &'static str) -> Self {
        self.h("cache-control", value)
    }
}

/// A request as the origin received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
}

/// Answers with its replies in order (the last one again once they run
/// out) and records every request.
#[derive(Clone)]
struct Origin {
    replies: Arc<Vec<Reply>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Origin {
    fn new(replies: Vec<Reply>) -> Self {
        Self {
            replies: Arc::new(replies),
            seen: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn since(&self, n: usize) -> Vec<Seen> {
        self.seen.lock().unwrap()[n..].to_vec()
    }

    fn answer(&self, req: Request<Body>) -> Result<Response<Full<Bytes>>, Boom> {
        let (parts, _) = req.into_parts();
        let n = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(Seen {
                method: parts.method.clone(),
                uri: parts.uri.to_string(),
                headers: parts.headers.clone(),
            });
            seen.len() - 1
        };
        let r = self
            .replies
            .get(n)
            .or(self.replies.last())
            .cloned()
            .unwrap_or_else(|| ok("no reply scripted"));
        if r.fail {
            return Err(Boom);
        }
        let now = SystemTime::now();
        let body = if parts.method == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(resolve(r.body, now, &parts.headers))
        };
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = StatusCode::from_u16(r.status).unwrap();
        for (name, value) in r.headers {
            resp.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(&resolve(value, now, &parts.headers)).unwrap(),
            );
        }
        Ok(resp)
    }
}

/// `s` with its `{...}` tokens resolved (see [`Reply`]).
fn resolve(s: &str, now: SystemTime, req: &HeaderMap) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&token(&rest[open + 1..open + len], now, req));
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    out
}

fn token(t: &str, now: SystemTime, req: &HeaderMap) -> String {
    if let Some(name) = t.strip_prefix("req:") {
        let values: Vec<&str> = req
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        return if values.is_empty() {
            "-".into()
        } else {
            values.join(", ")
        };
    }
    let (asctime, offset) = if let Some(o) = t.strip_prefix("now") {
        (false, o)
    } else if let Some(o) = t.strip_prefix("asctime") {
        (true, o)
    } else {
        return format!("{{{t}}}");
    };
    let at = match offset.split_at_checked(1) {
        None => now,
        Some(("+", n)) => now + Duration::from_secs(n.parse().unwrap()),
        Some(("-", n)) => now - Duration::from_secs(n.parse().unwrap()),
        _ => panic!("bad token {t}"),
    };
    let imf = httpdate::fmt_http_date(at);
    if !asctime {
        return imf;
    }
    // "Sun, 06 Nov 1994 08:49:37 GMT" -> "Sun Nov  6 08:49:37 1994"
    let p: Vec<&str> = imf.split(' ').collect();
    let day: u32 = p[1].parse().unwrap();
    format!(
        "{} {} {day:>2} {} {}",
        p[0].trim_end_matches(','),
        p[2],
        p[4],
        p[3]
    )
}

// ------------------------------------------------------------ requests

/// A request of a step. Header values may hold the date tokens of
/// [`Reply`].
#[derive(Clone)]
pub struct Req {
    method: &'static str,
    uri: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

pub fn get(uri: &'static str) -> Req {
    method("GET", uri)
}

pub fn head(uri: &'static str) -> Req {
    method("HEAD", uri)
}

pub fn method(method: &'static str, uri: &'static str) -> Req {
    Req {
        method,
        uri,
        headers: Vec::new(),
    }
}

impl Req {
    pub fn h(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    fn build(&self) -> Request<Body> {
        let now = SystemTime::now();
        let empty = HeaderMap::new();
        let mut b = Request::builder().method(self.method).uri(self.uri);
        for (n, v) in &self.headers {
            b = b.header(*n, resolve(v, now, &empty));
        }
        b.body(Body::empty()).unwrap()
    }

    fn describe(&self) -> String {
        let mut s = format!("{} {}", self.method, self.uri);
        for (n, v) in &self.headers {
            let _ = write!(s, " [{n}: {v}]");
        }
        s
    }
}

// ------------------------------------------------------------ expectations

/// What a step's answer is checked with, beyond the fields of [`Expect`].
pub type Check = Arc<dyn Fn(&Result<Answer, String>) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
enum Sent {
    Method(&'static str),
    Eq(&'static str, &'static str),
    Absent(&'static str),
    Present(&'static str),
}

/// What must come back from a step (every field optional).
#[derive(Clone, Default)]
pub struct Expect {
    status: Option<u16>,
    body: Option<&'static str>,
    x_cache: Option<&'static str>,
    headers: Vec<(&'static str, Option<&'static str>)>,
    age: Option<u64>,
    calls: Option<usize>,
    sent: Vec<Sent>,
    error: bool,
    /// A response or the service's error, both fine (the checks decide).
    either: bool,
    checks: Vec<Check>,
}

pub fn expect() -> Expect {
    Expect::default()
}

impl Expect {
    pub fn status(mut self, s: u16) -> Self {
        self.status = Some(s);
        self
    }

    pub fn body(mut self, b: &'static str) -> Self {
        self.body = Some(b);
        self
    }

    /// `x-cache: hit` (stored and fresh, or served while revalidating).
    pub fn hit(mut self) -> Self {
        self.x_cache = Some("hit");
        self
    }

    /// `x-cache: miss` (the origin was asked).
    pub fn miss(mut self) -> Self {
        self.x_cache = Some("miss");
        self
    }

    /// `x-cache: stale` (a stale copy stood in for a failed origin).
    pub fn stale(mut self) -> Self {
        self.x_cache = Some("stale");
        self
    }

    /// A header with exactly this value (field lines joined with `, `).
    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, Some(value)));
        self
    }

    pub fn no_header(mut self, name: &'static str) -> Self {
        self.headers.push((name, None));
        self
    }

    pub fn cache_status(self, value: &'static str) -> Self {
        self.header("cache-status", value)
    }

    /// `Age`, within one second either way.
    pub fn age(mut self, secs: u64) -> Self {
        self.age = Some(secs);
        self
    }

    /// The origin's total calls once this step is done.
    pub fn calls(mut self, n: usize) -> Self {
        self.calls = Some(n);
        self
    }

    /// The last request that reached the origin during this step had this
    /// method.
    pub fn sent_method(mut self, m: &'static str) -> Self {
        self.sent.push(Sent::Method(m));
        self
    }

    /// ... and this header, with exactly this value.
    pub fn sent(mut self, name: &'static str, value: &'static str) -> Self {
        self.sent.push(Sent::Eq(name, value));
        self
    }

    /// ... and this header, with any value.
    pub fn sent_any(mut self, name: &'static str) -> Self {
        self.sent.push(Sent::Present(name));
        self
    }

    /// ... and not this header.
    pub fn not_sent(mut self, name: &'static str) -> Self {
        self.sent.push(Sent::Absent(name));
        self
    }

    /// The service's error reaches the caller.
    pub fn error(mut self) -> Self {
        self.error = true;
        self
    }

    /// The service's error or a response: the checks decide.
    pub fn either(mut self) -> Self {
        self.either = true;
        self
    }

    pub fn check(
        mut self,
        f: impl Fn(&Result<Answer, String>) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.checks.push(Arc::new(f));
        self
    }

    fn diff(&self, got: &Result<Answer, String>, new: &[Seen], calls: usize) -> Vec<String> {
        let mut d = Vec::new();
        if let Some(n) = self.calls
            && n != calls
        {
            d.push(format!("origin calls {calls}, expected {n}"));
        }
        if !self.sent.is_empty() {
            match new.last() {
                None => d.push("no request reached the origin, expected one".into()),
                Some(s) => {
                    for e in &self.sent {
                        let v = joined(&s.headers, sent_name(e));
                        match e {
                            Sent::Method(m) if s.method.as_str() != *m => {
                                d.push(format!("origin got a {} request, expected {m}", s.method));
                            }
                            Sent::Eq(n, want) if v.as_deref() != Some(*want) => {
                                d.push(format!("origin got {n}: {v:?}, expected {want:?}"));
                            }
                            Sent::Absent(n) if v.is_some() => {
                                d.push(format!("origin got {n}: {v:?}, expected none"));
                            }
                            Sent::Present(n) if v.is_none() => {
                                d.push(format!("origin got no {n}, expected one"));
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        for c in &self.checks {
            if let Err(e) = c(got) {
                d.push(e);
            }
        }
        let a = match (got, self.error || self.either) {
            (Err(_), true) => return d,
            (Ok(a), true) if self.either => a,
            (Ok(a), true) => {
                d.push(format!(
                    "a {} response, expected the service's error",
                    a.status
                ));
                return d;
            }
            (Err(e), false) => {
                d.push(format!("the service's error {e:?}, expected a response"));
                return d;
            }
            (Ok(a), false) => a,
        };
        if let Some(s) = self.status
            && a.status.as_u16() != s
        {
            d.push(format!("status {}, expected {s}", a.status.as_u16()));
        }
        if let Some(b) = self.body
            && a.body != b.as_bytes()
        {
            d.push(format!(
                "body {:?}, expected {b:?}",
                String::from_utf8_lossy(&a.body)
            ));
        }
        if let Some(x) = self.x_cache {
            let v = joined(&a.headers, "x-cache");
            if v.as_deref() != Some(x) {
                d.push(format!("x-cache {v:?}, expected {x:?}"));
            }
        }
        for (n, want) in &self.headers {
            let v = joined(&a.headers, n);
            if v.as_deref() != *want {
                d.push(format!("{n}: {v:?}, expected {want:?}"));
            }
        }
        if let Some(want) = self.age {
            match joined(&a.headers, "age").map(|v| v.parse::<u64>()) {
                Some(Ok(age)) if age.abs_diff(want) <= 1 => {}
                v => d.push(format!("age {v:?}, expected {want} (±1)")),
            }
        }
        d
    }
}

fn sent_name(s: &Sent) -> &'static str {
    match s {
        Sent::Method(_) => "",
        Sent::Eq(n, _) | Sent::Absent(n) | Sent::Present(n) => n,
    }
}

/// The values of `name`, joined with `, `; `None` when absent.
fn joined(h: &HeaderMap, name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let values: Vec<String> = h
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// The answer is not the stale copy `body`: the service's error, or a
/// response that is neither `x-cache: stale` nor that body.
fn never_stale(body: &'static str) -> impl Fn(&Result<Answer, String>) -> Result<(), String> {
    move |got| match got {
        Err(_) => Ok(()),
        Ok(a) if a.x_cache() == "stale" || a.body == body.as_bytes() => Err(format!(
            "served the stale copy ({} {:?}, x-cache {:?})",
            a.status,
            String::from_utf8_lossy(&a.body),
            a.x_cache()
        )),
        Ok(_) => Ok(()),
    }
}

/// Vary safety: the answer's body (the origin echoes the varied request
/// headers) is the one for this request's own values.
fn own_variant(body: &'static str) -> impl Fn(&Result<Answer, String>) -> Result<(), String> {
    move |got| match got {
        Ok(a) if a.body != body.as_bytes() => Err(format!(
            "served the variant {:?} (x-cache {:?}) to a request for {body:?}",
            String::from_utf8_lossy(&a.body),
            a.x_cache()
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("the service's error {e:?}")),
    }
}

// ------------------------------------------------------------ cases

type LayerFn = Box<dyn FnOnce(HttpCacheLayer) -> HttpCacheLayer + Send>;
type BuilderFn = Box<
    dyn FnOnce(CacheBuilder<String, CachedResponse>) -> CacheBuilder<String, CachedResponse> + Send,
>;

enum Step {
    Send(Req, Expect),
    /// `n` copies of the request at once; the expectation holds for each
    /// (origin calls and what reached it: once all are answered).
    Concurrent(usize, Req, Expect),
    Sleep(u64),
    /// Waits (2 s at most) until the origin had this many calls.
    AwaitCalls(usize),
}

/// One conformance case: an RFC section and what it checks.
pub struct Case {
    section: &'static str,
    what: &'static str,
    replies: Vec<Reply>,
    layer: Option<LayerFn>,
    builder: Option<BuilderFn>,
    steps: Vec<Step>,
}

pub fn case(section: &'static str, what: &'static str) -> Case {
    Case {
        section,
        what,
        replies: Vec::new(),
        layer: None,
        builder: None,
        steps: Vec::new(),
    }
}

impl Case {
    pub fn name(&self) -> String {
        format!("{} {}", self.section, self.what)
    }

    /// The origin's responses, in order.
    pub fn origin(mut self, replies: impl IntoIterator<Item = Reply>) -> Self {
        self.replies.extend(replies);
        self
    }

    /// Layer options on top of `HttpCacheLayer::new(cache)`.
    pub fn layer(
        mut self,
        f: impl FnOnce(HttpCacheLayer) -> HttpCacheLayer + Send + 'static,
    ) -> Self {
        self.layer = Some(Box::new(f));
        self
    }

    /// Cache builder options (after `ttl_jitter(0)`, `negative_jitter(0)`).
    pub fn cache(
        mut self,
        f: impl FnOnce(CacheBuilder<String, CachedResponse>) -> CacheBuilder<String, CachedResponse>
        + Send
        + 'static,
    ) -> Self {
        self.builder = Some(Box::new(f));
        self
    }

    pub fn send(mut self, req: Req, e: Expect) -> Self {
        self.steps.push(Step::Send(req, e));
        self
    }

    pub fn concurrent(mut self, n: usize, req: Req, e: Expect) -> Self {
        self.steps.push(Step::Concurrent(n, req, e));
        self
    }

    pub fn sleep(mut self, ms: u64) -> Self {
        self.steps.push(Step::Sleep(ms));
        self
    }

    pub fn await_calls(mut self, n: usize) -> Self {
        self.steps.push(Step::AwaitCalls(n));
        self
    }

    async fn run(self, env: Env, index: usize) -> Result<(), String> {
        let ns = Env::namespace(&format!("rfc-{index}"));
        let extra = self.builder;
        let cache = env
            .http_cache_in(&ns, move |b| {
                let b = b.ttl_jitter(0.0).negative_jitter(0.0);
                match extra {
                    Some(f) => f(b),
                    None => b,
                }
            })
            .await;
        let mut layer = HttpCacheLayer::new(cache);
        if let Some(f) = self.layer {
            layer = f(layer);
        }
        let origin = Origin::new(self.replies);
        let o = origin.clone();
        let svc = layer.layer(tower::service_fn(move |req: Request<Body>| {
            futures::future::ready(o.answer(req))
        }));
        for (i, step) in self.steps.into_iter().enumerate() {
            let step_no = i + 1;
            match step {
                Step::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Step::AwaitCalls(n) => {
                    let mut waited = 0;
                    while origin.calls() < n && waited < 2000 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        waited += 20;
                    }
                    if origin.calls() < n {
                        return Err(format!(
                            "step {step_no}: the origin had {} calls after 2 s, expected {n}",
                            origin.calls()
                        ));
                    }
                }
                Step::Send(req, e) => {
                    let before = origin.calls();
                    let got = call(&svc, req.build()).await;
                    let d = e.diff(&got, &origin.since(before), origin.calls());
                    if !d.is_empty() {
                        return Err(format!(
                            "step {step_no} ({}): {}",
                            req.describe(),
                            d.join("; ")
                        ));
                    }
                }
                Step::Concurrent(n, req, e) => {
                    let before = origin.calls();
                    let all = futures::future::join_all((0..n).map(|_| call(&svc, req.build())));
                    let answers = all.await;
                    let new = origin.since(before);
                    let mut d = Vec::new();
                    for (k, got) in answers.iter().enumerate() {
                        for x in e.diff(got, &new, origin.calls()) {
                            d.push(format!("#{}: {x}", k + 1));
                        }
                    }
                    if !d.is_empty() {
                        return Err(format!(
                            "step {step_no} ({n} x {}): {}",
                            req.describe(),
                            d.join("; ")
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

async fn call<S, B>(svc: &S, req: Request<Body>) -> Result<Answer, String>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Boom> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    match svc.clone().oneshot(req).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body error {e:?}"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the whole table at once; panics with every failing case.
pub async fn run(env: Env) {
    let started = Instant::now();
    let cases = table();
    let mut sections: BTreeMap<&'static str, usize> = BTreeMap::new();
    for c in &cases {
        *sections.entry(c.section).or_default() += 1;
    }
    let total = cases.len();
    let names: Vec<String> = cases.iter().map(Case::name).collect();
    let runs = cases.into_iter().enumerate().map(|(i, c)| {
        let env = env.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(30), c.run(env, i)).await {
                Ok(r) => r,
                Err(_) => Err("timed out after 30 s".into()),
            }
        })
    });
    let results = futures::future::join_all(runs).await;
    let mut failures = Vec::new();
    for (name, r) in names.iter().zip(results) {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(e) => failures.push(format!("{name}: panicked: {e}")),
        }
    }
    let mut summary = format!(
        "RFC conformance: {total} cases, {} failed, {:.2?}\n",
        failures.len(),
        started.elapsed()
    );
    for (s, n) in &sections {
        let _ = writeln!(summary, "  {s}: {n}");
    }
    eprintln!("{summary}");
    assert!(
        failures.is_empty(),
        "{} of {total} RFC conformance cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------ the table

const LM: &str = "Sun, 09 Sep 2001 01:46:40 GMT";
const AFTER_LM: &str = "Mon, 10 Sep 2001 00:00:00 GMT";
const BEFORE_LM: &str = "Sat, 08 Sep 2001 00:00:00 GMT";
const MISS: &str = "tiercache; fwd=uri-miss";
const HIT: &str = "tiercache; hit";

/// Two GETs of `/r`: the second is answered by the origin again.
fn not_stored(section: &'static str, what: &'static str, first: Reply) -> Case {
    case(section, what)
        .origin([first, ok("v2")])
        .send(get("/r"), expect().body("v1").miss().calls(1))
        .send(get("/r"), expect().body("v2").miss().calls(2))
}

/// Two GETs of `/r`: the second is a hit on the first.
fn stored(section: &'static str, what: &'static str, first: Reply) -> Case {
    case(section, what)
        .origin([first, ok("v2")])
        .send(get("/r"), expect().status(200).body("v1").miss().calls(1))
        .send(get("/r"), expect().status(200).body("v1").hit().calls(1))
}

/// Stored, a hit, then after `ms` the origin is asked again.
fn expires_after(section: &'static str, what: &'static str, first: Reply, ms: u64) -> Case {
    case(section, what)
        .origin([first, ok("v2").cc("max-age=60")])
        .send(get("/r"), expect().body("v1").miss().calls(1))
        .send(get("/r"), expect().body("v1").hit().calls(1))
        .sleep(ms)
        .send(get("/r"), expect().body("v2").calls(2))
}

/// `0123456789` stored (strong ETag `"r1"`), then a request for part of it.
fn ranged(what: &'static str, req: Req, e: Expect) -> Case {
    case("RFC9110 §14.2", what)
        .origin([ok("0123456789").h("etag", "\"r1\"").cc("max-age=60")])
        .send(get("/r"), expect().status(200).miss())
        .send(req, e.calls(1))
}

/// A stored response with `ETag: "v1"`, `max-age=60`, then a conditional
/// request answered from the cache.
fn client_conditional(section: &'static str, what: &'static str, req: Req, e: Expect) -> Case {
    case(section, what)
        .origin([ok("v1")
            .h("etag", "\"v1\"")
            .h("last-modified", LM)
            .cc("max-age=60")])
        .send(get("/r"), expect().status(200).miss())
        .send(req, e.calls(1))
}

/// Stored for 1 s, then after 1.2 s the next request goes to the origin,
/// which answers `then`.
fn stale_then(section: &'static str, what: &'static str, first: Reply, then: Reply) -> Case {
    case(section, what)
        .origin([first, then])
        .send(get("/r"), expect().body("v1").miss().calls(1))
        .sleep(1200)
}

fn invalidated_by(m: &'static str, status: u16) -> Case {
    let what = match m {
        "POST" => "a 200 to POST invalidates the target URI",
        "PUT" => "a 204 to PUT invalidates the target URI",
        "DELETE" => "a 200 to DELETE invalidates the target URI",
        _ => "a 200 to PATCH invalidates the target URI",
    };
    case("RFC9111 §4.4", what)
        .origin([ok("v1").cc("max-age=60"), reply(status, ""), ok("v2")])
        .send(get("/r"), expect().body("v1").miss())
        .send(get("/r"), expect().body("v1").hit())
        .send(
            method(m, "/r"),
            expect()
                .status(status)
                .cache_status("tiercache; fwd=method")
                .calls(2),
        )
        .send(get("/r"), expect().body("v2").miss().calls(3))
}

/// Every case, by RFC section.
#[allow(clippy::too_many_lines)]
pub fn table() -> Vec<Case> {
    use http::header::ACCEPT;
    let own = || HeaderName::from_static("tiercache-cache-control");
    vec![
        // ---------------------------------------------- RFC 9111 3: storing
        stored(
            "RFC9111 §3",
            "a 200 without freshness information is stored (the cache's TTL)",
            ok("v1"),
        ),
        not_stored(
            "RFC9111 §3",
            "a status not configured (201) is not stored, even with max-age",
            reply(201, "v1").cc("max-age=60"),
        ),
        case(
            "RFC9111 §3",
            "a 206 from the origin is never stored, even as a configured status",
        )
        .layer(|l| l.statuses([StatusCode::OK, StatusCode::PARTIAL_CONTENT]))
        .origin([reply(206, "01")
            .h("content-range", "bytes 0-1/10")
            .cc("max-age=60")])
        .send(get("/r"), expect().status(206).body("01").miss().calls(1))
        .send(get("/r"), expect().status(206).miss().calls(2)),
        case(
            "RFC9111 §3",
            "a 5xx is never stored, even as a configured status with max-age",
        )
        .layer(|l| l.statuses([StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR]))
        .origin([reply(500, "down").cc("max-age=60")])
        .send(get("/r"), expect().status(500).miss().calls(1))
        .send(get("/r"), expect().status(500).miss().calls(2)),
        case(
            "RFC9111 §3",
            "a 404 is stored as a negative for the negative TTL",
        )
        .layer(|l| l.negative_ttl(Duration::from_secs(1)))
        .origin([reply(404, "gone"), reply(404, "gone 2")])
        .send(get("/r"), expect().status(404).body("gone").miss())
        .send(get("/r"), expect().status(404).body("gone").hit().calls(1))
        .sleep(1200)
        .send(get("/r"), expect().status(404).body("gone 2").miss().calls(2)),
        case("RFC9111 §3", "a 301 is stored with its Location")
            .origin([reply(301, "").h("location", "/new")])
            .send(get("/r"), expect().status(301).miss())
            .send(
                get("/r"),
                expect().status(301).header("location", "/new").hit().calls(1),
            ),
        case(
            "RFC9111 §3",
            "a response setting a cookie is not stored, and the cookie reaches the client",
        )
        .origin([ok("v1").h("set-cookie", "id=1").cc("max-age=60"), ok("v2")])
        .send(
            get("/r"),
            expect().body("v1").header("set-cookie", "id=1").miss(),
        )
        .send(get("/r"), expect().body("v2").miss().calls(2)),
        case(
            "RFC9111 §3.5",
            "a request with Authorization is not answered from nor stored in the cache",
        )
        .origin([ok("v1").cc("public, max-age=60"), ok("v2")])
        .send(
            get("/r").h("authorization", "Bearer a"),
            expect()
                .body("v1")
                .no_header("x-cache")
                .cache_status("tiercache; fwd=bypass"),
        )
        .send(
            get("/r").h("authorization", "Bearer a"),
            expect().body("v2").calls(2),
        )
        .send(get("/r"), expect().body("v2").miss().calls(3)),
        // ------------------------------- RFC 9111 4: HEAD from a stored GET
        case(
            "RFC9111 §4",
            "HEAD is answered from the stored GET: its headers, validator, length, no body",
        )
        .origin([ok("v1").h("etag", "\"g1\"").h("x-v", "1").cc("max-age=60")])
        .send(get("/r"), expect().body("v1").miss())
        .send(
            head("/r"),
            expect()
                .status(200)
                .body("")
                .hit()
                .header("etag", "\"g1\"")
                .header("content-length", "2")
                .header("x-v", "1")
                .calls(1),
        ),
        case(
            "RFC9111 §4",
            "HEAD with no stored GET goes to the origin as HEAD and is not stored",
        )
        .origin([ok("v1").cc("max-age=60")])
        .send(head("/r"), expect().body("").miss().sent_method("HEAD"))
        .send(
            head("/r"),
            expect().body("").miss().sent_method("HEAD").calls(2),
        )
        .send(
            get("/r"),
            expect().body("v1").miss().sent_method("GET").calls(3),
        )
        .send(head("/r"), expect().body("").hit().calls(3)),
        // ------------------------------------------- RFC 9111 4.1: Vary
        case(
            "RFC9111 §4.1",
            "a configured vary header keys every variant apart",
        )
        .layer(|l| l.vary([ACCEPT]))
        .origin([ok("{req:accept}").h("vary", "Accept").cc("max-age=60")])
        .send(
            get("/r").h("accept", "application/json"),
            expect().body("application/json").miss(),
        )
        .send(
            get("/r").h("accept", "text/html"),
            expect().body("text/html").miss(),
        )
        .send(
            get("/r").h("accept", "application/json"),
            expect().body("application/json").hit(),
        )
        .send(
            get("/r").h("accept", "text/html"),
            expect().body("text/html").hit().calls(2),
        ),
        case(
            "RFC9111 §4.1",
            "Vary names are case-insensitive (Vary: ACCEPT matches a configured accept)",
        )
        .layer(|l| l.vary([ACCEPT]))
        .origin([ok("{req:accept}").h("vary", "ACCEPT").cc("max-age=60")])
        .send(get("/r").h("accept", "a/b"), expect().body("a/b").miss())
        .send(
            get("/r").h("accept", "a/b"),
            expect().body("a/b").hit().calls(1),
        ),
        case(
            "RFC9111 §4.1",
            "Vary on an unconfigured header: a variant is never served to another value",
        )
        .origin([ok("{req:accept-language}")
            .h("vary", "Accept-Language")
            .cc("max-age=60")])
        .send(
            get("/r").h("accept-language", "en"),
            expect().check(own_variant("en")),
        )
        .send(
            get("/r").h("accept-language", "fr"),
            expect().check(own_variant("fr")),
        )
        .send(
            get("/r").h("accept-language", "en"),
            expect().check(own_variant("en")),
        )
        .send(
            get("/r").h("accept-language", "fr"),
            expect().check(own_variant("fr")),
        )
        .send(get("/r"), expect().check(own_variant("-"))),
        case(
            "RFC9111 §4.1",
            "Vary on a configured and an unconfigured header: never another variant",
        )
        .layer(|l| l.vary([ACCEPT]))
        .origin([ok("{req:accept} {req:accept-language}")
            .h("vary", "accept, accept-language")
            .cc("max-age=60")])
        .send(
            get("/r").h("accept", "a/json").h("accept-language", "en"),
            expect().check(own_variant("a/json en")),
        )
        .send(
            get("/r").h("accept", "a/json").h("accept-language", "fr"),
            expect().check(own_variant("a/json fr")),
        )
        .send(
            get("/r").h("accept", "a/json").h("accept-language", "en"),
            expect().check(own_variant("a/json en")),
        )
        .send(
            get("/r").h("accept", "t/html").h("accept-language", "en"),
            expect().check(own_variant("t/html en")),
        ),
        case("RFC9111 §4.1", "Vary: * is never stored")
            .origin([ok("{req:accept-language}").h("vary", "*").cc("max-age=60")])
            .send(
                get("/r").h("accept-language", "en"),
                expect().body("en").miss(),
            )
            .send(
                get("/r").h("accept-language", "en"),
                expect().body("en").miss().calls(2),
            )
            .send(
                get("/r").h("accept-language", "en"),
                expect().body("en").miss().calls(3),
            ),
        // ------------------------------ RFC 9111 4.2.1: freshness lifetime
        expires_after(
            "RFC9111 §4.2.1",
            "max-age=1 is fresh, then stale after it",
            ok("v1").cc("max-age=1"),
            1200,
        ),
        expires_after(
            "RFC9111 §4.2.1",
            "s-maxage=1 wins over max-age=60",
            ok("v1").cc("max-age=60, s-maxage=1"),
            1200,
        ),
        case("RFC9111 §4.2.1", "s-maxage=60 wins over max-age=1")
            .origin([ok("v1").cc("s-maxage=60, max-age=1"), ok("v2")])
            .send(get("/r"), expect().body("v1").miss())
            .sleep(1200)
            .send(get("/r"), expect().body("v1").hit().calls(1)),
        expires_after(
            "RFC9111 §4.2.1",
            "Expires minus Date is the lifetime (2 s)",
            ok("v1").h("date", "{now}").h("expires", "{now+2}"),
            2200,
        ),
        expires_after(
            "RFC9111 §4.2.1",
            "Expires without Date counts from the time received",
            ok("v1").h("expires", "{now+2}"),
            2200,
        ),
        not_stored(
            "RFC9111 §4.2.1",
            "a malformed max-age (max-age=soon) is stale: not stored",
            ok("v1").cc("max-age=soon"),
        ),
        stored(
            "RFC9111 §4.2.1",
            "a delta-seconds too large for u64 is the largest value, not 0",
            ok("v1").cc("max-age=99999999999999999999999"),
        ),
        case(
            "RFC9111 §4.2.1",
            "a duplicate max-age: the first (1 s) or stale, never the later 60 s",
        )
        .origin([ok("v1").cc("max-age=1, max-age=60"), ok("v2")])
        .send(get("/r"), expect().body("v1").miss())
        .sleep(1200)
        .send(get("/r"), expect().body("v2")),
        case(
            "RFC9111 §4.2.1",
            "a negative with a max-age shorter than the negative TTL expires with it",
        )
        .origin([reply(404, "v1").cc("max-age=1"), reply(404, "v2")])
        .send(get("/r"), expect().status(404).body("v1").miss())
        .send(get("/r"), expect().status(404).body("v1").hit())
        .sleep(1200)
        .send(get("/r"), expect().status(404).body("v2").calls(2)),
        // ------------------------------------ RFC 9111 4.2.2: heuristics
        expires_after(
            "RFC9111 §4.2.2",
            "no explicit freshness: the cache's TTL (1 s here)",
            ok("v1"),
            1200,
        )
        .cache(|b| b.ttl(Duration::from_secs(1))),
        expires_after(
            "RFC9111 §4.2.2",
            "no explicit freshness with default_ttl(Some(1 s)): fresh for 1 s",
            ok("v1"),
            1200,
        )
        .layer(|l| l.default_ttl(Some(Duration::from_secs(1)))),
        case(
            "RFC9111 §4.2.2",
            "default_ttl(None): 10% of Date - Last-Modified (2 s), then revalidated",
        )
        .layer(|l| l.default_ttl(None))
        .origin([
            ok("v1").h("date", "{now}").h("last-modified", "{now-20}"),
            ok("v2").h("date", "{now}").h("last-modified", "{now-1}"),
        ])
        .send(get("/r"), expect().body("v1").miss())
        .send(get("/r"), expect().body("v1").hit().calls(1))
        .sleep(2200)
        .send(
            get("/r"),
            expect().body("v2").sent_any("if-modified-since").calls(2),
        ),
        not_stored(
            "RFC9111 §4.2.2",
            "default_ttl(None) without Last-Modified: not stored",
            ok("v1").h("date", "{now}"),
        )
        .layer(|l| l.default_ttl(None)),
        not_stored(
            "RFC9111 §4.2.2",
            "default_ttl(None): no heuristic for a status not heuristically cacheable (201)",
            reply(201, "v1").h("last-modified", LM),
        )
        .layer(|l| {
            l.default_ttl(None)
                .statuses([StatusCode::OK, StatusCode::CREATED])
        }),
        case(
            "RFC9111 §4.2.2",
            "default_ttl(None): public allows a heuristic for any stored status (201)",
        )
        .layer(|l| {
            l.default_ttl(None)
                .statuses([StatusCode::OK, StatusCode::CREATED])
        })
        .origin([reply(201, "v1").h("last-modified", LM).cc("public")])
        .send(get("/r"), expect().status(201).body("v1").miss())
        .send(get("/r"), expect().status(201).body("v1").hit().calls(1)),
        expires_after(
            "RFC9111 §4.2.2",
            "no heuristic when the freshness is explicit (max-age=1, old Last-Modified)",
            ok("v1").h("last-modified", LM).cc("max-age=1"),
            1200,
        )
        .layer(|l| l.default_ttl(None)),
        // -------------------------------------------- RFC 9111 4.2.3: age
        case(
            "RFC9111 §4.2.3",
            "Age from upstream is the initial age of the stored response",
        )
        .origin([ok("v1").h("age", "10").cc("max-age=60")])
        .send(get("/r"), expect().body("v1").miss().age(10))
        .send(get("/r"), expect().body("v1").hit().age(10).calls(1)),
        case(
            "RFC9111 §4.2.3",
            "the apparent age from Date (30 s ago) is the initial age",
        )
        .origin([ok("v1").h("date", "{now-30}").cc("max-age=60")])
        .send(get("/r"), expect().body("v1").miss().age(30))
        .send(get("/r"), expect().body("v1").hit().age(30).calls(1)),
        case(
            "RFC9111 §4.2.3",
            "the initial age is the larger of the Date-based (30) and the Age (5)",
        )
        .origin([ok("v1")
            .h("date", "{now-30}")
            .h("age", "5")
            .cc("max-age=60")])
        .send(get("/r"), expect().miss().age(30))
        .send(get("/r"), expect().hit().age(30).calls(1)),
        case(
            "RFC9111 §4.2.3",
            "the initial age is the larger of the Age (20) and the Date-based (0)",
        )
        .origin([ok("v1").h("date", "{now}").h("age", "20").cc("max-age=60")])
        .send(get("/r"), expect().miss().age(20))
        .send(get("/r"), expect().hit().age(20).calls(1)),
        case(
            "RFC9111 §4.2.3",
            "the Age served grows with the time stored",
        )
        .origin([ok("v1").cc("max-age=60")])
        .send(get("/r"), expect().miss().age(0))
        .sleep(2100)
        .send(get("/r"), expect().hit().age(2).calls(1)),
        not_stored(
            "RFC9111 §4.2.3",
            "Age >= max-age is stale on arrival: not stored",
            ok("v1").h("age", "60").cc("max-age=60"),
        ),
        not_stored(
            "RFC9111 §4.2.3",
            "a Date older than max-age is stale on arrival: not stored",
            ok("v1").h("date", "{now-120}").cc("max-age=60"),
        ),
        // ------------------------------------------- RFC 9111 5.1: Age
        case(
            "RFC9111 §5.1",
            "a list-based Age (5, 100): the first member",
        )
        .origin([ok("v1").h("age", "5, 100").cc("max-age=60")])
        .send(get("/r"), expect().miss().age(5))
        .send(get("/r"), expect().hit().age(5).calls(1)),
        case(
            "RFC9111 §5.1",
            "Age in two field lines (5 then 100): the first member",
        )
        .origin([ok("v1").h("age", "5").h("age", "100").cc("max-age=60")])
        .send(get("/r"), expect().miss().age(5))
        .send(get("/r"), expect().hit().age(5).calls(1)),
        case("RFC9111 §5.1", "an invalid Age (-5) is ignored")
            .origin([ok("v1").h("age", "-5").cc("max-age=60")])
            .send(get("/r"), expect().miss().age(0))
            .send(get("/r"), expect().hit().age(0).calls(1)),
        case("RFC9111 §5.1", "an invalid Age (abc) is ignored")
            .origin([ok("v1").h("age", "abc").cc("max-age=60")])
            .send(get("/r"), expect().miss().age(0))
            .send(get("/r"), expect().hit().age(0).calls(1)),
        // ------------------------------------ RFC 9111 5.2: Cache-Control
        not_stored(
            "RFC9111 §5.2",
            "directives from every Cache-Control field line (max-age=60 + no-store)",
            ok("v1").cc("max-age=60").cc("no-store"),
        ),
        not_stored(
            "RFC9111 §5.2",
            "directive names are case-insensitive (No-Store)",
            ok("v1").cc("No-Store, Max-Age=60"),
        ),
        stored(
            "RFC9111 §5.2",
            "a quoted delta-seconds (max-age=\"60\") is accepted",
            ok("v1").cc("max-age=\"60\""),
        ),
        case(
            "RFC9111 §5.2.1.4",
            "a request no-cache is not honoured by default (the stored copy serves)",
        )
        .origin([ok("v1").cc("max-age=60"), ok("v2")])
        .send(get("/r"), expect().body("v1").miss())
        .send(
            get("/r").h("cache-control", "no-cache"),
            expect().body("v1").hit().calls(1),
        ),
        case(
            "RFC9111 §5.2.1.4",
            "with honor_request_no_cache, a request no-cache goes to the origin",
        )
        .layer(|l| l.honor_request_no_cache(true))
        .origin([ok("v1").cc("max-age=60"), ok("v2").cc("max-age=60")])
        .send(get("/r"), expect().body("v1").miss())
        .send(
            get("/r").h("cache-control", "no-cache"),
            expect().body("v2").miss().calls(2),
        ),
        not_stored(
            "RFC9111 §5.2.2.1",
            "max-age=0 is not stored",
            ok("v1").cc("max-age=0"),
        ),
        stale_then(
            "RFC9111 §5.2.2.2",
            "must-revalidate: a stale copy never stands in for a 500 (not even with stale-if-error)",
            ok("v1").cc("max-age=1, must-revalidate, stale-if-error=60"),
            reply(500, "down"),
        )
        .send(
            get("/r"),
            expect().status(500).body("down").miss().calls(2),
        ),
        stale_then(
            "RFC9111 §5.2.2.2",
            "must-revalidate: a stale copy never stands in for a service error",
            ok("v1").cc("max-age=1, must-revalidate, stale-if-error=60"),
            fail(),
        )
        .send(get("/r"), expect().either().check(never_stale("v1")).calls(2)),
        not_stored(
            "RFC9111 §5.2.2.4",
            "a response no-cache is not stored",
            ok("v1").cc("no-cache, max-age=60"),
        ),
        not_stored(
            "RFC9111 §5.2.2.5",
            "no-store is not stored",
            ok("v1").cc("no-store, max-age=60"),
        ),
        not_stored(
            "RFC9111 §5.2.2.7",
            "private is not stored by a shared cache",
            ok("v1").cc("private, max-age=60"),
        ),
        not_stored(
            "RFC9111 §5.2.2.7",
            "private with field names is not stored",
            ok("v1").cc("private=\"set-cookie\", max-age=60"),
        ),
        stale_then(
            "RFC9111 §5.2.2.8",
            "proxy-revalidate: a stale copy never stands in for a 500",
            ok("v1").cc("max-age=1, proxy-revalidate, stale-if-error=60"),
            reply(500, "down"),
        )
        .send(
            get("/r"),
            expect().status(500).body("down").miss().calls(2),
        ),
        stored(
            "RFC9111 §5.2.2.9",
            "public without a max-age is stored",
            ok("v1").cc("public"),
        ),
        stale_then(
            "RFC9111 §5.2.2.10",
            "s-maxage implies proxy-revalidate: no stale copy for a 500",
            ok("v1").cc("s-maxage=1, stale-if-error=60"),
            reply(500, "down"),
        )
        .send(
            get("/r"),
            expect().status(500).body("down").miss().calls(2),
        ),
        // --------------------------------------------- RFC 9111 5.3: Expires
        not_stored(
            "RFC9111 §5.3",
            "an invalid Expires (yesterday) is in the past: not stored",
            ok("v1").h("expires", "yesterday"),
        ),
        not_stored(
            "RFC9111 §5.3",
            "Expires: 0 is in the past: not stored",
            ok("v1").h("expires", "0"),
        ),
        not_stored(
            "RFC9111 §5.3",
            "an Expires before the Date is stale: not stored",
            ok("v1").h("date", "{now}").h("expires", "{now-60}"),
        ),
        expires_after(
            "RFC9111 §5.3",
            "max-age=1 wins over a later Expires",
            ok("v1").h("expires", "{now+60}").cc("max-age=1"),
            1200,
        ),
        stored(
            "RFC9111 §5.3",
            "max-age=60 wins over Expires: 0",
            ok("v1").h("expires", "0").cc("max-age=60"),
        ),
        stored(
            "RFC9111 §5.3",
            "an Expires in the obsolete asctime format is a date",
            ok("v1").h("date", "{now}").h("expires", "{asctime+60}"),
        ),
        // ------------------------------------ RFC 9111 4.3: validation
        stale_then(
            "RFC9111 §4.3.1",
            "a stale response with an ETag is validated with If-None-Match",
            ok("v1").h("etag", "\"v1\"").cc("max-age=1"),
            not_modified().h("etag", "\"v1\"").cc("max-age=60"),
        )
        .send(
            get("/r"),
            expect()
                .status(200)
                .body("v1")
                .sent("if-none-match", "\"v1\"")
                .not_sent("if-modified-since")
                .calls(2),
        )
        .send(get("/r"), expect().body("v1").hit().calls(2)),
        stale_then(
            "RFC9111 §4.3.1",
            "a stale response with a Last-Modified is validated with If-Modified-Since",
            ok("v1").h("last-modified", LM).cc("max-age=1"),
            not_modified().cc("max-age=60"),
        )
        .send(
            get("/r"),
            expect()
                .status(200)
                .body("v1")
                .sent("if-modified-since", LM)
                .not_sent("if-none-match")
                .calls(2),
        )
        .send(get("/r"), expect().body("v1").hit().calls(2)),
        stale_then(
            "RFC9111 §4.3.1",
            "with both validators, both are sent",
            ok("v1")
                .h("etag", "W/\"v1\"")
                .h("last-modified", LM)
                .cc("max-age=1"),
            not_modified().cc("max-age=60"),
        )
        .send(
            get("/r"),
            expect()
                .status(200)
                .body("v1")
                .sent("if-none-match", "W/\"v1\"")
                .sent("if-modified-since", LM)
                .calls(2),
        ),
        stale_then(
            "RFC9111 §4.3.1",
            "without an origin validator the response is fetched in full (no computed ETag sent)",
            ok("v1").cc("max-age=1"),
            ok("v2").cc("max-age=60"),
        )
        .send(
            get("/r"),
            expect()
                .status(200)
                .body("v2")
                .not_sent("if-none-match")
                .not_sent("if-modified-since")
                .calls(2),
        ),
        stale_then(
            "RFC9111 §4.3.1",
            "the client's conditional headers are replaced by the stored validators",
            ok("v1").h("etag", "\"v1\"").cc("max-age=1"),
            not_modified().cc("max-age=60"),
        )
        .send(
            get("/r")
                .h("if-none-match", "\"mine\"")
                .h("if-modified-since", LM),
            expect()
                .status(200)
                .body("v1")
                .sent("if-none-match", "\"v1\"")
                .not_sent("if-modified-since")
                .calls(2),
        ),
        stale_then(
            "RFC9111 §4.3.1",
            "concurrent requests on a stale response make one conditional request",
            ok("v1").h("etag", "\"v1\"").cc("max-age=1"),
            not_modified().cc("max-age=60"),
        )
        .concurrent(
            5,
            get("/r"),
            expect()
                .status(200)
                .body("v1")
                .sent("if-none-match", "\"v1\"")
                .calls(2),
        )
        .send(get("/r"), expect().body("v1").hit().calls(2)),
        case(
            "RFC9111 §4.3.1",
            "past keep_for_revalidation the stored response is gone: no conditional request",
        )
        .layer(|l| l.keep_for_revalidation(Duration::from_secs(1)))
        .origin([
            ok("v1").h("etag", "\"v1\"").cc("max-age=1"),
            ok("v2").cc("max-age=60"),
        ])
        .send(get("/r"), expect().body("v1").miss())
        .sleep(2300)
        .send(
            get("/r"),
            expect().body("v2").not_sent("if-none-match").calls(2),
        ),
        stale_then(
            "RFC9111 §4.3.2",
            "a client's If-None-Match matching the revalidated response gets 304",
            ok("v1").h("etag", "\"v1\"").cc("max-age=1"),
            not_modified().h("etag", "\"v1\"").cc("max-age=60"),
        )
        .send(
            get("/r").h("if-none-match", "\"v1\""),
            expect()
                .status(304)
                .body("")
                .header("etag", "\"v1\"")
                .calls(2),
        ),
        stale_then(
            "RFC9111 §4.3.3",
            "a 200 to the conditional request replaces the stored response",
            ok("v1").h("etag", "\"v1\"").cc("max-age=1"),
            ok("v2").h("etag", "\"v2\"").cc("max-age=60"),
        )
        .send(
            get("/r"),
            expect()
                .status(200)
                .body("v2")
                .sent("if-none-match", "\"v1\"")
                .calls(2),
        )
        .send(
            get("/r"),
            expect()
                .body("v2")
                .header("etag", "\"v2\"")
                .hit()
                .calls(2),
        ),
        stale_then(
            "RFC9111 §4.3.3",
            "a 5xx to the conditional request is forwarded without stale-if-error",
            ok("v1").h("etag", "\"v1\"").cc("max-age=1"),
            reply(500, "down"),
        )
        .send(
            get("/r"),
            expect().status(500).body("down").miss().calls(2),
        ),
        stale_then(
            "RFC9111 §4.3.4",
            "a 304 updates the stored headers and freshness; the stored body is served",
            ok("v1")
                .h("etag", "\"v1\"")
                .h("x-version", "1")
                .cc("max-age=1"),
            not_modified()
                .h("etag", "\"v1\"")
                .h("x-version", "2")
                .cc("max-age=60"),
        )
        .send(
            get("/r"),
            expect()
                .status(200)
                .body("v1")
                .header("x-version", "2")
                .header("cache-control", "max-age=60")
                .calls(2),
        )
        .send(
            get("/r"),
            expect()
                .status(200)
                .body("v1")
                .header("x-version", "2")
                .hit()
                .calls(2),
        ),
        stale_then(
            "RFC9111 §4.3.4",
            "a 304 does not update Content-Length",
            ok("v1").h("etag", "\"v1\"").cc("max-age=1"),
            not_modified()
                .h("content-length", "0")
                .cc("max-age=60"),
        )
        .send(
            get("/r"),
            expect()
                .status(200)
                .body("v1")
                .header("content-length", "2")
                .calls(2),
        )
        .send(
            get("/r"),
            expect()
                .body("v1")
                .header("content-length", "2")
                .hit()
                .calls(2),
        ),
        stale_then(
            "RFC9111 §4.3.4",
            "a 304 without freshness of its own re-applies the stored max-age",
            ok("v1").h("etag", "\"v1\"").cc("max-age=1"),
            not_modified().h("etag", "\"v1\""),
        )
        .send(get("/r"), expect().status(200).body("v1").calls(2))
        .send(get("/r"), expect().body("v1").hit().calls(2)),
        // ---------------------------------- RFC 9111 4.4: invalidation
        invalidated_by("POST", 200),
        invalidated_by("PUT", 204),
        invalidated_by("DELETE", 200),
        invalidated_by("PATCH", 200),
        case("RFC9111 §4.4", "a 3xx (303) to POST invalidates the target URI")
            .origin([
                ok("v1").cc("max-age=60"),
                reply(303, "").h("location", "/elsewhere"),
                ok("v2"),
            ])
            .send(get("/r"), expect().body("v1").miss())
            .send(method("POST", "/r"), expect().status(303).calls(2))
            .send(get("/r"), expect().body("v2").miss().calls(3)),
        case(
            "RFC9111 §4.4",
            "a 4xx or 5xx to POST does not invalidate",
        )
        .origin([
            ok("v1").cc("max-age=60"),
            reply(404, ""),
            reply(500, ""),
            ok("v2"),
        ])
        .send(get("/r"), expect().body("v1").miss())
        .send(method("POST", "/r"), expect().status(404).calls(2))
        .send(get("/r"), expect().body("v1").hit().calls(2))
        .send(method("POST", "/r"), expect().status(500).calls(3))
        .send(get("/r"), expect().body("v1").hit().calls(3)),
        case(
            "RFC9111 §4.4",
            "a relative Location of the answer is invalidated too, other URIs are not",
        )
        .origin([
            ok("item").cc("max-age=60"),
            ok("other").cc("max-age=60"),
            reply(201, "").h("location", "/items/1"),
            ok("item 2").cc("max-age=60"),
        ])
        .send(get("/items/1"), expect().body("item").miss())
        .send(get("/other"), expect().body("other").miss())
        .send(get("/items/1"), expect().body("item").hit())
        .send(method("POST", "/items"), expect().status(201).calls(3))
        .send(get("/items/1"), expect().body("item 2").miss().calls(4))
        .send(get("/other"), expect().body("other").hit().calls(4)),
        case(
            "RFC9111 §4.4",
            "an absolute Content-Location on the request's host is invalidated",
        )
        .origin([
            ok("b").cc("max-age=60"),
            reply(200, "").h("content-location", "http://example.com/b"),
            ok("b 2").cc("max-age=60"),
        ])
        .send(
            get("/b").h("host", "example.com"),
            expect().body("b").miss(),
        )
        .send(
            get("/b").h("host", "example.com"),
            expect().body("b").hit(),
        )
        .send(
            method("POST", "/a").h("host", "example.com"),
            expect().status(200).calls(2),
        )
        .send(
            get("/b").h("host", "example.com"),
            expect().body("b 2").miss().calls(3),
        ),
        case(
            "RFC9111 §4.4",
            "a Location on another host is not invalidated",
        )
        .origin([
            ok("b").cc("max-age=60"),
            reply(201, "").h("location", "http://other.example/b"),
            ok("b 2"),
        ])
        .send(
            get("/b").h("host", "example.com"),
            expect().body("b").miss(),
        )
        .send(
            method("POST", "/a").h("host", "example.com"),
            expect().status(201).calls(2),
        )
        .send(
            get("/b").h("host", "example.com"),
            expect().body("b").hit().calls(2),
        ),
        case(
            "RFC9111 §4.4",
            "invalidation reaches every stored variant of the URI",
        )
        .layer(|l| l.vary([ACCEPT]))
        .origin([ok("{req:accept}").h("vary", "accept").cc("max-age=60")])
        .send(get("/r").h("accept", "a/json"), expect().miss())
        .send(get("/r").h("accept", "t/html"), expect().miss())
        .send(get("/r").h("accept", "a/json"), expect().hit().calls(2))
        .send(method("POST", "/r"), expect().status(200).calls(3))
        .send(
            get("/r").h("accept", "a/json"),
            expect().body("a/json").miss().calls(4),
        )
        .send(
            get("/r").h("accept", "t/html"),
            expect().body("t/html").miss().calls(5),
        ),
        // ------------------------------- RFC 9110 13.1: client conditionals
        client_conditional(
            "RFC9110 §13.1.2",
            "If-None-Match matching a fresh stored response: 304 from the cache",
            get("/r").h("if-none-match", "\"v1\""),
            expect()
                .status(304)
                .body("")
                .hit()
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=60"),
        ),
        client_conditional(
            "RFC9110 §13.1.2",
            "If-None-Match uses the weak comparison (W/\"v1\" matches \"v1\")",
            get("/r").h("if-none-match", "W/\"v1\""),
            expect().status(304).hit(),
        ),
        client_conditional(
            "RFC9110 §13.1.2",
            "If-None-Match: * matches any stored response",
            get("/r").h("if-none-match", "*"),
            expect().status(304).hit(),
        ),
        client_conditional(
            "RFC9110 §13.1.2",
            "If-None-Match with a list matches any member",
            get("/r").h("if-none-match", "\"a\", \"v1\""),
            expect().status(304).hit(),
        ),
        client_conditional(
            "RFC9110 §13.1.2",
            "If-None-Match not matching: the stored 200",
            get("/r").h("if-none-match", "\"other\""),
            expect().status(200).body("v1").hit(),
        ),
        client_conditional(
            "RFC9110 §13.1.3",
            "If-Modified-Since equal to Last-Modified: 304",
            get("/r").h("if-modified-since", LM),
            expect().status(304).body("").hit(),
        ),
        client_conditional(
            "RFC9110 §13.1.3",
            "If-Modified-Since after Last-Modified: 304",
            get("/r").h("if-modified-since", AFTER_LM),
            expect().status(304).hit(),
        ),
        client_conditional(
            "RFC9110 §13.1.3",
            "If-Modified-Since before Last-Modified: the stored 200",
            get("/r").h("if-modified-since", BEFORE_LM),
            expect().status(200).body("v1").hit(),
        ),
        client_conditional(
            "RFC9110 §13.1.3",
            "an invalid If-Modified-Since is ignored",
            get("/r").h("if-modified-since", "not a date"),
            expect().status(200).body("v1").hit(),
        ),
        client_conditional(
            "RFC9110 §13.1.3",
            "If-Modified-Since is ignored with If-None-Match",
            get("/r")
                .h("if-none-match", "\"other\"")
                .h("if-modified-since", AFTER_LM),
            expect().status(200).body("v1").hit(),
        ),
        case(
            "RFC9110 §13.1.2",
            "nothing stored: the conditional request is forwarded as is, its 304 not stored",
        )
        .origin([
            not_modified().h("etag", "\"c\""),
            ok("v1").h("etag", "\"c\"").cc("max-age=60"),
        ])
        .send(
            get("/r")
                .h("if-none-match", "\"c\"")
                .h("if-modified-since", LM),
            expect()
                .status(304)
                .miss()
                .sent("if-none-match", "\"c\"")
                .sent("if-modified-since", LM),
        )
        .send(
            get("/r"),
            expect()
                .status(200)
                .body("v1")
                .miss()
                .not_sent("if-none-match")
                .calls(2),
        )
        .send(get("/r"), expect().status(200).body("v1").hit().calls(2)),
        // -------------------------------------------- RFC 9110 14: ranges
        ranged(
            "one range of a stored 200: 206 with Content-Range and the slice",
            get("/r").h("range", "bytes=0-3"),
            expect()
                .status(206)
                .body("0123")
                .hit()
                .header("content-range", "bytes 0-3/10")
                .header("content-length", "4"),
        ),
        ranged(
            "a suffix range (bytes=-3): the last 3 bytes",
            get("/r").h("range", "bytes=-3"),
            expect()
                .status(206)
                .body("789")
                .header("content-range", "bytes 7-9/10"),
        ),
        ranged(
            "an open range (bytes=5-): to the end",
            get("/r").h("range", "bytes=5-"),
            expect()
                .status(206)
                .body("56789")
                .header("content-range", "bytes 5-9/10"),
        ),
        ranged(
            "a last-pos past the end is the end (bytes=8-100)",
            get("/r").h("range", "bytes=8-100"),
            expect()
                .status(206)
                .body("89")
                .header("content-range", "bytes 8-9/10"),
        ),
        ranged(
            "an unsatisfiable range: 416 with Content-Range bytes */len",
            get("/r").h("range", "bytes=10-"),
            expect()
                .status(416)
                .body("")
                .header("content-range", "bytes */10"),
        ),
        ranged(
            "several ranges: the whole 200",
            get("/r").h("range", "bytes=0-1,3-4"),
            expect()
                .status(200)
                .body("0123456789")
                .no_header("content-range"),
        ),
        ranged(
            "a unit other than bytes: the whole 200",
            get("/r").h("range", "items=0-1"),
            expect().status(200).body("0123456789"),
        ),
        case(
            "RFC9110 §14.2",
            "a Range request on a miss loads the whole response, stores it, answers the range",
        )
        .origin([ok("0123456789").cc("max-age=60")])
        .send(
            get("/r").h("range", "bytes=0-3"),
            expect()
                .status(206)
                .body("0123")
                .header("content-range", "bytes 0-3/10")
                .not_sent("range")
                .miss(),
        )
        .send(
            get("/r"),
            expect().status(200).body("0123456789").hit().calls(1),
        ),
        ranged(
            "If-Range with the matching strong ETag: 206",
            get("/r").h("range", "bytes=0-3").h("if-range", "\"r1\""),
            expect().status(206).body("0123"),
        )
        .section("RFC9110 §13.1.5"),
        ranged(
            "If-Range with another ETag: the whole 200",
            get("/r").h("range", "bytes=0-3").h("if-range", "\"r2\""),
            expect().status(200).body("0123456789"),
        )
        .section("RFC9110 §13.1.5"),
        ranged(
            "If-Range with a weak ETag never matches: the whole 200",
            get("/r").h("range", "bytes=0-3").h("if-range", "W/\"r1\""),
            expect().status(200).body("0123456789"),
        )
        .section("RFC9110 §13.1.5"),
        // -------------------------------------- RFC 9211: Cache-Status
        case("RFC9211 §2", "a miss is fwd=uri-miss, a hit is hit")
            .origin([ok("v1").cc("max-age=60")])
            .send(get("/r"), expect().cache_status(MISS))
            .send(get("/r"), expect().cache_status(HIT)),
        case(
            "RFC9211 §2",
            "a response that is not stored is still fwd=uri-miss",
        )
        .origin([ok("v1").cc("no-store")])
        .send(get("/r"), expect().cache_status(MISS))
        .send(get("/r"), expect().cache_status(MISS).calls(2)),
        case(
            "RFC9211 §2",
            "a method not configured is fwd=bypass",
        )
        .origin([ok("v1")])
        .send(
            method("OPTIONS", "/r"),
            expect().cache_status("tiercache; fwd=bypass"),
        ),
        case("RFC9211 §2", "an unsafe method is fwd=method")
            .origin([ok("v1")])
            .send(
                method("POST", "/r"),
                expect().cache_status("tiercache; fwd=method"),
            ),
        client_conditional(
            "RFC9211 §2",
            "a 304 generated from a stored response is a hit",
            get("/r").h("if-none-match", "\"v1\""),
            expect().status(304).cache_status(HIT),
        ),
        stale_then(
            "RFC9211 §2",
            "a stale response validated with the origin is fwd=stale (the RFC's 3rd example)",
            ok("v1").h("etag", "\"v1\"").cc("max-age=1"),
            not_modified().cc("max-age=60"),
        )
        .send(
            get("/r"),
            expect().status(200).body("v1").calls(2).check(|got| {
                let v = got
                    .as_ref()
                    .ok()
                    .and_then(|a| joined(&a.headers, "cache-status"));
                match v.as_deref() {
                    Some(s) if s.starts_with("tiercache; fwd=stale") => Ok(()),
                    _ => Err(format!("cache-status {v:?}, expected tiercache; fwd=stale")),
                }
            }),
        ),
        case(
            "RFC9211 §2",
            "an upstream cache's Cache-Status member is preserved, ours appended",
        )
        .origin([ok("v1")
            .h("cache-status", "origin-cache; hit")
            .cc("max-age=60")])
        .send(
            get("/r"),
            expect().cache_status("origin-cache; hit, tiercache; fwd=uri-miss"),
        )
        .send(
            get("/r"),
            expect().hit().calls(1).check(|got| {
                let v = got
                    .as_ref()
                    .ok()
                    .and_then(|a| joined(&a.headers, "cache-status"));
                match v.as_deref() {
                    Some(s) if s.starts_with("origin-cache; hit,") && s.ends_with(HIT) => Ok(()),
                    _ => Err(format!(
                        "cache-status {v:?}, expected the upstream member then tiercache; hit"
                    )),
                }
            }),
        ),
        // ------------------------------- RFC 9213: targeted cache control
        stored(
            "RFC9213 §2.1",
            "CDN-Cache-Control max-age=60 replaces Cache-Control: no-store",
            ok("v1").cc("no-store").h("cdn-cache-control", "max-age=60"),
        ),
        stored(
            "RFC9213 §2.1",
            "CDN-Cache-Control replaces Cache-Control: private as a whole",
            ok("v1")
                .cc("private")
                .h("cdn-cache-control", "max-age=60"),
        ),
        not_stored(
            "RFC9213 §2.1",
            "CDN-Cache-Control: no-store wins over Cache-Control: max-age=60",
            ok("v1").cc("max-age=60").h("cdn-cache-control", "no-store"),
        ),
        expires_after(
            "RFC9213 §2.1",
            "CDN-Cache-Control max-age=1 over Cache-Control max-age=600",
            ok("v1")
                .cc("max-age=600")
                .h("cdn-cache-control", "max-age=1"),
            1200,
        ),
        not_stored(
            "RFC9213 §2.1",
            "an empty CDN-Cache-Control is ignored: Cache-Control no-store applies",
            ok("v1").cc("no-store").h("cdn-cache-control", ""),
        ),
        case(
            "RFC9213 §2.1",
            "our own targeted field wins over CDN-Cache-Control and is not sent on",
        )
        .layer(move |l| l.targeted_cache_control(own()))
        .origin([ok("v1")
            .cc("no-store")
            .h("cdn-cache-control", "no-store")
            .h("tiercache-cache-control", "max-age=60")])
        .send(
            get("/r"),
            expect()
                .body("v1")
                .miss()
                .no_header("tiercache-cache-control"),
        )
        .send(
            get("/r"),
            expect()
                .body("v1")
                .hit()
                .no_header("tiercache-cache-control")
                .calls(1),
        ),
        case(
            "RFC9213 §2.1",
            "our own targeted field no-store wins over CDN-Cache-Control max-age",
        )
        .layer(move |l| l.targeted_cache_control(own()))
        .origin([ok("v1")
            .h("cdn-cache-control", "max-age=60")
            .h("tiercache-cache-control", "no-store")])
        .send(
            get("/r"),
            expect().miss().no_header("tiercache-cache-control"),
        )
        .send(
            get("/r"),
            expect()
                .miss()
                .no_header("tiercache-cache-control")
                .calls(2),
        ),
        // ------------------------------------------------------- RFC 5861
        stale_then(
            "RFC5861 §4",
            "stale-if-error: a 500 within the window serves the stale copy",
            ok("v1").cc("max-age=1, stale-if-error=60"),
            reply(500, "down"),
        )
        .send(
            get("/r"),
            expect()
                .status(200)
                .body("v1")
                .stale()
                .cache_status("tiercache; fwd=stale")
                .calls(2),
        ),
        stale_then(
            "RFC5861 §4",
            "stale-if-error: a service error within the window serves the stale copy",
            ok("v1").cc("max-age=1, stale-if-error=60"),
            fail(),
        )
        .send(
            get("/r"),
            expect().status(200).body("v1").stale().calls(2),
        ),
        case(
            "RFC5861 §4",
            "stale-if-error: past the window the 500 is forwarded",
        )
        .origin([
            ok("v1").cc("max-age=1, stale-if-error=1"),
            reply(500, "down"),
        ])
        .send(get("/r"), expect().body("v1").miss())
        .sleep(3100)
        .send(
            get("/r"),
            expect().status(500).body("down").miss().calls(2),
        ),
        case(
            "RFC5861 §3",
            "stale-while-revalidate: served as a hit, refreshed once in the background",
        )
        .origin([
            ok("v1").cc("max-age=1, stale-while-revalidate=2"),
            ok("v2").cc("max-age=60"),
        ])
        .send(get("/r"), expect().body("v1").miss())
        .sleep(1200)
        .concurrent(3, get("/r"), expect().body("v1").hit().cache_status(HIT))
        .await_calls(2)
        .sleep(200)
        .send(get("/r"), expect().body("v2").hit().calls(2)),
        stale_then(
            "RFC5861 §3",
            "stale-while-revalidate does not apply with must-revalidate",
            ok("v1").cc("max-age=1, stale-while-revalidate=2, must-revalidate"),
            ok("v2").cc("max-age=60"),
        )
        .send(get("/r"), expect().body("v2").miss().calls(2)),
        case(
            "RFC5861 §3",
            "stale-while-revalidate: past the window the origin answers",
        )
        .origin([
            ok("v1").cc("max-age=1, stale-while-revalidate=1"),
            ok("v2").cc("max-age=60"),
        ])
        .send(get("/r"), expect().body("v1").miss())
        .sleep(2300)
        .send(get("/r"), expect().body("v2").miss().calls(2)),
    ]
}

impl Case {
    /// Files the case under another section.
    fn section(mut self, section: &'static str) -> Self {
        self.section = section;
        self
    }
}
