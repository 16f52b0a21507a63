//! [`ShardedSharedTier`]: one shared tier spread over several independent
//! ones (standalone Redis servers, say, for a team without Redis Cluster),
//! by rendezvous hashing.
//!
//! Each key lives on the shard with the highest hash of (shard id, key):
//! adding or removing one of N shards moves only the keys that shard wins
//! or held, about 1/N of them, and no shard's order depends on another's.
//! A namespace's own state (its tag clock, tag versions and clear epochs)
//! lives on one shard, its *home*, chosen the same way by the namespace's
//! name; a fill's ticket takes the key's version and lease from the key's
//! shard and the namespace's clock and epochs from the home, both read
//! before the load (as on Redis Cluster, where they are in different
//! slots).
//!
//! A dead shard fails its own keys open, as one server would: its calls
//! error, the engine counts them and goes to the origin. Only the home
//! shard's death reaches every key: tagged values are then not served
//! from the shared tier, and fills are not written to it, until it is back.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{ClearEpochs, FillTicket, SharedEvent, SharedTier};
use crate::error::SharedError;

/// One shard: a stable id (its address, say: the hash depends on it, not
/// on the shard's position) and the tier.
struct Shard {
    seed: u64,
    tier: Arc<dyn SharedTier>,
}

/// Several shared tiers as one, each key on one of them (see the
/// [module docs](self)).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use tiercache_core::backend::{InProcessSharedTier, ShardedSharedTier, SharedTier};
///
/// let tier = ShardedSharedTier::new([
///     ("redis-a:6379", Arc::new(InProcessSharedTier::default()) as Arc<dyn SharedTier>),
///     ("redis-b:6379", Arc::new(InProcessSharedTier::default())),
///     ("redis-c:6379", Arc::new(InProcessSharedTier::default())),
/// ])
/// .expect("at least one shard, ids distinct");
/// assert!(tier.shard_of("products:42") < 3);
/// # });
/// ```
pub struct ShardedSharedTier {
    shards: Vec<Shard>,
    ids: Vec<String>,
}

impl std::fmt::Debug for ShardedSharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedSharedTier")
            .field("shards", &self.ids)
            .finish()
    }
}

/// Why shards cannot be combined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardingError {
    /// No shard was given.
    #[error("a sharded shared tier needs at least one shard")]
    NoShards,
    /// Two shards share an id (the hash would not tell them apart).
    #[error("two shards share the id `{0}`")]
    DuplicateId(String),
}

/// The key names a namespace's own state is read through on its home
/// shard (a key no application key renders to: storage keys start with the
/// namespace and a colon).
fn namespace_probe(namespace: &str) -> String {
    format!("\u{0}tiercache-namespace:{namespace}")
}

impl ShardedSharedTier {
    /// Combines `shards`, each with a stable id (its address).
    ///
    /// # Errors
    ///
    /// No shard, or two with the same id ([`ShardingError`]).
    pub fn new<I, S>(shards: I) -> Result<Self, ShardingError>
    where
        I: IntoIterator<Item = (S, Arc<dyn SharedTier>)>,
        S: Into<String>,
    {
        let mut ids = Vec::new();
        let mut out = Vec::new();
        for (id, tier) in shards {
            let id = id.into();
            if ids.contains(&id) {
                return Err(ShardingError::DuplicateId(id));
            }
            out.push(Shard {
                seed: xxhash_rust::xxh3::xxh3_64(id.as_bytes()),
                tier,
            });
            ids.push(id);
        }
        if out.is_empty() {
            return Err(ShardingError::NoShards);
        }
        Ok(Self { shards: out, ids })
    }

    /// The index (in the order given) of the shard that holds `key`.
    pub fn shard_of(&self, key: &str) -> usize {
        let mut best = (0, 0u64);
        for (i, s) in self.shards.iter().enumerate() {
            let score = xxh3_64_with_seed(key.as_bytes(), s.seed);
            if i == 0 || score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }

    /// The shard ids, in the order given.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    fn tier(&self, key: &str) -> &Arc<dyn SharedTier> {
        &self.shards[self.shard_of(key)].tier
    }

    /// The home of `namespace`'s own state.
    fn home(&self, namespace: &str) -> &Arc<dyn SharedTier> {
        self.tier(&namespace_probe(namespace))
    }

    /// `keys` grouped by shard: (shard, positions in `keys`, the keys).
    fn by_shard(&self, keys: &[String]) -> Vec<(usize, Vec<usize>, Vec<String>)> {
        let mut groups: Vec<(usize, Vec<usize>, Vec<String>)> = Vec::new();
        for (pos, k) in keys.iter().enumerate() {
            let s = self.shard_of(k);
            match groups.iter_mut().find(|g| g.0 == s) {
                Some(g) => {
                    g.1.push(pos);
                    g.2.push(k.clone());
                }
                None => groups.push((s, vec![pos], vec![k.clone()])),
            }
        }
        groups
    }
}

#[async_trait]
impl SharedTier for ShardedSharedTier {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, SharedError> {
        self.tier(key).get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, SharedError> {
        let groups = self.by_shard(keys);
        let answers = futures::future::try_join_all(
            groups
                .iter()
                .map(|(s, _, ks)| self.shards[*s].tier.get_many(ks)),
        )
        .await?;
        let mut out = vec![None; keys.len()];
        for ((_, positions, ks), got) in groups.iter().zip(answers) {
            if got.len() != ks.len() {
                return Err(SharedError::server(format!(
                    "a shard answered {} values for {} keys",
                    got.len(),
                    ks.len()
                )));
            }
            for (&pos, v) in positions.iter().zip(got) {
                out[pos] = v;
            }
        }
        Ok(out)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), SharedError> {
        self.tier(key).set(key, value, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<(), SharedError> {
        self.tier(key).delete(key).await
    }

    async fn begin_fill(
        &self,
        namespace: &str,
        key: &str,
        lease_ttl: Option<Duration>,
    ) -> Result<FillTicket, SharedError> {
        let probe = namespace_probe(namespace);
        let (own, home) = (self.tier(key), self.tier(&probe));
        if Arc::ptr_eq(own, home) {
            return own.begin_fill(namespace, key, lease_ttl).await;
        }
        // The key's version and lease from its shard, the namespace's clock
        // and epochs from its home; both before the load begins.
        let (mut ticket, ns) = futures::try_join!(
            own.begin_fill(namespace, key, lease_ttl),
            home.begin_fill(namespace, &probe, None)
        )?;
        ticket.tag_clock = ns.tag_clock;
        ticket.epochs = ns.epochs;
        Ok(ticket)
    }

    async fn commit_fill(
        &self,
        key: &str,
        ticket: &FillTicket,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, SharedError> {
        self.tier(key).commit_fill(key, ticket, value, ttl).await
    }

    async fn abort_fill(&self, key: &str, ticket: &FillTicket) -> Result<(), SharedError> {
        self.tier(key).abort_fill(key, ticket).await
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), SharedError> {
        let groups = self.by_shard(keys);
        futures::future::try_join_all(
            groups
                .iter()
                .map(|(s, _, ks)| self.shards[*s].tier.invalidate(ks)),
        )
        .await
        .map(drop)
    }

    async fn tag_versions(
        &self,
        namespace: &str,
        tags: &[String],
    ) -> Result<Vec<u64>, SharedError> {
        self.home(namespace).tag_versions(namespace, tags).await
    }

    async fn invalidate_tags(&self, namespace: &str, tags: &[String]) -> Result<(), SharedError> {
        self.home(namespace).invalidate_tags(namespace, tags).await
    }

    async fn clear_epochs(&self, namespace: &str) -> Result<ClearEpochs, SharedError> {
        self.home(namespace).clear_epochs(namespace).await
    }

    async fn clear(
        &self,
        namespace: &str,
        hard: bool,
        after: u64,
    ) -> Result<ClearEpochs, SharedError> {
        self.home(namespace).clear(namespace, hard, after).await
    }

    /// Every shard's events: a reconnect or failover of any shard is one of
    /// the whole tier (its versions may have rolled back).
    fn events(&self) -> Option<BoxStream<'static, SharedEvent>> {
        let streams: Vec<_> = self.shards.iter().filter_map(|s| s.tier.events()).collect();
        (!streams.is_empty()).then(|| futures::stream::select_all(streams).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::InProcessSharedTier;

    fn shards(n: usize) -> Vec<(String, Arc<dyn SharedTier>)> {
        (0..n)
            .map(|i| {
                (
                    format!("10.0.0.{i}:6379"),
                    Arc::new(InProcessSharedTier::default()) as Arc<dyn SharedTier>,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn conforms() {
        let t = ShardedSharedTier::new(shards(3)).expect("shards");
        crate::backend::conformance::shared_tier(&t).await;
    }

    #[test]
    fn adding_a_shard_moves_about_one_key_in_n() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("ns:{i}")).collect();
        for n in [2usize, 4, 8] {
            let before = ShardedSharedTier::new(shards(n)).expect("shards");
            let after = ShardedSharedTier::new(shards(n + 1)).expect("shards");
            let moved = keys
                .iter()
                .filter(|k| before.shard_of(k) != after.shard_of(k))
                .count();
            // Every moved key moved to the new shard.
            assert!(
                keys.iter()
                    .all(|k| { before.shard_of(k) == after.shard_of(k) || after.shard_of(k) == n })
            );
            let share = moved as f64 / keys.len() as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                (share - ideal).abs() < ideal * 0.1,
                "{n} -> {}: {share:.3} of keys moved, ideal {ideal:.3}",
                n + 1
            );
        }
    }

    #[test]
    fn keys_spread_evenly_and_ids_must_differ() {
        let t = ShardedSharedTier::new(shards(4)).expect("shards");
        let mut counts = [0usize; 4];
        for i in 0..20_000 {
            counts[t.shard_of(&format!("ns:{i}"))] += 1;
        }
        for c in counts {
            assert!((4_500..5_500).contains(&c), "{counts:?}");
        }
        let mut dup = shards(2);
        dup[1].0 = dup[0].0.clone();
        assert!(matches!(
            ShardedSharedTier::new(dup),
            Err(ShardingError::DuplicateId(_))
        ));
        assert!(matches!(
            ShardedSharedTier::new(Vec::<(String, Arc<dyn SharedTier>)>::new()),
            Err(ShardingError::NoShards)
        ));
    }
}
