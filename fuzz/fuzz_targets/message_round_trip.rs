#![no_main]
use crdt_socket_sync::{fuzzing::message_round_trip, wire::Message};
libfuzzer_sys::fuzz_target!(|input: (Vec<Message>, bool)| message_round_trip(input.0, input.1));
