//! One subscription's event stream: a small state machine over the
//! connection state, liveness probes, slow-consumer reports and the messages
//! themselves (a core subscription, or a JetStream ordered consumer).

use std::collections::VecDeque;
use std::sync::Arc;

use async_nats::Subscriber;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig, OrderedError};
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
    },
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
                    if let Kind::JetStream { last_seen, .. } = &mut self.kind {
                        match msg.info() {
                            Ok(info) => {
                                let seq = info.stream_sequence;
                                if last_seen.is_some_and(|last| seq <= last) {
                                    // Replayed by a consumer restart: already delivered.
                                    continue;
                                }
                                *last_seen = Some(seq);
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

    /// Reports a lost link (once) and drops what depends on it.
    fn unlink(&mut self) {
        if let Kind::JetStream { messages, .. } = &mut self.kind {
            *messages = None;
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
            self.pending.push_back(BusEvent::Connected { resumed });
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
            } => {
                let first = last_seen.is_none();
                let work = link_jetstream(&shared, &self.subject, last_seen, stream_created);
                match tokio::time::timeout(shared.link_timeout, work).await {
                    Ok(Ok((ordered, resumed))) => {
                        *messages = Some(Box::new(ordered));
                        *checked = tokio::time::Instant::now();
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
                        tracing::warn!(namespace = %self.namespace, "starting JetStream consumer timed out; retrying");
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
async fn link_jetstream(
    shared: &Shared,
    subject: &str,
    last_seen: &mut Option<u64>,
    stream_created: &mut Option<StreamCreated>,
) -> Result<(Ordered, bool), BoxError> {
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
    *last_seen = Some(start - 1);
    *stream_created = Some(created);
    Ok((ordered, resumed))
}
