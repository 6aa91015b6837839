//! The on-disk record of one message: a format-version byte, then bincode 2
//! (serde, standard config) of the fields that are not part of the key.
//!
//! Decoding borrows strings straight from the input instead of allocating
//! them first: a corrupt length prefix then fails as "unexpected end" rather
//! than asking the allocator for gigabytes.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// Format version written as the first byte of every record.
pub const RECORD_VERSION: u8 = 1;

/// The value half of a stored message (the key holds room and ts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Socket id of the sending connection.
    pub id: String,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Message text.
    pub text: String,
    /// The `time` string clients were sent, kept so exports match it.
    pub time: String,
}

// The serialized shape. Field order is the format: never reorder.
#[derive(Serialize, Deserialize)]
struct RecordRef<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(borrow)]
    from: &'a str,
    #[serde(borrow)]
    to: &'a str,
    #[serde(borrow)]
    text: &'a str,
    #[serde(borrow)]
    time: &'a str,
}

/// Encodes a record (version byte + bincode).
pub fn encode_record(record: &Record) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    encode_fields_into(
        &mut out,
        &record.id,
        &record.from,
        &record.to,
        &record.text,
        &record.time,
    )?;
    Ok(out)
}

// Lets the writer encode straight from a message without cloning strings,
// into one buffer it reuses for a whole batch (`out` is cleared first).
pub(crate) fn encode_fields_into(
    out: &mut Vec<u8>,
    id: &str,
    from: &str,
    to: &str,
    text: &str,
    time: &str,
) -> Result<(), StoreError> {
    let body = RecordRef {
        id,
        from,
        to,
        text,
        time,
    };
    out.clear();
    out.push(RECORD_VERSION);
    bincode::serde::encode_into_std_write(&body, out, bincode::config::standard())
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    Ok(())
}

/// Decodes record bytes; any malformed input is an error, never a panic.
pub fn decode_record(bytes: &[u8]) -> Result<Record, StoreError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| StoreError::BadRecord("empty record".into()))?;
    if version != RECORD_VERSION {
        return Err(StoreError::BadRecord(format!(
            "unknown record format version {version}"
        )));
    }
    let (r, used): (RecordRef<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(body, bincode::config::standard())
            .map_err(|e| StoreError::BadRecord(e.to_string()))?;
    // Trailing bytes mean the record is not what we wrote: refuse rather than guess.
    if used != body.len() {
        return Err(StoreError::BadRecord(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(Record {
        id: r.id.to_owned(),
        from: r.from.to_owned(),
        to: r.to.to_owned(),
        text: r.text.to_owned(),
        time: r.time.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            id: "jxKCSoWK6t4p8vojAAAD".into(),
            from: "Dummy-1".into(),
            to: "Dummy-2".into(),
            text: "Hello 🌍 World!".into(),
            time: "28/12/2025, 2:45:46 am".into(),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode_record(&sample()).unwrap();
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode_record(&bytes).unwrap(), sample());
    }

    #[test]
    fn rejects_empty_and_unknown_version() {
        assert!(matches!(decode_record(&[]), Err(StoreError::BadRecord(_))));
        let mut bytes = encode_record(&sample()).unwrap();
        bytes[0] = 99;
        assert!(matches!(
            decode_record(&bytes),
            Err(StoreError::BadRecord(_))
        ));
    }

    #[test]
    fn rejects_every_truncation_and_trailing_bytes() {
        let bytes = encode_record(&sample()).unwrap();
        for n in 0..bytes.len() {
            assert!(decode_record(&bytes[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_record(&longer).is_err());
    }

    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        // 0xFD = u64 varint marker, then a length near u64::MAX.
        let bytes = [
            RECORD_VERSION,
            0xFD,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0x7F,
        ];
        assert!(matches!(
            decode_record(&bytes),
            Err(StoreError::BadRecord(_))
        ));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        // Five one-byte strings; the first is not UTF-8.
        let bytes = [RECORD_VERSION, 1, 0xFF, 1, b'a', 1, b'b', 1, b'c', 1, b'd'];
        assert!(matches!(
            decode_record(&bytes),
            Err(StoreError::BadRecord(_))
        ));
        let ok = [RECORD_VERSION, 1, b'z', 1, b'a', 1, b'b', 1, b'c', 1, b'd'];
        assert_eq!(decode_record(&ok).unwrap().id, "z");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: a fixed LCG drives lengths and contents.
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        };
        for _ in 0..2000 {
            let len = usize::from(next() % 64);
            let mut bytes: Vec<u8> = (0..len).map(|_| next()).collect();
            if let Some(b) = bytes.first_mut() {
                *b = RECORD_VERSION;
            }
            let _ = decode_record(&bytes);
        }
    }
}
