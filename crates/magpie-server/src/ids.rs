//! Message id generation: 64-bit, unique, roughly time-ordered.
//!
//! Layout (most significant first): 41 bits of milliseconds since 2025-01-01, 10 bits of node
//! id, 12 bits of counter. The generator never goes backwards — not when the clock does, and
//! not across restarts, because it starts above the largest id already stored.

use std::sync::atomic::{AtomicU64, Ordering};

use magpie_proto::MessageId;

/// 2025-01-01T00:00:00Z in ms since the Unix epoch.
const EPOCH_MS: u64 = 1_735_689_600_000;
const NODE_BITS: u32 = 10;
const COUNTER_BITS: u32 = 12;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;

/// Hands out message ids.
#[derive(Debug)]
pub struct IdGenerator {
    node: u64,
    /// The last id's `(ms << COUNTER_BITS) | counter`.
    last: AtomicU64,
}

impl IdGenerator {
    /// A generator for `node` (0–1023) whose ids are all above `floor`.
    pub fn new(node: u16, floor: u64) -> Self {
        let node = u64::from(node) & ((1 << NODE_BITS) - 1);
        let floor_ms = floor >> (NODE_BITS + COUNTER_BITS);
        let floor_counter = floor & COUNTER_MASK;
        Self {
            node,
            last: AtomicU64::new((floor_ms << COUNTER_BITS) | floor_counter),
        }
    }

    /// The next id.
    pub fn next(&self, now_ms: i64) -> MessageId {
        let now = (now_ms.max(0) as u64).saturating_sub(EPOCH_MS);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let last_ms = last >> COUNTER_BITS;
            // Same or earlier millisecond: count on from the last id (borrowing from the next
            // millisecond when the counter runs out) rather than ever repeating one.
            let next = if now > last_ms {
                now << COUNTER_BITS
            } else {
                last + 1
            };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let (ms, counter) = (next >> COUNTER_BITS, next & COUNTER_MASK);
                    return MessageId(
                        (ms << (NODE_BITS + COUNTER_BITS)) | (self.node << COUNTER_BITS) | counter,
                    );
                }
                Err(actual) => last = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_800_000_000;

    #[test]
    fn ids_increase_even_when_the_clock_stalls_or_goes_back() {
        let ids = IdGenerator::new(3, 0);
        let mut last = ids.next(NOW);
        for now in [NOW, NOW, NOW - 10_000, NOW + 1] {
            for _ in 0..5000 {
                let id = ids.next(now);
                assert!(id > last, "{id:?} after {last:?}");
                last = id;
            }
        }
    }

    #[test]
    fn ids_start_above_the_floor() {
        let first = IdGenerator::new(0, 0).next(NOW + 60_000);
        let ids = IdGenerator::new(0, first.0);
        assert!(
            ids.next(NOW).0 > first.0,
            "a restart with a slow clock must not reuse ids"
        );
    }

    #[test]
    fn concurrent_ids_are_unique() {
        let ids = std::sync::Arc::new(IdGenerator::new(1, 0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..10_000).map(|_| ids.next(NOW).0).collect::<Vec<_>>())
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for h in handles {
            for id in h.join().expect("thread") {
                assert!(all.insert(id));
            }
        }
    }
}
