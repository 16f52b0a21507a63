//! A model of tiercache's cache-coherence protocol, checked exhaustively with
//! [stateright](https://docs.rs/stateright): instances with a local tier and
//! a bus listener, a shared tier with versions and leases, a database and the
//! sidecar that turns its writes into invalidations, and a bus that may hang,
//! disconnect, drop and reorder.
//!
//! ```
//! use tiercache_model::{BusFaults, EngineVariant, ModelConfig, Search, check};
//!
//! // One instance, one write, a perfect bus: small enough for a doctest.
//! let config = ModelConfig {
//!     instances: 1,
//!     writes: 1,
//!     faults: 0,
//!     bus: BusFaults::NONE,
//!     ..ModelConfig::small()
//! };
//! let outcome = check(&config, Search::Bfs, 1);
//! assert!(outcome.complete);
//! assert!(outcome.violations().is_empty(), "{}", outcome.summary());
//! assert!(outcome.unreached().is_empty(), "{:?}", outcome.unreached());
//! println!("{}", outcome.summary());
//! ```
//!
//! # What is modeled
//!
//! Per instance ([`Instance`]): the local tier (one [`LocalEntry`] slot per
//! key: value, and whether its life is capped), the mode readers see
//! ([`LocalMode`]), the bus listener ([`Listener`]: connected, silent, ticks
//! of silence, the last sequence number from the sidecar, a `set_mode` still
//! to come), loads in flight ([`Flight`]: key, [`FenceMark`],
//! [`FillTicket`], [`LoadPhase`], attached or detached), a shared-tier hit on
//! its way into the local tier ([`SharedCopy`]), and the bus's queue to it
//! (its inbox of [`BusEvent`]s, and whether the subscription is hung).
//!
//! Shared: the shared tier ([`SharedEntry`]: value, version, lease), the
//! database (one counter per key: a value is "older" when smaller), the
//! sidecar ([`Sidecar`]: commit, then shared-tier invalidation, then publish
//! with the next sequence number), and the invalidation clock ([`Recent`],
//! [`State::settled`]).
//!
//! Actions ([`Action`]): the sidecar's three steps; reads (a shared hit
//! copied to the local tier, or a new load); the load's steps (lease wait,
//! origin read, `commit_fill`, local fill); the listener's events (deliver,
//! heartbeat, liveness timeout, reconnect, the deferred `set_mode`); faults
//! (hang, disconnect, reported drop, silent drop), resume; and time
//! ([`Action::Tick`]).
//!
//! # Time
//!
//! Time is a tick. A write's staleness clock starts when the sidecar
//! invalidates the shared tier (the design's "after the commit reached the
//! sidecar"); once it is more than [`ModelConfig::bound`] ticks old its value
//! is *settled*, and from then on no read may return less. The listener's
//! timer fires after [`ModelConfig::liveness`] ticks without an event
//! (`Config::liveness`); an entry filled while the local tier is not
//! trusted lives [`ModelConfig::capped_life`] ticks (`Config::unsynced_ttl`).
//! Steps the engine takes at once (the publish after the invalidation, the local copy after a shared read, the
//! local fill after `commit_fill`, the `set_mode` after a flush, a due timer,
//! a delivery on a live subscription) are *urgent*: other steps interleave
//! with them, but no tick passes until they are done. A slow loader is not
//! urgent: ticks may pass between its origin read and its fill.
//!
//! # Properties
//!
//! - [`NO_STALE_READ`] (`always`): in every state, a read of any key at any
//!   instance, following the engine's read path (local tier unless
//!   bypassed, then the shared tier, then a load in flight to join), returns
//!   at least the settled value. Reads that change nothing (hits, joins) are
//!   judged this way instead of being steps.
//! - [`QUIESCENT_CONVERGED`] (`always`): whenever nothing is in motion (sidecar
//!   idle, bus empty, every listener connected and trusting, no load in
//!   flight), every tier holds the database's value or nothing.
//! - [`EVENTUALLY_CONVERGES`] (`eventually`): every run that ends (faults
//!   spent, writes done) ends converged. Stateright checks `eventually` on
//!   terminating paths only; the `always` above covers the rest.
//! - `sometimes` sanity properties ([`SOMETIMES_FILL_RACE`] and the others):
//!   the interesting states are reachable, so the `always` properties are
//!   not true for want of behaviour.
//!
//! # Where each name lives in the engine
//!
//! | model | engine |
//! |---|---|
//! | [`LocalMode`] `Trusted` / `Capped` / `Bypass` | `crates/tiercache-core/src/cache/mod.rs`: `LocalMode`, `Inner::set_mode`, `Inner::local_for_read` (Bypass reads nothing), `Inner::local_cap` (Capped and Bypass fills live `Config::unsynced_ttl`) |
//! | [`FlushReason`] | `cache/mod.rs`: `FlushReason`, `Inner::flush_local_because` (fence `invalidate_all`, `detach_all`, local `invalidate_all`); raised in `cache/sync.rs`, `listen` |
//! | [`FenceMark`], revocation | `cache/fence.rs`: `Fence::mark`, `invalidate_key`, `invalidate_all`, `revoked`; checked in `cache/mod.rs`, `Inner::fill_local` |
//! | [`FillTicket`], [`SharedEntry`] version and lease | `crates/tiercache-core/src/shared/mod.rs`: `FillTicket`, `SharedTier::begin_fill` / `commit_fill` / `invalidate`; `crates/tiercache-redis/src/scripts.rs`: `BEGIN_FILL`, `COMMIT_FILL`, `INVALIDATE` |
//! | [`Flight`], attached / detached | `cache/flight.rs`: `Flights::join`, `detach`, `detach_all`, `Leader::complete` |
//! | [`LoadPhase`] | `cache/mod.rs`: `Cache::spawn_load`, `Inner::run_load` (mark, `begin_fill`, `wait_for_lease_holder`, the loader), `Inner::fill` (`commit_fill`, then `fill_local`) |
//! | [`Action::Read`], [`SharedCopy`] | `cache/mod.rs`: `Cache::fetch_revalidating` (local tier), `Cache::fetch_slow` (mark, `shared_find`, `fill_local_decoded`, `Flights::join`) |
//! | [`Listener`], [`Action::Deliver`], [`Action::LivenessTimeout`], [`Action::Reconnect`], [`Action::Disconnect`] | `cache/sync.rs`: `listen` (`timeout(liveness, ..)`, the `silent` flag, `BusEvent::Message` / `Connected` / `Disconnected` / `Heartbeat` / `Lost`) |
//! | [`Step`] `Next` / `Gap` / `Old` / `Restart` | `cache/sync.rs`: `sequence_step`, `next_last` (copied in [`seq`](crate::sequence_step)) |
//! | apply an invalidation | `cache/mod.rs`: `Inner::apply_local` (fence `invalidate_key`, `Flights::detach`, local evict) |
//! | [`Sidecar`] | `crates/tiercache-sidecar/src/sink.rs`: shared-tier invalidation, then the publish with the next `seq` |
//! | [`BusEvent`], hang / drop / disconnect | `crates/tiercache-core/src/bus/mod.rs`: the bus contract |
//!
//! # Abstractions and bounds
//!
//! - The fence's clocks are kept as their outcome (a revoked bit per mark);
//!   the shared tier's versions as a counter of invalidations (Redis keeps
//!   `max(INCR, TIME)`: equality is all `COMMIT_FILL` looks at).
//! - `fill_local`'s insert is one step: its check before and after the
//!   insert make it atomic with respect to invalidations.
//! - The listener handles an event in one step, except its final
//!   `set_mode`, which is a step of its own ([`Listener::pending_mode`]):
//!   between a flush and that `set_mode`, readers and fills see the old
//!   mode, as in the engine.
//! - Not modeled: tags, negative entries, TTL expiry of trusted entries
//!   (far beyond the bound), refresh-ahead and grace, the Bloom guard, the
//!   hot slots, user writes through an instance (`invalidate`, `insert`),
//!   JetStream replay (`Connected { resumed: true }`), shared-tier failover
//!   (`FlushReason::SharedFailover`), lease expiry and load timeouts.
//! - Bounds: one shared read in progress per instance, at most
//!   [`ModelConfig::max_flights`] loads per instance, the budgets of writes
//!   and faults.
//!
//! # Findings
//!
//! 1. **A caller could join a load older than the bound** (the engine as it
//!    was, [`EngineVariant::BEFORE_SILENCE_DETACH`]; fixed). While the bus is hung or down, nothing
//!    detaches the loads in flight: the liveness timer only bypasses the
//!    local tier (`sync.rs`, `listen`, `Err(_)` arm), and a flush detaches
//!    only the loads that exist when it runs. A load that read the origin
//!    before a write, and is still running once the write is older than the
//!    bound, is joined by a new caller that misses both tiers (the write
//!    deleted the shared value; the load's own `commit_fill` is refused), and
//!    that caller gets the value from before the write. The model's
//!    shortest trace (one instance):
//!
//!    ```text
//!    1. Read            miss: new load, begin_fill -> version 0, lease taken
//!    2. LoadOrigin      origin read: 0
//!    3. Commit(0)
//!    4. InvalidateShared
//!    5. Publish         (the message is in flight)
//!    6. Hang            (the subscription stops delivering)
//!    7. Tick
//!    8. LivenessTimeout bus silent: set_mode(Bypass)
//!    9. Tick            => a read now joins the load and returns 0; 1 is settled
//!    ```
//!
//!    `tests/engine_repro.rs` replays it on the real engine (in-process bus
//!    hung, or disconnected; a 2 s loader; a read 700 ms after the write,
//!    with the default 500 ms bound): the late read returned the old value. The fix, now
//!    in the engine ([`EngineVariant::CURRENT`]): call `inner.flights.detach_all()` every time
//!    the liveness timer fires (while the bus is silent the timer fires
//!    every liveness window, so no load older than that stays joinable). With
//!    it every configuration checked holds.
//!
//! 2. **A message lost without a word breaks the bound and convergence**
//!    ([`BusFaults::silent_drop`]), with or without the fix. Gap detection
//!    needs a later message from the same origin: the last message of a
//!    burst, lost, is never noticed, and an instance serves its old entry
//!    until its TTL (and a later message that does reveal the gap may come
//!    long after the bound). The engine relies on the bus contract (a
//!    transport reports its drops as `Lost`, or disconnects); a broker that
//!    loses a message while the subscriber's own connection and heartbeats
//!    stay up (a cluster route, or a publisher whose own connection stalls
//!    while the subscribers' stay up) is outside it. A sketch that closes
//!    it, checked here: the origins send their last sequence number at least
//!    once a liveness window ([`EngineVariant::origin_heartbeats`]), *and* a
//!    reconnect keeps the listener's sequence numbers instead of clearing
//!    them ([`EngineVariant::keep_seq_on_reconnect`]); with heartbeats alone
//!    a message lost between a reconnect and the next heartbeat becomes the
//!    new baseline, unnoticed.
//!
//! 3. The bound holds only when the liveness window plus the bus's delivery
//!    delay, and the capped life, are within it
//!    ([`ModelConfig::bound_is_achievable`]; the test
//!    `a_liveness_window_longer_than_the_bound_breaks_it` shows the
//!    counterexample otherwise). The engine derives both from its
//!    `staleness_bound` (`cache/config.rs`: `Config::liveness` is 4/5 of it,
//!    `Config::unsynced_ttl` all of it) and refuses overrides above it, which
//!    fits, with 1/5 of the bound left for delivery.
//!
//! # Running bigger configurations
//!
//! The tests check small configurations in a debug build (`tests/model.rs`;
//! its ignored tests are bigger, for a release build:
//! `cargo test --release -p tiercache-model --test model -- --ignored`).
//! Any configuration runs with the example, in release:
//!
//! ```text
//! cargo run --release -p tiercache-model --example check -- --help
//! cargo run --release -p tiercache-model --example check -- --instances 2 --writes 2 --faults 1 --symmetry
//! cargo run --release -p tiercache-model --example check -- --instances 3 --writes 1 --faults 1 --symmetry
//! cargo run --release -p tiercache-model --example check -- --engine before-fix --trace
//! ```
//!
//! Measured (release, 2 cores, fixed engine, contract bus unless said):
//!
//! | instances, keys, writes, faults | states | time |
//! |---|---|---|
//! | 2, 1, 1, 1 (symmetry) | 0.42 M | 3 s |
//! | 2, 1, 2, 1 (symmetry) | 7.7 M | 80 s |
//! | 2, 1, 1, 2 (symmetry) | 8.1 M | 95 s |
//! | 3, 1, 1, 0 (symmetry) | 0.34 M | 3 s |
//! | 3, 1, 1, 1 reported drop (symmetry) | 1.3 M | 16 s |
//! | 3, 1, 1, 1 (symmetry) | 27.5 M | 6 min |
//! | 1, 2, 2, 1 | 0.73 M | 4 s |
//!
//! Each extra write, fault or instance multiplies the count by ten to
//! thirty; the checker keeps a fingerprint per state (tens of bytes).
#![deny(unreachable_pub)]

mod config;
mod model;
mod run;
mod seq;
mod state;

pub use config::{BusFaults, EngineVariant, ModelConfig};
pub use model::{
    Action, CoherenceModel, EVENTUALLY_CONVERGES, NO_STALE_READ, QUIESCENT_CONVERGED,
    SOMETIMES_BYPASS, SOMETIMES_CAPPED, SOMETIMES_CONVERGED_FULL, SOMETIMES_DETACHED_STALE,
    SOMETIMES_FENCE_REVOKES, SOMETIMES_FILL_RACE, SOMETIMES_GAP, SOMETIMES_LEASE_WAIT,
    SOMETIMES_LOST, SOMETIMES_REORDER, Source, StaleRead,
};
pub use run::{Outcome, Search, check, find_trace};
pub use seq::{REORDER_WINDOW, Step, next_last, sequence_step};
pub use state::{
    BusEvent, FenceMark, FillTicket, Flight, FlushReason, Instance, Key, Listener, LoadPhase,
    LocalEntry, LocalMode, Recent, SharedCopy, SharedEntry, Sidecar, State, Value,
};

/// The model checker this crate is built on, re-exported so callers can use
/// its traits ([`stateright::Model`], [`stateright::Checker`]) on
/// [`CoherenceModel`] without a dependency of their own.
pub use stateright;
