//! How `peergrid run` and `peergrid exec` show a task's result: the task's stdout on stdout, its
//! stderr and a one-line summary on stderr (or one JSON object), and an exit code that says how
//! the task ended. Both commands print through here, so they print the same thing.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use peergrid_proto::ContentHash;
use peergrid_worker::sandbox::{CompileSource, Execution, Outcome};
use serde_json::json;

use crate::client::{CheckedResult, OutputEntry};

/// Exit codes of `peergrid run` and `peergrid exec`, documented in `--help`.
pub mod exit_code {
    /// Guest exit codes above this (or negative) are reported as this; `--json` has the exact one.
    pub const GUEST_MAX: u8 = 123;
    pub const TIMED_OUT: u8 = 124;
    /// peergrid itself failed: bad input, unreachable or refusing worker, bad receipt.
    pub const PEERGRID_ERROR: u8 = 125;
    pub const INVALID_MODULE: u8 = 126;
    pub const TRAPPED: u8 = 131;
    pub const OUT_OF_FUEL: u8 = 132;
    pub const MEMORY_LIMIT: u8 = 133;
    pub const OUTPUT_LIMIT: u8 = 134;

    /// `submit`/`resume`: the job finished, but some tasks are inconclusive (no quorum).
    pub const JOB_INCONCLUSIVE: u8 = 3;
    /// `submit`/`resume`: interrupted (Ctrl-C); `peergrid resume` finishes the job.
    pub const INTERRUPTED: u8 = 130;
    /// `submit --http`, `resume --http`, `dashboard --listen`: the address cannot be listened on.
    pub const CANNOT_LISTEN: u8 = 2;

    /// The `--help` text of `submit` and `resume`.
    pub const JOB_HELP: &str = "\
Exit codes:
  0    every task accepted: a quorum of workers agreed on each result
  2    cannot listen on the --http address (nothing was sent or stored)
  3    the job finished, but some tasks are inconclusive (see results.jsonl)
  125  peergrid failed: bad job file, missing module or input, no reachable worker, stalled job
  130  interrupted; `peergrid resume` finishes the job without running settled tasks again";

    /// The `--help` text that documents them.
    pub const HELP: &str = "\
Exit codes of `run` and `exec`:
  0-123  the task exited with this code (codes above 123 or below 0 are shown as 123)
  124    the task hit its wall-clock limit (--timeout-s)
  125    peergrid failed: bad input file, unreachable or refusing worker, bad receipt
  126    the module is not a valid WASI program
  131    the task trapped (e.g. unreachable, stack overflow)
  132    the task ran out of fuel (--fuel)
  133    the task hit its memory limit (--memory-mb)
  134    the task wrote more than its stdout/stderr cap, or its /output cap";
}

/// A task's result, from a local run or a verified receipt.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    pub stdout: Bytes,
    pub stderr: Bytes,
    pub fuel_used: u64,
    pub wall_time: Duration,
    /// Present for `exec`: the receipt that vouches for this result.
    pub receipt: Option<ReceiptSummary>,
    /// The files the task left under `/output` (for a task run with `--output-dir`).
    pub outputs: Vec<OutputEntry>,
    /// Where those files were written.
    pub output_dir: Option<std::path::PathBuf>,
    /// For `run`: where the compiled module came from (compiled now, or `run`'s disk cache).
    pub module_source: Option<CompileSource>,
}

#[derive(Debug, Clone)]
pub struct ReceiptSummary {
    pub worker_key: String,
    pub task_digest: String,
    pub runtime_fingerprint: String,
    pub receipt_hex: String,
    pub signature_hex: String,
}

impl From<Execution> for Report {
    fn from(execution: Execution) -> Self {
        Self {
            outcome: execution.outcome,
            stdout: execution.stdout,
            stderr: execution.stderr,
            fuel_used: execution.fuel_used,
            wall_time: execution.wall_time,
            receipt: None,
            outputs: execution
                .outputs
                .iter()
                .flat_map(|outputs| &outputs.files)
                .map(|file| OutputEntry {
                    name: file.name.clone(),
                    size: file.size,
                    hash: file.hash,
                })
                .collect(),
            output_dir: None,
            module_source: None,
        }
    }
}

impl From<CheckedResult> for Report {
    fn from(result: CheckedResult) -> Self {
        let receipt = &result.receipt;
        Self {
            fuel_used: receipt.receipt.fuel_used,
            receipt: Some(ReceiptSummary {
                worker_key: receipt.worker.to_hex(),
                task_digest: receipt.task_digest.to_hex(),
                runtime_fingerprint: receipt.receipt.runtime_fingerprint.clone(),
                receipt_hex: hex::encode(&result.signed.receipt),
                signature_hex: hex::encode(&result.signed.signature),
            }),
            outcome: result.outcome,
            stdout: result.stdout,
            stderr: result.stderr,
            wall_time: result.wall_time,
            outputs: result.outputs,
            output_dir: None,
            module_source: None,
        }
    }
}

/// The JSON name of [`Outcome::TimedOut`], which quorum rules single out (see
/// `schedule::Verdict::is_timeout`).
pub const TIMED_OUT: &str = "timed_out";

/// The outcome's JSON name, exit code and trap kind or reason.
pub fn outcome_parts(outcome: &Outcome) -> (&'static str, Option<i32>, Option<String>) {
    match outcome {
        Outcome::Exited(code) => ("exited", Some(*code), None),
        Outcome::Trapped(kind) => ("trapped", None, Some(kind.name().to_owned())),
        Outcome::OutOfFuel => ("out_of_fuel", None, None),
        Outcome::MemoryLimit => ("memory_limit", None, None),
        Outcome::TimedOut => (TIMED_OUT, None, None),
        Outcome::OutputLimit => ("output_limit", None, None),
        Outcome::InvalidModule(reason) => ("invalid_module", None, Some(reason.clone())),
    }
}

impl Report {
    pub fn output_hash(&self) -> ContentHash {
        ContentHash::of(&self.stdout)
    }

    /// The process exit code for this result (see [`exit_code::HELP`]).
    pub fn exit_code(&self) -> u8 {
        match &self.outcome {
            Outcome::Exited(code) => u8::try_from(*code)
                .ok()
                .filter(|code| *code <= exit_code::GUEST_MAX)
                .unwrap_or(exit_code::GUEST_MAX),
            Outcome::TimedOut => exit_code::TIMED_OUT,
            Outcome::InvalidModule(_) => exit_code::INVALID_MODULE,
            Outcome::Trapped(_) => exit_code::TRAPPED,
            Outcome::OutOfFuel => exit_code::OUT_OF_FUEL,
            Outcome::MemoryLimit => exit_code::MEMORY_LIMIT,
            Outcome::OutputLimit => exit_code::OUTPUT_LIMIT,
        }
    }

    /// One line: how the task ended, its fuel, time and output hash.
    pub fn summary(&self) -> String {
        let (name, code, detail) = outcome_parts(&self.outcome);
        let ending = match (code, detail) {
            (Some(code), _) => format!("{name} {code}"),
            (None, Some(detail)) => format!("{name} ({detail})"),
            (None, None) => name.to_owned(),
        };
        format!(
            "peergrid: {ending} · fuel {} · {:.3} ms · output {}",
            self.fuel_used,
            self.wall_time.as_secs_f64() * 1000.0,
            self.output_hash().short()
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (name, code, detail) = outcome_parts(&self.outcome);
        let mut value = json!({
            "outcome": name,
            "exit_code": code,
            "trap": if matches!(self.outcome, Outcome::Trapped(_)) { detail.clone() } else { None },
            "reason": if matches!(self.outcome, Outcome::InvalidModule(_)) { detail } else { None },
            "fuel_used": self.fuel_used,
            "wall_time_us": self.wall_time.as_micros() as u64,
            "output_hash": self.output_hash().to_hex(),
        });
        for (name, bytes) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let (text, encoding) = lossless_text(bytes);
            value[name] = text.into();
            value[format!("{name}_encoding")] = encoding.into();
        }
        if let Some(source) = self.module_source {
            value["module"] = match source {
                CompileSource::Memory => "memory",
                CompileSource::Disk => "cached",
                CompileSource::Compiled => "compiled",
            }
            .into();
        }
        if let Some(dir) = &self.output_dir {
            value["output_dir"] = dir.display().to_string().into();
            value["outputs"] = self
                .outputs
                .iter()
                .map(|file| {
                    json!({
                        "name": file.name,
                        "size": file.size,
                        "hash": file.hash.to_hex(),
                    })
                })
                .collect();
        }
        if let Some(receipt) = &self.receipt {
            value["receipt"] = json!({
                "worker_key": receipt.worker_key,
                "task_digest": receipt.task_digest,
                "runtime_fingerprint": receipt.runtime_fingerprint,
                "signature_verified": true,
                "receipt_hex": receipt.receipt_hex,
                "signature_hex": receipt.signature_hex,
            });
        }
        value
    }

    /// Prints the result as `run` and `exec` do, and returns the exit code.
    pub fn print(&self, as_json: bool) -> std::io::Result<u8> {
        if as_json {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &self.to_json())?;
            writeln!(out)?;
        } else {
            std::io::stdout().lock().write_all(&self.stdout)?;
            std::io::stdout().flush()?;
            let mut err = std::io::stderr().lock();
            err.write_all(&self.stderr)?;
            writeln!(err, "{}", self.summary())?;
            if let Some(dir) = &self.output_dir {
                let bytes: u64 = self.outputs.iter().map(|file| file.size).sum();
                writeln!(
                    err,
                    "peergrid: {} output files ({bytes} bytes) in {}",
                    self.outputs.len(),
                    dir.display()
                )?;
            }
            if let Some(receipt) = &self.receipt {
                writeln!(
                    err,
                    "peergrid: receipt verified: signed by worker {} for task {}",
                    &receipt.worker_key[..12],
                    &receipt.task_digest[..16]
                )?;
            }
        }
        Ok(self.exit_code())
    }
}

/// Bytes as a JSON string without loss: the text itself when it is UTF-8 ("utf-8"), else its
/// standard base64 ("base64").
pub fn lossless_text(bytes: &[u8]) -> (String, &'static str) {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), "utf-8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            "base64",
        ),
    }
}
