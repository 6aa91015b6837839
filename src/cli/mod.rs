//! The operator commands of the `chatd` binary, one file each.

pub mod bench;
pub mod chat;
pub mod export;
pub mod online;
pub mod purge;
pub mod run;
pub mod salvage;
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
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process; argh's derive takes the commands themselves, not boxes"
)]
enum Command {
    Run(run::RunCommand),
    Online(online::OnlineCommand),
    Export(export::ExportCommand),
    Purge(purge::PurgeCommand),
    Check(salvage::CheckCommand),
    Salvage(salvage::SalvageCommand),
    Chat(chat::ChatCommand),
    Token(token::TokenCommand),
    Bench(bench::BenchCommand),
}

impl Chatd {
    /// Runs the chosen subcommand.
    pub fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(command) => command.execute(),
            Command::Online(command) => command.execute(),
            Command::Export(command) => command.execute(),
            Command::Purge(command) => command.execute(),
            Command::Check(command) => command.execute(),
            Command::Salvage(command) => command.execute(),
            Command::Chat(command) => command.execute(),
            Command::Token(command) => command.execute(),
            Command::Bench(command) => command.execute(),
        }
    }
}
