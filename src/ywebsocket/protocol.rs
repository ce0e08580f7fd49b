//! The y-protocols messages y-websocket exchanges, written from their
//! specification (lib0 encoding: unsigned LEB128 varints, byte arrays and
//! strings prefixed by their length).
//!
//! ```text
//! message   = varuint type, body
//! type 0    sync:            varuint step (0 = step 1, 1 = step 2, 2 = update), varbytes payload
//! type 1    awareness:       varbytes awareness-update
//! type 2    auth:            varuint 0 (permission denied), varstring reason
//! type 3    query-awareness: (empty)
//! awareness-update = varuint n, n × (varuint client, varuint clock, varstring JSON state)
//! ```
//!
//! Decoding borrows from the input and allocates nothing; every declared
//! length is checked against the bytes that follow it.

use crate::adapters::{read_uvar, write_uvar};

/// Message types (the first varuint).
const SYNC: u64 = 0;
const AWARENESS: u64 = 1;
const AUTH: u64 = 2;
const QUERY_AWARENESS: u64 = 3;
/// Sync steps.
const STEP1: u64 = 0;
const STEP2: u64 = 1;
const UPDATE: u64 = 2;

/// One y-protocols message, borrowing from the bytes it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum YMessage<'a> {
    /// Sync step 1: the sender's state vector (lib0 v1); the receiver
    /// answers with step 2.
    SyncStep1(&'a [u8]),
    /// Sync step 2: what the receiver of a step 1 lacked (a v1 update).
    SyncStep2(&'a [u8]),
    /// A live v1 update.
    Update(&'a [u8]),
    /// An awareness update (see [`AwarenessEntries`]).
    Awareness(&'a [u8]),
    /// Auth, permission denied, with its reason (server → client only).
    PermissionDenied(&'a str),
    /// "Send me every awareness state you know."
    QueryAwareness,
}

/// Why bytes are not a y-protocols message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum YDecodeError {
    /// Too short for what it declares.
    #[error("truncated y-protocols message")]
    Truncated,
    /// A varint longer than 64 bits.
    #[error("varint out of range")]
    BadVarint,
    /// A string that is not UTF-8.
    #[error("string is not UTF-8")]
    BadString,
    /// An unknown message type or sync step.
    #[error("unknown message type {0}")]
    UnknownType(u64),
    /// Bytes after the message.
    #[error("trailing bytes after the message")]
    Trailing,
    /// More awareness entries than the bytes could hold, or than allowed.
    #[error("awareness update declares too many entries")]
    TooManyEntries,
}

impl<'a> YMessage<'a> {
    /// Decodes one message (one WebSocket message).
    ///
    /// ```
    /// use crdt_socket_sync::ywebsocket::YMessage;
    /// assert_eq!(YMessage::decode(&[0, 0, 1, 0]), Ok(YMessage::SyncStep1(&[0])));
    /// assert!(YMessage::decode(&[0, 1, 9]).is_err()); // 9 bytes declared, none follow
    /// ```
    pub fn decode(bytes: &'a [u8]) -> Result<Self, YDecodeError> {
        let mut r = Reader(bytes);
        let msg = match r.uvar()? {
            SYNC => match r.uvar()? {
                STEP1 => YMessage::SyncStep1(r.bytes()?),
                STEP2 => YMessage::SyncStep2(r.bytes()?),
                UPDATE => YMessage::Update(r.bytes()?),
                other => return Err(YDecodeError::UnknownType(other)),
            },
            AWARENESS => YMessage::Awareness(r.bytes()?),
            AUTH => match r.uvar()? {
                0 => YMessage::PermissionDenied(r.string()?),
                other => return Err(YDecodeError::UnknownType(other)),
            },
            QUERY_AWARENESS => YMessage::QueryAwareness,
            other => return Err(YDecodeError::UnknownType(other)),
        };
        if !r.0.is_empty() {
            return Err(YDecodeError::Trailing);
        }
        Ok(msg)
    }

    /// Appends the encoding of this message to `out`.
    ///
    /// ```
    /// use crdt_socket_sync::ywebsocket::YMessage;
    /// let mut out = Vec::new();
    /// YMessage::Update(&[1, 2]).encode(&mut out);
    /// assert_eq!(out, [0, 2, 2, 1, 2]);
    /// assert_eq!(YMessage::decode(&out), Ok(YMessage::Update(&[1, 2])));
    /// ```
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            YMessage::SyncStep1(b) => sync(out, STEP1, b),
            YMessage::SyncStep2(b) => sync(out, STEP2, b),
            YMessage::Update(b) => sync(out, UPDATE, b),
            YMessage::Awareness(b) => {
                write_uvar(out, AWARENESS);
                write_bytes(out, b);
            }
            YMessage::PermissionDenied(reason) => {
                write_uvar(out, AUTH);
                write_uvar(out, 0);
                write_bytes(out, reason.as_bytes());
            }
            YMessage::QueryAwareness => write_uvar(out, QUERY_AWARENESS),
        }
    }
}

fn sync(out: &mut Vec<u8>, step: u64, payload: &[u8]) {
    write_uvar(out, SYNC);
    write_uvar(out, step);
    write_bytes(out, payload);
}

/// One entry of an awareness update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AwarenessEntry<'a> {
    /// The Yjs client id the state belongs to.
    pub client: u64,
    /// Its clock; a higher one replaces a lower.
    pub clock: u64,
    /// The state as JSON text; `"null"` when the client left.
    pub state: &'a str,
}

/// The entries of an awareness update, decoded and checked up front.
#[derive(Clone, Debug)]
pub struct AwarenessEntries<'a> {
    rest: Reader<'a>,
    left: u64,
}

impl<'a> AwarenessEntries<'a> {
    /// Checks `update` (the payload of [`YMessage::Awareness`]): at most
    /// `max_entries` entries, each complete, nothing after them. Costs one
    /// pass over the bytes; allocates nothing.
    ///
    /// ```
    /// use crdt_socket_sync::ywebsocket::{AwarenessEntries, AwarenessEntry};
    /// let update = [1, 7, 3, 4, b'n', b'u', b'l', b'l'];
    /// let entries: Vec<_> = AwarenessEntries::decode(&update, 16).unwrap().collect();
    /// assert_eq!(entries, [AwarenessEntry { client: 7, clock: 3, state: "null" }]);
    /// assert!(AwarenessEntries::decode(&[200, 1], 16).is_err());
    /// ```
    pub fn decode(update: &'a [u8], max_entries: usize) -> Result<Self, YDecodeError> {
        let mut r = Reader(update);
        let n = r.uvar()?;
        // Every entry takes at least three bytes.
        if n > (r.0.len() / 3) as u64 || n > max_entries as u64 {
            return Err(YDecodeError::TooManyEntries);
        }
        let start = r.clone();
        for _ in 0..n {
            r.uvar()?;
            r.uvar()?;
            r.string()?;
        }
        if !r.0.is_empty() {
            return Err(YDecodeError::Trailing);
        }
        Ok(AwarenessEntries {
            rest: start,
            left: n,
        })
    }
}

impl<'a> Iterator for AwarenessEntries<'a> {
    type Item = AwarenessEntry<'a>;
    fn next(&mut self) -> Option<AwarenessEntry<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked in `decode`.
        let client = self.rest.uvar().ok()?;
        let clock = self.rest.uvar().ok()?;
        let state = self.rest.string().ok()?;
        Some(AwarenessEntry {
            client,
            clock,
            state,
        })
    }
}

/// Encodes an awareness update holding `entries`.
///
/// ```
/// use crdt_socket_sync::ywebsocket::{encode_awareness, AwarenessEntry};
/// let mut out = Vec::new();
/// encode_awareness(&[AwarenessEntry { client: 7, clock: 3, state: "{}" }], &mut out);
/// assert_eq!(out, [1, 7, 3, 2, b'{', b'}']);
/// ```
pub fn encode_awareness(entries: &[AwarenessEntry<'_>], out: &mut Vec<u8>) {
    write_uvar(out, entries.len() as u64);
    for e in entries {
        write_uvar(out, e.client);
        write_uvar(out, e.clock);
        write_bytes(out, e.state.as_bytes());
    }
}

/// Appends a lib0 `varUint8Array` (or `varString`).
pub(crate) fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_uvar(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[derive(Clone, Debug)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn uvar(&mut self) -> Result<u64, YDecodeError> {
        let before = self.0.len();
        read_uvar(&mut self.0).ok_or_else(|| {
            // `read_uvar` gives up either at the end of the input or after
            // the tenth byte, where a varint exceeds 64 bits.
            if before - self.0.len() >= 10 {
                YDecodeError::BadVarint
            } else {
                YDecodeError::Truncated
            }
        })
    }

    fn bytes(&mut self) -> Result<&'a [u8], YDecodeError> {
        let len = self.uvar()?;
        if len > self.0.len() as u64 {
            return Err(YDecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(len as usize);
        self.0 = rest;
        Ok(head)
    }

    fn string(&mut self) -> Result<&'a str, YDecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| YDecodeError::BadString)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        for m in [
            YMessage::SyncStep1(&[0]),
            YMessage::SyncStep2(&[0, 0]),
            YMessage::Update(&[1; 300]),
            YMessage::Awareness(&[0]),
            YMessage::PermissionDenied("no"),
            YMessage::QueryAwareness,
        ] {
            let mut out = Vec::new();
            m.encode(&mut out);
            assert_eq!(YMessage::decode(&out), Ok(m));
            // Every strict prefix is refused, never misread.
            for cut in 0..out.len() {
                assert!(YMessage::decode(&out[..cut]).is_err(), "{m:?} cut at {cut}");
            }
        }
        assert_eq!(YMessage::decode(&[9]), Err(YDecodeError::UnknownType(9)));
        assert_eq!(YMessage::decode(&[3, 0]), Err(YDecodeError::Trailing));
        assert_eq!(YMessage::decode(&[0xff; 11]), Err(YDecodeError::BadVarint));
    }

    #[test]
    fn awareness_counts_are_checked_before_iterating() {
        assert_eq!(
            AwarenessEntries::decode(&[0x80, 0x80, 0x80, 0x80, 0x08], 1000).err(),
            Some(YDecodeError::TooManyEntries)
        );
        let mut two = Vec::new();
        encode_awareness(
            &[
                AwarenessEntry {
                    client: 1,
                    clock: 1,
                    state: "{}",
                },
                AwarenessEntry {
                    client: 2,
                    clock: 1,
                    state: "null",
                },
            ],
            &mut two,
        );
        assert_eq!(AwarenessEntries::decode(&two, 2).unwrap().count(), 2);
        assert!(AwarenessEntries::decode(&two, 1).is_err());
        assert!(AwarenessEntries::decode(&two[..two.len() - 1], 2).is_err());
    }
}
