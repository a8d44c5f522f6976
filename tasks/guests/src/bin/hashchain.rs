//! `hashchain`: iterates BLAKE3 over its own output.
//!
//! Args: `[n] [seed]`, defaults 100_000 and `peergrid`. h0 = blake3(seed bytes),
//! h(i+1) = blake3(h(i)) over the 32 raw bytes of h(i).
//! Output: one line of JSON, `{"n":N,"hash":"<lowercase hex of h(N)>"}`.
//! Bad arguments: a message on stderr and exit code 2.

use std::os::wasi::ffi::OsStrExt;

fn usage(msg: &str) -> ! {
    eprintln!("hashchain: {msg}\nusage: hashchain [n] [seed]   (n an unsigned 64-bit integer)");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let n: u64 = match args.next() {
        None => 100_000,
        Some(a) => a
            .to_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| usage(&format!("bad n: {a:?}"))),
    };
    let seed = args.next().unwrap_or_else(|| "peergrid".into());
    if args.next().is_some() {
        usage("too many arguments");
    }

    let mut h = blake3::hash(seed.as_bytes());
    for _ in 0..n {
        h = blake3::hash(h.as_bytes());
    }
    let hex: String = h.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    println!("{{\"n\":{n},\"hash\":\"{hex}\"}}");
}
