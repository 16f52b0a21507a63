//! End to end: the products example, twice, with real Postgres, Redis, NATS
//! (JetStream) from tiercache-testkit and the real `tiercache-sidecar`
//! binary, spoken to over HTTP.
//!
//! The stack is started by `common::start_stack` (tests/common/mod.rs).
//! Cargo builds the app (this package's `products` binary) for the test; the
//! test builds the sidecar with cargo first (`cargo build -p
//! tiercache-sidecar --bin tiercache-sidecar`), then spawns both with the
//! servers' URLs; children are killed on drop.
//!
//! The app's read routes are behind `HttpCacheLayer` (namespace
//! `products-http`: `x-cache`, `Cache-Status`, `age`, ETag/304), the product
//! handler reads its row through the row cache (namespace `products`: Bloom
//! guard, negatives, singleflight), and the sidecar's rules bridge a changed
//! row to both: key `{id}` of the rows, tags `product:{id}` and
//! `category:{category}` of the responses.
//!
//! Database reads are counted by the app itself
//! (`products_db_reads_total{kind="by_id"}`, scraped from `/metrics` of both
//! instances). Run with `--nocapture` to see the figures.
#![allow(missing_docs)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Http, Resp, SEED, Stack, start_stack};

// ---------------------------------------------------------------------------
// The test

#[test]
fn products_stack_end_to_end() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let http = rt.block_on(async { Http::new() });
    let started = Instant::now();
    let mut stack = start_stack(&http, &rt);
    println!("stack up in {:.1?}", started.elapsed());
    let (lo, hi): (i64, i64) = {
        let s = stack
            .pg
            .psql("select min(id) || ' ' || max(id) from products")
            .expect("ids");
        let mut it = s.split(' ').map(|x| x.parse::<i64>().expect("id"));
        (it.next().expect("lo"), it.next().expect("hi"))
    };
    assert_eq!(hi - lo + 1, i64::from(SEED));

    rt.block_on(async {
        bad_input(&http, &stack.urls[0]).await;
        http_cache(&http, &stack, lo + 5, hi).await;
        staleness(&http, &stack, lo).await;
        list_follows_category_moves(&http, &stack, lo + 1).await;
        created_reads_at_once(&http, &stack).await;
        created_and_deleted(&http, &stack).await;
        stampede(&http, &stack.urls, hi - 10).await;
        missing_ids(&http, &stack.urls, hi).await;
        redis_killed_under_load(&http, &stack, lo, hi).await;
    });
    for app in &mut stack.apps {
        app.assert_alive();
    }
    println!("end to end done in {:.1?}", started.elapsed());
}

async fn bad_input(http: &Http, base: &str) {
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("GET", "/products/abc", None, 400),
        ("GET", "/products/-3", None, 400),
        ("GET", "/products/99999999999999999999", None, 400),
        ("GET", "/products", None, 400),
        (
            "PUT",
            "/products/x",
            Some(r#"{"name":"a","price_cents":1,"category":"c"}"#),
            400,
        ),
        ("POST", "/products", Some("{not json"), 400),
        ("POST", "/products", Some(r#"{"name":"lamp"}"#), 422),
        (
            "POST",
            "/products",
            Some(r#"{"name":"lamp","price_cents":-5,"category":"home"}"#),
            422,
        ),
        (
            "POST",
            "/products",
            Some(r#"{"name":" ","price_cents":5,"category":"home"}"#),
            422,
        ),
        (
            "POST",
            "/products",
            Some(r#"{"name":"lamp","price_cents":"5","category":"home"}"#),
            422,
        ),
        ("DELETE", "/products/0", None, 400),
        ("GET", "/nope", None, 404),
    ];
    for &(method, path, body, want) in cases {
        let r = http
            .send(method, &format!("{base}{path}"), body)
            .await
            .expect("request");
        assert_eq!(r.status, want, "{method} {path} {body:?}: {:?}", r.body);
        let j = r.json();
        assert!(
            j["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {j}"
        );
    }
    let r = http
        .send("POST", &format!("{base}/products"), Some("{}"))
        .await
        .expect("request");
    assert_eq!(r.status, 422);
}

fn name_of(r: &Resp) -> String {
    r.json()["name"].as_str().unwrap_or_default().to_owned()
}

/// Polls every instance until `check` holds for each; returns the time
/// until the last one did.
async fn until_all<F>(http: &Http, urls: &[String], path: &str, check: F) -> Duration
where
    F: Fn(&Resp) -> bool,
{
    let start = Instant::now();
    let mut done = vec![false; urls.len()];
    loop {
        for (i, u) in urls.iter().enumerate() {
            if !done[i] {
                let r = http.get(&format!("{u}{path}")).await.expect("get");
                done[i] = check(&r);
            }
        }
        if done.iter().all(|d| *d) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{path} still not updated on every instance after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads product `id` twice on every instance: it is then in each one's
/// local tier.
async fn held_everywhere(http: &Http, stack: &Stack, id: i64) {
    for u in &stack.urls {
        http.get(&format!("{u}/products/{id}")).await.expect("warm");
        let r = http.get(&format!("{u}/products/{id}")).await.expect("warm");
        assert_eq!(r.x_cache.as_deref(), Some("hit"), "second read should hit");
        assert!(
            r.header("cache-status")
                .is_some_and(|s| s.starts_with("tiercache") && s.contains("hit")),
            "Cache-Status of a hit: {:?}",
            r.header("cache-status")
        );
    }
}

/// Renames product `id` with plain SQL; returns the time until every
/// instance serves the new name.
async fn renamed_everywhere(http: &Http, stack: &Stack, id: i64, new_name: &str) -> Duration {
    stack
        .pg
        .psql(&format!(
            "UPDATE products SET name = '{new_name}', updated_at = now() WHERE id = {id}"
        ))
        .expect("update");
    // The tag bridge: the sidecar's `product:{id}` drops the cached
    // response, so some instance's next read goes to the handler (a miss);
    // the other may then find the new response in Redis.
    let reloaded = std::cell::Cell::new(false);
    let took = until_all(http, &stack.urls, &format!("/products/{id}"), |r| {
        let new = r.status == 200 && name_of(r) == new_name;
        if new && r.x_cache.as_deref() == Some("miss") {
            reloaded.set(true);
        }
        new
    })
    .await;
    assert!(
        reloaded.get(),
        "no instance reloaded product {id} after the UPDATE (x-cache: miss)"
    );
    took
}

/// The read routes are behind the response cache (`x-cache`,
/// `Cache-Status`, `age`, ETag and 304, tags never shown to clients); a
/// Bloom rejection is answered without Postgres and not stored; writes,
/// `/healthz` and `/metrics` pass by the cache.
async fn http_cache(http: &Http, stack: &Stack, id: i64, hi: i64) {
    let (a, b) = (&stack.urls[0], &stack.urls[1]);
    let path = format!("/products/{id}");
    let r = http.get(&format!("{a}{path}")).await.expect("get");
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache.as_deref(), Some("miss"), "first read of {path}");
    assert!(
        r.header("cache-status")
            .is_some_and(|s| s.starts_with("tiercache") && s.contains("fwd=")),
        "Cache-Status of a miss: {:?}",
        r.header("cache-status")
    );
    assert_eq!(r.header("x-row-cache"), Some("loaded"));
    assert_eq!(r.header("x-cache-tags"), None, "tags are not shown");
    let etag = r.header("etag").expect("etag").to_owned();
    let r = http.get(&format!("{a}{path}")).await.expect("get");
    assert_eq!(r.x_cache.as_deref(), Some("hit"));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(r.header("age").is_some(), "age on a hit");
    assert_eq!(r.header("x-cache-tags"), None);
    // The other instance finds it in Redis.
    let r = http.get(&format!("{b}{path}")).await.expect("get");
    assert_eq!(
        r.x_cache.as_deref(),
        Some("hit"),
        "{path} on the other instance"
    );
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = http
        .send_with(
            "GET",
            &format!("{b}{path}"),
            None,
            &[("if-none-match", &etag)],
        )
        .await
        .expect("conditional get");
    assert_eq!(r.status, 304, "If-None-Match with the stored ETag");
    assert!(r.body.is_empty());

    // A Bloom rejection: no database read, and not stored (the id may be
    // created any moment). The guard may let a missing id through (a false
    // positive, 0.1%): take the first one it rejects.
    let mut rejected = None;
    for missing in (hi + 10_000_000..).step_by(7919).take(20) {
        let r = http
            .get(&format!("{a}/products/{missing}"))
            .await
            .expect("get");
        assert_eq!(r.status, 404);
        assert!(r.json()["error"].is_string());
        if r.header("x-row-cache") == Some("bloom") {
            assert_eq!(r.x_cache.as_deref(), Some("miss"));
            rejected = Some(missing);
            break;
        }
    }
    let missing = rejected.expect("the Bloom guard rejects missing ids");
    let r = http
        .get(&format!("{a}/products/{missing}"))
        .await
        .expect("get");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-row-cache"), Some("bloom"));
    assert_eq!(
        r.x_cache.as_deref(),
        Some("miss"),
        "a rejection is not stored"
    );

    // Not through the cache.
    for p in ["/healthz", "/metrics"] {
        let r = http.get(&format!("{a}{p}")).await.expect("get");
        assert_eq!(r.status, 200);
        assert_eq!(r.x_cache, None, "{p} passes by the cache");
        assert_eq!(r.header("cache-status"), None, "{p} passes by the cache");
    }
    let r = http
        .send("PUT", &format!("{a}/products/x"), Some("{}"))
        .await
        .expect("put");
    assert_eq!(r.status, 400);
    assert_eq!(r.header("cache-status"), None, "writes pass by the cache");
}

/// A row changed with plain SQL is served new by both instances within 1 s.
async fn staleness(http: &Http, stack: &Stack, id: i64) {
    let mut worst = Duration::ZERO;
    for round in 0..10 {
        held_everywhere(http, stack, id).await;
        let took = renamed_everywhere(http, stack, id, &format!("renamed by SQL #{round}")).await;
        worst = worst.max(took);
    }
    println!("staleness after a SQL UPDATE (10 rounds, both instances): max {worst:.1?}");
    assert!(worst < Duration::from_secs(1), "max staleness {worst:?}");
}

/// `v` percent-encoded for a query string.
fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Moving a product between categories drops both lists everywhere.
async fn list_follows_category_moves(http: &Http, stack: &Stack, id: i64) {
    // The second category needs percent-encoding both in the URL and in the
    // app's `x-cache-tags` (a comma, spaces, `%`, non-ASCII): the tag the
    // layer records must still be the sidecar's `category:{category}`.
    let (from, to) = ("e2e-from", "e2e to, 100% café");
    let (from_q, to_q) = (query_value(from), query_value(to));
    stack
        .pg
        .psql(&format!(
            "UPDATE products SET category = '{from}' WHERE id = {id}"
        ))
        .expect("update");
    let has = |r: &Resp, id: i64| {
        r.status == 200
            && r.json()
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["id"] == id))
    };
    let lacks = |r: &Resp, id: i64| {
        r.status == 200
            && r.json()
                .as_array()
                .is_some_and(|a| a.iter().all(|p| p["id"] != id))
    };
    until_all(
        http,
        &stack.urls,
        &format!("/products?category={from_q}"),
        |r| has(r, id),
    )
    .await;
    until_all(
        http,
        &stack.urls,
        &format!("/products?category={to_q}"),
        |r| lacks(r, id),
    )
    .await;
    // Let the sidecar's invalidation of the first update land (the lists may
    // have been loaded before it), then cache both lists everywhere.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for u in &stack.urls {
        for c in [&from_q, &to_q] {
            http.get(&format!("{u}/products?category={c}"))
                .await
                .expect("warm list");
        }
        let r = http
            .get(&format!("{u}/products?category={from_q}"))
            .await
            .expect("list");
        assert_eq!(r.x_cache.as_deref(), Some("hit"));
    }
    stack
        .pg
        .psql(&format!(
            "UPDATE products SET category = '{to}' WHERE id = {id}"
        ))
        .expect("move");
    let a = until_all(
        http,
        &stack.urls,
        &format!("/products?category={from_q}"),
        |r| lacks(r, id),
    )
    .await;
    let b = until_all(
        http,
        &stack.urls,
        &format!("/products?category={to_q}"),
        |r| has(r, id),
    )
    .await;
    println!(
        "category move: old list updated in {a:.1?}, new list in {:.1?}",
        a + b
    );
    assert!(a + b < Duration::from_secs(1));
}

/// Read-your-writes on create (issue #13): the `Location` of a created
/// product answers 200 at once on the instance that created it (its Bloom
/// guard, negative cache and stored 404s learn the id before the 201), and
/// on the other instance within the staleness bound.
async fn created_reads_at_once(http: &Http, stack: &Stack) {
    let bound = tiercache_core::DEFAULT_STALENESS_BOUND + Duration::from_millis(250);
    let mut other_took = Vec::new();
    for i in 0..15 {
        let creator = &stack.urls[i % 2];
        let other = &stack.urls[(i + 1) % 2];
        let r = http
            .send(
                "POST",
                &format!("{creator}/products"),
                Some(r#"{"name":"ryw","price_cents":1,"category":"e2e-ryw"}"#),
            )
            .await
            .expect("post");
        assert_eq!(r.status, 201, "{:?}", r.body);
        let location = r.header("location").expect("a Location").to_owned();
        let r = http
            .get(&format!("{creator}{location}"))
            .await
            .expect("get");
        assert_eq!(
            (r.status, name_of(&r).as_str()),
            (200, "ryw"),
            "create {i}: {location} right after its 201 on the instance that created it"
        );
        let created = Instant::now();
        loop {
            let r = http.get(&format!("{other}{location}")).await.expect("get");
            if r.status == 200 {
                other_took.push(created.elapsed());
                break;
            }
            assert!(
                created.elapsed() < bound,
                "create {i}: {location} still {} on the other instance after {:?}",
                r.status,
                created.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    other_took.sort();
    println!(
        "created products read at once on their creator (15 of 15); on the other instance after {:?} (median) / {:?} (max)",
        other_took[other_took.len() / 2],
        other_took[other_took.len() - 1]
    );
}

/// A product created through one instance is found by both (the sidecar's
/// "created" flag feeds the Bloom guards); deleted, it is gone from both.
async fn created_and_deleted(http: &Http, stack: &Stack) {
    let r = http
        .send(
            "POST",
            &format!("{}/products", stack.urls[0]),
            Some(r#"{"name":"e2e lamp","price_cents":1999,"category":"e2e-new"}"#),
        )
        .await
        .expect("post");
    assert_eq!(r.status, 201, "{:?}", r.body);
    let j = r.json();
    let mut keys: Vec<&str> = j
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["category", "id", "name", "price_cents", "updated_at"]
    );
    let id = j["id"].as_i64().expect("id");
    let path = format!("/products/{id}");
    let took = until_all(http, &stack.urls, &path, |r| {
        r.status == 200 && name_of(r) == "e2e lamp"
    })
    .await;
    println!("created product visible on both instances after {took:.1?}");
    let r = http
        .send(
            "PUT",
            &format!("{}{path}", stack.urls[1]),
            Some(r#"{"name":"e2e lamp v2","price_cents":2999,"category":"e2e-new"}"#),
        )
        .await
        .expect("put");
    assert_eq!(r.status, 200);
    until_all(http, &stack.urls, &path, |r| {
        r.status == 200 && name_of(r) == "e2e lamp v2"
    })
    .await;
    let r = http
        .send("DELETE", &format!("{}{path}", stack.urls[0]), None)
        .await
        .expect("delete");
    assert_eq!(r.status, 204);
    let took = until_all(http, &stack.urls, &path, |r| r.status == 404).await;
    println!("deleted product gone from both instances after {took:.1?}");
    assert!(took < Duration::from_secs(1));

    // The 404 of an id the database denied (the Bloom guard knows the id)
    // is cached as a negative, tagged `product:{id}` ...
    for u in &stack.urls {
        let r = http.get(&format!("{u}{path}")).await.expect("get");
        assert_eq!(r.status, 404);
        if r.header("x-row-cache") == Some("bloom") {
            // A Bloom rebuild since the insert: answered, not stored.
            continue;
        }
        let r = http.get(&format!("{u}{path}")).await.expect("get");
        assert_eq!(r.status, 404);
        assert_eq!(r.x_cache.as_deref(), Some("hit"), "{u}{path}: a negative");
    }
    // ... so the row coming back with plain SQL drops it everywhere.
    stack
        .pg
        .psql(&format!(
            "INSERT INTO products (id, name, price_cents, category) \
             VALUES ({id}, 'e2e lamp again', 1, 'e2e-new')"
        ))
        .expect("insert");
    let took = until_all(http, &stack.urls, &path, |r| {
        r.status == 200 && name_of(r) == "e2e lamp again"
    })
    .await;
    println!("cached 404 replaced by the re-inserted row on both instances after {took:.1?}");
    assert!(took < Duration::from_secs(1));
}

async fn total_reads(http: &Http, urls: &[String], kind: &str) -> u64 {
    let mut n = 0;
    for u in urls {
        n += http.db_reads(u, kind).await;
    }
    n
}

/// 200 concurrent requests for a cold id, over both instances: at most two
/// database reads of it.
async fn stampede(http: &Http, urls: &[String], id: i64) {
    let before = total_reads(http, urls, "by_id").await;
    let gate = Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = http.clone();
        let url = format!("{}/products/{id}", urls[i % urls.len()]);
        let gate = Arc::clone(&gate);
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            http.get(&url).await
        }));
    }
    for t in tasks {
        let r = t.await.expect("task").expect("request");
        assert_eq!(r.status, 200);
    }
    let reads = total_reads(http, urls, "by_id").await - before;
    println!("200 concurrent requests for cold id {id} over 2 instances: {reads} database read(s)");
    assert!(reads <= 2, "{reads} database reads");
}

/// 1,000 requests for ids that do not exist: (almost) no database reads.
async fn missing_ids(http: &Http, urls: &[String], hi: i64) {
    let before = total_reads(http, urls, "by_id").await;
    let rejected_before = bloom_rejections(http, urls).await;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, urls, next) = (http.clone(), urls.to_vec(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= 1000 {
                    return;
                }
                let id = hi + 1_000_000 + i as i64 * 7919;
                let url = format!("{}/products/{id}", urls[i as usize % urls.len()]);
                let r = http.get(&url).await.expect("request");
                assert_eq!(r.status, 404, "{url}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let reads = total_reads(http, urls, "by_id").await - before;
    let rejected = bloom_rejections(http, urls).await - rejected_before;
    println!(
        "1,000 requests for missing ids: {reads} database read(s), {rejected} Bloom rejections"
    );
    assert!(reads <= 20, "{reads} database reads");
}

async fn bloom_rejections(http: &Http, urls: &[String]) -> u64 {
    let mut n = 0;
    for u in urls {
        let text = http.get(&format!("{u}/metrics")).await.expect("metrics");
        let text = String::from_utf8_lossy(&text.body).into_owned();
        n += text
            .lines()
            .filter(|l| l.starts_with("tiercache_bloom_rejections_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    n
}

/// Redis is killed (SIGKILL) during a load and restarted later: every
/// request still gets its right answer.
async fn redis_killed_under_load(http: &Http, stack: &Stack, lo: i64, hi: i64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let (http, urls) = (http.clone(), stack.urls.clone());
        let (stop, ok, failures) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failures));
        tasks.push(tokio::spawn(async move {
            let mut n: u64 = w;
            while !stop.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let pick = (n >> 33) as i64;
                let missing = pick % 10 == 0;
                let id = if missing {
                    hi + 5_000_000 + pick % 100_000
                } else {
                    lo + pick % (hi - lo + 1)
                };
                let url = format!("{}/products/{id}", urls[(n >> 20) as usize % urls.len()]);
                let want = if missing { 404 } else { 200 };
                match http.get(&url).await {
                    Ok(r) if r.status == want => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.lock().expect("lock").push(format!(
                        "{url}: {} {:?}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )),
                    Err(e) => failures.lock().expect("lock").push(e),
                }
            }
        }));
    }
    // A row both instances hold locally, changed while Redis is down below.
    let changed = lo + 3;
    held_everywhere(http, stack, changed).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kill = ok.load(Ordering::Relaxed);
    let redis = Arc::clone(&stack.redis);
    tokio::task::spawn_blocking(move || redis.lock().expect("lock").kill())
        .await
        .expect("kill");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The sidecar cannot delete it in Redis, but publishes the change at
    // once: both instances drop their copies and read the database.
    let took = renamed_everywhere(http, stack, changed, "renamed while Redis is down").await;
    println!("staleness after a SQL UPDATE with Redis down: {took:.1?}");
    assert!(
        took < Duration::from_secs(2),
        "staleness with Redis down {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = ok.load(Ordering::Relaxed) - before_kill;
    let redis = Arc::clone(&stack.redis);
    tokio::task::spawn_blocking(move || redis.lock().expect("lock").restart())
        .await
        .expect("join")
        .expect("restart redis");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task");
    }
    let failures = failures.lock().expect("lock");
    let total = ok.load(Ordering::Relaxed);
    println!(
        "redis killed under load: {total} requests answered right ({during} while Redis was down), {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        during > 100,
        "too few requests while Redis was down: {during}"
    );
}
