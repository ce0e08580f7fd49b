#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crdt_socket_sync::fuzzing::ywebsocket(data));
