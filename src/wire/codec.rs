//! Encoding messages into frames and decoding them back.
//!
//! - [`Encoder`] appends one frame holding one or more messages to a
//!   caller-provided buffer.
//! - [`MessageDecoder`] decodes one frame per call, for message transports
//!   (one WebSocket message = one frame).
//! - [`StreamDecoder`] decodes frames from a byte stream (TCP, pipes) however
//!   the stream is split, holding at most one partial frame.

use postcard::ser_flavors::Flavor;

use super::compress::{InflateScratch, deflate};
use super::frame::{CRC_LEN, FLAG_DEFLATE, Header, checksum};
use super::hot;
use super::{Compression, DocId, EncodeError, FrameError, Message, PeerLimits};
use crate::Limits;

/// Default body size from which a frame is deflated (when negotiated).
pub const DEFAULT_COMPRESS_THRESHOLD: usize = 1024;

/// Writes frames.
///
/// ```
/// use crdt_socket_sync::wire::{Encoder, Message, MessageDecoder};
/// use crdt_socket_sync::Limits;
///
/// let mut encoder = Encoder::new(&Limits::default());
/// let mut frame = Vec::new();
/// encoder.encode(&[Message::Ping { t: 42 }], &mut frame).unwrap();
///
/// let mut decoder = MessageDecoder::new(Limits::default());
/// let mut out = Vec::new();
/// decoder.decode(&frame, &mut out).unwrap();
/// assert_eq!(out, vec![Message::Ping { t: 42 }]);
/// ```
#[derive(Debug, Clone)]
pub struct Encoder {
    max_frame_len: u32,
    max_decompressed_len: u32,
    max_messages: u32,
    compression: Compression,
    compress_threshold: usize,
    scratch: Vec<u8>,
}

impl Encoder {
    /// An encoder producing frames within `limits`, uncompressed.
    pub fn new(limits: &Limits) -> Self {
        Encoder {
            max_frame_len: limits.max_frame_len,
            max_decompressed_len: limits.max_decompressed_len,
            max_messages: limits.max_messages_per_frame,
            compression: Compression::None,
            compress_threshold: DEFAULT_COMPRESS_THRESHOLD,
            scratch: Vec::new(),
        }
    }

    /// Uses `compression` for bodies of at least `threshold` bytes. Only call
    /// this with what the handshake negotiated.
    pub fn set_compression(&mut self, compression: Compression, threshold: usize) {
        self.compression = compression;
        self.compress_threshold = threshold;
    }

    /// Lowers the frame size, and the body size that may be deflated, to
    /// what the peer announced it accepts.
    pub fn apply_peer_limits(&mut self, peer: PeerLimits) {
        self.max_frame_len = self.max_frame_len.min(peer.max_frame_len);
        self.max_decompressed_len = self.max_decompressed_len.min(peer.max_decompressed_len);
    }

    /// The largest frame this encoder will produce.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Bytes one frame holding `messages` would need before compression:
    /// `(body_len, frame_len)`.
    pub fn measure(&self, messages: &[Message]) -> Result<(usize, usize), EncodeError> {
        let mut body = 0usize;
        for m in messages {
            body += message_len(m)?;
        }
        let frame = Header::encoded_len(0, clamp_u32(body), 0) + body + CRC_LEN;
        Ok((body, frame))
    }

    /// Appends one frame holding `messages` (in order) to `out` and returns
    /// the frame's length. On error `out` is left as it was.
    pub fn encode(
        &mut self,
        messages: &[Message],
        out: &mut Vec<u8>,
    ) -> Result<usize, EncodeError> {
        if messages.is_empty() {
            return Err(EncodeError::Empty);
        }
        if messages.len() > self.max_messages as usize {
            return Err(EncodeError::TooManyMessages {
                limit: self.max_messages,
            });
        }
        let (body_len, frame_len) = self.measure(messages)?;
        let start = out.len();
        // A body larger than the peer inflates is sent plain (if it fits).
        if self.compression == Compression::Deflate
            && body_len >= self.compress_threshold
            && body_len <= self.max_decompressed_len as usize
        {
            self.scratch.clear();
            self.scratch.reserve(body_len);
            for m in messages {
                serialize_into(m, &mut self.scratch)?;
            }
            let packed = deflate(&self.scratch);
            if packed.len() < body_len {
                let header = Header {
                    flags: FLAG_DEFLATE,
                    body_len: clamp_u32(packed.len()),
                    raw_len: clamp_u32(body_len),
                    header_len: Header::encoded_len(
                        FLAG_DEFLATE,
                        clamp_u32(packed.len()),
                        clamp_u32(body_len),
                    ),
                };
                self.check_len(header.frame_len())?;
                out.reserve(header.frame_len());
                header.write(out);
                out.extend_from_slice(&packed);
                return Ok(finish(out, start));
            }
        }
        self.check_len(frame_len)?;
        out.reserve(frame_len);
        let header = Header {
            flags: 0,
            body_len: clamp_u32(body_len),
            raw_len: clamp_u32(body_len),
            header_len: 0,
        };
        header.write(out);
        for m in messages {
            if let Err(e) = serialize_into(m, out) {
                out.truncate(start);
                return Err(e);
            }
        }
        Ok(finish(out, start))
    }

    fn check_len(&self, len: usize) -> Result<(), EncodeError> {
        if len as u64 > u64::from(self.max_frame_len) {
            return Err(EncodeError::TooLarge {
                len: len as u64,
                limit: self.max_frame_len,
            });
        }
        Ok(())
    }
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Appends the CRC of `out[start..]` and returns the frame length.
fn finish(out: &mut Vec<u8>, start: usize) -> usize {
    let crc = checksum(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// A postcard flavor appending to an existing `Vec` with bulk copies.
struct Append<'a>(&'a mut Vec<u8>);

impl Flavor for Append<'_> {
    type Output = ();
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn serialize_into(m: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if hot::encode(m, out) {
        return Ok(());
    }
    postcard::serialize_with_flavor(m, Append(out)).map_err(EncodeError::Encode)
}

/// The encoded size of one message body.
pub(crate) fn message_len(m: &Message) -> Result<usize, EncodeError> {
    match hot::encoded_len(m) {
        Some(n) => Ok(n),
        None => postcard::experimental::serialized_size(m).map_err(EncodeError::Encode),
    }
}

/// Appends the body encoding (postcard) of one message to `out`, without a
/// frame around it. Frames are concatenations of such bodies.
///
/// ```
/// use crdt_socket_sync::wire::{encode_message, Message};
/// let mut body = Vec::new();
/// encode_message(&Message::Ping { t: 5 }, &mut body).unwrap();
/// assert_eq!(postcard::from_bytes::<Message>(&body).unwrap(), Message::Ping { t: 5 });
/// ```
pub fn encode_message(m: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    serialize_into(m, out)
}

/// The shared part of both decoders: verify, inflate (into `inflate`, lent
/// by the caller) and decode one complete frame whose header was already
/// parsed.
fn read_frame(
    frame: &[u8],
    header: &Header,
    limits: &Limits,
    inflate: &mut InflateScratch,
    out: &mut Vec<Message>,
) -> Result<(), FrameError> {
    debug_assert_eq!(frame.len(), header.frame_len());
    let (covered, crc) = frame.split_at(frame.len() - CRC_LEN);
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = checksum(covered);
    if expected != actual {
        return Err(FrameError::ChecksumMismatch { expected, actual });
    }
    let body = &covered[header.header_len..];
    if !header.is_deflated() {
        return decode_messages(body, limits, out);
    }
    // The declared size was checked against the limit in Header::parse.
    inflate.inflate_then(body, header.raw_len as usize, |raw| {
        decode_messages(raw, limits, out)
    })
}

/// Largest partial-frame buffer a stream decoder keeps between frames: a
/// session is kept per connection, and one large frame that arrived in
/// pieces must not pin its size on an idle connection. Small frames split
/// by the network reuse it; a large one allocates its own (copying it costs
/// more than the allocation).
const KEEP_PARTIAL_CAPACITY: usize = 4 * 1024;

/// The capacity a buffer of `len` bytes and `capacity` should have to take
/// `additional` more: unchanged if they fit, else grown as `Vec` grows (at
/// least doubling, so appending costs amortized O(1)) but never past `cap`
/// (unless the bytes themselves need more). A buffer grown this way holds
/// at most twice what it received, and never more than the `cap` it is
/// known to need.
pub(crate) fn grown_capacity(len: usize, capacity: usize, additional: usize, cap: usize) -> usize {
    let need = len.saturating_add(additional);
    if need <= capacity {
        return capacity;
    }
    need.max(capacity.saturating_mul(2)).min(cap.max(need))
}

/// Makes room in `buf` for `additional` more bytes ([`grown_capacity`]).
fn grow_within(buf: &mut Vec<u8>, additional: usize, cap: usize) {
    let target = grown_capacity(buf.len(), buf.capacity(), additional, cap);
    if target > buf.capacity() {
        buf.reserve_exact(target - buf.len());
    }
}

/// Decodes the messages of a verified, inflated frame body. On error nothing
/// is appended to `out`.
///
/// `max_messages_per_frame` counts what the receiver pays for: a message
/// carrying a list (`UpdateBatch`, `RelayPush`) counts one per element. The
/// count a list declares is checked before the list is decoded, so a frame
/// of four million empty updates is refused before one is materialised.
fn decode_messages(
    mut body: &[u8],
    limits: &Limits,
    out: &mut Vec<Message>,
) -> Result<(), FrameError> {
    let before = out.len();
    let limit = limits.max_messages_per_frame;
    let too_many = |out: &mut Vec<Message>| {
        out.truncate(before);
        Err(FrameError::TooManyMessages { limit })
    };
    let mut count = 0u32;
    while !body.is_empty() {
        let left = u64::from(limit - count);
        if left == 0 {
            return too_many(out);
        }
        // Live traffic skips serde; anything else (or anything unusual)
        // goes to postcard.
        let (m, rest) = match hot::decode(body) {
            // Hot messages carry no list: each counts one.
            Some(decoded) => decoded,
            None => {
                if hot::declared_elements(body).is_some_and(|n| n > left) {
                    return too_many(out);
                }
                match postcard::take_from_bytes::<Message>(body) {
                    Ok(decoded) => decoded,
                    Err(e) => {
                        out.truncate(before);
                        return Err(FrameError::Decode(e));
                    }
                }
            }
        };
        let cost = match &m {
            Message::UpdateBatch { data, .. } => data.len().max(1),
            Message::RelayPush { blobs, .. } => blobs.len().max(1),
            _ => 1,
        };
        if cost as u64 > left {
            return too_many(out);
        }
        out.push(m);
        body = rest;
        count += cost as u32;
    }
    Ok(())
}

/// Decodes one frame per call: for transports that preserve message
/// boundaries, such as WebSocket.
#[derive(Debug)]
pub struct MessageDecoder {
    limits: Limits,
    inflate: InflateScratch,
}

impl MessageDecoder {
    /// A decoder refusing anything outside `limits`.
    pub fn new(limits: Limits) -> Self {
        MessageDecoder {
            limits,
            inflate: InflateScratch::default(),
        }
    }

    /// Decodes `frame`, which must be exactly one frame, appending its
    /// messages to `out`. On error nothing is appended.
    pub fn decode(&mut self, frame: &[u8], out: &mut Vec<Message>) -> Result<(), FrameError> {
        decode_frame(frame, &self.limits, &mut self.inflate, out)
    }
}

/// [`MessageDecoder::decode`] with the limits and the inflate scratch passed
/// in: a message transport's decoder has no state of its own between
/// frames, so a server session keeps none (a copy of the limits would cost
/// an idle connection 136 bytes, the inflate scratch 10 to 74 KiB).
pub(crate) fn decode_frame(
    frame: &[u8],
    limits: &Limits,
    inflate: &mut InflateScratch,
    out: &mut Vec<Message>,
) -> Result<(), FrameError> {
    let header = match Header::parse(frame, limits)? {
        Some(h) => h,
        None => return Err(FrameError::Truncated { needed: 1 }),
    };
    let len = header.frame_len();
    if frame.len() < len {
        return Err(FrameError::Truncated {
            needed: len - frame.len(),
        });
    }
    if frame.len() > len {
        return Err(FrameError::TrailingBytes(frame.len() - len));
    }
    read_frame(frame, &header, limits, inflate, out)
}

/// If `frame` is a valid plain frame carrying exactly one `Update`, its
/// `(doc, seq, data)` borrowed from `frame`: the hot path of a server, which
/// then needs no allocation to apply and forward it. `None` means "decode it
/// with [`MessageDecoder::decode`]" (which also reports any error).
pub(crate) fn single_update<'a>(
    frame: &'a [u8],
    limits: &Limits,
) -> Option<(DocId, u64, &'a [u8])> {
    let header = Header::parse(frame, limits).ok()??;
    if header.is_deflated() || header.frame_len() != frame.len() {
        return None;
    }
    let (covered, crc) = frame.split_at(frame.len() - CRC_LEN);
    if checksum(covered).to_le_bytes() != crc {
        return None;
    }
    hot::single_update(&covered[header.header_len..])
}

/// Decodes frames from a byte stream, however it is split.
///
/// It consumes input only up to the end of the current frame and buffers at
/// most one partial frame, whose size was checked against the limits before
/// any memory was reserved for it. Errors are fatal to the stream: after one,
/// drop the connection (the decoder resets its buffer).
///
/// ```
/// use crdt_socket_sync::wire::{Encoder, Message, StreamDecoder};
/// use crdt_socket_sync::Limits;
///
/// let mut stream = Vec::new();
/// let mut encoder = Encoder::new(&Limits::default());
/// encoder.encode(&[Message::Ping { t: 1 }], &mut stream).unwrap();
/// encoder.encode(&[Message::Pong { echo: 1 }], &mut stream).unwrap();
///
/// let mut decoder = StreamDecoder::new(Limits::default());
/// let mut out = Vec::new();
/// for chunk in stream.chunks(3) {
///     let mut input = chunk;
///     while decoder.decode(&mut input, &mut out).unwrap() {}
/// }
/// assert_eq!(out, vec![Message::Ping { t: 1 }, Message::Pong { echo: 1 }]);
/// ```
#[derive(Debug)]
pub struct StreamDecoder {
    limits: Limits,
    reader: StreamReader,
    inflate: InflateScratch,
}

impl StreamDecoder {
    /// A decoder refusing anything outside `limits`.
    pub fn new(limits: Limits) -> Self {
        StreamDecoder {
            limits,
            reader: StreamReader::default(),
            inflate: InflateScratch::default(),
        }
    }

    /// Bytes of an incomplete frame currently buffered.
    pub fn buffered(&self) -> usize {
        self.reader.buffered()
    }

    /// Consumes bytes from `input` until one frame is complete, decodes it
    /// into `out` and returns `true`; returns `false` once `input` is used up
    /// without completing a frame. Call it in a loop until it returns
    /// `false`.
    pub fn decode(
        &mut self,
        input: &mut &[u8],
        out: &mut Vec<Message>,
    ) -> Result<bool, FrameError> {
        self.reader
            .decode(input, &self.limits, &mut self.inflate, out)
    }
}

/// A [`StreamDecoder`] without its limits and inflate scratch, which the
/// caller passes to each call (see [`decode_frame`]): what remains is the
/// partial frame.
#[derive(Debug, Default)]
pub(crate) struct StreamReader {
    partial: Vec<u8>,
    header: Option<Header>,
}

impl StreamReader {
    /// [`StreamDecoder::buffered`].
    pub(crate) fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Bytes allocated for the partial frame.
    pub(crate) fn capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// Nothing of a frame is held back: the next input starts a frame.
    pub(crate) fn at_frame_start(&self) -> bool {
        self.partial.is_empty() && self.header.is_none()
    }

    /// [`StreamDecoder::decode`].
    pub(crate) fn decode(
        &mut self,
        input: &mut &[u8],
        limits: &Limits,
        inflate: &mut InflateScratch,
        out: &mut Vec<Message>,
    ) -> Result<bool, FrameError> {
        let result = self.decode_inner(input, limits, inflate, out);
        if result.is_err() {
            self.partial = Vec::new();
            self.header = None;
        }
        result
    }

    fn decode_inner(
        &mut self,
        input: &mut &[u8],
        limits: &Limits,
        inflate: &mut InflateScratch,
        out: &mut Vec<Message>,
    ) -> Result<bool, FrameError> {
        // Fast path: a whole frame at the front of the input, nothing buffered.
        if self.partial.is_empty()
            && let Some(header) = Header::parse(input, limits)?
        {
            let len = header.frame_len();
            if input.len() >= len {
                let (frame, rest) = input.split_at(len);
                *input = rest;
                read_frame(frame, &header, limits, inflate, out)?;
                return Ok(true);
            }
        }
        // Slow path: gather the header byte by byte, then the rest of the frame.
        while self.header.is_none() {
            let Some((&byte, rest)) = input.split_first() else {
                return Ok(false);
            };
            self.partial.push(byte);
            *input = rest;
            if let Some(header) = Header::parse(&self.partial, limits)? {
                self.header = Some(header);
            }
        }
        let Some(header) = self.header else {
            return Ok(false);
        };
        let want = header.frame_len() - self.partial.len();
        let take = want.min(input.len());
        // The declared length was checked against the limits but is not
        // reserved: a peer that sends a header and stalls pins only what it
        // sent.
        grow_within(&mut self.partial, take, header.frame_len());
        self.partial.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if take < want {
            return Ok(false);
        }
        self.header = None;
        let frame = core::mem::take(&mut self.partial);
        let result = read_frame(&frame, &header, limits, inflate, out);
        // Keep the allocation for the next partial frame unless it was large.
        if frame.capacity() <= KEEP_PARTIAL_CAPACITY {
            self.partial = frame;
            self.partial.clear();
        }
        result.map(|()| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Bytes, DocId};

    /// A frame holding one update of `len` bytes.
    fn frame(len: usize) -> Vec<u8> {
        let limits = Limits::default();
        let update = Message::Update {
            doc: DocId(1),
            seq: 1,
            data: Bytes(vec![3; len]),
        };
        let mut out = Vec::new();
        Encoder::new(&limits).encode(&[update], &mut out).unwrap();
        out
    }

    /// Feeds `frame` in two pieces; the decoded message count.
    fn split_feed(reader: &mut StreamReader, inflate: &mut InflateScratch, frame: &[u8]) -> usize {
        let limits = Limits::default();
        let mut out = Vec::new();
        let (a, b) = frame.split_at(frame.len() / 2);
        for mut piece in [a, b] {
            while !piece.is_empty() {
                reader
                    .decode(&mut piece, &limits, inflate, &mut out)
                    .unwrap();
            }
        }
        out.len()
    }

    /// A header declaring a large frame reserves nothing: the buffer grows
    /// with the bytes that came, at most twice them (and never past the
    /// frame), so a peer that sends a header and stalls pins a few bytes.
    #[test]
    fn a_declared_length_reserves_nothing() {
        let limits = Limits::default();
        let mut inflate = InflateScratch::default();
        let mut out = Vec::new();
        let big = frame(1_000_000);
        let mut reader = StreamReader::default();
        let mut received = 0;
        for piece in [&big[..4], &big[4..100], &big[100..70_000], &big[70_000..]] {
            let mut input = piece;
            while !input.is_empty() {
                reader
                    .decode(&mut input, &limits, &mut inflate, &mut out)
                    .unwrap();
            }
            received += piece.len();
            if received < big.len() {
                assert_eq!(reader.buffered(), received);
                assert!(
                    reader.capacity() <= 2 * received.max(32),
                    "{} held after {received} bytes",
                    reader.capacity()
                );
            }
        }
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_large_split_frame_leaves_no_large_buffer() {
        let mut reader = StreamReader::default();
        let mut inflate = InflateScratch::default();
        assert_eq!(split_feed(&mut reader, &mut inflate, &frame(1_000)), 1);
        let small = reader.capacity();
        assert!(small > 0 && small <= KEEP_PARTIAL_CAPACITY, "{small}");
        // Larger than what is kept, far below the frame limit.
        for len in [20_000, 200_000] {
            assert_eq!(split_feed(&mut reader, &mut inflate, &frame(len)), 1);
            assert!(
                reader.capacity() <= 4096,
                "{} kept after {len}",
                reader.capacity()
            );
            assert!(reader.at_frame_start());
        }
    }
}
