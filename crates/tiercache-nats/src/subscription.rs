//! One subscription's event stream: a small state machine over the
//! connection state, liveness probes, slow-consumer reports and the messages
//! themselves (a core subscription, or a JetStream ordered consumer).
//!
//! In a NATS cluster a JetStream subscription's (R1, ephemeral) ordered
//! consumer lives on one server, not necessarily the one the client is
//! connected to. When the client's own server is lost, the connection
//! drops and the subscription is rebuilt after its last sequence. When only
//! the consumer's server is lost, the connection stays up and the consumer
//! just stops delivering (the client notices missed heartbeats only after
//! tens of seconds): every check period (500 ms) the subscription asks the
//! stream for the newest message on its subject, and when JetStream does not
//! answer (a stream leader being elected) or a message newer than the last
//! delivered has waited a whole period with no delivery at all, it reports
//! `Disconnected` and is rebuilt after its last sequence
//! (`Connected { resumed: true }`: nothing is lost).
//!
//! A resumed subscription reports `Connected { resumed: true }` only after
//! it has delivered the replay: every message on its subject up to the
//! newest one when the consumer was made. The engine keeps its local tier
//! across the disconnect and trusts it again on that event, so the
//! invalidations it missed must have come first.

use std::collections::VecDeque;
use std::sync::Arc;

use async_nats::Subscriber;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig, OrderedError};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures::{Stream, StreamExt};
use tiercache_core::backend::{BoxError, BusError, BusEvent};
use tokio::sync::watch;

use crate::bus::{Shared, ensure_stream};
use crate::metrics as m;
use crate::signals::{ConnState, LostCounter, sid_of};
use crate::subject::namespace_subject;

/// When a stream was created (the server's timestamp).
type StreamCreated = async_nats::datetime::DateTime;

enum Kind {
    Core {
        sub: Subscriber,
        lost: LostCounter,
    },
    JetStream {
        /// The ordered consumer; `None` while disconnected or after it failed.
        messages: Option<Box<Ordered>>,
        /// The stream sequence of the last message delivered (or the point the
        /// subscription started from).
        last_seen: Option<u64>,
        /// When the stream `last_seen` belongs to was created: a stream of the
        /// same name created later has sequences of its own.
        stream_created: Option<StreamCreated>,
        /// When the stream was last checked for having been reset.
        checked: tokio::time::Instant,
        /// When the consumer was last checked for a stall.
        consumer_checked: tokio::time::Instant,
        /// A newer message the stream held at the last check.
        stall: Option<StallWatch>,
        /// After a resumed link: the subject's newest sequence when it was
        /// made. `Connected { resumed: true }` is reported once that has
        /// been delivered, so that the subscriber has had the whole replay
        /// of what it missed first.
        catch_up: Option<u64>,
        /// How long the next link attempt may take: [`FIRST_LINK_ATTEMPT`],
        /// [`LINK_ATTEMPT_STEP`] more after each attempt that timed out, up
        /// to the link timeout. Short, because while a cluster elects a
        /// stream or meta leader (seconds) JetStream requests go unanswered
        /// and stay so: the attempt under way when the leader is there has
        /// to time out before the next one succeeds. Growing (slowly), so a
        /// slow server still gets the time it needs.
        attempt_timeout: std::time::Duration,
    },
}

/// The first JetStream link attempt's time limit (see `attempt_timeout`).
const FIRST_LINK_ATTEMPT: std::time::Duration = std::time::Duration::from_millis(750);
/// How much longer each JetStream link attempt after a timed-out one may take.
const LINK_ATTEMPT_STEP: std::time::Duration = std::time::Duration::from_millis(250);
/// How often a linked JetStream subscription checks its consumer (at most;
/// see `SubStream::check_consumer`). Short enough that a consumer lost with
/// its server is replaced well within the time an instance keeps distrusting
/// a silent origin.
const CONSUMER_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// At a stall check, the stream held `newest` (on the subscription's
/// subject) while `seen` was the last sequence delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StallWatch {
    newest: u64,
    seen: u64,
}

impl StallWatch {
    /// What a check that found `newest` in the stream, with `seen` delivered,
    /// concludes after `watch` (from the previous check, a period ago):
    /// `Err(())` when the consumer is stalled (nothing at all was delivered
    /// for a whole period while a newer message waited), otherwise what to
    /// watch next.
    fn step(watch: Option<StallWatch>, newest: u64, seen: u64) -> Result<Option<StallWatch>, ()> {
        if newest <= seen {
            return Ok(None);
        }
        match watch {
            Some(w) if w.seen == seen && w.newest > seen => Err(()),
            _ => Ok(Some(StallWatch { newest, seen })),
        }
    }
}

/// What woke the stream up.
enum Wake {
    Shutdown,
    Conn,
    Beat,
    Lost,
    Core(Option<async_nats::Message>),
    JsMessage(Box<async_nats::jetstream::Message>),
    /// The ordered consumer failed (`Some`) or ended (`None`).
    JsFailed(Option<OrderedError>),
}

pub(crate) struct SubStream {
    shared: Arc<Shared>,
    namespace: String,
    subject: String,
    conn: watch::Receiver<ConnState>,
    beats: watch::Receiver<u64>,
    shutdown: watch::Receiver<()>,
    /// Connected: the subscriber was told `Connected` on connection `epoch`
    /// and the subscription is live on it.
    linked: ConnState,
    pending: VecDeque<BusEvent>,
    received: metrics::Counter,
    lost_total: metrics::Counter,
    kind: Kind,
}

impl Drop for SubStream {
    fn drop(&mut self) {
        if let Kind::Core { lost, .. } = &self.kind {
            lost.unregister(&self.shared.signals);
        }
    }
}

impl SubStream {
    /// Subscribes and waits (briefly) until the subscription is live, so the
    /// first event is `Connected`, or `Disconnected` when the bus is down.
    pub(crate) async fn start(
        shared: Arc<Shared>,
        shutdown: watch::Receiver<()>,
        namespace: &str,
    ) -> Result<Self, BusError> {
        let subject = namespace_subject(&shared.prefix, namespace);
        let kind = if shared.jetstream.is_some() {
            Kind::JetStream {
                messages: None,
                last_seen: None,
                stream_created: None,
                checked: tokio::time::Instant::now(),
                consumer_checked: tokio::time::Instant::now(),
                stall: None,
                catch_up: None,
                attempt_timeout: FIRST_LINK_ATTEMPT.min(shared.link_timeout),
            }
        } else {
            let sub = tokio::time::timeout(
                shared.publish_timeout,
                shared.client.subscribe(subject.clone()),
            )
            .await
            .map_err(|_| BusError::Timeout)?
            .map_err(BusError::unavailable)?;
            let lost = shared.signals.register_lost(sid_of(&sub));
            Kind::Core { sub, lost }
        };
        let label = namespace.to_owned();
        let mut this = Self {
            conn: shared.signals.conn(),
            beats: shared.signals.beats(),
            shutdown,
            linked: ConnState::default(),
            pending: VecDeque::new(),
            received: metrics::counter!(m::RECEIVED, "namespace" => label.clone()),
            lost_total: metrics::counter!(m::LOST, "namespace" => label),
            namespace: namespace.to_owned(),
            subject,
            kind,
            shared,
        };
        this.reconcile().await;
        if !this.linked.connected {
            this.pending.push_front(BusEvent::Disconnected);
        }
        Ok(this)
    }

    pub(crate) fn into_stream(self) -> impl Stream<Item = BusEvent> + Send + 'static {
        futures::stream::unfold(self, |mut s| async move {
            let ev = s.next_event().await?;
            Some((ev, s))
        })
    }

    async fn next_event(&mut self) -> Option<BusEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            match self.wait().await {
                Wake::Shutdown => return None,
                Wake::Conn => self.reconcile().await,
                Wake::Beat => {
                    self.reconcile().await;
                    self.check_stream().await;
                    self.check_consumer().await;
                    if self.linked.connected {
                        self.pending.push_back(BusEvent::Heartbeat);
                    }
                }
                Wake::Lost => {
                    if let Kind::Core { lost, .. } = &self.kind {
                        let count = lost.take();
                        if count > 0 {
                            self.lost_total.increment(count);
                            tracing::warn!(
                                namespace = %self.namespace,
                                count,
                                "NATS client dropped messages (slow consumer)"
                            );
                            self.pending.push_back(BusEvent::Lost { count });
                        }
                    }
                }
                Wake::Core(Some(msg)) => {
                    self.received.increment(1);
                    return Some(BusEvent::Message(msg.payload));
                }
                // The client was closed for good.
                Wake::Core(None) => return None,
                Wake::JsMessage(msg) => {
                    if let Kind::JetStream {
                        last_seen,
                        catch_up,
                        ..
                    } = &mut self.kind
                    {
                        match msg.info() {
                            Ok(info) => {
                                let seq = info.stream_sequence;
                                if last_seen.is_some_and(|last| seq <= last) {
                                    // Replayed by a consumer restart: already delivered.
                                    continue;
                                }
                                *last_seen = Some(seq);
                                if catch_up.is_some_and(|newest| seq >= newest) {
                                    // Right after this message: the replay is over.
                                    *catch_up = None;
                                    self.pending
                                        .push_back(BusEvent::Connected { resumed: true });
                                }
                            }
                            Err(e) => tracing::debug!(error = %e, "JetStream message without info"),
                        }
                    }
                    self.received.increment(1);
                    return Some(BusEvent::Message(msg.message.payload));
                }
                Wake::JsFailed(failure) => {
                    match failure {
                        Some(e) => tracing::warn!(
                            namespace = %self.namespace,
                            error = %e,
                            "JetStream consumer failed; recreating it"
                        ),
                        None => tracing::warn!(
                            namespace = %self.namespace,
                            "JetStream consumer ended; recreating it"
                        ),
                    }
                    self.unlink();
                }
            }
        }
    }

    async fn wait(&mut self) -> Wake {
        let Self {
            kind,
            conn,
            beats,
            shutdown,
            ..
        } = self;
        let source = async {
            match kind {
                Kind::Core { sub, lost } => tokio::select! {
                    biased;
                    r = lost.changed.changed() => match r {
                        Ok(()) => Wake::Lost,
                        Err(_) => Wake::Shutdown,
                    },
                    m = sub.next() => Wake::Core(m),
                },
                Kind::JetStream {
                    messages: Some(messages),
                    ..
                } => match messages.next().await {
                    Some(Ok(msg)) => Wake::JsMessage(Box::new(msg)),
                    Some(Err(e)) => Wake::JsFailed(Some(e)),
                    None => Wake::JsFailed(None),
                },
                Kind::JetStream { messages: None, .. } => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.changed() => Wake::Shutdown,
            r = conn.changed() => if r.is_ok() { Wake::Conn } else { Wake::Shutdown },
            // Before the messages, so a busy subscription still beats.
            r = beats.changed() => if r.is_ok() { Wake::Beat } else { Wake::Shutdown },
            w = source => w,
        }
    }

    /// Every so often, a linked JetStream subscription checks that its stream
    /// is still the one it reads: a stream deleted (and created again) under
    /// an ordered consumer would leave it waiting for sequences that will not
    /// come. A reset unlinks it; the next link reports `resumed: false`.
    async fn check_stream(&mut self) {
        let every = (self.shared.heartbeat * 5).max(std::time::Duration::from_secs(1));
        let Kind::JetStream {
            last_seen,
            checked,
            stream_created,
            ..
        } = &mut self.kind
        else {
            return;
        };
        if !self.linked.connected || checked.elapsed() < every {
            return;
        }
        *checked = tokio::time::Instant::now();
        let Some(js) = self.shared.jetstream.as_ref() else {
            return;
        };
        let lookup = js.context.get_stream(&js.config.name);
        let reset = match tokio::time::timeout(self.shared.link_timeout, lookup).await {
            Ok(Ok(stream)) => {
                let info = stream.cached_info();
                stream_created.is_some_and(|c| c != info.created)
                    || info.state.last_sequence < last_seen.unwrap_or(0)
            }
            Ok(Err(e)) => {
                use async_nats::jetstream::context::GetStreamErrorKind;
                matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND)
            }
            // Slow or unreachable: the connection state will say.
            Err(_) => false,
        };
        if reset {
            tracing::warn!(namespace = %self.namespace, "JetStream stream was reset; resubscribing");
            self.unlink();
        }
    }

    /// Every [`CONSUMER_CHECK`] (or the heartbeat, if shorter), a linked
    /// JetStream subscription asks the stream for the newest message on its
    /// subject (a request the stream leader answers). It unlinks
    /// (`Disconnected`; the next link resumes after the last delivered
    /// sequence) when:
    ///
    /// - the stream does not answer within the link timeout, or answers
    ///   with an error: JetStream is unavailable (a stream leader being
    ///   elected after its server was lost), so the consumer, which may
    ///   have lived on that server, cannot be trusted to deliver; or
    /// - a message newer than the last delivered waited a whole check period
    ///   while nothing at all was delivered: the consumer is gone with its
    ///   server (see the module docs).
    ///
    /// A slow subscription that still makes progress is never unlinked.
    async fn check_consumer(&mut self) {
        let every = self
            .shared
            .heartbeat
            .clamp(std::time::Duration::from_millis(100), CONSUMER_CHECK);
        let Kind::JetStream {
            messages: Some(_),
            last_seen,
            consumer_checked,
            stall,
            catch_up,
            ..
        } = &mut self.kind
        else {
            return;
        };
        if !self.linked.connected || consumer_checked.elapsed() < every {
            return;
        }
        let Some(js) = self.shared.jetstream.as_ref() else {
            return;
        };
        let subject = self.subject.as_str();
        let newest = async {
            let stream = js
                .context
                .get_stream_no_info(&js.config.name)
                .await
                .map_err(|e| e.to_string())?;
            match stream.get_last_raw_message_by_subject(subject).await {
                Ok(msg) => Ok(Some(msg.sequence)),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        };
        let newest = tokio::time::timeout(self.shared.link_timeout, newest).await;
        *consumer_checked = tokio::time::Instant::now();
        // A replay whose last message is no longer there to be delivered
        // (removed meanwhile) is over once nothing newer waits.
        let replayed = match &newest {
            Ok(Ok(Some(seq))) => *seq <= last_seen.unwrap_or(0),
            Ok(Ok(None)) => true,
            _ => false,
        };
        if replayed && catch_up.take().is_some() {
            self.pending
                .push_back(BusEvent::Connected { resumed: true });
        }
        let newest = match newest {
            Ok(Ok(Some(seq))) => seq,
            // Nothing on the subject yet: nothing can be missed.
            Ok(Ok(None)) => {
                *stall = None;
                return;
            }
            Ok(Err(problem)) => {
                self.consumer_lost(&format!("JetStream unavailable: {problem}"));
                return;
            }
            Err(_) => {
                self.consumer_lost("JetStream unavailable: no answer from the stream");
                return;
            }
        };
        let seen = last_seen.unwrap_or(0);
        match StallWatch::step(*stall, newest, seen) {
            Ok(next) => *stall = next,
            Err(()) => self.consumer_lost(&format!(
                "the consumer stopped delivering (last delivered {seen}, the stream has {newest})"
            )),
        }
    }

    /// The JetStream consumer cannot be trusted: counted, logged, unlinked.
    fn consumer_lost(&mut self, why: &str) {
        if let Kind::JetStream { stall, .. } = &mut self.kind {
            *stall = None;
        }
        metrics::counter!(m::JETSTREAM_STALLS, "namespace" => self.namespace.clone()).increment(1);
        tracing::warn!(
            namespace = %self.namespace,
            "{why}; resubscribing after the last delivered sequence"
        );
        self.unlink();
    }

    /// Reports a lost link (once) and drops what depends on it.
    fn unlink(&mut self) {
        if let Kind::JetStream {
            messages, catch_up, ..
        } = &mut self.kind
        {
            *messages = None;
            *catch_up = None;
        }
        if std::mem::replace(&mut self.linked.connected, false) {
            self.pending.push_back(BusEvent::Disconnected);
        }
    }

    /// Brings what the subscriber was told in line with the connection:
    /// `Disconnected` when it dropped (or was replaced by a new one), and
    /// `Connected` once the subscription is live on a connection again. A
    /// failed attempt is retried on the next probe or state change.
    async fn reconcile(&mut self) {
        let state = *self.conn.borrow_and_update();
        if self.linked.connected && (!state.connected || state.epoch != self.linked.epoch) {
            self.unlink();
        }
        if self.linked.connected || !state.connected {
            return;
        }
        let Some(resumed) = self.link().await else {
            return;
        };
        let now = *self.conn.borrow();
        if now.connected && now.epoch == state.epoch {
            self.linked = ConnState {
                connected: true,
                epoch: state.epoch,
            };
            // A resumed JetStream link with a replay to deliver reports it
            // once the replay is over (see `catch_up`).
            let replaying = matches!(
                self.kind,
                Kind::JetStream {
                    catch_up: Some(_),
                    ..
                }
            );
            if !replaying {
                self.pending.push_back(BusEvent::Connected { resumed });
            }
        } else if let Kind::JetStream { messages, .. } = &mut self.kind {
            // The connection changed under us; the next wake starts over.
            *messages = None;
        }
    }

    /// Makes the subscription live on the current connection. `Some(resumed)`
    /// on success.
    async fn link(&mut self) -> Option<bool> {
        let shared = Arc::clone(&self.shared);
        match &mut self.kind {
            Kind::Core { .. } => {
                // async-nats re-sends every SUB on reconnect before anything
                // else; a probe coming back proves the server has ours.
                shared
                    .signals
                    .round_trip(&shared.client, &shared.probe_inbox, shared.link_timeout)
                    .await
                    .ok()
                    .map(|()| false)
            }
            Kind::JetStream {
                messages,
                last_seen,
                checked,
                stream_created,
                consumer_checked,
                stall,
                catch_up,
                attempt_timeout,
            } => {
                let first = last_seen.is_none();
                let work = link_jetstream(&shared, &self.subject, last_seen, stream_created);
                match tokio::time::timeout(*attempt_timeout, work).await {
                    Ok(Ok((ordered, resumed, newest))) => {
                        *attempt_timeout = FIRST_LINK_ATTEMPT.min(shared.link_timeout);
                        *messages = Some(Box::new(ordered));
                        *catch_up = newest;
                        *checked = tokio::time::Instant::now();
                        *consumer_checked = tokio::time::Instant::now();
                        *stall = None;
                        if !first {
                            metrics::counter!(
                                m::JETSTREAM_RESUMES,
                                "namespace" => self.namespace.clone(),
                                "resumed" => if resumed { "true" } else { "false" }
                            )
                            .increment(1);
                        }
                        Some(resumed)
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(namespace = %self.namespace, error = %e, "cannot start JetStream consumer; retrying");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(namespace = %self.namespace, timeout = ?*attempt_timeout, "starting JetStream consumer timed out; retrying");
                        *attempt_timeout =
                            (*attempt_timeout + LINK_ATTEMPT_STEP).min(shared.link_timeout);
                        None
                    }
                }
            }
        }
    }
}

/// Starts an ordered consumer on the subject, right after `last_seen` when
/// the stream still holds everything after it (`resumed: true`), otherwise
/// at the end of the stream (`resumed: false`; `last_seen` moves there).
/// When resumed with messages to replay: the newest sequence on the
/// subject once the consumer exists (the replay is over when it has been
/// delivered).
async fn link_jetstream(
    shared: &Shared,
    subject: &str,
    last_seen: &mut Option<u64>,
    stream_created: &mut Option<StreamCreated>,
) -> Result<(Ordered, bool, Option<u64>), BoxError> {
    let js = shared.jetstream.as_ref().ok_or("not in JetStream mode")?;
    // Looked up afresh on every link: the info (first and last sequence) is current.
    let stream = ensure_stream(js).await?;
    let state = stream.cached_info().state.clone();
    let created = stream.cached_info().created;
    let (start, resumed) = match *last_seen {
        // First subscription: from now on.
        None => (state.last_sequence + 1, false),
        // The stream was recreated: its sequences are not ours.
        Some(_) if stream_created.is_some_and(|c| c != created) => (state.last_sequence + 1, false),
        Some(last) if state.last_sequence < last => (state.last_sequence + 1, false),
        // Messages after `last` have aged out (or were removed).
        Some(last) if state.first_sequence > last + 1 => (state.last_sequence + 1, false),
        Some(last) => (last + 1, true),
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            description: Some("tiercache subscription".to_owned()),
            ..Default::default()
        })
        .await?;
    let ordered = consumer.messages().await?;
    // Asked after the consumer exists: everything up to it is delivered in
    // order before anything later.
    let newest = if resumed {
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => Some(msg.sequence).filter(|n| *n >= start),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    *last_seen = Some(start - 1);
    *stream_created = Some(created);
    Ok((ordered, resumed, newest))
}

#[cfg(test)]
mod tests {
    use super::StallWatch;

    #[test]
    fn a_stall_needs_a_whole_period_without_progress() {
        // Nothing newer than what was delivered: nothing to watch.
        assert_eq!(StallWatch::step(None, 5, 5), Ok(None));
        // Newer in the stream: watch it.
        let w = StallWatch::step(None, 7, 5).unwrap();
        assert_eq!(w, Some(StallWatch { newest: 7, seen: 5 }));
        // Delivered meanwhile: fine.
        assert_eq!(StallWatch::step(w, 7, 7), Ok(None));
        // Progress, though still behind (a slow or replaying subscriber): not a stall.
        assert_eq!(
            StallWatch::step(w, 9, 6),
            Ok(Some(StallWatch { newest: 9, seen: 6 }))
        );
        // No delivery for a whole period while a newer message waited: a stall.
        assert_eq!(StallWatch::step(w, 7, 5), Err(()));
        assert_eq!(StallWatch::step(w, 8, 5), Err(()));
    }
}
