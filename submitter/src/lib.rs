//! peergrid submitter and command-line interface (`peergrid`).
//!
//! - [`program`]: a module and its inputs on disk → the signed program a worker runs, and the
//!   identical local sandbox task.
//! - [`client`]: a gRPC client for one worker that checks every receipt.
//! - [`peers`]: `peergrid peers`, the grid's membership as a worker sees it.
//! - [`report`]: how results are printed, and the exit codes.
//! - [`demo`]: `peergrid demo`, a local grid running a verified pi sweep.
//! - [`cli`]: the commands.

pub mod cli;
pub mod client;
pub mod demo;
pub mod peers;
pub mod program;
pub mod report;
