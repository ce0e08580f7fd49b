//! A structural check of yrs v1 updates, run before yrs decodes them.
//!
//! yrs trusts the counts an update declares: it reserves room for every
//! client, block, `Any` array element and map entry a count announces before
//! reading them (a 9-byte update made it request 6 GiB), and it decodes
//! nested `Any` values recursively (a few hundred KiB of nested arrays
//! overflowed the stack and aborted the process). This walk follows the
//! same layout as yrs' `Update::decode` without allocating and refuses:
//!
//! - any count larger than the bytes left after it (every element takes at
//!   least one byte), so what yrs reserves is linear in the update's size;
//! - `Any` values nested deeper than [`MAX_ANY_DEPTH`];
//! - clocks past `u32::MAX` (a client's first clock plus the lengths of its
//!   blocks, a deleted range's start plus its length): yrs adds them in
//!   `u32`, which panics with overflow checks on and wraps (a reversed
//!   range) without;
//! - client ids over 53 bits (yrs' and Yjs' limit; yrs asserts it in debug
//!   builds and folds larger ones together in release builds);
//! - anything malformed or truncated (yrs would refuse it too).
//!
//! Cost: one pass over the bytes, O(n) time, O(1) memory and a recursion
//! depth of at most [`MAX_ANY_DEPTH`] frames.
//!
//! What it does not bound: the work yrs does to *integrate* a valid update
//! (that is the CRDT's cost, linear in the update for Yjs' algorithm) and
//! the size of strings and buffers (they are read from the update itself,
//! so never larger than it).

use super::read_uvar;

/// Deepest nesting of `Any` arrays and maps accepted (serde_json's default
/// recursion limit). Yjs documents nest JSON values far less.
pub(crate) const MAX_ANY_DEPTH: u32 = 128;

/// Why an update was refused before decoding.
pub(crate) type CheckError = &'static str;

/// Checks a v1 update. `Ok` means every count it declares is backed by
/// bytes and every `Any` value nests at most [`MAX_ANY_DEPTH`] deep.
pub(crate) fn check_update_v1(update: &[u8]) -> Result<(), CheckError> {
    let mut r = Reader(update);
    let clients = r.count(3)?;
    for _ in 0..clients {
        let blocks = r.count(1)?;
        r.client()?;
        let mut clock = r.uvar()?;
        for _ in 0..blocks {
            clock = clock.saturating_add(block(&mut r)?);
        }
        if clock > u64::from(u32::MAX) {
            return Err("clock past u32::MAX");
        }
    }
    // The delete set.
    let clients = r.count(2)?;
    for _ in 0..clients {
        r.client()?;
        let ranges = r.count(2)?;
        for _ in 0..ranges {
            let start = r.uvar()?;
            let len = r.uvar()?;
            if start.saturating_add(len) > u64::from(u32::MAX) {
                return Err("deleted range past u32::MAX");
            }
        }
    }
    Ok(())
}

/// Flags of a block's info byte (yrs `block.rs`).
const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;
/// Info bytes of the two non-item blocks.
const GC: u8 = 0;
const SKIP: u8 = 10;

/// Checks one block; returns an upper bound of its length in clock ticks.
fn block(r: &mut Reader<'_>) -> Result<u64, CheckError> {
    let info = r.u8()?;
    if info == GC || info == SKIP {
        return r.uvar();
    }
    if info & HAS_ORIGIN != 0 {
        r.id()?;
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        r.id()?;
    }
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        if r.uvar()? == 1 {
            r.string()?; // a root type's name
        } else {
            r.id()?; // the parent item
        }
        if info & HAS_PARENT_SUB != 0 {
            r.string()?;
        }
    }
    content(r, info & 0b1111)
}

/// Checks an item's content; returns an upper bound of its length (a
/// string counts its bytes, at least its UTF-16 units or characters).
fn content(r: &mut Reader<'_>, kind: u8) -> Result<u64, CheckError> {
    match kind {
        // deleted: a length
        1 => r.uvar(),
        // JSON: yrs reads the declared count plus one strings
        2 => {
            let n = r.count(1)?;
            for _ in 0..=n {
                r.string()?;
            }
            Ok(n + 1)
        }
        // string
        4 => r.string(),
        // binary, embed (JSON text)
        3 | 5 => r.string().map(|_| 1),
        // format: key and JSON text
        6 => {
            r.string()?;
            r.string().map(|_| 1)
        }
        // type: a type ref, XML elements with their tag name
        7 => {
            if r.u8()? == 3 {
                r.string()?;
            }
            Ok(1)
        }
        // Any values
        8 => {
            let n = r.count(1)?;
            for _ in 0..n {
                any(r, 0)?;
            }
            Ok(n)
        }
        // sub-document: guid and options
        9 => {
            r.string()?;
            any(r, 0).map(|()| 1)
        }
        _ => Err("unknown content"),
    }
}

/// One lib0 `Any` value (tags 116..=127).
fn any(r: &mut Reader<'_>, depth: u32) -> Result<(), CheckError> {
    if depth >= MAX_ANY_DEPTH {
        return Err("values nested too deep");
    }
    match r.u8()? {
        // undefined, null, false, true
        127 | 126 | 121 | 120 => Ok(()),
        // integer: a signed varint
        125 => r.svar(),
        124 => r.skip(4),
        123 | 122 => r.skip(8),
        // string, buffer
        119 | 116 => r.string().map(drop),
        // map: entries of key and value
        118 => {
            let n = r.count(2)?;
            for _ in 0..n {
                r.string()?;
                any(r, depth + 1)?;
            }
            Ok(())
        }
        // array
        117 => {
            let n = r.count(1)?;
            for _ in 0..n {
                any(r, depth + 1)?;
            }
            Ok(())
        }
        _ => Err("unknown value type"),
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, CheckError> {
        let (&b, rest) = self.0.split_first().ok_or("truncated")?;
        self.0 = rest;
        Ok(b)
    }

    fn uvar(&mut self) -> Result<u64, CheckError> {
        read_uvar(&mut self.0).ok_or("bad or truncated varint")
    }

    /// A signed lib0 varint: at most 10 bytes, the last without the
    /// continuation bit.
    fn svar(&mut self) -> Result<(), CheckError> {
        for _ in 0..10 {
            if self.u8()? & 0x80 == 0 {
                return Ok(());
            }
        }
        Err("signed varint too long")
    }

    /// A count of elements that take at least `min_len` bytes each,
    /// refused when the bytes left cannot hold them.
    fn count(&mut self, min_len: usize) -> Result<u64, CheckError> {
        let n = self.uvar()?;
        if n > (self.0.len() / min_len) as u64 {
            return Err("declared count exceeds the bytes that follow");
        }
        Ok(n)
    }

    fn skip(&mut self, n: usize) -> Result<(), CheckError> {
        if self.0.len() < n {
            return Err("truncated");
        }
        self.0 = &self.0[n..];
        Ok(())
    }

    /// A length-prefixed string or buffer; returns its length.
    fn string(&mut self) -> Result<u64, CheckError> {
        let len = self.uvar()?;
        let n = usize::try_from(len).map_err(|_| "length too large")?;
        self.skip(n)?;
        Ok(len)
    }

    /// A client id: at most 53 bits.
    fn client(&mut self) -> Result<u64, CheckError> {
        let client = self.uvar()?;
        if client >> 53 != 0 {
            return Err("client id over 53 bits");
        }
        Ok(client)
    }

    /// An item id: client and clock.
    fn id(&mut self) -> Result<(), CheckError> {
        self.client()?;
        self.uvar().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_beyond_the_input_and_deep_values_are_refused() {
        assert!(check_update_v1(&[0, 0]).is_ok());
        assert!(check_update_v1(&[0x80, 0x80, 0x80, 0x20, 0x00]).is_err());
        assert!(check_update_v1(&[0x01, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x00, 0x00]).is_err());
        let mut deep = vec![1, 1, 1, 0, 8, 1, 1, b't', 1];
        for _ in 0..MAX_ANY_DEPTH {
            deep.extend([117, 1]);
        }
        deep.extend([126, 0]);
        assert_eq!(check_update_v1(&deep), Err("values nested too deep"));
        // A deleted range ending past u32::MAX (found by the fuzzer: yrs
        // adds start and length in u32).
        let ds = [0, 1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 2];
        assert_eq!(check_update_v1(&ds), Err("deleted range past u32::MAX"));
        assert!(check_update_v1(&[0, 1, 1, 1, 0xfe, 0xff, 0xff, 0xff, 0x0f, 1]).is_ok());
        // A client whose blocks run past u32::MAX.
        let gc = [1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 2, 0];
        assert_eq!(check_update_v1(&gc), Err("clock past u32::MAX"));
        // A client id over 53 bits (found by the fuzzer: yrs asserts it).
        let mut big = vec![1, 1];
        big.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]); // 2^53
        big.extend([0, 0, 2, 0]);
        assert_eq!(check_update_v1(&big), Err("client id over 53 bits"));
    }
}
