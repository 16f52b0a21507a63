//! The HTTP API.
//!
//! | route | answer |
//! |---|---|
//! | `GET /products/{id}` | 200 the product, 404 `{"error"}`; `x-cache`, `x-cache-tier`, `age` |
//! | `GET /products?category=C` | 200 an array (first 1000 by id); `x-cache`, `age` |
//! | `POST /products` | 201 the new product (`location` header) |
//! | `PUT /products/{id}` | 200 the replaced product, 404 |
//! | `DELETE /products/{id}` | 204, 404 |
//! | `GET /healthz` | 200 `{"status":"ok",..}`, 503 while Postgres is unreachable |
//! | `GET /metrics` | Prometheus text |
//!
//! Writes change Postgres only: the sidecar turns each change into
//! invalidations for every instance.

use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tiercache_core::{Entry, Fetched};

use crate::cache::{Caches, category_tag, list_key, x_cache, x_cache_tier};
use crate::db::{Db, Product, ProductInput};
use crate::error::ApiError;

/// What every handler gets.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: Db,
    pub caches: Caches,
    pub metrics: PrometheusHandle,
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/products", get(list_products).post(create_product))
        .route(
            "/products/{id}",
            get(get_product).put(replace_product).delete(delete_product),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
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

/// Adds `x-cache: hit|miss|stale` and, on a hit, `x-cache-tier:
/// local|shared|bloom`.
fn cache_headers<T>(resp: &mut Response, fetched: &Fetched<T>) {
    let h = resp.headers_mut();
    h.insert(
        "x-cache",
        HeaderValue::from_static(x_cache(fetched.outcome)),
    );
    if let Some(tier) = x_cache_tier(fetched.outcome) {
        h.insert("x-cache-tier", HeaderValue::from_static(tier));
    }
}

/// A JSON response with the cache headers and `age` (seconds since the value
/// was loaded from Postgres).
fn cached_json<T: serde::Serialize>(fetched: &Fetched<T>, body: &T) -> Response {
    let mut resp = Json(body).into_response();
    cache_headers(&mut resp, fetched);
    resp.headers_mut()
        .insert(header::AGE, HeaderValue::from(fetched.age().as_secs()));
    resp
}

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
    match &fetched.value {
        Some(p) => Ok(cached_json(&fetched, p.as_ref())),
        None => {
            let mut resp =
                ApiError::not_found(format!("product {id} does not exist")).into_response();
            cache_headers(&mut resp, &fetched);
            Ok(resp)
        }
    }
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

async fn list_products(
    State(st): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let category = q
        .category
        .ok_or_else(|| ApiError::bad_request("query parameter `category` is required"))?;
    check_category(&category).map_err(ApiError::bad_request)?;
    let db = st.db.clone();
    let tag = category_tag(&category);
    let fetched = st
        .caches
        .lists
        .fetch(&list_key(&category), move || async move {
            db.by_category(&category)
                .await
                .map(|rows| Some(Entry::new(rows).tag(tag)))
        })
        .await
        .map_err(|e| ApiError::unavailable("loading a category failed", &e))?;
    let empty = Vec::new();
    let rows: &Vec<Product> = fetched.value.as_deref().unwrap_or(&empty);
    Ok(cached_json(&fetched, rows))
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
        "bus_synced": products.local_trusted() && st.caches.lists.local_trusted(),
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
