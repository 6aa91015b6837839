//! Direct-message room names: `dm:<first>_<second>`, the two users in byte
//! order, so both sides of a conversation land in the same room.

use super::names::valid_user_name;

/// The room of the conversation between `a` and `b` (in either order).
pub fn dm_room(a: &str, b: &str) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let mut room = String::with_capacity(4 + first.len() + second.len());
    room.push_str("dm:");
    room.push_str(first);
    room.push('_');
    room.push_str(second);
    room
}

/// The other user of room `room` (`dm:A_B`) for `user`, if `user` is one of its two.
pub fn peer_in<'r>(room: &'r str, user: &str) -> Option<&'r str> {
    let (first, second) = room.strip_prefix("dm:")?.split_once('_')?;
    match user {
        u if u == first => Some(second),
        u if u == second => Some(first),
        _ => None,
    }
}

/// Reads an operator's room argument: `dm:A_B`, or the legacy `A,B`.
/// Returns the canonical `dm:` form.
pub fn parse_room(arg: &str) -> Result<String, String> {
    let (a, b) = if let Some(pair) = arg.strip_prefix("dm:") {
        // Names cannot hold `_`, so the first one splits the pair.
        pair.split_once('_')
            .ok_or_else(|| format!("room {arg:?} is not dm:<user>_<user>"))?
    } else {
        arg.split_once(',').ok_or_else(|| {
            format!("room {arg:?} is neither dm:<user>_<user> nor the legacy <user>,<user>")
        })?
    };
    if !valid_user_name(a) || !valid_user_name(b) || a == b {
        return Err(format!(
            "room {arg:?} must name two different valid users (1-32 of A-Z a-z 0-9 . -)"
        ));
    }
    Ok(dm_room(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_the_pair_by_bytes() {
        assert_eq!(dm_room("Dummy-2", "Dummy-1"), "dm:Dummy-1_Dummy-2");
        assert_eq!(dm_room("Dummy-1", "Dummy-2"), "dm:Dummy-1_Dummy-2");
        assert_eq!(dm_room("b", "B"), "dm:B_b");
    }

    #[test]
    fn finds_the_peer_of_either_user() {
        assert_eq!(peer_in("dm:Dummy-1_Dummy-2", "Dummy-1"), Some("Dummy-2"));
        assert_eq!(peer_in("dm:Dummy-1_Dummy-2", "Dummy-2"), Some("Dummy-1"));
        assert_eq!(peer_in("dm:Dummy-1_Dummy-2", "Dummy-3"), None);
        assert_eq!(peer_in("Dummy-1,Dummy-2", "Dummy-1"), None);
    }

    #[test]
    fn reads_both_operator_forms() {
        assert_eq!(
            parse_room("dm:Dummy-1_Dummy-2").unwrap(),
            "dm:Dummy-1_Dummy-2"
        );
        assert_eq!(parse_room("Dummy-2,Dummy-1").unwrap(), "dm:Dummy-1_Dummy-2");
        for bad in ["dm:", "dm:a", "a", "a,a", "dm:a_b_c", "x:a_b", "a,b c"] {
            assert!(parse_room(bad).is_err(), "{bad:?}");
        }
    }
}
