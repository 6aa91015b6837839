//! Socket.IO packets (namespaces, ack ids, attachment counts, JSON): decoding
//! never panics, and a decoded packet re-encodes to one that decodes alike.
#![no_main]
use chatd::socketio::packet::{Packet, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(packet) = Packet::decode(text) {
            let again = encode(packet.kind, packet.nsp, packet.attachments, packet.id, packet.data.as_ref());
            let reparsed = Packet::decode(&again).expect("re-encoded packet decodes");
            assert_eq!(reparsed, packet);
        }
    }
});
