//! `outbomb`: pushes at the bounds of `/output` (hostile).
//!
//! Args: `MODE [N]`.
//! - `bytes N`: writes N bytes of 'x' to `/output/big`, 64 KiB at a time; expected: output
//!   limit when N is above the task's `output_max_bytes`, else exit 0.
//! - `files N`: creates N empty files `/output/f<i>`; expected: output limit when N is above
//!   `output_max_files`.
//! - `sparse`: seeks 1 TiB into `/output/sparse` and writes one byte; expected: output limit.
//! - `links`: tries to make a directory, a symbolic link and a hard link under `/output`, and
//!   prints each error (all refused: `/output` is flat); exit 0.
//! - `list`: writes `/output/b` (3 bytes) and `/output/a` (1 byte), renames `b` to `c`, then
//!   prints what WASI says of `/output`: each entry in listing order with its type and size,
//!   and the size and times of `/output` and `c` (fixed, on every host); exit 0.

use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;

// std has no stable symlink call on wasm32-wasip1: WASI's own.
#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn path_symlink(old: *const u8, old_len: usize, fd: u32, new: *const u8, new_len: usize)
    -> i32;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = || -> u64 { args.get(1).and_then(|n| n.parse().ok()).unwrap_or(0) };
    match args.first().map(String::as_str) {
        Some("bytes") => {
            let mut file = std::fs::File::create("/output/big").expect("create /output/big");
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = number();
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                file.write_all(&chunk[..n]).expect("write");
                left -= n as u64;
            }
        }
        Some("files") => {
            for i in 0..number() {
                std::fs::File::create(format!("/output/f{i}")).expect("create");
            }
        }
        Some("sparse") => {
            let mut file = std::fs::File::create("/output/sparse").expect("create");
            file.seek(SeekFrom::Start(1 << 40)).expect("seek");
            file.write_all(b"!").expect("write");
        }
        Some("links") => {
            std::fs::write("/output/target", b"t").expect("write");
            println!("mkdir: {:?}", std::fs::create_dir("/output/dir").map_err(|e| e.kind()));
            let dir = std::fs::File::open("/output").expect("open /output");
            let (old, new) = ("target", "link");
            // SAFETY: both strings outlive the call, which only reads them.
            let errno = unsafe {
                path_symlink(old.as_ptr(), old.len(), dir.as_raw_fd() as u32, new.as_ptr(), new.len())
            };
            println!("symlink: errno {errno}");
            println!(
                "hard link: {:?}",
                std::fs::hard_link("/output/target", "/output/hard").map_err(|e| e.kind())
            );
        }
        Some("list") => {
            std::fs::write("/output/b", b"bbb").expect("write b");
            std::fs::write("/output/a", b"a").expect("write a");
            std::fs::rename("/output/b", "/output/c").expect("rename");
            for entry in std::fs::read_dir("/output").expect("read /output") {
                let entry = entry.expect("entry");
                let meta = entry.metadata().expect("metadata");
                println!(
                    "{} file={} size={}",
                    entry.file_name().to_string_lossy(),
                    meta.is_file(),
                    meta.len()
                );
            }
            for path in ["/output", "/output/c"] {
                let meta = std::fs::metadata(path).expect("metadata");
                println!(
                    "{path} dir={} size={} modified={:?} accessed={:?}",
                    meta.is_dir(),
                    meta.len(),
                    meta.modified().ok(),
                    meta.accessed().ok()
                );
            }
        }
        _ => {
            eprintln!("outbomb: MODE is bytes N, files N, sparse, links or list");
            std::process::exit(2);
        }
    }
}
