//! Every metric the Grafana dashboard (deploy/grafana/dashboards/*.json) and
//! the Prometheus alert rules (deploy/prometheus/alerts.yml) name is really
//! exported: the products stack (the app twice and the real sidecar, on
//! real Postgres, Redis and NATS from tiercache-testkit; see
//! tests/common/mod.rs) runs, takes some traffic (reads on both instances,
//! a Bloom rejection, a plain-SQL UPDATE whose invalidation reaches both),
//! and the app's and the sidecar's `/metrics` are scraped.
//!
//! The names are taken from the dashboard's `expr` strings (and its
//! variables' queries) and the rules' `expr` strings: identifiers starting
//! with `tiercache_`, outside string literals (label values such as
//! `job="tiercache-sidecar"`). A histogram is named by its series
//! (`..._bucket`), which a scrape shows only for a histogram with buckets,
//! not a summary. Builtins such as `up` are Prometheus's own and are not
//! looked for. Besides, every `tiercache_` metric exported follows the
//! Prometheus naming conventions: counters end in `_total`, nothing else
//! does, and base units are suffixes (`_seconds`, `_bytes`).
#![allow(missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Http, SEED, start_stack};

/// The repository root (this package is examples/products).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Names referenced

/// `expr` with its string literals ('..', "..", `..`) blanked out.
fn without_strings(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q != '`' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    out.push(c);
                }
            }
            None => {
                if matches!(c, '"' | '\'' | '`') {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// The `tiercache_` metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let text = without_strings(expr);
    let mut names = BTreeSet::new();
    let mut token = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
            continue;
        }
        // `$__rate_interval` and other Grafana variables are not names;
        // neither are recording rules' `level:metric:operation` names.
        if token.starts_with("tiercache_") && !token.contains(':') {
            names.insert(std::mem::take(&mut token));
        }
        token.clear();
    }
    names
}

/// Every string the dashboard hands to Prometheus: the panels' `expr`, and
/// the variables' queries (`label_values(metric, label)`).
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains('(') => {
                        out.push(s.clone());
                    }
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                dashboard_exprs(v, out);
            }
        }
        _ => {}
    }
}

/// The `expr:` values of a rules file: inline, or a block scalar (`>-`,
/// `|`, ...) whose lines are indented deeper than the key.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        i += 1;
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.starts_with(['>', '|']) {
            out.push(rest.trim_matches(|c| c == '"' || c == '\'').to_owned());
            continue;
        }
        let mut block = Vec::new();
        while i < lines.len() {
            let l = lines[i];
            if !l.trim().is_empty() && l.len() - l.trim_start().len() <= indent {
                break;
            }
            if !l.trim().is_empty() {
                block.push(l.trim());
            }
            i += 1;
        }
        out.push(block.join(" "));
    }
    out
}

fn referenced() -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut names: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();

    let dir = repo_root().join("deploy/grafana/dashboards");
    let mut dashboards: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    dashboards.sort();
    assert!(!dashboards.is_empty(), "no dashboard in {}", dir.display());
    for path in dashboards {
        let text = std::fs::read_to_string(&path).expect("dashboard");
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let mut exprs = Vec::new();
        dashboard_exprs(&json, &mut exprs);
        assert!(
            exprs.len() > 20,
            "{}: only {} exprs",
            path.display(),
            exprs.len()
        );
        for e in &exprs {
            for n in metric_names(e) {
                names.entry(n).or_default().insert("dashboard");
            }
        }
    }

    let rules = read("deploy/prometheus/alerts.yml");
    let exprs = rule_exprs(&rules);
    let alerts = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(exprs.len(), alerts, "one expr per alert rule: {exprs:#?}");
    for e in &exprs {
        let found = metric_names(e);
        assert!(
            !found.is_empty() || e.contains("up{"),
            "rule expr names no metric: {e}"
        );
        for n in found {
            names.entry(n).or_default().insert("alerts");
        }
    }

    // The rules' `job` selectors name jobs of the scrape configs.
    for config in [
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/prometheus-local.yml",
    ] {
        let text = read(config);
        let jobs: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("- job_name:"))
            .map(str::trim)
            .collect();
        for e in &exprs {
            for part in e.split("job=\"").skip(1) {
                let job = part.split('"').next().unwrap_or_default();
                assert!(
                    jobs.contains(job),
                    "{config} has no job {job:?} (rule: {e})"
                );
            }
        }
    }
    names
}

#[test]
fn the_name_extractor() {
    let e = r#"histogram_quantile(0.99, sum by (namespace, le) (rate(tiercache_commit_to_evict_seconds_bucket{job=~"tiercache_x", instance=~"$instance"}[$__rate_interval]))) > 0.5 and up{job="tiercache-sidecar"} == 0 or tiercache:ratio:rate5m"#;
    let names: Vec<String> = metric_names(e).into_iter().collect();
    assert_eq!(names, ["tiercache_commit_to_evict_seconds_bucket"]);
    let yaml = "      - alert: A\n        expr: tiercache_a_total > 0\n        for: 1m\n      - alert: B\n        expr: >-\n          sum(tiercache_b)\n          / 2\n\n        for: 1m\n";
    assert_eq!(
        rule_exprs(yaml),
        ["tiercache_a_total > 0", "sum(tiercache_b) / 2"]
    );
}

// ---------------------------------------------------------------------------
// Names exported

/// A scrape: metric name -> its `# TYPE` (or `untyped`), and every sample
/// name (`..._bucket`, `..._sum`, `..._count` of histograms included).
#[derive(Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    s.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            s.samples.insert(name);
        }
        s
    }

    fn has(&self, name: &str) -> bool {
        self.samples.contains(name) || self.types.contains_key(name)
    }
}

async fn scrape(http: &Http, base: &str) -> Scrape {
    let r = http
        .get(&format!("{base}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("scrape {base}: {e}"));
    assert_eq!(r.status, 200, "{base}/metrics");
    Scrape::parse(&String::from_utf8_lossy(&r.body))
}

/// Prometheus naming conventions for what tiercache exports.
fn naming_problems(scrape: &Scrape) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, kind) in &scrape.types {
        if !name.starts_with("tiercache_") {
            continue;
        }
        let total = name.ends_with("_total");
        match kind.as_str() {
            "counter" if !total => problems.push(format!("counter {name} lacks _total")),
            "counter" => {}
            _ if total => problems.push(format!("{kind} {name} ends in _total")),
            _ => {}
        }
        for (bad, unit) in [
            ("_ms", "_seconds"),
            ("_millis", "_seconds"),
            ("_milliseconds", "_seconds"),
            ("_secs", "_seconds"),
            ("_us", "_seconds"),
            ("_kb", "_bytes"),
            ("_mb", "_bytes"),
        ] {
            let base = name.strip_suffix("_total").unwrap_or(name);
            if base.ends_with(bad) || base.contains(&format!("{bad}_")) {
                problems.push(format!("{name}: use base units ({unit})"));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// The test

#[test]
fn dashboard_and_alert_metrics_are_exported() {
    let names = referenced();
    println!("referenced: {names:#?}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let http = rt.block_on(async { Http::new() });
    let started = Instant::now();
    let mut stack = start_stack(&http, &rt);
    println!("stack up in {:.1?}", started.elapsed());
    let lo: i64 = stack
        .pg
        .psql("select min(id) from products")
        .expect("min id")
        .trim()
        .parse()
        .expect("id");

    let (app, sidecar) = rt.block_on(async {
        // Reads: misses and loads, then hits (local and shared: the second
        // instance finds the first one's fill in Redis), lists, an id the
        // Bloom guard rejects.
        for _ in 0..3 {
            for u in &stack.urls {
                for id in lo..lo + 20 {
                    let r = http.get(&format!("{u}/products/{id}")).await.expect("read");
                    assert_eq!(r.status, 200);
                }
                let r = http
                    .get(&format!("{u}/products?category=books"))
                    .await
                    .expect("list");
                assert_eq!(r.status, 200);
                let missing = lo + i64::from(SEED) + 1_000_000;
                let r = http
                    .get(&format!("{u}/products/{missing}"))
                    .await
                    .expect("missing");
                assert_eq!(r.status, 404);
            }
        }
        // A plain-SQL change: the sidecar invalidates, both instances evict
        // (commit-to-evict lag recorded) and serve the new name.
        stack
            .pg
            .psql(&format!(
                "UPDATE products SET name = 'metrics-renamed', updated_at = now() WHERE id = {lo}"
            ))
            .expect("update");
        let deadline = Instant::now() + Duration::from_secs(15);
        for u in &stack.urls {
            loop {
                let r = http.get(&format!("{u}/products/{lo}")).await.expect("read");
                if r.json()["name"] == "metrics-renamed" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{u}: the UPDATE never reached the cache"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Counted on both sides before the scrape.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut app = Scrape::default();
        for u in &stack.urls {
            let s = scrape(&http, u).await;
            app.types.extend(s.types);
            app.samples.extend(s.samples);
        }
        (app, scrape(&http, &stack.sidecar_url).await)
    });
    for p in &mut stack.apps {
        p.assert_alive();
    }
    stack.sidecar.assert_alive();

    let mut missing = Vec::new();
    for (name, whence) in &names {
        let (on_app, on_sidecar) = (app.has(name), sidecar.has(name));
        println!(
            "{name:<50} {:<18} app: {:<5} sidecar: {}",
            whence.iter().copied().collect::<Vec<_>>().join("+"),
            on_app,
            on_sidecar
        );
        if !on_app && !on_sidecar {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| app.has(b) || sidecar.has(b));
            missing.push(match base {
                Some(b) => format!(
                    "{name} ({}: {b} is exported as a {}, not a histogram with buckets)",
                    whence.iter().copied().collect::<Vec<_>>().join("+"),
                    app.types
                        .get(b)
                        .or_else(|| sidecar.types.get(b))
                        .map_or("untyped", String::as_str)
                ),
                None => format!(
                    "{name} ({})",
                    whence.iter().copied().collect::<Vec<_>>().join("+")
                ),
            });
        }
    }
    // The sidecar's own metrics come from the sidecar.
    for name in names.keys().filter(|n| n.starts_with("tiercache_sidecar_")) {
        assert!(
            sidecar.has(name) || !app.has(name),
            "{name} is exported by the app, not the sidecar"
        );
    }
    let mut problems = naming_problems(&app);
    problems.extend(naming_problems(&sidecar));
    problems.sort();
    problems.dedup();

    assert!(
        missing.is_empty(),
        "referenced by the dashboard or the alert rules but exported by neither the app nor \
         the sidecar after traffic:\n  {}",
        missing.join("\n  ")
    );
    assert!(
        problems.is_empty(),
        "metric names against Prometheus conventions:\n  {}",
        problems.join("\n  ")
    );
    println!("metrics check done in {:.1?}", started.elapsed());
}
