//! `spin` (hostile): burns CPU forever in a loop that never returns, yields or does I/O.
//!
//! Args: none. Output: none.
//! Expected sandbox outcome: out of fuel.

use std::hint::black_box;

fn main() {
    let mut x: u64 = black_box(1);
    loop {
        // xorshift64: never reaches zero, and black_box keeps every step observable.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = black_box(x);
    }
}
