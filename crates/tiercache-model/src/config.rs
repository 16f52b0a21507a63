//! What a model instance covers: how many instances and keys, the budgets of
//! writes and faults, the time constants (in ticks), which bus faults may
//! happen, and which variant of the engine runs.

/// The bus faults the checker may inject (each one spends one unit of
/// [`ModelConfig::faults`], except reordering, which is free).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BusFaults {
    /// A subscription stops delivering anything, heartbeats included, until
    /// it resumes; messages published meanwhile wait (and may be dropped).
    pub hang: bool,
    /// The transport loses its connection: `BusEvent::Disconnected`, the
    /// messages in flight to the subscriber are gone, and it later reconnects
    /// (`BusEvent::Connected { resumed: false }`).
    pub disconnect: bool,
    /// The client drops a message and says so (`BusEvent::Lost`), as the bus
    /// contract requires (`crates/tiercache-core/src/bus/mod.rs`).
    pub noticed_drop: bool,
    /// A message is lost and nobody says so: the receiver can only notice a
    /// gap in the origin's sequence on its next message, or a disconnect.
    /// Outside the bus contract, but what a broker-side loss looks like (a
    /// cluster route that drops while the subscriber's own connection,
    /// and so its heartbeat, stays up).
    pub silent_drop: bool,
    /// Messages in flight to one subscriber may be delivered in any order.
    pub reorder: bool,
}

impl BusFaults {
    /// No faults at all: a perfect bus (messages still interleave with
    /// everything else, within one tick).
    pub const NONE: BusFaults = BusFaults {
        hang: false,
        disconnect: false,
        noticed_drop: false,
        silent_drop: false,
        reorder: false,
    };

    /// Every fault the bus contract allows: hang, disconnect, reported drop,
    /// reordering. No silent drop.
    pub const CONTRACT: BusFaults = BusFaults {
        hang: true,
        disconnect: true,
        noticed_drop: true,
        silent_drop: false,
        reorder: true,
    };
}

/// Which engine the model runs: the code as it is, or with a proposed fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EngineVariant {
    /// Proposed fix (not in the engine yet): every time the bus listener's
    /// liveness timer fires (`sync.rs`, `listen`, the `Err(_)` arm of the
    /// `timeout`), detach every load in flight (`Flights::detach_all`), not
    /// only on the first firing and not only by flushes. Without it, a caller
    /// that arrives while invalidations may be missed (bus hung or down) can
    /// join a load that read the origin before a write, however long ago
    /// that write reached the shared tier.
    pub detach_flights_on_silence: bool,
    /// Sketch of a defence against silent drops (not in the engine): the
    /// sidecar tells every subscriber its last sequence number at least once
    /// a tick; a listener that has heard less flushes (a gap), and one that
    /// has heard nothing since it (re)connected takes the number as its
    /// baseline, as it does with a first message.
    pub origin_heartbeats: bool,
    /// Sketch, with [`origin_heartbeats`](Self::origin_heartbeats): a
    /// reconnect keeps each origin's last sequence number instead of
    /// clearing it (`sync.rs`, `Connected { resumed: false }` clears
    /// `last_seq`), so a message lost between the reconnect and the next
    /// heartbeat still shows as a gap. The first number after a reconnect
    /// then shows a gap too (what was missed while down), a flush of a
    /// local tier the reconnect has just flushed anyway.
    pub keep_seq_on_reconnect: bool,
}

impl EngineVariant {
    /// The engine before the fix this model pointed to: silence bypassed
    /// the local tier but left the loads in flight joinable.
    pub const BEFORE_SILENCE_DETACH: EngineVariant = EngineVariant {
        detach_flights_on_silence: false,
        origin_heartbeats: false,
        keep_seq_on_reconnect: false,
    };
    /// The engine as it is in `crates/tiercache-core`: every liveness
    /// window of silence detaches the loads in flight (`sync.rs`, `listen`).
    pub const CURRENT: EngineVariant = EngineVariant {
        detach_flights_on_silence: true,
        origin_heartbeats: false,
        keep_seq_on_reconnect: false,
    };
}

/// The size and shape of one model. Every field is a bound that keeps the
/// state space finite; the checker explores all of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelConfig {
    /// Cache instances (processes), each with its local tier and listener.
    pub instances: usize,
    /// Keys (database rows).
    pub keys: usize,
    /// Writes the sidecar processes in all (commit, shared-tier invalidate,
    /// publish).
    pub writes: u8,
    /// Bus faults in all (hangs, disconnects, drops).
    pub faults: u8,
    /// The staleness bound, in ticks: a read may return a value older than
    /// an invalidation only while that invalidation is at most this many
    /// ticks old.
    pub bound: u8,
    /// The liveness window in ticks (`Config::liveness`: `bus_liveness`, or
    /// 4/5 of the staleness bound): the listener's timer fires after this
    /// many ticks without any bus event.
    pub liveness: u8,
    /// The capped local life in ticks (`Config::unsynced_ttl`:
    /// `unsynced_local_ttl`, or the staleness bound): the life of a local
    /// entry filled while the local tier is not trusted.
    pub capped_life: u8,
    /// How many ticks a message may wait for delivery on a live
    /// subscription (0: it is delivered, or dropped, before the next tick).
    pub max_delay: u8,
    /// Loads in flight per instance (attached or detached).
    pub max_flights: usize,
    /// Loads take the shared tier's lease (`lease_ttl` is `Some`, the
    /// engine's default); without, every instance loads on its own.
    pub leases: bool,
    /// The faults the bus may show.
    pub bus: BusFaults,
    /// The engine variant.
    pub engine: EngineVariant,
    /// Sort the instances after every step (they are interchangeable), so
    /// states that differ only by a permutation of instances are one state.
    /// Makes traces harder to read; use it for larger configurations.
    pub symmetry: bool,
}

impl ModelConfig {
    /// The smallest interesting model: 2 instances, 1 key, 2 writes, 1 fault
    /// of any kind the bus contract allows, bound = liveness = capped life =
    /// 1 tick, the current engine.
    pub fn small() -> Self {
        ModelConfig {
            instances: 2,
            keys: 1,
            writes: 2,
            faults: 1,
            bound: 1,
            liveness: 1,
            capped_life: 1,
            max_delay: 0,
            max_flights: 1,
            leases: true,
            bus: BusFaults::CONTRACT,
            engine: EngineVariant::CURRENT,
            symmetry: false,
        }
    }

    /// This configuration with `engine`.
    pub fn with_engine(mut self, engine: EngineVariant) -> Self {
        self.engine = engine;
        self
    }

    /// This configuration with `bus`.
    pub fn with_bus(mut self, bus: BusFaults) -> Self {
        self.bus = bus;
        self
    }

    /// Whether the time constants can keep the bound at all: a message is
    /// delivered within `max_delay`, a silent bus is noticed within
    /// `liveness` of the last event (which may have come `max_delay` after
    /// the write), and an unsynced entry lives `capped_life`.
    pub fn bound_is_achievable(&self) -> bool {
        self.max_delay.saturating_add(self.liveness) <= self.bound && self.capped_life <= self.bound
    }
}
