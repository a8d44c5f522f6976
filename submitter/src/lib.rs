//! peergrid submitter and command-line interface (`peergrid`).
//!
//! - [`program`]: a module and its inputs on disk → the signed program a worker runs, and the
//!   identical local sandbox task.
//! - [`job`]: a job file (TOML) → a validated [`job::JobSpec`]: its tasks and their replication.
//! - [`inputs`]: the files a job file names, checked (inside its directory, regular, under the
//!   size caps) before anything is read or sent, then read bounded.
//! - [`client`]: a gRPC client for one worker that checks every receipt.
//! - [`schedule`]: the quorum scheduler, a state machine without I/O: who runs which copy,
//!   when a task is accepted or inconclusive, who is excluded.
//! - [`dispatch`]: one pipelined `Execute` stream per worker.
//! - [`credit`]: credit statements for the workers that agreed, sent in batches, best effort.
//! - [`store`]: the job store (redb): jobs, tasks, copies, receipts, results, reputation.
//! - [`submit`]: `submit`/`resume` sessions: scheduler + connections + store, durable before
//!   reported.
//! - [`results`]: result files (`<task>.stdout`, `results.jsonl`).
//! - [`progress`]: progress bar or plain lines.
//! - [`status`]: `peergrid status`.
//! - [`metrics`]: `submit --http`'s `/metrics`, the running job's counts.
//! - [`dashboard`]: what `peergrid dashboard` shows, read from the store read-only.
//! - [`web`]: the HTTP listeners: `/metrics`, the dashboard's page, state and live updates.
//! - [`limits`]: every bound of the submitter.
//! - [`peers`]: `peergrid peers`, the grid's membership as a worker sees it.
//! - [`report`]: how results are printed, and the exit codes.
//! - [`demo`]: `peergrid demo`, a local grid running a verified pi sweep.
//! - [`cli`]: the commands.

pub mod blob_peers;
pub mod cli;
pub mod client;
pub mod core;
pub mod credit;
pub mod dashboard;
pub mod demo;
pub mod dispatch;
pub mod inputs;
pub mod job;
pub mod limits;
pub mod metrics;
pub mod peers;
pub mod program;
pub mod progress;
pub mod relay;
pub mod report;
pub mod results;
pub mod run_cache;
pub mod schedule;
pub mod sim;
pub mod status;
pub mod store;
pub mod submit;
pub mod web;
