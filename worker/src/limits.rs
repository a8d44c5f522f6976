//! Every bound the worker enforces, in one place, with what happens when it is reached.

use std::time::Duration;

/// Default fuel of a task that asks for none (`TaskLimits.fuel == 0`): about ten seconds of
/// guest code on a current core. Reached: the task ends with `OutOfFuel`.
pub const DEFAULT_FUEL: u64 = 10_000_000_000;
/// Largest fuel a task may ask for. Above: the task is refused with `OUT_OF_RANGE`.
pub const MAX_FUEL: u64 = 10_000_000_000_000;

/// Default linear-memory cap of a task, in bytes. Reached: `memory.grow` traps and the task
/// ends with `MemoryLimit`.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// Largest memory cap a task may ask for. Above: refused with `OUT_OF_RANGE`.
pub const MAX_MEMORY_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Default wall-clock backstop of a task. Reached: the task is dropped mid-flight (even inside a
/// sleeping host call) and ends with `TimedOut`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest wall-clock backstop a task may ask for. Above: refused with `OUT_OF_RANGE`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Default caps on captured stdout and stderr, in bytes. Reached: the write that crosses the cap
/// traps and the task ends with `OutputLimit`; what fit is kept.
pub const DEFAULT_STDOUT_MAX_BYTES: u64 = 4 * 1024 * 1024;
pub const DEFAULT_STDERR_MAX_BYTES: u64 = 1024 * 1024;
/// Largest output caps a task may ask for: together they must fit in one gRPC message
/// (`peergrid_proto::MAX_MESSAGE_BYTES`). Above: refused with `OUT_OF_RANGE`.
pub const MAX_STDOUT_MAX_BYTES: u64 = 16 * 1024 * 1024;
pub const MAX_STDERR_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Table elements a task may hold (each costs a pointer on the host). Reached: `table.grow`
/// fails and the task ends with `MemoryLimit`.
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Instances, memories and tables a task may create: a WASI preview 1 program is one module.
pub const MAX_INSTANCES: usize = 1;
pub const MAX_MEMORIES: usize = 1;
pub const MAX_TABLES: usize = 4;

/// Guest call-stack size, in bytes. Reached: the task traps with `stack_overflow`. Part of the
/// runtime fingerprint: where the overflow happens depends on it.
pub const MAX_WASM_STACK_BYTES: usize = 1024 * 1024;

/// Fuel between two yields of a running task to the executor, so that the wall-clock backstop
/// and shutdown are noticed promptly (about a millisecond of guest code).
pub const FUEL_YIELD_INTERVAL: u64 = 2_000_000;

/// Largest module or input file a worker stores, in bytes. Above: the upload is refused with
/// `INVALID_ARGUMENT`.
pub const MAX_BLOB_BYTES: u64 = 256 * 1024 * 1024;
/// Largest stdin a manifest may carry, and most input files per task. Above: `INVALID_ARGUMENT`.
pub const MAX_STDIN_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_INPUT_FILES: usize = 1024;
/// Most args and env entries per task, and the longest id fields. Above: `INVALID_ARGUMENT`.
pub const MAX_ARGS: usize = 4096;
pub const MAX_ENV: usize = 1024;
pub const MAX_ID_BYTES: usize = 128;
/// Most hashes asked about in one `MissingBlobs` call. Above: `INVALID_ARGUMENT`.
pub const MAX_HASHES_PER_QUERY: usize = 4096;

/// Compiled modules kept in memory. Reached: the least recently used one is dropped (and
/// compiled again from its stored bytes when next needed).
pub const MODULE_CACHE_ENTRIES: usize = 64;

/// Requests buffered per `Execute` stream before the worker stops reading from it
/// (backpressure on the client), and answers buffered before a slow reader stalls its tasks.
pub const EXECUTE_STREAM_BUFFER: usize = 256;
