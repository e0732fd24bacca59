//! Jobs and pages of jobs as last read, kept until the database changes:
//! SQLite's, where every change is made by this process (one owner per
//! database), on its one writer connection. What was read while that
//! connection was idle in its pool, after it had been handed out N times,
//! is what the database holds for as long as it has not been handed out
//! again (`WriterCheckouts`).
//! Repeated reads between writes (a dashboard refreshing, a pipeline
//! polling its job) then cost a lookup here instead of four queries and
//! their rows. With lanes at work, each of their writes makes every entry
//! old, and none is used while a write is under way.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::SqlitePool;
use uuid::Uuid;

use super::{Job, JobPage, PageKey};

/// Most answers kept (of each kind); past it, those read before the last
/// change go, and if that is not enough, all.
const CAPACITY: usize = 1024;

/// The jobs and pages kept, and what says whether they are current.
pub(super) struct KeptReads {
    pub jobs: ReadCache<Uuid, Job>,
    pub pages: ReadCache<PageKey, JobPage>,
    checkouts: WriterCheckouts,
    writer: SqlitePool,
}

impl KeptReads {
    /// Reads kept against `writer`, whose hooks count `checkouts`.
    pub(super) fn new(writer: SqlitePool, checkouts: WriterCheckouts) -> KeptReads {
        KeptReads {
            jobs: ReadCache::default(),
            pages: ReadCache::default(),
            checkouts,
            writer,
        }
    }

    /// The checkout count if the writer connection is idle in its pool now:
    /// it goes back there only after its transaction was committed or
    /// rolled back, so a read that starts now sees everything written so
    /// far.
    pub(super) fn writer_idle(&self) -> Option<u64> {
        // Counted twice: a connection handed out between the two reads
        // makes them differ.
        let before = self.checkouts.0.load(Ordering::SeqCst);
        let idle = self.writer.num_idle() == self.writer.size() as usize;
        let after = self.checkouts.0.load(Ordering::SeqCst);
        (idle && before == after).then_some(before)
    }
}

/// How many times the writer connection was handed out: counted by the
/// pool's hooks, before any code can write on it.
#[derive(Clone, Default)]
pub(super) struct WriterCheckouts(Arc<AtomicU64>);

impl WriterCheckouts {
    pub(super) fn taken(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Answers by what was asked, each with the writer checkout count it was
/// read at.
pub(super) struct ReadCache<K, V> {
    entries: Arc<Mutex<HashMap<K, (u64, V)>>>,
}

// By hand: derived, they would ask K and V for Clone and Default too.
impl<K, V> Clone for ReadCache<K, V> {
    fn clone(&self) -> Self {
        ReadCache {
            entries: self.entries.clone(),
        }
    }
}

impl<K, V> Default for ReadCache<K, V> {
    fn default() -> Self {
        ReadCache {
            entries: Arc::default(),
        }
    }
}

impl<K: Eq + Hash, V: Clone> ReadCache<K, V> {
    /// The answer to `key` as read when the writer was idle after `writes`
    /// checkouts, if it still is.
    pub(super) fn get(&self, key: &K, writes: u64) -> Option<V> {
        let entries = self.entries.lock().expect("answers poisoned");
        entries
            .get(key)
            .filter(|(read_at, _)| *read_at == writes)
            .map(|(_, value)| value.clone())
    }

    /// Keeps `value`, read after `writer_idle` answered `writes` (a write
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
