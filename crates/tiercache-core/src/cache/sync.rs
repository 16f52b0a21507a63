//! Keeping the local tier honest: the bus listener, shared-tier failover
//! handling and Bloom rebuilds, each a task holding only a weak reference to
//! the cache so it ends when the cache is dropped.
//!
//! The rules (DESIGN.md, "No invalidation is lost silently"):
//! - bus disconnected: flush the local tier and cap local life to
//!   `unsynced_local_ttl` until it is back; on `Connected { resumed: false }`
//!   flush again (anything filled while down may predate a missed message);
//! - a gap in an origin's sequence numbers, or a slow-consumer drop: flush;
//! - no message or heartbeat within `bus_liveness`: stop reading the local
//!   tier (serve through the shared tier) until the bus is heard again, then
//!   flush and trust it again;
//! - shared tier reconnected or failed over: flush (its versions may have
//!   rolled back).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use futures::StreamExt;
use futures::stream::BoxStream;

use super::{FlushReason, Inner, LocalMode, now_ms};
use crate::bus::BusEvent;
use crate::shared::SharedEvent;

pub(super) fn start<K, V>(inner: &Arc<Inner<K, V>>, rt: &tokio::runtime::Handle)
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    if let Some(bus) = inner.bus.clone() {
        let weak = Arc::downgrade(inner);
        let ns = inner.config.namespace.clone();
        rt.spawn(async move {
            match bus.subscribe(&ns).await {
                Ok(sub) => listen(weak, sub).await,
                Err(e) => {
                    tracing::error!(ns = %ns, error = %e, "bus subscription failed; local tier stays capped");
                }
            }
        });
    }
    if let Some(events) = inner.shared.as_ref().and_then(|s| s.events()) {
        rt.spawn(watch_shared(Arc::downgrade(inner), events));
    }
    if let Some(bloom) = &inner.bloom {
        let every = bloom.config.rebuild_every;
        let weak = Arc::downgrade(inner);
        rt.spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if let Some(b) = &inner.bloom {
                    let keys = inner.keys.clone();
                    match b.rebuild(|k| keys.hash(k)).await {
                        Ok(n) => tracing::debug!(ns = %inner.config.namespace, keys = n, "bloom guard rebuilt"),
                        Err(e) => tracing::warn!(ns = %inner.config.namespace, error = %e, "bloom guard rebuild failed; keeping the previous filter"),
                    }
                }
                drop(inner);
                tokio::time::sleep(every).await;
            }
        });
    }
}

async fn watch_shared<K, V>(weak: Weak<Inner<K, V>>, mut events: BoxStream<'static, SharedEvent>)
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    while let Some(ev) = events.next().await {
        let Some(inner) = weak.upgrade() else { return };
        match ev {
            SharedEvent::Reconnected | SharedEvent::FailedOver => {
                tracing::info!(ns = %inner.config.namespace, event = ?ev, "shared tier changed; flushing the local tier");
                inner.flush_local_because(FlushReason::SharedFailover);
            }
            SharedEvent::Disconnected => {}
        }
    }
}

async fn listen<K, V>(weak: Weak<Inner<K, V>>, mut sub: BoxStream<'static, BusEvent>)
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let liveness = match weak.upgrade() {
        Some(i) => i.config.bus_liveness,
        None => return,
    };
    let mut last_seq: HashMap<u64, u64> = HashMap::new();
    let mut connected = false;
    let mut silent = false;
    loop {
        let next = tokio::time::timeout(liveness, sub.next()).await;
        let Some(inner) = weak.upgrade() else { return };
        let ev = match next {
            Err(_) => {
                if !silent {
                    silent = true;
                    inner.stats.bus_silences(1);
                    inner.set_mode(LocalMode::Bypass);
                    tracing::warn!(ns = %inner.config.namespace, ?liveness, "bus silent; local tier bypassed until it is heard again");
                }
                continue;
            }
            Ok(None) => {
                tracing::warn!(ns = %inner.config.namespace, "bus subscription ended; local tier capped");
                inner.flush_local_because(FlushReason::BusEnded);
                inner.set_mode(LocalMode::Capped);
                return;
            }
            Ok(Some(ev)) => ev,
        };
        if silent {
            silent = false;
            inner.flush_local_because(FlushReason::BusHeardAgain);
            inner.set_mode(if connected {
                LocalMode::Trusted
            } else {
                LocalMode::Capped
            });
        }
        match ev {
            BusEvent::Message(bytes) => {
                let msg = match inner.messages.decode(&bytes) {
                    Ok(m) if m.namespace == inner.config.namespace => m,
                    Ok(_) | Err(_) => {
                        inner.stats.messages_malformed(1);
                        continue;
                    }
                };
                if msg.origin == inner.instance {
                    continue;
                }
                if last_seq.len() > 10_000 {
                    last_seq.clear();
                }
                let last = last_seq.entry(msg.origin).or_insert(0);
                if *last != 0 && msg.seq > *last + 1 {
                    let lost = msg.seq - *last - 1;
                    inner.stats.messages_lost(lost);
                    tracing::warn!(ns = %inner.config.namespace, origin = msg.origin, lost, "gap in bus sequence; flushing the local tier");
                    inner.flush_local_because(FlushReason::SequenceGap);
                }
                *last = (*last).max(msg.seq);
                let hashes: Vec<_> = msg
                    .keys
                    .iter()
                    .map(|k| inner.keys.hash(k.as_str()))
                    .collect();
                inner.apply_local(&hashes, &msg.tags);
                tracing::debug!(
                    ns = %inner.config.namespace,
                    origin = msg.origin,
                    seq = msg.seq,
                    keys = ?msg.keys,
                    tags = ?msg.tags,
                    "invalidation applied"
                );
                if msg.created
                    && let Some(b) = &inner.bloom
                {
                    for h in &hashes {
                        b.add(*h);
                    }
                }
                inner.stats.invalidations_received(1);
                if inner.applied.receiver_count() > 0 {
                    let _ = inner.applied.send(super::Applied {
                        origin: msg.origin,
                        seq: msg.seq,
                        keys: msg.keys,
                        tags: msg.tags,
                        at: std::time::Instant::now(),
                    });
                }
                if msg.source_time_ms > 0 {
                    let lag = now_ms().saturating_sub(msg.source_time_ms);
                    inner.stats.evict_lag_seconds.record(lag as f64 / 1000.0);
                }
            }
            BusEvent::Connected { resumed } => {
                if !resumed {
                    inner.flush_local_because(FlushReason::BusReconnected);
                    last_seq.clear();
                }
                connected = true;
                inner.set_mode(LocalMode::Trusted);
            }
            BusEvent::Disconnected => {
                if connected {
                    inner.stats.bus_disconnects(1);
                }
                connected = false;
                inner.flush_local_because(FlushReason::BusDisconnected);
                inner.set_mode(LocalMode::Capped);
            }
            BusEvent::Heartbeat => {}
            BusEvent::Lost { count } => {
                inner.stats.messages_lost(count.max(1));
                inner.flush_local_because(FlushReason::MessagesDropped);
            }
        }
    }
}
