//! Hand-written postcard encoding of the live-traffic messages (`Update`,
//! `Broadcast`, `Ack`, `Ping`, `Pong`).
//!
//! These carry almost every byte of a busy server, and going through serde
//! costs more than the framing around them: a size pass and an encoding pass
//! of a few hundred instructions each. Here each is a handful of varints.
//! The bytes are exactly postcard's (tested against it in this module and
//! by the wire property tests), so peers see no difference. Decoding takes
//! only canonical varints and hands anything else to postcard, which stays
//! the authority on what is valid.

use super::message::{Bytes, DocId, Message};

// Variant tags: the declaration order of `Message`.
const UPDATE: u8 = 0;
const UPDATE_BATCH: u8 = 1;
const RELAY_PUSH: u8 = 22;
const BROADCAST: u8 = 2;
const ACK: u8 = 3;
const PING: u8 = 4;
const PONG: u8 = 5;

fn varint_len(v: u64) -> usize {
    // 7 payload bits per byte; 0 still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The encoded size of `m`, if it is one of the hot messages.
pub(crate) fn encoded_len(m: &Message) -> Option<usize> {
    Some(match m {
        Message::Update { doc, seq, data } => {
            1 + varint_len(doc.0.into())
                + varint_len(*seq)
                + varint_len(data.0.len() as u64)
                + data.0.len()
        }
        Message::Broadcast { doc, data } => broadcast_len(*doc, &data.0),
        Message::Ack {
            doc,
            applied,
            durable,
        } => ack_len(*doc, *applied, *durable),
        Message::Ping { t } => 1 + varint_len(*t),
        Message::Pong { echo } => 1 + varint_len(*echo),
        _ => return None,
    })
}

/// Appends the encoding of `m` if it is one of the hot messages.
pub(crate) fn encode(m: &Message, out: &mut Vec<u8>) -> bool {
    match m {
        Message::Update { doc, seq, data } => {
            out.reserve(data.0.len() + 16);
            out.push(UPDATE);
            put_varint(out, doc.0.into());
            put_varint(out, *seq);
            put_varint(out, data.0.len() as u64);
            out.extend_from_slice(&data.0);
        }
        Message::Broadcast { doc, data } => encode_broadcast(*doc, &data.0, out),
        Message::Ack {
            doc,
            applied,
            durable,
        } => encode_ack(*doc, *applied, *durable, out),
        Message::Ping { t } => {
            out.push(PING);
            put_varint(out, *t);
        }
        Message::Pong { echo } => {
            out.push(PONG);
            put_varint(out, *echo);
        }
        _ => return false,
    }
    true
}

/// Appends `Message::Broadcast { doc, data }` without building the message.
pub(crate) fn encode_broadcast(doc: DocId, data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len() + 11);
    out.push(BROADCAST);
    put_varint(out, doc.0.into());
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// The encoded size of `Message::Broadcast { doc, data }`.
pub(crate) fn broadcast_len(doc: DocId, data: &[u8]) -> usize {
    1 + varint_len(doc.0.into()) + varint_len(data.len() as u64) + data.len()
}

/// Appends `Message::Ack { doc, applied, durable }` without building the
/// message.
pub(crate) fn encode_ack(doc: DocId, applied: u64, durable: u64, out: &mut Vec<u8>) {
    out.push(ACK);
    put_varint(out, doc.0.into());
    put_varint(out, applied);
    put_varint(out, durable);
}

/// The encoded size of `Message::Ack { doc, applied, durable }`.
pub(crate) fn ack_len(doc: DocId, applied: u64, durable: u64) -> usize {
    1 + varint_len(doc.0.into()) + varint_len(applied) + varint_len(durable)
}

/// A body that is exactly one `Update`, borrowed: `(doc, seq, data)`.
/// `None` for anything else (the caller decodes it the general way).
pub(crate) fn single_update(body: &[u8]) -> Option<(DocId, u64, &[u8])> {
    let (&UPDATE, mut rest) = body.split_first()? else {
        return None;
    };
    let doc = DocId(u32::try_from(take_varint(&mut rest, 32)?).ok()?);
    let seq = take_varint(&mut rest, 64)?;
    let len = usize::try_from(take_varint(&mut rest, 64)?).ok()?;
    (rest.len() == len).then_some((doc, seq, rest))
}

/// Reads a canonical varint of at most `max_bits`; `None` for anything else
/// (truncated, overlong, out of range), which the caller leaves to postcard.
fn take_varint(input: &mut &[u8], max_bits: u32) -> Option<u64> {
    // Most values (doc handles, lengths, early sequence numbers) fit one byte.
    if let Some((&b, rest)) = input.split_first()
        && b < 0x80
    {
        *input = rest;
        return Some(b.into());
    }
    let mut v: u64 = 0;
    for (i, &b) in input.iter().enumerate().take(10) {
        let shift = 7 * i as u32;
        let part = u64::from(b & 0x7f);
        if shift >= max_bits || (shift > 0 && part >> (max_bits - shift).min(63) != 0) {
            return None;
        }
        v |= part << shift;
        if b & 0x80 == 0 {
            // Canonical: no trailing zero byte after the first.
            if i > 0 && b == 0 {
                return None;
            }
            *input = &input[i + 1..];
            return Some(v);
        }
    }
    None
}

/// How many elements the list-carrying message at the start of `body`
/// declares (`UpdateBatch`, `RelayPush`), read from its length prefix
/// before anything is decoded: each element costs the receiver about what a
/// message does, so a frame's message limit counts them. `None` for other
/// messages (they count one) or a prefix that does not parse (postcard then
/// refuses the message). Varints are read as leniently as postcard reads
/// them, so the count is the one postcard would decode.
pub(crate) fn declared_elements(body: &[u8]) -> Option<u64> {
    let (&tag, mut rest) = body.split_first()?;
    match tag {
        UPDATE_BATCH => {
            peek_varint(&mut rest, 5)?; // doc
            peek_varint(&mut rest, 10)?; // first_seq
        }
        RELAY_PUSH => {
            peek_varint(&mut rest, 5)?; // room
        }
        _ => return None,
    }
    peek_varint(&mut rest, 10)
}

/// Reads a varint of at most `max_len` bytes, canonical or not; bits past
/// 64 are dropped (such a count is refused either way).
fn peek_varint(input: &mut &[u8], max_len: usize) -> Option<u64> {
    let mut v: u64 = 0;
    for (i, &b) in input.iter().enumerate().take(max_len) {
        v |= u64::from(b & 0x7f).checked_shl(7 * i as u32).unwrap_or(0);
        if b & 0x80 == 0 {
            *input = &input[i + 1..];
            return Some(v);
        }
    }
    None
}

/// Decodes a hot message at the start of `body`, returning it and the rest;
/// `None` when `body` does not start with a plainly valid hot message (the
/// caller then asks postcard).
pub(crate) fn decode(body: &[u8]) -> Option<(Message, &[u8])> {
    let (&tag, mut rest) = body.split_first()?;
    let msg = match tag {
        UPDATE => {
            let doc = DocId(take_varint(&mut rest, 32)? as u32);
            let seq = take_varint(&mut rest, 64)?;
            let data = take_bytes(&mut rest)?;
            Message::Update { doc, seq, data }
        }
        BROADCAST => {
            let doc = DocId(take_varint(&mut rest, 32)? as u32);
            let data = take_bytes(&mut rest)?;
            Message::Broadcast { doc, data }
        }
        ACK => Message::Ack {
            doc: DocId(take_varint(&mut rest, 32)? as u32),
            applied: take_varint(&mut rest, 64)?,
            durable: take_varint(&mut rest, 64)?,
        },
        PING => Message::Ping {
            t: take_varint(&mut rest, 64)?,
        },
        PONG => Message::Pong {
            echo: take_varint(&mut rest, 64)?,
        },
        _ => return None,
    };
    Some((msg, rest))
}

fn take_bytes(input: &mut &[u8]) -> Option<Bytes> {
    let len = usize::try_from(take_varint(input, 64)?).ok()?;
    // The declared length is checked against what is there before copying.
    if len > input.len() {
        return None;
    }
    let (data, rest) = input.split_at(len);
    *input = rest;
    Some(Bytes(data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot_messages() -> Vec<Message> {
        let mut v = Vec::new();
        for n in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX.into(), u64::MAX] {
            let doc = DocId(n.min(u32::MAX.into()) as u32);
            let data = Bytes(vec![7; (n % 300) as usize]);
            v.push(Message::Update {
                doc,
                seq: n,
                data: data.clone(),
            });
            v.push(Message::Broadcast { doc, data });
            v.push(Message::Ack {
                doc,
                applied: n,
                durable: n / 2,
            });
            v.push(Message::Ping { t: n });
            v.push(Message::Pong { echo: n });
        }
        v
    }

    #[test]
    fn encodes_exactly_like_postcard() {
        for m in hot_messages() {
            let mut ours = Vec::new();
            assert!(encode(&m, &mut ours));
            assert_eq!(ours, postcard::to_allocvec(&m).unwrap(), "{m:?}");
            assert_eq!(encoded_len(&m), Some(ours.len()), "{m:?}");
            let (back, rest) = decode(&ours).expect("decodes");
            assert_eq!(back, m);
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn single_update_borrows_exactly_one_update() {
        for m in hot_messages() {
            let bytes = postcard::to_allocvec(&m).unwrap();
            match (&m, single_update(&bytes)) {
                (Message::Update { doc, seq, data }, Some((d, s, b))) => {
                    assert_eq!((*doc, *seq, &data.0[..]), (d, s, b));
                }
                (Message::Update { .. }, None) => panic!("missed {m:?}"),
                (_, got) => assert!(got.is_none(), "{m:?}"),
            }
            // Trailing bytes (a second message) or a cut: not a single update.
            let mut two = bytes.clone();
            two.push(0);
            assert!(single_update(&two).is_none());
            assert!(single_update(&bytes[..bytes.len() - 1]).is_none());
        }
    }

    #[test]
    fn declared_elements_match_postcard() {
        let batch = |n: usize| Message::UpdateBatch {
            doc: DocId(300),
            first_seq: u64::MAX,
            data: vec![Bytes(vec![1]); n],
        };
        for n in [0, 1, 127, 128, 5000] {
            let bytes = postcard::to_allocvec(&batch(n)).unwrap();
            assert_eq!(declared_elements(&bytes), Some(n as u64));
            let push = Message::RelayPush {
                room: DocId(u32::MAX),
                blobs: vec![Bytes::default(); n],
            };
            let bytes = postcard::to_allocvec(&push).unwrap();
            assert_eq!(declared_elements(&bytes), Some(n as u64));
        }
        let ping = postcard::to_allocvec(&Message::Ping { t: 1 }).unwrap();
        assert_eq!(declared_elements(&ping), None);
        // A declared count with nothing behind it is still a count.
        assert_eq!(
            declared_elements(&[UPDATE_BATCH, 0, 0, 0xff, 0xff, 0x7f]),
            Some(0x1f_ffff)
        );
        assert_eq!(declared_elements(&[UPDATE_BATCH, 0x80]), None);
    }

    #[test]
    fn leaves_other_messages_to_postcard() {
        let m = Message::CloseDoc { doc: DocId(1) };
        assert!(!encode(&m, &mut Vec::new()));
        assert_eq!(encoded_len(&m), None);
        assert!(decode(&postcard::to_allocvec(&m).unwrap()).is_none());
    }

    #[test]
    fn never_accepts_what_postcard_refuses() {
        // Every prefix of every hot message, and small mutations: whatever
        // the fast path accepts, postcard decodes to the same message.
        for m in hot_messages() {
            let bytes = postcard::to_allocvec(&m).unwrap();
            for cut in 0..=bytes.len().min(24) {
                check_agrees(&bytes[..cut]);
            }
            for i in 0..bytes.len().min(12) {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut b = bytes.clone();
                    b[i] ^= flip;
                    check_agrees(&b);
                }
            }
        }
        // Overlong and out-of-range varints go to postcard.
        assert!(decode(&[PING, 0x80, 0x00]).is_none());
        assert!(decode(&[ACK, 0xff, 0xff, 0xff, 0xff, 0x1f, 0, 0]).is_none());
        assert!(
            decode(&[
                PING, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02
            ])
            .is_none()
        );
        assert_eq!(
            decode(&[
                PING, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])
            .map(|(m, _)| m),
            Some(Message::Ping { t: u64::MAX })
        );
    }

    fn check_agrees(bytes: &[u8]) {
        if let Some((m, rest)) = decode(bytes) {
            let (pm, prest) = postcard::take_from_bytes::<Message>(bytes).expect("postcard agrees");
            assert_eq!(m, pm);
            assert_eq!(rest.len(), prest.len());
        }
    }
}
