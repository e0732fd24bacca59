//! Turns at making a seed. Of the targets of one source in one registry
//! (one `SeedKey`) that find no seed, one at a time goes through the
//! engine; the others are put back to wait (`Store::wait_for_seed`), so
//! their lanes take other work, and are woken when that run ends: by then
//! its push has left a seed, and they are written registry-side, or it
//! failed, and the first of them to be claimed again takes the turn.
//! In memory, per process: a run that dies loses its turn with it (its
//! waiters are claimed again after `SEED_RECHECK` at the latest), and on a
//! shared database another instance only makes its own turns.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::warn;

use crate::domain::publish_via::SeedKey;
use crate::store::Store;

/// The turns of this process.
#[derive(Clone)]
pub struct SeedTurns {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    store: Store,
    /// The lanes' wake-up: woken targets are claimable at once.
    wake: Arc<Notify>,
}

#[derive(Default)]
struct State {
    /// Keys whose turn a run holds: its number, and the targets waiting.
    held: HashMap<SeedKey, (u64, Vec<i64>)>,
    /// Keys whose engine push left nothing publishd can write siblings
    /// from: their targets go through the engine without turns.
    unseedable: HashSet<SeedKey>,
    next_turn: u64,
}

/// Most keys remembered as unseedable; past it the memory starts again
/// (forgetting costs one more turn per key).
const UNSEEDABLE_LIMIT: usize = 10_000;

/// What a target without a seed does.
pub enum TurnOrWait {
    /// Go through the engine, holding the turn until the run ends.
    Turn(Turn),
    /// Go through the engine: no seed can be made of this key.
    Engine,
    /// Wait: the turn `turn` is another run's.
    Wait { turn: u64 },
}

/// A run's turn at making a seed; ending it (dropping it) wakes the waiters.
pub struct Turn {
    key: SeedKey,
    number: u64,
    inner: Arc<Inner>,
}

impl SeedTurns {
    pub fn new(store: Store, wake: Arc<Notify>) -> SeedTurns {
        SeedTurns {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                store,
                wake,
            }),
        }
    }

    /// The turn at making `key`'s seed for `target`, unless another run
    /// holds it: then `target` is to wait, and is woken when that turn ends.
    pub fn take(&self, key: &SeedKey, target: i64) -> TurnOrWait {
        let mut state = self.inner.lock();
        if state.unseedable.contains(key) {
            return TurnOrWait::Engine;
        }
        if let Some((turn, waiting)) = state.held.get_mut(key) {
            waiting.push(target);
            return TurnOrWait::Wait { turn: *turn };
        }
        state.next_turn += 1;
        let number = state.next_turn;
        state.held.insert(key.clone(), (number, Vec::new()));
        TurnOrWait::Turn(Turn {
            key: key.clone(),
            number,
            inner: self.inner.clone(),
        })
    }

    /// Whether the turn `turn` of `key` is still held: a waiter put back
    /// after it ended was not there to be woken, and wakes itself.
    pub fn is_held(&self, key: &SeedKey, turn: u64) -> bool {
        self.inner
            .lock()
            .held
            .get(key)
            .is_some_and(|(held, _)| *held == turn)
    }

    /// The engine's push of `key`'s source left nothing to write siblings
    /// from: its further targets go through the engine at once.
    pub fn unseedable(&self, key: &SeedKey) {
        let mut state = self.inner.lock();
        if state.unseedable.len() >= UNSEEDABLE_LIMIT {
            state.unseedable.clear();
        }
        state.unseedable.insert(key.clone());
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let waiting = {
            let mut state = self.inner.lock();
            match state.held.get(&self.key) {
                Some((number, _)) if *number == self.number => {
                    state.held.remove(&self.key).map(|(_, waiting)| waiting)
                }
                _ => None,
            }
        };
        let Some(waiting) = waiting.filter(|waiting| !waiting.is_empty()) else {
            return;
        };
        // Dropped in a run's task (also when it panics): the store is
        // written from a task of its own.
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(error) = inner.store.wake_targets(&waiting).await {
                warn!(
                    error = format!("{error:#}"),
                    "waking the targets that waited for a seed (they are claimed again later)"
                );
            }
            inner.wake.notify_waiters();
        });
    }
}
