//! Entries read from the cluster's log stream: bytes that are not an entry
//! are an error, never a panic or an unbounded allocation, and an entry
//! that decodes encodes back to the same entry.
#![no_main]
use chatd::cluster::entry::{decode_entry, encode_entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = decode_entry(data) {
        let mut bytes = Vec::new();
        encode_entry(&entry.eid, &entry.change, &mut bytes);
        assert_eq!(decode_entry(&bytes).expect("round trip"), entry);
    }
});
