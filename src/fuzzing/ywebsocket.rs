//! The y-websocket translator under fuzzing (feature `yrs`).

use std::time::{Duration, Instant};

use crate::adapters::yrs::YrsDocument;
use crate::registry::MemoryRegistry;
use crate::server::{AllowAll, Hub, ServerConfig};
use crate::testing::Budget;
use crate::ywebsocket::{AwarenessEntries, YMessage, YjsConfig, YjsSession};

/// Bytes a translated frame may add to the client message it came from
/// (frame header, CRC, message envelope, document handle, sequence
/// number).
const FRAME_OVERHEAD: usize = 64;

/// The `Close` frame (with its reason's text) the translator sends the hub
/// when a message ends the connection.
const CLOSE_FRAME: usize = 160;

/// Cuts `data` into client messages (a length byte, then that many bytes)
/// and feeds them to a [`YjsSession`] in front of a hub with a yrs
/// registry, checking after every message:
///
/// - the y-protocols decoder: whatever decodes re-encodes to bytes that
///   decode to the same message, and an awareness update never yields more
///   entries than a third of its bytes;
/// - the translator: one client message puts at most its own size plus
///   64 bytes on the way to the hub, per frame (and a 160-byte `Close`
///   when it ends the connection), and at most as many
///   frames as its size needs;
/// - the hub: its cost model ([`Budget`]) for every frame the translator
///   hands it;
/// - the way back: what the translator queues for the Yjs client is at most
///   twice what the hub sent it plus 64 bytes a frame (a held sync
///   transfer is only released when complete, so it counts where it is
///   released).
///
/// ```
/// crdt_socket_sync::fuzzing::ywebsocket(&[3, 0, 0, 0, 4, 0, 2, 1, 0]);
/// ```
pub fn ywebsocket(data: &[u8]) {
    let limits = super::fuzz_limits();
    let config = ServerConfig {
        limits,
        ..ServerConfig::default()
    };
    let mut now = Instant::now();
    let mut hub = Hub::new(config, AllowAll);
    let mut docs = MemoryRegistry::new(|_: &str| YrsDocument::server());
    let budget = Budget::new(&hub);
    let conn = hub.accept(now);
    budget.drain_events(&mut hub);
    let yjs_config = YjsConfig {
        limits,
        max_held_bytes: 4096,
        ..YjsConfig::default()
    };
    let mut yjs = YjsSession::new("doc", Vec::new(), yjs_config, now);
    let mut from_hub = 0usize;
    let mut to_client = 0usize;

    let mut rest = data;
    let mut first = true;
    while let Some((&len, tail)) = rest.split_first() {
        let (msg, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        check_decoder(msg);
        if yjs.closed().is_none() {
            let _ = yjs.handle_client(msg, now);
        }
        let mut sent = 0usize;
        let mut frames = 0usize;
        while let Some(frame) = yjs.poll_to_server() {
            sent += frame.len();
            frames += 1;
            if let Err(e) = budget.input(&mut hub, conn, now, &frame, &mut docs) {
                panic!("{e}");
            }
        }
        // The first message also carries the Hello (sent at creation).
        let mut allowance = if first { 1024 } else { 0 };
        if yjs.closed().is_some() {
            allowance += CLOSE_FRAME;
        }
        first = false;
        assert!(
            sent <= msg.len() + FRAME_OVERHEAD * frames.max(1) + allowance,
            "a {}-byte client message sent {sent} bytes in {frames} frames to the hub",
            msg.len()
        );
        assert!(
            frames <= 2 + msg.len() / 1024,
            "{frames} frames for {} bytes",
            msg.len()
        );
        // The hub's answers, translated (bounded rounds).
        for _ in 0..8 {
            let mut moved = false;
            while let Some((_, frame)) = hub.poll_transmit() {
                moved = true;
                from_hub += frame.len();
                let _ = yjs.handle_server(&frame, now);
            }
            while let Some(out) = yjs.poll_to_client() {
                moved = true;
                to_client += out.len();
                assert!(
                    to_client <= 2 * from_hub + 64 * (from_hub / 8 + 1),
                    "{to_client} bytes to the client for {from_hub} from the hub"
                );
            }
            while let Some(frame) = yjs.poll_to_server() {
                moved = true;
                if let Err(e) = budget.input(&mut hub, conn, now, &frame, &mut docs) {
                    panic!("{e}");
                }
            }
            budget.drain_events(&mut hub);
            if !moved {
                break;
            }
        }
        now += Duration::from_millis(u64::from(len) * 10);
        hub.handle_timeout(now, &mut docs);
        budget.drain_events(&mut hub);
    }
}

fn check_decoder(msg: &[u8]) {
    let Ok(decoded) = YMessage::decode(msg) else {
        return;
    };
    let mut again = Vec::new();
    decoded.encode(&mut again);
    assert_eq!(YMessage::decode(&again), Ok(decoded));
    assert!(again.len() <= msg.len(), "re-encoding grew");
    if let YMessage::Awareness(update) = decoded
        && let Ok(entries) = AwarenessEntries::decode(update, usize::MAX)
    {
        assert!(entries.count() <= update.len() / 3);
    }
}
