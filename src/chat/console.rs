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

/// Writes the console lines; each call writes its lines together.
#[derive(Debug, Clone, Copy)]
pub struct Console;

impl Console {
    /// The server is accepting connections on `port`.
    pub fn listening(port: u16) {
        print_lines(&[format!("Listening at {port}")]);
    }

    /// `user` connected (into `room`, when it has a peer).
    pub fn connected(everyone: &[String], user: &str, room: Option<&str>) {
        let mut lines = vec![online_line(everyone)];
        if let Some(room) = room {
            lines.push(format!("{user} is connected in room : {room}"));
        }
        print_lines(&lines);
    }

    /// The connection with socket id `sid` left.
    pub fn disconnected(sid: &str, everyone: &[String]) {
        print_lines(&[
            format!("Client disconnect with id:  {sid}"),
            online_line(everyone),
        ]);
    }
}

/// `Online :  [ 'A', 'B' ]` as Node's console.log prints the array, or
/// `No one is Online`.
pub fn online_line(everyone: &[String]) -> String {
    if everyone.is_empty() {
        return "No one is Online".to_owned();
    }
    format!("Online :  {}", node_array(everyone))
}

/// A list of names as Node's `console.log` prints an array of strings:
/// `[ 'A', 'B' ]`, or `[]` when empty.
pub fn node_array<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        return "[]".to_owned();
    }
    let quoted: Vec<String> = names
        .iter()
        .map(|name| format!("'{}'", name.as_ref()))
        .collect();
    format!("[ {} ]", quoted.join(", "))
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
        assert_eq!(online_line(&["Dummy-1".into()]), "Online :  [ 'Dummy-1' ]");
        assert_eq!(
            online_line(&["Dummy-1".into(), "Dummy-2".into()]),
            "Online :  [ 'Dummy-1', 'Dummy-2' ]"
        );
        assert_eq!(online_line(&[]), "No one is Online");
        assert_eq!(node_array::<&str>(&[]), "[]");
    }
}
