//! The standard `process_*` metrics (as Prometheus's client libraries export them), read from
//! `/proc/self` at scrape time: CPU seconds, resident memory, open and allowed file descriptors,
//! start time. Where `/proc` cannot be read (not Linux), they stay at zero.

use prometheus::{Counter, Gauge, IntGauge, Registry};

/// Clock ticks per second of `/proc`'s CPU times (Linux's `USER_HZ`, 100 on every architecture's
/// user ABI).
const TICKS_PER_SECOND: f64 = 100.0;

pub(crate) struct ProcessMetrics {
    cpu_seconds: Counter,
    resident_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    start_time: Gauge,
}

impl ProcessMetrics {
    pub(crate) fn register(registry: &Registry) -> ProcessMetrics {
        let m = ProcessMetrics {
            cpu_seconds: Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )
            .expect("valid metric"),
            resident_memory: IntGauge::new(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )
            .expect("valid metric"),
            open_fds: IntGauge::new("process_open_fds", "Number of open file descriptors.")
                .expect("valid metric"),
            max_fds: IntGauge::new(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            )
            .expect("valid metric"),
            start_time: Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(m.cpu_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.resident_memory.clone()),
            Box::new(m.open_fds.clone()),
            Box::new(m.max_fds.clone()),
            Box::new(m.start_time.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// Reads `/proc/self` once (at a scrape).
    pub(crate) fn update(&self) {
        if let Some((cpu, start_ticks)) = stat() {
            // CPU time only grows: the counter takes the difference.
            let delta = cpu - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
            if let Some(boot) = boot_time() {
                self.start_time
                    .set(boot as f64 + start_ticks as f64 / TICKS_PER_SECOND);
            }
        }
        if let Some(kb) = status_field("VmRSS:") {
            self.resident_memory.set(kb.saturating_mul(1024));
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        if let Some(max) = max_open_files() {
            self.max_fds.set(max);
        }
    }
}

/// (user + system CPU seconds, start time in clock ticks after boot) from `/proc/self/stat`.
fn stat() -> Option<(f64, u64)> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name, which is in parentheses and may hold spaces: field 3 on.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
    Some(((utime + stime) as f64 / TICKS_PER_SECOND, start))
}

/// The system's boot time (unix seconds), `btime` in `/proc/stat`.
fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// A `kB` field of `/proc/self/status`.
fn status_field(name: &str) -> Option<i64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft limit on open files, from `/proc/self/limits`.
fn max_open_files() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse()
        .ok()
        .or((soft == "unlimited").then_some(i64::MAX))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_read_this_process() {
        let registry = Registry::new();
        let m = ProcessMetrics::register(&registry);
        // Some CPU to count.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        m.update();
        assert!(
            m.resident_memory.get() > 1024 * 1024,
            "{}",
            m.resident_memory.get()
        );
        assert!(m.open_fds.get() >= 3);
        assert!(m.max_fds.get() >= m.open_fds.get());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = m.start_time.get();
        assert!(
            start > now - 86_400.0 * 365.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
        let first = m.cpu_seconds.get();
        m.update();
        assert!(m.cpu_seconds.get() >= first);
    }
}
