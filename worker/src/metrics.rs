//! What a worker counts for `/metrics` (ARCHITECTURE.md, "Metrics and dashboards"): counters
//! that move as tasks run, and gauges read from the service when a scrape asks for them.
//!
//! Counters are bumped where the event happens ([`crate::service`]); gauges are set by
//! [`WorkerMetrics::encode`] from a [`Gauges`] the caller reads at scrape time, so a gauge is
//! never stale and nothing polls.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tonic::Code;

use crate::sandbox::Outcome;

/// A task's outcome, as a label: `exited_0`, `exited_nonzero`, `trapped`, `out_of_fuel`,
/// `memory_limit`, `timed_out`, `output_limit`, `invalid_module`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// A refusal's gRPC code, as a label (`resource_exhausted`, `permission_denied`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The worker's registry and the metrics in it; cheap to clone.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Arc<Registry>,
    tasks: Family<OutcomeLabel, Counter>,
    fuel: Counter,
    refusals: Family<CodeLabel, Counter>,
    preemptions: Counter,
    running: Gauge,
    queued: Gauge,
    free_slots: Gauge,
    slots: Gauge,
    paused: Gauge,
    busy: Gauge,
    connections: Family<PathLabel, Gauge>,
    blob_bytes: Gauge,
    blob_cap_bytes: Gauge,
    members: Family<StateLabel, Gauge>,
    credit_tasks: Gauge,
    credit_fuel: Gauge,
    encoding: Arc<std::sync::Mutex<()>>,
}

/// What the gauges read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    pub running: u32,
    pub queued: u32,
    pub free_slots: u32,
    pub slots: u32,
    pub paused: bool,
    pub busy: bool,
    /// Peers this worker has a path to now: direct and relayed.
    pub direct: u32,
    pub relayed: u32,
    pub blob_bytes: u64,
    pub blob_cap_bytes: u64,
    /// Members of the grid this worker knows, by state (itself included); all zero without
    /// gossip.
    pub alive: u32,
    pub suspect: u32,
    pub down: u32,
    /// Credit statements in the ledger, and their fuel (not verified here).
    pub credit_tasks: u64,
    pub credit_fuel: u64,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("peergrid_worker");
        let metrics = Self {
            registry: Arc::new(Registry::default()),
            tasks: Family::default(),
            fuel: Counter::default(),
            refusals: Family::default(),
            preemptions: Counter::default(),
            running: Gauge::default(),
            queued: Gauge::default(),
            free_slots: Gauge::default(),
            slots: Gauge::default(),
            paused: Gauge::default(),
            busy: Gauge::default(),
            connections: Family::default(),
            blob_bytes: Gauge::default(),
            blob_cap_bytes: Gauge::default(),
            members: Family::default(),
            credit_tasks: Gauge::default(),
            credit_fuel: Gauge::default(),
            encoding: Arc::default(),
        };
        registry.register(
            "tasks",
            "Tasks run to an answer, by outcome",
            metrics.tasks.clone(),
        );
        registry.register(
            "fuel",
            "Fuel executed by tasks run to an answer",
            metrics.fuel.clone(),
        );
        registry.register(
            "refusals",
            "Tasks refused, by gRPC code",
            metrics.refusals.clone(),
        );
        registry.register(
            "preemptions",
            "Running or waiting tasks stopped because the donor needed the machine (busy or paused)",
            metrics.preemptions.clone(),
        );
        registry.register("running", "Tasks running now", metrics.running.clone());
        registry.register("queued", "Tasks waiting for a slot", metrics.queued.clone());
        registry.register(
            "free_slots",
            "Slots a new task could take now (0 while busy or paused)",
            metrics.free_slots.clone(),
        );
        registry.register("slots", "Cores lent", metrics.slots.clone());
        registry.register(
            "paused",
            "1 while the donor has paused the worker",
            metrics.paused.clone(),
        );
        registry.register(
            "busy",
            "1 while the owner is using the machine (idle-only mode)",
            metrics.busy.clone(),
        );
        registry.register(
            "connections",
            "Peers with a path now, by path",
            metrics.connections.clone(),
        );
        registry.register(
            "blob_store_bytes",
            "Bytes held in the blob store",
            metrics.blob_bytes.clone(),
        );
        registry.register(
            "blob_store_cap_bytes",
            "The blob store's cap",
            metrics.blob_cap_bytes.clone(),
        );
        registry.register(
            "members",
            "Grid members this worker knows, by state",
            metrics.members.clone(),
        );
        registry.register(
            "credit_tasks",
            "Accepted tasks credited to this worker by signed statements in its ledger",
            metrics.credit_tasks.clone(),
        );
        registry.register(
            "credit_fuel",
            "Agreed fuel credited to this worker by signed statements in its ledger",
            metrics.credit_fuel.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// A task ran to an answer.
    pub fn task_done(&self, outcome: &Outcome, fuel: u64) {
        self.tasks
            .get_or_create(&OutcomeLabel {
                outcome: outcome_label(outcome),
            })
            .inc();
        self.fuel.inc_by(fuel);
    }

    /// A task was refused with `code`.
    pub fn refused(&self, code: Code) {
        self.refusals
            .get_or_create(&CodeLabel {
                code: code_label(code),
            })
            .inc();
    }

    /// A task was stopped for the donor.
    pub fn preempted(&self) {
        self.preemptions.inc();
    }

    /// The registry in Prometheus' text format (version 0.0.4), gauges set from `now`.
    pub fn encode(&self, now: &Gauges) -> String {
        // One scrape sets the gauges and encodes them before another may set its own.
        let _one_at_a_time = self
            .encoding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let set = |gauge: &Gauge, value: u64| {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.running, now.running.into());
        set(&self.queued, now.queued.into());
        set(&self.free_slots, now.free_slots.into());
        set(&self.slots, now.slots.into());
        set(&self.paused, now.paused.into());
        set(&self.busy, now.busy.into());
        set(
            &self
                .connections
                .get_or_create(&PathLabel { path: "direct" }),
            now.direct.into(),
        );
        set(
            &self
                .connections
                .get_or_create(&PathLabel { path: "relayed" }),
            now.relayed.into(),
        );
        set(&self.blob_bytes, now.blob_bytes);
        set(&self.blob_cap_bytes, now.blob_cap_bytes);
        for (state, count) in [
            ("alive", now.alive),
            ("suspect", now.suspect),
            ("down", now.down),
        ] {
            set(
                &self.members.get_or_create(&StateLabel { state }),
                count.into(),
            );
        }
        set(&self.credit_tasks, now.credit_tasks);
        set(&self.credit_fuel, now.credit_fuel);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// Totals for the dashboard: tasks answered and fuel executed since start.
    pub fn totals(&self) -> (u64, u64) {
        let mut tasks = 0;
        for outcome in OUTCOME_LABELS {
            tasks += self.tasks.get_or_create(&OutcomeLabel { outcome }).get();
        }
        (tasks, self.fuel.get())
    }
}

const OUTCOME_LABELS: [&str; 8] = [
    "exited_0",
    "exited_nonzero",
    "trapped",
    "out_of_fuel",
    "memory_limit",
    "timed_out",
    "output_limit",
    "invalid_module",
];

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Exited(0) => OUTCOME_LABELS[0],
        Outcome::Exited(_) => OUTCOME_LABELS[1],
        Outcome::Trapped(_) => OUTCOME_LABELS[2],
        Outcome::OutOfFuel => OUTCOME_LABELS[3],
        Outcome::MemoryLimit => OUTCOME_LABELS[4],
        Outcome::TimedOut => OUTCOME_LABELS[5],
        Outcome::OutputLimit => OUTCOME_LABELS[6],
        Outcome::InvalidModule(_) => OUTCOME_LABELS[7],
    }
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_appear_in_the_text_with_their_labels() {
        let metrics = WorkerMetrics::new();
        metrics.task_done(&Outcome::Exited(0), 1_000);
        metrics.task_done(&Outcome::OutOfFuel, 500);
        metrics.refused(Code::PermissionDenied);
        metrics.refused(Code::PermissionDenied);
        metrics.preempted();
        let text = metrics.encode(&Gauges {
            running: 1,
            queued: 2,
            slots: 3,
            relayed: 4,
            alive: 5,
            ..Gauges::default()
        });
        for line in [
            "peergrid_worker_tasks_total{outcome=\"exited_0\"} 1",
            "peergrid_worker_tasks_total{outcome=\"out_of_fuel\"} 1",
            "peergrid_worker_fuel_total 1500",
            "peergrid_worker_refusals_total{code=\"permission_denied\"} 2",
            "peergrid_worker_preemptions_total 1",
            "peergrid_worker_running 1",
            "peergrid_worker_queued 2",
            "peergrid_worker_slots 3",
            "peergrid_worker_connections{path=\"relayed\"} 4",
            "peergrid_worker_connections{path=\"direct\"} 0",
            "peergrid_worker_members{state=\"alive\"} 5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert_eq!(metrics.totals(), (2, 1_500));
    }
}
