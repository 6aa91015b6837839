//! Readings of a process from `/proc`: resident memory, CPU time (user and
//! system), context switches, and how busy the cores it may run on were
//! (by anything, and stolen by the hypervisor); and this process's
//! open-file limit.
//!
//! The core readings tell a server's own cost from the machine's noise: on
//! a shared or virtual machine, other processes on the server's core and
//! steal time slow the server without showing in its CPU time, while cache
//! and frequency effects of a busy neighbour do show in it.

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
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let (user, system) = cpu_times(pid)?;
    Ok(user + system)
}

/// CPU time process `pid` has used so far in user and in system mode
/// (`utime`, `stime` of `/proc/PID/stat`).
fn cpu_times(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let (user, system) =
        parse_cpu_ticks(&stat).with_context(|| format!("unexpected format of {path}"))?;
    let per_sec = clock_ticks_per_sec()?;
    let seconds = |ticks: u64| Duration::from_secs_f64(ticks as f64 / per_sec);
    Ok((seconds(user), seconds(system)))
}

/// `utime` and `stime` in clock ticks from a `/proc/PID/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow the name; utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

fn clock_ticks_per_sec() -> anyhow::Result<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(ticks as f64)
}

/// Voluntary and involuntary context switches of every thread of `pid`
/// alive now (`/proc/PID/task/*/status`; the process's own status file
/// counts its first thread only). Threads that exited are not counted.
fn context_switches(pid: u32) -> anyhow::Result<(u64, u64)> {
    let dir = format!("/proc/{pid}/task");
    let mut total = (0, 0);
    for task in std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let path = task
            .with_context(|| format!("cannot read {dir}"))?
            .path()
            .join("status");
        // A thread may exit between listing and reading.
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0)
        };
        total.0 += field("voluntary_ctxt_switches:");
        total.1 += field("nonvoluntary_ctxt_switches:");
    }
    Ok(total)
}

/// The cores process `pid` may run on (`Cpus_allowed_list` of its status:
/// `0`, `0-3`, `0,2-3`).
fn allowed_cores(pid: u32) -> anyhow::Result<Vec<usize>> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| parse_core_list(list.trim()))
        .with_context(|| format!("no readable Cpus_allowed_list line in {path}"))
}

fn parse_core_list(list: &str) -> Option<Vec<usize>> {
    let mut cores = Vec::new();
    for part in list.split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
        cores.extend(first..=last);
    }
    Some(cores)
}

/// Clock ticks of a set of cores, from `/proc/stat`, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CoreTicks {
    /// user + nice + system + irq + softirq: running something, ours or not.
    busy: u64,
    /// Wanted to run, but the hypervisor ran another guest.
    steal: u64,
    /// Everything, idle included: the elapsed time of these cores.
    total: u64,
}

fn core_ticks(cores: &[usize]) -> anyhow::Result<CoreTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse_core_ticks(&stat, cores).context("unexpected format of /proc/stat")
}

fn parse_core_ticks(stat: &str, cores: &[usize]) -> Option<CoreTicks> {
    let mut sum = CoreTicks::default();
    for &core in cores {
        let name = format!("cpu{core} ");
        let line = stat.lines().find(|line| line.starts_with(&name))?;
        let ticks: Vec<u64> = line[name.len()..]
            .split_whitespace()
            .map(|field| field.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal (guest time is
        // already inside user and nice).
        let &[user, nice, system, idle, iowait, irq, softirq, steal, ..] = ticks.as_slice() else {
            return None;
        };
        sum.busy += user + nice + system + irq + softirq;
        sum.steal += steal;
        sum.total += user + nice + system + idle + iowait + irq + softirq + steal;
    }
    Some(sum)
}

/// CPU time spent from one moment on, by the server under test (when its
/// pid is known) and by the benchmark itself: a benchmark that is busy all
/// the time measures itself, not the server.
pub struct CpuMeter {
    server: Option<ServerReading>,
    bench: Duration,
}

/// One reading of the server and of the cores it may run on.
struct ServerReading {
    pid: u32,
    cores: Vec<usize>,
    user: Duration,
    system: Duration,
    switches: (u64, u64),
    core: CoreTicks,
}

impl ServerReading {
    fn take(pid: u32, cores: Vec<usize>) -> anyhow::Result<ServerReading> {
        let (user, system) = cpu_times(pid)?;
        Ok(ServerReading {
            pid,
            switches: context_switches(pid)?,
            core: core_ticks(&cores)?,
            cores,
            user,
            system,
        })
    }
}

/// CPU seconds spent since a [`CpuMeter`] started.
#[derive(Debug, Clone, Copy)]
pub struct CpuSpent {
    /// By the server, user and system; `None` without its pid.
    pub server_s: Option<f64>,
    /// What the server did on its own, and its cores' share of the time.
    pub server: Option<ServerSpent>,
    /// By this process.
    pub bench_s: f64,
}

/// The server's CPU time in detail, and how busy its cores were.
#[derive(Debug, Clone, Copy)]
pub struct ServerSpent {
    /// Seconds in user mode.
    pub user_s: f64,
    /// Seconds in the kernel.
    pub system_s: f64,
    /// Times a thread of the server gave up its core (waiting for I/O, a
    /// lock, a timer).
    pub voluntary_switches: u64,
    /// Times a thread of the server was preempted.
    pub involuntary_switches: u64,
    /// How many cores the server may run on.
    pub cores: usize,
    /// Share of those cores' time spent running anything, the server or
    /// anyone else, in percent.
    pub core_busy_percent: f64,
    /// Share of those cores' time the hypervisor gave to another guest, in
    /// percent.
    pub core_steal_percent: f64,
}

impl CpuMeter {
    /// Takes the first readings.
    pub fn start(server_pid: Option<u32>) -> anyhow::Result<CpuMeter> {
        let server = match server_pid {
            Some(pid) => Some(ServerReading::take(pid, allowed_cores(pid)?)?),
            None => None,
        };
        Ok(CpuMeter {
            server,
            bench: cpu_time(std::process::id())?,
        })
    }

    /// CPU time spent since [`start`](Self::start).
    pub fn spent(&self) -> anyhow::Result<CpuSpent> {
        let server = match &self.server {
            Some(then) => {
                let now = ServerReading::take(then.pid, then.cores.clone())?;
                Some(server_spent(then, &now))
            }
            None => None,
        };
        Ok(CpuSpent {
            server_s: server.map(|s| s.user_s + s.system_s),
            server,
            bench_s: cpu_time(std::process::id())?
                .saturating_sub(self.bench)
                .as_secs_f64(),
        })
    }
}

fn server_spent(then: &ServerReading, now: &ServerReading) -> ServerSpent {
    let total = now.core.total.saturating_sub(then.core.total).max(1) as f64;
    let share = |now: u64, then: u64| now.saturating_sub(then) as f64 * 100.0 / total;
    ServerSpent {
        user_s: now.user.saturating_sub(then.user).as_secs_f64(),
        system_s: now.system.saturating_sub(then.system).as_secs_f64(),
        voluntary_switches: now.switches.0.saturating_sub(then.switches.0),
        involuntary_switches: now.switches.1.saturating_sub(then.switches.1),
        cores: now.cores.len(),
        core_busy_percent: share(now.core.busy, then.core.busy),
        core_steal_percent: share(now.core.steal, then.core.steal),
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
        assert_eq!(parse_cpu_ticks(stat), Some((7, 3)));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn core_lists_and_core_ticks() {
        assert_eq!(parse_core_list("0"), Some(vec![0]));
        assert_eq!(parse_core_list("0,2-4"), Some(vec![0, 2, 3, 4]));
        assert_eq!(parse_core_list("a"), None);
        let stat = "cpu  9 9 9 9 9 9 9 9 0 0\n\
                    cpu0 10 1 5 100 2 1 1 3 0 0\n\
                    cpu1 20 0 10 50 0 0 0 7 0 0\n";
        let ticks = |cores: &[usize]| parse_core_ticks(stat, cores);
        let core0 = CoreTicks {
            busy: 18,
            steal: 3,
            total: 123,
        };
        assert_eq!(ticks(&[0]), Some(core0));
        assert_eq!(ticks(&[0, 1]).unwrap().total, 123 + 87);
        assert_eq!(ticks(&[2]), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(own_peak_rss_kib().unwrap() >= rss_kib(pid).unwrap() / 2);
        let meter = CpuMeter::start(Some(pid)).unwrap();
        let spent = meter.spent().unwrap();
        assert!(spent.server_s.unwrap() >= 0.0 && spent.bench_s >= 0.0);
        let server = spent.server.unwrap();
        assert!(server.cores >= 1 && (0.0..=100.0).contains(&server.core_busy_percent));
        assert!(context_switches(pid).unwrap().0 > 0);
        assert!(raise_open_file_limit().unwrap() > 0);
    }
}
