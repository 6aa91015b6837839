//! Records read back from the redb file: a corrupt record is an error, never
//! a panic or an unbounded allocation.
#![no_main]
use chatd::store::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = decode_record(data) {
        let bytes = encode_record(&record).expect("a decoded record encodes");
        assert_eq!(decode_record(&bytes).expect("round trip"), record);
    }
});
