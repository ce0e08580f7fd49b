//! The wire: messages, frames and their codec.
//!
//! This layer knows nothing about sessions; it turns [`Message`]s into
//! checksummed frames and back, refusing anything outside the configured
//! [`Limits`](crate::Limits). See the README's protocol section for the byte
//! layout and the measured overhead.

mod codec;
// The frame layout and deflate helpers are internals: the encoder and the
// decoders are the API. Tests craft frames by hand through them (`testing`).
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod compress;
#[cfg(not(feature = "testing"))]
pub(crate) mod compress;
mod error;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod frame;
#[cfg(not(feature = "testing"))]
pub(crate) mod frame;
pub(crate) mod hot;
mod message;

pub use codec::{
    DEFAULT_COMPRESS_THRESHOLD, Encoder, MessageDecoder, StreamDecoder, encode_message,
};
pub(crate) use codec::{StreamReader, decode_frame, grown_capacity, message_len, single_update};
pub use error::{EncodeError, FrameError};
pub use message::{
    Access, AwarenessEntry, Bytes, CloseReason, Compression, DocId, ErrorCode, Message, PeerLimits,
    RejectCode, Resume, Route, SessionId, SyncKind,
};

/// Protocol versions this crate speaks (of the message layer, negotiated in
/// the handshake; the frame format has its own version in every frame).
///
/// A peer that speaks none of them (such as a version-1 client, whose
/// messages differ: no `VersionReport` or `SyncRequest`) is refused with
/// [`RejectCode::UnsupportedVersion`] in the handshake.
pub const PROTOCOL_VERSIONS: &[u16] = &[2];
