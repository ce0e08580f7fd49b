#![no_main]

use crdt_socket_sync::wire::Message;

libfuzzer_sys::fuzz_target!(|m: Vec<Message>| crdt_socket_sync::fuzzing::server_frames(m));
