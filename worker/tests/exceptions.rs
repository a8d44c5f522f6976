//! WebAssembly exception handling (issue 15, item 3): on, with exception objects in a GC heap
//! that counts against the task's memory limit (ARCHITECTURE.md, "Exceptions"). Hand-made
//! modules: a throw caught (exit 42), a throw uncaught (a trap), a throw in an endless loop (out
//! of fuel), and caught exceptions kept alive in a table so the GC heap must grow (the memory
//! limit). Each gives the same outcome and fuel on every run.

use std::borrow::Cow;

use bytes::Bytes;
use peergrid_worker::sandbox::{Execution, Limits, Outcome, TaskSpec};

mod common;

/// What `_start` does with the tag (which carries an i32).
enum Body {
    /// Throws 42 inside a `try_table` that catches it, and exits with the payload.
    CatchAndExit,
    /// Throws 42 with nothing to catch it.
    Uncaught,
    /// Throws and catches in a loop that never ends.
    ThrowForever,
    /// Throws, catches the exception as an `exnref` and keeps it in a table, for ever: every
    /// exception object stays alive, so the GC heap grows until a limit stops it.
    Hoard,
}

/// A WASI command that imports `proc_exit`, declares one exception tag `(i32)`, and runs `body`.
fn module(body: Body) -> Vec<u8> {
    use wasm_encoder::{
        BlockType, Catch, CodeSection, EntityType, ExportKind, ExportSection, Function,
        FunctionSection, ImportSection, Instruction, MemorySection, MemoryType, Module, RefType,
        TableSection, TableType, TagKind, TagSection, TagType, TypeSection, ValType,
    };
    let mut types = TypeSection::new();
    types.ty().function([], []); // 0: _start
    types.ty().function([ValType::I32], []); // 1: proc_exit, and the tag
    types.ty().function([], [ValType::I32, ValType::EXNREF]); // 2: a caught exception
    let mut imports = ImportSection::new();
    imports.import(
        "wasi_snapshot_preview1",
        "proc_exit",
        EntityType::Function(1),
    );
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut tags = TagSection::new();
    tags.tag(TagType {
        kind: TagKind::Exception,
        func_type_idx: 1,
    });
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 1);
    exports.export("memory", ExportKind::Memory, 0);
    let catch_into_outer = [Catch::One { tag: 0, label: 0 }];
    let mut tables = TableSection::new();
    tables.table(TableType {
        element_type: RefType::EXNREF,
        table64: false,
        minimum: 0,
        maximum: None,
        shared: false,
    });
    let mut start = Function::new([(1, ValType::EXNREF)]);
    match body {
        Body::CatchAndExit => {
            start
                .instruction(&Instruction::Block(BlockType::Result(ValType::I32)))
                .instruction(&Instruction::TryTable(
                    BlockType::Empty,
                    Cow::Borrowed(&catch_into_outer),
                ))
                .instruction(&Instruction::I32Const(42))
                .instruction(&Instruction::Throw(0))
                .instruction(&Instruction::End)
                .instruction(&Instruction::I32Const(7))
                .instruction(&Instruction::End)
                .instruction(&Instruction::Call(0));
        }
        Body::Uncaught => {
            start
                .instruction(&Instruction::I32Const(42))
                .instruction(&Instruction::Throw(0));
        }
        Body::ThrowForever => {
            start
                .instruction(&Instruction::Loop(BlockType::Empty))
                .instruction(&Instruction::Block(BlockType::Result(ValType::I32)))
                .instruction(&Instruction::TryTable(
                    BlockType::Empty,
                    Cow::Borrowed(&catch_into_outer),
                ))
                .instruction(&Instruction::I32Const(1))
                .instruction(&Instruction::Throw(0))
                .instruction(&Instruction::End)
                .instruction(&Instruction::I32Const(0))
                .instruction(&Instruction::End)
                .instruction(&Instruction::Drop)
                .instruction(&Instruction::Br(0))
                .instruction(&Instruction::End);
        }
        Body::Hoard => {
            let catch_ref = [Catch::OneRef { tag: 0, label: 0 }];
            start
                .instruction(&Instruction::Loop(BlockType::Empty))
                .instruction(&Instruction::Block(BlockType::FunctionType(2)))
                .instruction(&Instruction::TryTable(
                    BlockType::Empty,
                    Cow::Borrowed(&catch_ref),
                ))
                .instruction(&Instruction::I32Const(1))
                .instruction(&Instruction::Throw(0))
                .instruction(&Instruction::End)
                .instruction(&Instruction::Unreachable)
                .instruction(&Instruction::End)
                // [payload, exnref]: keep the exception in a new table element.
                .instruction(&Instruction::LocalSet(0))
                .instruction(&Instruction::Drop)
                .instruction(&Instruction::LocalGet(0))
                .instruction(&Instruction::I32Const(1))
                .instruction(&Instruction::TableGrow(0))
                .instruction(&Instruction::Drop)
                .instruction(&Instruction::Br(0))
                .instruction(&Instruction::End);
        }
    }
    start.instruction(&Instruction::End);
    let mut code = CodeSection::new();
    code.function(&start);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&funcs)
        .section(&tables)
        .section(&memories)
        .section(&tags)
        .section(&exports)
        .section(&code);
    module.finish()
}

fn run(body: Body, limits: Limits) -> Execution {
    let (sandbox, _scratch) = common::sandbox(1);
    let spec = TaskSpec {
        limits,
        ..Default::default()
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sandbox.run_module(Bytes::from(module(body)), spec))
}

fn fuel(fuel: u64) -> Limits {
    Limits {
        fuel,
        ..Limits::default()
    }
}

/// Runs `body` three times; every run must end the same way with the same fuel.
fn run_thrice(body: impl Fn() -> Body, limits: Limits) -> Execution {
    let first = run(body(), limits.clone());
    for _ in 0..2 {
        let again = run(body(), limits.clone());
        assert_eq!(again.outcome, first.outcome);
        assert_eq!(again.fuel_used, first.fuel_used);
    }
    first
}

#[test]
fn a_caught_exception_carries_its_payload_and_the_same_fuel_every_run() {
    let caught = run_thrice(|| Body::CatchAndExit, fuel(50_000_000));
    assert_eq!(caught.outcome, Outcome::Exited(42));
    assert!(caught.fuel_used > 0);
}

#[test]
fn an_uncaught_exception_is_a_trap_with_the_same_text_every_run() {
    let uncaught = run_thrice(|| Body::Uncaught, fuel(50_000_000));
    match &uncaught.outcome {
        Outcome::Trapped(kind) => {
            assert!(
                format!("{kind:?}").contains("thrown Wasm exception"),
                "{kind:?}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_throw_in_an_endless_loop_runs_out_of_fuel_exactly() {
    let forever = run_thrice(|| Body::ThrowForever, fuel(5_000_000));
    assert_eq!(forever.outcome, Outcome::OutOfFuel);
    assert_eq!(forever.fuel_used, 5_000_000);
}

/// Exceptions kept alive fill the GC heap, which shares the task's memory limit with its linear
/// memory: the task ends at the memory limit, the same way and with the same fuel every run,
/// long before the table's own element limit.
#[test]
fn exceptions_kept_alive_end_at_the_task_memory_limit() {
    let limits = Limits {
        fuel: 10_000_000_000,
        memory_bytes: 2 * 1024 * 1024,
        ..Limits::default()
    };
    let hoard = run_thrice(|| Body::Hoard, limits);
    assert_eq!(hoard.outcome, Outcome::MemoryLimit, "{hoard:?}");
    // With a larger limit the same module gets further: the bound is the memory limit.
    let more = run(
        Body::Hoard,
        Limits {
            fuel: 10_000_000_000,
            memory_bytes: 4 * 1024 * 1024,
            ..Limits::default()
        },
    );
    assert_eq!(more.outcome, Outcome::MemoryLimit);
    assert!(
        more.fuel_used > hoard.fuel_used,
        "{} vs {}",
        more.fuel_used,
        hoard.fuel_used
    );
}
