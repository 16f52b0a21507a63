//! The sinks: the shared tier (delete keys, bump tags) and the bus (publish
//! an [`Invalidation`]). Each call is retried with exponential backoff until it
//! succeeds or the sidecar shuts down; a source advances its position only
//! after [`Sinks::apply`] returned `Ok`.
//!
//! Order per message: shared-tier key invalidation, then tag invalidation,
//! then the bus publish, so an instance that evicts on the message and
//! reloads cannot read the old value back from the shared tier.
//!
//! Publishes go out in order through an outbox task, so a hung bus never
//! holds up the deletes of later changes: [`Sinks::apply`] waits for its
//! publishes at most [`PUBLISH_HOLD`], and not at all while the outbox is
//! stuck behind one that did not go out in time. The instances do not need
//! those messages meanwhile: a bus that hangs for them too is silent, and
//! they read through the shared tier until it is heard again (then flush).
//! What this gives up: a sidecar killed while its outbox is stuck loses the
//! queued messages (the source has moved on); an instance that heard its
//! bus all along keeps its local copies of those keys until their TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tiercache_core::backend::{BoxError, Bus, Invalidation, KeyFormat, MessageCodec, SharedTier};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::Shutdown;
use crate::config::{BusKind, Config, RetryConfig};
use crate::rules::Planned;

/// Most keys plus tags carried by one bus message; a larger batch for a
/// namespace is split.
pub const MAX_ITEMS_PER_MESSAGE: usize = 500;

/// How long [`Sinks::apply`] waits for a message to go out on the bus
/// before it moves on (the message stays queued, in order): the engine's
/// default staleness bound.
pub const PUBLISH_HOLD: Duration = tiercache_core::DEFAULT_STALENESS_BOUND;

/// The sidecar stopped before a batch was fully applied; the source must not
/// advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped before the batch was applied")]
pub struct Stopped;

/// Why a sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The Redis shared tier or bus could not be set up (or, in `check`,
    /// reached); holds the error that said so.
    #[error("redis: {0}")]
    Redis(#[source] BoxError),
    /// The NATS bus could not be set up (or, in `check`, reached); holds the
    /// error that said so.
    #[error("nats: {0}")]
    Nats(#[source] BoxError),
}

/// One message to send: a merge of [`Planned`]s of a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The namespace.
    pub namespace: String,
    /// Its maximum storage key length.
    pub max_key_len: usize,
    /// Keys (without namespace).
    pub keys: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Whether the keys were created.
    pub created: bool,
    /// The earliest source time of the merged changes (µs since the epoch).
    pub source_time_us: Option<i64>,
    /// The source times of the merged changes, for the lag histogram.
    pub lag_samples: Vec<i64>,
}

/// The invalidations of a batch of changes, merged per namespace (and
/// `created` flag) in first-seen order.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    messages: Vec<Outgoing>,
    open: HashMap<(String, bool), usize>,
    changes: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a planned invalidation.
    pub fn push(&mut self, p: Planned) {
        self.changes += 1;
        let slot = (p.namespace.clone(), p.created);
        let idx = match self.open.get(&slot) {
            Some(&i)
                if self.messages[i].keys.len()
                    + self.messages[i].tags.len()
                    + p.keys.len()
                    + p.tags.len()
                    <= MAX_ITEMS_PER_MESSAGE =>
            {
                i
            }
            _ => {
                self.messages.push(Outgoing {
                    namespace: p.namespace.clone(),
                    max_key_len: p.max_key_len,
                    keys: Vec::new(),
                    tags: Vec::new(),
                    created: p.created,
                    source_time_us: None,
                    lag_samples: Vec::new(),
                });
                let i = self.messages.len() - 1;
                self.open.insert(slot, i);
                i
            }
        };
        let m = &mut self.messages[idx];
        for k in p.keys {
            if !m.keys.contains(&k) {
                m.keys.push(k);
            }
        }
        for t in p.tags {
            if !m.tags.contains(&t) {
                m.tags.push(t);
            }
        }
        if let Some(t) = p.source_time_us {
            m.source_time_us = Some(m.source_time_us.map_or(t, |x| x.min(t)));
            m.lag_samples.push(t);
        }
    }

    /// The merged messages.
    pub fn messages(&self) -> &[Outgoing] {
        &self.messages
    }

    /// Whether nothing is to be sent.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// How many planned invalidations were pushed.
    pub fn changes(&self) -> usize {
        self.changes
    }
}

/// The shared tier and bus the sidecar writes to.
pub struct Sinks {
    shared: Option<Arc<dyn SharedTier>>,
    bus: Option<Arc<dyn Bus>>,
    codec: MessageCodec,
    instance_id: u64,
    /// Per namespace: the last sequence number, and until when this instance
    /// heartbeats there (it does for a while after each message).
    seqs: Seqs,
    retry: RetryConfig,
    outbox: OnceLock<Outbox>,
}

/// Per namespace: the last sequence number, and until when the sidecar
/// heartbeats there.
type Seqs = Arc<Mutex<HashMap<String, (u64, Option<tokio::time::Instant>)>>>;

/// A message waiting to go out on the bus.
struct Queued {
    namespace: String,
    payload: Bytes,
    done: oneshot::Sender<()>,
}

/// The bus publishes, in order, off the delete path: a task publishes each
/// queued message, retried until it goes out or the sidecar shuts down.
struct Outbox {
    tx: mpsc::UnboundedSender<Queued>,
    /// Queued and not yet out.
    backlog: Arc<AtomicUsize>,
    /// A message did not go out within the hold and the queue has not
    /// drained since: later publishes are not waited for.
    stuck: Arc<AtomicBool>,
}

impl Outbox {
    fn spawn(bus: Arc<dyn Bus>, retry: RetryConfig, shutdown: Shutdown) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
        let backlog = Arc::new(AtomicUsize::new(0));
        let stuck = Arc::new(AtomicBool::new(false));
        let (left, stuck_flag) = (Arc::clone(&backlog), Arc::clone(&stuck));
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                let sent = retry_until_ok("bus_publish", &retry, &shutdown, || {
                    bus.publish(&q.namespace, q.payload.clone())
                })
                .await;
                if sent.is_err() {
                    // Shut down: what is left is not sent.
                    return;
                }
                let now = left.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
                metrics::gauge!("tiercache_sidecar_publish_backlog").set(now as f64);
                if now == 0 && stuck_flag.swap(false, Ordering::AcqRel) {
                    tracing::info!("bus publishes caught up");
                }
                let _ = q.done.send(());
            }
            // Every sender is gone and the queue drained (the farewells
            // last): a client that buffers publishes (core NATS) hands them
            // to the server before this last bus handle goes.
            let _ = tokio::time::timeout(FAREWELL_WAIT, bus.flush()).await;
        });
        Self { tx, backlog, stuck }
    }

    /// Queues a message; resolves once it went out.
    fn push(&self, namespace: String, payload: Bytes) -> oneshot::Receiver<()> {
        let (done, rx) = oneshot::channel();
        let n = self.backlog.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::gauge!("tiercache_sidecar_publish_backlog").set(n as f64);
        // The task only ends at shutdown; then the receiver reports it.
        let _ = self.tx.send(Queued {
            namespace,
            payload,
            done,
        });
        rx
    }
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks")
            .field("shared", &self.shared.is_some())
            .field("bus", &self.bus.is_some())
            .field("codec", &self.codec)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Sinks {
    /// Sinks over the given shared tier and bus (either may be absent), with
    /// a random instance id, signing with `codec`.
    pub fn new(
        shared: Option<Arc<dyn SharedTier>>,
        bus: Option<Arc<dyn Bus>>,
        codec: MessageCodec,
        retry: RetryConfig,
    ) -> Self {
        Self {
            shared,
            bus,
            codec,
            instance_id: rand::random::<u64>() | 1,
            seqs: Arc::new(Mutex::new(HashMap::new())),
            retry,
            outbox: OnceLock::new(),
        }
    }

    /// Builds the sinks the config names: `RedisSharedTier` for `[redis]`,
    /// `NatsBus` / `RedisBus` for `[bus]`. With `lazy`, servers that are down
    /// do not fail the start (the sinks retry); without it (`check`), they do.
    pub async fn from_config(config: &Config, lazy: bool) -> Result<Self, SinkError> {
        let shared: Option<Arc<dyn SharedTier>> = match &config.redis {
            None => None,
            Some(r) => {
                let mut b = tiercache_redis::RedisSharedTier::builder()
                    .call_timeout(Duration::from_millis(r.call_timeout_ms))
                    .reconnect_backoff(config.retry.initial(), config.retry.max())
                    .connect_lazily(lazy);
                if let Some(u) = &r.url {
                    b = b.url(u.clone());
                }
                if !r.sentinels.is_empty()
                    && let Some(m) = &r.master
                {
                    b = b.sentinel(r.sentinels.clone(), m.clone());
                }
                if !r.cluster.is_empty() {
                    b = b.cluster(r.cluster.clone());
                }
                if let Some(u) = &r.username {
                    b = b.username(u.clone());
                }
                if let Some(p) = &r.password {
                    b = b.password(p.clone());
                }
                if r.tls {
                    b = b.tls(true);
                }
                if let Some(ca) = &r.tls_ca_cert {
                    b = b.tls_ca_cert(ca.clone());
                }
                let tier = b.build().await.map_err(|e| SinkError::Redis(e.into()))?;
                Some(Arc::new(tier))
            }
        };
        let url = config.bus_url().unwrap_or_default().to_owned();
        let bus: Option<Arc<dyn Bus>> = match config.bus.kind {
            BusKind::None => None,
            BusKind::Nats => {
                let mut b = tiercache_nats::NatsBus::builder()
                    .url(url)
                    .name("tiercache-sidecar")
                    .retry_on_initial_connect(lazy);
                if let Some(p) = &config.bus.subject_prefix {
                    b = b.subject_prefix(p.clone());
                }
                if let Some(stream) = &config.bus.jetstream {
                    b = b.jetstream(stream.clone());
                }
                let c = &config.bus;
                if let Some(ca) = &c.tls_ca_cert {
                    b = b.tls_ca_cert(ca.clone());
                }
                if c.require_tls {
                    b = b.require_tls(true);
                }
                if let Some(t) = &c.token {
                    b = b.token(t.clone());
                }
                if let (Some(u), Some(p)) = (&c.user, &c.password) {
                    b = b.user_password(u.clone(), p.clone());
                }
                if let Some(creds) = &c.credentials_file {
                    b = b.credentials_file(creds.clone());
                }
                let bus = b.build().await.map_err(|e| SinkError::Nats(e.into()))?;
                Some(Arc::new(bus))
            }
            BusKind::Redis => {
                let mut b = tiercache_redis::RedisBus::builder()
                    .url(url)
                    .reconnect_backoff(config.retry.initial(), config.retry.max());
                if let Some(p) = &config.bus.subject_prefix {
                    b = b.channel_prefix(p.clone());
                }
                if let Some(r) = &config.redis {
                    if let Some(u) = &r.username {
                        b = b.username(u.clone());
                    }
                    if let Some(p) = &r.password {
                        b = b.password(p.clone());
                    }
                }
                let ca = config
                    .bus
                    .tls_ca_cert
                    .as_ref()
                    .or_else(|| config.redis.as_ref().and_then(|r| r.tls_ca_cert.as_ref()));
                if let Some(ca) = ca {
                    b = b.tls_ca_cert(ca.clone());
                }
                let bus = b.build().await.map_err(|e| SinkError::Redis(e.into()))?;
                Some(Arc::new(bus))
            }
        };
        let codec = match &config.bus.signing_key {
            Some(k) => MessageCodec::signed(k.as_bytes()),
            None => MessageCodec::unsigned(),
        };
        Ok(Self::new(shared, bus, codec, config.retry.clone()))
    }

    /// This process's instance id on the bus: the
    /// [`sender_instance`](Invalidation::sender_instance) of the messages it
    /// publishes.
    pub fn instance_id(&self) -> u64 {
        self.instance_id
    }

    /// Says farewell in every namespace this sidecar is active in (it
    /// published there within the last few seconds and still heartbeats),
    /// behind what its outbox holds, and waits up to [`FAREWELL_WAIT`] for
    /// the farewells to go out. Called when the sidecar stops: without it,
    /// the instances take its silence for a stuck outbox, bypass their
    /// local tiers for a while and then cap local life until its queued
    /// messages would have been given up (minutes). A farewell that cannot
    /// go out (its outbox stuck) leaves them doing so, which is then right.
    /// Returns how many namespaces were told.
    pub async fn farewell(&self) -> usize {
        let Some(outbox) = self.outbox.get() else {
            return 0;
        };
        let sent: Vec<_> = {
            let mut seqs = self.seqs.lock().await;
            seqs.iter_mut()
                .filter_map(|(namespace, (seq, active))| {
                    active.take()?;
                    let msg = Invalidation::farewell(self.instance_id, namespace.as_str(), *seq);
                    Some(outbox.push(namespace.clone(), Bytes::from(self.codec.encode(&msg))))
                })
                .collect()
        };
        let told = sent.len();
        let all = async {
            futures::future::join_all(sent).await;
            // A client that buffers publishes (core NATS) must hand the
            // farewells to the server before the sidecar lets it go.
            if let Some(bus) = &self.bus {
                bus.flush().await
            } else {
                Ok(())
            }
        };
        if !matches!(tokio::time::timeout(FAREWELL_WAIT, all).await, Ok(Ok(()))) {
            tracing::warn!(
                namespaces = told,
                "farewell not out in time; instances will treat this sidecar's silence as a stuck outbox"
            );
        }
        told
    }

    /// The shared tier, if any.
    pub fn shared(&self) -> Option<&Arc<dyn SharedTier>> {
        self.shared.as_ref()
    }

    /// The bus, if any.
    pub fn bus(&self) -> Option<&Arc<dyn Bus>> {
        self.bus.as_ref()
    }

    /// Applies every message of `batch`: shared-tier deletes, then the bus
    /// publish, each retried until it succeeds. Returns `Err(Stopped)` when
    /// `shutdown` fires while a call is failing: the batch is then only
    /// partly applied and the source must not advance past it.
    ///
    /// While the shared tier fails, the messages are published first (so
    /// instances stop serving their local copies now, and with Redis down
    /// for them too ask the origin, rather than serve them until Redis is
    /// back), then their deletes are retried, then they are published again
    /// (an instance may have refilled from the old shared value meanwhile).
    pub async fn apply(&self, batch: &Batch, shutdown: &Shutdown) -> Result<(), Stopped> {
        let mut held: Vec<&Outgoing> = Vec::new();
        for m in batch.messages() {
            // Once a delete failed, the rest of the batch skips its attempt
            // (a call timeout each) and is published at once.
            if held.is_empty() && self.shared_invalidate_once(m).await {
                self.publish(m, shutdown).await?;
                Self::applied(m);
                continue;
            }
            if held.is_empty() {
                tracing::warn!(
                    namespace = %m.namespace,
                    "shared tier failing: publishing before its deletes, and again after"
                );
            }
            self.publish(m, shutdown).await?;
            held.push(m);
        }
        for m in held {
            self.shared_invalidate(m, shutdown).await?;
            self.publish(m, shutdown).await?;
            Self::applied(m);
        }
        Ok(())
    }

    /// Metrics and the log line of a message fully applied.
    fn applied(m: &Outgoing) {
        let now = now_us();
        for t in &m.lag_samples {
            metrics::histogram!("tiercache_sidecar_lag_seconds")
                .record((now.saturating_sub(*t).max(0) as f64) / 1e6);
        }
        metrics::counter!("tiercache_sidecar_invalidations_sent_total", "namespace" => m.namespace.clone())
            .increment(1);
        metrics::counter!("tiercache_sidecar_keys_invalidated_total", "namespace" => m.namespace.clone())
            .increment(m.keys.len() as u64);
        metrics::counter!("tiercache_sidecar_tags_invalidated_total", "namespace" => m.namespace.clone())
            .increment(m.tags.len() as u64);
        tracing::debug!(
            namespace = %m.namespace,
            keys = ?m.keys,
            tags = ?m.tags,
            created = m.created,
            "invalidation applied"
        );
    }

    fn storage_keys(m: &Outgoing) -> Vec<String> {
        let fmt = KeyFormat::new(m.namespace.as_str(), m.max_key_len);
        m.keys.iter().map(|k| fmt.storage_key(k)).collect()
    }

    /// One attempt at the shared-tier deletes of `m`: whether they are done.
    async fn shared_invalidate_once(&self, m: &Outgoing) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        if !m.keys.is_empty() && shared.invalidate(&Self::storage_keys(m)).await.is_err() {
            return false;
        }
        m.tags.is_empty() || shared.invalidate_tags(&m.namespace, &m.tags).await.is_ok()
    }

    /// The shared-tier deletes of `m`, retried until they succeed.
    async fn shared_invalidate(&self, m: &Outgoing, shutdown: &Shutdown) -> Result<(), Stopped> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        if !m.keys.is_empty() {
            let storage = Self::storage_keys(m);
            self.retry("shared_invalidate", shutdown, || {
                shared.invalidate(&storage)
            })
            .await?;
        }
        if !m.tags.is_empty() {
            self.retry("shared_invalidate_tags", shutdown, || {
                shared.invalidate_tags(&m.namespace, &m.tags)
            })
            .await?;
        }
        Ok(())
    }

    /// Queues `m` for the bus (if any) with the next sequence number of its
    /// namespace, and waits until it went out, at most [`PUBLISH_HOLD`] (not
    /// at all while the outbox is stuck). `Err(Stopped)` when shutdown
    /// comes first.
    async fn publish(&self, m: &Outgoing, shutdown: &Shutdown) -> Result<(), Stopped> {
        let Some(bus) = &self.bus else {
            return Ok(());
        };
        let outbox = self.outbox.get_or_init(|| {
            let outbox = Outbox::spawn(Arc::clone(bus), self.retry.clone(), shutdown.clone());
            tokio::spawn(origin_heartbeats(
                Arc::clone(&self.seqs),
                outbox.tx.clone(),
                Arc::clone(&outbox.backlog),
                self.codec.clone(),
                self.instance_id,
                shutdown.clone(),
            ));
            outbox
        });
        // Numbered and queued under one lock: the queue is in seq order.
        let mut seqs = self.seqs.lock().await;
        let seq = {
            let (s, active) = seqs.entry(m.namespace.clone()).or_insert((0, None));
            *s += 1;
            *active = Some(tokio::time::Instant::now() + ORIGIN_ACTIVE_FOR);
            *s
        };
        let msg = Invalidation {
            sender_instance: self.instance_id,
            namespace: m.namespace.clone(),
            keys: m.keys.clone(),
            tags: m.tags.clone(),
            created: m.created,
            seq,
            source_time_ms: m
                .source_time_us
                .map_or_else(|| now_us() / 1000, |t| t / 1000)
                .max(0) as u64,
            clear: None,
        };
        let payload = Bytes::from(self.codec.encode(&msg));
        let done = outbox.push(m.namespace.clone(), payload);
        drop(seqs);
        if outbox.stuck.load(Ordering::Acquire) {
            return Ok(());
        }
        tokio::select! {
            sent = done => sent.map_err(|_| Stopped),
            () = tokio::time::sleep(PUBLISH_HOLD) => {
                if !outbox.stuck.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        namespace = %m.namespace,
                        hold = ?PUBLISH_HOLD,
                        "bus publish not out in time; deletes go on, publishes stay queued in order"
                    );
                }
                Ok(())
            }
            () = shutdown.wait() => Err(Stopped),
        }
    }

    async fn retry<F, Fut, E>(
        &self,
        op: &'static str,
        shutdown: &Shutdown,
        f: F,
    ) -> Result<(), Stopped>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        retry_until_ok(op, &self.retry, shutdown, f).await
    }
}

/// How long the sidecar heartbeats in a namespace after its last message
/// there, before it says farewell (the engine's origins do the same).
const ORIGIN_ACTIVE_FOR: Duration = Duration::from_secs(5);

/// How long [`Sinks::farewell`] waits for its farewells to go out.
pub const FAREWELL_WAIT: Duration = Duration::from_secs(2);

/// The heartbeat pace: what the engine asks of its bus at the default
/// staleness bound (a fifth of four fifths of it).
const ORIGIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// How often the sidecar, once it has said farewell in a namespace, says
/// it again there while it stays quiet, until [`FAREWELL_AGAIN_FOR`] has
/// passed: a bus that delivers at most once (core NATS, Redis pub/sub)
/// drops what is published while a receiver is reconnecting, and a
/// farewell said once and lost there would leave that receiver taking the
/// quiet sidecar for a stuck one (local life capped for minutes).
const FAREWELL_AGAIN_EVERY: Duration = Duration::from_secs(1);

/// How long a farewell is said again: as long as the engine's instances
/// hold a quiet origin's messages possibly stuck (its outbox's give-up
/// time).
const FAREWELL_AGAIN_FOR: Duration = Duration::from_secs(300);

/// Origin heartbeats, per namespace the sidecar published in within
/// [`ORIGIN_ACTIVE_FOR`], then a farewell, said again every
/// [`FAREWELL_AGAIN_EVERY`] while the sidecar stays quiet there: a
/// receiver whose bus is live but does not hear this origin (its own bus
/// connection down, its publishes stuck) flushes rather than keeping
/// copies the sidecar's stuck messages would evict. Queued only behind an
/// empty outbox (a first farewell excepted).
async fn origin_heartbeats(
    seqs: Seqs,
    tx: mpsc::UnboundedSender<Queued>,
    backlog: Arc<AtomicUsize>,
    codec: MessageCodec,
    sender_instance: u64,
    shutdown: Shutdown,
) {
    // Per namespace, after its farewell: when to say it again, and until
    // when.
    let mut again: HashMap<String, (tokio::time::Instant, tokio::time::Instant)> = HashMap::new();
    loop {
        if !shutdown.sleep(ORIGIN_HEARTBEAT).await {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut seqs = seqs.lock().await;
        // Read once a tick: each heartbeat queued below adds to the backlog,
        // and must not keep the next namespace's from going out.
        let idle = backlog.load(Ordering::Acquire) == 0;
        again.retain(|namespace, (_, end)| {
            now < *end
                && seqs
                    .get(namespace)
                    .is_some_and(|(_, active)| active.is_none())
        });
        for (namespace, (seq, active)) in seqs.iter_mut() {
            let farewell = match *active {
                Some(until) if now >= until => {
                    *active = None;
                    again.insert(
                        namespace.clone(),
                        (now + FAREWELL_AGAIN_EVERY, now + FAREWELL_AGAIN_FOR),
                    );
                    true
                }
                Some(_) if idle => false,
                Some(_) => continue,
                None => match again.get_mut(namespace) {
                    Some((next, _)) if idle && now >= *next => {
                        *next = now + FAREWELL_AGAIN_EVERY;
                        true
                    }
                    _ => continue,
                },
            };
            let msg = if farewell {
                Invalidation::farewell(sender_instance, namespace.as_str(), *seq)
            } else {
                Invalidation::heartbeat(sender_instance, namespace.as_str(), *seq)
            };
            let (done, _) = oneshot::channel();
            backlog.fetch_add(1, Ordering::AcqRel);
            if tx
                .send(Queued {
                    namespace: namespace.clone(),
                    payload: Bytes::from(codec.encode(&msg)),
                    done,
                })
                .is_err()
            {
                return;
            }
        }
    }
}

/// Calls `f` until it succeeds, with exponential backoff; `Err(Stopped)`
/// when shutdown is asked for while it fails.
async fn retry_until_ok<F, Fut, E>(
    op: &'static str,
    retry: &RetryConfig,
    shutdown: &Shutdown,
    mut f: F,
) -> Result<(), Stopped>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    {
        let mut delay = retry.initial();
        let mut attempt = 0u32;
        loop {
            match f().await {
                Ok(()) => {
                    if attempt > 0 {
                        tracing::info!(op, attempts = attempt + 1, "succeeded after retries");
                    }
                    return Ok(());
                }
                Err(e) => {
                    attempt += 1;
                    metrics::counter!("tiercache_sidecar_errors_total", "op" => op).increment(1);
                    if shutdown.is_triggered() {
                        tracing::warn!(op, "failed during shutdown, batch not applied: {e}");
                        return Err(Stopped);
                    }
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(op, attempt, "failed, retrying in {delay:?}: {e}");
                    }
                    metrics::counter!("tiercache_sidecar_retries_total", "op" => op).increment(1);
                    if !shutdown.sleep(delay).await {
                        return Err(Stopped);
                    }
                    delay = (delay * 2).min(retry.max());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(ns: &str, keys: &[&str], tags: &[&str], created: bool, t: i64) -> Planned {
        Planned {
            namespace: ns.into(),
            max_key_len: 250,
            keys: keys.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            created,
            source_time_us: Some(t),
        }
    }

    #[test]
    fn batch_merges_per_namespace_and_created() {
        let mut b = Batch::new();
        b.push(planned("p", &["1"], &["a"], false, 10));
        b.push(planned("p", &["1", "2"], &["b"], false, 5));
        b.push(planned("p", &["3"], &[], true, 7));
        b.push(planned("q", &["1"], &[], false, 8));
        let m = b.messages();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].keys, vec!["1", "2"]);
        assert_eq!(m[0].tags, vec!["a", "b"]);
        assert_eq!(m[0].source_time_us, Some(5));
        assert!(m[1].created);
        assert_eq!(m[2].namespace, "q");
        assert_eq!(b.changes(), 4);
    }

    #[test]
    fn batch_splits_large_messages() {
        let mut b = Batch::new();
        for i in 0..(MAX_ITEMS_PER_MESSAGE + 10) {
            b.push(planned("p", &[&i.to_string()], &[], false, 1));
        }
        assert_eq!(b.messages().len(), 2);
        assert_eq!(b.messages()[0].keys.len(), MAX_ITEMS_PER_MESSAGE);
    }

    #[tokio::test]
    async fn applies_to_shared_tier_and_bus() {
        use futures::StreamExt;
        use tiercache_core::backend::{BusEvent, InProcessBus, InProcessSharedTier};
        let shared = Arc::new(InProcessSharedTier::default());
        let bus = InProcessBus::new();
        let mut sub = bus.subscribe("p").await.unwrap();
        shared
            .set("p:1", Bytes::from_static(b"v"), Duration::from_secs(60))
            .await
            .unwrap();
        let sinks = Sinks::new(
            Some(shared.clone()),
            Some(Arc::new(bus.clone())),
            MessageCodec::signed(b"k"),
            RetryConfig::default(),
        );
        let mut b = Batch::new();
        b.push(planned("p", &["1"], &["t"], false, now_us()));
        let (_trigger, shutdown) = Shutdown::new();
        sinks.apply(&b, &shutdown).await.unwrap();
        assert!(shared.get("p:1").await.unwrap().is_none());
        assert!(shared.tag_versions("p", &["t".into()]).await.unwrap()[0] > 0);
        let msg = loop {
            match sub.next().await.unwrap() {
                BusEvent::Message(m) => break MessageCodec::signed(b"k").decode(&m).unwrap(),
                _ => continue,
            }
        };
        assert_eq!(msg.keys, vec!["1"]);
        assert_eq!(msg.seq, 1);
        assert_eq!(msg.sender_instance, sinks.instance_id());
    }
}
