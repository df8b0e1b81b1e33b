//! A process-wide pause of every store write, for a consistent copy of a running node.
//!
//! sled has no snapshots, and its iterators see writes made while they walk: a copy made tree
//! by tree while writes go on could hold a record without its index, a block without its
//! transactions' index, or a vault whose outbox was cleared for blocks the copied chain does
//! not have. So every write to a store (the vault and its outbox, the chain, the governance log
//! and the join desk) holds [`writing`] for as long as it touches sled, and a backup holds
//! [`pause`] while it copies the vault, the chain and the governance state: one cut across all
//! three. Writes wait meanwhile; reads go on.
//!
//! Guards nest: a write that already holds [`writing`] on this thread takes it again without
//! waiting (a waiting [`pause`] would otherwise deadlock it).

use std::cell::Cell;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static GATE: RwLock<()> = RwLock::new(());

thread_local! {
    /// How many [`Writing`] guards this thread holds.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Held by a store write; see [`writing`].
#[must_use = "the write is covered only while the guard lives"]
#[derive(Debug)]
pub struct Writing {
    _guard: Option<RwLockReadGuard<'static, ()>>,
}

impl Drop for Writing {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Taken by every store write for as long as it touches sled: waits while a copy is made.
pub fn writing() -> Writing {
    let outer = DEPTH.with(|d| {
        let depth = d.get();
        d.set(depth + 1);
        depth == 0
    });
    let guard = outer.then(|| GATE.read().unwrap_or_else(|p| p.into_inner()));
    Writing { _guard: guard }
}

/// Held while a consistent copy is made: no store write runs meanwhile.
#[must_use = "writes are paused only while the guard lives"]
#[derive(Debug)]
pub struct Paused {
    _guard: RwLockWriteGuard<'static, ()>,
}

/// Waits for the writes under way to finish, then holds every further one until the guard is
/// dropped. Never call it from a thread that holds [`writing`].
pub fn pause() -> Paused {
    Paused {
        _guard: GATE.write().unwrap_or_else(|p| p.into_inner()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_pause_holds_writes_until_it_ends_and_writes_nest() {
        // Nested on one thread: no deadlock.
        {
            let _a = writing();
            let _b = writing();
        }
        let paused = pause();
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let _w = writing();
                done.store(true, Ordering::SeqCst);
            })
        };
        // The writer cannot get past the gate while the pause is held: it is released only
        // below, so `done` is still false whatever the scheduling.
        std::thread::yield_now();
        assert!(!done.load(Ordering::SeqCst));
        drop(paused);
        writer.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
    }
}
