//! `lsinput`: everything a guest can learn about `/input` through WASI's metadata calls, the way
//! `ls -l` and `rg --files` would see it. It prints in the order the host returns, never sorting
//! itself, so the output shows whether listing order, times and inode numbers depend on the host.
//!
//! Args: none.
//! Output, in this order (a stat is `dev=D ino=I type=T nlink=N size=S atim=A mtim=M ctim=C`,
//! times in nanoseconds since the Unix epoch, types as WASI numbers them: 3 directory,
//! 4 regular file, 7 symlink):
//! - `preopen fd N: STAT`: `fd_filestat_get` on the `/input` preopen itself;
//! - `dir /input: STAT`: `fd_filestat_get` on `/input` opened again;
//! - `readdir:` then one `  next=COOKIE ino=I type=T NAME` per raw `fd_readdir` entry (`.` and
//!   `..` included), read through a 64-byte buffer so that resuming at cookies is exercised;
//! - `ls -l:` then one line per `std::fs::read_dir` entry: `  MODE NAME` (`d` or `-`, then `r-`
//!   if read-only, `rw` if not), then `    path: STAT` (`path_filestat_get`), `    fd: STAT`
//!   (`fd_filestat_get` on the opened entry), `    std: len=L accessed=S.N modified=S.N
//!   created=S.N` (std's `Metadata`, seconds and nanoseconds; `error (E)` where unsupported) and,
//!   for files, `    fnv1a=HEX` of the contents;
//! - `files:` then one `  PATH` per file of a recursive walk like `rg --files` (directories
//!   entered, entries in the order read), and `files: COUNT, distinct (dev, ino): yes|no` (what
//!   `find` checks to detect loops).
//!
//! A call that fails prints `error (E)` in place of its result. Exit 0; exit 2 if `/input`
//! cannot be opened.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The preopen the sandbox gives a task with input files: the only one, so the first.
const INPUT_PREOPEN_FD: u32 = 3;
/// Small on purpose: entries straddle the buffer's end and the listing resumes at cookies.
const READDIR_BUFFER_BYTES: usize = 64;
const DIRENT_HEADER_BYTES: usize = 24;

/// `filestat` of WASI preview 1 (64 bytes, the layout of the C struct).
#[repr(C)]
#[derive(Default)]
struct Filestat {
    dev: u64,
    ino: u64,
    filetype: u8,
    nlink: u64,
    size: u64,
    atim: u64,
    mtim: u64,
    ctim: u64,
}

// std exposes neither inode numbers nor link counts on wasm32-wasip1 (`std::os::wasi::fs` is
// unstable), so the calls are made directly.
#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn fd_filestat_get(fd: u32, buf: *mut Filestat) -> i32;
    fn path_filestat_get(
        fd: u32,
        flags: u32,
        path: *const u8,
        path_len: usize,
        buf: *mut Filestat,
    ) -> i32;
    fn fd_readdir(fd: u32, buf: *mut u8, buf_len: usize, cookie: u64, used: *mut usize) -> i32;
}

/// A WASI errno, printed as its number.
struct Errno(i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errno {}", self.0)
    }
}

impl fmt::Display for Filestat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dev={} ino={} type={} nlink={} size={} atim={} mtim={} ctim={}",
            self.dev,
            self.ino,
            self.filetype,
            self.nlink,
            self.size,
            self.atim,
            self.mtim,
            self.ctim
        )
    }
}

fn stat_fd(fd: RawFd) -> Result<Filestat, Errno> {
    let mut stat = Filestat::default();
    // SAFETY: `stat` is a valid, writable `filestat`.
    match unsafe { fd_filestat_get(fd as u32, &mut stat) } {
        0 => Ok(stat),
        errno => Err(Errno(errno)),
    }
}

fn stat_path(dir: RawFd, name: &str) -> Result<Filestat, Errno> {
    let mut stat = Filestat::default();
    // SAFETY: `name` is valid for `name.len()` bytes and `stat` is writable.
    match unsafe { path_filestat_get(dir as u32, 0, name.as_ptr(), name.len(), &mut stat) } {
        0 => Ok(stat),
        errno => Err(Errno(errno)),
    }
}

/// Every raw entry of directory `dir`: (d_next, d_ino, d_type, name).
fn read_dir_raw(dir: RawFd) -> Result<Vec<(u64, u64, u8, String)>, Errno> {
    let mut entries = Vec::new();
    let mut buf = vec![0u8; READDIR_BUFFER_BYTES];
    let mut cookie = 0u64;
    loop {
        let mut used = 0usize;
        // SAFETY: `buf` is writable for its length and `used` is a valid `size`.
        let errno =
            unsafe { fd_readdir(dir as u32, buf.as_mut_ptr(), buf.len(), cookie, &mut used) };
        if errno != 0 {
            return Err(Errno(errno));
        }
        let mut offset = 0;
        let mut whole_entries = 0;
        while offset + DIRENT_HEADER_BYTES <= used {
            let header = &buf[offset..offset + DIRENT_HEADER_BYTES];
            let next = u64::from_le_bytes(header[0..8].try_into().unwrap());
            let ino = u64::from_le_bytes(header[8..16].try_into().unwrap());
            let name_len = u32::from_le_bytes(header[16..20].try_into().unwrap()) as usize;
            let kind = header[20];
            let name_start = offset + DIRENT_HEADER_BYTES;
            if name_start + name_len > used {
                break;
            }
            let name = String::from_utf8_lossy(&buf[name_start..name_start + name_len]);
            entries.push((next, ino, kind, name.into_owned()));
            cookie = next;
            offset = name_start + name_len;
            whole_entries += 1;
        }
        if used < buf.len() {
            return Ok(entries);
        }
        if whole_entries == 0 {
            // One entry longer than the buffer: read it again with room for it.
            buf.resize(buf.len() * 2, 0);
        }
    }
}

fn since_epoch(time: std::io::Result<SystemTime>) -> String {
    match time.map(|time| time.duration_since(UNIX_EPOCH)) {
        Ok(Ok(since)) => format!("{}.{:09}", since.as_secs(), since.subsec_nanos()),
        Ok(Err(before)) => format!("-{:?}", before.duration()),
        Err(error) => format!("error ({error})"),
    }
}

fn fnv1a(path: &Path) -> String {
    let mut data = Vec::new();
    match File::open(path).and_then(|mut file| file.read_to_end(&mut data)) {
        Ok(_) => {
            let hash = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
            format!("{hash:016x}")
        }
        Err(error) => format!("error ({error})"),
    }
}

fn show<T: fmt::Display, E: fmt::Display>(result: Result<T, E>) -> String {
    match result {
        Ok(value) => value.to_string(),
        Err(error) => format!("error ({error})"),
    }
}

fn list_long(out: &mut impl Write, dir: &File) -> std::io::Result<()> {
    writeln!(out, "ls -l:")?;
    let entries = match std::fs::read_dir("/input") {
        Ok(entries) => entries,
        Err(error) => return writeln!(out, "  error ({error})"),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                writeln!(out, "  error ({error})")?;
                continue;
            }
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let metadata = entry.metadata();
        let mode = match &metadata {
            Ok(metadata) => format!(
                "{}{}",
                if metadata.is_dir() { "d" } else { "-" },
                if metadata.permissions().readonly() {
                    "r-"
                } else {
                    "rw"
                }
            ),
            Err(error) => format!("error ({error})"),
        };
        writeln!(out, "  {mode} {name}")?;
        writeln!(out, "    path: {}", show(stat_path(dir.as_raw_fd(), &name)))?;
        let by_fd = File::open(&path)
            .map_err(|error| error.to_string())
            .and_then(|file| stat_fd(file.as_raw_fd()).map_err(|errno| errno.to_string()));
        writeln!(out, "    fd: {}", show(by_fd))?;
        match metadata {
            Ok(metadata) => writeln!(
                out,
                "    std: len={} accessed={} modified={} created={}",
                metadata.len(),
                since_epoch(metadata.accessed()),
                since_epoch(metadata.modified()),
                since_epoch(metadata.created())
            )?,
            Err(error) => writeln!(out, "    std: error ({error})")?,
        }
        if entry.file_type().is_ok_and(|kind| kind.is_file()) {
            writeln!(out, "    fnv1a={}", fnv1a(&path))?;
        }
    }
    Ok(())
}

/// `rg --files`: every file under `path`, directories entered in the order read. Records each
/// entry's (dev, ino) in `seen`, and whether one came twice.
fn walk(
    out: &mut impl Write,
    path: &Path,
    seen: &mut HashSet<(u64, u64)>,
    repeated: &mut bool,
    files: &mut usize,
) -> std::io::Result<()> {
    let dir = match File::open(path) {
        Ok(dir) => dir,
        Err(error) => return writeln!(out, "  {}: error ({error})", path.display()),
    };
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) => return writeln!(out, "  {}: error ({error})", path.display()),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                writeln!(out, "  {}: error ({error})", path.display())?;
                continue;
            }
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        match stat_path(dir.as_raw_fd(), &name) {
            Ok(stat) => *repeated |= !seen.insert((stat.dev, stat.ino)),
            Err(errno) => writeln!(out, "  {}: error ({errno})", entry.path().display())?,
        }
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            walk(out, &entry.path(), seen, repeated, files)?;
        } else {
            writeln!(out, "  {}", entry.path().display())?;
            *files += 1;
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "preopen fd {INPUT_PREOPEN_FD}: {}",
        show(stat_fd(INPUT_PREOPEN_FD as RawFd))
    )?;
    let dir = match File::open("/input") {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("lsinput: cannot open /input: {error}");
            std::process::exit(2);
        }
    };
    writeln!(out, "dir /input: {}", show(stat_fd(dir.as_raw_fd())))?;

    writeln!(out, "readdir:")?;
    match read_dir_raw(dir.as_raw_fd()) {
        Ok(entries) => {
            for (next, ino, kind, name) in entries {
                writeln!(out, "  next={next} ino={ino} type={kind} {name}")?;
            }
        }
        Err(errno) => writeln!(out, "  error ({errno})")?,
    }

    list_long(&mut out, &dir)?;

    writeln!(out, "files:")?;
    let (mut seen, mut repeated, mut files) = (HashSet::new(), false, 0);
    if let Ok(stat) = stat_fd(dir.as_raw_fd()) {
        seen.insert((stat.dev, stat.ino));
    }
    walk(
        &mut out,
        Path::new("/input"),
        &mut seen,
        &mut repeated,
        &mut files,
    )?;
    writeln!(
        out,
        "files: {files}, distinct (dev, ino): {}",
        if repeated { "no" } else { "yes" }
    )?;
    out.flush()
}
