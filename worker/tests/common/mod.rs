//! Helpers shared by the sandbox's integration tests.

use peergrid_worker::sandbox::{Sandbox, SandboxOptions};

/// A sandbox with `threads` threads and no disk cache, and its scratch directory (keep it alive
/// as long as the sandbox).
pub fn sandbox(threads: usize) -> (Sandbox, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxOptions {
        threads,
        scratch_dir: scratch.path().to_owned(),
        fingerprint_tag: None,
    })
    .unwrap();
    (sandbox, scratch)
}
