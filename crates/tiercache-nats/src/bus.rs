//! [`NatsBus`]: the [`Bus`] implementation.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tiercache_core::ConfigError;
use tiercache_core::backend::{Bus, BusError, BusEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::builder::NatsBusBuilder;
use crate::metrics as m;
use crate::signals::Signals;
use crate::subject::{covers, namespace_subject};
use crate::subscription::SubStream;

/// JetStream settings of a bus in JetStream mode.
pub(crate) struct JetStreamMode {
    pub(crate) context: jetstream::Context,
    /// The stream as the bus creates it when it is missing.
    pub(crate) config: jetstream::stream::Config,
    /// `<prefix>.>`: what the stream must cover.
    pub(crate) wildcard: String,
}

/// What every subscription stream shares with the bus. Holding it does not
/// keep the bus alive: streams end when the last [`NatsBus`] handle is dropped.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) signals: Arc<Signals>,
    pub(crate) prefix: String,
    pub(crate) probe_inbox: String,
    /// The configured heartbeat interval.
    pub(crate) heartbeat: Duration,
    pub(crate) publish_timeout: Duration,
    /// How long establishing a subscription on a connection may take.
    pub(crate) link_timeout: Duration,
    pub(crate) jetstream: Option<JetStreamMode>,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    /// Dropped with the last bus handle: every subscription stream ends.
    pub(crate) shutdown: watch::Sender<()>,
    pub(crate) heartbeat_task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.heartbeat_task.abort();
    }
}

/// An invalidation bus on NATS. Cheap to clone (clones share one
/// connection); made by [`NatsBus::builder`].
///
/// - **Core mode** (default): namespace `ns` is the core subject
///   `<prefix>.<token(ns)>` (see [`namespace_token`](crate::namespace_token)):
///   the lowest latency, at-most-once. A subscription that was cut off reports
///   `Connected { resumed: false }` when it is back.
/// - **JetStream mode** ([`NatsBusBuilder::jetstream`]): publishes are stored
///   in a stream and acknowledged; each subscription reads with an ordered
///   consumer and remembers the last stream sequence it delivered, so after a
///   reconnect it replays what it missed and reports
///   `Connected { resumed: true }`, or `resumed: false` when that history is
///   gone (aged out, or the stream was recreated).
///
/// In both modes a subscription's first event is `Connected { resumed: false }`
/// once it is live on the server (or `Disconnected` if the bus is not
/// connected yet), then messages; `Disconnected` as soon as the client reports
/// the connection lost; `Heartbeat` at least every
/// [`heartbeat`](NatsBusBuilder::heartbeat) while connected, each one proven
/// by a round trip through the server; and, in core mode, `Lost { count }`
/// when the client dropped `count` (at least) messages of this subscription
/// because it was not read fast enough.
///
/// The subscription streams end when every handle of the bus is dropped.
#[derive(Clone)]
pub struct NatsBus {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.shared;
        f.debug_struct("NatsBus")
            .field("subject_prefix", &s.prefix)
            .field(
                "jetstream",
                &s.jetstream.as_ref().map(|j| j.config.name.as_str()),
            )
            .field("connected", &s.signals.is_connected())
            .finish()
    }
}

impl NatsBus {
    /// A builder; only [`url`](NatsBusBuilder::url) is required.
    pub fn builder() -> NatsBusBuilder {
        NatsBusBuilder::default()
    }

    /// The subject `namespace` is published on.
    pub fn subject(&self, namespace: &str) -> String {
        namespace_subject(&self.inner.shared.prefix, namespace)
    }

    /// Whether the client currently has a live connection.
    pub fn is_connected(&self) -> bool {
        self.inner.shared.client.connection_state() == State::Connected
    }

    /// The JetStream stream in use, in JetStream mode.
    pub fn jetstream_stream(&self) -> Option<&str> {
        self.inner
            .shared
            .jetstream
            .as_ref()
            .map(|j| j.config.name.as_str())
    }

    /// The underlying async-nats client (for diagnostics such as
    /// `statistics()`; publishing on it bypasses the bus).
    pub fn client(&self) -> &Client {
        &self.inner.shared.client
    }

    async fn publish_core(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        let s = &self.inner.shared;
        match tokio::time::timeout(s.publish_timeout, s.client.publish(subject, payload)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::unavailable(e)),
            Err(_) => Err(BusError::Timeout),
        }
    }

    async fn publish_jetstream(
        &self,
        js: &JetStreamMode,
        subject: String,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let attempt = async {
            let mut created = false;
            loop {
                let result = match js.context.publish(subject.clone(), payload.clone()).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(_) => return Ok(()),
                    // The stream was deleted (or lost with a memory-backed
                    // server): create it again, once.
                    Err(e) if e.kind() == PublishErrorKind::StreamNotFound && !created => {
                        created = true;
                        ensure_stream(js).await.map_err(BusError::server)?;
                    }
                    Err(e) => {
                        return Err(match e.kind() {
                            PublishErrorKind::TimedOut => BusError::Timeout,
                            PublishErrorKind::BrokenPipe => BusError::unavailable(e),
                            _ => BusError::server(e),
                        });
                    }
                }
            }
        };
        tokio::time::timeout(self.inner.shared.publish_timeout, attempt)
            .await
            .unwrap_or(Err(BusError::Timeout))
    }
}

#[async_trait]
impl Bus for NatsBus {
    fn heartbeat_at_least(&self, every: std::time::Duration) {
        // Each probe that comes back is a heartbeat.
        self.inner.shared.signals.ask_probe_every(every);
    }

    /// Core publishes are buffered by the client: waits until the server
    /// has them (a round trip), at most the publish timeout.
    async fn flush(&self) -> Result<(), BusError> {
        let s = &self.inner.shared;
        match tokio::time::timeout(s.publish_timeout, s.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::unavailable(e)),
            Err(_) => Err(BusError::Timeout),
        }
    }

    async fn publish(&self, namespace: &str, payload: Bytes) -> Result<(), BusError> {
        let s = &self.inner.shared;
        let subject = namespace_subject(&s.prefix, namespace);
        let result = if s.client.connection_state() != State::Connected {
            // The client would queue it and maybe send it much later; say now
            // that it did not go out.
            Err(BusError::unavailable("NATS connection is down"))
        } else {
            match &s.jetstream {
                None => self.publish_core(subject, payload).await,
                Some(js) => self.publish_jetstream(js, subject, payload).await,
            }
        };
        let name = if result.is_ok() {
            m::PUBLISHED
        } else {
            m::PUBLISH_ERRORS
        };
        metrics::counter!(name, "namespace" => namespace.to_owned()).increment(1);
        if let Err(e) = &result {
            tracing::debug!(namespace, error = %e, "NATS bus publish failed");
        }
        result
    }

    async fn subscribe(&self, namespace: &str) -> Result<BoxStream<'static, BusEvent>, BusError> {
        let stream = SubStream::start(
            Arc::clone(&self.inner.shared),
            self.inner.shutdown.subscribe(),
            namespace,
        )
        .await?;
        Ok(stream.into_stream().boxed())
    }
}

/// Why the JetStream stream is not usable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamProblem {
    /// It exists but does not carry the bus's subjects.
    #[error(transparent)]
    Config(ConfigError),
    /// The server said no, or did not answer.
    #[error(transparent)]
    Other(jetstream::context::CreateStreamError),
}

/// Looks the stream up, creating it when it is missing, and checks that it
/// carries `<prefix>.>`.
pub(crate) async fn ensure_stream(
    js: &JetStreamMode,
) -> Result<jetstream::stream::Stream, StreamProblem> {
    let stream = js
        .context
        .get_or_create_stream(js.config.clone())
        .await
        .map_err(StreamProblem::Other)?;
    let existing = &stream.cached_info().config;
    if existing.num_replicas.max(1) != js.config.num_replicas.max(1) {
        tracing::warn!(
            stream = %js.config.name,
            replicas = existing.num_replicas,
            configured = js.config.num_replicas,
            "JetStream stream exists with another replica count; it keeps its own (jetstream_replicas)"
        );
    }
    let subjects = &stream.cached_info().config.subjects;
    if !subjects.iter().any(|p| covers(p, &js.wildcard)) {
        return Err(StreamProblem::Config(ConfigError::new(
            "jetstream",
            format!(
                "stream `{}` exists with subjects {subjects:?}, which do not cover `{}` \
                 (use another stream name or subject_prefix)",
                js.config.name, js.wildcard
            ),
        )));
    }
    Ok(stream)
}
