//! WebAssembly exception handling (issue 15, item 3): on in the sandbox, deterministic. A module
//! that throws and catches its own exception exits with the value it carried, the same fuel every
//! time; one that lets an exception escape `_start` ends trapped, the same way every time; and
//! one that throws in a loop forever runs out of fuel like any other loop.

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
}

/// A WASI command that imports `proc_exit`, declares one exception tag `(i32)`, and runs `body`.
fn module(body: Body) -> Vec<u8> {
    use wasm_encoder::{
        BlockType, Catch, CodeSection, EntityType, ExportKind, ExportSection, Function,
        FunctionSection, ImportSection, Instruction, MemorySection, MemoryType, Module, TagKind,
        TagSection, TagType, TypeSection, ValType,
    };
    let mut types = TypeSection::new();
    types.ty().function([], []); // 0: _start
    types.ty().function([ValType::I32], []); // 1: proc_exit, and the tag
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
    let mut start = Function::new([]);
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
    }
    start.instruction(&Instruction::End);
    let mut code = CodeSection::new();
    code.function(&start);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&funcs)
        .section(&memories)
        .section(&tags)
        .section(&exports)
        .section(&code);
    module.finish()
}

fn run(body: Body) -> Execution {
    let (sandbox, _scratch) = common::sandbox(1);
    let spec = TaskSpec {
        limits: Limits {
            fuel: 50_000_000,
            ..Limits::default()
        },
        ..Default::default()
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sandbox.run_module(Bytes::from(module(body)), spec))
}

#[test]
fn a_caught_exception_delivers_its_payload_with_the_same_fuel_every_time() {
    let first = run(Body::CatchAndExit);
    assert_eq!(first.outcome, Outcome::Exited(42), "{first:?}");
    let second = run(Body::CatchAndExit);
    assert_eq!(second.outcome, first.outcome);
    assert_eq!(second.fuel_used, first.fuel_used);
}

#[test]
fn an_exception_escaping_start_ends_trapped_the_same_way_every_time() {
    let first = run(Body::Uncaught);
    assert!(
        matches!(first.outcome, Outcome::Trapped(_)),
        "{:?}",
        first.outcome
    );
    let second = run(Body::Uncaught);
    assert_eq!(second.outcome, first.outcome);
    assert_eq!(second.fuel_used, first.fuel_used);
}

#[test]
fn throwing_forever_runs_out_of_fuel() {
    let execution = run(Body::ThrowForever);
    assert_eq!(execution.outcome, Outcome::OutOfFuel, "{execution:?}");
    assert_eq!(execution.fuel_used, 50_000_000);
}
