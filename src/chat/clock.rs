//! The wall clock as the chat sees it: a message's `time` is the wall clock
//! at acceptance, its `ts` only increases per room, whatever the clock
//! does. A large step of the wall clock (an operator's `date -s`, a bad NTP
//! source) is worth knowing about: [`watch_steps`] logs it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the wall clock is compared with the monotonic one.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A wall-clock step larger than this is logged.
pub const STEP_LOGGED: Duration = Duration::from_secs(2);

/// Logs every step of the wall clock larger than [`STEP_LOGGED`] against
/// the monotonic clock, forward or backward, until the task is dropped.
pub async fn watch_steps() {
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut offset = wall_minus_monotonic(Instant::now());
    let base = Instant::now();
    loop {
        ticks.tick().await;
        let now = wall_minus_monotonic(base);
        let step = now - offset;
        offset = now;
        if step.unsigned_abs() > STEP_LOGGED.as_micros() {
            let seconds = step as f64 / 1e6;
            tracing::warn!(
                step_seconds = seconds,
                "the wall clock stepped {}: messages' `time` follows it, their `ts` keeps increasing in each room",
                if step > 0 { "forward" } else { "backward" }
            );
        }
    }
}

/// Wall-clock microseconds minus microseconds since `base` on the
/// monotonic clock: constant while neither clock is stepped.
fn wall_minus_monotonic(base: Instant) -> i128 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i128)
        .unwrap_or(0);
    wall - base.elapsed().as_micros() as i128
}
