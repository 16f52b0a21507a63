//! `inspect`: what Redis holds for one key, decoded.

use std::io::Write;

use tiercache_core::backend::{Cleared, KeyFormat, SharedTier, describe_envelope};

use crate::args::InspectArgs;
use crate::conn::Settings;
use crate::error::Error;
use crate::ops::{check_max_key_len, check_namespace, now_ms};
use crate::time::{relative, rfc3339, span};

/// `tiercache inspect`: the storage key, the Redis key, the value's TTL,
/// the key's version and lease, the envelope header, the namespace's clear
/// epochs and the tags' current versions. A value that does not decode is
/// reported as such.
///
/// # Errors
///
/// A setting is wrong, or Redis failed.
pub async fn inspect(args: InspectArgs, out: &mut dyn Write) -> Result<(), Error> {
    let ns = args.namespace.as_str();
    check_namespace(ns)?;
    check_max_key_len(ns, args.max_key_len)?;
    let settings = Settings::resolve(&args.conn)?;
    let shared = settings.connect_shared("inspect").await?;
    let storage_key = KeyFormat::new(ns, args.max_key_len).storage_key(&args.key);
    let found = shared
        .tier
        .inspect(&storage_key)
        .await
        .map_err(shared.err("inspect"))?;
    let epochs = shared
        .tier
        .clear_epochs(ns)
        .await
        .map_err(shared.err("clear_epochs"))?;
    let now = now_ms();
    let w = 14;
    writeln!(out, "{:w$}{ns}", "namespace:")?;
    writeln!(out, "{:w$}{}", "key:", args.key)?;
    writeln!(out, "{:w$}{storage_key}", "storage key:")?;
    writeln!(out, "{:w$}{}", "redis key:", found.redis_key)?;
    match &found.value {
        Some(v) => writeln!(out, "{:w$}yes ({} bytes)", "stored:", v.len())?,
        None => writeln!(out, "{:w$}no: not stored", "stored:")?,
    }
    match (found.value.is_some(), found.ttl) {
        (true, Some(ttl)) => writeln!(
            out,
            "{:w$}{}",
            "ttl:",
            span(i128::try_from(ttl.as_millis()).unwrap_or(i128::MAX))
        )?,
        (true, None) => writeln!(out, "{:w$}none (persistent)", "ttl:")?,
        (false, _) => writeln!(out, "{:w$}-", "ttl:")?,
    }
    writeln!(out, "{:w$}{}", "version:", found.version)?;
    writeln!(
        out,
        "{:w$}{}",
        "lease:",
        if found.lease_held {
            "held (a load is in progress)"
        } else {
            "free"
        }
    )?;
    writeln!(
        out,
        "{:w$}epoch {}, floor {}",
        "clear epochs:", epochs.epoch, epochs.floor
    )?;
    let Some(bytes) = &found.value else {
        return Ok(());
    };
    let info = match describe_envelope(bytes) {
        Ok(info) => info,
        Err(e) => {
            writeln!(
                out,
                "{:w$}undecodable ({e}): a reading instance treats it as a miss",
                "envelope:"
            )?;
            return Ok(());
        }
    };
    writeln!(
        out,
        "{:w$}format v{}, {}, {}, {} bytes stored, {} bytes payload",
        "envelope:",
        info.version,
        if info.negative {
            "negative (origin had no such item)"
        } else {
            "value"
        },
        if info.compressed {
            "lz4"
        } else {
            "uncompressed"
        },
        info.stored_len,
        info.payload_len
    )?;
    let t = info.times;
    for (label, at) in [
        ("written:", t.written_ms),
        ("refresh at:", t.soft_ms),
        ("fresh until:", t.fresh_ms),
        ("stale until:", t.stale_ms),
    ] {
        writeln!(out, "{label:w$}{} ({})", rfc3339(at), relative(at, now))?;
    }
    let freshness = if now < t.soft_ms {
        "fresh"
    } else if now < t.fresh_ms {
        "fresh, due for a refresh"
    } else if now < t.stale_ms {
        "expired, servable within grace"
    } else {
        "expired"
    };
    writeln!(out, "{:w$}{freshness}", "freshness:")?;
    let judged = match epochs.judge(info.clear_epoch) {
        Cleared::Current => "current",
        Cleared::Stale => "stale: written before a soft clear (served only within grace)",
        Cleared::Gone => "gone: written before a hard clear (a miss)",
    };
    writeln!(out, "{:w$}{} -> {judged}", "clear epoch:", info.clear_epoch)?;
    if info.tags.is_empty() {
        writeln!(out, "{:w$}none", "tags:")?;
        return Ok(());
    }
    let names: Vec<String> = info.tags.iter().map(|(t, _)| t.clone()).collect();
    let current = shared
        .tier
        .tag_versions(ns, &names)
        .await
        .map_err(shared.err("tag_versions"))?;
    writeln!(out, "{:w$}{}", "tags:", info.tags.len())?;
    for ((tag, recorded), now_v) in info.tags.iter().zip(current) {
        let verdict = if now_v == *recorded {
            "current".to_owned()
        } else {
            "invalidated since written (a miss)".to_owned()
        };
        writeln!(
            out,
            "  {tag:?}: recorded version {recorded}, now {now_v}: {verdict}"
        )?;
    }
    Ok(())
}
