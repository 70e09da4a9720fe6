//! What a process holds, read from `/proc`: resident memory, open fds and threads, and their
//! start, peak and end across a run (the soak's leak check; the chaos runs report them too).

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
