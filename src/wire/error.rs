//! Errors of the wire layer. All of them are fatal to the connection that
//! produced the bytes.

use thiserror::Error;

/// A frame could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The first byte does not name a frame format version we speak.
    #[error("bad frame version {found} (expected {expected})")]
    BadVersion {
        /// Version nibble found.
        found: u8,
        /// Version we speak.
        expected: u8,
    },
    /// Reserved flag bits were set.
    #[error("unknown frame flags {0:#06b}")]
    BadFlags(u8),
    /// A declared length does not fit in a `u32` varint.
    #[error("malformed length field")]
    BadLength,
    /// The frame declares (or would be) larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Declared size.
        len: u64,
        /// Configured limit.
        limit: u32,
    },
    /// The frame declares a decompressed body larger than the limit.
    #[error("decompressed body of {len} bytes exceeds the limit of {limit}")]
    DecompressedTooLarge {
        /// Declared decompressed size.
        len: u64,
        /// Configured limit.
        limit: u32,
    },
    /// The CRC32 over header and body does not match.
    #[error("checksum mismatch: frame says {expected:#010x}, computed {actual:#010x}")]
    ChecksumMismatch {
        /// CRC stored in the frame.
        expected: u32,
        /// CRC computed over the received bytes.
        actual: u32,
    },
    /// The input ended inside a frame.
    #[error("truncated frame: {needed} more bytes needed")]
    Truncated {
        /// Bytes missing (at least).
        needed: usize,
    },
    /// Bytes follow the end of the frame in a one-frame message.
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
    /// A frame with no messages in it.
    #[error("empty frame")]
    Empty,
    /// The deflate stream is invalid or does not inflate to the declared size.
    #[error("decompression failed: {0}")]
    Decompression(&'static str),
    /// More messages in one frame than the limit allows.
    #[error("more than {limit} messages in one frame")]
    TooManyMessages {
        /// Configured limit.
        limit: u32,
    },
    /// A message body is not a valid postcard [`Message`](super::Message).
    #[error("message decode failed: {0}")]
    Decode(postcard::Error),
}

/// A frame could not be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The frame would exceed the peer's limit; split it (see
    /// [`Message::Fragment`](super::Message::Fragment)).
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Size the frame would have.
        len: u64,
        /// The limit.
        limit: u32,
    },
    /// More messages than the limit allows in one frame.
    #[error("more than {limit} messages in one frame")]
    TooManyMessages {
        /// The limit.
        limit: u32,
    },
    /// No messages given.
    #[error("cannot encode an empty frame")]
    Empty,
    /// postcard refused to serialize a message.
    #[error("message encode failed: {0}")]
    Encode(postcard::Error),
}
