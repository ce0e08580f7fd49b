//! Bodies of the cargo-fuzz targets in `fuzz/`.
//!
//! They live in the library so normal builds compile them and the targets
//! stay three lines long. Each must never panic, whatever the input.

use crate::Limits;
use crate::wire::compress::Inflater;
use crate::wire::{Encoder, MessageDecoder, StreamDecoder};

/// Small limits so the fuzzer reaches the limit checks quickly.
fn fuzz_limits() -> Limits {
    Limits {
        max_frame_len: 64 * 1024,
        max_decompressed_len: 256 * 1024,
        max_messages_per_frame: 64,
        ..Limits::default()
    }
}

/// Decodes `data` as one frame and as a stream (split at a point taken from
/// the first byte); both must agree. Whatever decodes must re-encode to a
/// frame that decodes to the same messages.
///
/// ```
/// crdt_socket_sync::fuzzing::frame_decode(&[0x10, 0x01, 0x00, 0, 0, 0, 0]);
/// ```
pub fn frame_decode(data: &[u8]) {
    let limits = fuzz_limits();
    let mut one = Vec::new();
    let whole = MessageDecoder::new(limits).decode(data, &mut one);

    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut stream = StreamDecoder::new(limits);
    let mut streamed = Vec::new();
    let mut frames = 0;
    let mut failed = false;
    for part in [&data[..split], &data[split..]] {
        let mut input = part;
        loop {
            match stream.decode(&mut input, &mut streamed) {
                Ok(true) => frames += 1,
                Ok(false) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
    }
    if whole.is_ok() {
        // A valid single frame must decode identically as a stream.
        assert_eq!(frames, 1);
        assert_eq!(one, streamed);
        let mut encoder = Encoder::new(&limits);
        let mut again = Vec::new();
        if encoder.encode(&one, &mut again).is_ok() {
            let mut back = Vec::new();
            MessageDecoder::new(limits)
                .decode(&again, &mut back)
                .expect("re-encoded frame decodes");
            assert_eq!(back, one);
        }
    }
}

/// Inflates `data` into a buffer whose size comes from the first two bytes,
/// as the frame decoder does after checking the declared size.
///
/// ```
/// crdt_socket_sync::fuzzing::inflate(&[0, 4, 1, 2, 3]);
/// ```
pub fn inflate(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let declared = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let mut out = vec![0u8; declared];
    let _ = Inflater::default().inflate_exact(&data[2..], &mut out);
}

/// Structure-aware: encodes arbitrary messages (optionally compressed) and
/// checks they decode back unchanged.
#[cfg(feature = "arbitrary")]
pub fn message_round_trip(messages: Vec<crate::wire::Message>, deflate: bool) {
    let limits = fuzz_limits();
    let mut encoder = Encoder::new(&limits);
    if deflate {
        encoder.set_compression(crate::wire::Compression::Deflate, 0);
    }
    let mut frame = Vec::new();
    if encoder.encode(&messages, &mut frame).is_err() {
        return;
    }
    let mut out = Vec::new();
    MessageDecoder::new(limits)
        .decode(&frame, &mut out)
        .expect("encoded frame decodes");
    assert_eq!(out, messages);
}
