//! `entropy`: reports every source of nondeterminism a guest can reach, to show the sandbox
//! has pinned them all.
//!
//! Args: none.
//! Output, one `key: value` line each:
//! - `wall_clock_unix_ns:` `SystemTime::now()` in nanoseconds since the Unix epoch
//! - `monotonic_ns:` the `Instant` difference between two consecutive `Instant::now()` calls
//! - `random1:`, `random2:` hex of two successive 32-byte `getrandom::fill` draws (WASI
//!   `random_get`), or `error (<e>)`
//! - `hashmap_order:` the keys 0..16 inserted into a std `HashMap` (whose `RandomState` is
//!   seeded from WASI random), in iteration order, joined by commas
//!
//! Expected sandbox outcome: exit 0 with the same output on every run and every peer.

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn random_hex() -> String {
    let mut buf = [0u8; 32];
    match getrandom::fill(&mut buf) {
        Ok(()) => buf.iter().map(|b| format!("{b:02x}")).collect(),
        Err(e) => format!("error ({e})"),
    }
}

fn main() {
    let wall = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().to_string(),
        Err(e) => format!("-{}", e.duration().as_nanos()),
    };
    println!("wall_clock_unix_ns: {wall}");

    let a = Instant::now();
    let b = Instant::now();
    println!(
        "monotonic_ns: {}",
        b.saturating_duration_since(a).as_nanos()
    );

    println!("random1: {}", random_hex());
    println!("random2: {}", random_hex());

    let map: HashMap<u32, ()> = (0..16).map(|k| (k, ())).collect();
    let order: Vec<String> = map.keys().map(u32::to_string).collect();
    println!("hashmap_order: {}", order.join(","));
}
