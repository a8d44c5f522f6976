//! peergrid worker: lends a machine's spare CPU to the grid by running signed WebAssembly tasks
//! in a deterministic sandbox and answering with signed receipts.
//!
//! - [`sandbox`]: wasmtime configured for determinism; limits; typed outcomes.
//! - [`admission`]: the checks a signed task passes before it may run (pure, no I/O).
//! - [`blobs`]: content-addressed store of modules and input files.
//! - [`receipt`]: outcome ⇄ wire conversion and receipt signing.
//! - [`credit`]: the credit ledger (statements submitters signed) and `peergrid-worker credit`.
//! - [`membership`]: SWIM gossip (foca) over UDP: who is in the grid, with what free slots.
//! - [`service`]: the gRPC `Worker` service, where protobuf meets the worker's types.
//! - [`policy`]: the donor policy (cores, memory, idle-only) and load sampling.
//! - [`config`]: flags over a TOML file over defaults.
//! - [`daemon`]: starting and stopping the whole worker.
//! - [`install`]: `install`/`uninstall`: the worker as a systemd service (unit, config file).
//! - [`limits`]: every bound, and what happens when it is reached.

pub mod activity;
pub mod admission;
pub mod blobs;
pub mod config;
pub mod credit;
pub mod daemon;
pub mod http;
pub mod install;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod policy;
pub mod receipt;
pub mod sandbox;
pub mod service;
