//! The bounded queue of messages a session sends, and their framing.
//!
//! Messages are encoded when they are queued, so a message fanned out to many
//! sessions is encoded once and its bytes shared ([`Queue::push_shared`]).
//! Frames are built when the caller drains: consecutive messages are batched
//! into one frame up to the peer's frame and message-count limits, so small
//! updates do not each pay a header. A message too large for one frame is
//! split into [`Message::Fragment`]s.
//!
//! Over 800 lines with its unit tests, which sit here because they check the
//! queue's private accounting (bytes, messages, fragment envelopes).
//!
//! A queue's bounds and the spare buffers it encodes into are kept by its
//! owner, not by the queue ([`Common`]): a hub lends one to all its
//! sessions, so steady traffic allocates nothing while an idle connection
//! holds no buffer and no copy of the limits.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::Limits;
use crate::wire::compress::deflate;
use crate::wire::frame::{CRC_LEN, FLAG_DEFLATE, Header, MAX_HEADER_LEN, checksum};
use crate::wire::hot;
use crate::wire::{Bytes, Compression, DocId, EncodeError, Message, PeerLimits};

/// Bytes of envelope a `Fragment` adds around its data, at most.
const FRAGMENT_OVERHEAD: usize = 32;

/// Which bound a message is held to.
///
/// Every message a server queues counts against its session's bounds
/// (`max_outbound_bytes`, `max_outbound_messages`); the priority says how
/// close to them it may go and what a refusal means. Only a final `Close`
/// passes them: at most one per session, and short
/// ([`MAX_CLOSE_TEXT`]), so a queue never holds more than its limit plus
/// one `Close`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Updates and other bulk: refused when the queue is full.
    Data,
    /// What the peer may not miss (acks, `Opened`, `SyncDone`, pongs,
    /// errors answering its own requests): refused when the queue is full,
    /// like data. A server then closes the session as a slow consumer: its
    /// peer sends requests but does not read the answers.
    Reply,
    /// Presence and application messages: refused past the high-water mark
    /// (half the bounds), so they never crowd out what may not be dropped.
    Ephemeral,
    /// Always queued: a server session's final `Close` (the reserve above
    /// the bounds), and a client's own control messages (its outbox is
    /// bounded instead).
    Control,
}

/// Longest detail text of a `Close` a server queues (longer text is cut):
/// the `Close` is the one message allowed past a queue's bound.
pub(crate) const MAX_CLOSE_TEXT: usize = 256;

/// The queue refused a message because it is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueFull;

enum Body {
    Own(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Body {
    fn bytes(&self) -> &[u8] {
        match self {
            Body::Own(v) => v,
            Body::Shared(a) => a,
        }
    }
}

struct Item {
    body: Body,
    msgs: u32,
}

/// The queue of items: the first inline, the rest in a deque.
///
/// A live connection usually holds one item between drains, and an idle one
/// none: neither allocates here. The deque exists only during bursts and is
/// released when it empties (an idle connection keeps no room for
/// messages).
#[derive(Default)]
struct Items {
    first: Option<Item>,
    rest: VecDeque<Item>,
}

impl Items {
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn front(&self) -> Option<&Item> {
        self.first.as_ref()
    }

    fn back_mut(&mut self) -> Option<&mut Item> {
        match self.rest.back_mut() {
            Some(last) => Some(last),
            None => self.first.as_mut(),
        }
    }

    fn push_back(&mut self, item: Item) {
        if self.first.is_none() {
            self.first = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    fn pop_front(&mut self) -> Option<Item> {
        let item = self.first.take()?;
        if !self.rest.is_empty() {
            self.first = self.rest.pop_front();
            if self.rest.is_empty() {
                self.rest = VecDeque::new();
            }
        }
        Some(item)
    }

    fn iter(&self) -> impl Iterator<Item = &Item> {
        self.first.iter().chain(self.rest.iter())
    }
}

/// A session's outgoing messages, encoded, waiting to be framed. Its
/// bounds and message buffers are the caller's [`Common`].
pub(crate) struct Queue {
    items: Items,
    bytes: usize,
    // Counts in u32 (a queue bounded far below 4 G messages): a session
    // is kept per idle connection, and every word shows.
    msgs: u32,
    /// Ours or the peer's, whichever is smaller.
    max_frame_len: u32,
    compression: Compression,
    next_fragment: u32,
}

impl Queue {
    pub(crate) fn new(limits: &Limits) -> Self {
        Queue {
            items: Items::default(),
            bytes: 0,
            msgs: 0,
            max_frame_len: limits.max_frame_len,
            compression: Compression::None,
            next_fragment: 0,
        }
    }

    /// Applies what the handshake negotiated.
    pub(crate) fn negotiate(&mut self, peer: PeerLimits, compression: Compression) {
        self.max_frame_len = self.max_frame_len.min(peer.max_frame_len);
        self.compression = compression;
    }

    /// Drops everything queued (a new transport starts empty).
    pub(crate) fn reset(&mut self, limits: &Limits) {
        *self = Queue::new(limits);
    }

    /// Queued bytes (encoded message bodies).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queued messages.
    pub(crate) fn len(&self) -> usize {
        self.msgs as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether `extra` more bytes of data would still fit.
    pub(crate) fn has_room(&self, extra: usize, common: &Common) -> bool {
        self.admits(extra, 1, Priority::Data, common)
    }

    /// Whether `extra` more bytes would stay below the high-water mark (half
    /// the bounds), where ephemeral messages stop.
    pub(crate) fn below_high_water(&self, extra: usize, common: &Common) -> bool {
        self.admits(extra, 1, Priority::Ephemeral, common)
    }

    /// Whether `extra` more bytes in `msgs` messages may be queued with
    /// `priority`: one comparison of each bound.
    #[inline]
    fn admits(&self, extra: usize, msgs: u32, priority: Priority, common: &Common) -> bool {
        let (max_bytes, max_msgs) = match priority {
            Priority::Data | Priority::Reply => (common.max_bytes, common.max_msgs),
            Priority::Ephemeral => (common.max_bytes / 2, common.max_msgs / 2),
            Priority::Control => return true,
        };
        self.bytes.saturating_add(extra) <= max_bytes && self.msgs.saturating_add(msgs) <= max_msgs
    }

    /// Whether a message of `size` encoded bytes may be queued with
    /// `priority`, counted with its fragment envelopes when it is split.
    #[inline]
    fn admit(&self, size: usize, priority: Priority, common: &Common) -> Result<(), QueueFull> {
        let (bytes, msgs) = self.cost(size, common);
        if self.admits(bytes, msgs, priority, common) {
            Ok(())
        } else {
            Err(QueueFull)
        }
    }

    /// The bytes and messages a message of `size` encoded bytes adds: more
    /// than `size` when it is split into fragments.
    fn cost(&self, size: usize, common: &Common) -> (usize, u32) {
        if size <= self.max_body() {
            return (size, 1);
        }
        let pieces = size.div_ceil(self.max_chunk(common));
        (
            size.saturating_add(pieces.saturating_mul(FRAGMENT_OVERHEAD)),
            u32::try_from(pieces).unwrap_or(u32::MAX),
        )
    }

    fn max_body(&self) -> usize {
        (self.max_frame_len as usize).saturating_sub(MAX_HEADER_LEN + CRC_LEN)
    }

    /// Largest payload for a message that must fit one frame (sync chunks),
    /// and small enough that a drained queue always has room for one.
    pub(crate) fn max_chunk(&self, common: &Common) -> usize {
        self.max_body()
            .saturating_sub(FRAGMENT_OVERHEAD)
            .min(common.max_bytes / 4)
            .max(1)
    }

    /// Encodes and queues `msg`.
    pub(crate) fn push(
        &mut self,
        msg: &Message,
        priority: Priority,
        common: &mut Common,
    ) -> Result<(), QueueFull> {
        let size = crate::wire::message_len(msg).unwrap_or(usize::MAX);
        self.push_with(size, priority, common, |out| encode_into(msg, out))
    }

    /// Queues `Message::Broadcast { doc, data }`, encoded from the borrowed
    /// payload (no message built).
    pub(crate) fn push_broadcast(
        &mut self,
        doc: DocId,
        data: &[u8],
        common: &mut Common,
    ) -> Result<(), QueueFull> {
        let size = hot::broadcast_len(doc, data);
        self.push_with(size, Priority::Data, common, |out| {
            hot::encode_broadcast(doc, data, out)
        })
    }

    /// Queues `Message::Ack { doc, applied, durable }` (a [`Priority::Reply`]),
    /// encoded without building the message.
    pub(crate) fn push_ack(
        &mut self,
        doc: DocId,
        applied: u64,
        durable: u64,
        common: &mut Common,
    ) -> Result<(), QueueFull> {
        let size = hot::ack_len(doc, applied, durable);
        self.push_with(size, Priority::Reply, common, |out| {
            hot::encode_ack(doc, applied, durable, out)
        })
    }

    /// Queues a message of `size` encoded bytes that `encode` appends.
    fn push_with(
        &mut self,
        size: usize,
        priority: Priority,
        common: &mut Common,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), QueueFull> {
        self.admit(size, priority, common)?;
        if size > self.max_body() {
            let mut encoded = Vec::with_capacity(size);
            encode(&mut encoded);
            self.push_fragments(&encoded, common);
            return Ok(());
        }
        let max_body = self.max_body();
        let max_per_frame = common.max_msgs_per_frame;
        // Append to the last own item when it still fits one frame: fewer
        // allocations for runs of small messages.
        if let Some(Item {
            body: Body::Own(tail),
            msgs,
        }) = self.items.back_mut()
            && tail.len() + size <= max_body
            && *msgs < max_per_frame
        {
            encode(tail);
            *msgs += 1;
        } else {
            let mut v = common.take(size);
            encode(&mut v);
            self.items.push_back(Item {
                body: Body::Own(v),
                msgs: 1,
            });
        }
        self.bytes += size;
        self.msgs += 1;
        Ok(())
    }

    /// Queues bytes encoded once for many queues, as [`Priority::Data`].
    pub(crate) fn push_shared(
        &mut self,
        encoded: &Arc<[u8]>,
        common: &Common,
    ) -> Result<(), QueueFull> {
        self.push_shared_with(encoded, Priority::Data, common)
    }

    /// Queues bytes encoded once for many queues, held to `priority`'s
    /// bound.
    pub(crate) fn push_shared_with(
        &mut self,
        encoded: &Arc<[u8]>,
        priority: Priority,
        common: &Common,
    ) -> Result<(), QueueFull> {
        self.admit(encoded.len(), priority, common)?;
        if encoded.len() > self.max_body() {
            self.push_fragments(encoded, common);
            return Ok(());
        }
        self.bytes += encoded.len();
        self.msgs += 1;
        self.items.push_back(Item {
            body: Body::Shared(Arc::clone(encoded)),
            msgs: 1,
        });
        Ok(())
    }

    fn push_fragments(&mut self, encoded: &[u8], common: &Common) {
        let id = self.next_fragment;
        self.next_fragment = self.next_fragment.wrapping_add(1);
        let chunk = self.max_chunk(common);
        let total = encoded.len() as u64;
        for (i, piece) in encoded.chunks(chunk).enumerate() {
            let frag = Message::Fragment {
                id,
                offset: (i * chunk) as u64,
                total,
                data: Bytes(piece.to_vec()),
            };
            let mut v = Vec::with_capacity(piece.len() + FRAGMENT_OVERHEAD);
            encode_into(&frag, &mut v);
            self.bytes += v.len();
            self.msgs += 1;
            self.items.push_back(Item {
                body: Body::Own(v),
                msgs: 1,
            });
        }
    }

    /// Builds the next frame from the front of the queue (the tests' way;
    /// sessions use [`Queue::poll_frame_into`]).
    #[cfg(test)]
    pub(crate) fn poll_frame(&mut self, common: &mut Common) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.poll_frame_into(&mut out, common).then_some(out)
    }

    /// Appends the next frame to `out` (which may hold earlier frames);
    /// `false` when the queue is empty. The drained buffers go back to
    /// `common`, so a caller reusing `out` sends without allocating.
    pub(crate) fn poll_frame_into(&mut self, out: &mut Vec<u8>, common: &mut Common) -> bool {
        let start = out.len();
        // The common case on a live connection: one item, sent plain (a
        // larger one goes the general way, which compresses where
        // negotiated).
        if self.items.rest.is_empty()
            && let Some(first) = &self.items.first
            && first.body.bytes().len() < common.threshold
            && let Some(item) = self.items.first.take()
        {
            let body = item.body.bytes();
            self.bytes -= body.len();
            self.msgs -= item.msgs;
            frame_start(out, body.len());
            out.extend_from_slice(body);
            seal(out, start);
            common.give(item.body);
            return true;
        }
        let Some(first) = self.items.front() else {
            return false;
        };
        let max_body = self.max_body();
        let mut count = 1;
        let mut body_len = first.body.bytes().len();
        let mut msgs = first.msgs;
        for item in self.items.iter().skip(1) {
            let len = item.body.bytes().len();
            if body_len + len > max_body || msgs + item.msgs > common.max_msgs_per_frame {
                break;
            }
            body_len += len;
            msgs += item.msgs;
            count += 1;
        }
        self.bytes -= body_len;
        self.msgs -= msgs;

        if self.compression == Compression::Deflate && body_len >= common.threshold {
            // The bodies are gathered where the frame goes (no buffer of
            // our own kept between frames), then replaced by their
            // compressed form, or given a plain header in front.
            for _ in 0..count {
                let Some(item) = self.items.pop_front() else {
                    break;
                };
                out.extend_from_slice(item.body.bytes());
                common.give(item.body);
            }
            let packed = deflate(&out[start..]);
            if packed.len() < body_len {
                let header = Header {
                    flags: FLAG_DEFLATE,
                    body_len: packed.len() as u32,
                    raw_len: body_len as u32,
                    header_len: 0,
                };
                out.truncate(start);
                out.reserve(MAX_HEADER_LEN + packed.len() + CRC_LEN);
                header.write(out);
                out.extend_from_slice(&packed);
            } else {
                // Not worth it: the gathered bytes go uncompressed.
                let mut head = Vec::with_capacity(MAX_HEADER_LEN);
                plain_header(body_len).write(&mut head);
                out.splice(start..start, head);
            }
            seal(out, start);
            return true;
        }
        // Copy the bodies straight from the queue into the frame: no
        // intermediate collection of the drained items.
        frame_start(out, body_len);
        for _ in 0..count {
            let Some(item) = self.items.pop_front() else {
                break;
            };
            out.extend_from_slice(item.body.bytes());
            common.give(item.body);
        }
        seal(out, start);
        true
    }

    /// Items the deque behind the first has room for.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.items.rest.capacity()
    }

    /// Heap bytes the queue holds: its deque and its own message buffers.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        let own = self.items.iter().map(|i| match &i.body {
            Body::Own(v) => v.capacity(),
            Body::Shared(_) => 0,
        });
        own.sum::<usize>() + self.capacity() * std::mem::size_of::<Item>()
    }
}

/// A queue with its own [`Common`] and one spare buffer: a client
/// session's (one connection, so there is nothing to share them with).
pub(crate) struct Outbound {
    queue: Queue,
    common: Common,
}

impl Outbound {
    pub(crate) fn new(limits: &Limits) -> Self {
        Outbound {
            queue: Queue::new(limits),
            common: Common::new(limits, usize::MAX, 1),
        }
    }

    /// [`Queue::negotiate`]; frame bodies from `threshold` bytes are
    /// compressed when `compression` says so.
    pub(crate) fn negotiate(
        &mut self,
        peer: PeerLimits,
        compression: Compression,
        threshold: usize,
    ) {
        self.queue.negotiate(peer, compression);
        self.common.threshold = threshold;
    }

    /// [`Queue::reset`] (the spare buffer is kept).
    pub(crate) fn reset(&mut self, limits: &Limits) {
        self.queue.reset(limits);
    }

    /// [`Queue::bytes`].
    pub(crate) fn bytes(&self) -> usize {
        self.queue.bytes()
    }

    /// [`Queue::has_room`].
    pub(crate) fn has_room(&self, extra: usize) -> bool {
        self.queue.has_room(extra, &self.common)
    }

    /// [`Queue::push`].
    pub(crate) fn push(&mut self, msg: &Message, priority: Priority) -> Result<(), QueueFull> {
        self.queue.push(msg, priority, &mut self.common)
    }

    /// [`Queue::poll_frame_into`].
    pub(crate) fn poll_frame_into(&mut self, out: &mut Vec<u8>) -> bool {
        self.queue.poll_frame_into(out, &mut self.common)
    }
}

/// What the queues of one owner have in common, kept once rather than in
/// every queue: their bounds, and spare message buffers lent to them as they
/// encode and given back as they drain (steady traffic then encodes without
/// allocating). A hub keeps one for all its sessions, so an idle connection
/// holds no buffer and no copy of the limits; a client session keeps its
/// own.
pub(crate) struct Common {
    max_bytes: usize,
    max_msgs: u32,
    max_msgs_per_frame: u32,
    /// Frame bodies from this size are compressed, where negotiated.
    threshold: usize,
    /// Allocated once with room for as many as are kept: `give` never
    /// grows it.
    spares: Vec<Vec<u8>>,
}

impl Common {
    /// The bounds of `limits`, compression from `threshold` bytes, and at
    /// most `spares` spare buffers.
    pub(crate) fn new(limits: &Limits, threshold: usize, spares: usize) -> Self {
        Common {
            max_bytes: limits.max_outbound_bytes,
            max_msgs: u32::try_from(limits.max_outbound_messages).unwrap_or(u32::MAX),
            max_msgs_per_frame: limits.max_messages_per_frame,
            threshold,
            spares: Vec::with_capacity(spares),
        }
    }

    /// A buffer with room for `size` bytes: a spare one when there is one.
    #[inline]
    fn take(&mut self, size: usize) -> Vec<u8> {
        match self.spares.pop() {
            Some(mut v) => {
                v.reserve(size);
                v
            }
            None => Vec::with_capacity(size.max(64)),
        }
    }

    /// Keeps a drained body's buffer, unless enough are kept or it is
    /// large (one big message must not pin its memory).
    #[inline(always)]
    fn give(&mut self, body: Body) {
        if let Body::Own(mut v) = body
            && self.spares.len() < self.spares.capacity()
            && v.capacity() <= SPARE_MAX
        {
            v.clear();
            self.spares.push(v);
        }
    }

    /// Spare buffers kept.
    #[cfg(test)]
    pub(crate) fn spares(&self) -> usize {
        self.spares.len()
    }
}

/// Largest buffer kept for reuse.
const SPARE_MAX: usize = 4096;

/// Appends a plain frame header for `body_len` bytes of body, reserving
/// room for the whole frame.
fn frame_start(out: &mut Vec<u8>, body_len: usize) {
    out.reserve(MAX_HEADER_LEN + body_len + CRC_LEN);
    plain_header(body_len).write(out);
}

/// The header of an uncompressed body of `body_len` bytes.
fn plain_header(body_len: usize) -> Header {
    Header {
        flags: 0,
        body_len: body_len as u32,
        raw_len: body_len as u32,
        header_len: 0,
    }
}

/// Appends the CRC of the frame that starts at `out[start]`.
fn seal(out: &mut Vec<u8>, start: usize) {
    let crc = checksum(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

pub(crate) fn encode_into(msg: &Message, out: &mut Vec<u8>) {
    // Serializing our own well-formed messages into a Vec cannot fail.
    let r: Result<(), EncodeError> = crate::wire::encode_message(msg, out);
    debug_assert!(r.is_ok());
}

/// Encodes one message into shared bytes for fan-out.
/// `Message::Broadcast { doc, data }` encoded once for many queues.
pub(crate) fn encode_broadcast_shared(doc: DocId, data: &[u8]) -> Arc<[u8]> {
    let mut v = Vec::with_capacity(hot::broadcast_len(doc, data));
    hot::encode_broadcast(doc, data, &mut v);
    v.into()
}

pub(crate) fn encode_shared(msg: &Message) -> Arc<[u8]> {
    let mut v = Vec::new();
    encode_into(msg, &mut v);
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{DocId, MessageDecoder};

    /// What a queue of `limits` needs, with one spare buffer.
    fn common(limits: &Limits) -> Common {
        Common::new(limits, usize::MAX, 1)
    }

    fn decode(frame: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        MessageDecoder::new(Limits::default())
            .decode(frame, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn batches_small_messages_into_one_frame() {
        let (mut q, mut sp) = (Queue::new(&Limits::default()), common(&Limits::default()));
        for t in 0..10 {
            q.push(&Message::Ping { t }, Priority::Data, &mut sp)
                .unwrap();
        }
        let shared = encode_shared(&Message::Pong { echo: 9 });
        q.push_shared(&shared, &sp).unwrap();
        let frame = q.poll_frame(&mut sp).unwrap();
        assert!(q.poll_frame(&mut sp).is_none());
        assert_eq!(q.bytes(), 0);
        let msgs = decode(&frame);
        assert_eq!(msgs.len(), 11);
        assert_eq!(msgs[10], Message::Pong { echo: 9 });
    }

    #[test]
    fn deflate_falls_back_to_plain_when_it_does_not_pay() {
        let (mut q, mut sp) = (Queue::new(&Limits::default()), common(&Limits::default()));
        q.negotiate(Limits::default().peer_limits(), Compression::Deflate);
        sp.threshold = 64;
        // Pseudo-random bytes do not compress; several items share the frame.
        let mut x = 0x9E37_79B9_u32;
        let mut noise = || {
            (0..300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect::<Vec<u8>>()
        };
        let msgs: Vec<Message> = (0..3)
            .map(|i| Message::Broadcast {
                doc: DocId(i),
                data: Bytes(noise()),
            })
            .collect();
        q.push(&msgs[0], Priority::Data, &mut sp).unwrap();
        q.push_shared(&encode_shared(&msgs[1]), &sp).unwrap();
        q.push(&msgs[2], Priority::Data, &mut sp).unwrap();
        let frame = q.poll_frame(&mut sp).unwrap();
        assert!(q.poll_frame(&mut sp).is_none());
        assert_eq!(frame[0] & FLAG_DEFLATE, 0, "sent uncompressed");
        assert_eq!(decode(&frame), msgs);
    }

    #[test]
    fn a_large_compressed_frame_leaves_no_large_buffer_behind() {
        let (mut q, mut sp) = (Queue::new(&Limits::default()), common(&Limits::default()));
        q.negotiate(Limits::default().peer_limits(), Compression::Deflate);
        sp.threshold = 64;
        let big = Message::Broadcast {
            doc: DocId(0),
            data: Bytes(vec![7; 200_000]),
        };
        q.push(&big, Priority::Data, &mut sp).unwrap();
        let frame = q.poll_frame(&mut sp).unwrap();
        assert!(frame.len() < 10_000, "compressed");
        assert_eq!(decode(&frame), vec![big]);
        // Nothing but small spare buffers is kept for the next frame.
        assert!(sp.spares.iter().all(|v| v.capacity() <= SPARE_MAX));
    }

    #[test]
    fn one_item_at_a_time_allocates_no_queue_and_a_drained_burst_keeps_none() {
        let (mut q, mut sp) = (Queue::new(&Limits::default()), common(&Limits::default()));
        q.push(&Message::Ping { t: 1 }, Priority::Data, &mut sp)
            .unwrap();
        assert_eq!(q.capacity(), 0, "a single item is kept inline");
        assert!(q.poll_frame(&mut sp).is_some());
        for t in 0..10 {
            q.push_shared(&encode_shared(&Message::Pong { echo: t }), &sp)
                .unwrap();
        }
        assert!(q.capacity() > 0, "a burst uses the deque");
        let frame = q.poll_frame(&mut sp).unwrap();
        assert_eq!(decode(&frame).len(), 10, "in order, one frame");
        assert!(q.poll_frame(&mut sp).is_none());
        assert_eq!(q.capacity(), 0);
        assert_eq!(sp.spares(), 1, "the Ping's buffer is spare");
    }

    /// Queues sharing spares take buffers as they encode and give them
    /// back as they drain: the same buffers serve again, and no more than
    /// the bound are kept.
    #[test]
    fn queues_sharing_spares_reuse_their_buffers_and_keep_at_most_the_bound() {
        let mut sp = Common::new(&Limits::default(), usize::MAX, 2);
        let mut queues: Vec<Queue> = (0..3).map(|_| Queue::new(&Limits::default())).collect();
        let mut round = |sp: &mut Common| {
            for (i, q) in queues.iter_mut().enumerate() {
                q.push_ack(DocId(0), i as u64, 0, sp).unwrap();
            }
            let mut out = Vec::new();
            for q in &mut queues {
                assert!(q.poll_frame_into(&mut out, sp));
            }
            assert_eq!(sp.spares(), 2, "at most two kept");
        };
        round(&mut sp);
        let kept: Vec<*const u8> = sp.spares.iter().map(|v| v.as_ptr()).collect();
        round(&mut sp);
        let mut again: Vec<*const u8> = sp.spares.iter().map(|v| v.as_ptr()).collect();
        again.sort();
        let mut kept = kept;
        kept.sort();
        assert_eq!(kept, again, "the spares were used again");
    }

    /// A client's queue keeps its one spare buffer itself.
    #[test]
    fn a_client_queue_keeps_one_spare_of_its_own() {
        let mut q = Outbound::new(&Limits::default());
        for t in 0..3 {
            q.push(&Message::Ping { t }, Priority::Control).unwrap();
            let mut out = Vec::new();
            assert!(q.poll_frame_into(&mut out));
            assert_eq!(decode(&out), vec![Message::Ping { t }]);
            assert_eq!(q.common.spares(), 1);
        }
        assert_eq!(q.bytes(), 0);
    }

    /// A queue is kept per idle connection: 136 bytes when it held a spare
    /// buffer and a copy of its bounds.
    #[test]
    fn a_queue_stays_small() {
        let size = std::mem::size_of::<Queue>();
        assert!(size <= 88, "Queue of {size} bytes");
    }

    #[test]
    fn bounded_in_bytes_but_control_always_fits() {
        let limits = Limits {
            max_outbound_bytes: 100,
            ..Limits::default()
        };
        let (mut q, mut sp) = (Queue::new(&limits), common(&limits));
        let big = Message::Broadcast {
            doc: DocId(0),
            data: Bytes(vec![0; 90]),
        };
        q.push(&big, Priority::Data, &mut sp).unwrap();
        assert_eq!(q.push(&big, Priority::Data, &mut sp), Err(QueueFull));
        q.push(&Message::Ping { t: 0 }, Priority::Control, &mut sp)
            .unwrap();
        assert_eq!(q.len(), 2);
    }

    /// Replies count against the full bound, ephemeral messages against
    /// half of it; a fragmented message is counted with its envelopes, so
    /// nothing but a `Close` ever takes a queue past its limit.
    #[test]
    fn replies_and_ephemeral_messages_are_bounded_too() {
        let limits = Limits {
            max_outbound_bytes: 4000,
            max_frame_len: 1024,
            ..Limits::default()
        };
        let (mut q, mut sp) = (Queue::new(&limits), common(&limits));
        let msg = |n: usize| Message::Broadcast {
            doc: DocId(0),
            data: Bytes(vec![1; n]),
        };
        // Ephemeral: up to half.
        while q.push(&msg(100), Priority::Ephemeral, &mut sp).is_ok() {}
        assert!(q.bytes() <= 2000 && q.bytes() > 1800, "{}", q.bytes());
        assert_eq!(
            q.push_shared_with(&encode_shared(&msg(60)), Priority::Ephemeral, &sp),
            Err(QueueFull)
        );
        // Replies: up to the limit, acks included.
        while q.push(&msg(100), Priority::Reply, &mut sp).is_ok() {}
        assert!(q.bytes() <= 4000);
        while q.push_ack(DocId(0), 1, 1, &mut sp).is_ok() {}
        assert!(q.bytes() <= 4000 && q.bytes() > 3990, "{}", q.bytes());
        // A fragmented message that would pass the limit is refused whole.
        let mut empty = Queue::new(&limits);
        assert_eq!(
            empty.push(&msg(3990), Priority::Reply, &mut sp),
            Err(QueueFull),
            "3990 bytes fit, not with their fragment envelopes"
        );
        assert_eq!(empty.bytes(), 0);
        empty.push(&msg(3800), Priority::Reply, &mut sp).unwrap();
        assert!(empty.bytes() <= 4000 && empty.len() > 1);
        // The Close always fits.
        q.push(&Message::Ping { t: 0 }, Priority::Control, &mut sp)
            .unwrap();
    }

    #[test]
    fn oversized_message_is_fragmented_into_frames_within_the_limit() {
        let limits = Limits {
            max_frame_len: 1024,
            ..Limits::default()
        };
        let (mut q, mut sp) = (Queue::new(&limits), common(&limits));
        let big = Message::Broadcast {
            doc: DocId(0),
            data: Bytes((0..5000u32).map(|i| i as u8).collect()),
        };
        q.push(&big, Priority::Data, &mut sp).unwrap();
        let mut reassembled = Vec::new();
        while let Some(frame) = q.poll_frame(&mut sp) {
            assert!(frame.len() <= 1024);
            for m in decode(&frame) {
                match m {
                    Message::Fragment { offset, data, .. } => {
                        assert_eq!(offset as usize, reassembled.len());
                        reassembled.extend_from_slice(&data);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        let back: Message = postcard::from_bytes(&reassembled).unwrap();
        assert_eq!(back, big);
    }
}
