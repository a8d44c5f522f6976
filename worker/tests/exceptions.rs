//! WebAssembly exception handling (issue 15, item 3). Not on yet: wasmtime 48 keeps exception
//! objects in a GC heap, which needs its `gc` feature and a bound of its own beside the task's
//! memory limit (ARCHITECTURE.md, "Exceptions"). Until then a module that uses exceptions is
//! refused the same way everywhere, which these modules check; they are also what the feature
//! must then run: catch and exit 42, an uncaught throw, a throw in an endless loop.

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

/// Exception handling is off in this sandbox (ARCHITECTURE.md, "Exceptions"): a module that uses
/// it, however it uses it, is an invalid module on every worker, with the same reason, and never
/// starts. When it is turned on, these modules are what must then exit 42, trap, and run out of
/// fuel.
#[test]
fn a_module_using_exceptions_is_refused_the_same_way_on_every_run() {
    for body in [Body::CatchAndExit, Body::Uncaught, Body::ThrowForever] {
        let first = run(body);
        match &first.outcome {
            Outcome::InvalidModule(reason) => {
                assert!(
                    reason.contains("exceptions proposal not enabled"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(first.fuel_used, 0);
    }
    let (a, b) = (run(Body::CatchAndExit), run(Body::CatchAndExit));
    assert_eq!(a.outcome, b.outcome);
}
