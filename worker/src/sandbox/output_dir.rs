//! `/output`: the writable directory a task with outputs gets, bounded while the guest runs and
//! listed, hashed, when it ends (`peergrid.proto`, "Output files"; ARCHITECTURE.md, "Output
//! files").
//!
//! wasmtime-wasi writes straight to a host directory and knows no quota, so the calls that can
//! add bytes or files there are shadowed in the `Linker`, as `input_view` shadows the metadata
//! calls: each runs wasmtime-wasi's own implementation, and then, for a task with outputs, the
//! directory is summed again (it is flat, and holds at most `output_max_files` entries before
//! the sum notices). Passing a cap ends the task with `OutputLimit` at that call, so the disk a
//! guest can fill is bounded by the cap plus one call's bytes (at most its linear memory). Sizes
//! are what a stat reports, so a sparse file counts whole and a rewrite counts once: the same
//! sums on every host, so the same outcome.
//!
//! `/output` is flat: `path_create_directory`, `path_symlink` and `path_link` answer NOTSUP for
//! a task with outputs, so the directory holds regular files only and the listing needs no walk.

use std::io;
use std::path::{Path, PathBuf};

use peergrid_proto::ContentHash;
use wasmtime::{Caller, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1 as p1;

use super::TaskState;
use super::input_view::{self, HostIdentity};

/// Where the output directory appears in the guest.
pub const OUTPUT_DIR: &str = "/output";

const MODULE: &str = "wasi_snapshot_preview1";
/// WASI preview 1's `errno::notsup`.
const ERRNO_NOTSUP: i32 = 58;

/// A file a task left under `/output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    pub name: String,
    pub size: u64,
    pub hash: ContentHash,
}

/// The files a task left under `/output`, in byte order of names, still in the task's scratch
/// directory (deleted when this is dropped, unless moved out first).
#[derive(Debug)]
pub struct Outputs {
    pub files: Vec<OutputFile>,
    dir: Option<tempfile::TempDir>,
}

impl Outputs {
    /// No output files.
    pub fn none() -> Self {
        Self {
            files: Vec::new(),
            dir: None,
        }
    }

    /// Where `file`, one of [`Self::files`], is on this host.
    pub fn path_of(&self, file: &OutputFile) -> PathBuf {
        self.dir
            .as_ref()
            .expect("only outputs with files are listed")
            .path()
            .join(&file.name)
    }

    /// The outputs digest the receipt signs.
    pub fn digest(&self) -> ContentHash {
        peergrid_proto::outputs_digest(
            self.files
                .iter()
                .map(|file| (file.name.as_str(), file.size, &file.hash)),
        )
    }
}

/// The running task's `/output`: where it is on the host and how full it may get.
#[derive(Debug)]
pub(super) struct OutputState {
    host: PathBuf,
    /// The directory's identity, as wasmtime-wasi reports it in place of an inode.
    pub(super) root: HostIdentity,
    max_bytes: u64,
    max_files: u32,
    /// A cap was passed: the task ends with `OutputLimit`.
    pub(super) over: bool,
    /// The guest moved a descriptor onto a standard stream's number (`fd_renumber`): writes to
    /// descriptors 1 and 2 may reach `/output` now, so they are summed too.
    renumbered: bool,
}

impl OutputState {
    pub(super) fn new(host: &Path, max_bytes: u64, max_files: u32) -> io::Result<Self> {
        Ok(Self {
            host: host.to_owned(),
            root: HostIdentity::of(&std::fs::metadata(host)?),
            max_bytes,
            max_files,
            over: false,
            renumbered: false,
        })
    }

    /// Sums the directory again; true (and stays so) once a cap is passed.
    fn check(&mut self) -> bool {
        if !self.over {
            self.over = match usage(&self.host, self.max_files) {
                Ok((files, bytes)) => files > self.max_files || bytes > self.max_bytes,
                // The directory could not be read: nothing can be vouched for.
                Err(_) => true,
            };
        }
        self.over
    }

    /// The names in `/output`, in byte order.
    pub(super) fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.host)? {
            names.push(entry_name(&entry?)?);
        }
        names.sort_unstable();
        Ok(names)
    }
}

/// An entry's name, which WASI made from a string: anything else is an error.
fn entry_name(entry: &std::fs::DirEntry) -> io::Result<String> {
    entry.file_name().into_string().map_err(|name| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("output file name {name:?} is not UTF-8"),
        )
    })
}

/// (files, bytes) in `dir`, stopping once the count passes `max_files`.
fn usage(dir: &Path, max_files: u32) -> io::Result<(u32, u64)> {
    let (mut files, mut bytes) = (0u32, 0u64);
    for entry in std::fs::read_dir(dir)? {
        files += 1;
        if files > max_files {
            break;
        }
        bytes = bytes.saturating_add(entry?.metadata()?.len());
    }
    Ok((files, bytes))
}

/// Lists and hashes what a task left in `dir`, its `/output`, in byte order of names. Only
/// regular files can be there (see the module docs); anything else is an error.
pub(super) fn collect(dir: tempfile::TempDir) -> io::Result<Outputs> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.path())? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        let name = entry_name(&entry)?;
        if !peergrid_proto::is_file_name(&name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("output file name {name:?} is not allowed (no '\\\\' in a name)"),
            ));
        }
        if !metadata.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/output/{name} is not a regular file"),
            ));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(entry.path())?)?;
        files.push(OutputFile {
            name,
            size: metadata.len(),
            hash: ContentHash::from_blake3(hasher.finalize()),
        });
    }
    files.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(Outputs {
        files,
        dir: Some(dir),
    })
}

/// Replaces the calls that can add to `/output` in `linker` (which must already hold them) by
/// wrappers that run wasmtime-wasi's own and then check the caps, and refuses directories and
/// links for a task with outputs.
pub(super) fn shadow_output_calls(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, TaskState>, (fd, iovs, len, written): (i32, i32, i32, i32)| {
            Box::new(async move {
                let (mut memory, state) = input_view::memory_and_state(&mut caller)?;
                let errno =
                    p1::fd_write(&mut state.wasi, &mut memory, fd, iovs, len, written).await?;
                after_write(state, fd, errno)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_pwrite",
        |mut caller: Caller<'_, TaskState>,
         (fd, iovs, len, offset, written): (i32, i32, i32, i64, i32)| {
            Box::new(async move {
                let (mut memory, state) = input_view::memory_and_state(&mut caller)?;
                let errno =
                    p1::fd_pwrite(&mut state.wasi, &mut memory, fd, iovs, len, offset, written)
                        .await?;
                after_write(state, fd, errno)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_filestat_set_size",
        |mut caller: Caller<'_, TaskState>, (fd, size): (i32, i64)| {
            Box::new(async move {
                let (mut memory, state) = input_view::memory_and_state(&mut caller)?;
                let errno =
                    p1::fd_filestat_set_size(&mut state.wasi, &mut memory, fd, size).await?;
                after_write(state, fd, errno)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "path_open",
        |mut caller: Caller<'_, TaskState>,
         (fd, dirflags, path, path_len, oflags, base, inheriting, fdflags, opened): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i64,
            i64,
            i32,
            i32,
        )| {
            Box::new(async move {
                let (mut memory, state) = input_view::memory_and_state(&mut caller)?;
                let errno = p1::path_open(
                    &mut state.wasi,
                    &mut memory,
                    fd,
                    dirflags,
                    path,
                    path_len,
                    oflags,
                    base,
                    inheriting,
                    fdflags,
                    opened,
                )
                .await?;
                // Any descriptor: the open may have made (or truncated) a file in /output.
                after_write(state, i32::MAX, errno)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_renumber",
        |mut caller: Caller<'_, TaskState>, (from, to): (i32, i32)| {
            Box::new(async move {
                let (mut memory, state) = input_view::memory_and_state(&mut caller)?;
                let errno = p1::fd_renumber(&mut state.wasi, &mut memory, from, to).await?;
                if let Some(output) = state.output.as_mut() {
                    output.renumbered = true;
                }
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "path_create_directory",
        |mut caller: Caller<'_, TaskState>, (fd, path, path_len): (i32, i32, i32)| {
            Box::new(async move {
                let (mut memory, state) = input_view::memory_and_state(&mut caller)?;
                if state.output.is_some() {
                    return Ok(ERRNO_NOTSUP);
                }
                p1::path_create_directory(&mut state.wasi, &mut memory, fd, path, path_len).await
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "path_symlink",
        |mut caller: Caller<'_, TaskState>,
         (old, old_len, fd, new, new_len): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let (mut memory, state) = input_view::memory_and_state(&mut caller)?;
                if state.output.is_some() {
                    return Ok(ERRNO_NOTSUP);
                }
                p1::path_symlink(&mut state.wasi, &mut memory, old, old_len, fd, new, new_len).await
            })
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "path_link",
        |mut caller: Caller<'_, TaskState>,
         (old_fd, flags, old, old_len, new_fd, new, new_len): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
        )| {
            Box::new(async move {
                let (mut memory, state) = input_view::memory_and_state(&mut caller)?;
                if state.output.is_some() {
                    return Ok(ERRNO_NOTSUP);
                }
                p1::path_link(
                    &mut state.wasi,
                    &mut memory,
                    old_fd,
                    flags,
                    old,
                    old_len,
                    new_fd,
                    new,
                    new_len,
                )
                .await
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// After a call on `fd` that answered `errno`: for a task with outputs, sums `/output` again,
/// and ends the task when a cap is passed.
fn after_write(state: &mut TaskState, fd: i32, errno: i32) -> wasmtime::Result<i32> {
    let Some(output) = state.output.as_mut() else {
        return Ok(errno);
    };
    let standard_stream = (0..=2).contains(&fd) && !output.renumbered;
    if !standard_stream && output.check() {
        wasmtime::bail!("the task passed its /output cap");
    }
    Ok(errno)
}
