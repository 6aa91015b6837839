//! Websocket fragment sequences: reassembly never panics and never returns a
//! message over its limit.
#![no_main]
use chatd::engineio::fragments::{Message, Reassembler};
use fastwebsockets::OpCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reassembler = Reassembler::new(64);
    for chunk in data.chunks(9) {
        let Some((&head, payload)) = chunk.split_first() else {
            continue;
        };
        let opcode = match head % 3 {
            0 => OpCode::Text,
            1 => OpCode::Binary,
            _ => OpCode::Continuation,
        };
        match reassembler.push(opcode, head & 0x80 != 0, payload) {
            Ok(Some(Message::Text(bytes) | Message::Binary(bytes))) => assert!(bytes.len() <= 64),
            Ok(None) => {}
            Err(_) => reassembler = Reassembler::new(64),
        }
    }
});
