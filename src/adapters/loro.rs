//! [`Document`] for [loro](https://docs.rs/loro), feature `loro`.
//!
//! ```
//! use crdt_socket_sync::adapters::loro::LoroDocument;
//! use crdt_socket_sync::document::{ApplyOutcome, Document};
//!
//! let mut alice = LoroDocument::new();
//! alice.get_text("body").insert(0, "hello").unwrap(); // native loro API through Deref
//! let update = alice.take_local_update().expect("alice typed something");
//!
//! let mut bob = LoroDocument::new();
//! assert_eq!(bob.apply(&update), ApplyOutcome::Applied);
//! assert_eq!(bob.get_text("body").to_string(), "hello");
//! assert_eq!(bob.version(), alice.version());
//! assert_eq!(bob.take_local_update(), None);
//! ```

use std::collections::BTreeMap;
use std::ops::Deref;

use loro::{ExportMode, Frontiers, LoroDoc, PeerID, VersionVector};

use crate::document::{ApplyOutcome, Document, DocumentError};

/// A loro [`LoroDoc`] behind the [`Document`] trait.
///
/// Derefs to [`loro::LoroDoc`]: edit it with the loro API as usual (loro
/// commits implicitly; the adapter commits before reading versions or
/// exporting). Local updates are the operations of this replica's peer id
/// that were not taken yet, so remote updates, which carry other peer ids,
/// are never included.
///
/// Versions are loro's oplog version vectors, encoded like
/// `VersionVector::encode` (postcard) but with entries sorted by peer, so
/// equal states give equal bytes; `VersionVector::decode` reads them.
///
/// [`Document::prune_to`] replaces the inner document by a shallow snapshot
/// (loro's history trimming): containers, subscriptions and configuration
/// obtained from the old [`LoroDoc`] do not carry over; fetch them again
/// through `Deref`.
pub struct LoroDocument {
    doc: LoroDoc,
    peer: PeerID,
    /// Counter up to which this peer's operations were taken as local.
    sent: i32,
    held: usize,
}

impl LoroDocument {
    /// A new empty document with a random peer id from the operating
    /// system. Every replica needs its own peer id: two writers sharing one
    /// diverge. Use this in applications; [`LoroDocument::with_peer_id`] is
    /// for tests.
    ///
    /// ```
    /// use crdt_socket_sync::adapters::loro::LoroDocument;
    ///
    /// assert_ne!(LoroDocument::new().peer_id(), LoroDocument::new().peer_id());
    /// ```
    pub fn new() -> Self {
        Self::with_peer_id(crate::adapters::random_id())
    }

    /// A new empty document with a fixed peer id, for tests and
    /// reproducible runs (applications use [`LoroDocument::new`]).
    ///
    /// loro reserves `u64::MAX`; it becomes `u64::MAX - 1`.
    ///
    /// ```
    /// use crdt_socket_sync::adapters::loro::LoroDocument;
    ///
    /// assert_eq!(LoroDocument::with_peer_id(7).peer_id(), 7);
    /// assert_eq!(LoroDocument::with_peer_id(u64::MAX).peer_id(), u64::MAX - 1);
    /// ```
    pub fn with_peer_id(peer_id: u64) -> Self {
        let peer_id = peer_id.min(PeerID::MAX - 1);
        let doc = LoroDoc::new();
        doc.set_peer_id(peer_id)
            .expect("every peer id below u64::MAX is accepted");
        Self::from_doc(doc)
    }

    /// Wraps an existing loro document, writing with its current peer id.
    /// Operations made before this call are not reported by
    /// [`Document::take_local_update`] (they are in [`Document::snapshot`]).
    pub fn from_doc(doc: LoroDoc) -> Self {
        doc.commit();
        let peer = doc.peer_id();
        let sent = doc.oplog_vv().get(&peer).copied().unwrap_or(0);
        LoroDocument {
            doc,
            peer,
            sent,
            held: 0,
        }
    }

    /// The wrapped loro document (also reachable through `Deref`).
    pub fn doc(&self) -> &LoroDoc {
        &self.doc
    }

    /// The peer id this replica writes with.
    pub fn peer_id(&self) -> PeerID {
        self.peer
    }

    /// Recomputes the exact size of what loro holds pending.
    fn refresh_held(&mut self) {
        self.held = match self.doc.export_pending_updates() {
            Ok(Some(bytes)) => bytes.len(),
            _ => 0,
        };
    }

    /// Imports remote bytes, keeping operations of our own peer id that
    /// arrive from elsewhere (say, our earlier state echoed back by a server)
    /// out of the next local update when nothing local is unsent.
    fn import(&mut self, bytes: &[u8]) -> Result<loro::ImportStatus, loro::LoroError> {
        // `import` commits the open local transaction first.
        let status = self.doc.import(bytes)?;
        // Imported operations of our own peer start where our log ended: at
        // `sent` exactly when nothing local is unsent.
        if let Some(&(start, end)) = status.success.get(&self.peer)
            && start == self.sent
        {
            self.sent = end;
        }
        Ok(status)
    }
}

impl Default for LoroDocument {
    /// [`LoroDocument::new`]: a random peer id.
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for LoroDocument {
    type Target = LoroDoc;
    fn deref(&self) -> &LoroDoc {
        &self.doc
    }
}

impl std::fmt::Debug for LoroDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoroDocument")
            .field("peer", &self.peer)
            .field("sent", &self.sent)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

/// Canonical encoding of a version vector: `VersionVector::encode`'s
/// postcard map, entries sorted by peer.
fn encode_vv(vv: &VersionVector) -> Vec<u8> {
    let sorted: BTreeMap<PeerID, i32> = vv.iter().map(|(&p, &c)| (p, c)).collect();
    postcard::to_allocvec(&sorted).unwrap_or_default()
}

fn decode_vv(bytes: &[u8]) -> Result<VersionVector, DocumentError> {
    let vv = VersionVector::decode(bytes)
        .map_err(|e| DocumentError::Invalid(format!("loro version vector: {e}")))?;
    if vv.values().any(|&c| c < 0) {
        return Err(DocumentError::Invalid(
            "loro version vector: negative counter".into(),
        ));
    }
    Ok(vv)
}

/// Whether `vv` contains every operation of the shallow document's trimmed
/// history, i.e. a delta from it is computable.
fn covers_shallow_root(doc: &LoroDoc, vv: &VersionVector) -> bool {
    if !doc.is_shallow() {
        return true;
    }
    doc.shallow_since_vv()
        .iter()
        .all(|(peer, &counter)| vv.get(peer).copied().unwrap_or(0) >= counter)
}

impl Document for LoroDocument {
    fn version(&self) -> Vec<u8> {
        self.doc.commit();
        encode_vv(&self.doc.oplog_vv())
    }

    fn delta_since(&self, version: &[u8]) -> Result<Vec<u8>, DocumentError> {
        let vv = decode_vv(version)?;
        if !covers_shallow_root(&self.doc, &vv) {
            return Err(DocumentError::DeltaUnavailable);
        }
        // Operations the peer lacks, whatever else it has: correct for
        // unknown and newer versions alike.
        self.doc
            .export(ExportMode::updates(&vv))
            .map_err(|_| DocumentError::DeltaUnavailable)
    }

    fn apply(&mut self, update: &[u8]) -> ApplyOutcome {
        let status = match self.import(update) {
            Ok(s) => s,
            Err(e) => {
                return ApplyOutcome::Invalid(DocumentError::Invalid(format!("loro import: {e}")));
            }
        };
        let pending = status.pending.as_ref().is_some_and(|p| !p.is_empty());
        if pending || self.held > 0 {
            self.refresh_held();
        }
        if pending {
            ApplyOutcome::Pending {
                held_bytes: self.held,
            }
        } else if status.success.is_empty() {
            ApplyOutcome::Duplicate
        } else {
            ApplyOutcome::Applied
        }
    }

    /// The exact size of loro's `export_pending_updates`.
    fn pending_bytes(&self) -> usize {
        self.held
    }

    fn snapshot(&self) -> Vec<u8> {
        self.doc
            .export(ExportMode::Snapshot)
            .expect("loro exports a snapshot of any attached document")
    }

    fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<(), DocumentError> {
        match self.import(snapshot) {
            Ok(status) => {
                if status.pending.is_some() || self.held > 0 {
                    self.refresh_held();
                }
                Ok(())
            }
            Err(e) => Err(DocumentError::Invalid(format!("loro snapshot: {e}"))),
        }
    }

    fn take_local_update(&mut self) -> Option<Vec<u8>> {
        self.doc.commit();
        let mut vv = self.doc.oplog_vv();
        let now = vv.get(&self.peer).copied().unwrap_or(0);
        if now <= self.sent {
            return None;
        }
        // Everything we have except our own unsent operations: the export
        // is exactly those (remote operations carry other peer ids).
        vv.insert(self.peer, self.sent);
        let bytes = self.doc.export(ExportMode::updates(&vv)).ok()?;
        self.sent = now;
        Some(bytes)
    }

    /// The per-peer minimum of the version vectors.
    fn common_version(&self, versions: &[&[u8]]) -> Option<Vec<u8>> {
        let (first, rest) = versions.split_first()?;
        let mut common = decode_vv(first).ok()?;
        for v in rest {
            common = common.intersection(&decode_vv(v).ok()?);
        }
        Some(encode_vv(&common))
    }

    /// Trims history before `version` (intersected with this document's
    /// own version) with a loro shallow snapshot. Peers at `version` or
    /// later still get deltas; older ones get
    /// [`DocumentError::DeltaUnavailable`] and need a snapshot.
    fn prune_to(&mut self, version: &[u8]) -> Result<bool, DocumentError> {
        self.doc.commit();
        let vv = decode_vv(version)?.intersection(&self.doc.oplog_vv());
        if vv.is_empty() || !covers_shallow_root(&self.doc, &vv) {
            return Ok(false);
        }
        let frontiers: Frontiers = self
            .doc
            .try_vv_to_frontiers(&vv)
            .map_err(|e| DocumentError::Invalid(format!("loro version: {e}")))?;
        if frontiers.is_empty() || frontiers == self.doc.shallow_since_frontiers() {
            return Ok(false);
        }
        let shallow = self
            .doc
            .export(ExportMode::shallow_snapshot(&frontiers))
            .map_err(|e| DocumentError::Invalid(format!("loro shallow snapshot: {e}")))?;
        let pending = self.doc.export_pending_updates().ok().flatten();
        let fresh = LoroDoc::new();
        fresh
            .set_peer_id(self.peer)
            .map_err(|e| DocumentError::Invalid(format!("loro peer id: {e}")))?;
        fresh
            .import(&shallow)
            .map_err(|e| DocumentError::Invalid(format!("loro shallow snapshot: {e}")))?;
        if let Some(p) = pending {
            // Remote operations still waiting for their dependencies.
            let _ = fresh.import(&p);
        }
        self.doc = fresh;
        Ok(true)
    }
}

#[cfg(feature = "conformance")]
impl crate::conformance::TextEditor for LoroDocument {
    fn insert(&mut self, pos: usize, text: &str) {
        self.doc
            .get_text("text")
            .insert(pos, text)
            .expect("position within the text");
    }

    fn delete(&mut self, pos: usize, len: usize) {
        self.doc
            .get_text("text")
            .delete(pos, len)
            .expect("range within the text");
    }

    fn text(&self) -> String {
        self.doc.get_text("text").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_encoding_is_canonical_and_loro_compatible() {
        let vv: VersionVector = [(9u64, 3i32), (1, 7), (u64::MAX - 1, 1)]
            .into_iter()
            .collect();
        let bytes = encode_vv(&vv);
        assert_eq!(VersionVector::decode(&bytes).unwrap(), vv);
        let again: VersionVector = [(u64::MAX - 1, 1i32), (1, 7), (9, 3)].into_iter().collect();
        assert_eq!(encode_vv(&again), bytes);
    }
}
