//! The CRDT document behind the protocol.
//!
//! The sessions never assume one CRDT: they talk to documents only through
//! [`Document`]. Versions, updates and snapshots are opaque bytes whose
//! meaning belongs to the implementation (a yrs state vector, a loro version
//! vector, automerge heads...). Adapters for yrs, loro and automerge live in
//! the `adapters` module, behind cargo features.
//!
//! Implementations must be deterministic: no clocks, no hidden randomness.
//! Actor/client ids are supplied by the caller when the document is created.

use thiserror::Error;

/// What happened to one remote update handed to [`Document::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyOutcome {
    /// The update was integrated (fully, or it released pending ones).
    Applied,
    /// The update's causal dependencies are missing; the document holds it
    /// until they arrive. `held_bytes` is the total the document now holds
    /// pending, so sessions can bound it.
    Pending {
        /// Bytes of pending updates held by the document after this call.
        held_bytes: usize,
    },
    /// Everything in the update was already known. Implementations may
    /// report [`ApplyOutcome::Applied`] instead when detecting duplicates
    /// would cost extra work.
    Duplicate,
    /// The bytes are not a valid update; the document is unchanged.
    Invalid(DocumentError),
}

/// Errors of a document operation.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DocumentError {
    /// The bytes are not a valid update, snapshot or version.
    #[error("invalid payload: {0}")]
    Invalid(String),
    /// No delta can be computed from the given version (it is unknown, from
    /// another history, or was pruned); send a snapshot instead.
    #[error("no delta computable from this version")]
    DeltaUnavailable,
    /// The operation is not supported by this CRDT.
    #[error("not supported by this document type")]
    Unsupported,
}

/// A CRDT document as the sync sessions see it.
///
/// The trait is object safe, so one registry can hold documents of several
/// CRDT libraries as `Box<dyn Document>`.
///
/// ```
/// use crdt_socket_sync::document::{ApplyOutcome, Document, DocumentError};
///
/// /// A grow-only set of bytes: a tiny CRDT for the example.
/// #[derive(Default)]
/// struct GSet(std::collections::BTreeSet<u8>, Vec<u8>);
///
/// impl Document for GSet {
///     fn version(&self) -> Vec<u8> { self.0.iter().copied().collect() }
///     fn delta_since(&self, version: &[u8]) -> Result<Vec<u8>, DocumentError> {
///         Ok(self.0.iter().copied().filter(|b| !version.contains(b)).collect())
///     }
///     fn apply(&mut self, update: &[u8]) -> ApplyOutcome {
///         let before = self.0.len();
///         self.0.extend(update.iter().copied());
///         if self.0.len() > before { ApplyOutcome::Applied } else { ApplyOutcome::Duplicate }
///     }
///     fn snapshot(&self) -> Vec<u8> { self.version() }
///     fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<(), DocumentError> {
///         self.0.extend(snapshot.iter().copied());
///         Ok(())
///     }
///     fn take_local_update(&mut self) -> Option<Vec<u8>> {
///         (!self.1.is_empty()).then(|| std::mem::take(&mut self.1))
///     }
/// }
///
/// let mut a = GSet::default();
/// a.0.insert(1);
/// a.1.push(1);
/// let mut b = GSet::default();
/// let update = a.take_local_update().unwrap();
/// assert_eq!(b.apply(&update), ApplyOutcome::Applied);
/// assert_eq!(b.apply(&update), ApplyOutcome::Duplicate);
/// assert_eq!(a.version(), b.version());
/// ```
pub trait Document {
    /// The document's current version, as opaque bytes.
    fn version(&self) -> Vec<u8>;

    /// Whether a peer at `version` already has everything this document
    /// has, so there is nothing to send it. A client asks this after each
    /// (re)sync before sending the server a delta.
    ///
    /// The default compares the encoded versions byte for byte. That is
    /// exact for canonical encodings of versions that count every change
    /// (op logs, loro version vectors, automerge heads); a non-canonical
    /// encoding only errs toward `false` (an unneeded, harmless delta). A
    /// version that misses some changes (a yrs state vector does not count
    /// deletions) may answer `true` while the peer lacks local deletions:
    /// those still reach it, as every local edit does, through
    /// [`Document::take_local_update`]. Override it where a better answer is
    /// cheap.
    fn contained_in(&self, version: &[u8]) -> bool {
        self.version() == version
    }

    /// An update holding everything a peer at `version` lacks.
    ///
    /// Returns [`DocumentError::DeltaUnavailable`] when no delta can be
    /// computed (unknown or pruned version); callers then send
    /// [`Document::snapshot`]. An unparsable version is
    /// [`DocumentError::Invalid`].
    fn delta_since(&self, version: &[u8]) -> Result<Vec<u8>, DocumentError>;

    /// Applies one remote update.
    fn apply(&mut self, update: &[u8]) -> ApplyOutcome;

    /// Applies several remote updates, in order, appending one outcome per
    /// update to `outcomes`. CRDTs that integrate a batch faster than single
    /// updates (automerge) override this; the default calls
    /// [`Document::apply`] for each.
    fn apply_batch(&mut self, updates: &[&[u8]], outcomes: &mut Vec<ApplyOutcome>) {
        for u in updates {
            outcomes.push(self.apply(u));
        }
    }

    /// Bytes of remote updates currently held waiting for dependencies.
    fn pending_bytes(&self) -> usize {
        0
    }

    /// The full state, loadable by [`Document::load_snapshot`] on any peer.
    fn snapshot(&self) -> Vec<u8>;

    /// Merges a snapshot into this document (into an empty document: loads
    /// it). On error the document is unchanged.
    fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<(), DocumentError>;

    /// Local edits made with the native API since the last call, as one
    /// update to send, or `None` when there are none. Remote updates applied
    /// through [`Document::apply`] are not included.
    fn take_local_update(&mut self) -> Option<Vec<u8>>;

    /// The greatest version every one of `versions` contains (for history
    /// pruning), or `None` when the CRDT cannot compute it.
    fn common_version(&self, versions: &[&[u8]]) -> Option<Vec<u8>> {
        let _ = versions;
        None
    }

    /// Drops history that peers at `version` or later no longer need, keeping
    /// the current state. Returns whether anything was pruned; the default
    /// prunes nothing.
    fn prune_to(&mut self, version: &[u8]) -> Result<bool, DocumentError> {
        let _ = version;
        Ok(false)
    }
}

impl<D: Document + ?Sized> Document for Box<D> {
    fn version(&self) -> Vec<u8> {
        (**self).version()
    }
    fn contained_in(&self, version: &[u8]) -> bool {
        (**self).contained_in(version)
    }
    fn delta_since(&self, version: &[u8]) -> Result<Vec<u8>, DocumentError> {
        (**self).delta_since(version)
    }
    fn apply(&mut self, update: &[u8]) -> ApplyOutcome {
        (**self).apply(update)
    }
    fn apply_batch(&mut self, updates: &[&[u8]], outcomes: &mut Vec<ApplyOutcome>) {
        (**self).apply_batch(updates, outcomes)
    }
    fn pending_bytes(&self) -> usize {
        (**self).pending_bytes()
    }
    fn snapshot(&self) -> Vec<u8> {
        (**self).snapshot()
    }
    fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<(), DocumentError> {
        (**self).load_snapshot(snapshot)
    }
    fn take_local_update(&mut self) -> Option<Vec<u8>> {
        (**self).take_local_update()
    }
    fn common_version(&self, versions: &[&[u8]]) -> Option<Vec<u8>> {
        (**self).common_version(versions)
    }
    fn prune_to(&mut self, version: &[u8]) -> Result<bool, DocumentError> {
        (**self).prune_to(version)
    }
}
