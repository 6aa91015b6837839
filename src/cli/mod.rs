//! The operator commands of the `chatd` binary, one file each.

pub mod chat;
pub mod run;
pub mod token;

use argh::FromArgs;

/// chatd: a self-hosted chat backend speaking Socket.IO, with durable history.
#[derive(FromArgs, Debug)]
pub struct Chatd {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Run(run::RunCommand),
    Chat(chat::ChatCommand),
    Token(token::TokenCommand),
}

impl Chatd {
    /// Runs the chosen subcommand.
    pub fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(command) => command.execute(),
            Command::Chat(command) => command.execute(),
            Command::Token(command) => command.execute(),
        }
    }
}
