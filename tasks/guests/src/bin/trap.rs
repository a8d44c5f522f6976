//! `trap` (hostile): prints `about to trap` and a newline on stdout, then executes the wasm
//! `unreachable` instruction.
//!
//! Args: none.
//! Expected sandbox outcome: a trap (unreachable), with the line already in stdout.

use std::io::Write;

fn main() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "about to trap");
    let _ = out.flush();
    core::arch::wasm32::unreachable()
}
