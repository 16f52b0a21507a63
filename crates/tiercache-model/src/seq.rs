//! The listener's reading of bus sequence numbers, copied from
//! `crates/tiercache-core/src/cache/sync.rs` (`sequence_step`, `next_last`,
//! `REORDER_WINDOW`), so the model classifies every message exactly as the
//! engine does.
//!
//! The engine's functions are private to it; this copy is kept in step by
//! hand and by the unit test below (the engine's own cases, verbatim).

/// How far back a sequence number may step and still be a duplicate or a
/// reordering (ignored for gap detection); further back, the origin's
/// sequence is followed from the new number. (`sync.rs`: `REORDER_WINDOW`.)
pub const REORDER_WINDOW: u64 = 1024;

/// What a message's sequence number says, given the last one seen from its
/// origin (0: none yet). (`sync.rs`: `enum Step`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// The expected next number (or the first one seen).
    Next,
    /// Messages were skipped: this many are presumed lost. The listener
    /// flushes the local tier ([`FlushReason::SequenceGap`](crate::FlushReason::SequenceGap)).
    Gap(u64),
    /// A duplicate or a reordering within the window.
    Old,
    /// Far behind the last one: a forged number, or the origin restarted
    /// its count. Not reachable in the model (its numbers never exceed the
    /// number of writes, far inside [`REORDER_WINDOW`]), kept for fidelity.
    Restart,
}

/// Classifies `seq` after `last` (`sync.rs`: `sequence_step`).
pub fn sequence_step(last: u64, seq: u64) -> Step {
    if last == 0 {
        return Step::Next;
    }
    match seq.checked_sub(last) {
        Some(1) => Step::Next,
        Some(0) => Step::Old,
        Some(ahead) => Step::Gap(ahead - 1),
        None if last - seq <= REORDER_WINDOW => Step::Old,
        None => Step::Restart,
    }
}

/// The last sequence number to remember after `seq` (`sync.rs`: `next_last`).
pub fn next_last(last: u64, seq: u64) -> u64 {
    match sequence_step(last, seq) {
        Step::Restart => seq,
        _ => last.max(seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's own cases (`sync.rs`,
    /// `forged_sequence_numbers_do_not_overflow_or_stick`), verbatim.
    #[test]
    fn same_classification_as_the_engine() {
        assert_eq!(sequence_step(0, u64::MAX), Step::Next);
        assert_eq!(sequence_step(5, u64::MAX), Step::Gap(u64::MAX - 6));
        assert_eq!(sequence_step(u64::MAX, 1), Step::Restart);
        let mut last = 0;
        for seq in [1, 2, u64::MAX, 3, 4, 5] {
            last = next_last(last, seq);
        }
        assert_eq!(last, 5, "followed from the legitimate numbers again");
        assert_eq!(sequence_step(last, 6), Step::Next);
        assert_eq!(sequence_step(10, 9), Step::Old);
        assert_eq!(sequence_step(10, 10), Step::Old);
        assert_eq!(sequence_step(10, 13), Step::Gap(2));
        assert_eq!(sequence_step(u64::MAX - 1, u64::MAX), Step::Next);
    }
}
