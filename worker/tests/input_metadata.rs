//! `/input` looks the same to a guest whatever file system the worker keeps it on: listing order,
//! inode numbers, link counts and times are the sandbox's, not the host's (ARCHITECTURE.md,
//! "Determinism"). The same task runs once with its scratch directory on a fresh tmpfs and once
//! on the disk that holds the target directory (ext4 here), and must print the same bytes and
//! burn the same fuel.
//!
//! Mounting a tmpfs needs root, as CI runs it; as another user the test fails and says so.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use peergrid_worker::sandbox::input_view::{DEVICE, ROOT_INODE, TIMESTAMP_NS};
use peergrid_worker::sandbox::{
    Execution, InputSpec, Limits, Outcome, Sandbox, SandboxOptions, TaskSpec,
};

/// Files made in this order, which is neither byte order nor its reverse, so that tmpfs
/// (newest first) and ext4 (hash order) each list them differently from the other and from
/// sorted order.
fn creation_order() -> Vec<String> {
    let mut names: Vec<String> = (0..40)
        .map(|i| format!("part-{:02}.txt", (i * 17) % 40))
        .collect();
    for name in [
        "zeta", "Alpha", "_index", "0-first", "b", "B", "éclair", "a.b.c", "~tilde",
    ] {
        names.insert(names.len() / 2, name.to_owned());
    }
    names
}

/// Two input names for one host file: linked, they would share an inode and count 3 links.
const SHARED_SOURCE_NAMES: [&str; 2] = ["twin-2", "twin-1"];
const SHARED_CONTENT: &[u8] = b"one file, two names\n";

/// Every input name with its contents.
fn input_files() -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = creation_order()
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let content = name.repeat(i + 1).into_bytes();
            (name, content)
        })
        .collect();
    for name in SHARED_SOURCE_NAMES {
        files.insert(name.to_owned(), SHARED_CONTENT.to_vec());
    }
    files
}

/// A tmpfs mounted on a fresh temporary directory, unmounted when dropped (also when the test
/// panics).
struct Tmpfs {
    mount_point: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Self {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|line| line.starts_with("Uid:"))?;
                line.split_whitespace().nth(2).map(str::to_owned)
            });
        assert_eq!(
            uid.as_deref(),
            Some("0"),
            "this test mounts a tmpfs to compare it with the disk, which needs root (CI runs it \
             as root); run it as root, e.g. `sudo -E cargo test -p peergrid-worker --test \
             input_metadata`"
        );
        let mount_point = tempfile::tempdir().unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "peergrid-test"])
            .arg(mount_point.path())
            .output()
            .expect("cannot run `mount`");
        assert!(
            output.status.success(),
            "mount -t tmpfs on {} failed: {}",
            mount_point.path().display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Self { mount_point }
    }

    fn path(&self) -> &Path {
        self.mount_point.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.mount_point.path())
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            // Still busy: detach it now, the kernel frees it when the last user goes.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.mount_point.path())
                .status();
        }
    }
}

/// `stat -f`'s name for the file system holding `path`.
fn file_system_type(path: &Path) -> String {
    let output = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .expect("cannot run `stat -f`");
    assert!(output.status.success(), "stat -f {} failed", path.display());
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A directory on the disk (not a tmpfs): under the target directory.
fn disk_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let fs = file_system_type(dir.path());
    assert_ne!(
        fs,
        "tmpfs",
        "{} is on a tmpfs: this test needs the target directory on a disk file system",
        dir.path().display()
    );
    dir
}

/// What one run left behind: the guest's execution and the order the host lists the files in.
struct Run {
    execution: Execution,
    host_order: Vec<String>,
}

/// Creates the input files under `root` in [`creation_order`], and runs `lsinput` on them in a
/// sandbox whose scratch directory (where `/input` is made) is also under `root`.
fn run_lsinput(root: &Path) -> Run {
    let sources = root.join("sources");
    std::fs::create_dir(&sources).unwrap();
    let contents = input_files();
    let mut inputs = Vec::new();
    for name in creation_order() {
        let source = sources.join(&name);
        std::fs::write(&source, &contents[&name]).unwrap();
        inputs.push(InputSpec { name, source });
    }
    let shared = sources.join("shared");
    std::fs::write(&shared, SHARED_CONTENT).unwrap();
    for name in SHARED_SOURCE_NAMES {
        inputs.push(InputSpec {
            name: name.to_owned(),
            source: shared.clone(),
        });
    }
    let host_order = std::fs::read_dir(&sources)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    Run {
        execution: run_guest(root, inputs),
        host_order,
    }
}

/// Runs `lsinput` over `inputs` in a sandbox whose scratch directory is under `root`; it must
/// exit 0.
fn run_guest(root: &Path, inputs: Vec<InputSpec>) -> Execution {
    let sandbox = Sandbox::new(SandboxOptions {
        threads: 1,
        scratch_dir: root.join("scratch"),
        fingerprint_tag: None,
    })
    .unwrap();
    let spec = TaskSpec {
        inputs,
        limits: Limits {
            fuel: 2_000_000_000,
            memory_bytes: 64 * 1024 * 1024,
            timeout: Duration::from_secs(60),
            stdout_max_bytes: 1024 * 1024,
            stderr_max_bytes: 64 * 1024,
            ..Limits::default()
        },
        random_seed: [7; 32],
        ..Default::default()
    };
    let wasm = Bytes::from(peergrid_tasks::wasm_bytes("lsinput"));
    let execution = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sandbox.run_module(wasm, spec));
    assert_eq!(
        execution.outcome,
        Outcome::Exited(0),
        "lsinput under {}: stderr {:?}",
        root.display(),
        String::from_utf8_lossy(&execution.stderr)
    );
    execution
}

/// The lines of `stdout` between the `header` line and the next line that is not indented.
fn section<'a>(stdout: &'a str, header: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .skip_while(|line| *line != header)
        .skip(1)
        .take_while(|line| line.starts_with(' '))
        .collect()
}

/// `key=value` of a stat or dirent line, as a number.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {line:?}"))
}

/// The checksum `lsinput` prints of a file's contents.
fn fnv1a(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn assert_fixed_times(line: &str) {
    for key in ["atim", "mtim", "ctim"] {
        assert_eq!(field(line, key), TIMESTAMP_NS, "{key} in {line:?}");
    }
    assert_eq!(field(line, "dev"), DEVICE, "dev in {line:?}");
}

/// What the guest must see whatever the host: sorted entries, inodes by position, one link per
/// file, the wall clock's instant for every time, a loop-free walk, and real sizes.
fn assert_normalised(stdout: &str) {
    let files = input_files();
    let names: Vec<&String> = files.keys().collect();

    let root = format!(
        "dev={DEVICE} ino={ROOT_INODE} type=3 nlink=2 size=0 atim={TIMESTAMP_NS} mtim={TIMESTAMP_NS} ctim={TIMESTAMP_NS}"
    );
    assert!(
        stdout.contains(&format!("preopen fd 3: {root}\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("dir /input: {root}\n")),
        "{stdout}"
    );

    let readdir = section(stdout, "readdir:");
    let listed: Vec<&str> = readdir
        .iter()
        .map(|line| line.rsplit(' ').next().unwrap())
        .collect();
    let mut expected = vec![".", ".."];
    expected.extend(names.iter().map(|name| name.as_str()));
    assert_eq!(listed, expected, "fd_readdir is not in byte order of names");
    for (i, line) in readdir.iter().enumerate() {
        assert_eq!(field(line, "next"), i as u64 + 1, "cookie of {line:?}");
        let inode = if i < 2 {
            ROOT_INODE
        } else {
            ROOT_INODE + i as u64 - 1
        };
        assert_eq!(field(line, "ino"), inode, "d_ino of {line:?}");
    }

    let long = section(stdout, "ls -l:");
    // `  MODE NAME` lines, each followed by its indented details.
    let std_names: Vec<&str> = long
        .iter()
        .filter(|line| !line.starts_with("    "))
        .map(|line| line.trim_start().split_once(' ').unwrap().1)
        .collect();
    assert_eq!(
        std_names, names,
        "std::fs::read_dir is not in byte order of names"
    );
    let stats: Vec<&str> = long
        .iter()
        .filter_map(|line| {
            line.strip_prefix("    path: ")
                .or(line.strip_prefix("    fd: "))
        })
        .collect();
    assert_eq!(stats.len(), 2 * names.len(), "{stdout}");
    for (i, line) in stats.iter().enumerate() {
        assert_fixed_times(line);
        assert_eq!(field(line, "nlink"), 1, "{line:?}");
        assert_eq!(
            field(line, "ino"),
            ROOT_INODE + 1 + i as u64 / 2,
            "{line:?}"
        );
        let content = &files[names[i / 2]];
        assert_eq!(field(line, "size"), content.len() as u64, "{line:?}");
    }
    let hashes: Vec<&str> = long
        .iter()
        .filter_map(|line| line.strip_prefix("    fnv1a="))
        .collect();
    let expected_hashes: Vec<String> = names.iter().map(|name| fnv1a(&files[*name])).collect();
    assert_eq!(hashes, expected_hashes, "the guest read other contents");
    let when = format!("{}.000000000", TIMESTAMP_NS / 1_000_000_000);
    for line in long.iter().filter(|line| line.starts_with("    std: ")) {
        assert!(
            line.contains(&format!("accessed={when} modified={when}")),
            "{line:?}"
        );
    }

    assert!(
        stdout.contains(&format!(
            "files: {}, distinct (dev, ino): yes\n",
            names.len()
        )),
        "{stdout}"
    );
}

#[test]
fn input_listing_and_metadata_are_the_same_on_tmpfs_and_on_disk() {
    let tmpfs = Tmpfs::mount();
    assert_eq!(file_system_type(tmpfs.path()), "tmpfs");
    let disk = disk_dir();

    let on_tmpfs = run_lsinput(tmpfs.path());
    let on_disk = run_lsinput(disk.path());

    assert_ne!(
        on_tmpfs.host_order, on_disk.host_order,
        "the two file systems list the files in the same order: the test proves nothing here"
    );
    let stdout = String::from_utf8(on_tmpfs.execution.stdout.to_vec()).unwrap();
    assert_eq!(
        stdout,
        String::from_utf8_lossy(&on_disk.execution.stdout),
        "the guest saw different /input metadata on tmpfs ({}) and on disk ({})",
        file_system_type(tmpfs.path()),
        file_system_type(disk.path())
    );
    assert_eq!(on_tmpfs.execution.fuel_used, on_disk.execution.fuel_used);
    assert_normalised(&stdout);
}

#[test]
fn an_input_whose_source_is_a_symlink_is_a_regular_file_in_the_guest() {
    // A hard link to a symlink is a symlink: the guest would see a host path, and a file
    // that differs between hosts.
    let disk = disk_dir();
    let data = disk.path().join("data");
    std::fs::write(&data, b"twelve bytes").unwrap();
    let link = disk.path().join("link");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let execution = run_guest(
        disk.path(),
        vec![InputSpec {
            name: "input".to_owned(),
            source: link,
        }],
    );
    let stdout = String::from_utf8(execution.stdout.to_vec()).unwrap();
    let long = section(&stdout, "ls -l:");
    assert_eq!(
        long[0].trim_start().split_once(' ').unwrap().1,
        "input",
        "{stdout}"
    );
    let stat = long[1].strip_prefix("    path: ").expect("a path stat");
    assert_eq!(field(stat, "type"), 4, "not a regular file: {stat}");
    assert_eq!(field(stat, "size"), 12, "{stat}");
    assert_eq!(field(stat, "ino"), ROOT_INODE + 1, "{stat}");
}
