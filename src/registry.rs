//! The server's documents.
//!
//! The hub borrows a [`Registry`] per call (`&mut impl Registry`); it never
//! owns it behind a lock. [`MemoryRegistry`] keeps documents in memory; a
//! durable registry (SQLite) implements the same trait and uses the storage
//! hooks ([`Registry::update_applied`], [`Registry::flush`],
//! [`Registry::snapshot_taken`]) to persist.
//!
//! # Durability without waiting for the disk
//!
//! [`Registry::flush`] commits and waits: simple, but a server loop that
//! calls it after every batch stalls on every fsync. A registry with a
//! background committer also implements the non-blocking pair:
//! [`Registry::commit`] hands everything reported so far to the committer
//! and returns a [`CommitId`]; [`Registry::poll_commit`] later reports which
//! commits reached the disk (or failed), and the waker set with
//! [`Registry::set_commit_waker`] tells the server loop when to ask. The
//! hub's [`commit`](crate::server::Hub::commit) and
//! [`poll_commits`](crate::server::Hub::poll_commits) drive them: `applied`
//! acknowledgements go out at once, `durable` ones when the disk caught up.
//! The default implementations map onto `flush` (every commit completes
//! before `commit` returns), so registries without a committer need nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use thiserror::Error;

use crate::document::{Document, DocumentError};

/// Whether opening an unknown document creates it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenPolicy {
    /// Unknown documents are created empty on open.
    #[default]
    Create,
    /// Unknown documents are refused with [`RegistryError::NotFound`].
    MustExist,
}

/// Errors of a registry operation.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// No such document, and the policy does not create it.
    #[error("document {0:?} not found")]
    NotFound(String),
    /// The document name is not acceptable (empty, too long...).
    #[error("invalid document name: {0}")]
    InvalidName(String),
    /// The storage layer failed; nothing was acknowledged as durable.
    #[error("storage error: {0}")]
    Storage(String),
    /// The stored document could not be loaded.
    #[error(transparent)]
    Document(#[from] DocumentError),
}

/// Identifies a commit handed to a registry's committer
/// ([`Registry::commit`]). Ids of one registry increase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitId(pub u64);

/// What [`Registry::commit`] did with the writes reported so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Commit {
    /// The registry has no durable storage: nothing is ever durable.
    NotDurable,
    /// Everything reported so far is already on disk.
    Durable,
    /// Handed to the committer; [`Registry::poll_commit`] reports when this
    /// commit (and every one before it) is on disk, or that it failed.
    Pending(CommitId),
}

/// A completed commit, from [`Registry::poll_commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitDone {
    /// Every commit up to this one that was not reported before completed.
    pub through: CommitId,
    /// `Ok`: every write handed over by the commits up to `through` is on
    /// disk, including writes of earlier commits that failed and were
    /// retried. `Err`: those commits are not on disk. A registry may retry
    /// their writes in a later commit; it reports that one `Ok` only once
    /// the retried writes are on disk as well (one that cannot retry must
    /// report its later commits failed too, or heal, e.g. with a snapshot).
    pub result: Result<(), RegistryError>,
}

/// Called by a registry's committer, from any thread, after a commit
/// completed: the server loop should call [`Registry::poll_commit`] (through
/// [`Hub::poll_commits`](crate::server::Hub::poll_commits)) soon. It must
/// not block (e.g. notify a task, write to a channel).
pub type CommitWaker = Arc<dyn Fn() + Send + Sync>;

/// The server side's set of documents.
pub trait Registry {
    /// The document type (use `Box<dyn Document>` to mix CRDTs).
    type Doc: Document;

    /// Opens (loading or, per the policy, creating) a document.
    fn open(&mut self, name: &str) -> Result<&mut Self::Doc, RegistryError>;

    /// A document already open in memory.
    fn get(&mut self, name: &str) -> Option<&mut Self::Doc>;

    /// Names of the documents open in memory, sorted.
    fn list(&self) -> Vec<String>;

    /// The server no longer needs document `name` in memory (the hub calls
    /// it once the document left its directory, see
    /// [`ServerConfig::unload_after`](crate::server::ServerConfig::unload_after)).
    /// A registry drops it when that loses nothing: a durable one keeps it
    /// stored (and, when writes of it are not on disk yet, drops it once
    /// they are); a memory one keeps documents that hold data. Returns
    /// whether it was dropped now. The default keeps everything.
    fn unload(&mut self, name: &str) -> bool {
        let _ = name;
        false
    }

    /// Deletes a document everywhere. Returns whether it existed.
    fn remove(&mut self, name: &str) -> bool;

    /// Whether this registry stores documents durably, so that the server's
    /// acknowledgements will report updates `durable` (after
    /// [`Registry::flush`] or a completed [`Registry::commit`]). The hub
    /// announces it in `Welcome`; a client waiting for durability against a
    /// server that says `false` gets an error instead of waiting forever.
    /// The default is `false` (memory only); the SQLite registry says
    /// `true`.
    fn is_durable(&self) -> bool {
        false
    }

    /// Storage hook: `update` was applied to document `name`. A durable
    /// registry appends it to its log (made durable by the next
    /// [`Registry::flush`]).
    fn update_applied(&mut self, name: &str, update: &[u8]) -> Result<(), RegistryError> {
        let _ = (name, update);
        Ok(())
    }

    /// Storage hook: a snapshot of `name` was taken (history pruning); a
    /// durable registry may replace its log with it.
    fn snapshot_taken(&mut self, name: &str, snapshot: &[u8]) -> Result<(), RegistryError> {
        let _ = (name, snapshot);
        Ok(())
    }

    /// Makes every update reported so far durable (one group commit).
    /// Returns `true` when the registry is durable and the commit succeeded;
    /// the hub then acknowledges those updates as `durable`.
    fn flush(&mut self) -> Result<bool, RegistryError> {
        Ok(false)
    }

    /// Hands every write reported so far to the storage's committer without
    /// waiting for the disk. [`Commit::Pending`] carries the id
    /// [`Registry::poll_commit`] reports once those writes are on disk.
    /// `Err`: the writes could not be handed over (or an update could not
    /// be stored); nothing new is durable.
    ///
    /// The default commits synchronously with [`Registry::flush`]:
    /// [`Commit::Durable`] or [`Commit::NotDurable`], never pending.
    ///
    /// ```
    /// use crdt_socket_sync::registry::{Commit, MemoryRegistry, Registry};
    /// # use crdt_socket_sync::testing::OpLog;
    /// let mut reg = MemoryRegistry::new(|_: &str| OpLog::new(0));
    /// assert_eq!(reg.commit(), Ok(Commit::NotDurable)); // memory only
    /// assert_eq!(reg.poll_commit(), None);
    /// ```
    fn commit(&mut self) -> Result<Commit, RegistryError> {
        Ok(if self.flush()? {
            Commit::Durable
        } else {
            Commit::NotDurable
        })
    }

    /// The next completed commit, oldest first; `None` when no commit
    /// completed since the last call. A registry that returned
    /// [`Commit::Pending`] reports every such commit exactly once (several
    /// may be reported by one [`CommitDone`]). Callers that never use
    /// [`Registry::commit`] need not call it.
    fn poll_commit(&mut self) -> Option<CommitDone> {
        None
    }

    /// Sets the function the committer calls after each completed commit.
    /// The default ignores it (commits complete before `commit` returns).
    fn set_commit_waker(&mut self, waker: CommitWaker) {
        let _ = waker;
    }
}

/// Creates a new, empty document for a name.
pub type DocFactory<D> = Box<dyn FnMut(&str) -> D + Send>;

/// Documents in memory, for any [`Document`] type.
///
/// ```
/// use crdt_socket_sync::registry::{MemoryRegistry, OpenPolicy, Registry, RegistryError};
/// # use crdt_socket_sync::document::{ApplyOutcome, Document, DocumentError};
/// # #[derive(Default)] struct Empty;
/// # impl Document for Empty {
/// #     fn version(&self) -> Vec<u8> { vec![] }
/// #     fn delta_since(&self, _: &[u8]) -> Result<Vec<u8>, DocumentError> { Ok(vec![]) }
/// #     fn apply(&mut self, _: &[u8]) -> ApplyOutcome { ApplyOutcome::Duplicate }
/// #     fn snapshot(&self) -> Vec<u8> { vec![] }
/// #     fn load_snapshot(&mut self, _: &[u8]) -> Result<(), DocumentError> { Ok(()) }
/// #     fn take_local_update(&mut self) -> Option<Vec<u8>> { None }
/// # }
///
/// let mut reg = MemoryRegistry::new(|_name: &str| Empty);
/// reg.open("notes").unwrap();
/// assert_eq!(reg.list(), vec!["notes".to_string()]);
///
/// reg.set_policy(OpenPolicy::MustExist);
/// assert!(matches!(reg.open("other"), Err(RegistryError::NotFound(_))));
/// ```
pub struct MemoryRegistry<D> {
    docs: BTreeMap<String, D>,
    /// Documents created by [`Registry::open`] (not inserted by the
    /// application): [`Registry::unload`] forgets them while they hold
    /// nothing.
    created: BTreeSet<String>,
    factory: DocFactory<D>,
    policy: OpenPolicy,
    max_name_len: usize,
}

impl<D: Document> MemoryRegistry<D> {
    /// A registry creating documents with `factory` and policy
    /// [`OpenPolicy::Create`].
    pub fn new(factory: impl FnMut(&str) -> D + Send + 'static) -> Self {
        MemoryRegistry {
            docs: BTreeMap::new(),
            created: BTreeSet::new(),
            factory: Box::new(factory),
            policy: OpenPolicy::Create,
            max_name_len: 512,
        }
    }

    /// Changes the create-on-open policy.
    pub fn set_policy(&mut self, policy: OpenPolicy) {
        self.policy = policy;
    }

    /// Adds (or replaces) a document under `name`.
    pub fn insert(&mut self, name: impl Into<String>, doc: D) {
        let name = name.into();
        self.created.remove(&name);
        self.docs.insert(name, doc);
    }

    /// Number of documents in memory.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether no document is in memory.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }
}

impl<D: Document> Registry for MemoryRegistry<D> {
    type Doc = D;

    fn open(&mut self, name: &str) -> Result<&mut D, RegistryError> {
        if name.is_empty() || name.len() > self.max_name_len {
            return Err(RegistryError::InvalidName(format!(
                "length must be 1..={}",
                self.max_name_len
            )));
        }
        if !self.docs.contains_key(name) {
            if self.policy == OpenPolicy::MustExist {
                return Err(RegistryError::NotFound(name.to_string()));
            }
            let doc = (self.factory)(name);
            self.docs.insert(name.to_string(), doc);
            self.created.insert(name.to_string());
        }
        self.docs
            .get_mut(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))
    }

    fn get(&mut self, name: &str) -> Option<&mut D> {
        self.docs.get_mut(name)
    }

    fn list(&self) -> Vec<String> {
        self.docs.keys().cloned().collect()
    }

    /// Forgets `name` if [`Registry::open`] created it and it still holds
    /// nothing (its version is a new document's, nothing held for missing
    /// dependencies). Memory is the only storage: a document holding data,
    /// or one the application inserted, stays.
    fn unload(&mut self, name: &str) -> bool {
        if !self.created.contains(name) {
            return false;
        }
        let Some(doc) = self.docs.get(name) else {
            return false;
        };
        if doc.pending_bytes() != 0 || doc.version() != (self.factory)(name).version() {
            return false;
        }
        self.docs.remove(name);
        self.created.remove(name);
        true
    }

    fn remove(&mut self, name: &str) -> bool {
        self.created.remove(name);
        self.docs.remove(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::OpLog;

    /// Memory is the only storage: unloading forgets only documents that
    /// `open` created and that hold nothing.
    #[test]
    fn a_memory_registry_unloads_only_what_holds_nothing() {
        let mut reg = MemoryRegistry::new(|_: &str| OpLog::new(0));
        reg.open("empty").unwrap();
        let mut author = OpLog::new(1);
        author.edit(b"x");
        let update = author.take_local_update().unwrap();
        reg.open("written").unwrap().apply(&update);
        reg.insert("inserted", OpLog::new(0));
        assert!(reg.unload("empty"));
        assert!(!reg.unload("written"));
        assert!(!reg.unload("inserted"), "the application put it there");
        assert!(!reg.unload("missing"));
        assert_eq!(reg.list(), ["inserted", "written"]);
        assert_eq!(reg.created.len(), 1);
        assert!(reg.remove("written"));
        assert!(reg.created.is_empty());
    }
}
