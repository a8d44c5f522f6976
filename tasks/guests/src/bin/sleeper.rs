//! `sleeper` (hostile): sleeps forever, an hour at a time, using no CPU (and so no fuel).
//!
//! Args: none. Output: none.
//! Expected sandbox outcome: timed out by the wall-clock backstop.

use std::time::Duration;

fn main() {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
