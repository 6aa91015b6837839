//! Long-polling POST bodies from clients: decoding never panics, and what
//! decodes re-encodes to a body that decodes to the same packets.
#![no_main]
use chatd::engineio::payload::{self, Encoder, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(records) = payload::decode(data) else {
        return;
    };
    let mut encoder = Encoder::default();
    for record in &records {
        match record {
            Record::Packet(packet) => {
                let mut text = String::new();
                packet.encode_text(&mut text);
                encoder.text(&text);
            }
            Record::Binary(bytes) => encoder.binary(bytes),
        }
    }
    let body = encoder.finish();
    assert_eq!(payload::decode(body.as_bytes()).as_ref(), Ok(&records));
});
