//! Fills a data directory with synthetic history through the library's
//! group-commit writer, for `scripts/bench-store.sh`.
//!
//! ```text
//! cargo run --release --example fill_store -- DATA_DIR [MESSAGES] [ROOMS]
//! ```
//!
//! Messages go round-robin over ROOMS rooms `dm:u0000_v0000`, ... (default
//! 1,000,000 messages over 1,000 rooms), each about 60 bytes of text: the
//! same messages `chatd bench store` writes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use chatd::bench::store::fill;
use chatd::store::Store;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        bail!("usage: fill_store DATA_DIR [MESSAGES] [ROOMS]");
    };
    let number = |arg: Option<String>, default: u64| -> anyhow::Result<u64> {
        arg.map_or(Ok(default), |a| a.parse().context("not a number"))
    };
    let messages = number(args.next(), 1_000_000)?;
    let rooms = number(args.next(), 1_000)?.max(1);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the runtime")?;
    let store = Store::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let started = Instant::now();
    let filled = runtime.block_on(fill(store, messages, rooms, None))?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "filled {} with {} messages in {rooms} rooms in {secs:.1}s ({:.0} messages/s)",
        dir.display(),
        filled.messages,
        filled.messages as f64 / secs
    );
    Ok(())
}
