//! `hello`: the trivial task, used by benchmarks.
//!
//! Args: none (any are ignored).
//! Output: exactly `hello from peergrid` and a newline on stdout; exit code 0.

fn main() {
    println!("hello from peergrid");
}
