//! Readings of a process from `/proc`: resident memory and CPU time, and
//! this process's open-file limit.

use std::time::Duration;

use anyhow::{Context, bail};

/// Resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size of this process in KiB (`VmHWM`).
pub fn own_peak_rss_kib() -> anyhow::Result<u64> {
    status_kib(std::process::id(), "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} line in {path}"))
}

/// CPU time process `pid` has used so far, user and system together
/// (`utime + stime` of `/proc/PID/stat`).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks = parse_cpu_ticks(&stat).with_context(|| format!("unexpected format of {path}"))?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_sec()?,
    ))
}

/// `utime + stime` in clock ticks from a `/proc/PID/stat` line. The command
/// name (field 2) is in parentheses and may hold spaces and parentheses
/// itself, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow the name; utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> anyhow::Result<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(ticks as f64)
}

/// CPU time spent from one moment on, by the server under test (when its
/// pid is known) and by the benchmark itself: a benchmark that is busy all
/// the time measures itself, not the server.
pub struct CpuMeter {
    server_pid: Option<u32>,
    server: Option<Duration>,
    bench: Duration,
}

/// CPU seconds spent since a [`CpuMeter`] started.
#[derive(Debug, Clone, Copy)]
pub struct CpuSpent {
    /// By the server; `None` without its pid.
    pub server_s: Option<f64>,
    /// By this process.
    pub bench_s: f64,
}

impl CpuMeter {
    /// Takes the first readings.
    pub fn start(server_pid: Option<u32>) -> anyhow::Result<CpuMeter> {
        Ok(CpuMeter {
            server_pid,
            server: server_pid.map(cpu_time).transpose()?,
            bench: cpu_time(std::process::id())?,
        })
    }

    /// CPU time spent since [`start`](Self::start).
    pub fn spent(&self) -> anyhow::Result<CpuSpent> {
        let server = self.server_pid.map(cpu_time).transpose()?;
        Ok(CpuSpent {
            server_s: server
                .zip(self.server)
                .map(|(now, then)| now.saturating_sub(then).as_secs_f64()),
            bench_s: cpu_time(std::process::id())?
                .saturating_sub(self.bench)
                .as_secs_f64(),
        })
    }
}

/// Raises this process's soft open-file limit to the hard limit, so a
/// scenario can hold as many connections as the system allows; returns the
/// new soft limit.
pub fn raise_open_file_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(10));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(own_peak_rss_kib().unwrap() >= rss_kib(pid).unwrap() / 2);
        let meter = CpuMeter::start(Some(pid)).unwrap();
        let spent = meter.spent().unwrap();
        assert!(spent.server_s.unwrap() >= 0.0 && spent.bench_s >= 0.0);
        assert!(raise_open_file_limit().unwrap() > 0);
    }
}
