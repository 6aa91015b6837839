//! A whole store file, damaged: opening it (as `chatd run` does),
//! exporting it with no server, and walking it (`chatd check`) may fail but
//! never panic past their guards.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // redb panics on some damaged pages and the store catches those; the
    // fuzzer's hook would abort on a caught panic too, so it is silenced.
    // A panic that escapes still fails the run.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    chatd::store::fuzzing::damaged_store(data);
});
