//! The deterministic WebAssembly sandbox: one wasmtime engine configured so that the same task
//! gives the same outcome, output and fuel on every machine with the same runtime fingerprint,
//! and a typed [`Outcome`] for every way a task can end.
//!
//! Tasks run on a runtime of their own (one thread per slot), never on the caller's: guest code
//! is CPU-bound and would otherwise starve the gRPC server. The wall-clock backstop is a tokio
//! timeout around the whole execution, which also ends a guest blocked in a sleeping host call,
//! where fuel does not burn.

mod disk_cache;
pub mod guest_env;
pub mod input_view;
pub mod output_dir;

use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use peergrid_proto::ContentHash;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::limits;
use disk_cache::{DiskCache, Lookup};
pub use disk_cache::{MODULE_CACHE_KEY_CONTEXT, ModuleCacheDir};
use guest_env::{CappedPipe, FixedMonotonicClock, FixedWallClock, SeededRandom};
use input_view::{HostIdentity, InputView};
use output_dir::OutputState;
pub use output_dir::{OUTPUT_DIR, OutputFile, Outputs};

/// Bumped whenever a sandbox setting that can change a result changes (clocks, random streams,
/// stack size, argv, `/input` metadata): peers with different versions must not be compared.
/// v2: `/input` shows fixed metadata and sorted listings ([`input_view`]).
/// v3: trap and invalid-module texts are capped ([`Outcome::capped`]).
/// v4: tasks may ask for a writable `/output` ([`output_dir`]); fuel is charged by operator
/// cost ([`fuel_costs`]), not one per operator.
/// v5: exception handling is on, its GC heap counted in the task's memory ([`TaskLimiter`]).
const SANDBOX_VERSION: u32 = 5;

/// argv[0] of every task: the module's name on the submitter's disk must not change the output.
pub const ARGV0: &str = "task";

/// Where input files appear in the guest.
pub const INPUT_DIR: &str = "/input";

/// How a task ended. Every way is a value: no task can crash the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Returned from `main` (code 0) or called `proc_exit`.
    Exited(i32),
    Trapped(TrapKind),
    OutOfFuel,
    /// Tried to grow memory or tables past the task's limit.
    MemoryLimit,
    /// The wall-clock backstop fired.
    TimedOut,
    /// Wrote more than its stdout or stderr cap.
    OutputLimit,
    /// The module did not validate, compile, link or instantiate; the reason is in the message.
    InvalidModule(String),
}

/// Why a guest trapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrapKind {
    StackOverflow,
    Unreachable,
    MemoryOutOfBounds,
    TableOutOfBounds,
    IndirectCallToNull,
    BadSignature,
    IntegerOverflow,
    IntegerDivisionByZero,
    BadConversionToInteger,
    /// A trap this version does not name, or a host function that failed.
    Other(String),
}

impl Outcome {
    /// The outcome with its text (a host trap's message, why a module is invalid) cut to
    /// `peergrid_proto::MAX_RECEIPT_TEXT_BYTES`, as every receipt carries it: the same cut on
    /// every peer, so a long message never costs agreement, and receipts stay small.
    pub fn capped(self) -> Self {
        match self {
            Outcome::InvalidModule(reason) => Outcome::InvalidModule(capped_text(reason)),
            Outcome::Trapped(TrapKind::Other(message)) => {
                Outcome::Trapped(TrapKind::Other(capped_text(message)))
            }
            other => other,
        }
    }
}

/// `text` cut at the last character boundary that leaves room for "…" within
/// `peergrid_proto::MAX_RECEIPT_TEXT_BYTES`, with "…" appended; unchanged when it fits.
fn capped_text(mut text: String) -> String {
    const ELLIPSIS: &str = "…";
    let max = peergrid_proto::MAX_RECEIPT_TEXT_BYTES;
    if text.len() <= max {
        return text;
    }
    let mut end = max - ELLIPSIS.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(ELLIPSIS);
    text
}

impl TrapKind {
    /// Stable snake_case name, as used in receipts and JSON.
    pub fn name(&self) -> &str {
        match self {
            Self::StackOverflow => "stack_overflow",
            Self::Unreachable => "unreachable",
            Self::MemoryOutOfBounds => "memory_out_of_bounds",
            Self::TableOutOfBounds => "table_out_of_bounds",
            Self::IndirectCallToNull => "indirect_call_to_null",
            Self::BadSignature => "bad_signature",
            Self::IntegerOverflow => "integer_overflow",
            Self::IntegerDivisionByZero => "integer_division_by_zero",
            Self::BadConversionToInteger => "bad_conversion_to_integer",
            Self::Other(name) => name,
        }
    }

    pub fn from_name(name: &str) -> Self {
        match name {
            "stack_overflow" => Self::StackOverflow,
            "unreachable" => Self::Unreachable,
            "memory_out_of_bounds" => Self::MemoryOutOfBounds,
            "table_out_of_bounds" => Self::TableOutOfBounds,
            "indirect_call_to_null" => Self::IndirectCallToNull,
            "bad_signature" => Self::BadSignature,
            "integer_overflow" => Self::IntegerOverflow,
            "integer_division_by_zero" => Self::IntegerDivisionByZero,
            "bad_conversion_to_integer" => Self::BadConversionToInteger,
            other => Self::Other(other.to_owned()),
        }
    }

    fn from_trap(trap: Trap) -> Self {
        match trap {
            Trap::StackOverflow => Self::StackOverflow,
            Trap::UnreachableCodeReached => Self::Unreachable,
            Trap::MemoryOutOfBounds => Self::MemoryOutOfBounds,
            Trap::TableOutOfBounds => Self::TableOutOfBounds,
            Trap::IndirectCallToNull => Self::IndirectCallToNull,
            Trap::BadSignature => Self::BadSignature,
            Trap::IntegerOverflow => Self::IntegerOverflow,
            Trap::IntegerDivisionByZero => Self::IntegerDivisionByZero,
            Trap::BadConversionToInteger => Self::BadConversionToInteger,
            other => Self::Other(format!("{other:?}").to_lowercase()),
        }
    }
}

/// The limits one task runs under (already checked against the worker's ceilings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub timeout: Duration,
    pub stdout_max_bytes: u64,
    pub stderr_max_bytes: u64,
    /// Caps on `/output` (only for a task with [`TaskSpec::outputs`]).
    pub output_max_bytes: u64,
    pub output_max_files: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: limits::DEFAULT_FUEL,
            memory_bytes: limits::DEFAULT_MEMORY_BYTES,
            timeout: limits::DEFAULT_TIMEOUT,
            stdout_max_bytes: limits::DEFAULT_STDOUT_MAX_BYTES,
            stderr_max_bytes: limits::DEFAULT_STDERR_MAX_BYTES,
            output_max_bytes: limits::DEFAULT_OUTPUT_MAX_BYTES,
            output_max_files: limits::DEFAULT_OUTPUT_MAX_FILES,
        }
    }
}

/// A file the guest reads at `/input/<name>`; `source` is where its bytes are on this host.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub source: PathBuf,
}

/// Everything the guest sees, besides the module.
#[derive(Debug, Clone, Default)]
pub struct TaskSpec {
    /// argv[1..]; argv[0] is [`ARGV0`].
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Bytes,
    pub inputs: Vec<InputSpec>,
    pub limits: Limits,
    /// Seeds the guest's random streams: the program digest (see `peergrid.proto`).
    pub random_seed: [u8; 32],
    /// The guest gets a writable `/output`, bounded by the limits' output caps.
    pub outputs: bool,
}

/// What running a task produced.
#[derive(Debug, Clone)]
pub struct Execution {
    pub outcome: Outcome,
    pub stdout: Bytes,
    pub stderr: Bytes,
    /// Fuel the guest burnt after instantiation; 0 when it timed out or never started.
    pub fuel_used: u64,
    pub wall_time: Duration,
    /// For a task with outputs, the files it left under `/output` (none when it ended with
    /// `OutputLimit`); `None` for a task without.
    pub outputs: Option<Arc<Outputs>>,
}

impl Execution {
    /// A task that ended before it ran (`outcome`), with no output.
    pub fn without_running(outcome: Outcome) -> Self {
        Self {
            outcome: outcome.capped(),
            stdout: Bytes::new(),
            stderr: Bytes::new(),
            fuel_used: 0,
            wall_time: Duration::ZERO,
            outputs: None,
        }
    }

    /// The execution of a task that asked for outputs (`asked`): with an empty list of output
    /// files if it ended before it could leave any, so that its receipt still signs a digest.
    pub fn with_outputs_asked(mut self, asked: bool) -> Self {
        if asked && self.outputs.is_none() {
            self.outputs = Some(Arc::new(Outputs::none()));
        }
        self
    }

    /// BLAKE3 of stdout: what submitters compare.
    pub fn stdout_hash(&self) -> ContentHash {
        ContentHash::of(&self.stdout)
    }
}

/// A module compiled and linked against WASI, ready to instantiate cheaply.
#[derive(Clone)]
pub struct CompiledModule {
    pre: InstancePre<TaskState>,
}

/// Where [`Sandbox::load`] found a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Already compiled, in memory.
    Memory,
    /// Compiled earlier (perhaps by a previous run of this worker), loaded from the disk cache.
    Disk,
    /// Compiled now.
    Compiled,
}

/// Why a module cannot run. Deterministic for a given engine: a valid outcome, not a fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ModuleError(pub String);

/// Options fixed when the sandbox starts.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Threads running tasks: at most this many tasks make progress at once.
    pub threads: usize,
    /// Where per-task scratch directories (input files) are made.
    pub scratch_dir: PathBuf,
    /// Testing aid: appended to the runtime fingerprint (`…+TAG`), so a test can stand up a
    /// worker that looks like a different engine build. `None` for real work.
    pub fingerprint_tag: Option<String>,
}

/// The sandbox: a cheap handle, clone it freely.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<TaskState>,
    fingerprint: String,
    modules: Mutex<ModuleCache>,
    /// Compiled modules on disk; `None` for `peergrid run` and most tests.
    disk: Option<DiskCache>,
    /// One permit per slot of the pooling allocator, held from before a task's store is made
    /// until after it is dropped: a task waits for a slot rather than failing to instantiate.
    pool_slots: Arc<tokio::sync::Semaphore>,
    executor: Executor,
    scratch_dir: PathBuf,
}

/// Per-task store data.
struct TaskState {
    wasi: WasiP1Ctx,
    limiter: TaskLimiter,
    /// What the guest is shown of `/input`'s and `/output`'s metadata; `None` when the task has
    /// neither.
    input_view: Option<InputView>,
    /// The task's `/output`, for a task with outputs.
    output: Option<OutputState>,
}

impl Sandbox {
    /// A sandbox without a disk cache (compiled modules are kept in memory only).
    pub fn new(options: SandboxOptions) -> Result<Self, ModuleError> {
        Self::with_module_cache(options, None)
    }

    /// A sandbox that also keeps compiled modules in `cache` (a worker's data directory), so
    /// that a restarted worker loads them instead of compiling them again.
    pub fn with_module_cache(
        options: SandboxOptions,
        cache: Option<ModuleCacheDir>,
    ) -> Result<Self, ModuleError> {
        let threads = options.threads.max(1);
        let pool_slots = limits::pool_slots(threads);
        let mut config = deterministic_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
            pool_slots,
        )));
        let engine = Engine::new(&config)
            .map_err(|error| ModuleError(format!("cannot start wasmtime: {error}")))?;
        let disk = match cache {
            None => None,
            Some(cache) => Some(DiskCache::open(&cache, engine_hash(&engine)).map_err(
                |error| {
                    ModuleError(format!(
                        "cannot open module cache {}: {error}",
                        cache.dir.display()
                    ))
                },
            )?),
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut TaskState| {
            &mut state.wasi
        })
        .and_then(|()| input_view::shadow_metadata_calls(&mut linker))
        .and_then(|()| output_dir::shadow_output_calls(&mut linker))
        .map_err(|error| ModuleError(format!("cannot link WASI: {error}")))?;
        std::fs::create_dir_all(&options.scratch_dir).map_err(|error| {
            ModuleError(format!(
                "cannot create scratch directory {}: {error}",
                options.scratch_dir.display()
            ))
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                fingerprint: match &options.fingerprint_tag {
                    Some(tag) => format!("{}+{tag}", fingerprint(&engine)),
                    None => fingerprint(&engine),
                },
                engine,
                linker,
                modules: Mutex::new(ModuleCache::default()),
                disk,
                pool_slots: Arc::new(tokio::sync::Semaphore::new(pool_slots)),
                executor: Executor::new(threads),
                scratch_dir: options.scratch_dir,
            }),
        })
    }

    /// Names this engine and configuration: results are comparable only between equal
    /// fingerprints.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// The compiled module for `hash`, if it is in memory.
    pub fn cached(&self, hash: &ContentHash) -> Option<CompiledModule> {
        self.lock_modules().get(hash)
    }

    /// Compiles and links a module (or loads it from the disk cache), and keeps it in memory
    /// under `hash`. Blocking (compiling can take seconds for a large module): call it from a
    /// blocking thread.
    pub fn compile(&self, hash: ContentHash, wasm: &[u8]) -> Result<CompiledModule, ModuleError> {
        self.load(hash, wasm).map(|(module, _source)| module)
    }

    /// Like [`Self::compile`], and says where the module came from: memory, the disk cache, or
    /// the compiler. `wasm` must hash to `hash` (the caller's blob store checked that).
    pub fn load(
        &self,
        hash: ContentHash,
        wasm: &[u8],
    ) -> Result<(CompiledModule, CompileSource), ModuleError> {
        self.load_with(hash, || Ok(wasm))
    }

    /// Like [`Self::load`], reading the module's bytes with `read_wasm` only when it has to be
    /// compiled: not when it is in memory or in the disk cache.
    pub fn load_with<W: AsRef<[u8]>>(
        &self,
        hash: ContentHash,
        read_wasm: impl FnOnce() -> Result<W, ModuleError>,
    ) -> Result<(CompiledModule, CompileSource), ModuleError> {
        if let Some(module) = self.cached(&hash) {
            return Ok((module, CompileSource::Memory));
        }
        let (module, source) = match self.load_from_disk(&hash) {
            Some(module) => (module, CompileSource::Disk),
            None => {
                let module = Module::new(&self.inner.engine, read_wasm()?).map_err(|error| {
                    ModuleError(format!("invalid module: {}", error_chain(&error)))
                })?;
                self.store_on_disk(&hash, &module);
                (module, CompileSource::Compiled)
            }
        };
        let pre = self
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|error| ModuleError(format!("cannot link module: {}", error_chain(&error))))?;
        let compiled = CompiledModule { pre };
        self.lock_modules().insert(hash, compiled.clone());
        Ok((compiled, source))
    }

    /// The module from the disk cache, if this worker compiled it before with this engine.
    fn load_from_disk(&self, hash: &ContentHash) -> Option<Module> {
        let disk = self.inner.disk.as_ref()?;
        match disk.read(hash) {
            Lookup::Miss => None,
            Lookup::Refused(reason) => {
                tracing::warn!(module = %hash.short(), "compiled module refused, compiling again: {reason}");
                None
            }
            Lookup::Hit(serialized) => {
                // SAFETY: `Module::deserialize` runs the bytes as native code without checking
                // them. These are exactly the bytes whose keyed MAC was just verified, held in
                // our own memory (not a file that could change after the check): the key is
                // derived from this worker's secret identity, so only this worker could have
                // written them, and it writes only the output of `Module::serialize` of a module
                // it compiled. The file name carries the engine's compatibility hash (and the
                // MAC covers the name), and wasmtime checks that hash again on load.
                match unsafe { Module::deserialize(&self.inner.engine, &serialized) } {
                    Ok(module) => Some(module),
                    Err(error) => {
                        tracing::warn!(module = %hash.short(), "cached module does not load, compiling again: {}", error_chain(&error));
                        None
                    }
                }
            }
        }
    }

    /// Keeps a freshly compiled module on disk; a failure only costs a compile next time.
    fn store_on_disk(&self, hash: &ContentHash, module: &Module) {
        let Some(disk) = self.inner.disk.as_ref() else {
            return;
        };
        let written = module
            .serialize()
            .map_err(|error| error_chain(&error))
            .and_then(|bytes| disk.write(hash, &bytes).map_err(|error| error.to_string()));
        if let Err(error) = written {
            tracing::warn!(module = %hash.short(), "cannot keep compiled module on disk: {error}");
        }
    }

    /// Runs a task to completion on the sandbox's own threads. Never fails: every ending is an
    /// [`Outcome`]. Called from a future already on those threads (see [`Sandbox::spawn`]), the
    /// task runs in place; otherwise it hops there and back.
    pub async fn run(&self, module: &CompiledModule, spec: TaskSpec) -> Execution {
        let outputs_asked = spec.outputs;
        if self.inner.executor.is_current() {
            return self
                .run_here(module, spec)
                .await
                .with_outputs_asked(outputs_asked);
        }
        let sandbox = self.clone();
        let module = module.clone();
        let execution = match self
            .spawn(async move { sandbox.run_here(&module, spec).await })
            .await
        {
            Ok(execution) => execution,
            // A panic here is a bug in peergrid, not the guest's doing; report it as a trap so
            // the caller keeps serving. (The worker's service runs tasks in place, inside
            // `spawn`, and reports such a panic as a lost copy instead.)
            Err(error) => Execution::without_running(Outcome::Trapped(TrapKind::Other(format!(
                "host panic: {error}"
            )))),
        };
        execution.with_outputs_asked(outputs_asked)
    }

    /// Runs `future` on the sandbox's threads and waits for it. If the caller stops waiting (a
    /// preempted task, a client gone), the future is dropped there, and a guest it runs is
    /// stopped at its next fuel yield instead of running on unobserved.
    ///
    /// The worker waits for a slot inside such a future, so when a task ends, the next one
    /// (woken on the same thread by the slot it frees) starts at once, with no wake-up of a
    /// parked thread in between: on the 2-core reference VM a hop there and back (two wake-ups)
    /// costs about 60 µs, against 7 µs for a trivial task itself.
    pub async fn spawn<F>(&self, future: F) -> Result<F::Output, tokio::task::JoinError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut task = AbortOnDrop(self.inner.executor.spawn(future));
        (&mut task.0).await
    }

    /// Compiles (or takes from the cache) and runs `wasm` in one step: the `peergrid run` path.
    pub async fn run_module(&self, wasm: Bytes, spec: TaskSpec) -> Execution {
        let hash = ContentHash::of(&wasm);
        let module = match self.cached(&hash) {
            Some(module) => Ok(module),
            None => {
                let sandbox = self.clone();
                tokio::task::spawn_blocking(move || sandbox.compile(hash, &wasm))
                    .await
                    .unwrap_or_else(|error| Err(ModuleError(format!("compiler panic: {error}"))))
            }
        };
        match module {
            Ok(module) => self.run(&module, spec).await,
            Err(error) => Execution::without_running(Outcome::InvalidModule(error.0))
                .with_outputs_asked(spec.outputs),
        }
    }

    async fn run_here(&self, module: &CompiledModule, spec: TaskSpec) -> Execution {
        // Held until the store is dropped (the end of this function): the pooling allocator has
        // a fixed number of slots.
        let _pool_slot = self
            .inner
            .pool_slots
            .clone()
            .acquire_owned()
            .await
            .expect("the pool semaphore is never closed");
        let started = Instant::now();
        let stdout = CappedPipe::new(cap_to_usize(spec.limits.stdout_max_bytes));
        let stderr = CappedPipe::new(cap_to_usize(spec.limits.stderr_max_bytes));
        // Held until the task ends: the guest's /input lives here.
        let (scratch, input_view) = match self.prepare_inputs(&spec.inputs) {
            Ok(Some((scratch, view))) => (Some(scratch), Some(view)),
            Ok(None) => (None, None),
            Err(error) => {
                return Execution::without_running(Outcome::Trapped(TrapKind::Other(format!(
                    "host could not prepare input files: {error}"
                ))));
            }
        };
        let input_dir = scratch.as_ref().map(|dir| dir.path());
        // Made afresh for every store (an instantiation retried after a pool shortage starts
        // with an empty `/output` again).
        let output_dir = Mutex::new(None::<tempfile::TempDir>);
        let new_store = || -> wasmtime::Result<Store<TaskState>> {
            let (output, view) = if spec.outputs {
                let dir = tempfile::Builder::new()
                    .prefix("output-")
                    .tempdir_in(&self.inner.scratch_dir)?;
                let output = OutputState::new(
                    dir.path(),
                    spec.limits.output_max_bytes,
                    spec.limits.output_max_files,
                )?;
                let view = input_view
                    .clone()
                    .unwrap_or_else(|| InputView::new(None, Vec::new()))
                    .with_output(output.root);
                *lock(&output_dir) = Some(dir);
                (Some(output), Some(view))
            } else {
                (None, input_view.clone())
            };
            let output_path = lock(&output_dir).as_ref().map(|dir| dir.path().to_owned());
            let state = TaskState {
                wasi: wasi_context(&spec, &stdout, &stderr, input_dir, output_path.as_deref())?,
                limiter: TaskLimiter {
                    memory_max_bytes: cap_to_usize(spec.limits.memory_bytes),
                    memory_used_bytes: 0,
                    hit: false,
                },
                input_view: view,
                output,
            };
            let mut store = Store::new(&self.inner.engine, state);
            store.limiter(|state| &mut state.limiter);
            Ok(store)
        };
        let fuel = spec.limits.fuel;
        let output_over = &std::sync::atomic::AtomicBool::new(false);
        let run = async move {
            let (store, result) = instantiate_and_call(new_store, module, fuel).await?;
            let fuel_left = store.get_fuel().unwrap_or(0);
            let memory_limit_hit = store.data().limiter.hit;
            output_over.store(
                store
                    .data()
                    .output
                    .as_ref()
                    .is_some_and(|output| output.over),
                Ordering::Relaxed,
            );
            Ok::<_, wasmtime::Error>((result, fuel.saturating_sub(fuel_left), memory_limit_hit))
        };
        let (outcome, fuel_used) = match tokio::time::timeout(spec.limits.timeout, run).await {
            Err(_elapsed) => (Outcome::TimedOut, 0),
            Ok(Err(error)) => {
                return Execution::without_running(Outcome::Trapped(TrapKind::Other(format!(
                    "host could not open input directory: {error}"
                ))));
            }
            Ok(Ok((result, fuel_used, memory_limit_hit))) => {
                let outcome = classify(result, memory_limit_hit);
                // Fuel is meaningful only once the guest started running.
                let fuel_used = match outcome {
                    Outcome::InvalidModule(_) => 0,
                    _ => fuel_used,
                };
                (outcome, fuel_used)
            }
        };
        let output_over = output_over.load(Ordering::Relaxed);
        let outcome = if stdout.overflowed() || stderr.overflowed() || output_over {
            Outcome::OutputLimit
        } else {
            outcome
        };
        drop(scratch);
        let outputs = match output_dir
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
        {
            None => None,
            // Passing a cap keeps no output file (the directory is deleted).
            Some(_dir) if output_over => Some(Outputs::none()),
            Some(dir) => match output_dir::collect(dir) {
                Ok(outputs) => Some(outputs),
                Err(error) => {
                    return Execution::without_running(Outcome::Trapped(TrapKind::Other(format!(
                        "host could not read /output: {error}"
                    ))));
                }
            },
        };
        Execution {
            outcome: outcome.capped(),
            stdout: stdout.contents(),
            stderr: stderr.contents(),
            fuel_used,
            wall_time: started.elapsed(),
            outputs: outputs.map(Arc::new),
        }
    }

    /// Links every input file into a fresh scratch directory, and makes the view the guest gets
    /// of its metadata. A file is copied instead when linking fails (across file systems), when
    /// the link would be a symbolic link (`link` does not follow one), or when another input of
    /// the task is the same host file: each input must have an inode of its own, so that the
    /// view tells them apart the same way on every host (see [`input_view`]).
    fn prepare_inputs(
        &self,
        inputs: &[InputSpec],
    ) -> std::io::Result<Option<(tempfile::TempDir, InputView)>> {
        if inputs.is_empty() {
            return Ok(None);
        }
        let dir = tempfile::Builder::new()
            .prefix("task-")
            .tempdir_in(&self.inner.scratch_dir)?;
        let root = HostIdentity::of(&std::fs::metadata(dir.path())?);
        let mut files: Vec<(String, HostIdentity)> = Vec::with_capacity(inputs.len());
        let mut identities = HashSet::with_capacity(inputs.len());
        for input in inputs {
            if !is_one_component(&input.name) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("input file name {:?} is not a single file name", input.name),
                ));
            }
            let target = dir.path().join(&input.name);
            let identity = match std::fs::hard_link(&input.source, &target) {
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("input file name {:?} appears twice", input.name),
                    ));
                }
                Err(_) => copy_input(&input.source, &target)?,
                Ok(()) => {
                    let metadata = std::fs::symlink_metadata(&target)?;
                    let identity = HostIdentity::of(&metadata);
                    if metadata.is_file() && !identities.contains(&identity) {
                        identity
                    } else {
                        std::fs::remove_file(&target)?;
                        copy_input(&input.source, &target)?
                    }
                }
            };
            identities.insert(identity);
            files.push((input.name.clone(), identity));
        }
        Ok(Some((dir, InputView::new(Some(root), files))))
    }

    fn lock_modules(&self) -> std::sync::MutexGuard<'_, ModuleCache> {
        self.inner
            .modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Instantiates the module in a store from `new_store` and runs `_start`; returns the store
/// with the run's result. Fails only when a store cannot be made (its WASI context).
async fn instantiate_and_call(
    new_store: impl Fn() -> wasmtime::Result<Store<TaskState>>,
    module: &CompiledModule,
    fuel: u64,
) -> wasmtime::Result<(Store<TaskState>, Result<(), RunError>)> {
    // The pool-slot semaphore guarantees a slot is free, but wasmtime's slot allocator is
    // sharded: it probes one shard after another, and a slot freed in a shard it already probed
    // while another task takes the free one in the next is missed. A transient shortage, not the
    // task's doing, which must never become its outcome (an honest worker would sign
    // `invalid_module` where every other run exits). Retried, bounded, each time in a new store:
    // a failed instantiation still counts against the store's own instance limit.
    let mut retries = 0;
    loop {
        let mut store = new_store()?;
        // Instantiation (data segments, start function) gets its own allowance: its cost
        // differs between platforms, so the task's fuel is set only once it is done
        // (DESIGN.md §3).
        if let Err(error) = store.set_fuel(fuel) {
            return Ok((store, Err(RunError::Host(error))));
        }
        match module.pre.instantiate_async(&mut store).await {
            Ok(instance) => {
                let result = call_start(&mut store, instance, fuel).await;
                return Ok((store, result));
            }
            Err(error)
                if error.is::<wasmtime::PoolConcurrencyLimitError>()
                    && retries < limits::POOL_SHORTAGE_RETRIES =>
            {
                retries += 1;
                drop(store);
                tokio::time::sleep(limits::POOL_SHORTAGE_RETRY_DELAY).await;
            }
            Err(error) => return Ok((store, Err(RunError::Instantiate(error)))),
        }
    }
}

async fn call_start(
    store: &mut Store<TaskState>,
    instance: wasmtime::Instance,
    fuel: u64,
) -> Result<(), RunError> {
    store.set_fuel(fuel).map_err(RunError::Host)?;
    store
        .fuel_async_yield_interval(Some(limits::FUEL_YIELD_INTERVAL))
        .map_err(RunError::Host)?;
    let start = instance
        .get_typed_func::<(), ()>(&mut *store, "_start")
        .map_err(|error| RunError::Instantiate(error.context("a WASI command exports `_start`")))?;
    start
        .call_async(&mut *store, ())
        .await
        .map_err(RunError::Guest)
}

enum RunError {
    Instantiate(wasmtime::Error),
    Guest(wasmtime::Error),
    Host(wasmtime::Error),
}

fn classify(result: Result<(), RunError>, memory_limit_hit: bool) -> Outcome {
    let error = match result {
        Ok(()) => return Outcome::Exited(0),
        Err(RunError::Host(error)) => {
            return Outcome::Trapped(TrapKind::Other(format!("host: {}", error_chain(&error))));
        }
        Err(RunError::Instantiate(_)) if memory_limit_hit => return Outcome::MemoryLimit,
        Err(RunError::Instantiate(error)) => {
            return Outcome::InvalidModule(format!("cannot instantiate: {}", error_chain(&error)));
        }
        Err(RunError::Guest(error)) => error,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Outcome::Exited(exit.0);
    }
    if memory_limit_hit {
        return Outcome::MemoryLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::OutOfFuel,
        Some(trap) => Outcome::Trapped(TrapKind::from_trap(*trap)),
        None => Outcome::Trapped(TrapKind::Other(format!("host: {}", error_chain(&error)))),
    }
}

fn wasi_context(
    spec: &TaskSpec,
    stdout: &CappedPipe,
    stderr: &CappedPipe,
    input_dir: Option<&Path>,
    output_dir: Option<&Path>,
) -> wasmtime::Result<WasiP1Ctx> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .arg(ARGV0)
        .args(&spec.args)
        .envs(&spec.env)
        .stdin(MemoryInputPipe::new(spec.stdin.clone()))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .wall_clock(FixedWallClock)
        .monotonic_clock(FixedMonotonicClock)
        .secure_random(SeededRandom::new(
            guest_env::RANDOM_CONTEXT,
            &spec.random_seed,
        ))
        .insecure_random(SeededRandom::new(
            guest_env::INSECURE_RANDOM_CONTEXT,
            &spec.random_seed,
        ))
        .insecure_random_seed(SeededRandom::insecure_seed(&spec.random_seed))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if let Some(dir) = input_dir {
        builder.preopened_dir(dir, INPUT_DIR, FsPerms::ReadOnly)?;
    }
    if let Some(dir) = output_dir {
        builder.preopened_dir(dir, OUTPUT_DIR, FsPerms::ReadWrite)?;
    }
    Ok(builder.build_p1())
}

fn deterministic_config() -> Config {
    let mut config = Config::new();
    config
        .consume_fuel(true)
        // Float results must not depend on the host CPU: NaN bit patterns are canonicalised and
        // relaxed SIMD (whose results are implementation-defined) is off.
        .cranelift_nan_canonicalization(true)
        .wasm_relaxed_simd(false)
        .relaxed_simd_deterministic(true)
        // One well-defined address space per task. (Threads and shared memory are not even
        // compiled in: wasmtime's `threads` feature is off.)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        // Exception handling, whose exception objects live in a per-store GC heap; the GC
        // proposal itself stays off (ARCHITECTURE.md, "Exceptions").
        .wasm_exceptions(true)
        .wasm_gc(false)
        .collector(wasmtime::Collector::DeferredReferenceCounting)
        .operator_cost(fuel_costs())
        .max_wasm_stack(limits::MAX_WASM_STACK_BYTES)
        .async_stack_size(limits::MAX_WASM_STACK_BYTES + 2 * 1024 * 1024)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

/// What each operator costs in fuel, so that a second of CPU burns about the same fuel whatever
/// the code does (ARCHITECTURE.md, "Fuel"). wasmtime's default charges 1 per operator: moving a
/// local, which usually compiles to nothing, costs as much as a float division, and measured
/// guests burnt from 3.4 G (float code) to 22 G (hashing) fuel per second. Here locals and
/// constants are free, float arithmetic, memory access and calls cost more, divisions most: the
/// same guests burn 4 to 12 G per second (BENCHMARKS.md, "Fuel"). Part of the engine's
/// configuration, so of the runtime fingerprint: peers with other costs are never compared.
fn fuel_costs() -> wasmtime::OperatorCost {
    let mut cost = wasmtime::OperatorCost::new();
    cost.LocalGet = 0;
    cost.LocalSet = 0;
    cost.LocalTee = 0;
    // Constants are immediates of the instructions that use them.
    cost.I32Const = 0;
    cost.I64Const = 0;
    cost.F32Const = 0;
    cost.F64Const = 0;
    for float_arithmetic in [
        &mut cost.F32Add,
        &mut cost.F32Sub,
        &mut cost.F32Mul,
        &mut cost.F32Min,
        &mut cost.F32Max,
        &mut cost.F64Add,
        &mut cost.F64Sub,
        &mut cost.F64Mul,
        &mut cost.F64Min,
        &mut cost.F64Max,
    ] {
        *float_arithmetic = 6;
    }
    for float_compare_or_convert in [
        &mut cost.F32Eq,
        &mut cost.F32Ne,
        &mut cost.F32Lt,
        &mut cost.F32Gt,
        &mut cost.F32Le,
        &mut cost.F32Ge,
        &mut cost.F64Eq,
        &mut cost.F64Ne,
        &mut cost.F64Lt,
        &mut cost.F64Gt,
        &mut cost.F64Le,
        &mut cost.F64Ge,
        &mut cost.F32ConvertI32S,
        &mut cost.F32ConvertI32U,
        &mut cost.F32ConvertI64S,
        &mut cost.F32ConvertI64U,
        &mut cost.F64ConvertI32S,
        &mut cost.F64ConvertI32U,
        &mut cost.F64ConvertI64S,
        &mut cost.F64ConvertI64U,
        &mut cost.F32DemoteF64,
        &mut cost.F64PromoteF32,
    ] {
        *float_compare_or_convert = 3;
    }
    for slow in [
        &mut cost.F32Div,
        &mut cost.F32Sqrt,
        &mut cost.F64Div,
        &mut cost.F64Sqrt,
    ] {
        *slow = 20;
    }
    for division in [
        &mut cost.I32DivS,
        &mut cost.I32DivU,
        &mut cost.I32RemS,
        &mut cost.I32RemU,
        &mut cost.I64DivS,
        &mut cost.I64DivU,
        &mut cost.I64RemS,
        &mut cost.I64RemU,
    ] {
        *division = 6;
    }
    for memory_access in [
        &mut cost.I32Load,
        &mut cost.I64Load,
        &mut cost.F32Load,
        &mut cost.F64Load,
        &mut cost.I32Load8S,
        &mut cost.I32Load8U,
        &mut cost.I32Load16S,
        &mut cost.I32Load16U,
        &mut cost.I64Load8S,
        &mut cost.I64Load8U,
        &mut cost.I64Load16S,
        &mut cost.I64Load16U,
        &mut cost.I64Load32S,
        &mut cost.I64Load32U,
        &mut cost.I32Store,
        &mut cost.I64Store,
        &mut cost.F32Store,
        &mut cost.F64Store,
        &mut cost.I32Store8,
        &mut cost.I32Store16,
        &mut cost.I64Store8,
        &mut cost.I64Store16,
        &mut cost.I64Store32,
    ] {
        *memory_access = 3;
    }
    cost.Call = 4;
    cost.CallIndirect = 8;
    cost
}

/// The pooling allocator for `slots` tasks at once (see the sizes in [`limits`]). Sizes are
/// upper bounds per task that the [`TaskLimiter`] stays within, so a task's outcome and fuel
/// are the same as with on-demand allocation: the limiter refuses first.
fn pooling_config(slots: usize) -> PoolingAllocationConfig {
    let slots = u32::try_from(slots).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(slots)
        // Each task's linear memory and its GC heap (exceptions), which takes a memory slot.
        .total_memories(slots.saturating_mul(2))
        .total_gc_heaps(slots)
        .total_tables(slots.saturating_mul(limits::MAX_TABLES as u32))
        .total_stacks(slots)
        .max_memories_per_module(limits::MAX_MEMORIES as u32)
        .max_tables_per_module(limits::MAX_TABLES as u32)
        .max_memory_size(cap_to_usize(limits::MAX_MEMORY_BYTES))
        .table_elements(limits::MAX_TABLE_ELEMENTS)
        .max_core_instance_size(limits::MAX_INSTANCE_STATE_BYTES)
        .linear_memory_keep_resident(memory_keep_resident_bytes())
        .table_keep_resident(limits::POOL_TABLE_KEEP_RESIDENT_BYTES)
        .async_stack_keep_resident(limits::POOL_STACK_KEEP_RESIDENT_BYTES)
        // Linux ≥ 6.7: find the pages a task dirtied and zero only those, so a task whose
        // working set fits the keep-resident budget needs no `madvise` (no TLB shootdown across
        // cores) and its successor no page faults. Elsewhere the first bytes are zeroed instead.
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

/// How much of a released linear memory is zeroed in place: more when the kernel can tell which
/// pages were dirtied (see [`limits::POOL_MEMORY_KEEP_RESIDENT_BYTES_WITH_SCAN`]).
pub fn memory_keep_resident_bytes() -> usize {
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        limits::POOL_MEMORY_KEEP_RESIDENT_BYTES_WITH_SCAN
    } else {
        limits::POOL_MEMORY_KEEP_RESIDENT_BYTES_WITHOUT_SCAN
    }
}

/// 32 hex characters of BLAKE3 over wasmtime's compatibility hash: names the engine build and
/// settings a compiled artifact belongs to.
fn engine_hash(engine: &Engine) -> String {
    let mut hasher = Blake3Hasher(blake3::Hasher::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    hasher.0.finalize().to_hex()[..32].to_owned()
}

struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only the full BLAKE3 output is used")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// `sandbox-v<N>/<arch>-<os>/<16 hex>`: the hex is BLAKE3 over wasmtime's compatibility hash (its
/// version and every compilation setting) and this sandbox's own settings.
fn fingerprint(engine: &Engine) -> String {
    let mut hasher = Blake3Hasher(blake3::Hasher::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    hasher.write(&SANDBOX_VERSION.to_le_bytes());
    hasher.write(&(limits::MAX_WASM_STACK_BYTES as u64).to_le_bytes());
    hasher.write(&guest_env::FIXED_WALL_CLOCK_UNIX_S.to_le_bytes());
    hasher.write(ARGV0.as_bytes());
    let digest = hasher.0.finalize();
    format!(
        "sandbox-v{SANDBOX_VERSION}/{}-{}/{}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        &digest.to_hex()[..16]
    )
}

/// Copies an input file's contents (following a symbolic link) to `target`, a new inode.
fn copy_input(source: &Path, target: &Path) -> std::io::Result<HostIdentity> {
    std::fs::copy(source, target)?;
    Ok(HostIdentity::of(&std::fs::symlink_metadata(target)?))
}

/// A name that stays directly under `/input`, so that `/input` is flat (admission refuses
/// other names before a task gets here; `peergrid run` takes them from file names).
fn is_one_component(name: &str) -> bool {
    !(name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']))
}

fn cap_to_usize(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// The error and its causes on one line.
pub fn error_chain(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Caps a task's memories together (its linear memory and the GC heap its exceptions live in)
/// and its tables; remembers that it refused, so the outcome can say so.
struct TaskLimiter {
    memory_max_bytes: usize,
    /// Bytes of every memory of the store, as their growths were allowed.
    memory_used_bytes: usize,
    hit: bool,
}

/// The error `memory.grow` raises past the limit (it ends the task).
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {0} bytes reached")]
struct MemoryLimitExceeded(usize);

impl ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Every memory of the store counts: a task's exceptions must not buy it a second
        // memory cap (ARCHITECTURE.md, "Exceptions").
        let used = self
            .memory_used_bytes
            .saturating_sub(current)
            .saturating_add(desired);
        if used > self.memory_max_bytes {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryLimitExceeded(
                self.memory_max_bytes,
            )));
        }
        self.memory_used_bytes = used;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > limits::MAX_TABLE_ELEMENTS {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryLimitExceeded(
                self.memory_max_bytes,
            )));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        limits::MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        limits::MAX_TABLES
    }

    fn memories(&self) -> usize {
        limits::MAX_MEMORIES
    }
}

/// Compiled modules by hash, least recently used dropped first past
/// [`limits::MODULE_CACHE_ENTRIES`].
#[derive(Default)]
struct ModuleCache {
    entries: HashMap<ContentHash, (CompiledModule, u64)>,
    clock: u64,
}

impl ModuleCache {
    fn get(&mut self, hash: &ContentHash) -> Option<CompiledModule> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(hash).map(|(module, used)| {
            *used = clock;
            module.clone()
        })
    }

    fn insert(&mut self, hash: ContentHash, module: CompiledModule) {
        self.clock += 1;
        if self.entries.len() >= limits::MODULE_CACHE_ENTRIES && !self.entries.contains_key(&hash) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(hash, _)| *hash);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(hash, (module, self.clock));
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The threads guest code runs on: a tokio runtime of its own, so CPU-bound guests never starve
/// the caller's runtime, and sleeping host calls and timeouts still work.
struct Executor {
    runtime: Option<tokio::runtime::Runtime>,
    /// Tells this executor's threads from any other's (there is one per sandbox).
    id: usize,
}

static NEXT_EXECUTOR_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The id of the executor this thread belongs to; 0 outside every executor.
    static CURRENT_EXECUTOR: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Executor {
    fn new(threads: usize) -> Self {
        let id = NEXT_EXECUTOR_ID.fetch_add(1, Ordering::Relaxed);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("peergrid-sandbox")
            .on_thread_start(move || CURRENT_EXECUTOR.set(id))
            .enable_all()
            .build()
            .expect("a tokio runtime can always be built with valid options");
        Self {
            runtime: Some(runtime),
            id,
        }
    }

    /// Whether the calling thread is one of this executor's (its blocking-pool threads count
    /// too: nothing may block on a guest from `spawn_blocking`).
    fn is_current(&self) -> bool {
        CURRENT_EXECUTOR.get() == self.id
    }

    fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .spawn(future)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime: let it wind down on
        // its own threads instead.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_outcome_text_is_cut_the_same_way_everywhere_and_a_short_one_kept() {
        let max = peergrid_proto::MAX_RECEIPT_TEXT_BYTES;
        let short = Outcome::InvalidModule("bad magic".into());
        assert_eq!(short.clone().capped(), short);
        let exact = "é".repeat(max / 2);
        assert_eq!(
            Outcome::InvalidModule(exact.clone()).capped(),
            Outcome::InvalidModule(exact)
        );
        let long = format!("host: {}", "é".repeat(11 * 1024 * 1024));
        let Outcome::Trapped(TrapKind::Other(cut)) =
            Outcome::Trapped(TrapKind::Other(long.clone())).capped()
        else {
            panic!("still a host trap");
        };
        assert!(cut.len() <= max && cut.len() > max - 8, "{}", cut.len());
        assert!(cut.ends_with('…') && long.starts_with(cut.trim_end_matches('…')));
        assert_eq!(
            Outcome::Trapped(TrapKind::Other(long)).capped(),
            Outcome::Trapped(TrapKind::Other(cut))
        );
    }
}

/// Locks `mutex`, taking the value of a poisoned one as it is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
