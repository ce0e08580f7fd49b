//! The registry's committer thread: the queue of writes handed over by
//! [`Registry::commit`](crate::registry::Registry::commit), the thread that
//! writes everything queued in one transaction, and the completions it
//! reports back.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::journal::{Batch, DocOp, Store};
use super::registry::SqliteRegistry;
use super::{SqliteStats, storage};
use crate::document::Document;
use crate::registry::{CommitDone, CommitId, CommitWaker, RegistryError};

/// What the registry and its committer thread share (behind `state`).
#[derive(Default)]
pub(super) struct CommitterState {
    /// Writes handed over and not yet picked up by a transaction.
    pub(super) queue: Batch,
    /// The newest commit id in (or emptied from) `queue`.
    pub(super) queued_through: u64,
    /// A transaction is running.
    pub(super) busy: bool,
    /// The newest commit id on disk / failed.
    pub(super) durable_through: u64,
    pub(super) failed_through: u64,
    pub(super) last_error: String,
    /// Completions for [`Registry::poll_commit`](crate::registry::Registry::poll_commit), recorded once
    /// [`Registry::commit`](crate::registry::Registry::commit) was used.
    pub(super) completions: VecDeque<CommitDone>,
    pub(super) report: bool,
    pub(super) waker: Option<CommitWaker>,
    pub(super) stop: bool,
    pub(super) stats: SqliteStats,
}

/// Completions kept for a caller that stopped polling; older ones are
/// dropped first (which only delays or drops acknowledgements).
const MAX_COMPLETIONS: usize = 1024;

pub(super) struct Shared {
    pub(super) state: Mutex<CommitterState>,
    /// Signals the committer: work was handed over, or stop.
    pub(super) work: Condvar,
    /// Signals waiters: the queue was picked up, or a transaction ended.
    pub(super) done: Condvar,
    pub(super) store: Mutex<Store>,
    /// Bytes handed over and not yet on disk (queued, being written, or
    /// kept for a retry after a failure).
    pub(super) in_flight_bytes: AtomicUsize,
    /// Copy of `CommitterState::durable_through`, read without the lock.
    pub(super) durable_through: AtomicU64,
}

impl Shared {
    pub(super) fn state(&self) -> MutexGuard<'_, CommitterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<D: Document> SqliteRegistry<D> {
    /// Hands everything staged to the committer thread. Returns the commit
    /// to wait for, `None` when everything handed over before is on disk
    /// and nothing is staged. Read-only: fails when something is staged.
    pub(super) fn hand_over(&mut self) -> Result<Option<u64>, RegistryError> {
        self.prepare();
        if self.config.read_only && !self.staged.is_empty() {
            self.stats.failed_commits += 1;
            return Err(RegistryError::Storage(storage(
                &self.path,
                "opened read-only; updates are not stored",
            )));
        }
        let shared = Arc::clone(&self.shared);
        let mut st = shared.state();
        if self.staged.is_empty() {
            if st.durable_through >= self.last_commit {
                return Ok(None);
            }
            if st.failed_through < self.last_commit {
                // Still on its way.
                return Ok(Some(self.last_commit));
            }
            // The last commit failed: an empty one retries its writes.
        }
        // Backpressure: the running transaction picks the queue up when it
        // ends.
        let max = self.config.max_commit_queue_bytes;
        if st.queue.bytes > max && st.busy {
            st.stats.commit_waits += 1;
            while st.queue.bytes > max && st.busy && !st.stop {
                if self.committer.as_ref().is_none_or(|c| c.is_finished()) {
                    break;
                }
                st = shared
                    .done
                    .wait_timeout(st, Duration::from_millis(100))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        self.last_commit += 1;
        // The next batch will likely be as large: reserve once instead of
        // growing it update by update.
        let capacity = self.staged.updates.len();
        let batch = std::mem::replace(
            &mut self.staged,
            Batch {
                updates: Vec::with_capacity(capacity),
                ..Batch::default()
            },
        );
        shared
            .in_flight_bytes
            .fetch_add(batch.bytes, Ordering::AcqRel);
        st.queue.append(batch);
        st.queued_through = self.last_commit;
        // A busy committer looks at the queue when its transaction ends.
        let idle = !st.busy;
        drop(st);
        if idle {
            shared.work.notify_one();
        }
        Ok(Some(self.last_commit))
    }

    /// Waits until commit `id` is on disk (or failed).
    pub(super) fn wait_for(&self, id: u64) -> Result<(), RegistryError> {
        let mut st = self.shared.state();
        loop {
            if st.durable_through >= id {
                return Ok(());
            }
            if st.failed_through >= id {
                return Err(RegistryError::Storage(storage(&self.path, &st.last_error)));
            }
            if self.committer.as_ref().is_none_or(|c| c.is_finished()) {
                return Err(RegistryError::Storage(storage(
                    &self.path,
                    "the committer thread stopped",
                )));
            }
            st = self
                .shared
                .done
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The committer thread: writes everything handed over since its last
/// transaction in one transaction, keeps the writes of a failed one for the
/// next attempt (made when more work or an empty retry commit arrives), and
/// reports each transaction's outcome.
pub(super) fn run_committer(shared: &Shared, path: &Path) {
    let mut taken_through = 0u64;
    let mut retained = Batch::default();
    loop {
        let (mut batch, through) = {
            let mut st = shared.state();
            while st.queued_through == taken_through && !st.stop {
                st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.queued_through == taken_through {
                return; // stopping, nothing left
            }
            st.busy = true;
            taken_through = st.queued_through;
            let batch = std::mem::take(&mut st.queue);
            // A `commit` waiting for room in the queue may go on.
            shared.done.notify_all();
            (batch, taken_through)
        };
        if !retained.is_empty() {
            retained.append(batch);
            batch = std::mem::take(&mut retained);
        }
        let updates = Arc::new(std::mem::take(&mut batch.updates));
        let result = shared.store().write(&batch.ops, &updates);
        let waker = {
            let mut st = shared.state();
            st.busy = false;
            let result = match result {
                Ok(()) => {
                    st.durable_through = through;
                    shared.durable_through.store(through, Ordering::Release);
                    shared
                        .in_flight_bytes
                        .fetch_sub(batch.bytes, Ordering::AcqRel);
                    st.stats.commits += 1;
                    st.stats.appended += batch.count;
                    st.stats.snapshots += batch
                        .ops
                        .iter()
                        .filter(|op| matches!(op, DocOp::Snapshot { .. }))
                        .count() as u64;
                    Ok(())
                }
                Err(e) => {
                    st.failed_through = through;
                    st.last_error = e.to_string();
                    st.stats.failed_commits += 1;
                    // Unshared: the journal mirror took no entry of it.
                    batch.updates = Arc::try_unwrap(updates).unwrap_or_else(|a| a.to_vec());
                    retained = batch;
                    Err(RegistryError::Storage(storage(path, e)))
                }
            };
            if st.report {
                report(&mut st.completions, through, result);
            }
            shared.done.notify_all();
            st.waker.clone()
        };
        if let Some(wake) = waker {
            wake();
        }
    }
}

/// Queues a completion, merging it into the previous one of the same kind.
fn report(out: &mut VecDeque<CommitDone>, through: u64, result: Result<(), RegistryError>) {
    let through = CommitId(through);
    match out.back_mut() {
        Some(last) if last.result.is_ok() == result.is_ok() => {
            last.through = through;
            last.result = result;
        }
        _ => {
            if out.len() >= MAX_COMPLETIONS {
                out.pop_front();
            }
            out.push_back(CommitDone { through, result });
        }
    }
}
