//! The model's state: the database, the shared tier, the sidecar, every
//! instance (local tier, listener, loads in flight, the bus's queue to it),
//! and the clock of invalidations against which staleness is judged.
//!
//! Names follow the engine (`crates/tiercache-core/src/cache/`): see the
//! crate docs for where each one lives.

/// A row's value: the number of writes committed to it (0 before any).
/// "Older" means smaller.
pub type Value = u8;

/// A key (row) of the database, `0..keys`.
pub type Key = u8;

/// Whether the local tier may be trusted (`cache/mod.rs`: `LocalMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LocalMode {
    /// The bus is live: the local tier is read and filled normally.
    Trusted,
    /// The bus is down: reads go on, fills live at most `Config::unsynced_ttl`
    /// ([`ModelConfig::capped_life`](crate::ModelConfig::capped_life)).
    Capped,
    /// The bus went silent: the local tier is not read at all.
    Bypass,
}

/// Why the whole local tier was dropped (`cache/mod.rs`: `FlushReason`).
/// The engine's `Requested`, `SharedFailover` and `BusEnded` are not
/// modeled (no user flush, no shared-tier failover, the subscription never
/// ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlushReason {
    /// The first bus event after the liveness timer fired.
    BusHeardAgain,
    /// A message's sequence number skipped ([`Step::Gap`](crate::Step::Gap)).
    SequenceGap,
    /// `BusEvent::Connected { resumed: false }`.
    BusReconnected,
    /// `BusEvent::Disconnected`.
    BusDisconnected,
    /// `BusEvent::Lost`: the client dropped messages.
    MessagesDropped,
}

/// The local fence token of a load or a shared-tier copy (`cache/fence.rs`:
/// `FenceMark`, taken by `Fence::mark`, tested by `Fence::revoked`).
///
/// The engine keeps a clock, the clock of each key's last invalidation and
/// of the last flush, and compares them with the clock the mark was taken
/// at. The model keeps the outcome of that comparison: `revoked` is set
/// when the mark's key is invalidated (`Fence::invalidate_key`) or the local
/// tier is flushed (`Fence::invalidate_all`) after the mark was taken, which
/// is exactly when `Fence::revoked` answers true (retention aside: loads in
/// the model never outlive it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FenceMark {
    /// An invalidation of the key, or a flush, came after the mark.
    pub revoked: bool,
}

/// The shared-tier fill token of a load (`shared/mod.rs`: `FillTicket`),
/// taken by `begin_fill` before the origin is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FillTicket {
    /// The key's version in the shared tier when the load began.
    /// `commit_fill` stores only while the version is unchanged (the Redis
    /// script `COMMIT_FILL` in `tiercache-redis/src/scripts.rs`).
    pub version: u8,
    /// This load holds the key's lease right now. The engine compares a
    /// random token with the lease key; the model keeps whether the token
    /// still matches (an invalidation deletes the lease, and `commit_fill`
    /// or `abort_fill` releases it).
    pub lease: bool,
}

/// Where a load is (`cache/mod.rs`: `run_load`, `fill`, `fill_local`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoadPhase {
    /// Another instance holds the lease: polling the shared tier for its
    /// fill (`wait_for_lease_holder`), until `lease_wait` runs out.
    LeaseWait,
    /// The loader has not read the origin yet.
    Loading,
    /// The loader read this value from the origin; the fill has not begun.
    /// Ticks may pass here: a slow loader is the fill race's window.
    Loaded(Value),
    /// `commit_fill` stored this value in the shared tier; the local fill
    /// (`fill_local`, fenced by the mark) is next.
    Committed(Value),
}

/// A load in flight: one leader's load that waiters join (`cache/flight.rs`:
/// `Flights`, `Leader`, `Waiter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flight {
    /// The key loaded.
    pub key: Key,
    /// The local fence token, taken when the load began.
    pub mark: FenceMark,
    /// The shared-tier fill token, taken before the origin is read.
    pub ticket: FillTicket,
    /// Progress.
    pub phase: LoadPhase,
    /// Still in the flight map, so a new caller joins it. `Flights::detach`
    /// (an invalidation of the key) and `Flights::detach_all` (a flush other
    /// than `SharedFailover`) clear it; the load goes on for its waiters.
    pub attached: bool,
}

/// A shared-tier hit on its way into the local tier (`fetch_slow` and
/// `lookup`: the mark is taken before the shared read, and
/// `fill_local_decoded` runs after it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedCopy {
    /// The key read.
    pub key: Key,
    /// The value the shared tier had.
    pub value: Value,
    /// The local fence token taken before the shared read.
    pub mark: FenceMark,
}

/// A local-tier entry (`cache/local.rs`: `LocalData`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalEntry {
    /// The value.
    pub value: Value,
    /// `None`: filled while trusted, lives as long as the shared entry (far
    /// past any bound). `Some(age)`: filled while not trusted, capped to
    /// `Config::unsynced_ttl`; ticks since the fill (`LocalData::new`, `cap`).
    pub capped_age: Option<u8>,
}

/// What the bus has in flight to one subscriber (`bus/mod.rs`: `BusEvent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BusEvent {
    /// An invalidation from the sidecar (`message.rs`: `Invalidation`).
    Message {
        /// Its sequence number at its origin (the sidecar).
        seq: u8,
        /// The key it invalidates.
        key: Key,
        /// Ticks it has waited (only counted when `max_delay > 0`).
        age: u8,
    },
    /// `BusEvent::Lost`: the client dropped a message here and says so.
    Lost,
}

/// The bus listener's own state (`cache/sync.rs`: `listen`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listener {
    /// `connected`: the last connection event was `Connected`.
    pub connected: bool,
    /// `silent`: the liveness timer fired and nothing was heard since.
    pub silent: bool,
    /// Ticks since the listener last heard any event or its timer last
    /// fired (the `tokio::time::timeout(liveness, ..)` restarts on both).
    pub silence: u8,
    /// `last_seq[origin]` for the one origin, the sidecar (0: none yet).
    pub last_seq: u8,
    /// The listener has handled an event up to its final `set_mode`, which
    /// is still to come: between a flush and the `set_mode` after it, the
    /// cache's readers and loads still see the old mode.
    pub pending_mode: Option<LocalMode>,
}

/// One cache instance, with the bus's queue to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    /// The mode readers and fills see (`Inner::mode`).
    pub mode: LocalMode,
    /// The bus listener.
    pub listener: Listener,
    /// The subscription delivers nothing, not even heartbeats.
    pub hung: bool,
    /// Events in flight to this instance, oldest first.
    pub inbox: Vec<BusEvent>,
    /// The local tier (moka), one slot per key.
    pub local: Vec<Option<LocalEntry>>,
    /// Loads in flight, attached or detached.
    pub flights: Vec<Flight>,
    /// A shared-tier hit about to be copied into the local tier.
    pub copy: Option<SharedCopy>,
}

impl Instance {
    /// Connected and not hung: events (heartbeats included) arrive.
    pub fn live(&self) -> bool {
        self.listener.connected && !self.hung
    }
}

/// One key in the shared tier (Redis: value, version and lease keys, see
/// `tiercache-redis/src/lib.rs`, "Key layout").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedEntry {
    /// The stored value, if any.
    pub value: Option<Value>,
    /// The key's version: `INVALIDATE` increases it, `COMMIT_FILL` refuses
    /// a ticket of another version.
    pub version: u8,
    /// Some load holds the key's lease (`BEGIN_FILL`'s `SET NX`).
    pub lease: bool,
}

/// Where the sidecar is in its current write (`tiercache-sidecar/src/sink.rs`:
/// shared-tier invalidation, then the bus publish).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sidecar {
    /// Waiting for the next database change.
    Idle,
    /// The database committed a write to this key; the sidecar has not yet
    /// invalidated the shared tier (the staleness clock has not started:
    /// the bound counts from when the change reached the sidecar).
    Committed(Key),
    /// The shared tier is invalidated; the publish comes next.
    Invalidated(Key),
}

/// An invalidation that reached the shared tier, with its age.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Recent {
    /// The key.
    pub key: Key,
    /// The value the write committed: from `bound` ticks on, no read may
    /// return less.
    pub value: Value,
    /// Ticks since the invalidation.
    pub age: u8,
}

/// The whole system.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The database: each key's value.
    pub db: Vec<Value>,
    /// The shared tier.
    pub shared: Vec<SharedEntry>,
    /// The sidecar's progress.
    pub sidecar: Sidecar,
    /// Writes committed so far.
    pub writes: u8,
    /// The sidecar's last sequence number.
    pub seq: u8,
    /// Faults spent so far.
    pub faults: u8,
    /// Invalidations at most `bound` ticks old.
    pub recent: Vec<Recent>,
    /// Per key, the newest value whose invalidation is more than `bound`
    /// ticks old: no read may return less.
    pub settled: Vec<Value>,
    /// The instances.
    pub instances: Vec<Instance>,
}

impl State {
    /// The initial state: every instance connected and trusted, all tiers
    /// empty, the database at 0. The sidecar has published one message
    /// before (sequence number 1) and every listener has heard it, so a
    /// lost first message shows as a gap, as it would in a running system
    /// (a listener that has heard nothing yet takes any number as the
    /// first: `sequence_step(0, _)` is `Next`).
    pub fn initial(instances: usize, keys: usize) -> State {
        let instance = Instance {
            mode: LocalMode::Trusted,
            listener: Listener {
                connected: true,
                silent: false,
                silence: 0,
                last_seq: 1,
                pending_mode: None,
            },
            hung: false,
            inbox: Vec::new(),
            local: vec![None; keys],
            flights: Vec::new(),
            copy: None,
        };
        State {
            db: vec![0; keys],
            shared: vec![
                SharedEntry {
                    value: None,
                    version: 0,
                    lease: false,
                };
                keys
            ],
            sidecar: Sidecar::Idle,
            writes: 0,
            seq: 1,
            faults: 0,
            recent: Vec::new(),
            settled: vec![0; keys],
            instances: vec![instance; instances],
        }
    }
}
