//! The pooling allocator has a fixed number of slots: tasks beyond it wait for one instead of
//! failing, and every task still gets the result and fuel it gets alone.

use bytes::Bytes;
use peergrid_worker::limits;
use peergrid_worker::sandbox::{Outcome, TaskSpec};

mod common;

#[test]
fn more_tasks_than_pool_slots_all_finish_with_equal_results() {
    let (sandbox, _scratch) = common::sandbox(1);
    let tasks = 3 * limits::pool_slots(1);
    let wasm = Bytes::from(peergrid_tasks::wasm_bytes("pi"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let executions = runtime.block_on(async {
        let runs = (0..tasks).map(|_| {
            let sandbox = sandbox.clone();
            let wasm = wasm.clone();
            tokio::spawn(async move {
                let spec = TaskSpec {
                    args: vec!["200000".into()],
                    random_seed: [3; 32],
                    ..Default::default()
                };
                sandbox.run_module(wasm, spec).await
            })
        });
        let mut executions = Vec::new();
        for run in runs.collect::<Vec<_>>() {
            executions.push(run.await.unwrap());
        }
        executions
    });
    let first = &executions[0];
    assert_eq!(first.outcome, Outcome::Exited(0));
    for execution in &executions {
        assert_eq!(execution.outcome, first.outcome);
        assert_eq!(execution.stdout, first.stdout);
        assert_eq!(execution.fuel_used, first.fuel_used);
    }
}

/// A reused pool slot starts zeroed, whichever way it was reset: each task first checks that
/// every byte of its 1.5 MiB of memory is zero (it traps otherwise), then writes to it. One
/// module fills all of it, more than the keep-resident budget, so its reset zeroes part in place
/// and gives the rest back to the kernel; the other writes one word per 64 KiB page (24 host
/// pages), which fits the 1 MiB budget of a kernel with `PAGEMAP_SCAN`, so there its reset is
/// in place only. Part of the
/// memory is grown, beyond the initial size. The two run alternately, each many times over its
/// slot (a 1-thread sandbox has 7 pool slots and a module keeps to its own).
#[test]
fn a_reused_slot_never_shows_the_previous_tasks_memory() {
    let (sandbox, _scratch) = common::sandbox(1);
    let pages = 24;
    let budget = peergrid_worker::sandbox::memory_keep_resident_bytes() as u32;
    assert!(pages * 65536 > budget);
    let dense = Bytes::from(check_then_fill(pages, 4));
    let sparse = Bytes::from(check_then_fill(pages, 65536));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for run in 0..3 * limits::pool_slots(1) {
        for (name, wasm) in [("dense", &dense), ("sparse", &sparse)] {
            let execution = runtime.block_on(sandbox.run_module(wasm.clone(), TaskSpec::default()));
            assert_eq!(execution.outcome, Outcome::Exited(0), "{name} run {run}");
        }
    }
}

/// `_start`: grow memory from 1 to `pages` pages, trap unless every word is zero, then write a
/// non-zero word every `stride` bytes.
fn check_then_fill(pages: u32, stride: i32) -> Vec<u8> {
    use wasm_encoder::{
        BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction,
        MemArg, MemorySection, MemoryType, Module, TypeSection, ValType,
    };
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: Some(u64::from(pages)),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    exports.export("memory", ExportKind::Memory, 0);
    let word = MemArg {
        offset: 0,
        align: 2,
        memory_index: 0,
    };
    let end = (pages * 65536) as i32;
    // Locals: 0 = address, 1 = OR of every word read. `body` runs with the address on the stack.
    let every = |step: i32, start: &mut Function, body: &[Instruction]| {
        start
            .instruction(&Instruction::I32Const(0))
            .instruction(&Instruction::LocalSet(0))
            .instruction(&Instruction::Loop(BlockType::Empty))
            .instruction(&Instruction::LocalGet(0));
        for instruction in body {
            start.instruction(instruction);
        }
        start
            .instruction(&Instruction::LocalGet(0))
            .instruction(&Instruction::I32Const(step))
            .instruction(&Instruction::I32Add)
            .instruction(&Instruction::LocalTee(0))
            .instruction(&Instruction::I32Const(end))
            .instruction(&Instruction::I32LtU)
            .instruction(&Instruction::BrIf(0))
            .instruction(&Instruction::End);
    };
    let mut start = Function::new([(2, ValType::I32)]);
    start
        .instruction(&Instruction::I32Const(pages as i32 - 1))
        .instruction(&Instruction::MemoryGrow(0))
        .instruction(&Instruction::Drop);
    every(
        4,
        &mut start,
        &[
            Instruction::I32Load(word),
            Instruction::LocalGet(1),
            Instruction::I32Or,
            Instruction::LocalSet(1),
        ],
    );
    start
        .instruction(&Instruction::LocalGet(1))
        .instruction(&Instruction::If(BlockType::Empty))
        .instruction(&Instruction::Unreachable)
        .instruction(&Instruction::End);
    every(
        stride,
        &mut start,
        &[Instruction::I32Const(0x5eed), Instruction::I32Store(word)],
    );
    start.instruction(&Instruction::End);
    let mut code = CodeSection::new();
    code.function(&start);
    let mut module = Module::new();
    module
        .section(&types)
        .section(&funcs)
        .section(&memories)
        .section(&exports)
        .section(&code);
    module.finish()
}
