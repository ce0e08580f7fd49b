//! [`Document`](crate::document::Document) implementations for yrs, loro
//! and automerge, each behind the cargo feature of the same name.
//!
//! Every adapter wraps the library's native document, so applications keep
//! editing with the library's own API (`yrs::YrsDocument` derefs to
//! `yrs::Doc`, `loro::LoroDocument` to `loro::LoroDoc`,
//! `automerge::AutomergeDocument` hands out `&mut automerge::Automerge`).
//! The sync sessions then talk to it through the trait:
//! [`take_local_update`](crate::document::Document::take_local_update)
//! collects what the user typed since the last call, and
//! [`apply`](crate::document::Document::apply) integrates remote updates.
//!
//! Replica ids (yrs client id, loro peer id, automerge actor id) are drawn
//! from the operating system's random source by the default constructors
//! (`YrsDocument::new`, `LoroDocument::new`, `AutomergeDocument::new`), so
//! several clients built from the same code never share an id (a shared id
//! makes replicas diverge silently). Tests and reproducible runs pick fixed
//! ids with `with_client_id`, `with_peer_id` and `with_actor`. Apart from
//! that id the adapters use no clock and no randomness.
//!
//! Versions are canonical: two replicas holding the same operations report
//! byte-identical versions, whatever order they received them in.
//!
//! | adapter | version | delta | pending | history pruning |
//! |---|---|---|---|---|
//! | yrs | state vector (lib0 v1, sorted by client) | `encode_state_as_update_v1` | yrs' pending structs | — (yrs garbage-collects deletions itself) |
//! | loro | oplog version vector (postcard, sorted by peer) | `ExportMode::updates` | loro's pending changes | shallow snapshot ([`prune_to`](crate::document::Document::prune_to)) |
//! | automerge | heads (32-byte hashes, sorted) | changes since the heads | automerge's change queue | — |

#[cfg(feature = "automerge")]
pub mod automerge;
#[cfg(feature = "loro")]
pub mod loro;
#[cfg(feature = "yrs")]
pub mod yrs;
#[cfg(feature = "yrs")]
mod yrs_check;

/// A random `u64` from the operating system (`getrandom`), for replica ids.
///
/// Should the OS source fail (it does not on supported platforms), the
/// id is derived from the wall clock, the process id and a process-wide
/// counter instead: still distinct per call and per process.
#[cfg(any(feature = "yrs", feature = "loro", feature = "automerge"))]
pub(crate) fn random_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    getrandom::u64().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // splitmix64 finalizer spreads the inputs over all bits.
        let mut z =
            nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Appends `value` as an unsigned LEB128 varint (lib0 `writeVarUint`).
#[cfg(feature = "yrs")]
pub(crate) fn write_uvar(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned LEB128 varint of at most 64 bits from the front of
/// `input`, advancing it.
#[cfg(feature = "yrs")]
pub(crate) fn read_uvar(input: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(all(test, feature = "yrs"))]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            write_uvar(&mut out, v);
            let mut input = &out[..];
            assert_eq!(read_uvar(&mut input), Some(v));
            assert!(input.is_empty());
        }
        assert_eq!(read_uvar(&mut &[0xff; 11][..]), None);
        assert_eq!(read_uvar(&mut &[0x80][..]), None);
    }
}
