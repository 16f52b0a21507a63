//! Keeping the local tier honest: the bus listener, shared-tier failover
//! handling and Bloom rebuilds, each a task holding only a weak reference to
//! the cache so it ends when the cache is dropped.
//!
//! The rules (DESIGN.md, "No invalidation is lost silently"):
//! - bus disconnected: keep the local tier, but stale (a copy is served
//!   only as a stale one), and cap local life to `unsynced_local_ttl`; a
//!   window (`bus_liveness`) later, bypass it until the bus is back (a
//!   writer's shared-tier deletes may lag behind its stuck publishes); on
//!   `Connected { resumed: false }` flush (anything kept or filled while
//!   down may predate a missed message). After any reconnect,
//!   stay capped until every active origin's heartbeat has been heard live
//!   (an origin heartbeats only behind an empty queue: whatever it had
//!   stuck came first); on `Connected { resumed: true }` (a replaying bus,
//!   JetStream, delivered what was missed first) the kept entries are then
//!   fresh again, without a flush;
//! - a gap in an origin's sequence numbers, or a slow-consumer drop: flush;
//! - no message or heartbeat within `bus_liveness`: stop reading the local
//!   tier (serve through the shared tier) until the bus is heard again, then
//!   flush and trust it again; and at every such window detach the loads in
//!   flight, so that no caller joins a load older than the window;
//! - shared tier reconnected or failed over: flush (its versions may have
//!   rolled back);
//! - an active origin (one that published within the last few seconds; it
//!   heartbeats until it says farewell) not heard within `bus_liveness`:
//!   flush (its messages are stuck or lost on its side, which a live bus
//!   here cannot show) and bypass the local tier; once it has been silent
//!   longer than an origin heartbeats, cap local life until it is heard
//!   again or its stuck messages would have been given up (it may be alive
//!   behind a stuck queue, still writing);
//! - the namespace's clear epochs are read from the shared tier now and
//!   then, and after a reconnect or failover (see [`clear`](super::clear));
//! - every one of these is also a loss signal for the Bloom guard: it
//!   answers "maybe" until a rebuild started after the signal completes,
//!   and that rebuild starts at once.
//!
//! The windows follow from the staleness bound: the bus is asked for a
//! heartbeat every fifth of it, and silence for four fifths bypasses the
//! local tier.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tracing::Instrument;

use super::{FlushReason, Inner, LocalMode};
use crate::bus::BusEvent;
use crate::clock::Instant;
use crate::message::OriginSignal;
use crate::shared::SharedEvent;
use crate::stats::BusState;

/// How long past an active origin's window the listener wakes to judge
/// it (a window's end is exclusive).
const ORIGIN_JUDGED_AFTER: Duration = Duration::from_millis(1);

/// The first retry of a failed Bloom rebuild while it answers "maybe".
const BLOOM_RETRY_MIN: Duration = Duration::from_secs(1);

pub(super) fn start<K, V>(inner: &Arc<Inner<K, V>>, rt: &tokio::runtime::Handle)
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    if let Some(bus) = inner.bus.clone() {
        let weak = Arc::downgrade(inner);
        let ns = inner.config.namespace.clone();
        bus.heartbeat_at_least(inner.config.heartbeat());
        let span = tracing::info_span!("bus_listener", instance = inner.instance);
        rt.spawn(async move {
            match bus.subscribe(&ns).await {
                Ok(sub) => listen(weak, sub).instrument(span).await,
                Err(e) => {
                    tracing::error!(ns = %ns, error = %e, "bus subscription failed; local tier stays capped");
                }
            }
        });
    }
    if let Some(events) = inner.shared.as_ref().and_then(|s| s.events()) {
        rt.spawn(watch_shared(Arc::downgrade(inner), events));
    }
    if inner.bus.is_some() {
        inner.stats.bus_state(inner.mode().bus_state());
    }
    rt.spawn(housekeeping(Arc::downgrade(inner)));
    if let Some(bloom) = &inner.bloom {
        let every = bloom.config.rebuild_every;
        let wake = Arc::clone(&bloom.wake);
        let weak = Arc::downgrade(inner);
        rt.spawn(async move {
            // After a failure with a loss signal uncovered, retry soon
            // (doubling up to the period): "maybe" for every key sends
            // every miss to the origin.
            let mut retry = BLOOM_RETRY_MIN;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let mut next = every;
                if let Some(b) = &inner.bloom {
                    let keys = inner.keys.clone();
                    match b.rebuild(|k| keys.hash(k)).await {
                        Ok(n) => {
                            retry = BLOOM_RETRY_MIN;
                            tracing::debug!(ns = %inner.config.namespace, keys = n, "bloom guard rebuilt");
                        }
                        Err(e) => {
                            tracing::warn!(ns = %inner.config.namespace, error = %e, "bloom guard rebuild failed; keeping the previous filter");
                            if b.is_suspect() || !b.is_ready() {
                                next = retry.min(every);
                                retry = (retry * 2).min(every);
                            }
                        }
                    }
                }
                drop(inner);
                // A loss signal during the rebuild left a permit: no wait.
                tokio::select! {
                    () = tokio::time::sleep(next) => {}
                    () = wake.notified() => {}
                }
            }
        });
    }
}

/// How often the local-tier gauges are set.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Now and then: sets the local tier's and the outbox's gauges, and reads
/// the namespace's clear epochs from the shared tier (see
/// [`clear`](super::clear)), so that a clear whose message never came is
/// learnt within the period.
async fn housekeeping<K, V>(weak: Weak<Inner<K, V>>)
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let mut epochs_due = tokio::time::Instant::now();
    loop {
        let wait = {
            let Some(inner) = weak.upgrade() else { return };
            if let Some(l) = &inner.local {
                // moka's counts move with its maintenance: run what is due.
                l.run_pending_tasks();
                inner.stats.local_size(l.entry_count(), l.weighted_size());
            }
            if let Some(o) = &inner.outbox {
                let (queued, oldest) = o.backlog();
                inner.stats.outbox(queued, oldest);
            }
            if inner.shared.is_some() && tokio::time::Instant::now() >= epochs_due {
                inner.refresh_epochs().await;
                epochs_due = tokio::time::Instant::now() + inner.epochs_refresh_every();
            }
            GAUGES_EVERY.min(epochs_due.saturating_duration_since(tokio::time::Instant::now()))
        };
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
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
                // Its clear epochs may have changed too (a failover, a
                // restart that lost them): read them again.
                inner.refresh_epochs().await;
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
    let (liveness, clock) = match weak.upgrade() {
        Some(i) => (i.config.liveness(), i.clock().clone()),
        None => return,
    };
    let mut last_seq: HashMap<u64, u64> = HashMap::new();
    // When each active origin was last heard (a message or its heartbeat).
    let mut last_heard: HashMap<u64, Instant> = HashMap::new();
    // Whether the bus is connected and which origins are accounted for:
    // the local tier's mode follows from them (`Origins::mode`).
    let mut origins = Origins::default();
    // Whether the bus itself has delivered nothing for a window (not one
    // origin: `origins.silent`).
    let mut silent = false;
    // When the bus last delivered anything (the bus-silence window's start).
    let mut last_event = clock.now();
    loop {
        // Events already delivered come first. Only a listener that has
        // caught up judges an origin silent: a starved one would take its
        // own backlog for the origins' silence.
        let next = match sub.next().now_or_never() {
            Some(ev) => Ok(ev),
            None => {
                let Some(inner) = weak.upgrade() else { return };
                // An active origin not heard within the window: its messages may be
                // stuck or lost on its side while this bus is live (its own
                // connection down). A loss signal, once; its sequence numbers are
                // kept, so a gap still shows when it is heard again.
                // Judged only while this bus is heard: a disconnected or
                // silent one hears nobody.
                let now = clock.now();
                let went_silent: Vec<(u64, Instant)> = last_heard
                    .iter()
                    .filter(|(_, t)| {
                        origins.connected
                            && !silent
                            && now.saturating_duration_since(**t) > liveness
                    })
                    .map(|(o, t)| (*o, *t))
                    .collect();
                if !went_silent.is_empty() {
                    tracing::warn!(ns = %inner.config.namespace, origins = went_silent.len(), "an active origin went silent; local tier flushed and bypassed until it is heard again");
                    for (o, t) in went_silent {
                        last_heard.remove(&o);
                        origins.silent.insert(o, t);
                    }
                    inner.stats.bus_silences(1);
                    inner.flush_local_because(FlushReason::OriginSilent);
                    inner.set_mode(LocalMode::Bypass);
                    origins.awaiting = None;
                }
                let before = origins.silent.len();
                origins.silent.retain(|o, t| {
                    let keep = now.saturating_duration_since(*t) <= super::outbox::ACTIVE_FOR;
                    if !keep {
                        tracing::info!(ns = %inner.config.namespace, origin = *o, "a silent origin lapsed; local life capped until it is heard or its queue would have given up");
                        origins.lapsed.insert(*o, *t);
                    }
                    keep
                });
                let lapsed_before = origins.lapsed.len();
                origins.lapsed.retain(|_, t| {
                    now.saturating_duration_since(*t) <= super::outbox::GIVE_UP_AFTER
                });
                if before > 0 && origins.silent.is_empty() && !silent {
                    // Gone for longer than an origin heartbeats after its
                    // last message: if it crashed, none of its messages can
                    // still be unheard of; if it is alive behind a stuck
                    // queue, local life stays capped (`Origins::lapsed`).
                    inner.flush_local_because(FlushReason::BusHeardAgain);
                    inner.set_mode(origins.mode());
                } else if lapsed_before > 0 && origins.lapsed.is_empty() && !silent {
                    inner.set_mode(origins.mode());
                }
                drop(inner);
                // Woken when the bus has been quiet for the window, or
                // when an active origin's window ends first: an origin is
                // judged on time even while the bus delivers nothing at
                // all (a subscription that stalls after its last event
                // would otherwise put the judgement off by up to a window,
                // past the bound).
                // Once silent (or disconnected), every window from now.
                let now = clock.now();
                let mut silence_at = last_event + liveness;
                if silence_at <= now {
                    silence_at = now + liveness;
                }
                let wake = if origins.connected && !silent {
                    last_heard
                        .values()
                        .map(|t| *t + liveness + ORIGIN_JUDGED_AFTER)
                        .fold(silence_at, Instant::min)
                } else {
                    silence_at
                };
                let wait = wake.saturating_duration_since(now);
                match tokio::time::timeout(wait, sub.next()).await {
                    Err(_) if clock.now() < silence_at => continue,
                    next => next,
                }
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        let ev = match next {
            Err(_) => {
                // Every window of silence (or of a disconnect, which is
                // silent too): no caller from now on joins a load that began
                // a window ago or more. Such a load may have read the origin
                // before a write whose message is stuck, and the shared tier
                // no longer answers for the key; joining it would return the
                // old value past the bound. (Found by the model checker,
                // crates/tiercache-model.)
                inner.flights.detach_all();
                if !silent && origins.connected {
                    silent = true;
                    inner.stats.bus_silences(1);
                    inner.set_mode(LocalMode::Bypass);
                    inner.bloom_bus_down(true);
                    tracing::warn!(ns = %inner.config.namespace, ?liveness, "bus silent; local tier bypassed until it is heard again");
                } else if !origins.connected && inner.mode() != LocalMode::Bypass {
                    // Disconnected for a window: bypassed too, not merely
                    // capped. A writer whose publishes are stuck may hold
                    // the shared-tier deletes of its later changes back
                    // for up to the bound (the sidecar's `PUBLISH_HOLD`),
                    // and a capped copy filled from the shared tier just
                    // before such a delete would outlive the bound by that
                    // much. The kept entries stay parked (not flushed);
                    // the reconnect decides them.
                    inner.set_mode(LocalMode::Bypass);
                    inner.stats.bus_state(BusState::Disconnected);
                    tracing::debug!(ns = %inner.config.namespace, ?liveness, "bus disconnected for a window; local tier bypassed until it is back");
                }
                continue;
            }
            Ok(None) => {
                tracing::warn!(ns = %inner.config.namespace, "bus subscription ended; local tier capped");
                inner.flush_local_because(FlushReason::BusEnded);
                inner.set_mode(LocalMode::Capped);
                inner.bloom_bus_down(true);
                return;
            }
            Ok(Some(ev)) => {
                last_event = clock.now();
                ev
            }
        };
        if silent {
            silent = false;
            // Every active origin gets a fresh window to be heard in.
            let now = clock.now();
            for t in last_heard.values_mut() {
                *t = now;
            }
            // The silence was a disconnect, now reported: its rules apply
            // (the local tier is kept, stale, until the bus says whether it
            // replayed what it missed). Otherwise nobody knows what was
            // missed.
            if ev != BusEvent::Disconnected {
                inner.flush_local_because(FlushReason::BusHeardAgain);
                if origins.connected {
                    inner.bloom_bus_down(false);
                }
                if origins.silent.is_empty() {
                    inner.set_mode(origins.mode());
                }
            }
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
                if msg.sender_instance == inner.instance {
                    continue;
                }
                if last_seq.len() > 10_000 {
                    last_seq.clear();
                }
                let last = last_seq.entry(msg.sender_instance).or_insert(0);
                match sequence_step(*last, msg.seq) {
                    Step::Next => {}
                    Step::Gap(lost) => {
                        inner.stats.messages_lost(lost);
                        tracing::warn!(ns = %inner.config.namespace, origin = msg.sender_instance, lost, "gap in bus sequence; flushing the local tier");
                        inner.flush_local_because(FlushReason::SequenceGap);
                    }
                    Step::Old => {}
                    Step::Restart => {
                        tracing::warn!(ns = %inner.config.namespace, origin = msg.sender_instance, last = *last, seq = msg.seq, "bus sequence went far back; following it from here");
                    }
                }
                *last = next_last(*last, msg.seq);
                let signal = msg.signal();
                if signal == OriginSignal::Farewell {
                    last_heard.remove(&msg.sender_instance);
                } else {
                    last_heard.insert(msg.sender_instance, clock.now());
                }
                let was_silent = origins.silent.remove(&msg.sender_instance).is_some();
                let was_lapsed = origins.lapsed.remove(&msg.sender_instance).is_some();
                if (was_silent || was_lapsed)
                    && origins.silent.is_empty()
                    && origins.lapsed.is_empty()
                {
                    // Heard again: what it had stuck arrives from here on;
                    // a copy made meanwhile may predate it.
                    inner.flush_local_because(FlushReason::BusHeardAgain);
                    inner.set_mode(origins.mode());
                }
                // A heartbeat (or farewell) proves its origin's queue was
                // empty behind it, so every message it had stuck has been
                // heard; its first message after a stall proves nothing of
                // the ones behind it.
                if signal != OriginSignal::Changes
                    && let Some(a) = &mut origins.awaiting
                {
                    a.remove(&msg.sender_instance);
                    origins.end_probation_once_heard(&inner);
                }
                if signal != OriginSignal::Changes {
                    continue;
                }
                let clear = match msg.clear {
                    Some(note) => {
                        let mode = inner.apply_clear_note(note);
                        tracing::debug!(ns = %inner.config.namespace, origin = msg.sender_instance, seq = msg.seq, mode = mode.as_str(), "clear applied");
                        Some(mode)
                    }
                    None => {
                        let hashes: Vec<_> = msg
                            .keys
                            .iter()
                            .map(|k| inner.keys.hash(k.as_str()))
                            .collect();
                        // Shared-tier values written before the change are
                        // older than it (the sender's clock; never later
                        // than now, so a clock ahead or a forged time costs
                        // misses, not more).
                        let now = clock.wall_ms();
                        let at = match msg.source_time_ms {
                            0 => now,
                            t => t.min(now),
                        };
                        inner.apply_local(&hashes, &msg.tags, at);
                        tracing::debug!(
                            ns = %inner.config.namespace,
                            origin = msg.sender_instance,
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
                        None
                    }
                };
                inner.stats.invalidations_received(1);
                if inner.applied.receiver_count() > 0 {
                    let _ = inner.applied.send(super::Applied {
                        sender_instance: msg.sender_instance,
                        seq: msg.seq,
                        keys: msg.keys,
                        tags: msg.tags,
                        clear,
                        at: clock.std_now(),
                    });
                }
                if msg.source_time_ms > 0 {
                    let lag = clock.wall_ms().saturating_sub(msg.source_time_ms);
                    inner.stats.evict_lag_seconds.record(lag as f64 / 1000.0);
                }
            }
            BusEvent::Connected { resumed } => {
                if !resumed {
                    inner.flush_local_because(FlushReason::BusReconnected);
                    last_seq.clear();
                }
                // Every active origin gets a fresh window to be heard on the
                // new connection: one that is not (its own connection still
                // down) goes silent then.
                let now = clock.now();
                for t in last_heard.values_mut() {
                    *t = now;
                }
                origins.connected = true;
                // On probation until every active origin's heartbeat has
                // been heard live (at once, if none is): capped meanwhile,
                // so that one whose messages are still stuck on its side
                // does not find this tier trusted and then distrusted a
                // window later. Resumed, the kept entries are fresh again
                // then.
                origins.awaiting = Some(last_heard.keys().copied().collect());
                tracing::info!(ns = %inner.config.namespace, resumed, awaiting = last_heard.len(), silent = origins.silent.len(), lapsed = origins.lapsed.len(), "bus connected; capped until every active origin's heartbeat is heard");
                if origins.silent.is_empty() {
                    inner.set_mode(origins.mode());
                }
                origins.end_probation_once_heard(&inner);
                inner.bloom_bus_down(false);
            }
            BusEvent::Disconnected => {
                if origins.connected {
                    inner.stats.bus_disconnects(1);
                }
                origins.connected = false;
                origins.awaiting = None;
                // Kept, stale, not flushed: a bus that replays what it
                // missed says so when it is back (`resumed: true`); any
                // other return flushes.
                inner.park_local();
                inner.set_mode(LocalMode::Capped);
                inner.bloom_bus_down(true);
            }
            BusEvent::Heartbeat => {}
            BusEvent::Lost { count } => {
                inner.stats.messages_lost(count.max(1));
                inner.flush_local_because(FlushReason::MessagesDropped);
            }
        }
    }
}

/// What the bus listener knows of the bus and of the origins it hears:
/// the local tier's mode follows from it ([`mode`](Self::mode)) whenever
/// the bus is not silent.
#[derive(Default)]
struct Origins {
    /// Whether the bus is connected.
    connected: bool,
    /// Active origins gone silent, with when they were last heard: while
    /// any is (for at most ACTIVE_FOR after it was last heard, as long as
    /// an origin heartbeats after its last message), the local tier is
    /// bypassed.
    silent: HashMap<u64, Instant>,
    /// Silent origins past ACTIVE_FOR, with when they were last heard. One
    /// that crashed is never heard again; one alive behind a stuck queue
    /// (its bus unreachable for it alone, a JetStream stream electing a
    /// leader) keeps writing, each write extending its activity, and its
    /// messages arrive once the queue drains, which can be much later.
    /// Until it is heard again, says farewell, or its queue would have
    /// given its messages up, local life stays capped to the bound: a copy
    /// filled meanwhile cannot outlive a stuck invalidation by more than
    /// that.
    lapsed: HashMap<u64, Instant>,
    /// After a reconnect (its probation): the active origins whose
    /// heartbeat has not been heard live since. The tier is trusted, and
    /// what it kept across a resumed disconnect fresh again, once every
    /// one has been (an origin heartbeats only behind an empty queue: its
    /// stuck messages, if any, came first).
    awaiting: Option<HashSet<u64>>,
}

impl Origins {
    /// The local tier's mode when the bus is not silent: trusted when
    /// connected and every active origin is accounted for; capped while
    /// disconnected, on a reconnect's probation, or while a lapsed origin
    /// may still have messages stuck; bypassed while an active origin is
    /// silent.
    fn mode(&self) -> LocalMode {
        if !self.silent.is_empty() {
            LocalMode::Bypass
        } else if self.connected && self.lapsed.is_empty() && self.awaiting.is_none() {
            LocalMode::Trusted
        } else {
            LocalMode::Capped
        }
    }

    /// Ends a reconnect's probation once no awaited origin is left: the
    /// local tier kept across the disconnect (if any) is fresh again if the
    /// tier is to be trusted now, and otherwise flushed (a capped or
    /// bypassed tier must hold no entry fresh for longer than the bound,
    /// and a lapsed origin's stuck messages may still come); then the mode
    /// follows.
    fn end_probation_once_heard<K, V>(&mut self, inner: &Inner<K, V>)
    where
        K: Send + Sync + 'static,
        V: Send + Sync + 'static,
    {
        if !self.awaiting.as_ref().is_some_and(HashSet::is_empty) {
            return;
        }
        self.awaiting = None;
        let mode = self.mode();
        tracing::info!(ns = %inner.config.namespace, ?mode, parked = inner.fence.parks(), "every active origin heard since the reconnect");
        if mode == LocalMode::Trusted {
            inner.revive_local();
        } else if inner.fence.parks() {
            inner.flush_local_because(FlushReason::BusReconnected);
        }
        if self.silent.is_empty() {
            inner.set_mode(mode);
        }
    }
}

/// How far back a sequence number may step and still be a duplicate or a
/// reordering (ignored for gap detection); further back, the origin's
/// sequence is followed from the new number.
const REORDER_WINDOW: u64 = 1024;

/// What a message's sequence number says, given the last one seen from its
/// origin (0: none yet).
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The expected next number (or the first one seen).
    Next,
    /// Messages were skipped: this many are presumed lost.
    Gap(u64),
    /// A duplicate or a reordering within the window.
    Old,
    /// Far behind the last one: a forged or buggy number was seen before,
    /// or the origin restarted its count. No loss is presumed.
    Restart,
}

/// Classifies `seq` after `last`, in checked arithmetic: no pair of numbers
/// (a forged `u64::MAX` included) can overflow, and none stops the
/// listener.
fn sequence_step(last: u64, seq: u64) -> Step {
    if last == 0 {
        return Step::Next;
    }
    match seq.checked_sub(last) {
        Some(1) => Step::Next,
        Some(0) => Step::Old,
        Some(ahead) => Step::Gap(ahead - 1),
        None if last - seq <= REORDER_WINDOW => Step::Old,
        None => Step::Restart,
    }
}

/// The last sequence number to remember after `seq`.
fn next_last(last: u64, seq: u64) -> u64 {
    match sequence_step(last, seq) {
        Step::Restart => seq,
        _ => last.max(seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11, case 3: a forged `u64::MAX` followed by 1 neither
    /// overflows nor leaves the origin's later messages counted as losses.
    #[test]
    fn forged_sequence_numbers_do_not_overflow_or_stick() {
        assert_eq!(sequence_step(0, u64::MAX), Step::Next);
        assert_eq!(sequence_step(5, u64::MAX), Step::Gap(u64::MAX - 6));
        assert_eq!(sequence_step(u64::MAX, 1), Step::Restart);
        let mut last = 0;
        for seq in [1, 2, u64::MAX, 3, 4, 5] {
            last = next_last(last, seq);
        }
        assert_eq!(last, 5, "followed from the legitimate numbers again");
        assert_eq!(sequence_step(last, 6), Step::Next);
        assert_eq!(sequence_step(10, 9), Step::Old);
        assert_eq!(sequence_step(10, 10), Step::Old);
        assert_eq!(sequence_step(10, 13), Step::Gap(2));
        assert_eq!(sequence_step(u64::MAX - 1, u64::MAX), Step::Next);
    }
}
