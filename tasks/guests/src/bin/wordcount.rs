//! `wordcount`: `wc` over the task's input files.
//!
//! Args: none. Reads every regular file directly under `/input` (not subdirectories, not
//! symlinks), in byte order of their names.
//! Output: one line per file, `name lines words bytes`, then `total lines words bytes`.
//! Lines are newline bytes; words are maximal runs of bytes that are not ASCII whitespace
//! (space, \t, \n, \x0b, \x0c, \r), as `wc` counts them in the C locale.
//! If `/input` or a file in it cannot be read: a message naming it on stderr and exit code 2.

use std::path::Path;

fn fail(what: &Path, e: std::io::Error) -> ! {
    eprintln!("wordcount: cannot read {}: {e}", what.display());
    std::process::exit(2);
}

fn count(data: &[u8]) -> (u64, u64) {
    let (mut lines, mut words, mut in_word) = (0u64, 0u64, false);
    for &b in data {
        if b == b'\n' {
            lines += 1;
        }
        let space = matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
        if !space && !in_word {
            words += 1;
        }
        in_word = !space;
    }
    (lines, words)
}

fn main() {
    let input = Path::new("/input");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(input).unwrap_or_else(|e| fail(input, e)) {
        let entry = entry.unwrap_or_else(|e| fail(input, e));
        let kind = entry.file_type().unwrap_or_else(|e| fail(&entry.path(), e));
        if kind.is_file() {
            files.push(entry.file_name());
        }
    }
    files.sort();

    let (mut total_lines, mut total_words, mut total_bytes) = (0u64, 0u64, 0u64);
    let mut report = String::new();
    for name in files {
        let path = input.join(&name);
        let data = std::fs::read(&path).unwrap_or_else(|e| fail(&path, e));
        let (lines, words) = count(&data);
        let bytes = data.len() as u64;
        report.push_str(&format!(
            "{} {lines} {words} {bytes}\n",
            name.to_string_lossy()
        ));
        total_lines += lines;
        total_words += words;
        total_bytes += bytes;
    }
    report.push_str(&format!(
        "total {total_lines} {total_words} {total_bytes}\n"
    ));
    print!("{report}");
}
