//! Publishing invalidations: in sequence order, each retried until it goes
//! out, and never holding a writer longer than the staleness bound.
//!
//! A publish that fails (a bus reconnecting, a server restarted under the
//! publisher's connection) would otherwise be lost without any receiver
//! knowing: they are live and hear nothing wrong, and a "created" message
//! lost so would leave their Bloom guards answering "absent". Queued here,
//! it goes out once the bus takes it, in order with the messages after it.
//! The writer waits for it at most the staleness bound: past that, a bus
//! that is down or hung for the receivers too has made them stop trusting
//! their local tiers anyway.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::bus::Bus;
use crate::error::BusError;

/// Messages waiting to go out, at most; a publish beyond it is not sent
/// (receivers see the gap in sequence numbers on the next one).
const CAPACITY: usize = 4096;
/// The first pause after a failed attempt; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long one message is retried before it is given up (counted).
pub(super) const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// How long an origin heartbeats after its last invalidation, before it
/// says farewell and goes quiet.
pub(super) const ACTIVE_FOR: Duration = Duration::from_secs(5);

/// How often an origin that has said farewell says it again, while it
/// stays quiet and its queue is empty, until [`GIVE_UP_AFTER`] has passed.
/// A bus that delivers at most once (core NATS, Redis pub/sub) drops what
/// is published while a receiver is reconnecting, and a farewell said once
/// and lost there would leave that receiver taking this quiet origin for a
/// stuck one (its lapsed origins: local life capped for minutes).
const FAREWELL_AGAIN_EVERY: Duration = Duration::from_secs(1);

/// Encodes an origin heartbeat (`false`) or farewell (`true`) at a sequence
/// number.
pub(super) type Beat = Box<dyn Fn(u64, bool) -> Bytes + Send + Sync>;

struct Pending {
    payload: Bytes,
    /// When it was queued.
    queued_at: tokio::time::Instant,
    /// Told the first outcome: out (`true`), or a failed first attempt
    /// (`false`; the retries go on without the caller).
    first: Option<oneshot::Sender<bool>>,
}

/// The ordered publish queue of one cache, and its sequence numbers.
pub(super) struct Outbox {
    shared: Arc<Queue>,
}

struct Queue {
    /// The last sequence number handed out, and until when this origin
    /// heartbeats; the lock also keeps the queue in sequence order. On
    /// tokio's clock, not the cache's: it is only compared with the
    /// heartbeat timer's (see [`crate::clock`]).
    state: Mutex<(u64, Option<tokio::time::Instant>)>,
    tx: mpsc::Sender<Pending>,
    /// When the message being sent now was queued (`None`: none is).
    head: Head,
    /// Encodes this origin's heartbeats and its farewell.
    beat: Beat,
}

impl Drop for Queue {
    /// The cache is dropped: an origin still active says farewell behind
    /// what it has queued (the publishing task drains the queue before it
    /// ends), so its peers need not take its silence for a stuck queue
    /// (see `coherence`'s lapsed origins).
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let (seq, active) = *state;
        if active.is_some() {
            self.send_beat(seq, true);
        }
    }
}

impl Queue {
    /// Queues this origin's heartbeat (`false`) or farewell (`true`) at
    /// `seq`, unless the queue is full.
    fn send_beat(&self, seq: u64, farewell: bool) {
        let _ = self.tx.try_send(Pending {
            payload: (self.beat)(seq, farewell),
            queued_at: tokio::time::Instant::now(),
            first: None,
        });
    }
}

/// When the message the publishing task holds was queued.
type Head = Arc<Mutex<Option<tokio::time::Instant>>>;

/// What became of a publish, as its caller sees it.
pub(super) enum Sent {
    /// Out on the bus, under this sequence number.
    Out(u64),
    /// Not out: its first attempt failed or did not finish within the
    /// wait; it stays queued and is retried (`Some`), or it was not queued
    /// at all (`None`: the queue is full).
    Late(Option<u64>),
}

impl Outbox {
    /// Starts the publishing task on `rt`. Every attempt is bounded by
    /// `attempt_timeout`.
    /// While this origin is active (an invalidation within
    /// [`ACTIVE_FOR`]), it heartbeats every `heartbeat` through the same
    /// queue, then says farewell once.
    pub(super) fn start(
        bus: Arc<dyn Bus>,
        namespace: String,
        attempt_timeout: Duration,
        heartbeat: Duration,
        beat: Beat,
        rt: &tokio::runtime::Handle,
    ) -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let head = Head::default();
        rt.spawn(run(bus, namespace, attempt_timeout, rx, Arc::clone(&head)));
        let shared = Arc::new(Queue {
            state: Mutex::new((0, None)),
            tx,
            head,
            beat,
        });
        rt.spawn(heartbeats(Arc::downgrade(&shared), heartbeat));
        Self { shared }
    }

    /// Numbers a message (`encode` gets its sequence number), queues it,
    /// and waits up to `wait` for it to go out, or for its first attempt to
    /// fail.
    pub(super) async fn publish(&self, encode: impl FnOnce(u64) -> Bytes, wait: Duration) -> Sent {
        let (done, out) = oneshot::channel();
        let seq = {
            let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let (last, active) = &mut *state;
            *last = last.wrapping_add(1).max(1);
            *active = Some(tokio::time::Instant::now() + ACTIVE_FOR);
            let seq = *last;
            let queued = self.shared.tx.try_send(Pending {
                payload: encode(seq),
                queued_at: tokio::time::Instant::now(),
                first: Some(done),
            });
            if queued.is_err() {
                return Sent::Late(None);
            }
            seq
        };
        match tokio::time::timeout(wait, out).await {
            Ok(Ok(true)) => Sent::Out(seq),
            // Failed (retried), the task ended with the runtime, or late.
            Ok(Ok(false) | Err(_)) | Err(_) => Sent::Late(Some(seq)),
        }
    }

    /// Messages not yet out (queued, or being sent), and how long ago the
    /// oldest of them was queued.
    pub(super) fn backlog(&self) -> (usize, Option<Duration>) {
        let q = &self.shared;
        let head = *q.head.lock().unwrap_or_else(|p| p.into_inner());
        let waiting = q.tx.max_capacity() - q.tx.capacity();
        (
            waiting + usize::from(head.is_some()),
            head.map(|at| at.elapsed()),
        )
    }
}

/// Heartbeats while the origin is active, then a farewell, said again
/// every [`FAREWELL_AGAIN_EVERY`] (or every heartbeat, if slower) while
/// the origin stays quiet (for [`GIVE_UP_AFTER`]); ends with the cache. A
/// heartbeat or a repeated farewell is queued only behind an empty queue:
/// a queue that does not drain would not carry it anyway.
async fn heartbeats(queue: Weak<Queue>, every: Duration) {
    // After a farewell: when to say it again, and until when.
    let mut again: Option<(tokio::time::Instant, tokio::time::Instant)> = None;
    loop {
        tokio::time::sleep(every).await;
        let Some(q) = queue.upgrade() else { return };
        let mut state = q.state.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, active) = &mut *state;
        let now = tokio::time::Instant::now();
        let idle = q.tx.capacity() == q.tx.max_capacity();
        let Some(until) = *active else {
            if let Some((next, end)) = again
                && now >= next
            {
                if now >= end {
                    again = None;
                } else if idle {
                    again = Some((now + FAREWELL_AGAIN_EVERY, end));
                    q.send_beat(*seq, true);
                }
            }
            continue;
        };
        again = None;
        let farewell = now >= until;
        if farewell {
            *active = None;
            again = Some((now + FAREWELL_AGAIN_EVERY, now + GIVE_UP_AFTER));
        } else if !idle {
            continue;
        }
        q.send_beat(*seq, farewell);
    }
}

/// Sends each queued message in order, retrying it with backoff until it
/// goes out or [`GIVE_UP_AFTER`] has passed. Ends when the cache is dropped
/// and the queue is empty.
async fn run(
    bus: Arc<dyn Bus>,
    namespace: String,
    attempt_timeout: Duration,
    mut rx: mpsc::Receiver<Pending>,
    head: Head,
) {
    let set_head = |at| *head.lock().unwrap_or_else(|p| p.into_inner()) = at;
    while let Some(mut p) = rx.recv().await {
        set_head(Some(p.queued_at));
        let started = tokio::time::Instant::now();
        let mut backoff = MIN_BACKOFF;
        let mut failures = 0u32;
        loop {
            let attempt =
                tokio::time::timeout(attempt_timeout, bus.publish(&namespace, p.payload.clone()))
                    .await
                    .unwrap_or(Err(BusError::Timeout));
            match attempt {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(ns = %namespace, failures, "queued invalidation published after retries");
                    }
                    if let Some(first) = p.first.take() {
                        let _ = first.send(true);
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if let Some(first) = p.first.take() {
                        let _ = first.send(false);
                    }
                    if failures == 1 {
                        tracing::warn!(ns = %namespace, error = %e, "invalidation not published; retrying in order");
                    }
                    if started.elapsed() >= GIVE_UP_AFTER {
                        tracing::error!(ns = %namespace, error = %e, "invalidation given up; receivers see a sequence gap on the next one");
                        metrics::counter!("tiercache_invalidations_given_up_total", "namespace" => namespace.clone())
                            .increment(1);
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        set_head(None);
    }
    // The cache is gone and its queue drained (its farewell last): hand
    // what the client may still buffer to the server before the bus goes.
    if !matches!(
        tokio::time::timeout(attempt_timeout, bus.flush()).await,
        Ok(Ok(()))
    ) {
        tracing::debug!(ns = %namespace, "bus flush after the last publish failed");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use futures::stream::BoxStream;

    use super::*;
    use crate::bus::BusEvent;

    /// A bus whose publishes fail while `down` is set, and that records
    /// what goes out.
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        sent: Mutex<Vec<Bytes>>,
    }

    #[async_trait]
    impl Bus for Flaky {
        async fn publish(&self, _: &str, payload: Bytes) -> Result<(), BusError> {
            if self.down.load(Ordering::SeqCst) {
                Err(BusError::Timeout)
            } else {
                self.sent.lock().unwrap().push(payload);
                Ok(())
            }
        }
        async fn subscribe(&self, _: &str) -> Result<BoxStream<'static, BusEvent>, BusError> {
            Ok(Box::pin(futures::stream::pending()))
        }
    }

    /// An outbox on `bus` (10 ms attempts) heartbeating every `heartbeat`.
    fn start(bus: &Arc<Flaky>, heartbeat: Duration, beat: Beat) -> Outbox {
        Outbox::start(
            Arc::clone(bus) as Arc<dyn Bus>,
            "ns".into(),
            Duration::from_millis(10),
            heartbeat,
            beat,
            &tokio::runtime::Handle::current(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_backlog_counts_what_is_not_out_and_ages_the_oldest() {
        let bus = Arc::new(Flaky::default());
        bus.down.store(true, Ordering::SeqCst);
        let outbox = start(
            &bus,
            Duration::from_secs(3600),
            Box::new(|_, _| Bytes::new()),
        );
        assert_eq!(outbox.backlog(), (0, None), "nothing queued");
        for _ in 0..3 {
            let sent = outbox
                .publish(|_| Bytes::from_static(b"m"), Duration::from_millis(1))
                .await;
            assert!(matches!(sent, Sent::Late(Some(_))));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (queued, oldest) = outbox.backlog();
        assert_eq!(queued, 3, "one being retried, two behind it");
        assert!(
            oldest.is_some_and(|a| a >= Duration::from_secs(2)),
            "{oldest:?}"
        );
        bus.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(outbox.backlog(), (0, None), "all out");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_origin_says_farewell_again_until_its_messages_would_be_given_up() {
        let bus = Arc::new(Flaky::default());
        let beat: Beat =
            Box::new(|_, farewell| Bytes::from_static(if farewell { b"F" } else { b"H" }));
        let outbox = start(&bus, Duration::from_millis(100), beat);
        let farewells = || {
            bus.sent
                .lock()
                .unwrap()
                .iter()
                .filter(|b| &b[..] == b"F")
                .count()
        };
        let sent = outbox
            .publish(|_| Bytes::from_static(b"m"), Duration::from_secs(1))
            .await;
        assert!(matches!(sent, Sent::Out(1)));
        // Heartbeats while active, then the farewell.
        tokio::time::sleep(ACTIVE_FOR + Duration::from_millis(150)).await;
        assert_eq!(farewells(), 1);
        assert!(bus.sent.lock().unwrap().iter().any(|b| &b[..] == b"H"));
        // Said again about once a second while quiet: a receiver that
        // missed it (reconnecting on an at-most-once bus) hears it again.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let again = farewells() - 1;
        assert!((9..=11).contains(&again), "{again} farewells again in 10 s");
        // Active again: heartbeats, no farewell until it is quiet again.
        let before = farewells();
        let sent = outbox
            .publish(|_| Bytes::from_static(b"m"), Duration::from_secs(1))
            .await;
        assert!(matches!(sent, Sent::Out(2)));
        tokio::time::sleep(ACTIVE_FOR - Duration::from_millis(200)).await;
        assert_eq!(farewells(), before, "no farewell while active");
        // And none once its messages would have been given up.
        tokio::time::sleep(GIVE_UP_AFTER + ACTIVE_FOR).await;
        let after = farewells();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(farewells(), after, "quiet for good");
    }
}
