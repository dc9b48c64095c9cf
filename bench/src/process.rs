//! Measuring processes: a child's CPU time and peak RSS (`wait4`), another process's CPU time
//! and peak RSS from `/proc` (the ClickHouse server), and finding the stack's server processes.

use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What a finished child used.
#[derive(Debug, Clone, Copy)]
pub struct ChildUsage {
    /// From spawn to exit.
    pub wall: Duration,
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Peak resident set size (`VmHWM` of the child's own memory, sampled; see
    /// [`MeasuredChild`]).
    pub max_rss_bytes: u64,
    /// Whether it exited with status 0 (or by the SIGTERM we sent).
    pub success: bool,
}

/// How often a child's `VmHWM` is read.
const PEAK_SAMPLE_INTERVAL: Duration = Duration::from_millis(20);

/// A running child whose usage is read when it is reaped.
///
/// Peak RSS is not `ru_maxrss`: Linux carries a parent's high-water mark through `fork` and
/// `exec` into the child's `ru_maxrss`, so every child of the (large) bench process would report
/// at least the bench's own RSS. `VmHWM` in `/proc/<pid>/status` belongs to the child's own
/// address space; it only grows, so the last reading before the exit is the peak (sampled every
/// 20 ms).
pub struct MeasuredChild {
    /// Process id (reaped by [`MeasuredChild::wait`] with `wait4`, never by `Child::wait`).
    pid: i32,
    /// When it was spawned.
    spawned: Instant,
    /// Kept so the handles (pipes) live as long as the child; never waited on.
    _child: Child,
    /// The highest `VmHWM` read so far, bytes.
    peak_rss: Arc<AtomicU64>,
    /// Reads `VmHWM` until the child's memory is gone.
    sampler: Option<JoinHandle<()>>,
}

impl MeasuredChild {
    /// Measures `child`, spawned at `spawned`.
    pub fn new(child: Child, spawned: Instant) -> MeasuredChild {
        let pid = child.id() as i32;
        let peak_rss = Arc::new(AtomicU64::new(0));
        let peak = Arc::clone(&peak_rss);
        // Until the exit, the status file has VmHWM; a zombie's has none.
        let sampler = std::thread::spawn(move || {
            while let Ok(bytes) = status_bytes(pid, "VmHWM") {
                peak.fetch_max(bytes, Ordering::Relaxed);
                std::thread::sleep(PEAK_SAMPLE_INTERVAL);
            }
        });
        MeasuredChild {
            pid,
            spawned,
            _child: child,
            peak_rss,
            sampler: Some(sampler),
        }
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether it has exited (without reaping it).
    pub fn has_exited(&self) -> bool {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer; WNOWAIT leaves the child reapable.
        let result = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled `info` (si_pid is 0 when the child is still running).
        result == 0 && unsafe { info.si_pid() } != 0
    }

    /// Sends SIGTERM (the aggregator flushes and stops).
    pub fn terminate(&self) {
        // SAFETY: plain syscall on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
    }

    /// Waits for the exit (blocking) and returns the usage.
    pub fn wait(mut self) -> Result<ChildUsage> {
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointers; the pid is our unreaped child.
        let reaped = unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
        if reaped != self.pid {
            bail!(
                "wait4({}) failed: {}",
                self.pid,
                std::io::Error::last_os_error()
            );
        }
        let wall = self.spawned.elapsed();
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
        let timeval = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
        let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        let terminated = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM;
        Ok(ChildUsage {
            wall,
            cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
            max_rss_bytes: self.peak_rss.load(Ordering::Relaxed),
            success: exited_ok || terminated,
        })
    }
}

/// User plus system CPU time of process `pid` so far (`/proc/<pid>/stat`).
pub fn cpu_time(pid: i32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/pid/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of stat; after the name, state is field 3 at index 0.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: i32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// Resets process `pid`'s `VmHWM` to its current RSS, so a later `VmHWM` is the peak since now
/// (Linux ≥ 4.0; needs permission to write `/proc/<pid>/clear_refs`). Returns whether it worked.
pub fn reset_peak_rss(pid: i32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The first process named `comm` (as `/proc/<pid>/comm` spells it, at most 15 bytes) whose
/// command line contains `needle`: `("clickhouse-serv", "clickhouse-server")`, `("java", "kafka")`.
pub fn find_process(comm: &str, needle: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let dir = Path::new("/proc").join(pid.to_string());
            if std::fs::read_to_string(dir.join("comm")).ok()?.trim_end() != comm {
                return None;
            }
            let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(pid)
        })
}
