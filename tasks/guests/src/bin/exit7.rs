//! `exit7` (hostile): prints `exiting with 7` and a newline, then exits with code 7 through
//! WASI `proc_exit`.
//!
//! Args: none.
//! Expected sandbox outcome: a normal completion with exit code 7 (not a trap).

use std::io::Write;

fn main() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "exiting with 7");
    let _ = out.flush();
    std::process::exit(7);
}
