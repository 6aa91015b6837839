//! `chatd online`: who is online now, asked of the running server.

use std::path::PathBuf;

use anyhow::Context;
use argh::FromArgs;

use crate::admin::client::AdminClient;
use crate::chat::console::online_line;
use crate::datadir;

/// Show who is online now (asks the running server).
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "online")]
pub struct OnlineCommand {
    /// print a JSON array of {"user", "connections", "rooms"}
    #[argh(switch)]
    pub json: bool,

    /// the data directory of the server to ask (default: the same one `chatd run` uses)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
}

impl OnlineCommand {
    /// Prints the online list on stdout.
    pub fn execute(self) -> anyhow::Result<()> {
        let data_dir = datadir::resolve(self.data_dir.as_deref());
        let presence = AdminClient::new(&data_dir)?.online()?;
        if self.json {
            let json = serde_json::to_string(&presence).context("cannot encode the online list")?;
            println!("{json}");
        } else {
            let users: Vec<String> = presence.into_iter().map(|p| p.user).collect();
            println!("{}", online_line(&users, users.len()));
        }
        Ok(())
    }
}
