//! Fills a data directory with synthetic history through the library's
//! group-commit writer, for `scripts/bench-store.sh`.
//!
//! ```text
//! cargo run --release --example fill_store -- DATA_DIR [MESSAGES] [ROOMS]
//! ```
//!
//! Messages go round-robin over ROOMS rooms `dm:u0000_v0000`, ... (default
//! 1,000,000 messages over 1,000 rooms), each about 60 bytes of text.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use chatd::chat::message::format_time;
use chatd::store::{NewMessage, Store, Writer};

const QUEUE: usize = 16 * 1024;

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
    let stored = runtime.block_on(async move {
        let Writer {
            handle,
            mut batches,
            thread,
        } = Writer::<()>::spawn(store, QUEUE, format_time)?;
        // Drain committed batches as they come, or the writer would stall.
        let drain = tokio::spawn(async move {
            let mut stored = 0u64;
            while let Some(batch) = batches.recv().await {
                match batch.result {
                    Ok(committed) => stored += committed.len() as u64,
                    Err((error, _)) => return Err(anyhow::Error::new(error)),
                }
            }
            Ok(stored)
        });
        for i in 0..messages {
            let r = i % rooms;
            let (from, to) = (format!("u{r:04}"), format!("v{r:04}"));
            let message = NewMessage {
                room: format!("dm:{from}_{to}"),
                id: format!("bench-socket-{r:04}"),
                from,
                to,
                text: format!("benchmark message number {i} with a little padding text"),
            };
            if handle.submit(message, ()).await.is_err() {
                bail!("the writer stopped");
            }
        }
        drop(handle);
        let stored = drain.await.context("drain task")??;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
        Ok(stored)
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "filled {} with {stored} messages in {rooms} rooms in {secs:.1}s ({:.0} messages/s)",
        dir.display(),
        stored as f64 / secs
    );
    Ok(())
}
