//! Jobs and pages of jobs as last read, kept until the database changes.
//! Every change is made by this process (one owner per database), on its
//! one writer connection. What was read while that connection was idle,
//! after its N-th use, is what the database holds for as long as the
//! connection has not been taken again (`Writes`). Repeated reads between
//! writes (a dashboard refreshing, a pipeline polling its job) then cost a
//! lookup here instead of four queries and their rows. With lanes at work,
//! each of their writes makes every entry old, and none is used while a
//! write is under way.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most answers kept (of each kind); past it, those read before the last
/// change go, and if that is not enough, all.
const CAPACITY: usize = 1024;

/// Uses of the writer connection: counted when it is handed out (before
/// anything is written) and when it comes back (after its transaction was
/// committed or rolled back).
#[derive(Clone, Default)]
pub(super) struct Writes {
    taken: Arc<AtomicU64>,
    returned: Arc<AtomicU64>,
}

impl Writes {
    pub(super) fn taken(&self) {
        self.taken.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn returned(&self) {
        self.returned.fetch_add(1, Ordering::SeqCst);
    }

    /// The number of uses so far if no write is under way: every use so far
    /// has ended, so a read that starts now sees all that they wrote.
    pub(super) fn idle_after(&self) -> Option<u64> {
        // `returned` first: a use that begins or ends between the two loads
        // makes them differ.
        let returned = self.returned.load(Ordering::SeqCst);
        let taken = self.taken.load(Ordering::SeqCst);
        (taken == returned).then_some(taken)
    }
}

/// Answers by what was asked, each with the count of writes it was read at.
pub(super) struct Answers<K, V> {
    entries: Arc<Mutex<HashMap<K, (u64, V)>>>,
}

// By hand: derived, they would ask K and V for Clone and Default too.
impl<K, V> Clone for Answers<K, V> {
    fn clone(&self) -> Self {
        Answers {
            entries: self.entries.clone(),
        }
    }
}

impl<K, V> Default for Answers<K, V> {
    fn default() -> Self {
        Answers {
            entries: Arc::default(),
        }
    }
}

impl<K: Eq + Hash, V: Clone> Answers<K, V> {
    /// The answer to `key` as read when the writer was idle after `writes`
    /// uses, if it still is.
    pub(super) fn get(&self, key: &K, writes: u64) -> Option<V> {
        let entries = self.entries.lock().expect("answers poisoned");
        entries
            .get(key)
            .filter(|(read_at, _)| *read_at == writes)
            .map(|(_, value)| value.clone())
    }

    /// Keeps `value`, read after `idle_after` answered `writes` (a write
    /// that began during the read has taken the count past `writes`, so the
    /// entry is never taken for current).
    pub(super) fn put(&self, key: K, value: &V, writes: u64) {
        let mut entries = self.entries.lock().expect("answers poisoned");
        if entries.len() >= CAPACITY {
            entries.retain(|_, (read_at, _)| *read_at == writes);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, (writes, value.clone()));
    }
}
