//! The embedded bus: broadcast channels inside one process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{broadcast, watch};

use super::{Bus, BusEvent};
use crate::error::BusError;

const CHANNEL_CAPACITY: usize = 4096;

struct Inner {
    channels: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    connected: watch::Sender<bool>,
    /// Hung: nothing is delivered and no heartbeat comes, and nobody is
    /// told (a paused server, or a partition).
    hung: watch::Sender<bool>,
    heartbeat: Duration,
    /// The fastest pace a subscriber asked for, in µs (0: none).
    asked_us: AtomicU64,
}

/// A bus inside one process: every cache given a clone of it (one per
/// "instance" in a test, or the several caches of one service) hears every
/// other's invalidations. The embedded default.
///
/// [`disconnect`](Self::disconnect) and [`reconnect`](Self::reconnect) cut and
/// restore delivery, exactly as a network transport's outage would: messages
/// published while cut off are not delivered, and subscribers are told.
#[derive(Clone)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus")
            .field("connected", &*self.inner.connected.borrow())
            .finish()
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessBus {
    /// A new bus with a heartbeat every second.
    pub fn new() -> Self {
        Self::with_heartbeat(Duration::from_secs(1))
    }

    /// A new bus whose subscriptions report a heartbeat every `heartbeat`.
    pub fn with_heartbeat(heartbeat: Duration) -> Self {
        let (connected, _) = watch::channel(true);
        Self {
            inner: Arc::new(Inner {
                channels: Mutex::new(HashMap::new()),
                connected,
                hung: watch::channel(false).0,
                heartbeat,
                asked_us: AtomicU64::new(0),
            }),
        }
    }

    /// The heartbeat pace of a new subscription: the configured one, or
    /// faster when a subscriber asked for it.
    fn pace(&self) -> Duration {
        match self.inner.asked_us.load(Ordering::Relaxed) {
            0 => self.inner.heartbeat,
            us => self.inner.heartbeat.min(Duration::from_micros(us)),
        }
    }

    /// Cuts delivery: subscribers get [`BusEvent::Disconnected`] and miss what
    /// is published until [`reconnect`](Self::reconnect).
    pub fn disconnect(&self) {
        self.inner.connected.send_replace(false);
    }

    /// Restores delivery: subscribers get `Connected { resumed: false }`.
    pub fn reconnect(&self) {
        self.inner.connected.send_replace(true);
    }

    /// Hangs the bus, as a server paused with SIGSTOP looks to its clients:
    /// subscribers get nothing at all (no message, no heartbeat, no
    /// `Disconnected`) until [`resume`](Self::resume). Publishes still
    /// succeed; what they send is delivered after the resume.
    pub fn hang(&self) {
        self.inner.hung.send_replace(true);
    }

    /// Ends a [`hang`](Self::hang): held messages are delivered.
    pub fn resume(&self) {
        self.inner.hung.send_replace(false);
    }

    fn sender(&self, namespace: &str) -> broadcast::Sender<Bytes> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        channels
            .entry(namespace.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .clone()
    }
}

struct SubState {
    rx: broadcast::Receiver<Bytes>,
    connected: watch::Receiver<bool>,
    hung: watch::Receiver<bool>,
    was_connected: bool,
    tick: tokio::time::Interval,
    pending: Option<BusEvent>,
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, namespace: &str, payload: Bytes) -> Result<(), BusError> {
        if !*self.inner.connected.borrow() {
            return Err(BusError::Unavailable(
                "in-process bus is disconnected".into(),
            ));
        }
        // No subscribers is not an error: nobody needed to hear it.
        let _ = self.sender(namespace).send(payload);
        Ok(())
    }

    fn heartbeat_at_least(&self, every: Duration) {
        let us = u64::try_from(every.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .inner
            .asked_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                (cur == 0 || us < cur).then_some(us)
            });
    }

    async fn subscribe(&self, namespace: &str) -> Result<BoxStream<'static, BusEvent>, BusError> {
        let connected = self.inner.connected.subscribe();
        let was_connected = *connected.borrow();
        let mut tick = tokio::time::interval(self.pace());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let state = SubState {
            rx: self.sender(namespace).subscribe(),
            connected,
            hung: self.inner.hung.subscribe(),
            was_connected,
            tick,
            pending: Some(if was_connected {
                BusEvent::Connected { resumed: true }
            } else {
                BusEvent::Disconnected
            }),
        };
        Ok(stream::unfold(state, next_event).boxed())
    }
}

async fn next_event(mut s: SubState) -> Option<(BusEvent, SubState)> {
    if let Some(ev) = s.pending.take() {
        return Some((ev, s));
    }
    loop {
        if *s.hung.borrow_and_update() {
            if s.hung.changed().await.is_err() {
                return None;
            }
            continue;
        }
        tokio::select! {
            changed = s.hung.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            changed = s.connected.changed() => {
                if changed.is_err() {
                    return None;
                }
                let now = *s.connected.borrow_and_update();
                if now != s.was_connected {
                    s.was_connected = now;
                    if now {
                        // Whatever was sent while cut off is gone.
                        s.rx = s.rx.resubscribe();
                        return Some((BusEvent::Connected { resumed: false }, s));
                    }
                    return Some((BusEvent::Disconnected, s));
                }
            }
            msg = s.rx.recv() => match msg {
                Ok(bytes) if s.was_connected => return Some((BusEvent::Message(bytes), s)),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Some((BusEvent::Lost { count: n }, s));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = s.tick.tick() => {
                if s.was_connected {
                    return Some((BusEvent::Heartbeat, s));
                }
            }
        }
    }
}
