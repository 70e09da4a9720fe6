//! What a process holds and uses, read from `/proc`: resident memory, open fds and threads, and
//! their start, peak and end across a run (the soak's leak check; the chaos runs report them
//! too); CPU time per process (every bench's CPU-per-message figures).

use std::collections::BTreeMap;

/// One sample of a process.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Sample {
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
}

/// Start, peak (each figure on its own) and end samples of one program across the run (across
/// restarts too, when a fault restarted it).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Resources {
    pub start: Sample,
    pub peak: Sample,
    pub end: Sample,
    pub samples: usize,
}

impl Resources {
    pub(super) fn add(&mut self, s: Sample) {
        if self.samples == 0 {
            self.start = s;
        }
        self.samples += 1;
        self.end = s;
        self.peak.rss_kib = self.peak.rss_kib.max(s.rss_kib);
        self.peak.fds = self.peak.fds.max(s.fds);
        self.peak.threads = self.peak.threads.max(s.threads);
    }
}

/// `/proc/<pid>` figures: VmRSS, entries of `fd/`, Threads.
pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
    })
}

/// Linux's `USER_HZ`: the unit of `/proc/<pid>/stat`'s CPU times (100 on every architecture
/// Linux exports it for; fixed ABI, independent of the kernel's HZ).
const USER_HZ: f64 = 100.0;

/// CPU milliseconds (user + system, all threads) a process has used so far.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), starting with field 3 (state).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 1000.0 / USER_HZ)
}

/// Peak resident set (VmHWM, KiB) of a process.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resident set now (VmRSS, KiB) of a process.
pub fn rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `<field> N kB` line of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU so far of each named process.
pub fn cpu_of(procs: &[(&str, u32)]) -> BTreeMap<String, f64> {
    procs
        .iter()
        .filter_map(|(name, pid)| Some((name.to_string(), cpu_ms(*pid)?)))
        .collect()
}

/// CPU each process used since `before` (a process missing there started since: all of it).
pub fn cpu_since(procs: &[(&str, u32)], before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    cpu_of(procs)
        .into_iter()
        .map(|(name, now)| {
            let was = before.get(&name).copied().unwrap_or(0.0);
            (name, now - was)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_cpu_and_memory() {
        let pid = std::process::id();
        let spin: u64 = (0..2_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(spin > 0);
        assert!(cpu_ms(pid).is_some_and(|ms| ms >= 0.0));
        assert!(peak_rss(pid).is_some_and(|kib| kib > 0));
        assert!(cpu_ms(u32::MAX).is_none());
    }
}
