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
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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

/// Whether the worker takes work now, shared by the sampler, the dashboard and the service: the
/// owner may be using the machine (idle-only mode), and the donor may have paused the worker
/// (the dashboard's pause button, ARCHITECTURE.md "Metrics and dashboards").
pub struct DonorState {
    busy: AtomicBool,
    paused: AtomicBool,
    /// The owner's share of the machine at the last sample, in percent, as `f32` bits
    /// (`NO_SAMPLE` before the first).
    owner_pct: AtomicU32,
    /// Bumped each time the machine becomes busy or the worker is paused: running tasks watch
    /// it and stop.
    preemptions: watch::Sender<u64>,
}

/// Why the worker takes no task now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The owner is using the machine (idle-only mode).
    Busy,
    /// The donor paused the worker.
    Paused,
}

const NO_SAMPLE: u32 = u32::MAX;

impl Default for DonorState {
    fn default() -> Self {
        Self {
            busy: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            owner_pct: AtomicU32::new(NO_SAMPLE),
            preemptions: watch::Sender::new(0),
        }
    }
}

impl DonorState {
    /// Whether the owner is using the machine (idle-only mode).
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Why no task is taken now, or `None` when tasks are taken. A pause outranks the owner's
    /// load: it is the donor's own word.
    pub fn hold(&self) -> Option<Hold> {
        if self.is_paused() {
            Some(Hold::Paused)
        } else if self.is_busy() {
            Some(Hold::Busy)
        } else {
            None
        }
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

    /// Pauses the worker (it takes no task and stops the running ones, as when the owner is
    /// busy) or resumes it. Returns whether the state changed.
    pub fn set_paused(&self, paused: bool) -> bool {
        if self.paused.swap(paused, Ordering::SeqCst) == paused {
            return false;
        }
        if paused {
            self.preemptions.send_modify(|count| *count += 1);
        }
        true
    }

    /// The owner's share of the machine at the last sample (idle-only mode only).
    pub fn owner_pct(&self) -> Option<f32> {
        match self.owner_pct.load(Ordering::Relaxed) {
            NO_SAMPLE => None,
            bits => Some(f32::from_bits(bits)),
        }
    }

    fn record_sample(&self, owner_pct: f32) {
        self.owner_pct.store(owner_pct.to_bits(), Ordering::Relaxed);
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
            state.record_sample(sample.owner_pct());
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
