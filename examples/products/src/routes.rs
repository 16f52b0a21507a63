//! The HTTP API.
//!
//! | route | answer |
//! |---|---|
//! | `GET /products/{id}` | 200 the product, 404 `{"error"}`; through the response cache |
//! | `GET /products?category=C` | 200 an array (first 1000 by id); through the response cache |
//! | `POST /products` | 201 the new product (`location` header) |
//! | `PUT /products/{id}` | 200 the replaced product, 404 |
//! | `DELETE /products/{id}` | 204, 404 |
//! | `GET /healthz` | 200 `{"status":"ok",..}`, 503 while Postgres is unreachable |
//! | `GET /metrics` | Prometheus text |
//!
//! The two `GET` routes are plain handlers behind
//! [`HttpCacheLayer`](tiercache_tower::HttpCacheLayer), which answers from
//! the cache when it can and adds `x-cache`, `Cache-Status`, `age` and an
//! `ETag` (and answers `If-None-Match` with 304). Each handler names the
//! tags of its response in `x-cache-tags` (`product:{id}`,
//! `category:{category}`), the same tags the sidecar derives from a changed
//! row: that is the bridge from rows to cached responses. The product
//! handler also says how the row cache below found the row, in
//! `x-row-cache` (`shared`, `loaded`, `collapsed`, `stale`, `bloom`),
//! stored with the response.
//!
//! Writes, `/healthz` and `/metrics` do not go through the layer. Updates
//! and deletes change Postgres only: the sidecar turns each change, made
//! here or with plain SQL, into invalidations for every instance. (The layer
//! would drop the written URI's response after a write through it, RFC 9111
//! 4.4, but the next read would rebuild it from the row still in Redis until
//! the sidecar deletes it, and the lists are other URIs: one invalidation
//! path, the sidecar's, is both simpler and complete.) A create also tells
//! the caches itself, so that its `Location` reads at once on every
//! instance: the id's Bloom bit, its stored 404s and the category's list.

use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tiercache_core::{Entry, Outcome, Tier};

use crate::cache::{Caches, category_tag, product_tag, tags_header};
use crate::db::{Db, Product, ProductInput};
use crate::error::ApiError;

/// What every handler gets.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: Db,
    pub caches: Caches,
    pub metrics: PrometheusHandle,
}

/// The header in which a handler names its response's tags (the layer's
/// default; it removes the header from every response).
const X_CACHE_TAGS: HeaderName = HeaderName::from_static("x-cache-tags");

/// How the row cache found the row a product response was built from.
const X_ROW_CACHE: HeaderName = HeaderName::from_static("x-row-cache");

/// The router: the reads behind the response cache, the rest beside it.
pub fn router(state: AppState) -> Router {
    let reads = Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product))
        .route_layer(state.caches.http.clone());
    let rest = Router::new()
        .route("/products", post(create_product))
        .route(
            "/products/{id}",
            put(replace_product).delete(delete_product),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics));
    reads
        .merge(rest)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

type ApiResult<T> = Result<T, ApiError>;

/// Parses a path id: a positive integer.
fn parse_id(raw: &str) -> ApiResult<i64> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::bad_request(format!(
            "invalid product id {raw:?}: expected a positive integer"
        ))),
    }
}

/// The `x-cache-tags` value of `tags`.
fn tags_value(tags: &[&str]) -> HeaderValue {
    // Percent-encoded printable ASCII: always a valid header value.
    HeaderValue::from_str(&tags_header(tags)).unwrap_or(HeaderValue::from_static(""))
}

/// The `x-row-cache` value of a row lookup.
fn row_cache(outcome: Outcome) -> HeaderValue {
    HeaderValue::from_static(match outcome {
        Outcome::Hit(Tier::Local) => "local",
        Outcome::Hit(Tier::Shared) => "shared",
        Outcome::Collapsed => "collapsed",
        Outcome::Stale => "stale",
        Outcome::Rejected => "bloom",
        _ => "loaded",
    })
}

/// `GET /products/{id}`: the row through the row cache (Bloom guard,
/// negatives, singleflight), tagged `product:{id}`, found or not.
async fn get_product(State(st): State<AppState>, Path(raw): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&raw)?;
    let db = st.db.clone();
    let fetched = st
        .caches
        .products
        .fetch(&id, move || async move {
            db.by_id(id).await.map(|found| found.map(Entry::new))
        })
        .await
        .map_err(|e| ApiError::unavailable("loading a product failed", &e))?;
    let mut resp = match &fetched.value {
        Some(p) => Json(p.as_ref()).into_response(),
        None => ApiError::not_found(format!("product {id} does not exist")).into_response(),
    };
    let h = resp.headers_mut();
    h.insert(X_CACHE_TAGS, tags_value(&[&product_tag(id)]));
    h.insert(X_ROW_CACHE, row_cache(fetched.outcome));
    // Served, not stored:
    // - a Bloom rejection: it costs nothing to answer again, and stored, it
    //   could outlive the id's creation (the sidecar's "created" reaches the
    //   guard and the stored 404 in two messages, one per namespace, in no
    //   set order);
    // - a row past its TTL, served within grace because Postgres failed: a
    //   response built from it would start a fresh TTL of its own.
    if matches!(fetched.outcome, Outcome::Rejected | Outcome::Stale) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    category: Option<String>,
}

fn check_category(c: &str) -> Result<(), String> {
    if c.trim().is_empty() {
        return Err("category must not be empty".into());
    }
    if c.len() > 100 {
        return Err("category is longer than 100 bytes".into());
    }
    if c.chars().any(char::is_control) {
        return Err("category contains control characters".into());
    }
    Ok(())
}

/// `GET /products?category=C`: straight from Postgres (the response cache
/// in front collapses concurrent misses into one query per process),
/// tagged `category:C`.
async fn list_products(
    State(st): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let category = q
        .category
        .ok_or_else(|| ApiError::bad_request("query parameter `category` is required"))?;
    check_category(&category).map_err(ApiError::bad_request)?;
    let rows = st
        .db
        .by_category(&category)
        .await
        .map_err(|e| ApiError::unavailable("loading a category failed", &e))?;
    let tags = tags_value(&[&category_tag(&category)]);
    Ok(([(X_CACHE_TAGS, tags)], Json(rows)).into_response())
}

/// The body of `POST` and `PUT`.
#[derive(Debug, Deserialize)]
struct ProductBody {
    name: String,
    price_cents: i64,
    category: String,
}

impl ProductBody {
    fn validate(self) -> ApiResult<ProductInput> {
        let name = self.name.trim().to_owned();
        if name.is_empty() {
            return Err(ApiError::invalid("name must not be empty"));
        }
        if name.len() > 200 {
            return Err(ApiError::invalid("name is longer than 200 bytes"));
        }
        if self.price_cents < 0 {
            return Err(ApiError::invalid(format!(
                "price_cents must not be negative (got {})",
                self.price_cents
            )));
        }
        check_category(&self.category).map_err(ApiError::invalid)?;
        Ok(ProductInput {
            name,
            price_cents: self.price_cents,
            category: self.category,
        })
    }
}

async fn create_product(
    State(st): State<AppState>,
    body: Result<Json<ProductBody>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body?;
    let input = body.validate()?;
    let p = st
        .db
        .insert(&input)
        .await
        .map_err(|e| ApiError::unavailable("insert failed", &e))?;
    // Read-your-writes on create: this instance's Bloom guard and negative
    // cache learn the id now, and so does a 404 of it stored by the layer
    // (tag `product:{id}`); the messages tell the other instances at once.
    // The sidecar's invalidations of the same row follow and change nothing.
    st.caches.products.mark_created(&p.id).await;
    st.caches
        .http
        .handle()
        .invalidate_tags(&[&product_tag(p.id), &category_tag(&p.category)])
        .await;
    let location = HeaderValue::from_str(&format!("/products/{}", p.id))
        .unwrap_or_else(|_| HeaderValue::from_static("/products"));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(p)).into_response())
}

async fn replace_product(
    State(st): State<AppState>,
    Path(raw): Path<String>,
    body: Result<Json<ProductBody>, JsonRejection>,
) -> ApiResult<Json<Product>> {
    let id = parse_id(&raw)?;
    let Json(body) = body?;
    let input = body.validate()?;
    match st.db.update(id, &input).await {
        Ok(Some(p)) => Ok(Json(p)),
        Ok(None) => Err(ApiError::not_found(format!("product {id} does not exist"))),
        Err(e) => Err(ApiError::unavailable("update failed", &e)),
    }
}

async fn delete_product(
    State(st): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&raw)?;
    match st.db.delete(id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found(format!("product {id} does not exist"))),
        Err(e) => Err(ApiError::unavailable("delete failed", &e)),
    }
}

async fn healthz(State(st): State<AppState>) -> Response {
    let db_ok = st.db.ping().await;
    let products = &st.caches.products;
    let body = serde_json::json!({
        "status": if db_ok { "ok" } else { "degraded" },
        "database": db_ok,
        "shared_tier": st.caches.shared,
        "bus": st.caches.bus,
        "bus_synced": products.local_trusted() && st.caches.http.cache().local_trusted(),
        "bloom_ready": products.bloom_ready(),
        "instance": format!("{:016x}", products.instance_id()),
    });
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn render_metrics(State(st): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        st.metrics.render(),
    )
        .into_response()
}

/// `products_http_requests_total{method,route,status}` and
/// `products_http_request_duration_seconds{method,route}`.
async fn count_requests(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("products_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("products_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}
