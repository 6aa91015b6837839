//! `chatd check` and `chatd salvage`: what of a damaged store is still
//! readable, and a new store with all of it. Both read the file directly
//! and read-only, so the server must be stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use argh::FromArgs;

use crate::datadir;
use crate::store::{DB_FILE_NAME, Salvaged, Store, StoreError, salvage};

/// Verify the store: read every room, message, cursor and cid (the server must be stopped).
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "check")]
pub struct CheckCommand {
    /// the data directory (default: the same one `chatd run` uses)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
}

/// Copy every readable message, cursor and cid of a damaged store into a new one.
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "salvage")]
pub struct SalvageCommand {
    /// the new data directory to write the salvaged store into (must hold no chatd.redb)
    #[argh(option)]
    pub out: PathBuf,

    /// the data directory of the damaged store (default: the same one `chatd run` uses)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
}

impl CheckCommand {
    /// Prints what was read; an error (exit 1) listing what was not.
    pub fn execute(self) -> anyhow::Result<()> {
        let data_dir = datadir::resolve(self.data_dir.as_deref());
        let db = data_dir.join(DB_FILE_NAME);
        let walked = walk(&db, None)?;
        println!("{}: {}", db.display(), summary(&walked));
        if walked.lost.is_empty() {
            return Ok(());
        }
        bail!(
            "{} is damaged; unreadable:\n  {}\n`chatd salvage --data-dir {} --out NEW_DIR` copies what is readable into a new store",
            db.display(),
            walked.lost.join("\n  "),
            data_dir.display()
        )
    }
}

impl SalvageCommand {
    /// Writes the new store; an error (exit 1) if anything was lost.
    pub fn execute(self) -> anyhow::Result<()> {
        let data_dir = datadir::resolve(self.data_dir.as_deref());
        let db = data_dir.join(DB_FILE_NAME);
        let target = self.out.join(DB_FILE_NAME);
        if target.exists() {
            bail!(
                "{} exists: salvage writes a new store, give an --out directory without one",
                target.display()
            );
        }
        datadir::ensure(&self.out)?;
        let into = Store::open(&self.out)
            .with_context(|| format!("cannot create the new store in {}", self.out.display()))?;
        let walked = walk(&db, Some(&into));
        drop(into);
        let walked = walked.inspect_err(|_| {
            // Nothing was read: no new store to mistake for a salvaged one.
            let _ = std::fs::remove_file(&target);
        })?;
        if !Store::wait_closed(std::time::Duration::from_secs(10)) {
            bail!("the new store {} was not closed in time", target.display());
        }
        println!("Salvaged into {}: {}", target.display(), summary(&walked));
        println!(
            "To serve it: stop chatd, keep {} aside, and move {} into {}",
            db.display(),
            target.display(),
            data_dir.display()
        );
        if walked.lost.is_empty() {
            return Ok(());
        }
        bail!(
            "not everything could be read; lost:\n  {}",
            walked.lost.join("\n  ")
        )
    }
}

// Reads (and copies) the store at `db`, with redb's panics on damaged
// pages kept off the terminal: each is caught and reported as lost.
fn walk(db: &Path, into: Option<&Store>) -> anyhow::Result<Salvaged> {
    if !db.exists() {
        bail!("no store at {} (is --data-dir right?)", db.display());
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let walked = salvage(db, into);
    std::panic::set_hook(hook);
    walked.map_err(|error| match error {
        StoreError::Locked { .. } => anyhow::anyhow!(
            "{} is in use: stop the chatd server first (this reads the file directly)",
            db.display()
        ),
        StoreError::Damaged { what, reason } => anyhow::anyhow!(
            "cannot read {} at all: redb's own structures are damaged ({what} failed: {reason}); \
             restore it from a backup",
            db.display()
        ),
        error => anyhow::Error::new(error).context(format!(
            "cannot read {} at all: redb's own structures are damaged; restore it from a backup",
            db.display()
        )),
    })
}

fn summary(walked: &Salvaged) -> String {
    format!(
        "{} rooms (with their read cursors), {} messages, {} cids read",
        walked.rooms, walked.messages, walked.cids
    )
}
