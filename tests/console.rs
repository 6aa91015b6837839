//! The console under connection churn: the contract's lines, but never
//! more than a few a second, however fast clients come and go.

mod common;

use std::time::Instant;

use common::{Server, within};

/// The counts of a summary line `... C connects and D disconnects not shown (...)`.
fn left_out(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix("... ")?;
    let (connects, rest) = rest.split_once(" connects and ")?;
    let (disconnects, _) = rest.split_once(" disconnects not shown")?;
    Some((connects.parse().ok()?, disconnects.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_is_coalesced_into_a_summary_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let started = Instant::now();
    // Online throughout the churn, so `No one is Online` means it ended.
    let witness = within("the witness", server.connect_plain("Witness", "Peer")).await;
    const CYCLES: usize = 500;
    for i in 0..CYCLES {
        let client = within(
            "a churning client",
            server.connect_plain(&format!("Churn-{i}"), "Peer"),
        )
        .await;
        client.disconnect().await.unwrap();
    }
    witness.disconnect().await.unwrap();
    // Printed at once or, if over the budget, by the next summary; what is
    // still left out then is summed up when the server stops.
    server.wait_for_line("No one is Online");
    let elapsed = started.elapsed().as_secs_f64().ceil() as usize + 1;
    let lines = server.stop();

    // One by one: a burst of 100 events and 5 a second after it, 2 lines
    // each; plus one summary (2 lines) a second. Without coalescing this
    // churn prints 4 lines per cycle.
    let bound = 2 + 2 * (100 + 5 * elapsed) + 2 * elapsed;
    assert!(
        lines.len() <= bound,
        "{} console lines for {CYCLES} cycles in {elapsed} s (bound {bound})",
        lines.len()
    );
    assert!(
        bound < 4 * CYCLES,
        "the churn must outrun the console for this test to mean anything"
    );
    // Every event is accounted for: shown, or counted in a summary.
    let (mut connects, mut disconnects) = (0, 0);
    for line in &lines {
        if line.ends_with("is connected in room : dm:Peer_Witness")
            || line.contains("is connected in room : dm:Churn-")
        {
            connects += 1;
        } else if line.starts_with("Client disconnect with id:  ") {
            disconnects += 1;
        } else if let Some((c, d)) = left_out(line) {
            connects += c;
            disconnects += d;
        }
    }
    assert_eq!(
        (connects, disconnects),
        (CYCLES + 1, CYCLES + 1),
        "{lines:#?}"
    );
}
