//! `chatd chat`: a terminal client, the seed's Dummy clients in the binary.
//!
//! Lines typed on stdin are sent to the peer; the conversation is printed in
//! the seed's words:
//!
//! ```text
//! online: [ 'Dummy-1' ]
//! You : Hello World! from Dummy-1
//! online: [ 'Dummy-1', 'Dummy-2' ]
//! Dummy-2 : hello from Dummy-2
//! Disconnected.
//! ```
//!
//! It works in a pipe: at the end of stdin it waits for the answers to what
//! it sent, then disconnects.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use argh::FromArgs;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::chat::console::node_array;
use crate::cli::token::{DEFAULT_TTL, mint_token};
use crate::client::{Ack, Client, ClientError, ConnectOptions, tls};
use crate::datadir;
use crate::server::tls::self_signed_paths;

/// The server a local operator most likely runs.
const DEFAULT_URL: &str = "wss://127.0.0.1:5000";

/// Chat with a peer from the terminal: each line on stdin is sent, the
/// conversation is printed.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "chat")]
pub struct ChatCommand {
    /// who you are
    #[argh(option)]
    pub user: String,

    /// who you talk to
    #[argh(option)]
    pub peer: String,

    /// the server (default wss://127.0.0.1:5000)
    #[argh(option, default = "String::from(DEFAULT_URL)")]
    pub url: String,

    /// a token for --user (default: one minted with the data directory's secret)
    #[argh(option)]
    pub token: Option<String>,

    /// the data directory whose secret and certificate to use (default: the same one `chatd run` uses)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,

    /// PEM certificate to trust for wss:// (default: the data directory's tls/cert.pem)
    #[argh(option)]
    pub ca: Option<PathBuf>,

    /// do NOT verify the server's certificate: encrypted, but anyone on the way can listen in
    #[argh(switch)]
    pub insecure: bool,
}

impl ChatCommand {
    /// Chats until stdin ends (or the server goes away).
    pub fn execute(self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let result = runtime.block_on(self.chat());
        // Tokio reads stdin on a blocking thread that may still wait for a
        // line nobody will type: do not wait for it.
        runtime.shutdown_background();
        result
    }

    async fn chat(self) -> anyhow::Result<()> {
        let data_dir = datadir::resolve(self.data_dir.as_deref());
        let options = ConnectOptions {
            tls: self.tls(&data_dir)?,
            ..ConnectOptions::default()
        };
        let token = match &self.token {
            Some(token) => token.clone(),
            None => mint_token(&self.user, DEFAULT_TTL, Some(&data_dir), None)?,
        };
        let auth = json!({"user": self.user, "peer": self.peer, "token": token});
        let mut client = Client::connect(&self.url, auth, &options)
            .await
            .map_err(|error| match error {
                ClientError::Refused(reason) if reason == "unauthorized" => anyhow::anyhow!(
                    "the server at {} refused the token for {}: pass --token, or --data-dir \
                     of the server so a token is minted with its secret",
                    self.url,
                    self.user
                ),
                error => anyhow::Error::new(error).context(format!("cannot chat on {}", self.url)),
            })?;
        let transcript = Transcript { me: &self.user };

        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut input_open = true;
        // Answers are printed in the order the lines were typed, although a
        // refusal comes back before an earlier message's commit does.
        let mut answers: VecDeque<(String, Ack)> = VecDeque::new();
        while input_open || !answers.is_empty() {
            let first_answer = async {
                match answers.front_mut() {
                    Some((_, ack)) => ack.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                line = lines.next_line(), if input_open => {
                    match line.context("cannot read stdin")? {
                        Some(text) => match client.emit_with_ack("chat message", json!(text)).await {
                            Ok(ack) => answers.push_back((text, ack)),
                            // The connection ended: the events branch says so.
                            Err(ClientError::Closed) => input_open = false,
                            Err(error) => return Err(error.into()),
                        },
                        None => input_open = false,
                    }
                }
                _ = tokio::signal::ctrl_c(), if input_open => input_open = false,
                answer = first_answer => {
                    let text = answers.pop_front().map(|(text, _)| text).unwrap_or_default();
                    match answer {
                        Ok(args) => say(&transcript.answer(&args.first().unwrap_or_default())),
                        // The connection ended: the events branch says so.
                        Err(ClientError::Closed) => {}
                        Err(error) => eprintln!("chatd: {error} for {text:?}: it may or may not have been stored"),
                    }
                }
                event = client.next_event() => match event {
                    Some(event) => {
                        let arg = event.args.first().unwrap_or_default();
                        transcript.event(&event.name, &arg).iter().for_each(|line| say(line));
                    }
                    None => {
                        say("Disconnected.");
                        bail!("the server closed the connection");
                    }
                },
            }
        }
        client.disconnect().await?;
        say("Disconnected.");
        Ok(())
    }

    /// TLS settings: none at all with --insecure; else trust --ca, or the
    /// data directory's generated certificate. `None` for `ws://`.
    fn tls(&self, data_dir: &Path) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        if self.url.starts_with("ws://") || self.url.starts_with("http://") {
            return Ok(None);
        }
        if self.insecure {
            return tls::insecure().map(Some);
        }
        let ca = match &self.ca {
            Some(ca) => ca.clone(),
            None => {
                let (cert, _) = self_signed_paths(data_dir);
                if !cert.exists() {
                    bail!(
                        "cannot verify the server's certificate: no --ca given and {} does not \
                         exist; pass --ca FILE (the server's certificate or its CA), --data-dir \
                         of the server, or --insecure to skip verification",
                        cert.display()
                    );
                }
                cert
            }
        };
        tls::trusting(&ca).map(Some)
    }
}

/// How the conversation is printed, in the seed's words.
struct Transcript<'a> {
    /// This user: their own messages read `You : ...`.
    me: &'a str,
}

impl Transcript<'_> {
    /// The lines for one event from the server, given its first argument.
    fn event(&self, name: &str, arg: &Value) -> Vec<String> {
        match name {
            "online" => {
                let names: Vec<&str> = arg
                    .as_array()
                    .map(|users| users.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                vec![format!("online: {}", node_array(&names))]
            }
            "history" => arg
                .as_array()
                .map(|messages| messages.iter().map(|m| self.message(m)).collect())
                .unwrap_or_default(),
            "chat message" => vec![self.message(arg)],
            "chat error" => vec![refused(arg)],
            _ => Vec::new(),
        }
    }

    /// The line for the server's answer to a message this client sent.
    fn answer(&self, answer: &Value) -> String {
        if answer["ok"] == Value::Bool(true) {
            self.message(&answer["message"])
        } else {
            refused(answer)
        }
    }

    /// `<from> : <text>`, or `You : <text>` for this user's own.
    fn message(&self, message: &Value) -> String {
        let from = message["from"].as_str().unwrap_or("?");
        let text = message["text"].as_str().unwrap_or("");
        let who = if from == self.me { "You" } else { from };
        format!("{who} : {text}")
    }
}

/// `You : Message is not accepted (reason)`.
fn refused(answer: &Value) -> String {
    let error = answer["error"]
        .as_str()
        .unwrap_or("Message is not accepted");
    match answer["reason"].as_str() {
        Some(reason) => format!("You : {error} ({reason})"),
        None => format!("You : {error}"),
    }
}

/// Prints one line now, even into a pipe; a closed stdout must not end the
/// chat.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Transcript<'static> = Transcript { me: "Dummy-1" };

    #[test]
    fn prints_presence_like_node() {
        assert_eq!(
            ME.event("online", &json!(["Dummy-1", "Dummy-2"])),
            ["online: [ 'Dummy-1', 'Dummy-2' ]"]
        );
        assert_eq!(ME.event("online", &json!([])), ["online: []"]);
    }

    #[test]
    fn prints_messages_history_and_answers() {
        let mine = json!({"from": "Dummy-1", "text": "Hello World! from Dummy-1"});
        let theirs = json!({"from": "Dummy-2", "text": "hello from Dummy-2"});
        assert_eq!(
            ME.event("history", &json!([mine, theirs])),
            [
                "You : Hello World! from Dummy-1",
                "Dummy-2 : hello from Dummy-2"
            ]
        );
        assert_eq!(
            ME.event("chat message", &theirs),
            ["Dummy-2 : hello from Dummy-2"]
        );
        assert_eq!(
            ME.answer(&json!({"ok": true, "message": mine})),
            "You : Hello World! from Dummy-1"
        );
        assert_eq!(
            ME.answer(&json!({"ok": false, "error": "Message is not accepted", "reason": "empty"})),
            "You : Message is not accepted (empty)"
        );
        assert!(ME.event("something else", &json!(1)).is_empty());
    }
}
