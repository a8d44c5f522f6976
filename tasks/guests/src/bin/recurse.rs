//! `recurse` (hostile): recurses without bound.
//!
//! Args: none. Output: none.
//! Each frame keeps its values in WebAssembly locals (nothing on the shadow stack in linear
//! memory) and uses the result of the call after it returns, so the recursion cannot become a
//! loop and it exhausts the engine's own call stack.
//! Expected sandbox outcome: trapped, `stack_overflow`.

use std::hint::black_box;

#[inline(never)]
fn dive(depth: u64, salt: u64) -> u64 {
    // An exit the optimiser cannot rule out (it is never taken), so the function is not
    // provably non-returning and the work after the call below must be kept.
    if black_box(depth) == u64::MAX {
        return salt;
    }
    let below = dive(black_box(depth + 1), black_box(salt.rotate_left(7) ^ depth));
    below.wrapping_mul(31).wrapping_add(salt ^ depth)
}

fn main() {
    let result = dive(0, 0x9e37_79b9_7f4a_7c15);
    println!("{}", black_box(result));
}
