//! Live counters of a run, read by whoever draws a progress bar (the CLI) while the run writes
//! them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters shared between a run and its observers.
#[derive(Debug, Default)]
pub struct Progress {
    listed: AtomicU64,
    selected: AtomicU64,
    classified: AtomicU64,
    errors: AtomicU64,
    committed: AtomicU64,
    expected: AtomicU64,
    expected_known: AtomicBool,
    polls: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressSnapshot {
    /// Keys listed so far.
    pub listed: u64,
    /// Keys this run took on (filters, shard and earlier results applied).
    pub selected: u64,
    /// Photos classified (including errors), in any order.
    pub classified: u64,
    /// Of those, photos that could not be classified.
    pub errors: u64,
    /// Results committed in parts.
    pub committed: u64,
    /// Photos this run will take on, as counted by a listing running ahead; grows until
    /// `expected_known`.
    pub expected: u64,
    pub expected_known: bool,
    /// Polls made by watch.
    pub polls: u64,
}

impl Progress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProgressSnapshot {
            listed: get(&self.listed),
            selected: get(&self.selected),
            classified: get(&self.classified),
            errors: get(&self.errors),
            committed: get(&self.committed),
            expected: get(&self.expected),
            expected_known: self.expected_known.load(Ordering::Relaxed),
            polls: get(&self.polls),
        }
    }

    pub(crate) fn listed(&self) {
        self.listed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn selected(&self) {
        self.selected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn classified(&self, error: bool) {
        self.classified.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn committed(&self, records: u64) {
        self.committed.fetch_add(records, Ordering::Relaxed);
    }

    pub(crate) fn expect_one(&self) {
        self.expected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn expected_known(&self) {
        self.expected_known.store(true, Ordering::Relaxed);
    }

    pub(crate) fn polled(&self) {
        self.polls.fetch_add(1, Ordering::Relaxed);
    }
}
