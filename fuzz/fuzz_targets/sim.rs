#![no_main]

use crdt_socket_sync::sim::SimOp;

libfuzzer_sys::fuzz_target!(|s: (u64, u8, Vec<SimOp>)| crdt_socket_sync::fuzzing::sim(s.0, s.1, s.2));
