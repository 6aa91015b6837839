//! Engine.IO text packets from clients: decoding never panics, and what
//! decodes re-encodes to the same text.
#![no_main]
use chatd::engineio::packet::EnginePacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(packet) = EnginePacket::decode_text(text) {
            let mut again = String::new();
            packet.encode_text(&mut again);
            assert_eq!(again, text);
        }
    }
});
