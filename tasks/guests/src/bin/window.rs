//! `window`: one window of a large input file, the way a sweep over a shared dataset reads it.
//!
//! Args: `FILE INDEX LEN`. Reads LEN bytes of `/input/FILE` starting at byte INDEX × LEN (by
//! seeking: never the whole file, so a task's memory stays small however large the input).
//! Output: `FILE INDEX LEN bytes=N fnv1a=HEX`, N being the bytes read (fewer at the file's end).
//! Bad args or an unreadable file: a message on stderr and exit code 2.

use std::io::{Read, Seek, SeekFrom};

fn fail(message: &str) -> ! {
    eprintln!("window: {message}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, index, len] = args.as_slice() else {
        fail("usage: window FILE INDEX LEN");
    };
    let index: u64 = index.parse().unwrap_or_else(|_| fail("INDEX is not a number"));
    let len: u64 = len.parse().unwrap_or_else(|_| fail("LEN is not a number"));
    let path = format!("/input/{file}");
    let mut input = std::fs::File::open(&path).unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    input
        .seek(SeekFrom::Start(index.saturating_mul(len)))
        .unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut read = 0u64;
    let mut buffer = [0u8; 64 * 1024];
    let mut window = input.take(len);
    loop {
        let n = window
            .read(&mut buffer)
            .unwrap_or_else(|e| fail(&format!("{path}: {e}")));
        if n == 0 {
            break;
        }
        for &byte in &buffer[..n] {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        read += n as u64;
    }
    println!("{file} {index} {len} bytes={read} fnv1a={hash:016x}");
}
