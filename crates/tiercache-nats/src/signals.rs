//! What the client reports, fanned out to every subscription without ever
//! lagging: the connection state (a watch: connected flag + connection
//! epoch), liveness proofs (a watch of the highest echoed probe), and slow
//! consumer drops (per-subscription counters).
//!
//! Liveness is proven by a real round trip through the server: every bus owns
//! a private inbox subscription and publishes a small probe to it every half
//! heartbeat; seeing a probe come back means the server routes messages to
//! this connection. (`Client::flush` only flushes the socket in async-nats
//! 0.51, so it proves nothing about the server.) The same probe, sent after a
//! `SUB`, proves the subscription is live: a server processes one
//! connection's operations in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::{Client, Event, Subscriber};
use futures::StreamExt;
use tokio::sync::watch;

use crate::metrics as m;

/// The connection as the subscriptions see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct ConnState {
    /// The client has a live connection.
    pub(crate) connected: bool,
    /// Counts connections: every (re)connect starts a new epoch, so a
    /// subscription that slept through a disconnect and a reconnect still
    /// notices.
    pub(crate) epoch: u64,
}

#[derive(Default)]
struct LostRegistry {
    by_sid: HashMap<u64, Weak<AtomicU64>>,
    /// Subscriptions whose client-side id is unknown: they take every drop
    /// the client reports for an id nobody claimed (conservative).
    unknown: Vec<Weak<AtomicU64>>,
}

/// Shared between the client's event callback, the heartbeat task, the bus
/// and every subscription stream.
pub(crate) struct Signals {
    conn: watch::Sender<ConnState>,
    beat: watch::Sender<u64>,
    lost_gen: watch::Sender<u64>,
    lost: Mutex<LostRegistry>,
    next_probe: AtomicU64,
    /// The fastest probe period a subscriber asked for, in µs (0: none).
    asked_probe_us: AtomicU64,
}

impl Signals {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            conn: watch::channel(ConnState::default()).0,
            beat: watch::channel(0).0,
            lost_gen: watch::channel(0).0,
            lost: Mutex::new(LostRegistry::default()),
            next_probe: AtomicU64::new(0),
            asked_probe_us: AtomicU64::new(0),
        })
    }

    /// Asks for a probe at least every `period` from now on (the fastest
    /// request wins).
    pub(crate) fn ask_probe_every(&self, period: Duration) {
        let us = u64::try_from(period.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .asked_probe_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                (cur == 0 || us < cur).then_some(us)
            });
    }

    /// The probe period: `configured`, or faster when asked.
    fn probe_period(&self, configured: Duration) -> Duration {
        match self.asked_probe_us.load(Ordering::Relaxed) {
            0 => configured,
            us => configured.min(Duration::from_micros(us)),
        }
    }

    /// Called (in order) for every event async-nats reports.
    pub(crate) fn on_event(&self, event: Event) {
        match event {
            // Metrics first, then the subscriptions are woken: whoever sees
            // the event can already see it counted.
            Event::Connected => {
                if self.conn.borrow().epoch > 0 {
                    metrics::counter!(m::RECONNECTS).increment(1);
                }
                tracing::info!("NATS bus connected");
                self.conn.send_modify(|s| {
                    s.connected = true;
                    s.epoch += 1;
                });
            }
            Event::Disconnected => {
                metrics::counter!(m::DISCONNECTS).increment(1);
                tracing::warn!("NATS bus disconnected");
                self.conn
                    .send_if_modified(|s| std::mem::replace(&mut s.connected, false));
            }
            Event::SlowConsumer(sid) => self.record_lost(sid),
            Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
            Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
            Event::LameDuckMode => tracing::warn!("NATS server entered lame duck mode"),
            other => tracing::debug!(event = %other, "NATS event"),
        }
    }

    fn record_lost(&self, sid: u64) {
        let mut reg = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = reg.by_sid.get(&sid).and_then(Weak::upgrade) {
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            reg.by_sid.remove(&sid);
            reg.unknown.retain(|w| w.strong_count() > 0);
            if reg.unknown.is_empty() {
                // Not one of ours (a JetStream consumer's inbox recovers by itself).
                return;
            }
            for counter in reg.unknown.iter().filter_map(Weak::upgrade) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(reg);
        self.lost_gen.send_modify(|g| *g += 1);
    }

    /// Registers a subscription for slow-consumer reports; `sid` is the
    /// client's id for it, when known.
    pub(crate) fn register_lost(&self, sid: Option<u64>) -> LostCounter {
        let counter = Arc::new(AtomicU64::new(0));
        let mut reg = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        match sid {
            Some(sid) => {
                reg.by_sid.insert(sid, Arc::downgrade(&counter));
            }
            None => reg.unknown.push(Arc::downgrade(&counter)),
        }
        LostCounter {
            counter,
            sid,
            changed: self.lost_gen.subscribe(),
        }
    }

    fn unregister_lost(&self, sid: Option<u64>) {
        let mut reg = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sid) = sid {
            reg.by_sid.remove(&sid);
        }
        reg.unknown.retain(|w| w.strong_count() > 0);
    }

    pub(crate) fn conn(&self) -> watch::Receiver<ConnState> {
        self.conn.subscribe()
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.conn.borrow().connected
    }

    pub(crate) fn beats(&self) -> watch::Receiver<u64> {
        self.beat.subscribe()
    }

    /// Sends one probe through the server and waits (up to `within`) until it,
    /// or a later one, comes back. Everything this client sent before the call
    /// (a `SUB`, say) has then been processed by the server.
    pub(crate) async fn round_trip(
        &self,
        client: &Client,
        inbox: &str,
        within: Duration,
    ) -> Result<(), ()> {
        let mut beats = self.beat.subscribe();
        let seq = self.next_probe.fetch_add(1, Ordering::Relaxed) + 1;
        let work = async {
            client
                .publish(
                    inbox.to_owned(),
                    bytes::Bytes::copy_from_slice(&seq.to_be_bytes()),
                )
                .await
                .map_err(|_| ())?;
            beats
                .wait_for(|&b| b >= seq)
                .await
                .map(|_| ())
                .map_err(|_| ())
        };
        tokio::time::timeout(within, work).await.map_err(|_| ())?
    }

    fn on_probe(&self, payload: &[u8]) {
        if let Ok(raw) = <[u8; 8]>::try_from(payload) {
            let seq = u64::from_be_bytes(raw);
            self.beat.send_if_modified(|b| {
                if seq > *b {
                    *b = seq;
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// A subscription's share of slow-consumer reports.
pub(crate) struct LostCounter {
    counter: Arc<AtomicU64>,
    sid: Option<u64>,
    /// Changes whenever any drop is recorded.
    pub(crate) changed: watch::Receiver<u64>,
}

impl LostCounter {
    /// Drops recorded for this subscription since the last call.
    pub(crate) fn take(&self) -> u64 {
        self.counter.swap(0, Ordering::Relaxed)
    }

    pub(crate) fn unregister(&self, signals: &Signals) {
        signals.unregister_lost(self.sid);
    }
}

/// The client-side id of a subscription. async-nats keeps it private and
/// reports slow consumers by it; its `Debug` output is the only place it shows.
pub(crate) fn sid_of(sub: &Subscriber) -> Option<u64> {
    let dbg = format!("{sub:?}");
    let rest = dbg.split_once("sid: ")?.1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Publishes a probe every `period` (or faster, when a subscriber asked
/// through [`Signals::ask_probe_every`]) while connected and records the
/// probes that come back. Runs until the bus is dropped (it is aborted) or
/// the client closes.
pub(crate) async fn heartbeat_task(
    signals: Arc<Signals>,
    client: Client,
    inbox: String,
    mut probes: Subscriber,
    period: Duration,
) {
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                let every = signals.probe_period(period);
                next = tokio::time::Instant::now() + every;
                if client.connection_state() == async_nats::connection::State::Connected {
                    let seq = signals.next_probe.fetch_add(1, Ordering::Relaxed) + 1;
                    let payload = bytes::Bytes::copy_from_slice(&seq.to_be_bytes());
                    // Never wait on a clogged command channel for longer than a beat.
                    let _ = tokio::time::timeout(every, client.publish(inbox.clone(), payload)).await;
                }
            }
            msg = probes.next() => match msg {
                Some(msg) => signals.on_probe(&msg.payload),
                None => break,
            },
        }
    }
}
