//! The Prometheus text parser behind `stats` never panics, whatever the
//! page, and reads back what it is given in the format.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use tiercache_cli::prom::parse;
use tiercache_cli::stats::{histogram_quantile, namespace_stats, namespaces, render_all};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_any_text(text in any::<String>()) {
        let e = parse(&text);
        let _ = render_all(&e, None);
    }

    #[test]
    fn never_panics_on_near_misses(
        text in r#"([a-z_:]{0,6}(\{([a-z_]{0,3}(=("([^"\\]|\\.){0,4}"?)?)?,?){0,3}\}?)?[ \t]{0,2}(-?[0-9.eE+]{0,6}|NaN|\+Inf|-Inf|x)?( [0-9-]{0,4})?\n?){0,8}"#
    ) {
        let e = parse(&text);
        for ns in namespaces(&e) {
            let _ = namespace_stats(&e, &ns);
        }
        let _ = render_all(&e, Some("x"));
    }

    #[test]
    fn reads_back_written_samples(
        name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,12}",
        labels in proptest::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,8}", any::<String>()), 0..4),
        value in any::<f64>().prop_filter("not NaN", |v| !v.is_nan()),
    ) {
        let rendered: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                format!("{k}=\"{v}\"")
            })
            .collect();
        // Lines are split on \r too by `lines()` only as \r\n: keep values
        // free of bare carriage returns.
        prop_assume!(labels.iter().all(|(_, v)| !v.contains('\r')));
        let line = format!("{name}{{{}}} {value:?}\n", rendered.join(","));
        let e = parse(&line);
        prop_assert!(e.errors.is_empty(), "{:?} for {line:?}", e.errors);
        prop_assert_eq!(e.samples.len(), 1);
        let s = &e.samples[0];
        prop_assert_eq!(&s.name, &name);
        prop_assert_eq!(&s.labels, &labels);
        prop_assert_eq!(s.value, value);
    }

    #[test]
    fn quantiles_stay_within_the_bounds(
        mut les in proptest::collection::vec(0.0f64..1e3, 1..8),
        counts in proptest::collection::vec(0u32..1000, 1..8),
        q in 0.0f64..=1.0,
    ) {
        les.sort_by(f64::total_cmp);
        let mut acc = 0.0;
        let buckets: Vec<(f64, f64)> = les
            .iter()
            .zip(counts.iter())
            .map(|(le, c)| { acc += f64::from(*c); (*le, acc) })
            .collect();
        if let Some(v) = histogram_quantile(q, &buckets) {
            prop_assert!(v >= 0.0 && v <= *les.last().unwrap(), "{v}");
        }
    }
}
