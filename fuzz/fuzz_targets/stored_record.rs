//! Values read back from the redb file (chunks of messages, staged
//! records, room states): a damaged one is an error, never a panic or an
//! unbounded allocation, and what decodes survives a round trip.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chatd::store::fuzzing::stored_value(data);
});
