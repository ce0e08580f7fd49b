//! [`Document`] for [automerge](https://docs.rs/automerge), feature
//! `automerge` (automerge 0.12 needs Rust 1.90).
//!
//! ```
//! use automerge::transaction::Transactable;
//! use automerge::{ObjType, ReadDoc, ROOT};
//! use crdt_socket_sync::adapters::automerge::AutomergeDocument;
//! use crdt_socket_sync::document::{ApplyOutcome, Document};
//!
//! let mut alice = AutomergeDocument::new(); // random actor id
//! let mut tx = alice.doc_mut().transaction(); // native automerge API
//! let body = tx.put_object(ROOT, "body", ObjType::Text).unwrap();
//! tx.splice_text(&body, 0, 0, "hello").unwrap();
//! tx.commit();
//! let update = alice.take_local_update().expect("alice typed something");
//!
//! let mut bob = AutomergeDocument::new();
//! assert_eq!(bob.apply(&update), ApplyOutcome::Applied);
//! assert_eq!(bob.doc().text(&body).unwrap(), "hello");
//! assert_eq!(bob.version(), alice.version());
//! assert_eq!(bob.take_local_update(), None);
//! ```
//!
//! Above, Bob edits the text only after receiving Alice's: had both created
//! `"body"` on their own, automerge would keep two objects, one hidden by
//! the other, and the hidden side's typing would be lost from view. When
//! every replica must be able to edit before it first synchronises (offline
//! first), create the shared objects with
//! [`AutomergeDocument::with_schema`] on every side.

use std::collections::BTreeMap;

use automerge::transaction::Transaction;
use automerge::{
    ActorId, Automerge, AutomergeError, Change, ChangeHash, LoadOptions, OnPartialLoad, ReadDoc,
    VerificationMode,
};

use crate::document::{ApplyOutcome, Document, DocumentError};

/// Magic bytes opening every automerge storage chunk.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Chunk type of a whole compressed document (`save()`).
const CHUNK_DOCUMENT: u8 = 0;
/// Size of one change hash in a version.
const HASH_LEN: usize = 32;
/// The actor of the schema change of [`AutomergeDocument::with_schema`]:
/// fixed, so that every replica builds the byte-identical change (same
/// actor, sequence number 1, time 0, no dependencies, same operations) and
/// automerge merges the copies as one.
const SCHEMA_ACTOR: [u8; 16] = *b"cssync-schema-v1";

/// An automerge [`Automerge`] document behind the [`Document`] trait.
///
/// Edit through [`AutomergeDocument::doc_mut`] with automerge transactions.
/// Local updates are the changes of this replica's actor not taken yet, as
/// concatenated change chunks (the format of `Automerge::save_after`);
/// [`Document::apply`] also accepts whole saved documents.
///
/// Versions are the document's heads: sorted 32-byte change hashes,
/// concatenated. A version naming a change this document does not have
/// (an unknown or newer peer) gets [`DocumentError::DeltaUnavailable`].
///
/// Applying one change per call is slow on long documents in automerge 0.12
/// (milliseconds): [`Document::apply_batch`] integrates a whole batch in one
/// automerge call, so feed it many updates at once.
#[derive(Debug)]
pub struct AutomergeDocument {
    doc: Automerge,
    /// Sequence number up to which our actor's changes were taken.
    sent_seq: u64,
    /// Heads at the last take, the base for collecting several changes.
    sent_heads: Vec<ChangeHash>,
    /// Changes held in automerge's queue: hash → encoded size.
    pending: BTreeMap<ChangeHash, usize>,
    /// The schema change of [`AutomergeDocument::with_schema`], sent once
    /// with the first local update (the server may not have it yet).
    schema: Option<Vec<u8>>,
}

impl AutomergeDocument {
    /// A new empty document writing as a random 16-byte actor id from the
    /// operating system. Every replica needs its own actor id. Use this (or
    /// [`AutomergeDocument::with_schema`]) in applications;
    /// [`AutomergeDocument::with_actor`] is for tests.
    ///
    /// ```
    /// use crdt_socket_sync::adapters::automerge::AutomergeDocument;
    ///
    /// let (a, b) = (AutomergeDocument::new(), AutomergeDocument::new());
    /// assert_ne!(a.actor_id(), b.actor_id());
    /// ```
    pub fn new() -> Self {
        Self::with_actor(random_actor())
    }

    /// A new empty document writing as a fixed `actor` (for example a
    /// `u64`, whose big-endian bytes become the actor id, or an
    /// [`ActorId`]), for tests and reproducible runs.
    pub fn with_actor(actor: impl Into<Actor>) -> Self {
        Self::from_doc(Automerge::new().with_actor(actor.into().0))
    }

    /// A new document (random actor id) whose shared objects are created by
    /// `schema`, identically on every replica that calls this with the same
    /// closure.
    ///
    /// In automerge, two replicas that each `put_object(ROOT, "body", ..)`
    /// create two different objects under one key; one wins and edits made
    /// in the other are hidden. `with_schema` runs `schema` in a change
    /// with a fixed actor, sequence number 1 and timestamp 0, so every
    /// replica (clients and, if it wants, the server) builds the same
    /// change with the same hash: the copies merge as one and all replicas
    /// edit the same objects, even before they first synchronise. The
    /// closure must be deterministic (same operations in the same order
    /// everywhere). The schema change is sent with the first local update,
    /// so a server that never ran it still receives it before the edits
    /// that depend on it.
    ///
    /// ```
    /// use automerge::transaction::Transactable;
    /// use automerge::{ObjType, ReadDoc, ROOT};
    /// use crdt_socket_sync::adapters::automerge::AutomergeDocument;
    /// use crdt_socket_sync::document::Document;
    ///
    /// let schema = |tx: &mut automerge::transaction::Transaction<'_>| {
    ///     tx.put_object(ROOT, "body", ObjType::Text)?;
    ///     Ok(())
    /// };
    /// let mut alice = AutomergeDocument::with_schema(schema)?;
    /// let mut bob = AutomergeDocument::with_schema(schema)?;
    /// // Both type before they ever met.
    /// for (doc, word) in [(&mut alice, "hello"), (&mut bob, "world")] {
    ///     let (_, body) = doc.doc().get(ROOT, "body")?.unwrap();
    ///     let mut tx = doc.doc_mut().transaction();
    ///     tx.splice_text(&body, 0, 0, word)?;
    ///     tx.commit();
    /// }
    /// let (a, b) = (alice.take_local_update().unwrap(), bob.take_local_update().unwrap());
    /// alice.apply(&b);
    /// bob.apply(&a);
    /// let (_, body) = alice.doc().get(ROOT, "body")?.unwrap();
    /// let text = alice.doc().text(&body)?;
    /// assert!(text.contains("hello") && text.contains("world"));
    /// assert_eq!(alice.version(), bob.version());
    /// # Ok::<(), automerge::AutomergeError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// What `schema` returns.
    pub fn with_schema<F>(schema: F) -> Result<Self, AutomergeError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), AutomergeError>,
    {
        let mut doc = Automerge::new().with_actor(ActorId::from(SCHEMA_ACTOR));
        let mut tx = doc.transaction();
        schema(&mut tx)?;
        // Default commit options: timestamp 0 and no message, so the change
        // bytes depend on the operations only.
        tx.commit();
        let change = doc.get_last_local_change().map(|c| c.raw_bytes().to_vec());
        doc.set_actor(random_actor().0);
        let mut me = Self::from_doc(doc);
        me.schema = change;
        Ok(me)
    }

    /// Wraps an existing document, writing with its actor id. Changes made
    /// before this call are not reported by
    /// [`Document::take_local_update`] (they are in [`Document::snapshot`]).
    pub fn from_doc(doc: Automerge) -> Self {
        let sent_seq = doc.get_last_local_change().map_or(0, |c| c.seq());
        let sent_heads = doc.get_heads();
        AutomergeDocument {
            doc,
            sent_seq,
            sent_heads,
            pending: BTreeMap::new(),
            schema: None,
        }
    }

    /// The wrapped document.
    pub fn doc(&self) -> &Automerge {
        &self.doc
    }

    /// The wrapped document, to edit with automerge transactions.
    pub fn doc_mut(&mut self) -> &mut Automerge {
        &mut self.doc
    }

    /// The actor id this replica writes with.
    pub fn actor_id(&self) -> &ActorId {
        self.doc.get_actor()
    }

    fn has_change(&self, hash: &ChangeHash) -> bool {
        self.doc.get_change_meta_by_hash(hash).is_some()
    }

    fn held(&self) -> usize {
        self.pending.values().sum()
    }

    /// Marks own-actor changes that arrived from elsewhere as sent when
    /// nothing local is waiting, so they are not sent back.
    fn resync_sent(&mut self, local_unsent_before: bool) {
        if !local_unsent_before {
            self.sent_seq = self.doc.get_last_local_change().map_or(0, |c| c.seq());
            self.sent_heads = self.doc.get_heads();
        }
    }

    fn local_unsent(&self) -> bool {
        self.doc
            .get_last_local_change()
            .is_some_and(|c| c.seq() > self.sent_seq)
    }
}

impl Default for AutomergeDocument {
    /// [`AutomergeDocument::new`]: a random actor id.
    fn default() -> Self {
        Self::new()
    }
}

/// 16 random bytes from the operating system (the size of the uuid actor
/// ids automerge itself draws).
fn random_actor() -> Actor {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&crate::adapters::random_id().to_be_bytes());
    bytes[8..].copy_from_slice(&crate::adapters::random_id().to_be_bytes());
    Actor(ActorId::from(bytes))
}

/// What [`AutomergeDocument::with_actor`] accepts as an actor id.
#[derive(Clone, Debug)]
pub struct Actor(pub ActorId);

impl From<ActorId> for Actor {
    fn from(id: ActorId) -> Self {
        Actor(id)
    }
}

impl From<u64> for Actor {
    fn from(id: u64) -> Self {
        Actor(ActorId::from(id.to_be_bytes()))
    }
}

/// Splits concatenated storage chunks and parses their changes. A whole
/// saved document is loaded (verified) and contributes all its changes.
fn parse_changes(mut bytes: &[u8]) -> Result<Vec<Change>, DocumentError> {
    let bad = |what: String| DocumentError::Invalid(format!("automerge update: {what}"));
    let mut changes = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 9 || bytes[..4] != MAGIC {
            return Err(bad("not an automerge chunk".into()));
        }
        let chunk_type = bytes[8];
        let mut rest = &bytes[9..];
        let mut len: u64 = 0;
        let mut shift = 0;
        loop {
            let (&b, r) = rest
                .split_first()
                .ok_or_else(|| bad("truncated header".into()))?;
            rest = r;
            if shift > 56 {
                return Err(bad("length overflow".into()));
            }
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let header = bytes.len() - rest.len();
        let total = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(header))
            .filter(|&t| t <= bytes.len())
            .ok_or_else(|| bad("truncated chunk".into()))?;
        let (chunk, tail) = bytes.split_at(total);
        if chunk_type == CHUNK_DOCUMENT {
            let doc = Automerge::load_with_options(
                chunk,
                LoadOptions::new()
                    .on_partial_load(OnPartialLoad::Error)
                    .verification_mode(VerificationMode::Check),
            )
            .map_err(|e| bad(e.to_string()))?;
            changes.extend(doc.get_changes(&[]));
        } else {
            changes.push(Change::try_from(chunk).map_err(|e| bad(e.to_string()))?);
        }
        bytes = tail;
    }
    Ok(changes)
}

fn decode_heads(version: &[u8]) -> Result<Vec<ChangeHash>, DocumentError> {
    if !version.len().is_multiple_of(HASH_LEN) {
        return Err(DocumentError::Invalid(
            "automerge heads: length is not a multiple of 32".into(),
        ));
    }
    version
        .chunks_exact(HASH_LEN)
        .map(|h| {
            ChangeHash::try_from(h)
                .map_err(|e| DocumentError::Invalid(format!("automerge heads: {e}")))
        })
        .collect()
}

impl Document for AutomergeDocument {
    fn version(&self) -> Vec<u8> {
        // `get_heads` is sorted.
        self.doc.get_heads().iter().flat_map(|h| h.0).collect()
    }

    fn delta_since(&self, version: &[u8]) -> Result<Vec<u8>, DocumentError> {
        let heads = decode_heads(version)?;
        if !heads.iter().all(|h| self.has_change(h)) {
            return Err(DocumentError::DeltaUnavailable);
        }
        Ok(self.doc.save_after(&heads))
    }

    fn apply(&mut self, update: &[u8]) -> ApplyOutcome {
        let mut out = Vec::with_capacity(1);
        self.apply_batch(&[update], &mut out);
        out.pop()
            .unwrap_or(ApplyOutcome::Invalid(DocumentError::Invalid(
                "automerge update: no outcome".into(),
            )))
    }

    /// Parses every update, then integrates all their new changes with one
    /// automerge call.
    fn apply_batch(&mut self, updates: &[&[u8]], outcomes: &mut Vec<ApplyOutcome>) {
        let first = outcomes.len();
        // Per update: Err(outcome) when decided already, Ok(hashes) of its
        // new changes otherwise.
        let mut parsed: Vec<Result<Vec<ChangeHash>, ApplyOutcome>> =
            Vec::with_capacity(updates.len());
        let mut batch: Vec<Change> = Vec::new();
        let mut sizes: BTreeMap<ChangeHash, usize> = BTreeMap::new();
        for update in updates {
            match parse_changes(update) {
                Err(e) => parsed.push(Err(ApplyOutcome::Invalid(e))),
                Ok(changes) => {
                    let mut new = Vec::new();
                    for c in changes {
                        let h = c.hash();
                        if sizes.contains_key(&h) || self.pending.contains_key(&h) {
                            // Already queued (or earlier in this batch).
                            new.push(h);
                        } else if !self.has_change(&h) {
                            sizes.insert(h, c.raw_bytes().len());
                            new.push(h);
                            batch.push(c);
                        }
                    }
                    if new.is_empty() {
                        parsed.push(Err(ApplyOutcome::Duplicate));
                    } else {
                        parsed.push(Ok(new));
                    }
                }
            }
        }
        let local_unsent = !batch.is_empty()
            && batch.iter().any(|c| c.actor_id() == self.doc.get_actor())
            && self.local_unsent();
        if !batch.is_empty() && self.doc.apply_changes(batch.iter().cloned()).is_err() {
            // Find the culprit: apply update by update (applied changes are
            // skipped as duplicates by automerge).
            for p in parsed.iter_mut() {
                if let Ok(hashes) = p {
                    let own: Vec<Change> = batch
                        .iter()
                        .filter(|c| hashes.contains(&c.hash()))
                        .cloned()
                        .collect();
                    if let Err(e) = self.doc.apply_changes(own) {
                        *p = Err(ApplyOutcome::Invalid(DocumentError::Invalid(format!(
                            "automerge changes: {e}"
                        ))));
                    }
                }
            }
        }
        if batch.iter().any(|c| c.actor_id() == self.doc.get_actor()) {
            self.resync_sent(local_unsent);
        }
        // Which changes are still queued for missing dependencies?
        if self.doc.get_missing_deps(&[]).is_empty() {
            self.pending.clear();
        } else {
            self.pending.extend(sizes);
            let held: Vec<ChangeHash> = self.pending.keys().copied().collect();
            for h in held {
                if self.has_change(&h) {
                    self.pending.remove(&h);
                }
            }
        }
        let held = self.held();
        for p in parsed {
            outcomes.push(match p {
                Err(outcome) => outcome,
                Ok(hashes) if hashes.iter().any(|h| self.pending.contains_key(h)) => {
                    ApplyOutcome::Pending { held_bytes: held }
                }
                Ok(_) => ApplyOutcome::Applied,
            });
        }
        debug_assert_eq!(outcomes.len() - first, updates.len());
    }

    /// The encoded size of the changes in automerge's queue.
    fn pending_bytes(&self) -> usize {
        self.held()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.doc.save()
    }

    fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<(), DocumentError> {
        let mut loaded = Automerge::load_with_options(
            snapshot,
            LoadOptions::new()
                .on_partial_load(OnPartialLoad::Error)
                .verification_mode(VerificationMode::Check),
        )
        .map_err(|e| DocumentError::Invalid(format!("automerge snapshot: {e}")))?;
        let local_unsent = self.local_unsent();
        if self.doc.is_empty() {
            self.doc = loaded.with_actor(self.doc.get_actor().clone());
        } else {
            self.doc
                .merge(&mut loaded)
                .map_err(|e| DocumentError::Invalid(format!("automerge snapshot: {e}")))?;
        }
        self.resync_sent(local_unsent);
        if self.doc.get_missing_deps(&[]).is_empty() {
            self.pending.clear();
        }
        Ok(())
    }

    fn take_local_update(&mut self) -> Option<Vec<u8>> {
        let own = self.take_own_changes();
        match (self.schema.take(), own) {
            (None, own) => own,
            (Some(mut schema), Some(own)) => {
                schema.extend_from_slice(&own);
                Some(schema)
            }
            (Some(schema), None) => Some(schema),
        }
    }
}

impl AutomergeDocument {
    /// This actor's changes since the last take, concatenated.
    fn take_own_changes(&mut self) -> Option<Vec<u8>> {
        let last = self.doc.get_last_local_change()?;
        let seq = last.seq();
        if seq <= self.sent_seq {
            return None;
        }
        let bytes = if seq == self.sent_seq + 1 {
            last.raw_bytes().to_vec()
        } else {
            let actor = self.doc.get_actor();
            let mut out = Vec::new();
            for c in self.doc.get_changes(&self.sent_heads) {
                if c.actor_id() == actor && c.seq() > self.sent_seq {
                    out.extend_from_slice(c.raw_bytes());
                }
            }
            out
        };
        self.sent_seq = seq;
        self.sent_heads = self.doc.get_heads();
        Some(bytes)
    }
}

#[cfg(feature = "conformance")]
impl crate::conformance::TextEditor for AutomergeDocument {
    fn create_text(&mut self) {
        use automerge::transaction::Transactable;
        let mut tx = self.doc.transaction();
        tx.put_object(automerge::ROOT, "text", automerge::ObjType::Text)
            .expect("root is a map");
        tx.commit();
    }

    fn insert(&mut self, pos: usize, text: &str) {
        splice(&mut self.doc, pos, 0, text);
    }

    fn delete(&mut self, pos: usize, len: usize) {
        splice(&mut self.doc, pos, len, "");
    }

    fn text(&self) -> String {
        match text_obj(&self.doc) {
            Some(obj) => self.doc.text(&obj).unwrap_or_default(),
            None => String::new(),
        }
    }
}

#[cfg(feature = "conformance")]
fn text_obj(doc: &Automerge) -> Option<automerge::ObjId> {
    match doc.get(automerge::ROOT, "text") {
        Ok(Some((automerge::Value::Object(automerge::ObjType::Text), id))) => Some(id),
        _ => None,
    }
}

#[cfg(feature = "conformance")]
fn splice(doc: &mut Automerge, pos: usize, del: usize, text: &str) {
    use automerge::transaction::Transactable;
    let obj = text_obj(doc).expect("create_text ran on the genesis replica");
    // Positions are code points; convert when the document counts otherwise.
    let (pos, del) = if doc.text_encoding() == automerge::TextEncoding::UnicodeCodePoint {
        (pos, del)
    } else {
        let s = doc.text(&obj).unwrap_or_default();
        let width = |p: &str| match doc.text_encoding() {
            automerge::TextEncoding::Utf8CodeUnit => p.len(),
            automerge::TextEncoding::Utf16CodeUnit => p.encode_utf16().count(),
            _ => p.chars().count(),
        };
        let start: String = s.chars().take(pos).collect();
        let removed: String = s.chars().skip(pos).take(del).collect();
        (width(&start), width(&removed))
    };
    let mut tx = doc.transaction();
    tx.splice_text(&obj, pos, del as isize, text)
        .expect("range within the text");
    tx.commit();
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ROOT};

    use super::*;

    fn schema(tx: &mut Transaction<'_>) -> Result<(), AutomergeError> {
        tx.put_object(ROOT, "body", ObjType::Text)?;
        Ok(())
    }

    fn type_into(doc: &mut AutomergeDocument, word: &str) {
        let (_, body) = doc.doc().get(ROOT, "body").unwrap().unwrap();
        let mut tx = doc.doc_mut().transaction();
        tx.splice_text(&body, 0, 0, word).unwrap();
        tx.commit();
    }

    fn body(doc: &AutomergeDocument) -> String {
        let (_, body) = doc.doc().get(ROOT, "body").unwrap().unwrap();
        doc.doc().text(&body).unwrap()
    }

    #[test]
    fn schema_replicas_edit_offline_and_a_plain_server_gets_everything() {
        let mut alice = AutomergeDocument::with_schema(schema).unwrap();
        let mut bob = AutomergeDocument::with_schema(schema).unwrap();
        assert_ne!(alice.actor_id(), bob.actor_id());
        assert_eq!(alice.version(), bob.version(), "same schema change");
        type_into(&mut alice, "hello ");
        type_into(&mut bob, "world");
        // A server that never ran the schema.
        let mut server = AutomergeDocument::new();
        let a = alice.take_local_update().unwrap();
        let b = bob.take_local_update().unwrap();
        assert_eq!(server.apply(&a), ApplyOutcome::Applied);
        assert_eq!(server.apply(&b), ApplyOutcome::Applied);
        assert_eq!(server.pending_bytes(), 0);
        let text = body(&server);
        assert!(text.contains("hello ") && text.contains("world"), "{text}");
        // The schema is sent once only.
        type_into(&mut alice, "!");
        let next = alice.take_local_update().unwrap();
        assert!(next.len() < a.len(), "second update repeats the schema");
        assert_eq!(server.apply(&next), ApplyOutcome::Applied);
        let delta = server.delta_since(&bob.version()).unwrap();
        bob.apply(&delta);
        assert_eq!(body(&bob), body(&server));
    }

    #[test]
    fn plain_replicas_creating_the_same_key_hide_one_side() {
        // Why with_schema exists: two independent put_object calls make
        // two objects, and one side's typing is not in the winner.
        let mut alice = AutomergeDocument::new();
        let mut bob = AutomergeDocument::new();
        for d in [&mut alice, &mut bob] {
            let mut tx = d.doc_mut().transaction();
            schema(&mut tx).unwrap();
            tx.commit();
        }
        type_into(&mut alice, "hello");
        type_into(&mut bob, "world");
        let (a, b) = (
            alice.take_local_update().unwrap(),
            bob.take_local_update().unwrap(),
        );
        alice.apply(&b);
        bob.apply(&a);
        let text = body(&alice);
        assert!(
            !(text.contains("hello") && text.contains("world")),
            "{text}"
        );
    }

    #[test]
    fn schema_errors_are_returned() {
        let r = AutomergeDocument::with_schema(|tx| {
            tx.insert(ROOT, 0, "not a list")?;
            Ok(())
        });
        assert!(r.is_err());
    }
}
