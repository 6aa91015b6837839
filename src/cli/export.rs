//! `chatd export`: history as a JSON array of message objects, oldest first,
//! from the running server or, when none runs, from the store file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use argh::FromArgs;

use crate::admin::client::StoreAccess;
use crate::admin::{ExportScope, write_export};
use crate::chat::room::parse_room;
use crate::datadir;
use crate::duration::parse_time_arg;
use crate::store::now_us;

/// Write history as a JSON array of messages, oldest first.
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "export")]
pub struct ExportCommand {
    /// the room to export: dm:A_B, or the legacy A,B
    #[argh(option)]
    pub room: Option<String>,

    /// export every room
    #[argh(switch)]
    pub all: bool,

    /// write to FILE (replaced atomically once complete) instead of stdout
    #[argh(option)]
    pub out: Option<PathBuf>,

    /// only messages from T on: RFC 3339, a duration ago (30d), or a ts in microseconds
    #[argh(option)]
    pub since: Option<String>,

    /// only messages up to T (inclusive), in the same forms as --since
    #[argh(option)]
    pub until: Option<String>,

    /// the data directory (default: the same one `chatd run` uses)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
}

impl ExportCommand {
    /// Writes the export; reports how many messages on stderr.
    pub fn execute(self) -> anyhow::Result<()> {
        let scope = self.scope(now_us())?;
        let data_dir = datadir::resolve(self.data_dir.as_deref());
        let target = StoreAccess::reach(&data_dir)?;
        let count = match &self.out {
            Some(path) => {
                let mut file = AtomicFile::create(path)?;
                let count = export(&target, &scope, file.writer())?;
                file.commit()?;
                count
            }
            None => export(&target, &scope, std::io::stdout().lock())?,
        };
        let place = match &self.out {
            Some(path) => format!(" to {}", path.display()),
            None => String::new(),
        };
        if count == 0 {
            eprintln!("No messages in {}{place}", scope.describe());
        } else {
            let s = if count == 1 { "" } else { "s" };
            eprintln!(
                "Exported {count} message{s} from {}{place}",
                scope.describe()
            );
        }
        Ok(())
    }

    /// What to export, from the flags; `now` anchors relative times.
    fn scope(&self, now: u64) -> anyhow::Result<ExportScope> {
        let time = |flag: &str, arg: &Option<String>| {
            arg.as_deref()
                .map(|t| parse_time_arg(t, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
                .transpose()
        };
        match (&self.room, self.all) {
            (Some(room), false) => Ok(ExportScope::Room {
                room: parse_room(room).map_err(|e| anyhow::anyhow!("--room: {e}"))?,
                since: time("since", &self.since)?,
                until: time("until", &self.until)?,
            }),
            (None, true) if self.since.is_none() && self.until.is_none() => Ok(ExportScope::All),
            (None, true) => bail!("--since and --until go with --room, not --all"),
            _ => bail!("give either --room ROOM or --all"),
        }
    }
}

fn export(target: &StoreAccess, scope: &ExportScope, out: impl Write) -> anyhow::Result<u64> {
    let mut out = BufWriter::new(out);
    match target {
        StoreAccess::Direct(store) => {
            // A panic inside the store (a damaged file) is an incomplete
            // export like any other: an error, and `--out` left as it was.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                write_export(store, scope, &mut out)
            }))
            .map_err(|_| {
                anyhow::anyhow!(
                    "the export stopped: reading the store failed (see the message above); \
                     `chatd check` tells what is damaged"
                )
            })?
            .map_err(Into::into)
        }
        StoreAccess::Server(client) => Ok(client.export(scope, &mut out)?),
    }
}

/// A file that appears under its name only once complete: written to a
/// temporary sibling (mode 0600: history is private), flushed to disk, then
/// renamed over the target. Dropped before [`commit`](Self::commit), it
/// removes the temporary file and leaves the target as it was.
struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    committed: bool,
}

impl AtomicFile {
    fn create(path: &Path) -> anyhow::Result<AtomicFile> {
        let tmp = datadir::temp_sibling(path);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| {
                format!(
                    "cannot create {}: check that its directory exists and is writable",
                    tmp.display()
                )
            })?;
        Ok(AtomicFile {
            path: path.to_owned(),
            tmp,
            file,
            committed: false,
        })
    }

    fn writer(&mut self) -> &mut File {
        &mut self.file
    }

    fn commit(mut self) -> anyhow::Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("cannot flush {} to disk", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("cannot move the export into {}", self.path.display()))?;
        self.committed = true;
        // Make the rename itself durable.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ExportCommand {
        ExportCommand::from_args(&["export"], args).unwrap()
    }

    #[test]
    fn scope_from_flags() {
        let cmd = parse(&["--room", "Dummy-2,Dummy-1", "--since", "1h", "--until", "7"]);
        assert_eq!(
            cmd.scope(10_000_000_000).unwrap(),
            ExportScope::Room {
                room: "dm:Dummy-1_Dummy-2".into(),
                since: Some(10_000_000_000 - 3_600_000_000),
                until: Some(7),
            }
        );
        assert_eq!(parse(&["--all"]).scope(0).unwrap(), ExportScope::All);
        for (args, needle) in [
            (&["--room", "x"][..], "--room"),
            (&["--room", "dm:A_B", "--since", "yesterday"], "--since"),
            (&["--all", "--since", "1h"], "--room"),
            (&["--all", "--room", "dm:A_B"], "either"),
            (&[], "either"),
        ] {
            let err = parse(args).scope(0).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn atomic_file_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        std::fs::write(&path, "old").unwrap();
        let mut file = AtomicFile::create(&path).unwrap();
        file.writer().write_all(b"new").unwrap();
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let mut file = AtomicFile::create(&path).unwrap();
        file.writer().write_all(b"new").unwrap();
        file.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
