//! [`Document`] for [yrs](https://docs.rs/yrs) (Yjs in Rust), feature `yrs`.
//!
//! ```
//! use crdt_socket_sync::adapters::yrs::YrsDocument;
//! use crdt_socket_sync::document::{ApplyOutcome, Document};
//! use yrs::{GetString, Text, Transact};
//!
//! let alice = YrsDocument::new();
//! let text = alice.get_or_insert_text("body"); // native yrs API through Deref
//! text.insert(&mut alice.transact_mut(), 0, "hello");
//!
//! let mut alice = alice;
//! let update = alice.take_local_update().expect("alice typed something");
//!
//! let mut bob = YrsDocument::new();
//! assert_eq!(bob.apply(&update), ApplyOutcome::Applied);
//! let body = bob.get_or_insert_text("body");
//! assert_eq!(body.get_string(&bob.transact()), "hello");
//! assert_eq!(bob.version(), alice.version());
//! // What Bob received is not his to send.
//! assert_eq!(bob.take_local_update(), None);
//! ```

use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use yrs::encoding::read::Read as _;
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::{ClientID, Doc, OffsetKind, Options, ReadTxn, StateVector, Transact, Update};

use super::yrs_check::check_update_v1;
use super::{read_uvar, write_uvar};
use crate::document::{ApplyOutcome, Document, DocumentError};

/// Origin of the transactions in which the adapter applies remote updates;
/// local-update capture skips them. At most 8 bytes, so yrs stores it
/// inline (no allocation per applied update).
const REMOTE_ORIGIN: &str = "cssync/r";
/// Key of the adapter's after-transaction observer.
const OBSERVER_KEY: &str = "crdt-socket-sync/local-updates";
/// yrs client ids are 53-bit (JavaScript safe integers).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// A yrs [`Doc`] behind the [`Document`] trait.
///
/// Derefs to [`yrs::Doc`]: edit it with the yrs API as usual. Every
/// transaction that changes the document and was not opened by the adapter
/// itself (to apply a remote update) counts as local and is returned, merged,
/// by the next [`Document::take_local_update`]. Remote updates applied with
/// yrs directly (instead of through [`Document::apply`]) therefore count as
/// local too.
///
/// Versions are yrs state vectors in lib0 v1 encoding, entries sorted by
/// client id (so equal states give equal bytes); yrs'
/// `StateVector::decode_v1` reads them.
///
/// Do not hold a yrs transaction open while calling the trait methods: they
/// open their own and would block.
pub struct YrsDocument {
    doc: Doc,
    /// Local updates captured by the after-transaction observer; `None` for
    /// a [`YrsDocument::server`] copy, which has no observer.
    local: Option<Arc<Mutex<Vec<Vec<u8>>>>>,
    held: usize,
}

impl YrsDocument {
    /// A new empty document with a random client id from the operating
    /// system (below 2^53, safe for Yjs peers) and yrs' default options
    /// otherwise (UTF-8 byte offsets, garbage collection on).
    ///
    /// Every replica needs its own client id: two writers sharing one
    /// diverge silently. Use this in applications;
    /// [`YrsDocument::with_client_id`] is for tests.
    ///
    /// ```
    /// use crdt_socket_sync::adapters::yrs::YrsDocument;
    ///
    /// let (a, b) = (YrsDocument::new(), YrsDocument::new());
    /// assert!(a.client_id() < 1 << 53);
    /// assert_ne!(a.client_id(), b.client_id());
    /// ```
    pub fn new() -> Self {
        Self::with_client_id(crate::adapters::random_id())
    }

    /// A new empty document with a fixed client id, for tests and
    /// reproducible runs (applications use [`YrsDocument::new`]).
    ///
    /// yrs (like Yjs) keeps client ids below 2^53: larger values are
    /// reduced to their low 53 bits, so `with_client_id(1 << 53 | 7)`
    /// writes as client 7.
    ///
    /// ```
    /// use crdt_socket_sync::adapters::yrs::YrsDocument;
    ///
    /// assert_eq!(YrsDocument::with_client_id(7).client_id(), 7);
    /// assert_eq!(YrsDocument::with_client_id(1 << 53 | 7).client_id(), 7);
    /// ```
    pub fn with_client_id(client_id: u64) -> Self {
        Self::with_options(default_options(client_id))
    }

    /// A new empty document for a server (or any replica changed only
    /// through [`Document::apply`]): like [`YrsDocument::new`] (random
    /// client id) but without
    /// capturing local edits, so [`Document::take_local_update`] always
    /// returns `None`.
    ///
    /// The capture is an after-transaction observer, and yrs does extra work
    /// in every commit while one is registered (about 5–7 % of applying a
    /// keystroke update on a long document, measured in
    /// `benches/apply_path.rs`). A [`Hub`](crate::server::Hub) never asks
    /// its documents for local updates, so server registries should build
    /// their documents with this.
    ///
    /// ```
    /// use crdt_socket_sync::adapters::yrs::YrsDocument;
    /// use crdt_socket_sync::document::{ApplyOutcome, Document};
    /// use yrs::{GetString, Text, Transact};
    ///
    /// let mut client = YrsDocument::with_client_id(1);
    /// let text = client.get_or_insert_text("body");
    /// text.insert(&mut client.transact_mut(), 0, "hi");
    /// let update = client.take_local_update().unwrap();
    ///
    /// let mut server = YrsDocument::server();
    /// assert_eq!(server.apply(&update), ApplyOutcome::Applied);
    /// let body = server.get_or_insert_text("body");
    /// assert_eq!(body.get_string(&server.transact()), "hi");
    /// assert_eq!(server.take_local_update(), None);
    /// ```
    pub fn server() -> Self {
        YrsDocument {
            doc: Doc::with_options(default_options(crate::adapters::random_id())),
            local: None,
            held: 0,
        }
    }

    /// A new empty document with explicit yrs [`Options`] (offset kind,
    /// garbage collection, guid...). The client id comes from the options.
    pub fn with_options(options: Options) -> Self {
        Self::from_doc(Doc::with_options(options))
    }

    /// Wraps an existing yrs document. Edits made before this call are not
    /// reported by [`Document::take_local_update`] (they are in
    /// [`Document::snapshot`]).
    pub fn from_doc(doc: Doc) -> Self {
        let local: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = Arc::clone(&local);
        // The observer runs inside every commit. It encodes only local
        // transactions, so applying remote updates costs no extra encoding.
        doc.observe_after_transaction(OBSERVER_KEY, move |txn| {
            let remote = txn
                .origin()
                .is_some_and(|o| o.as_ref() == REMOTE_ORIGIN.as_bytes());
            if !remote && txn.has_changes() {
                let update = txn.encode_update_v1();
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(update);
            }
        })
        .expect("a new document has no open transaction");
        YrsDocument {
            doc,
            local: Some(local),
            held: 0,
        }
    }

    /// The wrapped yrs document (also reachable through `Deref`).
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// The client id this replica writes with.
    pub fn client_id(&self) -> u64 {
        self.doc.client_id().get()
    }

    fn remote_txn(&self) -> yrs::TransactionMut<'_> {
        self.doc.transact_mut_with(REMOTE_ORIGIN)
    }
}

/// The options of [`YrsDocument::new`] and [`YrsDocument::server`]; the
/// client id is reduced to its low 53 bits (yrs' and Yjs' limit).
fn default_options(client_id: u64) -> Options {
    let client_id = client_id & MAX_CLIENT_ID;
    let client = ClientID::new(client_id);
    // A deterministic guid: yrs would draw a random one, and it only names
    // the document for sub-document bookkeeping.
    let mut options = Options::with_guid_and_client_id(format!("{client_id}").into(), client);
    options.offset_kind = OffsetKind::Bytes;
    options.cleanup_formatting = true;
    options
}

impl Default for YrsDocument {
    /// [`YrsDocument::new`]: a random client id.
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for YrsDocument {
    type Target = Doc;
    fn deref(&self) -> &Doc {
        &self.doc
    }
}

impl Drop for YrsDocument {
    fn drop(&mut self) {
        // Clones of the yrs `Doc` may outlive the adapter; stop capturing.
        if self.local.is_some() {
            let _ = self.doc.unobserve_after_transaction(OBSERVER_KEY);
        }
    }
}

impl std::fmt::Debug for YrsDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YrsDocument")
            .field("client_id", &self.client_id())
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

/// Decodes one v1 update, refusing trailing bytes and catching the panics
/// yrs may raise on hostile input (debug assertions on client ids).
///
/// The update is checked first ([`check_update_v1`]): yrs reserves memory
/// for the counts an update declares and decodes nested values
/// recursively, so unchecked, a 9-byte update asked for 6 GiB and a deep
/// one overflowed the stack.
fn decode_update(bytes: &[u8]) -> Result<Update, DocumentError> {
    check_update_v1(bytes).map_err(|e| DocumentError::Invalid(format!("yrs update: {e}")))?;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut decoder = DecoderV1::from(bytes);
        let update = Update::decode(&mut decoder)?;
        if decoder.read_u8().is_ok() {
            return Err(yrs::encoding::read::Error::UnexpectedValue);
        }
        Ok(update)
    }));
    match result {
        Ok(Ok(update)) => Ok(update),
        Ok(Err(e)) => Err(DocumentError::Invalid(format!("yrs update: {e}"))),
        Err(_) => Err(DocumentError::Invalid(
            "yrs update: decoder panicked".into(),
        )),
    }
}

/// Canonical v1 encoding of a state vector: entries sorted by client.
fn encode_sv(sv: &StateVector) -> Vec<u8> {
    let mut entries: Vec<(u64, u32)> = sv.iter().map(|(c, &k)| (c.get(), k)).collect();
    entries.sort_unstable();
    let mut out = Vec::with_capacity(1 + entries.len() * 6);
    write_uvar(&mut out, entries.len() as u64);
    for (client, clock) in entries {
        write_uvar(&mut out, client);
        write_uvar(&mut out, u64::from(clock));
    }
    out
}

/// Decodes a v1 state vector, bounding the entry count by the input size
/// and rejecting out-of-range values, duplicates and trailing bytes.
fn decode_sv(mut input: &[u8]) -> Result<StateVector, DocumentError> {
    let bad = |what: &str| DocumentError::Invalid(format!("yrs state vector: {what}"));
    let count = read_uvar(&mut input).ok_or_else(|| bad("truncated"))?;
    if count > (input.len() / 2) as u64 {
        return Err(bad("entry count exceeds input"));
    }
    let mut sv = StateVector::default();
    for _ in 0..count {
        let client = read_uvar(&mut input).ok_or_else(|| bad("truncated"))?;
        let clock = read_uvar(&mut input).ok_or_else(|| bad("truncated"))?;
        if client > MAX_CLIENT_ID {
            return Err(bad("client id over 53 bits"));
        }
        let clock = u32::try_from(clock).map_err(|_| bad("clock over 32 bits"))?;
        let client = ClientID::new(client);
        if sv.contains_client(&client) {
            return Err(bad("duplicate client"));
        }
        sv.set_max(client, clock);
    }
    if !input.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(sv)
}

/// Whether any insertion or deletion of `update` lies beyond `sv`, i.e. is
/// held pending rather than integrated.
fn exceeds(update: &Update, sv: &StateVector) -> bool {
    let beyond = |set: &yrs::IdSet| {
        set.iter()
            .any(|(client, ranges)| ranges.iter().any(|r| r.end > sv.get(client)))
    };
    beyond(&update.insertions(true)) || beyond(update.delete_set())
}

impl Document for YrsDocument {
    fn version(&self) -> Vec<u8> {
        encode_sv(&self.doc.transact().state_vector())
    }

    fn delta_since(&self, version: &[u8]) -> Result<Vec<u8>, DocumentError> {
        let sv = decode_sv(version)?;
        // Includes the whole delete set and any pending structs, so the
        // result is correct for any state vector, known to us or not.
        Ok(self.doc.transact().encode_state_as_update_v1(&sv))
    }

    fn apply(&mut self, update: &[u8]) -> ApplyOutcome {
        let decoded = match decode_update(update) {
            Ok(u) => u,
            Err(e) => return ApplyOutcome::Invalid(e),
        };
        let mut txn = self.remote_txn();
        let store = txn.store();
        let had_pending = store.pending_update().is_some() || store.pending_ds().is_some();
        if let Err(e) = txn.apply_update(decoded) {
            return ApplyOutcome::Invalid(DocumentError::Invalid(format!("yrs update: {e}")));
        }
        let changed = txn.has_changes();
        let store = txn.store();
        let pending_now = store.pending_update().is_some() || store.pending_ds().is_some();
        if !pending_now {
            drop(txn);
            self.held = 0;
            return if changed {
                ApplyOutcome::Applied
            } else {
                ApplyOutcome::Duplicate
            };
        }
        // Slow path, only while something is pending: did this update add
        // to what is held?
        let contributes =
            !had_pending || decode_update(update).is_ok_and(|u| exceeds(&u, &txn.state_vector()));
        drop(txn);
        if contributes {
            self.held = self.held.saturating_add(update.len());
            ApplyOutcome::Pending {
                held_bytes: self.held,
            }
        } else if changed {
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::Duplicate
        }
    }

    /// An upper bound: the total size of the updates reported
    /// [`ApplyOutcome::Pending`] since yrs last held nothing.
    fn pending_bytes(&self) -> usize {
        self.held
    }

    fn snapshot(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<(), DocumentError> {
        match self.apply(snapshot) {
            ApplyOutcome::Invalid(e) => Err(e),
            _ => Ok(()),
        }
    }

    fn take_local_update(&mut self) -> Option<Vec<u8>> {
        let mut updates = std::mem::take(
            &mut *self
                .local
                .as_ref()?
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        match updates.len() {
            0 => None,
            1 => updates.pop(),
            _ => Some(
                yrs::merge_updates_v1(&updates)
                    // Our own encodings always merge; should yrs still
                    // refuse, sending everything is correct (if larger).
                    .unwrap_or_else(|_| self.snapshot()),
            ),
        }
    }

    /// The per-client minimum of the state vectors.
    fn common_version(&self, versions: &[&[u8]]) -> Option<Vec<u8>> {
        let (first, rest) = versions.split_first()?;
        let mut common = decode_sv(first).ok()?;
        for v in rest {
            let sv = decode_sv(v).ok()?;
            let mut min = StateVector::default();
            for (client, &clock) in common.iter() {
                let clock = clock.min(sv.get(client));
                if clock > 0 {
                    min.set_max(*client, clock);
                }
            }
            common = min;
        }
        Some(encode_sv(&common))
    }
}

#[cfg(feature = "conformance")]
impl crate::conformance::TextEditor for YrsDocument {
    fn insert(&mut self, pos: usize, text: &str) {
        let t = self.doc.get_or_insert_text(TEXT_NAME);
        let mut txn = self.doc.transact_mut();
        let at = offset(&t, &txn, pos, self.doc.offset_kind());
        yrs::Text::insert(&t, &mut txn, at, text);
    }

    fn delete(&mut self, pos: usize, len: usize) {
        let t = self.doc.get_or_insert_text(TEXT_NAME);
        let mut txn = self.doc.transact_mut();
        let kind = self.doc.offset_kind();
        let start = offset(&t, &txn, pos, kind);
        let end = offset(&t, &txn, pos + len, kind);
        yrs::Text::remove_range(&t, &mut txn, start, end - start);
    }

    fn text(&self) -> String {
        let t = self.doc.get_or_insert_text(TEXT_NAME);
        yrs::GetString::get_string(&t, &self.doc.transact())
    }
}

/// Name of the root text the conformance suite edits.
#[cfg(feature = "conformance")]
const TEXT_NAME: &str = "text";

/// Converts a code-point position to the document's offset kind.
#[cfg(feature = "conformance")]
fn offset<T: ReadTxn>(text: &yrs::TextRef, txn: &T, pos: usize, kind: OffsetKind) -> u32 {
    let s = yrs::GetString::get_string(text, txn);
    if s.is_ascii() {
        return pos as u32;
    }
    let prefix: String = s.chars().take(pos).collect();
    match kind {
        OffsetKind::Bytes => prefix.len() as u32,
        OffsetKind::Utf16 => prefix.encode_utf16().count() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_vector_encoding_is_canonical_and_yrs_compatible() {
        let mut sv = StateVector::default();
        for c in [9u64, 3, 7, 1 << 40] {
            sv.set_max(ClientID::new(c), c as u32 + 1);
        }
        let bytes = encode_sv(&sv);
        let decoded = StateVector::decode_v1(&bytes).unwrap();
        assert_eq!(decoded, sv);
        assert_eq!(decode_sv(&bytes).unwrap(), sv);
        assert_eq!(encode_sv(&decoded), bytes);
        assert!(decode_sv(&[0xff; 9]).is_err());
        assert!(decode_sv(&[0x7f, 1, 2]).is_err());
    }

    #[test]
    fn local_capture_skips_remote_transactions() {
        use yrs::Text;
        let a = YrsDocument::with_client_id(1);
        let mut b = YrsDocument::with_client_id(2);
        a.get_or_insert_text("t")
            .insert(&mut a.transact_mut(), 0, "abc");
        let mut a = a;
        let u = a.take_local_update().unwrap();
        assert_eq!(b.apply(&u), ApplyOutcome::Applied);
        assert_eq!(b.apply(&u), ApplyOutcome::Duplicate);
        assert_eq!(b.take_local_update(), None);
        assert!(matches!(b.apply(b"\xff\xff"), ApplyOutcome::Invalid(_)));
    }

    #[test]
    fn server_copy_applies_like_a_tracked_one_and_reports_no_local_updates() {
        use yrs::{GetString, Text};
        let a = YrsDocument::with_client_id(1);
        let text = a.get_or_insert_text("t");
        let mut updates = Vec::new();
        let mut a = a;
        for (i, s) in ["abc", "de", "f"].iter().enumerate() {
            text.insert(&mut a.transact_mut(), i as u32, s);
            updates.push(a.take_local_update().unwrap());
        }
        let mut tracked = YrsDocument::with_client_id(2);
        let mut server = YrsDocument::server();
        for u in updates.iter().rev() {
            assert_eq!(server.apply(u), tracked.apply(u));
        }
        assert_eq!(server.version(), tracked.version());
        assert_eq!(server.version(), a.version());
        // Native edits on a server copy are in its state but never reported.
        let t = server.get_or_insert_text("t");
        t.insert(&mut server.transact_mut(), 0, "z");
        assert_eq!(server.take_local_update(), None);
        assert!(t.get_string(&server.transact()).starts_with('z'));
    }

    #[test]
    fn default_ids_are_random_and_yjs_safe_and_fixed_ids_are_reduced() {
        let ids: std::collections::BTreeSet<u64> =
            (0..64).map(|_| YrsDocument::new().client_id()).collect();
        assert_eq!(ids.len(), 64);
        assert!(ids.iter().all(|&id| id <= MAX_CLIENT_ID));
        assert!(YrsDocument::server().client_id() <= MAX_CLIENT_ID);
        assert_eq!(
            YrsDocument::with_client_id(u64::MAX).client_id(),
            MAX_CLIENT_ID
        );
    }
}
