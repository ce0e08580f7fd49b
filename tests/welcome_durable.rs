//! The server announces in `Welcome` whether it stores documents durably
//! (so a client waiting for durability against a memory-only server can be
//! told so instead of waiting forever).

mod common;

use std::time::Instant;

use common::*;
use crdt_socket_sync::client::{ClientEvent, ClientSession};
use crdt_socket_sync::registry::Registry;
use crdt_socket_sync::server::{AllowAll, Hub, ServerConfig};
use crdt_socket_sync::wire::{Compression, Encoder, Message, PeerLimits, SessionId};

/// Golden bytes of a `Welcome` frame: `durable` is the last field of the
/// message, one byte (postcard `bool`).
#[test]
fn golden_welcome_bytes_end_with_the_durable_flag() {
    let welcome = |durable| Message::Welcome {
        version: 1,
        session: SessionId(5),
        compression: Compression::None,
        limits: PeerLimits {
            max_frame_len: 1 << 20,
            max_decompressed_len: 4 << 20,
        },
        heartbeat_ms: 2000,
        durable,
    };
    let encode = |m: Message| {
        let mut frame = Vec::new();
        Encoder::new(&Default::default())
            .encode(&[m], &mut frame)
            .unwrap();
        frame
    };
    let no = encode(welcome(false));
    let yes = encode(welcome(true));
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    println!("not durable: {}\ndurable:     {}", hex(&no), hex(&yes));
    assert_eq!(decode_frame(&no), [welcome(false)]);
    assert_eq!(decode_frame(&yes), [welcome(true)]);
    assert_eq!(hex(&no), GOLDEN_NOT_DURABLE);
    assert_eq!(hex(&yes), GOLDEN_DURABLE);
}

/// Header (version/flags, body length 14), body (variant 7, version 1,
/// session 5, no compression, limits 2^20 and 2^22, heartbeat 2000,
/// durable), CRC32.
const GOLDEN_NOT_DURABLE: &str = "100e0701050080804080808002d00f00840d82e9";
const GOLDEN_DURABLE: &str = "100e0701050080804080808002d00f01123d859e";

/// A memory registry says "not durable"; the client learns it.
#[test]
fn golden_memory_server_announces_not_durable() {
    let mut n = Net::new(ServerConfig::default(), AllowAll);
    n.add_client(client_config("alice"));
    assert_eq!(n.clients[0].session.server_durable(), None);
    n.connect(0);
    assert_eq!(
        n.take_transcript(),
        ["c0> Hello[2] alice", "s>0 Welcome v2 None"]
    );
    assert_eq!(n.clients[0].session.server_durable(), Some(false));
    let ev = n.take_events(0);
    assert!(
        ev.iter()
            .any(|e| matches!(e, ClientEvent::Connected { durable: false, .. })),
        "{ev:?}"
    );
}

/// Runs one handshake of a fresh client against a hub over `registry`;
/// returns the client after it read the `Welcome`.
fn handshake(registry: &mut impl Registry) -> ClientSession {
    let now = Instant::now();
    let mut hub = Hub::new(ServerConfig::default(), AllowAll);
    let conn = hub.accept(now);
    let mut client = ClientSession::new(client_config("bob"), now);
    let mut client_reg = client_registry(1);
    client.connect(now);
    for _ in 0..4 {
        while let Some(frame) = client.poll_transmit() {
            hub.handle_input(conn, now, &frame, registry);
        }
        while let Some((_, frame)) = hub.poll_transmit() {
            client.handle_input(now, &frame, &mut client_reg);
        }
    }
    client
}

/// A registry that says it is durable makes the hub announce it.
#[test]
fn a_durable_registry_is_announced_in_welcome() {
    struct Durable(Reg);
    impl Registry for Durable {
        type Doc = OpLog;
        fn open(
            &mut self,
            name: &str,
        ) -> Result<&mut OpLog, crdt_socket_sync::registry::RegistryError> {
            self.0.open(name)
        }
        fn get(&mut self, name: &str) -> Option<&mut OpLog> {
            self.0.get(name)
        }
        fn list(&self) -> Vec<String> {
            self.0.list()
        }
        fn remove(&mut self, name: &str) -> bool {
            self.0.remove(name)
        }
        fn is_durable(&self) -> bool {
            true
        }
    }
    assert!(!server_registry().is_durable(), "memory registries are not");
    let client = handshake(&mut Durable(server_registry()));
    assert_eq!(client.server_durable(), Some(true));
    assert_eq!(
        handshake(&mut server_registry()).server_durable(),
        Some(false)
    );
}

#[cfg(feature = "sqlite")]
#[test]
fn the_sqlite_registry_is_durable() {
    let dir = std::env::temp_dir().join(format!("welcome-durable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("docs.db");
    let mut reg = crdt_socket_sync::store::SqliteRegistry::open(&path, |_| OpLog::new(0)).unwrap();
    assert!(reg.is_durable());
    assert_eq!(handshake(&mut reg).server_durable(), Some(true));
    drop(reg);
    let _ = std::fs::remove_dir_all(&dir);
}
