//! `membomb` (hostile): allocates memory until something stops it.
//!
//! Args: none. Output: none.
//! Allocates 1 MiB `Vec<u8>`s one after another, writes a byte to every 4 KiB page of each
//! (so the memory is really touched, not just reserved) and keeps them all forever. When the
//! sandbox refuses to grow linear memory the allocator fails and the guest aborts.
//! Expected sandbox outcome: memory limit.

use std::hint::black_box;

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

fn main() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    let mut n: usize = 0;
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for (i, page) in chunk.chunks_mut(PAGE).enumerate() {
            page[0] = (n ^ i) as u8 | 1;
            page[PAGE - 1] = (n + i) as u8 | 1;
        }
        hoard.push(black_box(chunk));
        n = black_box(n + 1);
    }
}
