#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crdt_socket_sync::fuzzing::client_session(data));
