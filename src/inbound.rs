//! Turning received bytes into messages: framing for the transport kind, and
//! reassembly of fragmented messages (bounded by [`Limits::max_message_len`]).

use thiserror::Error;

use crate::Limits;
use crate::wire::compress::InflateScratch;
use crate::wire::{DocId, FrameError, Message, StreamReader, decode_frame, single_update};

/// How the transport delimits frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Framing {
    /// Each `handle_input` call carries exactly one frame (WebSocket
    /// binary messages, QUIC datagrams...).
    #[default]
    Message,
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
}

struct Partial {
    id: u32,
    total: u64,
    data: Vec<u8>,
}

enum Decoder {
    /// Nothing is kept between frames.
    Message,
    /// Boxed: the partial frame's buffer and header, which every WebSocket
    /// session would otherwise carry.
    Stream(Box<StreamReader>),
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
            Framing::Message => Decoder::Message,
            Framing::Stream => Decoder::Stream(Box::default()),
        };
        Inbound {
            decoder,
            partial: None,
        }
    }

    /// Bytes held for incomplete frames and fragmented messages.
    pub(crate) fn buffered(&self) -> usize {
        let frame = match &self.decoder {
            Decoder::Message => 0,
            Decoder::Stream(d) => d.buffered(),
        };
        frame + self.partial.as_ref().map_or(0, |p| p.data.len())
    }

    /// Heap bytes held between inputs: the stream reader and its partial
    /// frame, and a fragmented message being reassembled. Nothing for
    /// inflating: that memory is lent by the caller.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        let frame = match &self.decoder {
            Decoder::Message => 0,
            Decoder::Stream(d) => core::mem::size_of::<StreamReader>() + d.capacity(),
        };
        let partial = self
            .partial
            .as_ref()
            .map_or(0, |p| core::mem::size_of::<Partial>() + p.data.capacity());
        frame + partial
    }

    /// `bytes` as one borrowed `Update` when it is a whole frame holding
    /// just that (with stream framing: when nothing of an earlier frame is
    /// buffered); see [`single_update`].
    pub(crate) fn single_update<'a>(
        &self,
        bytes: &'a [u8],
        limits: &Limits,
    ) -> Option<(DocId, u64, &'a [u8])> {
        match &self.decoder {
            Decoder::Message => single_update(bytes, limits),
            // A read holding exactly one whole frame (a small update on a
            // quiet stream) takes the same path; anything else is decoded
            // the stream's way.
            Decoder::Stream(d) if d.at_frame_start() => single_update(bytes, limits),
            Decoder::Stream(_) => None,
        }
    }

    /// Decodes `bytes`, appending complete messages to `out`. Messages
    /// decoded before an error are appended too (they were valid and
    /// checksummed).
    ///
    /// Decodes straight into `out` (no buffer of its own: a session keeps no
    /// allocation here between inputs) and then replaces the fragments with
    /// the messages they complete.
    pub(crate) fn feed(
        &mut self,
        bytes: &[u8],
        limits: &Limits,
        inflate: &mut InflateScratch,
        out: &mut Vec<Message>,
    ) -> Result<(), InboundError> {
        self.feed_frames(bytes, limits, inflate, out).map(drop)
    }

    /// [`Inbound::feed`], returning how many whole, valid frames `bytes`
    /// completed (liveness counts these, not bytes: a frame that never
    /// completes must not keep a connection alive).
    pub(crate) fn feed_frames(
        &mut self,
        bytes: &[u8],
        limits: &Limits,
        inflate: &mut InflateScratch,
        out: &mut Vec<Message>,
    ) -> Result<usize, InboundError> {
        let start = out.len();
        let mut frames = 0;
        let decoded = match &mut self.decoder {
            Decoder::Message => decode_frame(bytes, limits, inflate, out).map(|()| frames = 1),
            Decoder::Stream(d) => {
                let mut input = bytes;
                loop {
                    match d.decode(&mut input, limits, inflate, out) {
                        Ok(true) => frames += 1,
                        Ok(false) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                }
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
                        if let Some(m) = reassemble(
                            &mut self.partial,
                            limits.max_message_len,
                            id,
                            offset,
                            total,
                            data.0,
                        )? {
                            out.push(m);
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
    data: Vec<u8>,
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
            }))
        }
    };
    if offset != partial.data.len() as u64 {
        return Err(InboundError::BadFragment("gap or overlap"));
    }
    if offset + data.len() as u64 > total {
        return Err(InboundError::BadFragment("fragment past declared total"));
    }
    partial.data.extend_from_slice(&data);
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
