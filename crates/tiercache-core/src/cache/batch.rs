//! Shared-tier reads batched while others are in flight.
//!
//! A read that finds no other shared-tier read outstanding goes out alone,
//! as a plain `get`: a lone caller pays nothing for batching. A read that
//! arrives while another is outstanding joins a queue, and the queue goes
//! out as one [`get_many`](SharedTier::get_many) (`MGET` on Redis) from a
//! task of its own, once the tasks already runnable have had their turn to
//! join it. Nothing waits on a timer, and a batch never waits for the reads
//! before it: it is sent as soon as its task runs.
//!
//! Many concurrent local misses (a fresh or scaled-out instance under load,
//! `benches/shared_hit.rs`'s W2) then cost the shared tier one command and
//! one round of system calls per batch rather than per key.
//!
//! Callers are cancel-safe: the batch is sent by its own task, whoever
//! queued it, so a caller dropped while waiting strands no one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::SharedError;
use crate::shared::SharedTier;

/// A read's answer: the value, or the error of the call that carried it
/// (shared by the reads of a failed batch, each of which counts it, as
/// each would have counted its own failed call).
pub(crate) type Reply = Result<Option<Bytes>, Arc<SharedError>>;

/// One queued read.
struct Waiting {
    key: String,
    reply: oneshot::Sender<Reply>,
}

/// The reads of one shared tier, batched while others are in flight.
pub(crate) struct ReadBatch {
    shared: Arc<dyn SharedTier>,
    runtime: tokio::runtime::Handle,
    /// Reads outstanding, alone or queued.
    in_flight: AtomicUsize,
    queue: Mutex<Vec<Waiting>>,
}

/// Counts a read outstanding until dropped.
struct Outstanding<'a>(&'a AtomicUsize);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ReadBatch {
    pub(crate) fn new(shared: Arc<dyn SharedTier>, runtime: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(Self {
            shared,
            runtime,
            in_flight: AtomicUsize::new(0),
            queue: Mutex::new(Vec::new()),
        })
    }

    fn queue(&self) -> MutexGuard<'_, Vec<Waiting>> {
        // Every holder leaves the queue consistent (a push or a take).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared tier's bytes under `key`: alone when no other read is in
    /// flight, else in the next batch.
    pub(crate) async fn get(self: &Arc<Self>, key: &str) -> Reply {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _outstanding = Outstanding(&self.in_flight);
        if before == 0 {
            return self.shared.get(key).await.map_err(Arc::new);
        }
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut q = self.queue();
            q.push(Waiting {
                key: key.to_owned(),
                reply,
            });
            q.len() == 1
        };
        if first {
            let batch = Arc::clone(self);
            self.runtime.spawn(async move { batch.send().await });
        }
        answer.await.unwrap_or_else(|_| {
            // The batch's task ended without answering (its runtime is
            // shutting down).
            Err(Arc::new(SharedError::unavailable("batched read dropped")))
        })
    }

    /// Sends what is queued once the tasks already runnable have queued
    /// theirs.
    async fn send(&self) {
        tokio::task::yield_now().await;
        let waiting = std::mem::take(&mut *self.queue());
        if waiting.is_empty() {
            return;
        }
        let (keys, replies): (Vec<String>, Vec<_>) =
            waiting.into_iter().map(|w| (w.key, w.reply)).unzip();
        let answered = match keys.as_slice() {
            [one] => self.shared.get(one).await.map(|v| vec![v]),
            _ => self.shared.get_many(&keys).await,
        };
        match answered {
            Ok(values) if values.len() == replies.len() => {
                for (reply, v) in replies.into_iter().zip(values) {
                    let _ = reply.send(Ok(v));
                }
            }
            other => {
                let e = match other {
                    Err(e) => e,
                    Ok(values) => SharedError::server(format!(
                        "get_many answered {} values for {} keys",
                        values.len(),
                        replies.len()
                    )),
                };
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(Arc::clone(&e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::InProcessSharedTier;

    fn batch(tier: &InProcessSharedTier) -> Arc<ReadBatch> {
        ReadBatch::new(Arc::new(tier.clone()), tokio::runtime::Handle::current())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_each_get_their_own_key() {
        let tier = InProcessSharedTier::default();
        for k in 0..200 {
            tier.set(
                &format!("k{k}"),
                Bytes::from(format!("v{k}")),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        }
        let b = batch(&tier);
        let reads: Vec<_> = (0..400)
            .map(|k| {
                let b = Arc::clone(&b);
                tokio::spawn(async move { (k, b.get(&format!("k{k}")).await.unwrap()) })
            })
            .collect();
        for r in reads {
            let (k, v) = r.await.unwrap();
            let want = (k < 200).then(|| Bytes::from(format!("v{k}")));
            assert_eq!(v, want, "key k{k}");
        }
        assert_eq!(
            b.in_flight.load(Ordering::Acquire),
            0,
            "nothing outstanding"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_caller_strands_no_one() {
        let tier = InProcessSharedTier::default();
        tier.set("k", Bytes::from_static(b"v"), Duration::from_secs(60))
            .await
            .unwrap();
        let b = batch(&tier);
        for _ in 0..50 {
            // Many callers, half of them dropped while queued.
            let reads: Vec<_> = (0..32)
                .map(|i| {
                    let b = Arc::clone(&b);
                    tokio::spawn(async move {
                        if i % 2 == 0 {
                            let _ = tokio::time::timeout(Duration::ZERO, b.get("k")).await;
                            None
                        } else {
                            Some(b.get("k").await.unwrap())
                        }
                    })
                })
                .collect();
            for r in reads {
                if let Some(v) = r.await.unwrap() {
                    assert_eq!(v.as_deref(), Some(&b"v"[..]));
                }
            }
        }
        assert_eq!(b.in_flight.load(Ordering::Acquire), 0);
    }
}
