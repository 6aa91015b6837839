//! `chatd purge`: deletes history for good, through the running server or,
//! when none runs, in the store file directly.

use std::path::PathBuf;

use anyhow::bail;
use argh::FromArgs;

use crate::admin::PurgeScope;
use crate::admin::client::StoreAccess;
use crate::chat::room::parse_room;
use crate::datadir;
use crate::duration::parse_time_arg;
use crate::store::now_us;

/// Delete history for good; prints how many messages went.
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "purge")]
pub struct PurgeCommand {
    /// the room to purge: dm:A_B, or the legacy A,B
    #[argh(option)]
    pub room: Option<String>,

    /// purge every room (needs --before and --yes)
    #[argh(switch)]
    pub all: bool,

    /// only messages older than T: RFC 3339, a duration ago (30d), or a ts in microseconds
    #[argh(option)]
    pub before: Option<String>,

    /// confirm purging every room
    #[argh(switch)]
    pub yes: bool,

    /// the data directory (default: the same one `chatd run` uses)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
}

impl PurgeCommand {
    /// Purges, then prints `Purged N messages from ROOM` on stdout.
    pub fn execute(self) -> anyhow::Result<()> {
        let scope = self.scope(now_us())?;
        let data_dir = datadir::resolve(self.data_dir.as_deref());
        let purged = match StoreAccess::reach(&data_dir)? {
            StoreAccess::Direct(store) => {
                // A cluster node's copy purged alone would differ from the
                // others' for good: a purge goes through the cluster's log.
                if store.log_id()?.is_some() {
                    bail!(
                        "{} is a copy of a cluster's history: purge while its node runs (chatd run --cluster), so every node purges the same",
                        data_dir.display()
                    );
                }
                scope.run(&store)?
            }
            StoreAccess::Server(client) => client.purge(&scope)?,
        };
        let s = if purged == 1 { "" } else { "s" };
        println!("Purged {purged} message{s} from {}", scope.describe());
        Ok(())
    }

    /// What to purge, from the flags; `now` anchors relative times.
    fn scope(&self, now: u64) -> anyhow::Result<PurgeScope> {
        let before = self
            .before
            .as_deref()
            .map(|t| parse_time_arg(t, now).map_err(|e| anyhow::anyhow!("--before: {e}")))
            .transpose()?;
        match (&self.room, self.all, before) {
            (Some(room), false, before) => Ok(PurgeScope::Room {
                room: parse_room(room).map_err(|e| anyhow::anyhow!("--room: {e}"))?,
                before,
            }),
            (None, true, None) => bail!(
                "--all needs --before T (e.g. --before 30d); to empty everything, \
                 give --before with the current time"
            ),
            (None, true, Some(_)) if !self.yes => {
                bail!("refusing to purge every room without --yes: this deletes history for good")
            }
            (None, true, Some(before)) => Ok(PurgeScope::All { before }),
            _ => bail!("give either --room ROOM or --all"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(args: &[&str]) -> anyhow::Result<PurgeScope> {
        PurgeCommand::from_args(&["purge"], args)
            .unwrap()
            .scope(5_000)
    }

    #[test]
    fn scope_from_flags() {
        assert_eq!(
            scope(&["--room", "dm:A_B"]).unwrap(),
            PurgeScope::Room {
                room: "dm:A_B".into(),
                before: None
            }
        );
        assert_eq!(
            scope(&["--all", "--before", "4000", "--yes"]).unwrap(),
            PurgeScope::All { before: 4000 }
        );
        for (args, needle) in [
            (&["--all", "--before", "1h"][..], "--yes"),
            (&["--all", "--yes"], "--before"),
            (&["--room", "A,A"], "--room"),
            (&["--room", "dm:A_B", "--before", "soon"], "--before"),
            (&["--room", "dm:A_B", "--all"], "either"),
            (&[], "either"),
        ] {
            let err = scope(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
