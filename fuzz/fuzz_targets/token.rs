//! Handshake tokens: verification of arbitrary strings never panics and
//! never accepts a token the key did not sign.
#![no_main]
use chatd::chat::auth::{DEFAULT_MAX_TTL, TokenKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let key = TokenKey::new(b"fuzzing secret, thirty-two bytes", DEFAULT_MAX_TTL);
        assert!(key.verify(token, "Dummy-1").is_err());
    }
});
