//! The operator console: one line per event on stdout, in the seed's words.
//!
//! ```text
//! Listening at 5000
//! Online :  [ 'Dummy-1' ]
//! Dummy-1 is connected in room : dm:Dummy-1_Dummy-2
//! Client disconnect with id:  z9WzkUGusKb34sPoAAAB
//! No one is Online
//! ```
//!
//! A console must not be a way to fill the disk: past
//! [`EVENTS_PER_SECOND`] connects and disconnects a second (after a burst
//! of [`EVENT_BURST`], so a crowd arriving at once is still shown), events
//! are not printed one by one but counted, and once a second a summary
//! says how many were left out, followed by the current `Online` line:
//!
//! ```text
//! ... 532 connects and 530 disconnects not shown (more than 5 a second)
//! Online :  [ 'Dummy-1' ]
//! ```

use std::io::Write as _;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::rate::{RateLimit, TokenBucket};
use crate::presence::{Presence, SAMPLE_NAMES};

/// Connects and disconnects a second printed one by one, sustained.
pub const EVENTS_PER_SECOND: u32 = 5;
/// Events printed one by one after a quiet spell.
pub const EVENT_BURST: u32 = 100;
/// How often the left-out events are summed up.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

const LIMIT: RateLimit = RateLimit {
    rate: EVENTS_PER_SECOND as f64,
    burst: EVENT_BURST,
};

/// The server's console: prints the contract's lines, coalescing them when
/// connections churn.
pub struct Console {
    presence: Arc<dyn Presence>,
    budget: Mutex<Budget>,
}

/// What may still be printed, and what was left out since the last summary.
struct Budget {
    bucket: TokenBucket,
    connects: u64,
    disconnects: u64,
}

/// Which event a console line tells of.
#[derive(Clone, Copy)]
enum Happened {
    Connect,
    Disconnect,
}

impl Console {
    /// The server is accepting connections on `port`.
    pub fn listening(port: u16) {
        print_lines(&[format!("Listening at {port}")]);
    }

    /// A console for a server whose presence is `presence`; the summary
    /// ticker runs as long as the console is alive.
    pub fn start(presence: Arc<dyn Presence>) -> Arc<Console> {
        let console = Arc::new(Console {
            presence,
            budget: Mutex::new(Budget {
                bucket: TokenBucket::new(LIMIT, Instant::now()),
                connects: 0,
                disconnects: 0,
            }),
        });
        tokio::spawn(summaries(Arc::downgrade(&console)));
        console
    }

    /// `user` connected (into `room`, when it has a peer).
    pub fn connected(&self, user: &str, room: Option<&str>) {
        if !self.admit(Happened::Connect, Instant::now()) {
            return;
        }
        let online = self.presence.everyone();
        let mut lines = vec![online_line(&online.first, online.total)];
        if let Some(room) = room {
            lines.push(format!("{user} is connected in room : {room}"));
        }
        print_lines(&lines);
    }

    /// The connection with socket id `sid` left.
    pub fn disconnected(&self, sid: &str) {
        if !self.admit(Happened::Disconnect, Instant::now()) {
            return;
        }
        let online = self.presence.everyone();
        print_lines(&[
            format!("Client disconnect with id:  {sid}"),
            online_line(&online.first, online.total),
        ]);
    }

    /// Prints the summary of what was left out, if anything was: at the
    /// end, so the last lines say who was online when the server closed.
    pub fn flush(&self) {
        if let Some(lines) = self.summary() {
            print_lines(&lines);
        }
    }

    /// True if the event may be printed; else it is counted for the summary.
    fn admit(&self, happened: Happened, now: Instant) -> bool {
        let mut budget = self.lock();
        if budget.bucket.take(LIMIT, now) {
            return true;
        }
        match happened {
            Happened::Connect => budget.connects += 1,
            Happened::Disconnect => budget.disconnects += 1,
        }
        false
    }

    /// The summary of what was left out since the last one, if anything was.
    fn summary(&self) -> Option<Vec<String>> {
        let (connects, disconnects) = {
            let mut budget = self.lock();
            let left_out = (budget.connects, budget.disconnects);
            (budget.connects, budget.disconnects) = (0, 0);
            left_out
        };
        if connects + disconnects == 0 {
            return None;
        }
        let online = self.presence.everyone();
        Some(vec![
            format!(
                "... {connects} connects and {disconnects} disconnects not shown \
                 (more than {EVENTS_PER_SECOND} a second)"
            ),
            online_line(&online.first, online.total),
        ])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Prints a summary every [`SUMMARY_INTERVAL`] in which events were left
/// out, until the console is gone.
async fn summaries(console: Weak<Console>) {
    let mut ticks = tokio::time::interval(SUMMARY_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(console) = console.upgrade() else {
            return;
        };
        console.flush();
    }
}

/// How many items Node's `console.log` shows of an array before
/// `... N more items`: as many as an [`OnlineSample`](crate::presence::OnlineSample) carries.
pub const NODE_MAX_ITEMS: usize = SAMPLE_NAMES;

/// `Online :  [ 'A', 'B' ]` as Node's console.log prints the array, or
/// `No one is Online`. `first` holds the first names in order (only
/// [`NODE_MAX_ITEMS`] are shown) of `total` users online.
pub fn online_line(first: &[String], total: usize) -> String {
    if total == 0 {
        return "No one is Online".to_owned();
    }
    format!("Online :  {}", node_array_of(first, total))
}

/// A list of names as Node's `console.log` prints an array of strings:
/// `[ 'A', 'B' ]`, `[]` when empty, and `[ 'A', ... 7 more items ]` past
/// [`NODE_MAX_ITEMS`].
pub fn node_array<S: AsRef<str>>(names: &[S]) -> String {
    node_array_of(names, names.len())
}

fn node_array_of<S: AsRef<str>>(first: &[S], total: usize) -> String {
    if total == 0 {
        return "[]".to_owned();
    }
    let shown = &first[..first.len().min(NODE_MAX_ITEMS).min(total)];
    let mut out = String::from("[ ");
    for (i, name) in shown.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('\'');
        out.push_str(name.as_ref());
        out.push('\'');
    }
    if total > shown.len() {
        if !shown.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&format!("... {} more items", total - shown.len()));
    }
    out.push_str(" ]");
    out
}

fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for line in lines {
        // A closed stdout (operator piped us into `head`) must not stop chat.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::{Announce, ConnKey, LocalPresence, OnlineList, Typing};

    struct Nowhere;

    impl Announce for Nowhere {
        fn online(&self, _room: &str, _list: &OnlineList, _skip: Option<ConnKey>) {}
        fn typing(&self, _typing: &Typing) {}
    }

    #[tokio::test]
    async fn churn_is_counted_past_the_budget_and_summed_up() {
        let presence = Arc::new(LocalPresence::new(Arc::new(Nowhere)));
        let console = Console::start(presence.clone());
        let now = Instant::now();
        let printed = (0..180)
            .filter(|i| {
                let happened = if i % 2 == 0 {
                    Happened::Connect
                } else {
                    Happened::Disconnect
                };
                console.admit(happened, now)
            })
            .count();
        assert_eq!(printed, EVENT_BURST as usize);
        presence.join(1, &"Dummy-1".into(), None);
        assert_eq!(
            console.summary().unwrap(),
            [
                "... 40 connects and 40 disconnects not shown (more than 5 a second)",
                "Online :  [ 'Dummy-1' ]"
            ]
        );
        assert_eq!(console.summary(), None, "nothing left out since");
        // The budget refills at the sustained rate.
        assert!(console.admit(Happened::Connect, now + Duration::from_millis(200)));
    }

    #[test]
    fn prints_the_online_list_as_node_does() {
        assert_eq!(
            online_line(&["Dummy-1".into()], 1),
            "Online :  [ 'Dummy-1' ]"
        );
        assert_eq!(
            online_line(&["Dummy-1".into(), "Dummy-2".into()], 2),
            "Online :  [ 'Dummy-1', 'Dummy-2' ]"
        );
        assert_eq!(online_line(&[], 0), "No one is Online");
        assert_eq!(node_array::<&str>(&[]), "[]");
    }

    #[test]
    fn shows_at_most_a_hundred_names_as_node_does() {
        let names: Vec<String> = (0..250).map(|i| format!("u{i:03}")).collect();
        let line = online_line(&names[..NODE_MAX_ITEMS], names.len());
        assert!(line.starts_with("Online :  [ 'u000', 'u001', "), "{line}");
        assert!(line.ends_with("'u099', ... 150 more items ]"), "{line}");
        assert_eq!(node_array(&names), line.trim_start_matches("Online :  "));
    }
}
