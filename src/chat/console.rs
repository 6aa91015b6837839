//! The operator console: one line per event on stdout, in the seed's words.
//!
//! ```text
//! Listening at 5000
//! Online :  [ 'Dummy-1' ]
//! Dummy-1 is connected in room : dm:Dummy-1_Dummy-2
//! Client disconnect with id:  z9WzkUGusKb34sPoAAAB
//! No one is Online
//! ```

use std::io::Write as _;

use crate::presence::{OnlineSample, SAMPLE_NAMES};

/// Writes the console lines; each call writes its lines together.
#[derive(Debug, Clone, Copy)]
pub struct Console;

impl Console {
    /// The server is accepting connections on `port`.
    pub fn listening(port: u16) {
        print_lines(&[format!("Listening at {port}")]);
    }

    /// `user` connected (into `room`, when it has a peer).
    pub fn connected(online: &OnlineSample, user: &str, room: Option<&str>) {
        let mut lines = vec![online_line(&online.first, online.total)];
        if let Some(room) = room {
            lines.push(format!("{user} is connected in room : {room}"));
        }
        print_lines(&lines);
    }

    /// The connection with socket id `sid` left.
    pub fn disconnected(sid: &str, online: &OnlineSample) {
        print_lines(&[
            format!("Client disconnect with id:  {sid}"),
            online_line(&online.first, online.total),
        ]);
    }
}

/// How many items Node's `console.log` shows of an array before
/// `... N more items`: as many as an [`OnlineSample`] carries.
pub const NODE_MAX_ITEMS: usize = SAMPLE_NAMES;

/// `Online :  [ 'A', 'B' ]` as Node's console.log prints the array, or
/// `No one is Online`. `first` holds the first names in order (only
/// [`NODE_MAX_ITEMS`] are shown) of `total` users online.
pub fn online_line(first: &[String], total: usize) -> String {
    if total == 0 {
        return "No one is Online".to_owned();
    }
    format!("Online :  {}", node_array_of(first, total))
}

/// A list of names as Node's `console.log` prints an array of strings:
/// `[ 'A', 'B' ]`, `[]` when empty, and `[ 'A', ... 7 more items ]` past
/// [`NODE_MAX_ITEMS`].
pub fn node_array<S: AsRef<str>>(names: &[S]) -> String {
    node_array_of(names, names.len())
}

fn node_array_of<S: AsRef<str>>(first: &[S], total: usize) -> String {
    if total == 0 {
        return "[]".to_owned();
    }
    let shown = &first[..first.len().min(NODE_MAX_ITEMS).min(total)];
    let mut out = String::from("[ ");
    for (i, name) in shown.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('\'');
        out.push_str(name.as_ref());
        out.push('\'');
    }
    if total > shown.len() {
        if !shown.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&format!("... {} more items", total - shown.len()));
    }
    out.push_str(" ]");
    out
}

fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for line in lines {
        // A closed stdout (operator piped us into `head`) must not stop chat.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_online_list_as_node_does() {
        assert_eq!(
            online_line(&["Dummy-1".into()], 1),
            "Online :  [ 'Dummy-1' ]"
        );
        assert_eq!(
            online_line(&["Dummy-1".into(), "Dummy-2".into()], 2),
            "Online :  [ 'Dummy-1', 'Dummy-2' ]"
        );
        assert_eq!(online_line(&[], 0), "No one is Online");
        assert_eq!(node_array::<&str>(&[]), "[]");
    }

    #[test]
    fn shows_at_most_a_hundred_names_as_node_does() {
        let names: Vec<String> = (0..250).map(|i| format!("u{i:03}")).collect();
        let line = online_line(&names[..NODE_MAX_ITEMS], names.len());
        assert!(line.starts_with("Online :  [ 'u000', 'u001', "), "{line}");
        assert!(line.ends_with("'u099', ... 150 more items ]"), "{line}");
        assert_eq!(node_array(&names), line.trim_start_matches("Online :  "));
    }
}
