//! Bounded deflate.
//!
//! Inflating trusts nothing the peer says: the declared size was checked
//! against the limit before we get here, the output buffer has exactly that
//! size, and a stream that ends early, runs long or is malformed is an error.

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

use super::FrameError;

/// Deflate level used for frames: the fastest level, since frames are small
/// and latency matters more than ratio.
pub const DEFLATE_LEVEL: u8 = 1;

/// Compresses `input` as a raw deflate stream.
///
/// ```
/// use crdt_socket_sync::wire::compress::{deflate, Inflater};
/// let data = vec![7u8; 4096];
/// let packed = deflate(&data);
/// let mut out = vec![0; data.len()];
/// Inflater::default().inflate_exact(&packed, &mut out).unwrap();
/// assert_eq!(out, data);
/// ```
pub fn deflate(input: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec(input, DEFLATE_LEVEL)
}

/// Reusable inflate state. Its ~10 KiB are allocated on the first
/// compressed frame, so idle and uncompressed connections don't pay them.
#[derive(Default)]
pub struct Inflater {
    state: Option<Box<DecompressorOxide>>,
}

impl core::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Inflater")
    }
}

impl Inflater {
    /// Inflates the raw deflate stream `input` into `out`, which must end up
    /// exactly full: fewer or more output bytes, unread input, or a
    /// malformed stream are errors.
    pub fn inflate_exact(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), FrameError> {
        let state = self.state.get_or_insert_with(Box::default);
        state.init();
        let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
        let (status, read, written) = decompress(state, input, out, 0, flags);
        match status {
            TINFLStatus::Done if written == out.len() && read == input.len() => Ok(()),
            TINFLStatus::Done if read != input.len() => {
                Err(FrameError::Decompression("data after end of stream"))
            }
            TINFLStatus::Done => Err(FrameError::Decompression(
                "stream shorter than declared size",
            )),
            TINFLStatus::HasMoreOutput => Err(FrameError::Decompression(
                "stream longer than declared size",
            )),
            TINFLStatus::FailedCannotMakeProgress | TINFLStatus::NeedsMoreInput => {
                Err(FrameError::Decompression("truncated stream"))
            }
            _ => Err(FrameError::Decompression("invalid stream")),
        }
    }
}
