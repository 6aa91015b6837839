//! The rule for user names, shared by the handshake and the operator commands.

/// Longest accepted user name, in characters (all ASCII, so also bytes).
const MAX_LEN: usize = 32;

/// Whether `s` is a valid user name: 1–32 characters of `A–Z a–z 0–9 . -`,
/// starting with a letter or digit. Names are case-sensitive.
pub fn valid_user_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.len() <= MAX_LEN
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_names() {
        for ok in ["Dummy-1", "a", "7", "alice.smith", "A-.-", &"x".repeat(32)] {
            assert!(valid_user_name(ok), "{ok:?}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let long = "x".repeat(33);
        for bad in [
            "", "-a", ".a", "a b", "a_b", "a,b", "a:b", "é", "aé", "a\n", "a/b", &long,
        ] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
    }
}
