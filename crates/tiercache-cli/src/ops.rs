//! `invalidate` and `clear`: the shared tier first, then the bus, as the
//! engine does (an instance that evicts on the message and reloads cannot
//! read the old value back from Redis).
//!
//! Every receiver tracks each sender by its `sender_instance` and sequence
//! number, and judges a sender that published and then went quiet
//! "silent" (which flushes its local tier). So a run draws a random
//! sender id, numbers its messages 1, 2, ... and ends with a farewell at
//! its last number: receivers then forget it instead of waiting for its
//! heartbeats ([`Sender`]).

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tiercache_core::backend::{ClearNote, Invalidation, KeyFormat, MessageCodec, SharedTier};
use tiercache_sidecar::sink::MAX_ITEMS_PER_MESSAGE;

use crate::args::{ClearArgs, InvalidateArgs};
use crate::conn::{BusConn, Settings};
use crate::error::Error;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Checks a namespace argument.
pub(crate) fn check_namespace(ns: &str) -> Result<(), Error> {
    if ns.is_empty() {
        return Err(Error::setting("--namespace", "is empty"));
    }
    Ok(())
}

pub(crate) fn check_max_key_len(ns: &str, max: usize) -> Result<(), Error> {
    if max < ns.len() + 2 {
        return Err(Error::setting(
            "--max-key-len",
            format!("{max} is too small for namespace {ns:?}"),
        ));
    }
    Ok(())
}

/// One run's messages on one namespace: a random sender id, sequence
/// numbers from 1, and a farewell at the end.
pub struct Sender<'a> {
    bus: &'a BusConn,
    codec: MessageCodec,
    namespace: String,
    instance: u64,
    seq: u64,
}

impl<'a> Sender<'a> {
    /// A sender on `bus` for `namespace`, signing with `codec`.
    pub fn new(bus: &'a BusConn, codec: MessageCodec, namespace: &str) -> Self {
        Self {
            bus,
            codec,
            namespace: namespace.to_owned(),
            // Never 0: a receiver's "none seen yet".
            instance: rand::random::<u64>() | 1,
            seq: 0,
        }
    }

    /// This run's sender id.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// The last sequence number used.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Sends `msg` with this sender's id, namespace and next sequence
    /// number.
    ///
    /// # Errors
    ///
    /// The publish failed; call [`finish`](Self::finish) all the same, so
    /// receivers see the gap (and flush) rather than wait.
    pub async fn send(&mut self, mut msg: Invalidation) -> Result<(), Error> {
        self.seq += 1;
        msg.sender_instance = self.instance;
        msg.namespace.clone_from(&self.namespace);
        msg.seq = self.seq;
        let bytes = self.codec.encode(&msg);
        self.bus.publish(&self.namespace, Bytes::from(bytes)).await
    }

    /// Says farewell at the last sequence number (nothing when nothing was
    /// sent) and waits until the messages have left the process.
    ///
    /// # Errors
    ///
    /// The farewell or the flush failed.
    pub async fn finish(self, timeout: Duration) -> Result<(), Error> {
        if self.seq > 0 {
            let bye = Invalidation::farewell(self.instance, self.namespace.clone(), self.seq);
            self.bus
                .publish(&self.namespace, Bytes::from(self.codec.encode(&bye)))
                .await?;
        }
        self.bus.flush(timeout).await
    }
}

/// Sends every message of `msgs`, then the farewell (also after a failed
/// send, so receivers see the gap). The first error wins.
async fn send_all(
    bus: &BusConn,
    settings: &Settings,
    namespace: &str,
    msgs: Vec<Invalidation>,
) -> Result<(u64, u64), Error> {
    let mut sender = Sender::new(bus, settings.codec(), namespace);
    let mut result = Ok(());
    for m in msgs {
        result = sender.send(m).await;
        if result.is_err() {
            break;
        }
    }
    let (instance, seq) = (sender.instance(), sender.last_seq());
    let finished = sender.finish(settings.timeout).await;
    result?;
    finished?;
    Ok((instance, seq))
}

fn dedup(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

fn no_bus_warning(what: &str) {
    eprintln!(
        "warning: no bus configured (--nats-url, --redis-bus-url or [bus] in --config): {what}"
    );
}

/// `tiercache invalidate`.
///
/// # Errors
///
/// A setting is wrong, or Redis or the bus failed (the error names which).
pub async fn invalidate(args: InvalidateArgs, out: &mut dyn Write) -> Result<(), Error> {
    let ns = args.namespace.as_str();
    check_namespace(ns)?;
    check_max_key_len(ns, args.max_key_len)?;
    let keys = dedup(&args.keys);
    let tags = dedup(&args.tags);
    if keys.is_empty() && tags.is_empty() {
        return Err(Error::setting("--key / --tag", "give at least one"));
    }
    let settings = Settings::resolve(&args.conn)?;
    let shared = settings.connect_shared("invalidate").await?;
    let bus = settings.connect_bus().await?;

    let format = KeyFormat::new(ns, args.max_key_len);
    let storage_keys: Vec<String> = keys.iter().map(|k| format.storage_key(k)).collect();
    if !storage_keys.is_empty() {
        shared
            .tier
            .invalidate(&storage_keys)
            .await
            .map_err(shared.err("invalidate"))?;
    }
    if !tags.is_empty() {
        shared
            .tier
            .invalidate_tags(ns, &tags)
            .await
            .map_err(shared.err("invalidate_tags"))?;
    }
    writeln!(
        out,
        "redis: invalidated {} key(s) and {} tag(s) in namespace {ns:?}",
        keys.len(),
        tags.len()
    )?;

    let Some(bus) = bus else {
        no_bus_warning("Redis only; instances keep their local copies until their local TTL");
        return Ok(());
    };
    let at = now_ms();
    let mut msgs = Vec::new();
    let items: Vec<(bool, &String)> = keys
        .iter()
        .map(|k| (true, k))
        .chain(tags.iter().map(|t| (false, t)))
        .collect();
    for chunk in items.chunks(MAX_ITEMS_PER_MESSAGE) {
        let mut m = Invalidation::heartbeat(0, ns, 0);
        m.source_time_ms = at;
        for (is_key, item) in chunk {
            if *is_key {
                m.keys.push((*item).clone());
            } else {
                m.tags.push((*item).clone());
            }
        }
        msgs.push(m);
    }
    let (instance, seq) = send_all(&bus, &settings, ns, msgs).await?;
    writeln!(
        out,
        "bus: published {seq} message(s) on {} as sender {instance:016x} (then its farewell)",
        bus.url
    )?;
    Ok(())
}

/// `tiercache clear`.
///
/// # Errors
///
/// A setting is wrong, or Redis or the bus failed (the error names which).
pub async fn clear(args: ClearArgs, out: &mut dyn Write) -> Result<(), Error> {
    let ns = args.namespace.as_str();
    check_namespace(ns)?;
    let hard = !args.soft;
    let settings = Settings::resolve(&args.conn)?;
    let shared = settings.connect_shared("clear").await?;
    let bus = settings.connect_bus().await?;
    let epochs = shared
        .tier
        .clear(ns, hard, 0)
        .await
        .map_err(shared.err("clear"))?;
    writeln!(
        out,
        "redis: namespace {ns:?} cleared ({}): epoch {}, floor {}",
        if hard { "hard" } else { "soft" },
        epochs.epoch,
        epochs.floor
    )?;
    let Some(bus) = bus else {
        no_bus_warning(
            "Redis only; instances learn the clear when they next read the epochs (within a few staleness bounds)",
        );
        return Ok(());
    };
    let mut m = Invalidation::heartbeat(0, ns, 0);
    m.source_time_ms = now_ms();
    m.clear = Some(ClearNote {
        hard,
        epoch: epochs.epoch,
        floor: epochs.floor,
    });
    let (instance, _) = send_all(&bus, &settings, ns, vec![m]).await?;
    writeln!(
        out,
        "bus: published the clear on {} as sender {instance:016x} (then its farewell)",
        bus.url
    )?;
    Ok(())
}
