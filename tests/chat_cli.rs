//! `chatd chat` against a real server: the seed's story with two terminal
//! clients driven through pipes, and the ways it refuses to start.

mod common;

use std::io::Write as _;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};

use common::{CHATD, Lines, Server, start_server};

/// A running `chatd chat`, its stdin and stdout piped.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines,
}

impl Chat {
    /// `chatd chat --user USER --peer PEER --url <server> ARGS...`.
    fn start(server: &Server, user: &str, peer: &str, args: &[&str]) -> Chat {
        let mut child = Command::new(CHATD)
            .args([
                "chat",
                "--user",
                user,
                "--peer",
                peer,
                "--url",
                &server.url(),
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start chatd chat");
        let out = Lines::new(child.stdout.take().expect("piped stdout"));
        Chat {
            stdin: child.stdin.take(),
            child,
            out,
        }
    }

    /// `chatd chat` with the server's data directory: no token, no --ca.
    fn local(server: &Server, user: &str, peer: &str) -> Chat {
        let data_dir = server.data_dir.to_str().expect("UTF-8 path");
        Chat::start(server, user, peer, &["--data-dir", data_dir])
    }

    /// Types a line.
    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to chatd chat");
    }

    /// The next line printed must be `expected`.
    fn expect(&mut self, expected: &str) {
        assert_eq!(self.out.next_line().as_deref(), Some(expected));
    }

    /// Closes stdin; returns the lines printed until it exited, its exit
    /// status and its stderr.
    fn finish(mut self) -> (Vec<String>, ExitStatus, String) {
        drop(self.stdin.take());
        let rest = self.out.rest();
        let output = self.child.wait_with_output().expect("wait for chatd chat");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (rest, output.status, stderr)
    }
}

#[test]
fn the_seed_story() {
    let mut server = start_server(&[]);
    let mut one = Chat::local(&server, "Dummy-1", "Dummy-2");
    one.expect("online: [ 'Dummy-1' ]");
    one.say("Hello World! from Dummy-1");
    one.expect("You : Hello World! from Dummy-1");

    let mut two = Chat::local(&server, "Dummy-2", "Dummy-1");
    two.expect("online: [ 'Dummy-1', 'Dummy-2' ]");
    // What Dummy-2 missed comes as history.
    two.expect("Dummy-1 : Hello World! from Dummy-1");
    one.expect("online: [ 'Dummy-1', 'Dummy-2' ]");

    two.say("hello from Dummy-2");
    two.expect("You : hello from Dummy-2");
    one.expect("Dummy-2 : hello from Dummy-2");
    two.say("   ");
    two.expect("You : Message is not accepted (empty)");

    let (rest, status, stderr) = two.finish();
    assert_eq!(rest, ["Disconnected."]);
    assert!(status.success(), "{stderr}");
    one.expect("online: [ 'Dummy-1' ]");
    let (rest, status, stderr) = one.finish();
    assert_eq!(rest, ["Disconnected."]);
    assert!(status.success(), "{stderr}");
    server.wait_for_line("No one is Online");
    server.stop();
}

#[test]
fn answers_come_in_the_order_lines_were_typed_and_all_before_exit() {
    let server = start_server(&[]);
    let mut chat = Chat::local(&server, "Dummy-1", "Dummy-2");
    chat.expect("online: [ 'Dummy-1' ]");
    // A refusal is answered at once, an accepted message only after its
    // commit; stdin ends right away, yet every answer is printed.
    for line in ["first", "", "third"] {
        chat.say(line);
    }
    let (rest, status, stderr) = chat.finish();
    assert_eq!(
        rest,
        [
            "You : first",
            "You : Message is not accepted (empty)",
            "You : third",
            "Disconnected."
        ]
    );
    assert!(status.success(), "{stderr}");
    server.stop();
}

#[test]
fn explicit_token_with_ca_or_insecure() {
    let server = start_server(&[]);
    let token = server.token("Dummy-1");
    let cert = server.cert();
    let cert = cert.to_str().expect("UTF-8 path");
    // An unrelated data directory: nothing is taken from it.
    let elsewhere = tempfile::tempdir().expect("temporary directory");
    let elsewhere = elsewhere.path().to_str().expect("UTF-8 path");
    let with_ca = ["--token", &token, "--data-dir", elsewhere, "--ca", cert];
    let insecure = ["--token", &token, "--data-dir", elsewhere, "--insecure"];
    for args in [&with_ca[..], &insecure[..]] {
        let mut chat = Chat::start(&server, "Dummy-1", "Dummy-2", args);
        chat.expect("online: [ 'Dummy-1' ]");
        let (rest, status, stderr) = chat.finish();
        assert_eq!(rest, ["Disconnected."]);
        assert!(status.success(), "{stderr}");
    }
    server.stop();
}

#[test]
fn refuses_to_start_without_a_certificate_to_trust() {
    let server = start_server(&[]);
    let empty = tempfile::tempdir().expect("temporary directory");
    let empty = empty.path().to_str().expect("UTF-8 path");
    let chat = Chat::start(&server, "Dummy-1", "Dummy-2", &["--data-dir", empty]);
    let (rest, status, stderr) = chat.finish();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(!status.success());
    assert!(
        stderr.contains("cannot verify the server's certificate")
            && stderr.contains("--ca")
            && stderr.contains("--insecure"),
        "{stderr}"
    );
    server.stop();
}

#[test]
fn a_certificate_that_is_not_the_servers_is_refused() {
    let server = start_server(&[]);
    let other = tempfile::tempdir().expect("temporary directory");
    let (other_cert, _) = chatd::server::tls::self_signed(other.path()).expect("a certificate");
    let other_cert = other_cert.to_str().expect("UTF-8 path");
    let token = server.token("Dummy-1");
    let chat = Chat::start(
        &server,
        "Dummy-1",
        "Dummy-2",
        &["--ca", other_cert, "--token", &token],
    );
    let (rest, status, stderr) = chat.finish();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(!status.success());
    assert!(stderr.contains("TLS handshake"), "{stderr}");
    server.stop();
}

#[test]
fn a_bad_token_is_explained() {
    let server = start_server(&[]);
    let cert = server.cert();
    let cert = cert.to_str().expect("UTF-8 path");
    let chat = Chat::start(
        &server,
        "Dummy-1",
        "Dummy-2",
        &["--ca", cert, "--token", "not-a-token"],
    );
    let (rest, status, stderr) = chat.finish();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(!status.success());
    assert!(stderr.contains("refused the token for Dummy-1"), "{stderr}");
    server.stop();
}

#[test]
fn the_server_going_away_ends_the_chat() {
    let server = start_server(&[]);
    let mut chat = Chat::local(&server, "Dummy-1", "Dummy-2");
    chat.expect("online: [ 'Dummy-1' ]");
    server.stop();
    chat.expect("Disconnected.");
    // Its stdin is still open: it exits on its own, with an error.
    let status = chat.child.wait().expect("wait for chatd chat");
    assert!(!status.success());
}
