//! A per-thread scratch buffer for encoding values.
//!
//! A fill encodes its value, wraps the bytes in an envelope for the shared
//! tier and drops them once written. Encoded into a fresh `Vec`, each fill
//! would leave the allocator a buffer grown by doubling and freed between
//! the entry's own allocations, which the local tier keeps: a hole per
//! entry that later, differently sized buffers fit badly (measured by
//! `benches/memory.rs` at about 200 bytes per 1 KiB entry). Encoding into
//! one buffer per thread, reused, leaves no such holes.

use std::cell::Cell;

/// A buffer that grew past this is freed after use rather than kept.
const KEEP: usize = 64 * 1024;

thread_local! {
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// `f` on this thread's scratch buffer, emptied first. The buffer is taken
/// out of the thread's slot while `f` runs, so a nested call (a codec that
/// encodes through another cache) gets a fresh one rather than a conflict.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = SCRATCH.with(Cell::take);
    buf.clear();
    let r = f(&mut buf);
    if buf.capacity() <= KEEP {
        SCRATCH.with(|s| s.set(buf));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_is_reused_emptied_and_big_ones_are_freed() {
        let first = with_scratch(|b| {
            b.extend_from_slice(b"hello");
            b.as_ptr() as usize
        });
        let (again, len) = with_scratch(|b| (b.as_ptr() as usize, b.len()));
        assert_eq!(len, 0, "emptied before use");
        assert_eq!(first, again, "the same allocation");
        // Nested: a fresh buffer, no conflict.
        with_scratch(|outer| {
            outer.push(1);
            with_scratch(|inner| assert!(inner.is_empty()));
            assert_eq!(outer, &[1]);
        });
        with_scratch(|b| b.resize(KEEP * 2, 0));
        assert_eq!(
            with_scratch(|b| b.capacity()),
            0,
            "a big buffer is not kept"
        );
    }
}
