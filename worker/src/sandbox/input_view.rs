//! What the guest sees of `/input`'s metadata: the same on every host. wasmtime-wasi answers
//! `stat` and `readdir` from the host's file system, which differs between honest workers (real
//! times and inode numbers, link counts raised by other tasks sharing a blob, directory order
//! and sizes that depend on ext4, tmpfs or btrfs). The three WASI preview 1 calls that carry
//! such metadata are shadowed in the `Linker` by wrappers that run wasmtime-wasi's own
//! implementation (so paths, rights and errors stay exactly its) and then replace what came from
//! the host (ARCHITECTURE.md, "Determinism"):
//!
//! - `fd_filestat_get`, `path_filestat_get`: device [`DEVICE`], inode [`ROOT_INODE`] for
//!   `/input` and `ROOT_INODE + 1 + i` for the `i`-th file in byte order of names (unique, so a
//!   walk that checks (dev, ino) for loops, like `find`, works), link count 1 for a file and 2
//!   for `/input` (no subdirectories), every time [`TIMESTAMP_NS`] (the wall clock's instant),
//!   `/input`'s size 0. A file's type and size are its own.
//! - `fd_readdir`: `.`, `..`, then the files in byte order of names; cookie `n` resumes after
//!   the `n`-th entry; `d_ino` as above (`..` is `/input`'s own, as wasmtime-wasi does for the
//!   directory above a preopen).
//!
//! `/input` is flat (a name is one path component, checked by admission and again when the
//! directory is made), so every directory a guest can open there is `/input` itself.
//!
//! The view recognises a file by the identity wasmtime-wasi reports as its inode: its own hash
//! of the host's (device, inode), recomputed here when the directory is made; each input gets
//! an inode of its own on the host for that (see `Sandbox::prepare_inputs`). A file the view
//! does not recognise (which would mean that hash changed in a new wasmtime-wasi) still gets
//! fixed times, device and link count, with inode 0; `worker/tests/input_metadata.rs` catches it.
//! Tasks without input files run none of this: nothing is made, and the wrappers see only
//! standard streams, whose metadata (all zero) owes nothing to the host.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::p1::types::{Filestat, Filetype};
use wasmtime_wasi::p1::wasi_snapshot_preview1 as p1;
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1 as _;
use wiggle::{GuestMemory, GuestPtr};

use super::TaskState;
use super::guest_env::FIXED_WALL_CLOCK_UNIX_S;

/// The device every `/input` entry reports.
pub const DEVICE: u64 = 1;
/// `/input`'s inode; files follow it in byte order of their names.
pub const ROOT_INODE: u64 = 1;
/// `/output`'s inode (its files report 0: see `output_dir`); above every `/input` file's.
pub const OUTPUT_INODE: u64 = 1_000_000;
/// Access, modification and status change time of every `/input` entry, in nanoseconds since
/// the Unix epoch: the instant the guest's wall clock is stopped at.
pub const TIMESTAMP_NS: u64 = FIXED_WALL_CLOCK_UNIX_S * 1_000_000_000;

const MODULE: &str = "wasi_snapshot_preview1";
/// Size of a preview 1 `dirent` header, before the name.
const DIRENT_HEADER_BYTES: usize = 24;

/// A file's identity on the host, as wasmtime-wasi reports it in place of an inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct HostIdentity(u64);

impl HostIdentity {
    /// wasmtime-wasi 48's `MetadataHashValue::lower`: std's `DefaultHasher` (fixed keys) over
    /// the (device, inode) pair.
    pub(super) fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let mut hasher = DefaultHasher::new();
        (metadata.dev(), metadata.ino()).hash(&mut hasher);
        Self(hasher.finish())
    }
}

/// What the guest is shown of one task's `/input`, made with the directory.
#[derive(Debug, Clone)]
pub(super) struct InputView {
    /// File names in byte order; the `i`-th has inode `ROOT_INODE + 1 + i`.
    names: Vec<String>,
    inodes: HashMap<HostIdentity, u64>,
}

impl InputView {
    /// The view of a directory whose own identity is `root` and whose files are `files`
    /// (name, identity), each identity distinct.
    pub(super) fn new(root: Option<HostIdentity>, mut files: Vec<(String, HostIdentity)>) -> Self {
        files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut inodes = HashMap::with_capacity(files.len() + 2);
        if let Some(root) = root {
            inodes.insert(root, ROOT_INODE);
        }
        for (inode, (_, identity)) in (ROOT_INODE + 1..).zip(&files) {
            let previous = inodes.insert(*identity, inode);
            assert!(previous.is_none(), "two /input entries share a host inode");
        }
        Self {
            names: files.into_iter().map(|(name, _)| name).collect(),
            inodes,
        }
    }

    /// The view with `/output` too, whose identity is `root`.
    pub(super) fn with_output(mut self, root: HostIdentity) -> Self {
        self.inodes.insert(root, OUTPUT_INODE);
        self
    }

    /// `stat` as wasmtime-wasi reported it, with every host detail replaced.
    fn normalise(&self, stat: Filestat) -> Filestat {
        if is_standard_stream(&stat) {
            return stat;
        }
        let ino = self
            .inodes
            .get(&HostIdentity(stat.ino))
            .copied()
            .unwrap_or(0);
        let directory = matches!(stat.filetype, Filetype::Directory);
        Filestat {
            dev: DEVICE,
            ino,
            filetype: stat.filetype,
            nlink: if directory { 2 } else { 1 },
            size: if directory { 0 } else { stat.size },
            atim: TIMESTAMP_NS,
            mtim: TIMESTAMP_NS,
            ctim: TIMESTAMP_NS,
        }
    }

    /// The bytes `fd_readdir` fills a buffer of `capacity` bytes with, starting after the
    /// `cookie`-th entry: the same layout and truncation as wasmtime-wasi, the entries sorted.
    fn directory_bytes(&self, cookie: u64, capacity: usize) -> Vec<u8> {
        let files = (ROOT_INODE + 1..)
            .zip(&self.names)
            .map(|(inode, name)| (name.as_str(), inode));
        listing_bytes(ROOT_INODE, files, cookie, capacity)
    }
}

/// `fd_readdir`'s bytes for a directory whose inode is `inode` and whose regular files are
/// `files` (name, inode) in byte order of names: `.`, `..`, then the files; starting after the
/// `cookie`-th entry, cut to `capacity` bytes (wasmtime-wasi's layout and truncation).
fn listing_bytes<'a>(
    inode: u64,
    files: impl Iterator<Item = (&'a str, u64)>,
    cookie: u64,
    capacity: usize,
) -> Vec<u8> {
    let dot = [
        (".", inode, Filetype::Directory),
        ("..", inode, Filetype::Directory),
    ];
    let files = files.map(|(name, inode)| (name, inode, Filetype::RegularFile));
    let mut bytes = Vec::new();
    let entries = dot.into_iter().chain(files).zip(1u64..);
    for ((name, inode, filetype), next) in
        entries.skip(usize::try_from(cookie).unwrap_or(usize::MAX))
    {
        if bytes.len() >= capacity {
            break;
        }
        let mut header = [0u8; DIRENT_HEADER_BYTES];
        header[0..8].copy_from_slice(&next.to_le_bytes());
        header[8..16].copy_from_slice(&inode.to_le_bytes());
        header[16..20].copy_from_slice(&(name.len() as u32).to_le_bytes());
        header[20] = filetype as u8;
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(name.as_bytes());
    }
    bytes.truncate(capacity);
    bytes
}

/// wasmtime-wasi reports stdin, stdout and stderr with every number zero: nothing of the host.
fn is_standard_stream(stat: &Filestat) -> bool {
    stat.dev == 0 && stat.ino == 0 && stat.nlink == 0 && stat.size == 0
}

/// Replaces wasmtime-wasi's `fd_filestat_get`, `path_filestat_get` and `fd_readdir` in
/// `linker` (which must already hold them) by the wrappers of this module.
pub(super) fn shadow_metadata_calls(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        MODULE,
        "fd_filestat_get",
        |caller: Caller<'_, TaskState>, (fd, stat): (i32, i32)| {
            Box::new(fd_filestat_get(caller, fd, stat))
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "path_filestat_get",
        |caller: Caller<'_, TaskState>,
         (fd, flags, path, path_len, stat): (i32, i32, i32, i32, i32)| {
            Box::new(path_filestat_get(caller, fd, flags, path, path_len, stat))
        },
    )?;
    linker.func_wrap_async(
        MODULE,
        "fd_readdir",
        |caller: Caller<'_, TaskState>,
         (fd, buf, buf_len, cookie, used): (i32, i32, i32, i64, i32)| {
            Box::new(fd_readdir(caller, fd, buf, buf_len, cookie, used))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// What wasmtime-wasi's generated glue does before each call: the guest's memory, and the
/// task's state told the store's host-call fuel.
pub(super) fn memory_and_state<'a>(
    caller: &'a mut Caller<'_, TaskState>,
) -> wasmtime::Result<(GuestMemory<'a>, &'a mut TaskState)> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        // Shared memories cannot exist: the engine has no threads.
        wasmtime::bail!("missing required memory export");
    };
    let fuel = caller.as_context_mut().hostcall_fuel();
    let (bytes, state) = memory.data_and_store_mut(caller);
    state.wasi.set_hostcall_fuel(fuel);
    Ok((GuestMemory::Unshared(bytes), state))
}

/// Normalises the `filestat` the real call wrote at `stat`, if it succeeded.
fn normalise_at(
    memory: &mut GuestMemory<'_>,
    view: Option<&InputView>,
    errno: i32,
    stat: i32,
) -> wasmtime::Result<()> {
    let Some(view) = view.filter(|_| errno == 0) else {
        return Ok(());
    };
    let at = GuestPtr::<Filestat>::new(stat as u32);
    let real = memory.read(at)?;
    memory.write(at, view.normalise(real))?;
    Ok(())
}

async fn fd_filestat_get(
    mut caller: Caller<'_, TaskState>,
    fd: i32,
    stat: i32,
) -> wasmtime::Result<i32> {
    let (mut memory, state) = memory_and_state(&mut caller)?;
    let errno = p1::fd_filestat_get(&mut state.wasi, &mut memory, fd, stat).await?;
    normalise_at(&mut memory, state.input_view.as_ref(), errno, stat)?;
    Ok(errno)
}

async fn path_filestat_get(
    mut caller: Caller<'_, TaskState>,
    fd: i32,
    flags: i32,
    path: i32,
    path_len: i32,
    stat: i32,
) -> wasmtime::Result<i32> {
    let (mut memory, state) = memory_and_state(&mut caller)?;
    let errno = p1::path_filestat_get(
        &mut state.wasi,
        &mut memory,
        fd,
        flags,
        path,
        path_len,
        stat,
    )
    .await?;
    normalise_at(&mut memory, state.input_view.as_ref(), errno, stat)?;
    Ok(errno)
}

async fn fd_readdir(
    mut caller: Caller<'_, TaskState>,
    fd: i32,
    buf: i32,
    buf_len: i32,
    cookie: i64,
    used: i32,
) -> wasmtime::Result<i32> {
    let (mut memory, state) = memory_and_state(&mut caller)?;
    let Some(view) = state.input_view.as_ref() else {
        return p1::fd_readdir(&mut state.wasi, &mut memory, fd, buf, buf_len, cookie, used).await;
    };
    // The real call with an empty buffer checks the descriptor (a directory, readable) and
    // gives its errors, writing nothing but `used`; the entries are the view's.
    let errno = p1::fd_readdir(&mut state.wasi, &mut memory, fd, buf, 0, cookie, used).await?;
    if errno != 0 {
        return Ok(errno);
    }
    let capacity = buf_len as u32 as usize;
    // A task with outputs has two directories: tell `/output` by its identity.
    let output_names = match state.output.as_ref() {
        Some(output) => {
            let identity = state
                .wasi
                .fd_filestat_get(&mut memory, (fd as u32).into())
                .await
                .map(|stat| HostIdentity(stat.ino));
            match identity {
                Ok(identity) if identity == output.root => Some(output.names()?),
                _ => None,
            }
        }
        None => None,
    };
    let bytes = match output_names {
        Some(names) => listing_bytes(
            OUTPUT_INODE,
            names.iter().map(|name| (name.as_str(), 0)),
            cookie as u64,
            capacity,
        ),
        None => view.directory_bytes(cookie as u64, capacity),
    };
    let len = bytes.len() as u32;
    memory.copy_from_slice(&bytes, GuestPtr::<[u8]>::new((buf as u32, len)))?;
    memory.write(GuestPtr::<u32>::new(used as u32), len)?;
    Ok(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> InputView {
        InputView::new(
            Some(HostIdentity(900)),
            vec![
                ("b".to_owned(), HostIdentity(7)),
                ("a".to_owned(), HostIdentity(8)),
                ("B".to_owned(), HostIdentity(9)),
            ],
        )
    }

    fn host_stat(ino: u64, filetype: Filetype) -> Filestat {
        Filestat {
            dev: 1,
            ino,
            filetype,
            nlink: 3,
            size: 4096,
            atim: 1,
            mtim: 2,
            ctim: 3,
        }
    }

    #[test]
    fn files_get_inodes_in_byte_order_of_names_and_fixed_metadata() {
        let view = view();
        // Byte order: "B" < "a" < "b".
        for (identity, inode) in [(9, 2), (8, 3), (7, 4)] {
            let stat = view.normalise(host_stat(identity, Filetype::RegularFile));
            assert_eq!(
                (stat.dev, stat.ino, stat.nlink, stat.size),
                (DEVICE, inode, 1, 4096)
            );
            assert_eq!(
                (stat.atim, stat.mtim, stat.ctim),
                (TIMESTAMP_NS, TIMESTAMP_NS, TIMESTAMP_NS)
            );
        }
        let root = view.normalise(host_stat(900, Filetype::Directory));
        assert_eq!((root.ino, root.nlink, root.size), (ROOT_INODE, 2, 0));
        assert_eq!(TIMESTAMP_NS, 946_684_800_000_000_000);
    }

    #[test]
    fn an_unknown_file_keeps_nothing_of_the_host_but_its_type_and_size() {
        let stat = view().normalise(host_stat(12345, Filetype::RegularFile));
        assert_eq!(
            (stat.dev, stat.ino, stat.nlink, stat.size),
            (DEVICE, 0, 1, 4096)
        );
        assert_eq!(stat.mtim, TIMESTAMP_NS);
    }

    #[test]
    fn standard_streams_are_left_as_wasmtime_reports_them() {
        let stream = Filestat {
            dev: 0,
            ino: 0,
            filetype: Filetype::Unknown,
            nlink: 0,
            size: 0,
            atim: 0,
            mtim: 0,
            ctim: 0,
        };
        let stat = view().normalise(stream);
        assert_eq!((stat.dev, stat.ino, stat.mtim), (0, 0, 0));
    }

    /// (d_next, d_ino, d_type, name) of every whole entry in `bytes`.
    fn parse(bytes: &[u8]) -> Vec<(u64, u64, u8, String)> {
        let mut entries = Vec::new();
        let mut rest = bytes;
        while rest.len() >= DIRENT_HEADER_BYTES {
            let next = u64::from_le_bytes(rest[0..8].try_into().unwrap());
            let ino = u64::from_le_bytes(rest[8..16].try_into().unwrap());
            let len = u32::from_le_bytes(rest[16..20].try_into().unwrap()) as usize;
            if rest.len() < DIRENT_HEADER_BYTES + len {
                break;
            }
            let name = String::from_utf8(rest[24..24 + len].to_vec()).unwrap();
            entries.push((next, ino, rest[20], name));
            rest = &rest[DIRENT_HEADER_BYTES + len..];
        }
        entries
    }

    #[test]
    fn the_directory_lists_dot_entries_then_files_in_byte_order() {
        let entries = parse(&view().directory_bytes(0, 4096));
        let dir = Filetype::Directory as u8;
        let file = Filetype::RegularFile as u8;
        assert_eq!(
            entries,
            vec![
                (1, 1, dir, ".".to_owned()),
                (2, 1, dir, "..".to_owned()),
                (3, 2, file, "B".to_owned()),
                (4, 3, file, "a".to_owned()),
                (5, 4, file, "b".to_owned()),
            ]
        );
    }

    #[test]
    fn a_cookie_resumes_after_its_entry_and_a_small_buffer_is_filled_exactly() {
        let view = view();
        let all = view.directory_bytes(0, 4096);
        assert_eq!(all.len(), 5 * DIRENT_HEADER_BYTES + 1 + 2 + 3);
        // A buffer that ends inside an entry is filled to its last byte (the caller sees it
        // full and asks again from the last whole entry's cookie).
        let cut = view.directory_bytes(0, 30);
        assert_eq!(cut, all[..30]);
        let resumed = parse(&view.directory_bytes(3, 4096));
        assert_eq!(
            resumed.iter().map(|e| e.3.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(view.directory_bytes(5, 4096).is_empty());
        assert!(view.directory_bytes(u64::MAX, 4096).is_empty());
        assert!(view.directory_bytes(0, 0).is_empty());
    }
}
