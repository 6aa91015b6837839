//! What the fuzz targets `stored_record` and `damaged_store` drive: the
//! decoders of every value the store reads back from disk, and the paths
//! that open a whole damaged file. Bad bytes must give an error, never a
//! panic (one inside redb is caught: `contain.rs`) or a large allocation;
//! what decodes must encode back to what decodes the same.

use std::path::Path;
use std::sync::OnceLock;

use super::chunk::{self, Builder};
use super::record::{self, Context};
use super::room::RoomState;
use super::{DB_FILE_NAME, Store, contained, salvage};

/// Decodes `data` as a chunk, a staged record or a room state (its first
/// byte picks which) and checks that what decodes survives a round trip.
/// Panics only if a round trip changes something.
pub fn stored_value(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => chunk_round_trip(bytes),
        1 => {
            let prev = Context {
                ts: 1_000,
                offset_s: 0,
            };
            let mut input = bytes;
            if let Ok(r) = record::decode(&mut input, prev) {
                let mut again = Vec::new();
                record::encode(&mut again, &r, prev);
                let decoded = record::decode(&mut again.as_slice(), prev);
                assert_eq!(decoded.as_ref(), Ok(&r), "a record changed in a round trip");
            }
        }
        _ => {
            if let Ok(state) = RoomState::decode(bytes) {
                let again = RoomState::decode(&state.encode());
                assert_eq!(
                    again.as_ref(),
                    Ok(&state),
                    "a room state changed in a round trip"
                );
            }
        }
    }
}

fn chunk_round_trip(bytes: &[u8]) {
    let first_ts = 1_000;
    let Ok((header, records)) = chunk::open(first_ts, bytes) else {
        return;
    };
    let Ok(records) = records.collect::<Result<Vec<_>, _>>() else {
        return;
    };
    let mut builder = Builder::new(header.before);
    let mut sealed = Vec::new();
    for r in &records {
        builder.push(r, &mut sealed);
    }
    sealed.push(builder.seal());
    let mut again = Vec::new();
    for chunk in &sealed {
        let (_, decoded) = chunk::open(chunk.first_ts, &chunk.bytes).expect("a built chunk opens");
        again.extend(decoded.map(|r| r.expect("a built chunk decodes")));
    }
    assert_eq!(again, records, "records changed in a round trip");
}

/// Damages a small store file with `data` (patches: a u32 LE offset, a
/// length byte, that many bytes), then opens it as `chatd run` does, exports
/// it as `chatd export` does with no server, and walks it as `chatd check`
/// does. Any of these may fail; none may panic past its guard.
pub fn damaged_store(data: &[u8]) {
    let mut file = base_file().to_vec();
    let mut rest = data;
    while let [a, b, c, d, n, tail @ ..] = rest {
        let at = u32::from_le_bytes([*a, *b, *c, *d]) as usize % file.len();
        let n = (*n as usize).min(tail.len()).min(file.len() - at);
        file[at..at + n].copy_from_slice(&tail[..n]);
        rest = &tail[n..];
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    open_damaged(dir.path(), &file);
}

/// What [`damaged_store`] does with the damaged bytes `file`, in `dir`.
pub fn open_damaged(dir: &Path, file: &[u8]) {
    let path = dir.join(DB_FILE_NAME);
    std::fs::write(&path, file).expect("write the damaged file");
    if let Ok(store) = Store::open(dir) {
        let _ = contained("exporting", || store.export_all(|_| Ok(())));
    }
    let _ = salvage(&path, None);
}

/// A store file with a little of everything: three rooms, chunks and
/// staged messages, cids, a cursor and a purge; closed cleanly.
fn base_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        use super::change::{Change, NewMessage, PurgeSelection, ReadMark};
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(dir.path()).expect("a new store");
        let message = |room: &str, from: &str, to: &str, i: u64| NewMessage {
            room: room.into(),
            sid: "jxKCSoWK6t4p8vojAAAD".into(),
            from: from.into(),
            to: to.into(),
            text: format!("message {i} in {room}"),
            cid: Some(format!("c{i}")),
            time_us: 1_700_000_000_000_000 + i * 1_000_000,
            utc_offset_s: 3600,
            eid: None,
        };
        for i in 0..60 {
            let (room, from, to) = [
                ("dm:A_B", "A", "B"),
                ("dm:B_C", "C", "B"),
                ("dm:A_C", "A", "C"),
            ][i as usize % 3];
            store
                .apply(Change::Message(message(room, from, to, i)))
                .expect("apply");
            if i == 40 {
                store.settle().expect("fold");
            }
        }
        store
            .apply(Change::Read(ReadMark {
                room: "dm:A_B".into(),
                user: "B".into(),
                ts: 1_700_000_030_000_000,
            }))
            .expect("read");
        store
            .apply(Change::Purge(PurgeSelection::Room {
                room: "dm:A_C".into(),
                before: Some(1_700_000_010_000_000),
            }))
            .expect("purge");
        let path = store.path().to_owned();
        drop(store);
        std::fs::read(path).expect("read the store file")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_seeds_and_random_bytes_never_panic() {
        let seeds =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/stored_record");
        for name in ["seed-chunk", "seed-staged", "seed-room"] {
            let seed = std::fs::read(seeds.join(name)).unwrap();
            stored_value(&seed);
            // Each seed is a value that decodes, so the fuzzer starts from
            // the inside of the format.
            let decodes = match seed[0] {
                0 => chunk::open(1_000, &seed[1..]).is_ok_and(|(_, mut r)| r.all(|r| r.is_ok())),
                1 => record::decode(
                    &mut &seed[1..],
                    Context {
                        ts: 1_000,
                        offset_s: 0,
                    },
                )
                .is_ok(),
                _ => RoomState::decode(&seed[1..]).is_ok(),
            };
            assert!(decodes, "{name}");
        }
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..5000 {
            let mut bytes = Vec::new();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for _ in 0..(seed >> 58) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bytes.push((seed >> 33) as u8);
            }
            stored_value(&bytes);
        }
    }

    #[test]
    fn no_damaged_page_panics_open_export_or_check() {
        // Every page of the file overwritten in turn, with two patterns:
        // what a torn write or a bad sector leaves.
        let file = base_file();
        let dir = tempfile::tempdir().unwrap();
        for page in 0..file.len() / 4096 {
            for fill in [0x00, 0xa5] {
                let mut damaged = file.to_vec();
                damaged[page * 4096..(page + 1) * 4096].fill(fill);
                open_damaged(dir.path(), &damaged);
            }
        }
        // And the fuzz target's own decoding of patches.
        damaged_store(&[0, 16, 0, 0, 3, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn a_damaged_allocator_state_does_not_panic_the_close() {
        // Found by the fuzzer: redb's close commits the allocator state it
        // read from the file, and asserted on a damaged one.
        damaged_store(&[32, 1, 0, 40, 191, 2, 40, 74]);
    }

    #[test]
    fn a_chunk_header_counting_past_any_history_is_refused() {
        // Found by the fuzzer: message counts near u64::MAX in a damaged
        // chunk header overflowed when the chunk was built upon.
        stored_value(&[
            0x00, 0x01, 0x01, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x01, 0x01, 0x01, 0x00, 0x00,
        ]);
    }
}
