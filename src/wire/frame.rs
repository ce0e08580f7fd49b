//! The frame header: layout, varints and checksum.
//!
//! ```text
//! +---------+-------------+--------------+--------------+-----------+
//! | byte 0  | body_len    | raw_len      | body         | crc32     |
//! | ver|flg | varint u32  | varint u32,  | postcard     | u32 LE    |
//! |         |             | if DEFLATE   | messages     |           |
//! +---------+-------------+--------------+--------------+-----------+
//! ```
//!
//! Byte 0 holds the format version in its high nibble and flags in its low
//! nibble (bit 0: body is deflated; other bits reserved and must be zero).
//! The CRC32 covers every byte before it. A small frame costs 6 bytes.

use super::FrameError;
use crate::Limits;

/// The frame format version this crate writes and reads.
pub const FRAME_VERSION: u8 = 1;
/// Flag bit: the body is raw-deflate compressed.
pub const FLAG_DEFLATE: u8 = 0b0001;
const KNOWN_FLAGS: u8 = FLAG_DEFLATE;
/// Longest possible header: one byte plus two 5-byte varints.
pub const MAX_HEADER_LEN: usize = 11;
/// Length of the trailing checksum.
pub const CRC_LEN: usize = 4;

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Flag bits from byte 0.
    pub flags: u8,
    /// Bytes of body on the wire.
    pub body_len: u32,
    /// Decompressed body length (equal to `body_len` when not deflated).
    pub raw_len: u32,
    /// Bytes taken by the header itself.
    pub header_len: usize,
}

impl Header {
    /// Whether the body is deflated.
    pub fn is_deflated(&self) -> bool {
        self.flags & FLAG_DEFLATE != 0
    }

    /// Total frame length: header, body and checksum.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.body_len as usize + CRC_LEN
    }

    /// Parses a header from the start of `buf`, checking every declared
    /// length against `limits`. `Ok(None)` means more bytes are needed.
    // Always inlined: returned through memory, the header's fields are
    // written narrow and read back wide, a store-forwarding stall that cost
    // a third of a small frame's decode time.
    #[inline(always)]
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<Header>, FrameError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let version = b0 >> 4;
        if version != FRAME_VERSION {
            return Err(FrameError::BadVersion {
                found: version,
                expected: FRAME_VERSION,
            });
        }
        let flags = b0 & 0x0f;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::BadFlags(flags));
        }
        let mut pos = 1;
        let Some(body_len) = read_varint(buf, &mut pos)? else {
            return Ok(None);
        };
        let frame_len = pos as u64 + u64::from(body_len) + CRC_LEN as u64;
        if frame_len > u64::from(limits.max_frame_len) {
            return Err(FrameError::TooLarge {
                len: frame_len,
                limit: limits.max_frame_len,
            });
        }
        let raw_len = if flags & FLAG_DEFLATE != 0 {
            let Some(raw) = read_varint(buf, &mut pos)? else {
                return Ok(None);
            };
            if raw > limits.max_decompressed_len {
                return Err(FrameError::DecompressedTooLarge {
                    len: u64::from(raw),
                    limit: limits.max_decompressed_len,
                });
            }
            raw
        } else {
            body_len
        };
        let header = Header {
            flags,
            body_len,
            raw_len,
            header_len: pos,
        };
        // Re-check with the final header length (the raw_len varint added bytes).
        if header.frame_len() as u64 > u64::from(limits.max_frame_len) {
            return Err(FrameError::TooLarge {
                len: header.frame_len() as u64,
                limit: limits.max_frame_len,
            });
        }
        // A deflated body that inflates to nothing is as empty as no body.
        if body_len == 0 || raw_len == 0 {
            return Err(FrameError::Empty);
        }
        Ok(Some(header))
    }

    /// Appends the header bytes to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push((FRAME_VERSION << 4) | self.flags);
        write_varint(self.body_len, out);
        if self.is_deflated() {
            write_varint(self.raw_len, out);
        }
    }

    /// Bytes [`Header::write`] will append.
    pub fn encoded_len(flags: u8, body_len: u32, raw_len: u32) -> usize {
        1 + varint_len(body_len)
            + if flags & FLAG_DEFLATE != 0 {
                varint_len(raw_len)
            } else {
                0
            }
    }
}

/// Reads a LEB128 `u32` at `*pos`. `Ok(None)`: input ends inside the varint.
fn read_varint(buf: &[u8], pos: &mut usize) -> Result<Option<u32>, FrameError> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let Some(&byte) = buf.get(*pos + i) else {
            return Ok(None);
        };
        let bits = u32::from(byte & 0x7f);
        if i == 4 && byte > 0x0f {
            return Err(FrameError::BadLength);
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            *pos += i + 1;
            return Ok(Some(value));
        }
    }
    Err(FrameError::BadLength)
}

fn write_varint(mut value: u32, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u32) -> usize {
    match value {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        0x4000..0x20_0000 => 3,
        0x20_0000..0x1000_0000 => 4,
        _ => 5,
    }
}

/// CRC32 (IEEE) of `bytes`.
#[inline]
pub fn checksum(bytes: &[u8]) -> u32 {
    // `crc32fast::hash` detects the CPU's features on every call; a hasher
    // made once and copied skips that (it shows on small frames).
    static PROTOTYPE: std::sync::OnceLock<crc32fast::Hasher> = std::sync::OnceLock::new();
    let mut h = PROTOTYPE.get_or_init(crc32fast::Hasher::new).clone();
    h.update(bytes);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_len() {
        for v in [
            0,
            1,
            127,
            128,
            16383,
            16384,
            1 << 21,
            (1 << 28) - 1,
            1 << 28,
            u32::MAX,
        ] {
            let mut out = Vec::new();
            write_varint(v, &mut out);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos).unwrap(), Some(v));
            assert_eq!(pos, out.len());
        }
    }

    #[test]
    fn overlong_varint_is_refused() {
        let mut pos = 0;
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0x1f], &mut pos),
            Err(FrameError::BadLength)
        );
        let mut pos = 0;
        assert_eq!(read_varint(&[0xff, 0xff], &mut pos), Ok(None));
    }

    #[test]
    fn declared_length_over_limit_is_refused_from_header_alone() {
        let limits = Limits {
            max_frame_len: 100,
            ..Limits::default()
        };
        // Claims a 4 GiB body; only the header bytes exist.
        let header = [0x10, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            Header::parse(&header, &limits),
            Err(FrameError::TooLarge { limit: 100, .. })
        ));
    }
}
