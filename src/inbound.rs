//! Turning received bytes into messages: framing for the transport kind, and
//! reassembly of fragmented messages.
//!
//! What a connection can make its receive side hold, and for how long:
//! - before the handshake (including the rest of the input that carries
//!   the `Hello`), frames of at most [`Limits::max_handshake_frame_len`]
//!   (on the wire and inflated), and no fragmented message at all;
//! - after it, one partial frame (stream framing: at most twice the bytes
//!   received, never more than the frame) and one fragmented message of at
//!   most [`Limits::max_message_len`], all connections of a server together
//!   at most [`Limits::max_reassembly_bytes`] of them (when that is full,
//!   the largest holders give way to a smaller message: see
//!   [`ReassemblyBudget`]);
//! - each incomplete input carries the time its first byte came, so its
//!   owner can close a session that does not complete it in time.

use crate::time::Instant;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thiserror::Error;

use crate::Limits;
use crate::wire::compress::InflateScratch;
use crate::wire::{
    DocId, FrameError, Message, StreamReader, decode_frame, grown_capacity, single_update,
};

/// How the transport delimits frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Framing {
    /// Each `handle_input` call carries exactly one frame (a WebSocket
    /// binary message, a QUIC datagram...): the transport keeps the
    /// boundaries.
    #[default]
    Datagram,
    /// Input is a byte stream split anywhere (TCP, pipes).
    Stream,
}

/// Received bytes that cannot be turned into messages. Fatal to the session.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum InboundError {
    /// The frame layer refused the bytes.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A fragment does not continue the message being reassembled.
    #[error("fragment out of order: {0}")]
    BadFragment(&'static str),
    /// A reassembled message would exceed `max_message_len`.
    #[error("fragmented message of {len} bytes exceeds the limit of {limit}")]
    MessageTooLarge {
        /// Declared size.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A reassembled message does not decode.
    #[error("reassembled message does not decode: {0}")]
    Decode(postcard::Error),
    /// A `Fragment` arrived before the handshake completed: a peer not yet
    /// authenticated may not make the server reassemble anything.
    #[error("fragment before the handshake")]
    FragmentBeforeHandshake,
    /// Fragmented messages being reassembled on this server already hold
    /// [`Limits::max_reassembly_bytes`], and this connection's was the
    /// larger: either its fragment found no larger holder to give way, or
    /// it was the largest holder and gave way to a smaller message.
    #[error("fragmented messages already hold the server's {limit} bytes for reassembly")]
    ReassemblyFull {
        /// The limit.
        limit: usize,
    },
}

/// Bytes of fragmented messages being reassembled by the sessions sharing
/// it (a hub's), against [`Limits::max_reassembly_bytes`]. Each partial
/// message charges the capacity of its buffer, under its owner's key, as it
/// grows, and gives it back when dropped (completed, refused, or with its
/// session), so the count cannot drift whatever way a session ends.
///
/// When a reservation would pass the limit, the holders that hold more
/// than the requester would after it are revoked, largest first, until it
/// fits (their owners are listed by [`ReassemblyBudget::take_revoked`], to
/// be closed); if none does, the requester is refused. So a peer holding
/// the budget cannot cost a peer whose message is smaller than its own.
#[derive(Debug)]
pub(crate) struct ReassemblyBudget {
    limit: usize,
    charges: Arc<Mutex<Charges>>,
}

/// What the partial messages of a budget hold. Locked for a few map
/// operations and one reservation; a poisoned lock is recovered (every
/// update leaves the counts consistent before anything that could panic).
/// A lock rather than a `RefCell` only because a hub must be `Send` (the
/// transports move it into a task); one thread drives a hub, so it is
/// never contended, and only fragmented messages touch it.
#[derive(Debug, Default)]
struct Charges {
    /// Sum of `by_owner`.
    held: usize,
    /// Each holder's charge (an owner has at most one partial message).
    by_owner: BTreeMap<u64, usize>,
    /// The same charges ordered by size: the largest holder in `O(log n)`.
    by_size: BTreeSet<(usize, u64)>,
    /// Owners whose charge was revoked and who have not been closed yet.
    revoked: Vec<u64>,
}

impl Charges {
    fn set(&mut self, owner: u64, charge: usize) {
        self.remove(owner);
        self.by_owner.insert(owner, charge);
        self.by_size.insert((charge, owner));
        self.held = self.held.saturating_add(charge);
    }

    /// Forgets `owner`'s charge, returning it (0 if it had none).
    fn remove(&mut self, owner: u64) -> usize {
        let Some(charge) = self.by_owner.remove(&owner) else {
            return 0;
        };
        self.by_size.remove(&(charge, owner));
        self.held = self.held.saturating_sub(charge);
        charge
    }

    /// The largest holder other than `owner`.
    fn largest_other(&self, owner: u64) -> Option<(usize, u64)> {
        self.by_size
            .iter()
            .rev()
            .find(|(_, o)| *o != owner)
            .copied()
    }
}

fn lock(charges: &Mutex<Charges>) -> MutexGuard<'_, Charges> {
    // The counts are consistent between operations: usable if poisoned.
    charges.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ReassemblyBudget {
    pub(crate) fn new(limit: usize) -> Self {
        ReassemblyBudget {
            limit,
            charges: Arc::default(),
        }
    }

    /// Bytes held now by every partial message charged to this budget.
    pub(crate) fn held(&self) -> usize {
        lock(&self.charges).held
    }

    /// The owners whose partial message lost its charge to a smaller one
    /// since the last call: the caller closes them (their buffers are
    /// released with their sessions; until then they are refused more).
    pub(crate) fn take_revoked(&self) -> Vec<u64> {
        std::mem::take(&mut lock(&self.charges).revoked)
    }
}

/// Where a partial message is charged: a budget, and the key its owner is
/// known by there (a hub's connection id).
#[derive(Clone, Copy)]
pub(crate) struct Charge<'a> {
    pub(crate) budget: &'a ReassemblyBudget,
    pub(crate) owner: u64,
}

/// A fragmented message being reassembled (boxed: a session that has none
/// pays one pointer).
struct Partial {
    id: u32,
    total: u64,
    data: Vec<u8>,
    /// When its first fragment came (`None`: the owner keeps no clock).
    since: Option<Instant>,
    /// Where `data`'s capacity is charged, if anywhere, and under which key.
    budget: Option<(Arc<Mutex<Charges>>, u64)>,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some((charges, owner)) = &self.budget {
            lock(charges).remove(*owner);
        }
    }
}

impl Partial {
    /// Makes room for `additional` more bytes: doubling as `Vec` does but
    /// never past `total`, and charged to the budget first, revoking larger
    /// holders' charges if that is what makes it fit.
    fn reserve(
        &mut self,
        additional: usize,
        charge: Option<Charge<'_>>,
    ) -> Result<(), InboundError> {
        let total = usize::try_from(self.total).unwrap_or(usize::MAX);
        let target = grown_capacity(self.data.len(), self.data.capacity(), additional, total);
        if target <= self.data.capacity() {
            return Ok(());
        }
        let Some(Charge { budget, owner }) = charge else {
            self.data.reserve_exact(target - self.data.len());
            return Ok(());
        };
        let full = InboundError::ReassemblyFull {
            limit: budget.limit,
        };
        let mut charges = lock(&budget.charges);
        let charged = charges.by_owner.get(&owner).copied();
        if charged.is_none() && self.budget.is_some() {
            // Revoked: its owner is about to be closed.
            return Err(full);
        }
        let extra = target - charged.unwrap_or(0);
        while charges.held.saturating_add(extra) > budget.limit {
            match charges.largest_other(owner) {
                Some((size, victim)) if size > target => {
                    charges.remove(victim);
                    charges.revoked.push(victim);
                }
                _ => return Err(full),
            }
        }
        self.data.reserve_exact(target - self.data.len());
        charges.set(owner, self.data.capacity());
        drop(charges);
        self.budget
            .get_or_insert_with(|| (Arc::clone(&budget.charges), owner));
        Ok(())
    }
}

/// A stream's partial frame and when its first byte came (boxed: see
/// [`Decoder`]).
#[derive(Default)]
struct Stream {
    reader: StreamReader,
    since: Option<Instant>,
}

enum Decoder {
    /// Nothing is kept between frames.
    Datagram,
    /// Boxed: the partial frame's buffer and header, which every WebSocket
    /// session would otherwise carry.
    Stream(Box<Stream>),
}

/// What governs one input beyond the limits (a server's rules; a client
/// applies none of them).
#[derive(Clone, Copy)]
pub(crate) struct Rules<'a> {
    /// The handshake is not complete: every frame of the input is held to
    /// [`Limits::max_handshake_frame_len`] and fragments are refused. This
    /// covers frames after a `Hello` in the same input too: the `Hello` is
    /// not accepted yet, and a client waits for `Welcome` before sending
    /// more.
    pub(crate) handshake: bool,
    /// When the input came: incomplete input begun now is stamped with it.
    pub(crate) now: Option<Instant>,
    /// Where fragmented messages charge their buffers.
    pub(crate) budget: Option<Charge<'a>>,
}

impl Rules<'_> {
    /// No handshake limits, no clock, no shared budget.
    pub(crate) const NONE: Rules<'static> = Rules {
        handshake: false,
        now: None,
        budget: None,
    };
}

/// `limits` narrowed to what is accepted before the handshake.
fn handshake_limits(limits: &Limits) -> Limits {
    let max = limits.max_handshake_frame_len;
    Limits {
        max_frame_len: limits.max_frame_len.min(max),
        max_decompressed_len: limits.max_decompressed_len.min(max),
        ..*limits
    }
}

/// A session's receive side. The limits and the memory to inflate frames
/// with are the caller's, lent to each call: a hub keeps them once for all
/// its sessions, so that an idle connection holds none of them (the inflate
/// state and buffer alone are 10 to 74 KiB once a compressed frame came).
pub(crate) struct Inbound {
    decoder: Decoder,
    partial: Option<Box<Partial>>,
}

impl Inbound {
    pub(crate) fn new(framing: Framing) -> Self {
        let decoder = match framing {
            Framing::Datagram => Decoder::Datagram,
            Framing::Stream => Decoder::Stream(Box::default()),
        };
        Inbound {
            decoder,
            partial: None,
        }
    }

    /// Bytes held for incomplete input: the capacity of the partial frame's
    /// buffer and of the fragmented message's.
    pub(crate) fn buffered(&self) -> usize {
        let frame = match &self.decoder {
            Decoder::Datagram => 0,
            Decoder::Stream(d) => d.reader.capacity(),
        };
        frame + self.partial.as_ref().map_or(0, |p| p.data.capacity())
    }

    /// Bytes of incomplete input actually received: a partial frame's and a
    /// fragmented message's, without the room reserved for more.
    pub(crate) fn received(&self) -> usize {
        let frame = match &self.decoder {
            Decoder::Datagram => 0,
            Decoder::Stream(d) => d.reader.buffered(),
        };
        frame + self.partial.as_ref().map_or(0, |p| p.data.len())
    }

    /// When the oldest incomplete input (a partial frame or fragmented
    /// message) began, if it was stamped.
    pub(crate) fn incomplete_since(&self) -> Option<Instant> {
        let frame = match &self.decoder {
            Decoder::Datagram => None,
            Decoder::Stream(d) => d.since,
        };
        let message = self.partial.as_ref().and_then(|p| p.since);
        frame.into_iter().chain(message).min()
    }

    /// Whether part of a frame or of a fragmented message is held.
    pub(crate) fn is_incomplete(&self) -> bool {
        self.partial.is_some()
            || matches!(&self.decoder, Decoder::Stream(d) if !d.reader.at_frame_start())
    }

    /// Drops whatever incomplete input is held (the session is closed: no
    /// more input will complete it).
    pub(crate) fn discard(&mut self) {
        if let Decoder::Stream(d) = &mut self.decoder {
            **d = Stream::default();
        }
        self.partial = None;
    }

    /// Heap bytes held between inputs: the stream reader and its partial
    /// frame, and a fragmented message being reassembled. Nothing for
    /// inflating: that memory is lent by the caller.
    pub(crate) fn held(&self) -> usize {
        let frame = match &self.decoder {
            Decoder::Datagram => 0,
            Decoder::Stream(d) => core::mem::size_of::<Stream>() + d.reader.capacity(),
        };
        let partial = self
            .partial
            .as_ref()
            .map_or(0, |p| core::mem::size_of::<Partial>() + p.data.capacity());
        frame + partial
    }

    /// What [`Inbound::held`] counts for a stream with nothing buffered.
    #[cfg(test)]
    pub(crate) const STREAM_STATE: usize = core::mem::size_of::<Stream>();

    /// `bytes` as one borrowed `Update` when it is a whole frame holding
    /// just that (with stream framing: when nothing of an earlier frame is
    /// buffered); see [`single_update`].
    pub(crate) fn single_update<'a>(
        &self,
        bytes: &'a [u8],
        limits: &Limits,
    ) -> Option<(DocId, u64, &'a [u8])> {
        match &self.decoder {
            Decoder::Datagram => single_update(bytes, limits),
            // A read holding exactly one whole frame (a small update on a
            // quiet stream) takes the same path; anything else is decoded
            // the stream's way.
            Decoder::Stream(d) if d.reader.at_frame_start() => single_update(bytes, limits),
            Decoder::Stream(_) => None,
        }
    }

    /// [`Inbound::feed_with`] under no [`Rules`], returning how many whole,
    /// valid frames `bytes` completed (liveness counts these, not bytes: a
    /// frame that never completes must not keep a connection alive).
    pub(crate) fn feed_frames(
        &mut self,
        bytes: &[u8],
        limits: &Limits,
        inflate: &mut InflateScratch,
        out: &mut Vec<Message>,
    ) -> Result<usize, InboundError> {
        self.feed_with(bytes, limits, Rules::NONE, inflate, out)
    }

    /// Decodes `bytes`, appending complete messages to `out`, and returns
    /// how many whole valid frames they held (a frame holding only a
    /// fragment counts: it is whole). Messages decoded before an error are
    /// appended too (they were valid and checksummed).
    ///
    /// Decodes straight into `out` (no buffer of its own: a session keeps no
    /// allocation here between inputs) and then replaces the fragments with
    /// the messages they complete.
    pub(crate) fn feed_with(
        &mut self,
        bytes: &[u8],
        limits: &Limits,
        rules: Rules<'_>,
        inflate: &mut InflateScratch,
        out: &mut Vec<Message>,
    ) -> Result<usize, InboundError> {
        let start = out.len();
        let narrow = rules.handshake.then(|| handshake_limits(limits));
        let frame_limits = narrow.as_ref().unwrap_or(limits);
        let mut frames = 0;
        let decoded = match &mut self.decoder {
            Decoder::Datagram => {
                let decoded = decode_frame(bytes, frame_limits, inflate, out);
                if decoded.is_ok() {
                    frames = 1;
                }
                decoded
            }
            Decoder::Stream(d) => {
                let mut input = bytes;
                let decoded = loop {
                    match d.reader.decode(&mut input, frame_limits, inflate, out) {
                        Ok(true) => frames += 1,
                        Ok(false) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                // A partial frame left now began in this input if a frame
                // completed in it, else it is the one held before.
                d.since = if d.reader.at_frame_start() {
                    None
                } else if frames > 0 {
                    rules.now
                } else {
                    d.since.or(rules.now)
                };
                decoded
            }
        };
        if out[start..]
            .iter()
            .any(|m| matches!(m, Message::Fragment { .. }))
        {
            let tail: Vec<Message> = out.drain(start..).collect();
            for msg in tail {
                match msg {
                    Message::Fragment {
                        id,
                        offset,
                        total,
                        data,
                    } => {
                        if rules.handshake {
                            return Err(InboundError::FragmentBeforeHandshake);
                        }
                        match reassemble(
                            &mut self.partial,
                            limits.max_message_len,
                            id,
                            offset,
                            total,
                            &data.0,
                            rules,
                        ) {
                            Ok(Some(m)) => out.push(m),
                            Ok(None) => {}
                            Err(e) => {
                                // Nothing will complete it now.
                                self.partial = None;
                                return Err(e);
                            }
                        }
                    }
                    other => out.push(other),
                }
            }
        }
        decoded?;
        Ok(frames)
    }
}

fn reassemble(
    slot: &mut Option<Box<Partial>>,
    limit: u64,
    id: u32,
    offset: u64,
    total: u64,
    data: &[u8],
    rules: Rules<'_>,
) -> Result<Option<Message>, InboundError> {
    if total > limit {
        return Err(InboundError::MessageTooLarge { len: total, limit });
    }
    let partial = match slot {
        Some(p) => {
            if p.id != id || p.total != total {
                return Err(InboundError::BadFragment("interleaved fragmented messages"));
            }
            p
        }
        None => {
            if offset != 0 {
                return Err(InboundError::BadFragment("first fragment not at offset 0"));
            }
            // `total` was checked against the limit above; grow as data comes
            // rather than trusting it for one large reservation.
            slot.insert(Box::new(Partial {
                id,
                total,
                data: Vec::new(),
                since: rules.now,
                budget: None,
            }))
        }
    };
    if offset != partial.data.len() as u64 {
        return Err(InboundError::BadFragment("gap or overlap"));
    }
    if offset + data.len() as u64 > total {
        return Err(InboundError::BadFragment("fragment past declared total"));
    }
    partial.reserve(data.len(), rules.budget)?;
    partial.data.extend_from_slice(data);
    if (partial.data.len() as u64) < total {
        return Ok(None);
    }
    let Some(done) = slot.take() else {
        return Ok(None);
    };
    match postcard::from_bytes::<Message>(&done.data) {
        Ok(Message::Fragment { .. }) => Err(InboundError::BadFragment("nested fragment")),
        Ok(m) => Ok(Some(m)),
        Err(e) => Err(InboundError::Decode(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Bytes, Encoder};

    fn fragment(id: u32, offset: u64, len: usize, total: u64) -> Vec<u8> {
        let msg = Message::Fragment {
            id,
            offset,
            total,
            data: Bytes(vec![0; len]),
        };
        let mut out = Vec::new();
        Encoder::new(&Limits::default())
            .encode(&[msg], &mut out)
            .unwrap();
        out
    }

    /// Server rules after the handshake, charging `owner`'s fragments to
    /// `budget`.
    fn charged(budget: &ReassemblyBudget, owner: u64) -> Rules<'_> {
        Rules {
            budget: Some(Charge { budget, owner }),
            ..Rules::NONE
        }
    }

    /// A partial message charges its buffer's capacity to the budget and
    /// gives it back however it goes: refused, or dropped with its owner.
    #[test]
    fn the_budget_is_given_back_whatever_happens() {
        let limits = Limits::default();
        let budget = ReassemblyBudget::new(1 << 20);
        let rules = |owner| charged(&budget, owner);
        let mut inflate = InflateScratch::default();
        let mut out = Vec::new();
        let mut a = Inbound::new(Framing::Datagram);
        let mut b = Inbound::new(Framing::Stream);
        for k in 0..3 {
            let f = fragment(1, k * 1000, 1000, 100_000);
            assert_eq!(
                a.feed_with(&f, &limits, rules(1), &mut inflate, &mut out),
                Ok(1)
            );
            assert_eq!(
                b.feed_with(&f, &limits, rules(2), &mut inflate, &mut out),
                Ok(1)
            );
        }
        assert!(out.is_empty());
        assert!(a.buffered() >= 3000 && a.buffered() <= 6000);
        assert_eq!(budget.held(), a.buffered() + b.buffered());
        // Another message interleaved: refused, and its room given back.
        let bad = fragment(2, 0, 10, 100);
        let refused = a.feed_with(&bad, &limits, rules(1), &mut inflate, &mut out);
        assert!(matches!(refused, Err(InboundError::BadFragment(_))));
        assert_eq!(a.buffered(), 0);
        assert_eq!(budget.held(), b.buffered());
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    /// A reservation that would pass the budget takes the room of the
    /// largest holder when it holds more than the requester would, and is
    /// refused otherwise; the counts stay exact either way.
    #[test]
    fn the_largest_holder_gives_way_to_a_smaller_message() {
        let limits = Limits::default();
        let budget = ReassemblyBudget::new(64 << 10);
        let rules = |owner| charged(&budget, owner);
        let mut inflate = InflateScratch::default();
        let mut out = Vec::new();
        let mut big = Inbound::new(Framing::Datagram);
        let mut small = Inbound::new(Framing::Datagram);
        let mut same = Inbound::new(Framing::Datagram);
        for k in 0..12 {
            let f = fragment(1, k * 4096, 4096, 60_000);
            big.feed_with(&f, &limits, rules(1), &mut inflate, &mut out)
                .unwrap();
        }
        assert_eq!(budget.held(), big.buffered());
        assert!(big.buffered() > 48 << 10);
        // 16 KiB of a 20 KiB message does not fit beside it: `big` loses its
        // charge (its owner closes it), and gives nothing back twice.
        for k in 0..4 {
            let f = fragment(1, k * 4096, 4096, 20_000);
            small
                .feed_with(&f, &limits, rules(2), &mut inflate, &mut out)
                .unwrap();
        }
        assert_eq!(budget.take_revoked(), [1]);
        assert!(budget.take_revoked().is_empty());
        assert_eq!(budget.held(), small.buffered());
        drop(big);
        assert_eq!(budget.held(), small.buffered());
        // A message as large as the largest holder's is refused, not swapped.
        for k in 0..12 {
            let f = fragment(1, k * 4096, 4096, 60_000);
            let fed = same.feed_with(&f, &limits, rules(3), &mut inflate, &mut out);
            if fed.is_err() {
                assert!(matches!(fed, Err(InboundError::ReassemblyFull { .. })));
                break;
            }
        }
        assert!(budget.take_revoked().is_empty());
        assert_eq!(budget.held(), small.buffered());
        drop(small);
        assert_eq!(budget.held(), 0);
    }

    /// With no budget (a client) a message is still reassembled in a
    /// buffer that grows with what came.
    #[test]
    fn reassembly_grows_with_what_came() {
        let limits = Limits::default();
        let mut inflate = InflateScratch::default();
        let mut out = Vec::new();
        let mut inbound = Inbound::new(Framing::Datagram);
        let f = fragment(1, 0, 100, 64 << 20);
        inbound
            .feed_frames(&f, &limits, &mut inflate, &mut out)
            .unwrap();
        assert!(inbound.buffered() <= 200, "{}", inbound.buffered());
    }
}
