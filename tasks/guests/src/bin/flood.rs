//! `flood` (hostile): writes to stdout forever.
//!
//! Args: none.
//! Output: an endless stream of numbered lines. Write errors are ignored: when a write fails
//! it just goes on to the next one, forever.
//! Expected sandbox outcome: output limit.

use std::io::Write;

fn main() {
    let mut out = std::io::stdout().lock();
    let mut i: u64 = 0;
    loop {
        let _ = writeln!(
            out,
            "flood line {i}: the quick brown fox jumps over the lazy dog"
        );
        i = std::hint::black_box(i.wrapping_add(1));
    }
}
