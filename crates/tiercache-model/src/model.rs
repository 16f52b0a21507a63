//! The transitions and the properties: [`CoherenceModel`] implements
//! stateright's [`Model`].

use std::fmt::Write as _;

use stateright::{Model, Path, Property};

use crate::config::ModelConfig;
use crate::seq::{Step, next_last, sequence_step};
use crate::state::{
    BusEvent, FenceMark, FillTicket, Flight, FlushReason, Instance, Key, LoadPhase, LocalEntry,
    LocalMode, Recent, SharedCopy, Sidecar, State, Value,
};

/// One step of the system. Instance and flight numbers index
/// [`State::instances`] and [`Instance::flights`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The database commits a write to the key (its value + 1). The sidecar
    /// picks it up next.
    Commit(Key),
    /// The sidecar invalidates the key in the shared tier (Redis
    /// `INVALIDATE`: value and lease deleted, version increased). The
    /// staleness clock of the write starts here.
    InvalidateShared,
    /// The sidecar publishes `{origin, key, seq}` to every connected
    /// subscriber (a disconnected one misses it).
    Publish,
    /// A caller reads the key at the instance (`fetch` / `get_or_load`).
    /// Only the reads that change something are steps: a shared-tier hit
    /// (copied into the local tier next) or a miss with no load to join (a
    /// new load, `Flights::join` as leader, `fence.mark()`, `begin_fill`).
    /// Local hits and joins change nothing; [`CoherenceModel::read_outcome`]
    /// judges them in every state.
    Read {
        /// The instance.
        instance: usize,
        /// The key.
        key: Key,
    },
    /// `fill_local_decoded` of a shared-tier hit, fenced by its mark.
    CopyToLocal {
        /// The instance.
        instance: usize,
    },
    /// `wait_for_lease_holder` finds the lease holder's fill in the shared
    /// tier: the load ends with it (and copies it into the local tier).
    LeasePoll {
        /// The instance.
        instance: usize,
        /// The load.
        flight: usize,
    },
    /// `lease_wait` ran out: the load reads the origin itself.
    LeaseGiveUp {
        /// The instance.
        instance: usize,
        /// The load.
        flight: usize,
    },
    /// The loader reads the origin (the database).
    LoadOrigin {
        /// The instance.
        instance: usize,
        /// The load.
        flight: usize,
    },
    /// `fill`: `commit_fill` with the load's ticket (Redis `COMMIT_FILL`).
    /// Refused (version moved): the load ends without filling either tier.
    CommitFill {
        /// The instance.
        instance: usize,
        /// The load.
        flight: usize,
    },
    /// `fill_local` after a stored `commit_fill`, fenced by the load's mark;
    /// the load ends (`Leader::complete`).
    FillLocal {
        /// The instance.
        instance: usize,
        /// The load.
        flight: usize,
    },
    /// The listener handles the event at `index` of the instance's inbox
    /// (`index` 0 unless the bus reorders).
    Deliver {
        /// The instance.
        instance: usize,
        /// Position in the inbox.
        index: usize,
    },
    /// `BusEvent::Heartbeat` to a listener that had gone silent (while the
    /// listener hears the bus, heartbeats are implied by every tick).
    Heartbeat {
        /// The instance.
        instance: usize,
    },
    /// The listener's `timeout(liveness, ..)` fires.
    LivenessTimeout {
        /// The instance.
        instance: usize,
    },
    /// The listener's final `set_mode` of the event it handled.
    SetMode {
        /// The instance.
        instance: usize,
    },
    /// Fault: `BusEvent::Disconnected` (what was in flight is lost).
    Disconnect {
        /// The instance.
        instance: usize,
    },
    /// `BusEvent::Connected { resumed: false }`.
    Reconnect {
        /// The instance.
        instance: usize,
    },
    /// Fault: the subscription hangs (no event, no heartbeat).
    Hang {
        /// The instance.
        instance: usize,
    },
    /// The hung subscription resumes.
    Resume {
        /// The instance.
        instance: usize,
    },
    /// Fault: the client drops the message at `index` and reports
    /// `BusEvent::Lost` in its place.
    DropReported {
        /// The instance.
        instance: usize,
        /// Position in the inbox.
        index: usize,
    },
    /// Fault: the message at `index` is lost without a word.
    DropSilently {
        /// The instance.
        instance: usize,
        /// Position in the inbox.
        index: usize,
    },
    /// Time passes: one tick. Only taken when nothing urgent is pending (an
    /// instantaneous step such as a publish after an invalidation, a local
    /// copy after a shared read, a due timer, or a delivery on a live
    /// subscription past `max_delay`), and only when it changes something.
    Tick,
}

/// Where a read's answer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A local-tier hit.
    LocalTier,
    /// A shared-tier hit.
    SharedTier,
    /// A load in flight that already read the origin, joined as a waiter.
    JoinedLoad,
}

/// A read that would return a value older than an invalidation applied
/// more than the bound ago.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StaleRead {
    /// The instance read at.
    pub instance: usize,
    /// The key.
    pub key: Key,
    /// Where the answer comes from.
    pub source: Source,
    /// The value it returns.
    pub value: Value,
    /// The value it must return at least.
    pub settled: Value,
}

/// Property: no read returns a value older than an invalidation applied
/// (committed and invalidated in the shared tier) more than the bound ago.
pub const NO_STALE_READ: &str =
    "no read returns a value older than an invalidation applied more than the bound ago";
/// Property: in every quiescent state, every tier holds the database's value
/// or nothing.
pub const QUIESCENT_CONVERGED: &str =
    "when quiescent, every tier holds the database's value or nothing";
/// Property: every run ends with all writes done, the system quiescent and
/// every tier holding the database's value or nothing.
pub const EVENTUALLY_CONVERGES: &str = "every tier converges to the database after the last write";
/// Sanity: a load read the origin before a write and its fill token is
/// revoked (its fill will be dropped).
pub const SOMETIMES_FILL_RACE: &str = "a load's stale fill is revoked (the fill race)";
/// Sanity: the local fence drops a fill that an invalidation overtook.
pub const SOMETIMES_FENCE_REVOKES: &str = "the local fence revokes a fill in flight";
/// Sanity: a listener is about to see a gap in the sequence.
pub const SOMETIMES_GAP: &str = "a sequence gap is about to be detected";
/// Sanity: a listener is about to see an older sequence number (reorder).
pub const SOMETIMES_REORDER: &str = "a reordered message is about to arrive (Step::Old)";
/// Sanity: an instance bypasses its local tier.
pub const SOMETIMES_BYPASS: &str = "an instance bypasses its local tier (LocalMode::Bypass)";
/// Sanity: a capped local entry in Capped mode.
pub const SOMETIMES_CAPPED: &str = "a capped local entry is served (LocalMode::Capped)";
/// Sanity: a load waits for another instance's lease.
pub const SOMETIMES_LEASE_WAIT: &str = "a load waits for another instance's lease";
/// Sanity: a detached load holds a stale value (the detach kept callers off it).
pub const SOMETIMES_DETACHED_STALE: &str = "a detached load holds a stale value";
/// Sanity: a reported drop is in flight.
pub const SOMETIMES_LOST: &str = "a dropped message is reported (BusEvent::Lost)";
/// Sanity: every tier holds the latest write after every write.
pub const SOMETIMES_CONVERGED_FULL: &str = "every tier holds the latest write";

/// The model of tiercache's coherence protocol for one [`ModelConfig`].
#[derive(Clone, Debug)]
pub struct CoherenceModel {
    /// The configuration.
    pub config: ModelConfig,
}

/// What a step did, for traces (off while checking).
struct Log {
    lines: Option<Vec<String>>,
}

impl Log {
    fn off() -> Self {
        Log { lines: None }
    }

    fn on() -> Self {
        Log {
            lines: Some(Vec::new()),
        }
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(lines) = &mut self.lines {
            lines.push(line());
        }
    }
}

impl CoherenceModel {
    /// The model of `config`.
    pub fn new(config: ModelConfig) -> Self {
        CoherenceModel { config }
    }

    fn key_count(&self) -> u8 {
        u8::try_from(self.config.keys).unwrap_or(u8::MAX)
    }

    fn timer_due(&self, inst: &Instance) -> bool {
        let l = &inst.listener;
        l.pending_mode.is_none()
            && l.silence >= self.config.liveness
            && (!l.silent || self.config.engine.detach_flights_on_silence)
    }

    fn delivery_due(&self, inst: &Instance) -> bool {
        inst.live()
            && inst.inbox.iter().any(|e| match e {
                BusEvent::Lost => true,
                BusEvent::Message { age, .. } => *age >= self.config.max_delay,
            })
    }

    /// Whether an instantaneous step is pending, so time cannot pass.
    pub fn urgent(&self, s: &State) -> bool {
        matches!(s.sidecar, Sidecar::Invalidated(_))
            || s.instances.iter().any(|i| {
                i.copy.is_some()
                    || i.listener.pending_mode.is_some()
                    || i.flights
                        .iter()
                        .any(|f| matches!(f.phase, LoadPhase::Committed(_)))
                    || (i.live() && i.listener.silent)
                    || self.timer_due(i)
                    || self.delivery_due(i)
            })
    }

    // ----- the engine's operations -------------------------------------

    /// `flush_local_because`: `fence.invalidate_all()`, `flights.detach_all()`
    /// (every reason modeled detaches), `local.invalidate_all()`.
    fn flush(inst: &mut Instance, reason: FlushReason, log: &mut Log) {
        for f in &mut inst.flights {
            f.mark.revoked = true;
            f.attached = false;
        }
        if let Some(c) = &mut inst.copy {
            c.mark.revoked = true;
        }
        for e in &mut inst.local {
            *e = None;
        }
        log.note(|| format!("flush_local_because({reason:?})"));
    }

    /// `apply_local` for one key: `fence.invalidate_key`, `flights.detach`,
    /// local eviction.
    fn apply_local(inst: &mut Instance, key: Key) {
        for f in inst.flights.iter_mut().filter(|f| f.key == key) {
            f.mark.revoked = true;
            f.attached = false;
        }
        if let Some(c) = inst.copy.as_mut().filter(|c| c.key == key) {
            c.mark.revoked = true;
        }
        inst.local[usize::from(key)] = None;
    }

    /// `fill_local`: nothing if the mark is revoked; else an entry, capped
    /// unless the instance is trusted (`local_cap`).
    fn fill_local(inst: &mut Instance, key: Key, value: Value, mark: FenceMark, log: &mut Log) {
        if mark.revoked {
            log.note(|| "fill_local: mark revoked by the fence, not stored".into());
            return;
        }
        let capped_age = (inst.mode != LocalMode::Trusted).then_some(0);
        inst.local[usize::from(key)] = Some(LocalEntry { value, capped_age });
        log.note(|| {
            format!(
                "fill_local: key {key} = {value} ({})",
                if capped_age.is_some() {
                    "capped"
                } else {
                    "uncapped"
                }
            )
        });
    }

    /// The top of `listen`'s loop after any event: the timer restarts, and
    /// a silent listener flushes and trusts the bus again.
    fn heard(inst: &mut Instance, log: &mut Log) {
        inst.listener.silence = 0;
        if inst.listener.silent {
            inst.listener.silent = false;
            Self::flush(inst, FlushReason::BusHeardAgain, log);
            inst.mode = if inst.listener.connected {
                LocalMode::Trusted
            } else {
                LocalMode::Capped
            };
            log.note(|| format!("set_mode({:?})", inst.mode));
        }
    }

    /// The next state after `action`, noting what happened in `log`.
    fn step(&self, s: &State, action: Action, log: &mut Log) -> Option<State> {
        let cfg = &self.config;
        let mut n = s.clone();
        match action {
            Action::Commit(key) => {
                if s.sidecar != Sidecar::Idle || s.writes >= cfg.writes || key >= self.key_count() {
                    return None;
                }
                n.db[usize::from(key)] += 1;
                n.writes += 1;
                n.sidecar = Sidecar::Committed(key);
            }
            Action::InvalidateShared => {
                let Sidecar::Committed(key) = s.sidecar else {
                    return None;
                };
                let k = usize::from(key);
                let sh = &mut n.shared[k];
                sh.value = None;
                sh.version += 1;
                sh.lease = false;
                for inst in &mut n.instances {
                    for f in inst.flights.iter_mut().filter(|f| f.key == key) {
                        f.ticket.lease = false;
                    }
                }
                n.recent.push(Recent {
                    key,
                    value: s.db[k],
                    age: 0,
                });
                n.sidecar = Sidecar::Invalidated(key);
            }
            Action::Publish => {
                let Sidecar::Invalidated(key) = s.sidecar else {
                    return None;
                };
                n.seq += 1;
                let seq = n.seq;
                for (i, inst) in n.instances.iter_mut().enumerate() {
                    if inst.listener.connected {
                        inst.inbox.push(BusEvent::Message { seq, key, age: 0 });
                    } else {
                        log.note(|| format!("instance {i} is disconnected: misses seq {seq}"));
                    }
                }
                n.sidecar = Sidecar::Idle;
            }
            Action::Read { instance, key } => {
                let inst = n.instances.get_mut(instance)?;
                let k = usize::from(key);
                if k >= inst.local.len() {
                    return None;
                }
                if inst.mode != LocalMode::Bypass && inst.local[k].is_some() {
                    return None; // a local hit: nothing changes
                }
                if let Some(value) = s.shared[k].value {
                    if inst.copy.is_some() {
                        return None; // one shared read in progress per instance (a bound)
                    }
                    inst.copy = Some(SharedCopy {
                        key,
                        value,
                        mark: FenceMark::default(),
                    });
                    log.note(|| format!("shared hit: {value}"));
                } else if inst.flights.iter().any(|f| f.key == key && f.attached) {
                    return None; // joins the load in flight: nothing changes
                } else if inst.flights.len() < cfg.max_flights {
                    let sh = &mut n.shared[k];
                    let (lease, phase) = if !cfg.leases {
                        (false, LoadPhase::Loading)
                    } else if sh.lease {
                        (false, LoadPhase::LeaseWait)
                    } else {
                        sh.lease = true;
                        (true, LoadPhase::Loading)
                    };
                    let version = sh.version;
                    n.instances[instance].flights.push(Flight {
                        key,
                        mark: FenceMark::default(),
                        ticket: FillTicket { version, lease },
                        phase,
                        attached: true,
                    });
                    log.note(|| {
                        format!(
                            "miss: new load, begin_fill -> version {version}, {}",
                            if lease {
                                "lease taken"
                            } else {
                                "lease held elsewhere"
                            }
                        )
                    });
                } else {
                    return None;
                }
            }
            Action::CopyToLocal { instance } => {
                let inst = n.instances.get_mut(instance)?;
                let c = inst.copy.take()?;
                Self::fill_local(inst, c.key, c.value, c.mark, log);
            }
            Action::LeasePoll { instance, flight } => {
                let f = *s.instances.get(instance)?.flights.get(flight)?;
                if f.phase != LoadPhase::LeaseWait {
                    return None;
                }
                let value = s.shared[usize::from(f.key)].value?;
                let inst = &mut n.instances[instance];
                inst.flights.remove(flight);
                log.note(|| format!("the lease holder's fill is there: {value}"));
                Self::fill_local(inst, f.key, value, FenceMark::default(), log);
            }
            Action::LeaseGiveUp { instance, flight } => {
                let f = n.instances.get_mut(instance)?.flights.get_mut(flight)?;
                if f.phase != LoadPhase::LeaseWait {
                    return None;
                }
                f.phase = LoadPhase::Loading;
            }
            Action::LoadOrigin { instance, flight } => {
                let f = n.instances.get_mut(instance)?.flights.get_mut(flight)?;
                if f.phase != LoadPhase::Loading {
                    return None;
                }
                let value = s.db[usize::from(f.key)];
                f.phase = LoadPhase::Loaded(value);
                log.note(|| format!("origin read: {value}"));
            }
            Action::CommitFill { instance, flight } => {
                let f = *s.instances.get(instance)?.flights.get(flight)?;
                let LoadPhase::Loaded(value) = f.phase else {
                    return None;
                };
                let sh = &mut n.shared[usize::from(f.key)];
                if f.ticket.lease {
                    sh.lease = false;
                }
                let inst = &mut n.instances[instance];
                if sh.version == f.ticket.version {
                    sh.value = Some(value);
                    let fl = &mut inst.flights[flight];
                    fl.phase = LoadPhase::Committed(value);
                    fl.ticket.lease = false;
                    log.note(|| format!("commit_fill stored {value}"));
                } else {
                    let current = sh.version;
                    inst.flights.remove(flight);
                    log.note(|| {
                        format!(
                            "commit_fill refused: version {current} != ticket {}; load ends unfilled, its waiters get {value}",
                            f.ticket.version
                        )
                    });
                }
            }
            Action::FillLocal { instance, flight } => {
                let f = *s.instances.get(instance)?.flights.get(flight)?;
                let LoadPhase::Committed(value) = f.phase else {
                    return None;
                };
                let inst = &mut n.instances[instance];
                inst.flights.remove(flight);
                Self::fill_local(inst, f.key, value, f.mark, log);
            }
            Action::Deliver { instance, index } => {
                let inst = n.instances.get_mut(instance)?;
                if inst.listener.pending_mode.is_some()
                    || !inst.live()
                    || index >= inst.inbox.len()
                    || (!cfg.bus.reorder && index != 0)
                {
                    return None;
                }
                let event = inst.inbox.remove(index);
                Self::heard(inst, log);
                match event {
                    BusEvent::Message { seq, key, .. } => {
                        let last = inst.listener.last_seq;
                        let step = sequence_step(u64::from(last), u64::from(seq));
                        log.note(|| format!("seq {seq} after {last}: {step:?}"));
                        if let Step::Gap(_) = step {
                            Self::flush(inst, FlushReason::SequenceGap, log);
                        }
                        let next = next_last(u64::from(last), u64::from(seq));
                        inst.listener.last_seq = u8::try_from(next).unwrap_or(u8::MAX);
                        Self::apply_local(inst, key);
                        log.note(|| format!("apply_local(key {key})"));
                    }
                    BusEvent::Lost => Self::flush(inst, FlushReason::MessagesDropped, log),
                }
            }
            Action::Heartbeat { instance } => {
                let inst = n.instances.get_mut(instance)?;
                if !inst.live() || !inst.listener.silent || inst.listener.pending_mode.is_some() {
                    return None;
                }
                Self::heard(inst, log);
            }
            Action::LivenessTimeout { instance } => {
                let inst = n.instances.get_mut(instance)?;
                if !self.timer_due(inst) {
                    return None;
                }
                inst.listener.silence = 0;
                if !inst.listener.silent {
                    inst.listener.silent = true;
                    inst.mode = LocalMode::Bypass;
                    log.note(|| "bus silent: set_mode(Bypass)".into());
                }
                if cfg.engine.detach_flights_on_silence {
                    for f in &mut inst.flights {
                        f.attached = false;
                    }
                    log.note(|| "(fix) flights.detach_all()".into());
                }
            }
            Action::SetMode { instance } => {
                let inst = n.instances.get_mut(instance)?;
                inst.mode = inst.listener.pending_mode.take()?;
                log.note(|| format!("set_mode({:?})", inst.mode));
            }
            Action::Disconnect { instance } => {
                if !cfg.bus.disconnect || s.faults >= cfg.faults {
                    return None;
                }
                let inst = n.instances.get_mut(instance)?;
                if !inst.live() || inst.listener.pending_mode.is_some() {
                    return None;
                }
                n.faults += 1;
                let lost = inst.inbox.len();
                inst.inbox.clear();
                log.note(|| format!("{lost} event(s) in flight lost"));
                Self::heard(inst, log);
                inst.listener.connected = false;
                Self::flush(inst, FlushReason::BusDisconnected, log);
                inst.listener.pending_mode = Some(LocalMode::Capped);
            }
            Action::Reconnect { instance } => {
                let inst = n.instances.get_mut(instance)?;
                if inst.listener.connected || inst.hung || inst.listener.pending_mode.is_some() {
                    return None;
                }
                Self::heard(inst, log);
                Self::flush(inst, FlushReason::BusReconnected, log);
                if !cfg.engine.keep_seq_on_reconnect {
                    inst.listener.last_seq = 0;
                }
                inst.listener.connected = true;
                inst.listener.pending_mode = Some(LocalMode::Trusted);
            }
            Action::Hang { instance } => {
                if !cfg.bus.hang || s.faults >= cfg.faults {
                    return None;
                }
                let inst = n.instances.get_mut(instance)?;
                if !inst.live() {
                    return None;
                }
                n.faults += 1;
                inst.hung = true;
            }
            Action::Resume { instance } => {
                let inst = n.instances.get_mut(instance)?;
                if !inst.hung {
                    return None;
                }
                inst.hung = false;
            }
            Action::DropReported { instance, index } => {
                if !cfg.bus.noticed_drop || s.faults >= cfg.faults {
                    return None;
                }
                let inst = n.instances.get_mut(instance)?;
                let e = inst.inbox.get_mut(index)?;
                if *e == BusEvent::Lost {
                    return None;
                }
                *e = BusEvent::Lost;
                n.faults += 1;
            }
            Action::DropSilently { instance, index } => {
                if !cfg.bus.silent_drop || s.faults >= cfg.faults {
                    return None;
                }
                let inst = n.instances.get_mut(instance)?;
                if !matches!(inst.inbox.get(index), Some(BusEvent::Message { .. })) {
                    return None;
                }
                inst.inbox.remove(index);
                n.faults += 1;
            }
            Action::Tick => {
                if self.urgent(s) {
                    return None;
                }
                self.tick(&mut n, log);
                if n == *s {
                    return None;
                }
            }
        }
        if cfg.symmetry {
            n.instances.sort();
        }
        Some(n)
    }

    fn tick(&self, n: &mut State, log: &mut Log) {
        let cfg = &self.config;
        for r in &mut n.recent {
            r.age = r.age.saturating_add(1);
        }
        let settled = &mut n.settled;
        n.recent.retain(|r| {
            if r.age > cfg.bound {
                let s = &mut settled[usize::from(r.key)];
                *s = (*s).max(r.value);
                false
            } else {
                true
            }
        });
        for inst in &mut n.instances {
            for slot in &mut inst.local {
                if let Some(LocalEntry {
                    capped_age: Some(age),
                    ..
                }) = slot
                {
                    *age += 1;
                    if *age >= cfg.capped_life {
                        *slot = None;
                    }
                }
            }
            if cfg.engine.origin_heartbeats && inst.live() && inst.listener.pending_mode.is_none() {
                // "My last message was `seq`": a gap if anything after
                // `last` is missing; the baseline if nothing was heard yet.
                let (last, seq) = (inst.listener.last_seq, n.seq);
                if last != 0 && seq > last {
                    log.note(|| format!("origin heartbeat: sent up to {seq}, heard up to {last}"));
                    Self::flush(inst, FlushReason::SequenceGap, log);
                }
                inst.listener.last_seq = last.max(seq);
            }
            let l = &mut inst.listener;
            if inst.hung || !l.connected {
                if !l.silent || cfg.engine.detach_flights_on_silence {
                    l.silence = l.silence.saturating_add(1).min(cfg.liveness);
                }
            } else {
                // Live: heartbeats arrive (at least one per tick).
                l.silence = 0;
            }
            if cfg.max_delay > 0 {
                for e in &mut inst.inbox {
                    if let BusEvent::Message { age, .. } = e {
                        *age = age.saturating_add(1).min(cfg.max_delay);
                    }
                }
            }
        }
    }

    // ----- what is judged ----------------------------------------------

    /// What a read of `key` at `instance` starting now returns, along the
    /// engine's read path: the local tier unless bypassed, then the shared
    /// tier, then a load in flight to join. `None` when it would read the
    /// origin itself, now or later (a new load, or a joined load that has
    /// not read the origin yet): such a read cannot be stale.
    pub fn read_outcome(&self, s: &State, instance: usize, key: Key) -> Option<(Source, Value)> {
        let inst = s.instances.get(instance)?;
        let k = usize::from(key);
        if inst.mode != LocalMode::Bypass
            && let Some(e) = inst.local.get(k).copied().flatten()
        {
            return Some((Source::LocalTier, e.value));
        }
        if let Some(v) = s.shared.get(k).and_then(|sh| sh.value) {
            return Some((Source::SharedTier, v));
        }
        let joined = inst.flights.iter().find(|f| f.key == key && f.attached)?;
        match joined.phase {
            LoadPhase::Loaded(v) | LoadPhase::Committed(v) => Some((Source::JoinedLoad, v)),
            LoadPhase::LeaseWait | LoadPhase::Loading => None,
        }
    }

    /// A read that would break the staleness bound in `s`, if any. Also
    /// checks the shared tier on its own (a lease waiter polls it even
    /// where a local entry shadows it).
    pub fn stale_read(&self, s: &State) -> Option<StaleRead> {
        for key in 0..self.key_count() {
            let settled = s.settled[usize::from(key)];
            for instance in 0..s.instances.len() {
                if let Some((source, value)) = self.read_outcome(s, instance, key)
                    && value < settled
                {
                    return Some(StaleRead {
                        instance,
                        key,
                        source,
                        value,
                        settled,
                    });
                }
            }
            if let Some(value) = s.shared[usize::from(key)].value
                && value < settled
            {
                return Some(StaleRead {
                    instance: 0,
                    key,
                    source: Source::SharedTier,
                    value,
                    settled,
                });
            }
        }
        None
    }

    /// Nothing in motion: the sidecar idle, nothing in flight on the bus,
    /// every listener connected, hearing the bus and trusting the local
    /// tier (and, with origin heartbeats, having heard the sidecar's last
    /// sequence number), no load or copy in progress.
    pub fn quiescent(&self, s: &State) -> bool {
        let heartbeats = self.config.engine.origin_heartbeats;
        s.sidecar == Sidecar::Idle
            && s.instances.iter().all(|i| {
                i.inbox.is_empty()
                    && (!heartbeats || i.listener.last_seq >= s.seq)
                    && i.live()
                    && !i.listener.silent
                    && i.listener.pending_mode.is_none()
                    && i.mode == LocalMode::Trusted
                    && i.flights.is_empty()
                    && i.copy.is_none()
            })
    }

    /// Every tier holds the database's value or nothing.
    pub fn converged(s: &State) -> bool {
        s.db.iter().enumerate().all(|(k, &v)| {
            s.shared[k].value.is_none_or(|x| x == v)
                && s.instances
                    .iter()
                    .all(|i| i.local[k].is_none_or(|e| e.value == v))
        })
    }

    /// Which `sometimes` properties this configuration can reach.
    fn sanity_properties(&self) -> Vec<Property<Self>> {
        let cfg = &self.config;
        let bus = cfg.bus;
        let loss = bus.noticed_drop || bus.silent_drop;
        let mut p = vec![
            Property::sometimes(SOMETIMES_FILL_RACE, |_, s: &State| {
                s.instances.iter().any(|i| {
                    i.flights.iter().any(|f| match f.phase {
                        LoadPhase::Loaded(v) => {
                            let k = usize::from(f.key);
                            v < s.db[k] && f.ticket.version != s.shared[k].version
                        }
                        _ => false,
                    })
                })
            }),
            Property::sometimes(SOMETIMES_FENCE_REVOKES, |_, s: &State| {
                s.instances.iter().any(|i| {
                    i.copy.is_some_and(|c| c.mark.revoked)
                        || i.flights
                            .iter()
                            .any(|f| f.mark.revoked && matches!(f.phase, LoadPhase::Committed(_)))
                })
            }),
            Property::sometimes(SOMETIMES_DETACHED_STALE, |_, s: &State| {
                s.instances.iter().any(|i| {
                    i.flights.iter().any(|f| {
                        !f.attached
                            && matches!(f.phase, LoadPhase::Loaded(v) | LoadPhase::Committed(v)
                                if v < s.db[usize::from(f.key)])
                    })
                })
            }),
            Property::sometimes(SOMETIMES_CONVERGED_FULL, |m: &Self, s: &State| {
                s.writes == m.config.writes
                    && m.quiescent(s)
                    && s.db.iter().enumerate().all(|(k, &v)| {
                        s.shared[k].value == Some(v)
                            && s.instances
                                .iter()
                                .all(|i| i.local[k].map(|e| e.value) == Some(v))
                    })
            }),
        ];
        if cfg.faults > 0 && (bus.hang || bus.disconnect) {
            p.push(Property::sometimes(SOMETIMES_BYPASS, |_, s: &State| {
                s.instances.iter().any(|i| i.mode == LocalMode::Bypass)
            }));
        }
        if cfg.faults > 0 && bus.disconnect {
            p.push(Property::sometimes(SOMETIMES_CAPPED, |_, s: &State| {
                s.instances.iter().any(|i| {
                    i.mode == LocalMode::Capped
                        && i.local
                            .iter()
                            .any(|e| e.is_some_and(|e| e.capped_age.is_some()))
                })
            }));
        }
        if cfg.faults > 0 && loss && cfg.writes >= 2 {
            p.push(Property::sometimes(SOMETIMES_GAP, |m: &Self, s: &State| {
                s.instances.iter().any(|i| {
                    i.live()
                        && m.deliverable(i).any(|e| {
                            matches!(e, BusEvent::Message { seq, .. }
                            if matches!(sequence_step(u64::from(i.listener.last_seq), u64::from(*seq)), Step::Gap(_)))
                        })
                })
            }));
        }
        if bus.reorder && cfg.writes >= 2 {
            p.push(Property::sometimes(SOMETIMES_REORDER, |m: &Self, s: &State| {
                s.instances.iter().any(|i| {
                    i.live()
                        && m.deliverable(i).any(|e| {
                            matches!(e, BusEvent::Message { seq, .. }
                            if sequence_step(u64::from(i.listener.last_seq), u64::from(*seq)) == Step::Old)
                        })
                })
            }));
        }
        if cfg.faults > 0 && bus.noticed_drop {
            p.push(Property::sometimes(SOMETIMES_LOST, |_, s: &State| {
                s.instances
                    .iter()
                    .any(|i| i.inbox.contains(&BusEvent::Lost))
            }));
        }
        if cfg.instances >= 2 && cfg.leases {
            p.push(Property::sometimes(SOMETIMES_LEASE_WAIT, |_, s: &State| {
                s.instances
                    .iter()
                    .any(|i| i.flights.iter().any(|f| f.phase == LoadPhase::LeaseWait))
            }));
        }
        p
    }

    /// Whether a read of `key` at `inst` changes the state (a shared hit to
    /// copy, or a new load), as [`Action::Read`] decides it.
    fn read_is_a_step(&self, s: &State, inst: &Instance, key: Key) -> bool {
        let k = usize::from(key);
        if inst.mode != LocalMode::Bypass && inst.local[k].is_some() {
            return false;
        }
        if s.shared[k].value.is_some() {
            return inst.copy.is_none();
        }
        !inst.flights.iter().any(|f| f.key == key && f.attached)
            && inst.flights.len() < self.config.max_flights
    }

    fn deliverable<'a>(&self, inst: &'a Instance) -> impl Iterator<Item = &'a BusEvent> {
        let n = if self.config.bus.reorder {
            inst.inbox.len()
        } else {
            inst.inbox.len().min(1)
        };
        inst.inbox.iter().take(n)
    }

    /// The names of the `sometimes` properties of this configuration.
    pub fn sanity_property_names(&self) -> Vec<&'static str> {
        self.sanity_properties().iter().map(|p| p.name).collect()
    }

    /// A readable account of `path`: each step, what the engine did in it,
    /// and the stale read (if any) its last state allows.
    pub fn explain(&self, path: &Path<State, Action>) -> String {
        let mut out = String::new();
        let steps = path.clone().into_vec();
        let mut ticks = 0;
        for (n, (state, action)) in steps.iter().enumerate() {
            let Some(action) = action else { continue };
            let mut log = Log::on();
            let _ = self.step(state, *action, &mut log);
            if *action == Action::Tick {
                ticks += 1;
            }
            let _ = write!(out, "{:>3}. {action:?}", n + 1);
            if *action == Action::Tick {
                let _ = write!(out, " (t = {ticks})");
            }
            let lines = log.lines.unwrap_or_default();
            if !lines.is_empty() {
                let _ = write!(out, ": {}", lines.join("; "));
            }
            out.push('\n');
        }
        let last = path.last_state();
        if self.quiescent(last) && !Self::converged(last) {
            let _ = writeln!(
                out,
                "  => quiescent, yet a tier differs from the database: db {:?}, shared {:?}, local {:?}",
                last.db,
                last.shared.iter().map(|e| e.value).collect::<Vec<_>>(),
                last.instances
                    .iter()
                    .map(|i| i
                        .local
                        .iter()
                        .map(|e| e.map(|e| e.value))
                        .collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            );
        }
        if let Some(stale) = self.stale_read(last) {
            let _ = writeln!(
                out,
                "  => a read of key {} at instance {} now returns {} from {:?}, but {} was invalidated more than {} tick(s) ago",
                stale.key,
                stale.instance,
                stale.value,
                stale.source,
                stale.settled,
                self.config.bound
            );
        }
        out
    }
}

impl Model for CoherenceModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State::initial(self.config.instances, self.config.keys)]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        let cfg = &self.config;
        match s.sidecar {
            Sidecar::Idle if s.writes < cfg.writes => {
                out.extend((0..self.key_count()).map(Action::Commit));
            }
            Sidecar::Idle => {}
            Sidecar::Committed(_) => out.push(Action::InvalidateShared),
            Sidecar::Invalidated(_) => out.push(Action::Publish),
        }
        for (instance, inst) in s.instances.iter().enumerate() {
            for key in 0..self.key_count() {
                if self.read_is_a_step(s, inst, key) {
                    out.push(Action::Read { instance, key });
                }
            }
            if inst.copy.is_some() {
                out.push(Action::CopyToLocal { instance });
            }
            for (flight, f) in inst.flights.iter().enumerate() {
                match f.phase {
                    LoadPhase::LeaseWait => {
                        out.push(Action::LeasePoll { instance, flight });
                        out.push(Action::LeaseGiveUp { instance, flight });
                    }
                    LoadPhase::Loading => out.push(Action::LoadOrigin { instance, flight }),
                    LoadPhase::Loaded(_) => out.push(Action::CommitFill { instance, flight }),
                    LoadPhase::Committed(_) => out.push(Action::FillLocal { instance, flight }),
                }
            }
            if inst.listener.pending_mode.is_some() {
                out.push(Action::SetMode { instance });
            } else {
                if inst.live() {
                    for index in 0..self.deliverable(inst).count() {
                        out.push(Action::Deliver { instance, index });
                    }
                    if inst.listener.silent {
                        out.push(Action::Heartbeat { instance });
                    }
                }
                if self.timer_due(inst) {
                    out.push(Action::LivenessTimeout { instance });
                }
                if !inst.listener.connected && !inst.hung {
                    out.push(Action::Reconnect { instance });
                }
                if s.faults < cfg.faults && inst.live() {
                    if cfg.bus.disconnect {
                        out.push(Action::Disconnect { instance });
                    }
                    if cfg.bus.hang {
                        out.push(Action::Hang { instance });
                    }
                }
            }
            if inst.hung {
                out.push(Action::Resume { instance });
            }
            if s.faults < cfg.faults {
                for (index, e) in inst.inbox.iter().enumerate() {
                    if matches!(e, BusEvent::Message { .. }) {
                        if cfg.bus.noticed_drop {
                            out.push(Action::DropReported { instance, index });
                        }
                        if cfg.bus.silent_drop {
                            out.push(Action::DropSilently { instance, index });
                        }
                    }
                }
            }
        }
        if !self.urgent(s) {
            out.push(Action::Tick);
        }
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        self.step(s, action, &mut Log::off())
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut p = vec![
            Property::always(NO_STALE_READ, |m: &Self, s: &State| {
                m.stale_read(s).is_none()
            }),
            Property::always(QUIESCENT_CONVERGED, |m: &Self, s: &State| {
                !m.quiescent(s) || Self::converged(s)
            }),
            Property::eventually(EVENTUALLY_CONVERGES, |m: &Self, s: &State| {
                s.writes == m.config.writes && m.quiescent(s) && Self::converged(s)
            }),
        ];
        p.extend(self.sanity_properties());
        p
    }
}
