//! The start of a connection from a trusted proxy: the PROXY protocol
//! parser never panics and never claims more bytes than it was given.
#![no_main]
use chatd::server::proxy_protocol::{self, SNIFF_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sniffed = proxy_protocol::sniff(&data[..data.len().min(SNIFF_LEN)]);
    if sniffed != Some(true) {
        return;
    }
    if let Ok(Some(header)) = proxy_protocol::parse(data) {
        assert!(header.len <= data.len());
    }
});
