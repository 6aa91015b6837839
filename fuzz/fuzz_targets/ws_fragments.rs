//! A client's websocket byte stream: frame heads parse without panicking,
//! never claim more than the limit, and reassembly never returns a message
//! over its limit.
#![no_main]
use chatd::engineio::fragments::{Message, Reassembler};
use chatd::engineio::frame_reader::parse_head;
use fastwebsockets::OpCode;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let mut reassembler = Reassembler::new(MAX);
    let mut rest = data;
    while let Ok(Some(head)) = parse_head(rest, MAX) {
        assert!(head.payload_len <= MAX);
        let Some(payload) = rest.get(head.len..head.len + head.payload_len) else {
            break;
        };
        if matches!(head.opcode, OpCode::Text | OpCode::Binary | OpCode::Continuation) {
            match reassembler.push(head.opcode, head.fin, payload) {
                Ok(Some(Message::Text(bytes) | Message::Binary(bytes))) => {
                    assert!(bytes.len() <= MAX)
                }
                Ok(None) => {}
                Err(_) => reassembler = Reassembler::new(MAX),
            }
        }
        rest = &rest[head.len + head.payload_len..];
    }
});
