//! Donor policy: what the donor lends (cores, memory) and when (idle-only mode). A sampler reads
//! the machine's CPU use through a [`LoadSource`], subtracts the worker's own tasks, and when the
//! owner's share passes the threshold marks the worker busy: it advertises no free slots, refuses
//! new tasks with `RESOURCE_EXHAUSTED`, and preempts the running ones. When the owner's use drops
//! below the threshold again, it takes work again.
//!
//! The load source is the seam for tests: [`SysinfoLoad`] reads the real machine, [`FileLoad`]
//! reads the owner's load from a file a test writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// What the donor lends.
#[derive(Debug, Clone, PartialEq)]
pub struct DonorPolicy {
    /// Tasks run at once (one core each).
    pub cores: u32,
    /// Cap on the memory limits of all running tasks together, in bytes.
    pub memory_bytes: u64,
    /// Take work only while the owner is not using the machine.
    pub idle_only: bool,
    /// Owner CPU use, in percent of the whole machine, above which the machine counts as busy.
    pub busy_threshold_pct: f32,
    /// How often the load is sampled.
    pub sample_interval: Duration,
}

impl DonorPolicy {
    /// Default cores: all but one, at least one.
    pub fn default_cores() -> u32 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.saturating_sub(1).max(1) as u32
    }

    /// Default memory cap: half the machine's physical memory (256 MiB if it cannot be read).
    pub fn default_memory_bytes() -> u64 {
        let total = sysinfo::System::new().ok().map(|mut system| {
            system.refresh_memory();
            system.total_memory()
        });
        match total {
            Some(total) if total > 0 => total / 2,
            _ => 256 * 1024 * 1024,
        }
    }

    /// Whether a sample means the owner needs the machine.
    pub fn is_busy(&self, sample: LoadSample) -> bool {
        self.idle_only && sample.owner_pct() > self.busy_threshold_pct
    }
}

/// CPU use of the whole machine and of this worker's process, each in percent of the machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSample {
    pub total_pct: f32,
    pub own_pct: f32,
}

impl LoadSample {
    /// The owner's share: everything that is not the worker.
    pub fn owner_pct(&self) -> f32 {
        (self.total_pct - self.own_pct).max(0.0)
    }
}

/// Where load samples come from.
pub trait LoadSource: Send + 'static {
    fn sample(&mut self) -> LoadSample;
}

/// The machine's real load, from sysinfo.
pub struct SysinfoLoad {
    system: sysinfo::System,
    pid: Option<sysinfo::Pid>,
    cores: f32,
}

impl SysinfoLoad {
    pub fn new() -> Result<Self, sysinfo::Error> {
        let mut system = sysinfo::System::new()?;
        system.refresh_cpu_usage();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f32;
        Ok(Self {
            system,
            pid: sysinfo::get_current_pid().ok(),
            cores,
        })
    }
}

impl LoadSource for SysinfoLoad {
    fn sample(&mut self) -> LoadSample {
        self.system.refresh_cpu_usage();
        let total_pct = self.system.global_cpu_usage();
        let own_pct = match self.pid {
            Some(pid) => {
                self.system
                    .refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), false);
                // A process's CPU use is in percent of one core.
                self.system
                    .process(pid)
                    .map_or(0.0, |process| process.cpu_usage() / self.cores)
            }
            None => 0.0,
        };
        LoadSample { total_pct, own_pct }
    }
}

/// The owner's load read from a file holding a percentage (a testing aid: `--owner-load-file`).
/// A missing or unreadable file reads as an idle machine.
pub struct FileLoad {
    path: PathBuf,
    warned: bool,
}

impl FileLoad {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            warned: false,
        }
    }
}

impl LoadSource for FileLoad {
    fn sample(&mut self) -> LoadSample {
        let owner = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|text| text.trim().parse::<f32>().ok());
        if owner.is_none() && !self.warned {
            self.warned = true;
            warn!(path = %self.path.display(), "owner load file unreadable; treating the machine as idle");
        }
        LoadSample {
            total_pct: owner.unwrap_or(0.0),
            own_pct: 0.0,
        }
    }
}

/// Whether the owner needs the machine, shared by the sampler and the service.
pub struct DonorState {
    busy: AtomicBool,
    /// Bumped each time the machine becomes busy: running tasks watch it and stop.
    preemptions: watch::Sender<u64>,
}

impl Default for DonorState {
    fn default() -> Self {
        Self {
            busy: AtomicBool::new(false),
            preemptions: watch::Sender::new(0),
        }
    }
}

impl DonorState {
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// Resolves when the running task should stop for the owner.
    pub fn preemption(&self) -> watch::Receiver<u64> {
        self.preemptions.subscribe()
    }

    /// Records the machine's state; on becoming busy, preempts running tasks.
    pub fn set_busy(&self, busy: bool) {
        if self.busy.swap(busy, Ordering::SeqCst) == busy {
            return;
        }
        if busy {
            self.preemptions.send_modify(|count| *count += 1);
        }
    }
}

/// Samples the load every `policy.sample_interval` until `shutdown`, updating `state`.
pub fn spawn_sampler(
    policy: DonorPolicy,
    mut source: Box<dyn LoadSource>,
    state: Arc<DonorState>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(policy.sample_interval);
        loop {
            tokio::select! {
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
                _ = ticks.tick() => {}
            }
            let sample = source.sample();
            let busy = policy.is_busy(sample);
            if busy != state.is_busy() {
                if busy {
                    info!(
                        owner_pct = sample.owner_pct(),
                        "owner is busy: pausing and preempting tasks"
                    );
                } else {
                    info!(
                        owner_pct = sample.owner_pct(),
                        "machine idle again: taking work"
                    );
                }
                state.set_busy(busy);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(idle_only: bool) -> DonorPolicy {
        DonorPolicy {
            cores: 1,
            memory_bytes: 1 << 30,
            idle_only,
            busy_threshold_pct: 50.0,
            sample_interval: Duration::from_millis(10),
        }
    }

    #[test]
    fn only_the_owners_share_counts_and_only_in_idle_only_mode() {
        let owner_busy = LoadSample {
            total_pct: 90.0,
            own_pct: 10.0,
        };
        let worker_busy = LoadSample {
            total_pct: 90.0,
            own_pct: 80.0,
        };
        assert!(policy(true).is_busy(owner_busy));
        assert!(
            !policy(true).is_busy(worker_busy),
            "the worker's own tasks are not the owner's"
        );
        assert!(
            !policy(false).is_busy(owner_busy),
            "without --idle-only the owner's load is ignored"
        );
    }

    #[test]
    fn becoming_busy_preempts_once() {
        let state = DonorState::default();
        let mut preemption = state.preemption();
        state.set_busy(true);
        state.set_busy(true);
        assert!(preemption.has_changed().unwrap());
        assert_eq!(*preemption.borrow_and_update(), 1);
        state.set_busy(false);
        assert!(!preemption.has_changed().unwrap());
    }

    #[test]
    fn the_real_sampler_reads_plausible_values() {
        // Smoke test of the real machine's sampler: values are percentages.
        let mut load = SysinfoLoad::new().unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let sample = load.sample();
        assert!((0.0..=100.0).contains(&sample.total_pct), "{sample:?}");
        assert!(
            sample.own_pct >= 0.0 && sample.own_pct <= 100.0,
            "{sample:?}"
        );
    }
}
