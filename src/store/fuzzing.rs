//! What the fuzz target `stored_record` drives: the decoders of every value
//! the store reads back from disk. Bad bytes must give an error, never a
//! panic or a large allocation; what decodes must encode back to what
//! decodes the same.

use super::chunk::{self, Builder};
use super::record::{self, Context};
use super::room::RoomState;

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
}
