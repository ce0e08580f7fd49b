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
/// compressed frame, so a decoder that never sees one doesn't pay them (and
/// a server keeps one for all its connections).
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

/// The memory to inflate frames with: the inflate state and the buffer a
/// body is inflated into, both reused from one frame to the next.
///
/// It is not part of a decoder: decoding needs it only during the call, so
/// its owner lends it to each call. A hub keeps one for all its sessions
/// (an idle connection then holds neither the ~10 KiB state nor up to
/// [`KEEP_BUFFER_CAPACITY`] of buffer); a client session or a public
/// decoder keeps its own.
#[derive(Debug, Default)]
pub(crate) struct InflateScratch {
    inflater: Inflater,
    buf: Vec<u8>,
}

/// Largest inflate buffer kept between frames.
pub(crate) const KEEP_BUFFER_CAPACITY: usize = 64 * 1024;

impl InflateScratch {
    /// Inflates `input` into exactly `raw_len` bytes ([`Inflater::inflate_exact`])
    /// and passes them to `f`. `raw_len` must have been checked against the
    /// limits: it is allocated as is.
    pub(crate) fn inflate_then<R>(
        &mut self,
        input: &[u8],
        raw_len: usize,
        f: impl FnOnce(&[u8]) -> Result<R, FrameError>,
    ) -> Result<R, FrameError> {
        self.buf.clear();
        self.buf.resize(raw_len, 0);
        let result = self
            .inflater
            .inflate_exact(input, &mut self.buf)
            .and_then(|()| f(&self.buf));
        // Keep a small buffer for the next frame, but do not hold on to a
        // large one.
        if self.buf.capacity() > KEEP_BUFFER_CAPACITY {
            self.buf = Vec::new();
        }
        result
    }

    /// Heap bytes held: the inflate state once allocated, and the buffer.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        let state = if self.inflater.state.is_some() {
            core::mem::size_of::<DecompressorOxide>()
        } else {
            0
        };
        state + self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: usize = core::mem::size_of::<DecompressorOxide>();

    /// Inflates `data` through `scratch` and checks it came back whole.
    fn round_trip(scratch: &mut InflateScratch, data: &[u8]) {
        let packed = deflate(data);
        let back = scratch
            .inflate_then(&packed, data.len(), |raw| Ok(raw.to_vec()))
            .unwrap();
        assert_eq!(back, data);
    }

    /// The scratch keeps a buffer for the next frame only up to
    /// `KEEP_BUFFER_CAPACITY`, whatever size of frame went through it, and
    /// the inflate state is allocated once.
    #[test]
    fn the_scratch_stays_bounded() {
        let mut scratch = InflateScratch::default();
        assert_eq!(scratch.held(), 0, "nothing before the first frame");
        round_trip(&mut scratch, &vec![3; 16 << 10]);
        assert_eq!(scratch.held(), STATE + (16 << 10), "a small buffer is kept");
        round_trip(&mut scratch, &vec![4; 1 << 20]);
        assert_eq!(scratch.held(), STATE, "a large buffer is dropped");
        round_trip(&mut scratch, &vec![5; KEEP_BUFFER_CAPACITY]);
        assert_eq!(scratch.held(), STATE + KEEP_BUFFER_CAPACITY);
    }

    /// Errors leave the scratch bounded too, and reusable.
    #[test]
    fn the_scratch_survives_errors() {
        let mut scratch = InflateScratch::default();
        let packed = deflate(&vec![1; 1 << 20]);
        let short = scratch.inflate_then(&packed, 1000, |_| Ok(()));
        assert!(matches!(short, Err(FrameError::Decompression(_))));
        let long = scratch.inflate_then(&packed, 2 << 20, |_| Ok(()));
        assert!(matches!(long, Err(FrameError::Decompression(_))));
        assert_eq!(scratch.held(), STATE, "the 2 MiB buffer was dropped");
        round_trip(&mut scratch, b"after the errors");
    }
}
