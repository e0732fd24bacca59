//! Jobs and pages of jobs as last read, kept until the database changes.
//! Every change is made by this process (one owner per database), on its
//! one writer connection. What was read while that connection was idle in
//! its pool, after it had been handed out N times, is what the database
//! holds for as long as it has not been handed out again (`Writes`).
//! Repeated reads between writes (a dashboard refreshing, a pipeline
//! polling its job) then cost a lookup here instead of four queries and
//! their rows. With lanes at work, each of their writes makes every entry
//! old, and none is used while a write is under way.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::SqlitePool;

/// Most answers kept (of each kind); past it, those read before the last
/// change go, and if that is not enough, all.
const CAPACITY: usize = 1024;

/// How many times the writer connection was handed out: counted by the
/// pool's hooks, before any code can write on it.
#[derive(Clone, Default)]
pub(super) struct Writes(Arc<AtomicU64>);

impl Writes {
    pub(super) fn taken(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// The count if the writer connection is idle in its pool now: it goes
    /// back there only after its transaction was committed or rolled back,
    /// so a read that starts now sees everything written so far.
    pub(super) fn idle_after(&self, writer: &SqlitePool) -> Option<u64> {
        // Counted twice: a connection handed out between the two reads
        // makes them differ.
        let before = self.0.load(Ordering::SeqCst);
        let idle = writer.num_idle() == writer.size() as usize;
        let after = self.0.load(Ordering::SeqCst);
        (idle && before == after).then_some(before)
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
