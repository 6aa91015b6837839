//! Socket.IO packets (namespaces, ack ids, attachment counts, JSON): decoding
//! never panics, a decoded packet re-encodes to one that decodes alike, and
//! the tree-free reading of events and acks (what the client uses) accepts
//! every event and ack the full decode accepts, with the same name and
//! arguments.
#![no_main]
use chatd::socketio::packet::{Packet, PacketType, RawPacket, encode};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let Ok(raw) = RawPacket::decode(text) else {
            return;
        };
        let event = raw.event();
        let ack = raw.ack();
        if let Ok(packet) = raw.parse() {
            let again = encode(packet.kind, packet.nsp, packet.attachments, packet.id, packet.data.as_ref());
            let reparsed = Packet::decode(&again).expect("re-encoded packet decodes");
            assert_eq!(reparsed, packet);
            let Some(Value::Array(mut args)) = packet.data else {
                return;
            };
            match packet.kind {
                PacketType::Event | PacketType::BinaryEvent => {
                    let event = event.expect("an event the full decode accepts");
                    let name = args.remove(0);
                    if let Value::String(name) = name {
                        assert_eq!(event.name, name);
                    }
                    let tail: Value = serde_json::from_str(&format!("[{}", event.args_tail))
                        .expect("the arguments' text is an array");
                    assert_eq!(tail, Value::Array(args));
                }
                PacketType::Ack | PacketType::BinaryAck => {
                    let (id, json) = ack.expect("an ack the full decode accepts");
                    assert_eq!(Some(id), packet.id);
                    assert_eq!(serde_json::from_str::<Value>(json).ok(), Some(Value::Array(args)));
                }
                _ => {}
            }
        }
    }
});
