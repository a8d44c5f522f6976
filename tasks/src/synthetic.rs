//! Modules made here rather than compiled from `guests/`: large WASI commands of any size, for
//! the benchmarks of compiling and of `peergrid run`'s module cache.

/// A WASI command of about `functions` × 560 bytes: `_start` calls each function once; each
/// does integer arithmetic on its argument (distinct constants, so nothing is shared).
pub fn big_module(functions: u32) -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction,
        MemorySection, MemoryType, Module, TypeSection, ValType,
    };
    let mut types = TypeSection::new();
    types.ty().function([], []);
    types.ty().function([ValType::I32], [ValType::I32]);
    let mut funcs = FunctionSection::new();
    funcs.function(0);
    for _ in 0..functions {
        funcs.function(1);
    }
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    exports.export("memory", ExportKind::Memory, 0);
    let mut code = CodeSection::new();
    let mut start = Function::new([]);
    for index in 0..functions {
        start.instruction(&Instruction::I32Const(index as i32));
        start.instruction(&Instruction::Call(index + 1));
        start.instruction(&Instruction::Drop);
    }
    start.instruction(&Instruction::End);
    code.function(&start);
    for index in 0..functions {
        let mut body = Function::new([(1, ValType::I32)]);
        for step in 0..24u32 {
            let constant = (index.wrapping_mul(2_654_435_761) ^ step.wrapping_mul(40_503)) as i32;
            body.instruction(&Instruction::LocalGet(0));
            body.instruction(&Instruction::I32Const(constant));
            body.instruction(&Instruction::I32Mul);
            body.instruction(&Instruction::I32Const(constant >> 3));
            body.instruction(&Instruction::I32Xor);
            body.instruction(&Instruction::LocalTee(1));
            body.instruction(&Instruction::LocalGet(0));
            body.instruction(&Instruction::I32Add);
            body.instruction(&Instruction::LocalSet(0));
        }
        body.instruction(&Instruction::LocalGet(0));
        body.instruction(&Instruction::LocalGet(1));
        body.instruction(&Instruction::I32Add);
        body.instruction(&Instruction::End);
        code.function(&body);
    }
    let mut module = Module::new();
    module
        .section(&types)
        .section(&funcs)
        .section(&memories)
        .section(&exports)
        .section(&code);
    module.finish()
}
