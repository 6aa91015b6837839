//! `chat message` payloads and handshake names: validation never panics and
//! never accepts what the contract refuses; a message object written by
//! hand is byte for byte what serde_json writes, whatever its text.
#![no_main]
use chatd::chat::message::MessageView;
use chatd::chat::names::valid_user_name;
use chatd::chat::validate::validate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(draft) = validate(Some(&payload), false, "Dummy-1", Some("Dummy-2"), 4096) {
            assert!(!draft.text.trim().is_empty() && draft.text.len() <= 4096);
            assert!(valid_user_name(draft.to) && draft.to != "Dummy-1");
        }
    }
    if let Ok(name) = std::str::from_utf8(data) {
        if valid_user_name(name) {
            assert!(!name.is_empty() && name.len() <= 32);
        }
        let view = MessageView {
            room_id: "dm:Dummy-1_Dummy-2",
            id: name,
            from: "Dummy-1",
            text: name,
            to: "Dummy-2",
            time: name,
            version: 0,
            ts: Some(data.len() as u64),
        };
        let mut written = Vec::new();
        view.write_json(&mut written);
        assert_eq!(written, serde_json::to_vec(&view).unwrap());
    }
});
