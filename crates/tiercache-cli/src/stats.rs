//! `stats`: an instance's (or the sidecar's) `/metrics`, as a table per
//! namespace.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use crate::args::StatsArgs;
use crate::error::Error;
use crate::prom::{Exposition, Sample, parse};
use crate::time::bytes;

/// The bus states of the `tiercache_bus_state` gauge.
const BUS_STATES: [&str; 3] = ["live", "disconnected", "silent"];

/// Quantile `q` of a Prometheus histogram from its cumulative buckets
/// `(le, count)`, interpolated within the bucket as `histogram_quantile`
/// does. `None` without observations; the largest finite bound when the
/// quantile falls in the `+Inf` bucket.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets
        .iter()
        .copied()
        .filter(|(le, c)| !le.is_nan() && c.is_finite())
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 || !q.is_finite() {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut prev_le, mut prev_c) = (0.0_f64, 0.0_f64);
    for &(le, c) in &b {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev_le);
            }
            let lower = if prev_le <= le { prev_le } else { 0.0 };
            let width = c - prev_c;
            if width <= 0.0 {
                return Some(le);
            }
            return Some(lower + (le - lower) * ((rank - prev_c) / width));
        }
        prev_le = le;
        prev_c = c;
    }
    Some(prev_le)
}

/// A namespace's figures, read from an exposition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceStats {
    /// The namespace.
    pub namespace: String,
    /// Lookups answered by the local tier.
    pub local_hits: Option<f64>,
    /// Lookups answered by the shared tier.
    pub shared_hits: Option<f64>,
    /// Lookups neither tier answered.
    pub misses: Option<f64>,
    /// Origin loads.
    pub loads: Option<f64>,
    /// Callers that joined a load in flight.
    pub collapsed: Option<f64>,
    /// Bloom "absent" answers.
    pub bloom_rejections: Option<f64>,
    /// Negative hits.
    pub negative_hits: Option<f64>,
    /// Invalidations published.
    pub invalidations_sent: Option<f64>,
    /// Invalidations applied from others.
    pub invalidations_received: Option<f64>,
    /// Bus messages lost.
    pub messages_lost: Option<f64>,
    /// Whole-local-tier flushes.
    pub local_flushes: Option<f64>,
    /// The bus state (`live`, `disconnected`, `silent`).
    pub bus_state: Option<String>,
    /// Local entries.
    pub local_entries: Option<f64>,
    /// Local bytes.
    pub local_bytes: Option<f64>,
    /// Commit-to-evict lag, p50 and p99, in seconds.
    pub evict_lag: Option<(f64, f64)>,
}

fn sum(e: &Exposition, name: &str, ns: &str, extra: Option<(&str, &str)>) -> Option<f64> {
    let mut found = None;
    for s in &e.samples {
        if s.name == name
            && s.label("namespace") == Some(ns)
            && extra.is_none_or(|(k, v)| s.label(k) == Some(v))
        {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}

/// p50 and p99 of histogram (or summary) `name` for namespace `ns`.
fn lag(e: &Exposition, name: &str, ns: &str) -> Option<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let buckets: Vec<(f64, f64)> = e
        .samples
        .iter()
        .filter(|s| s.name == bucket && s.label("namespace") == Some(ns))
        .filter_map(|s| Some((s.label("le")?.parse::<f64>().ok()?, s.value)))
        .collect();
    if !buckets.is_empty() {
        return Some((
            histogram_quantile(0.5, &buckets)?,
            histogram_quantile(0.99, &buckets)?,
        ));
    }
    // A summary (the exporter's default without buckets).
    let q = |want: f64| {
        e.samples.iter().find_map(|s: &Sample| {
            (s.name == name
                && s.label("namespace") == Some(ns)
                && s.label("quantile")?.parse::<f64>().ok()? == want
                && s.value.is_finite())
            .then_some(s.value)
        })
    };
    Some((q(0.5)?, q(0.99)?))
}

/// The namespaces an exposition has engine metrics for (`tiercache_*`
/// with a `namespace` label, the sidecar's own excepted), sorted.
pub fn namespaces(e: &Exposition) -> Vec<String> {
    let set: BTreeSet<&str> = e
        .samples
        .iter()
        .filter(|s| s.name.starts_with("tiercache_") && !s.name.starts_with("tiercache_sidecar_"))
        .filter_map(|s| s.label("namespace"))
        .collect();
    set.into_iter().map(str::to_owned).collect()
}

/// Reads namespace `ns`'s figures from `e`.
pub fn namespace_stats(e: &Exposition, ns: &str) -> NamespaceStats {
    let c = |name: &str| sum(e, name, ns, None);
    let bus_state = BUS_STATES
        .iter()
        .find(|st| sum(e, "tiercache_bus_state", ns, Some(("state", st))).is_some_and(|v| v >= 1.0))
        .map(|s| (*s).to_owned());
    NamespaceStats {
        namespace: ns.to_owned(),
        local_hits: sum(e, "tiercache_hits_total", ns, Some(("tier", "local"))),
        shared_hits: sum(e, "tiercache_hits_total", ns, Some(("tier", "shared"))),
        misses: c("tiercache_misses_total"),
        loads: c("tiercache_loads_total"),
        collapsed: c("tiercache_collapsed_waiters_total"),
        bloom_rejections: c("tiercache_bloom_rejections_total"),
        negative_hits: c("tiercache_negative_hits_total"),
        invalidations_sent: c("tiercache_invalidations_sent_total"),
        invalidations_received: c("tiercache_invalidations_received_total"),
        messages_lost: c("tiercache_messages_lost_total"),
        local_flushes: c("tiercache_local_flushes_total"),
        bus_state,
        local_entries: c("tiercache_local_entries"),
        local_bytes: c("tiercache_local_bytes"),
        evict_lag: lag(e, "tiercache_commit_to_evict_seconds", ns),
    }
}

fn count(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) => format!("{v}"),
        None => "-".to_owned(),
    }
}

fn ratio(hits: Option<f64>, of: Option<f64>) -> String {
    match (hits, of) {
        (Some(h), Some(t)) if t > 0.0 => {
            format!(
                "{:.1}%  ({} of {})",
                100.0 * h / t,
                count(Some(h)),
                count(Some(t))
            )
        }
        (Some(_), Some(_)) => "-  (no lookups)".to_owned(),
        _ => "-".to_owned(),
    }
}

/// Renders `s` as the `stats` table.
pub fn render(s: &NamespaceStats) -> String {
    let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
    };
    let lookups = add(add(s.local_hits, s.shared_hits), s.misses);
    let reached_shared = add(s.shared_hits, s.misses);
    let lag = |pick: fn(&(f64, f64)) -> f64| {
        s.evict_lag
            .as_ref()
            .map_or_else(|| "-".to_owned(), |l| format_secs(pick(l)))
    };
    let rows: Vec<(&str, String)> = vec![
        (
            "bus state",
            s.bus_state.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("local hit ratio", ratio(s.local_hits, lookups)),
        ("shared hit ratio", ratio(s.shared_hits, reached_shared)),
        ("misses", count(s.misses)),
        ("loads", count(s.loads)),
        ("collapsed waiters", count(s.collapsed)),
        ("bloom rejections", count(s.bloom_rejections)),
        ("negative hits", count(s.negative_hits)),
        ("invalidations sent", count(s.invalidations_sent)),
        ("invalidations received", count(s.invalidations_received)),
        ("messages lost", count(s.messages_lost)),
        ("local flushes", count(s.local_flushes)),
        ("local entries", count(s.local_entries)),
        (
            "local bytes",
            s.local_bytes.map_or_else(|| "-".to_owned(), bytes),
        ),
        ("commit-to-evict p50", lag(|l| l.0)),
        ("commit-to-evict p99", lag(|l| l.1)),
    ];
    let mut out = format!("namespace {}\n", s.namespace);
    for (k, v) in rows {
        out.push_str(&format!("  {k:<24}{v}\n"));
    }
    out
}

/// Seconds for people: `850µs`, `12.3ms`, `1.20s`.
pub fn format_secs(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v < 0.001 {
        format!("{:.0}µs", v * 1e6)
    } else if v < 1.0 {
        format!("{:.1}ms", v * 1e3)
    } else {
        format!("{v:.2}s")
    }
}

/// The sidecar's figures, when the endpoint is a sidecar's.
fn render_sidecar(e: &Exposition) -> Option<String> {
    let has = |n: &str| e.samples.iter().any(|s| s.name == n);
    if !e
        .samples
        .iter()
        .any(|s| s.name.starts_with("tiercache_sidecar_"))
    {
        return None;
    }
    let total = |n: &str| {
        has(n).then(|| {
            e.samples
                .iter()
                .filter(|s| s.name == n)
                .map(|s| s.value)
                .sum::<f64>()
        })
    };
    let buckets: Vec<(f64, f64)> = e
        .samples
        .iter()
        .filter(|s| s.name == "tiercache_sidecar_lag_seconds_bucket")
        .filter_map(|s| Some((s.label("le")?.parse::<f64>().ok()?, s.value)))
        .collect();
    let q = |p| histogram_quantile(p, &buckets).map_or_else(|| "-".to_owned(), format_secs);
    let rows = [
        (
            "source connected",
            total("tiercache_sidecar_source_connected").map_or_else(
                || "-".to_owned(),
                |v| if v >= 1.0 { "yes" } else { "no" }.to_owned(),
            ),
        ),
        (
            "invalidations sent",
            count(total("tiercache_sidecar_invalidations_sent_total")),
        ),
        (
            "keys invalidated",
            count(total("tiercache_sidecar_keys_invalidated_total")),
        ),
        (
            "tags invalidated",
            count(total("tiercache_sidecar_tags_invalidated_total")),
        ),
        (
            "publish backlog",
            count(total("tiercache_sidecar_publish_backlog")),
        ),
        (
            "slot lag",
            total("tiercache_sidecar_slot_lag_bytes").map_or_else(
                || "-".to_owned(),
                |v| {
                    if v < 0.0 {
                        "unknown".to_owned()
                    } else {
                        bytes(v)
                    }
                },
            ),
        ),
        ("commit-to-publish p50", q(0.5)),
        ("commit-to-publish p99", q(0.99)),
    ];
    let mut out = "sidecar\n".to_owned();
    for (k, v) in rows {
        out.push_str(&format!("  {k:<24}{v}\n"));
    }
    Some(out)
}

/// Renders every table of `e` (only `only`'s, when given).
pub fn render_all(e: &Exposition, only: Option<&str>) -> String {
    let mut out = String::new();
    let names = namespaces(e);
    for ns in names
        .iter()
        .filter(|n| only.is_none_or(|o| o == n.as_str()))
    {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&render(&namespace_stats(e, ns)));
    }
    if only.is_none()
        && let Some(s) = render_sidecar(e)
    {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&s);
    }
    out
}

/// `tiercache stats`.
///
/// # Errors
///
/// The scrape failed, the page has no tiercache metrics (or none for
/// `--namespace`), or the output closed.
pub async fn stats(args: StatsArgs, out: &mut dyn Write) -> Result<(), Error> {
    if args.timeout_ms == 0 {
        return Err(Error::setting("--timeout-ms", "must be at least 1"));
    }
    let text = crate::http_get::get(&args.url, Duration::from_millis(args.timeout_ms)).await?;
    let e = parse(&text);
    if !e.errors.is_empty() {
        eprintln!(
            "warning: {} line(s) of the page not understood (first: line {}: {})",
            e.errors.len(),
            e.errors[0].line,
            e.errors[0].reason
        );
    }
    let table = render_all(&e, args.namespace.as_deref());
    if table.is_empty() {
        return Err(match &args.namespace {
            Some(ns) => Error::setting(
                "--namespace",
                format!("no metrics for namespace {ns:?} at {}", args.url),
            ),
            None => Error::Scrape {
                url: args.url.clone(),
                reason: "no tiercache metrics on the page".to_owned(),
                source: None,
            },
        });
    }
    out.write_all(table.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = [
            (0.001, 0.0),
            (0.01, 50.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        let p50 = histogram_quantile(0.5, &b).unwrap();
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        let p99 = histogram_quantile(0.99, &b).unwrap();
        assert!((p99 - (0.01 + 0.09 * 0.98)).abs() < 1e-9, "{p99}");
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        assert_eq!(
            histogram_quantile(0.99, &[(1.0, 1.0), (f64::INFINITY, 10.0)]),
            Some(1.0)
        );
        assert_eq!(histogram_quantile(0.5, &[]), None);
    }
}
