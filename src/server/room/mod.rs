//! Rooms: one per open document, holding what is per document and not per
//! connection: its subscribers (connection id and that connection's handle
//! for it, sorted so fan-out encodes once per handle), and its place in the
//! rooms table's lifecycle ([`Rooms`]: a room closes once its last
//! subscriber left and the linger ended, and the registry is told to
//! unload the document). A room names sessions by [`ConnId`] only.
//!
//! The CRDT calls the hub makes for a room go through [`guarded`]: a
//! document whose CRDT panics fails alone, not the server.

use crate::time::Instant;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::outbound::encode_broadcast_shared;
use crate::wire::DocId;
use crate::wire::hot::broadcast_len;

use super::ConnId;

mod rooms;

pub(crate) use rooms::Rooms;

/// A CRDT call panicked: the document it was made on is failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Panicked;

/// Runs `op`, a call into a document's CRDT, catching a panic: CRDT code
/// is not ours, and a bug in it must cost its document, not the server.
/// The caller stops touching the document after [`Panicked`] (its state may
/// be half-updated: `AssertUnwindSafe` is sound because nothing reads it
/// again).
#[inline]
pub(crate) fn guarded<T>(op: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(op)).map_err(|_| Panicked)
}

/// The hub's own number for a room (an open document): a slot, reused
/// once the document leaves. Never on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DocIndex(pub(crate) u32);

impl DocIndex {
    /// The key of the server-wide tables that name documents by a [`DocId`]
    /// (presence, resumable transfers): the index, which no connection
    /// sees. Such entries must not outlive the document's slot.
    pub(crate) fn key(self) -> DocId {
        DocId(self.0)
    }

    /// The index behind a [`DocIndex::key`].
    pub(crate) fn from_key(key: DocId) -> Self {
        DocIndex(key.0)
    }
}

/// One open document: who subscribes to it, under which handles, and
/// when it leaves once nobody does. Holds connection ids only, never a
/// session, so a room can live apart from the sessions (another thread).
pub(crate) struct Room {
    pub(crate) name: Arc<str>,
    pub(crate) subscribers: Subscribers,
    /// When the document leaves, if nobody subscribes again before.
    /// `None` while subscribed (or never, per the policy).
    pub(super) unload_at: Option<Instant>,
    /// The connection whose leaving started the linger, while the
    /// document counts against its lingering allowance.
    pub(super) charged_to: Option<ConnId>,
}

/// The connections subscribed to a document with their handles for it,
/// sorted by handle then connection: recipients sharing a handle (most
/// do: connections number their few documents from 0) are adjacent, and
/// fan-out encodes once per run. A vector, not a B-tree: every update walks
/// it, while joins and leaves are rare.
#[derive(Default)]
pub(crate) struct Subscribers(Vec<(DocId, ConnId)>);

impl Subscribers {
    pub(crate) fn insert(&mut self, conn: ConnId, handle: DocId) {
        if let Err(i) = self.0.binary_search(&(handle, conn)) {
            self.0.insert(i, (handle, conn));
        }
    }

    pub(crate) fn remove(&mut self, conn: ConnId, handle: DocId) {
        if let Ok(i) = self.0.binary_search(&(handle, conn)) {
            self.0.remove(i);
        }
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(handle, connection)` pairs, grouped by handle.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (DocId, ConnId)> + '_ {
        self.0.iter().copied()
    }

    /// The subscribers in runs of one handle each.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (DocId, &[(DocId, ConnId)])> + '_ {
        self.0
            .chunk_by(|a, b| a.0 == b.0)
            .map(|run| (run[0].0, run))
    }
}

/// One run of a fan-out ([`Room::fan_out`]): the subscribers that know
/// the document under one handle, and the `Broadcast` for them.
pub(crate) struct Delivery<'a> {
    /// The recipients' handle for the document.
    pub(crate) handle: DocId,
    run: &'a [(DocId, ConnId)],
    /// The sender, when it is in this run (it gets its `Ack`, not its own
    /// update back).
    skip: Option<ConnId>,
    /// The `Broadcast` encoded once for the run's recipients, when there
    /// are several; a single recipient gets it encoded straight into its
    /// queue.
    pub(crate) shared: Option<Arc<[u8]>>,
    /// The encoded `Broadcast`'s length (what each recipient's queue takes).
    pub(crate) len: usize,
}

impl Delivery<'_> {
    /// The recipients of this run, the sender left out.
    #[inline]
    pub(crate) fn recipients(&self) -> impl Iterator<Item = ConnId> + '_ {
        let skip = self.skip;
        self.run
            .iter()
            .map(|&(_, c)| c)
            .filter(move |c| Some(*c) != skip)
    }
}

impl Room {
    /// The deliveries of `data`, an update `from` sent under its handle
    /// `doc`, to every other subscriber: one per distinct handle among
    /// them (usually one), each encoded once.
    #[inline]
    pub(crate) fn fan_out<'a>(
        &'a self,
        from: ConnId,
        doc: DocId,
        data: &'a [u8],
    ) -> impl Iterator<Item = Delivery<'a>> + 'a {
        self.subscribers.runs().filter_map(move |(handle, run)| {
            // Runs are sorted by connection: the sender is found by search.
            let sender = handle == doc && run.binary_search(&(doc, from)).is_ok();
            let recipients = run.len() - usize::from(sender);
            if recipients == 0 {
                return None;
            }
            let shared = (recipients > 1).then(|| encode_broadcast_shared(handle, data));
            let len = shared
                .as_ref()
                .map_or_else(|| broadcast_len(handle, data), |e| e.len());
            Some(Delivery {
                handle,
                run,
                skip: sender.then_some(from),
                shared,
                len,
            })
        })
    }

    /// A room for `name` with no subscribers.
    pub(crate) fn new(name: Arc<str>) -> Self {
        Room {
            name,
            subscribers: Subscribers::default(),
            unload_at: None,
            charged_to: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_crdt_call_is_caught() {
        assert_eq!(guarded(|| 7), Ok(7));
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let caught = guarded(|| -> u8 { panic!("a CRDT bug") });
        std::panic::set_hook(hook);
        assert_eq!(caught, Err(Panicked));
    }

    fn room(subscribers: &[(u64, u32)]) -> Room {
        let mut room = Room::new("doc".into());
        for &(conn, handle) in subscribers {
            room.subscribers.insert(ConnId(conn), DocId(handle));
        }
        room
    }

    #[test]
    fn fan_out_encodes_once_per_handle_and_skips_the_sender() {
        let room = room(&[(1, 0), (2, 0), (3, 0), (4, 1), (5, 2), (6, 2)]);
        let data = b"update";
        let runs: Vec<(u32, Vec<u64>, bool)> = room
            .fan_out(ConnId(1), DocId(0), data)
            .map(|d| {
                let to = d.recipients().map(|c| c.0).collect();
                (d.handle.0, to, d.shared.is_some())
            })
            .collect();
        // Handle 0: the sender left out, two recipients share one
        // encoding; handle 1: one recipient, encoded into its queue.
        assert_eq!(
            runs,
            [
                (0, vec![2, 3], true),
                (1, vec![4], false),
                (2, vec![5, 6], true)
            ]
        );
        for d in room.fan_out(ConnId(1), DocId(0), data) {
            let mut expected = Vec::new();
            crate::wire::hot::encode_broadcast(d.handle, data, &mut expected);
            assert_eq!(d.len, expected.len());
            if let Some(shared) = &d.shared {
                assert_eq!(&shared[..], &expected[..]);
            }
        }
    }

    #[test]
    fn a_sender_alone_under_its_handle_gets_nothing() {
        let room = room(&[(1, 0)]);
        assert_eq!(room.fan_out(ConnId(1), DocId(0), b"x").count(), 0);
        // The same connection id under another handle is another run.
        let room = room_two();
        let to: Vec<u64> = room
            .fan_out(ConnId(1), DocId(0), b"x")
            .flat_map(|d| d.recipients().map(|c| c.0).collect::<Vec<_>>())
            .collect();
        assert_eq!(to, [2]);
    }

    fn room_two() -> Room {
        room(&[(1, 0), (2, 3)])
    }

    #[test]
    fn subscribers_run_by_handle() {
        let mut s = Subscribers::default();
        for (conn, handle) in [(3, 0), (1, 1), (2, 0), (4, 1), (5, 2)] {
            s.insert(ConnId(conn), DocId(handle));
        }
        let runs: Vec<(u32, Vec<u64>)> = s
            .runs()
            .map(|(h, run)| (h.0, run.iter().map(|(_, c)| c.0).collect()))
            .collect();
        assert_eq!(runs, [(0, vec![2, 3]), (1, vec![1, 4]), (2, vec![5])]);
        s.remove(ConnId(3), DocId(0));
        s.remove(ConnId(3), DocId(1)); // not under that handle
        assert_eq!(s.len(), 4);
    }
}
