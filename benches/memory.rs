//! Memory: the local tier filled past its configured capacity, its resident
//! memory against that capacity, and its per-entry overhead against raw moka
//! holding the same entries, in the same run.
//!
//! Each measurement runs in a child process of its own (this binary run
//! again with `MEMORY_BENCH_CHILD` set), so one variant's freed memory does
//! not hide in the next one's figure. A child reports its resident set
//! (`/proc/self/statm`) before and after filling, and the entries it holds.
//!
//! Cases, with the capacity `MEMORY_BENCH_MIB` (64 MiB unless set):
//!
//! - 1,000,000 small entries (a 32-byte string each), then 200,000 of
//!   1 KiB, read through `Cache::get_or_load` on a local-only cache: every
//!   key a miss and a fill, so the tier evicts by weight once it is full,
//!   and read again at once, so the per-thread hot copies fill too; two
//!   tasks on two workers;
//! - raw moka (`moka::sync::Cache<u64, Arc<String>>`, bounded by entry
//!   count to as many entries as the engine kept), filled with the same
//!   keys and values from two threads, each key read before its insert (a
//!   miss) and after it, as the engine's callers read it, so moka's
//!   frequency sketch sees the reads the engine's tier sees and admits and
//!   evicts as it does (with inserts alone its sketch sees no reads, and its
//!   churn differs); and moka configured as the engine's tier is (a 128-bit key, a
//!   weigher, a TTL, an entry of the engine's entry's size), to show which
//!   part of the overhead is moka's own.
//!
//! Reported: the engine's resident growth against the capacity (target:
//! at most 1.5x, plus a fixed base), and bytes per entry beyond the value's
//! own bytes, the engine's against moka's (target: at most 1.5x). Beside
//! the resident figures, each child's live heap per entry (bytes the
//! allocator handed out and has not taken back, counted by `stats_alloc`):
//! what the entries themselves hold, apart from the free memory the
//! allocator keeps around them.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::alloc::System;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tiercache_core::Cache;

const CHILD: &str = "MEMORY_BENCH_CHILD";
/// Keys of the runs that measure the fixed base.
const FEW: u64 = 2000;
const MIB: f64 = 1024.0 * 1024.0;

/// The system allocator, counting what it hands out and takes back: a
/// child's live heap, beside its resident set, tells the bytes its entries
/// hold from what the allocator keeps around them (free chunks, arenas).
#[global_allocator]
static ALLOC: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes in use (requested sizes, without the allocator's headers).
fn live() -> u64 {
    // A reallocation counts its growth as allocated, its shrinking as
    // deallocated.
    let s = ALLOC.stats();
    (s.bytes_allocated as u64).saturating_sub(s.bytes_deallocated as u64)
}

/// Resident bytes of this process.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn value(k: u64, len: usize) -> String {
    let mut s = format!("{k:020}");
    s.extend(std::iter::repeat_n('x', len.saturating_sub(s.len())));
    s
}

/// Resident and live heap bytes now.
fn snapshot() -> (u64, u64) {
    (resident(), live())
}

/// What a child prints: resident bytes before and after, entries held, and
/// live heap bytes before and after.
fn report(before: (u64, u64), entries: u64) {
    let (after, live_after) = snapshot();
    println!("{} {after} {entries} {} {live_after}", before.0, before.1);
}

fn engine_child(capacity: u64, keys: u64, len: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let before = snapshot();
    let cache: Cache<u64, String> = {
        let _guard = rt.enter();
        Cache::builder("memory")
            .local_only()
            .local_capacity(capacity)
            .ttl(Duration::from_secs(3600))
            .build()
            .unwrap()
    };
    rt.block_on(async {
        let tasks: Vec<_> = (0..2)
            .map(|t| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    // Each key filled, then read again at once (a
                    // second read in a row through a hot slot copies it).
                    let mut k = t;
                    while k < keys {
                        let v = cache
                            .get_or_load(&k, || async move { Some(value(k, len)) })
                            .await
                            .unwrap();
                        assert!(v.is_some());
                        cache.get(&k).await;
                        k += 2;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    // Let moka finish its pending evictions before the reading.
    std::thread::sleep(Duration::from_millis(200));
    let entries = cache.local_entry_count();
    report(before, entries);
    drop(cache);
}

fn moka_child(entries: u64, keys: u64, len: usize) {
    let before = snapshot();
    let cache: moka::sync::Cache<u64, Arc<String>> =
        moka::sync::Cache::builder().max_capacity(entries).build();
    two_threads(keys, |k| {
        assert!(cache.get(&k).is_none());
        cache.insert(k, Arc::new(value(k, len)));
        cache.get(&k);
    });
    cache.run_pending_tasks();
    report(before, cache.entry_count());
    drop(cache);
}

fn moka_like_child(entries: u64, keys: u64, len: usize) {
    let before = snapshot();
    let cache: moka::sync::Cache<u128, ([u64; 11], Arc<String>)> = moka::sync::Cache::builder()
        .max_capacity(entries * 100)
        .weigher(|_, _| 100)
        .time_to_live(Duration::from_secs(3600))
        .build();
    two_threads(keys, |k| {
        let k = u128::from(k);
        assert!(cache.get(&k).is_none());
        cache.insert(k, ([0; 11], Arc::new(value(k as u64, len))));
        cache.get(&k);
    });
    cache.run_pending_tasks();
    report(before, cache.entry_count());
    drop(cache);
}

/// `f` on keys `0..keys` from two threads, odd and even keys, as the
/// engine's two workers fill it.
fn two_threads(keys: u64, f: impl Fn(u64) + Sync) {
    std::thread::scope(|s| {
        for t in 0..2 {
            let f = &f;
            s.spawn(move || {
                let mut k = t;
                while k < keys {
                    f(k);
                    k += 2;
                }
            });
        }
    });
}

/// What one child measured.
struct Growth {
    /// Resident growth, bytes.
    resident: f64,
    /// Live heap growth, bytes.
    live: f64,
    /// Entries held at the end.
    held: f64,
}

/// Runs this binary as a child for one case; its report.
fn child(args: &str) -> Growth {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().last().unwrap();
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    Growth {
        resident: v[1].saturating_sub(v[0]) as f64,
        live: v[4].saturating_sub(v[3]) as f64,
        held: v[2] as f64,
    }
}

fn main() {
    if let Ok(args) = std::env::var(CHILD) {
        let a: Vec<u64> = args.split(',').map(|n| n.parse().unwrap()).collect();
        match a[0] {
            0 => engine_child(a[1], a[2], a[3] as usize),
            2 => moka_like_child(a[1], a[2], a[3] as usize),
            _ => moka_child(a[1], a[2], a[3] as usize),
        }
        return;
    }
    // `cargo bench` passes `--bench`; a filter argument picks nothing here.
    let mib: u64 = std::env::var("MEMORY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let capacity = mib * 1024 * 1024;
    let runs: usize = std::env::var("MEMORY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!("memory: local tier capacity {mib} MiB, {runs} runs per case");
    for (label, keys, len) in [
        ("1M x 32 B", 1_000_000u64, 32usize),
        ("200k x 1 KiB", 200_000, 1024),
    ] {
        let mut capacity_ratios = Vec::new();
        let mut overhead_ratios = Vec::new();
        for _ in 0..runs {
            // The same run with a few keys: its growth is the fixed base
            // (the runtime's threads, moka's table, the hot slots) and those
            // keys; the marginal cost of an entry is what the full run adds.
            let growth = |kind: u8, entries: u64, keys: u64| {
                child(&format!("{kind},{entries},{keys},{len}"))
            };
            let engine = growth(0, capacity, keys);
            let engine_base = growth(0, capacity, FEW);
            // Bytes per entry beyond the value, resident and live heap: the
            // full run's growth over the few-keys run's, per entry added.
            let per = |full: &Growth, base: &Growth| {
                let n = (full.held - base.held).max(1.0);
                (
                    (full.resident - base.resident) / n - len as f64,
                    (full.live - base.live) / n - len as f64,
                )
            };
            let (engine_per, engine_live) = per(&engine, &engine_base);
            let n = engine.held as u64;
            let (moka_per, moka_live) = per(&growth(1, n, keys), &growth(1, FEW, FEW));
            let (like_per, like_live) = per(&growth(2, n, keys), &growth(2, FEW, FEW));
            println!(
                "  {label}: engine holds {n} entries in {:.1} MiB ({:.2}x capacity; base {:.1} MiB), \
                 {engine_per:.0} B/entry beyond the value; moka {moka_per:.0} B/entry ({:.2}x); \
                 moka configured as the engine's tier {like_per:.0} B/entry; \
                 live heap per entry: engine {engine_live:.0}, moka {moka_live:.0}, \
                 moka as the engine's tier {like_live:.0}",
                engine.resident / MIB,
                engine.resident / capacity as f64,
                engine_base.resident / MIB,
                engine_per / moka_per
            );
            capacity_ratios.push(engine.resident / capacity as f64);
            overhead_ratios.push(engine_per / moka_per);
        }
        let summary = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let (c, c0, c1) = summary(capacity_ratios);
        let (o, o0, o1) = summary(overhead_ratios);
        println!(
            "memory summary, {label}: resident growth {c:.2}x capacity (range {c0:.2}-{c1:.2}; \
             target <= 1.5x), per-entry overhead {o:.2}x moka's (range {o0:.2}-{o1:.2}; \
             target <= 1.5x)"
        );
    }
}
