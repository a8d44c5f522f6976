//! The files a job file names (its module, `stdin_file`s and input `files`): checked before
//! anything is read or any worker contacted, then read bounded. A job file may come from
//! someone else, and must not make `submit` send the user's secret key or `/etc/passwd` to
//! strangers, nor read `/dev/zero` until memory runs out.
//!
//! Every named path must resolve, once canonicalised (so `..`, absolute paths and symbolic links
//! are all followed to where they lead), inside the job file's directory, unless the user passed
//! `--allow-paths-outside-job-dir` ([`PathPolicy::Anywhere`]); it must be a regular file (not a
//! directory, device, FIFO or socket); and it must fit its cap: `MAX_INPUT_FILE_BYTES` for the
//! module and input files, the worker's `MAX_STDIN_BYTES` for a stdin file, and the distinct
//! files together `MAX_JOB_INPUT_BYTES` (`crate::limits`). All of that from metadata alone.
//! Reading then opens the checked file, makes sure it is still the same one (device and inode),
//! and reads at most one byte past its checked size, so a file swapped or grown in between is
//! refused rather than sent.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use peergrid_worker::limits::MAX_STDIN_BYTES;

use crate::job::{FileRole, JobSpec, NamedPath, job_dir, render_invalid};
use crate::limits::{MAX_INPUT_FILE_BYTES, MAX_JOB_INPUT_BYTES, MAX_MODULE_FILE_BYTES};

/// The `submit` flag that lifts the job-directory rule; refusals name it.
pub const ALLOW_OUTSIDE_FLAG: &str = "--allow-paths-outside-job-dir";

/// Where the files a job file names may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathPolicy {
    /// Inside the job file's directory, once `..` and symbolic links are resolved (the default).
    JobDirOnly,
    /// Anywhere the user can read (`--allow-paths-outside-job-dir`).
    Anywhere,
}

/// The files of one job, checked; [`CheckedInputs::read`] reads them.
#[derive(Debug)]
pub struct CheckedInputs {
    job_file: PathBuf,
    /// By the path as the spec has it (joined to the job directory, not canonical).
    files: HashMap<PathBuf, CheckedFile>,
    sending: Sending,
}

/// One file as checked: what it must still be when it is read.
#[derive(Debug, Clone)]
struct CheckedFile {
    /// Its first mention, named in errors.
    named: NamedPath,
    canonical: PathBuf,
    size: u64,
    device: u64,
    inode: u64,
}

/// What a job sends to workers, each distinct file (or stdin text) counted once. `submit`
/// prints it before anything is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sending {
    pub modules: u64,
    pub input_files: u64,
    pub stdin_files: u64,
    /// Distinct `stdin` texts written in the job file itself.
    pub stdin_texts: u64,
    /// Bytes of all of the above.
    pub bytes: u64,
}

/// Where a refused file was named: the job file, and the mention in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    pub job_file: PathBuf,
    pub named: NamedPath,
}

/// Why a job's files were refused. Each renders as one line naming the job file, line and
/// field that named the file, the path as written and where it leads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The job file's own directory cannot be resolved; the I/O error is the source.
    #[error("cannot resolve the directory of job file {}", one_line(.job_file))]
    JobDir {
        job_file: PathBuf,
        source: std::io::Error,
    },
    /// A named file cannot be resolved, opened or read (missing, unreadable); the I/O error is
    /// the source.
    #[error("{}", located(.at, &format!("cannot read {:?} ({})", .at.named.given, .path.display())))]
    Read {
        at: Box<Mention>,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A named file resolves outside the job file's directory, and the user did not allow it.
    #[error("{}", located(.at, &format!(
        "{:?} resolves to {}, outside the job directory {}; move it into that directory, or \
         pass {ALLOW_OUTSIDE_FLAG} to send it anyway",
        .at.named.given, .resolved.display(), .job_dir.display()
    )))]
    OutsideJobDir {
        at: Box<Mention>,
        resolved: PathBuf,
        job_dir: PathBuf,
    },
    /// A named file is a directory, device, FIFO or socket (`kind` says which).
    #[error("{}", located(.at, &format!(
        "{:?} ({}) is {}, not a regular file; only regular files can be sent",
        .at.named.given, .resolved.display(), .kind
    )))]
    NotRegular {
        at: Box<Mention>,
        resolved: PathBuf,
        kind: &'static str,
    },
    /// A named file is larger than the cap of its role.
    #[error("{}", located(.at, &format!(
        "{:?} is {} bytes, above the cap of {} bytes ({}) per {}",
        .at.named.given, .size, .cap, human_bytes(*.cap), cap_reason(.at.named.role)
    )))]
    TooLarge {
        at: Box<Mention>,
        size: u64,
        cap: u64,
    },
    /// With this file, the job's distinct files add up to more than `MAX_JOB_INPUT_BYTES`.
    #[error("{}", located(.at, &format!(
        "{:?} brings the job's files to {} bytes ({}), above the cap of {} bytes ({}) \
         per job (MAX_JOB_INPUT_BYTES); split the job into several",
        .at.named.given, .total, human_bytes(*.total), .cap, human_bytes(*.cap)
    )))]
    JobTooLarge {
        at: Box<Mention>,
        total: u64,
        cap: u64,
    },
    /// The file is no longer what was checked: replaced, or its size changed.
    #[error("{}", located(.at, &format!(
        "{:?} ({}) changed after it was checked: {}; submit again",
        .at.named.given, .resolved.display(), .detail
    )))]
    Changed {
        at: Box<Mention>,
        resolved: PathBuf,
        detail: String,
    },
}

impl CheckedInputs {
    /// Checks every file `spec` names, in job-file order, against the rules in the module docs.
    /// `job_file` is the file `spec` was parsed from. Reads no file's contents.
    ///
    /// # Errors
    /// The first file that breaks a rule, or [`InputError::JobDir`].
    pub fn check(spec: &JobSpec, job_file: &Path, policy: PathPolicy) -> Result<Self, InputError> {
        let job_dir =
            std::fs::canonicalize(job_dir(job_file)).map_err(|source| InputError::JobDir {
                job_file: job_file.to_owned(),
                source,
            })?;
        let mut files: HashMap<PathBuf, CheckedFile> = HashMap::new();
        let mut counted: HashSet<PathBuf> = HashSet::new();
        let mut by_role: HashSet<(FileRole, PathBuf)> = HashSet::new();
        let mut total = 0u64;
        for named in &spec.paths {
            let checked = match files.get(&named.path) {
                Some(checked) => checked.clone(),
                None => {
                    let checked = examine(job_file, &job_dir, named, policy)?;
                    files.insert(named.path.clone(), checked.clone());
                    checked
                }
            };
            // Per mention: one file may be both a stdin file and an input file.
            let cap = cap_of(named.role);
            if checked.size > cap {
                return Err(InputError::TooLarge {
                    at: mention(job_file, named),
                    size: checked.size,
                    cap,
                });
            }
            by_role.insert((named.role, checked.canonical.clone()));
            if counted.insert(checked.canonical.clone()) {
                total += checked.size;
                if total > MAX_JOB_INPUT_BYTES {
                    return Err(InputError::JobTooLarge {
                        at: mention(job_file, named),
                        total,
                        cap: MAX_JOB_INPUT_BYTES,
                    });
                }
            }
        }
        let count = |role| by_role.iter().filter(|(r, _)| *r == role).count() as u64;
        let (texts, text_bytes) = spec.tasks.stdin_texts();
        let sending = Sending {
            modules: count(FileRole::Module),
            input_files: count(FileRole::InputFile),
            stdin_files: count(FileRole::StdinFile),
            stdin_texts: texts,
            bytes: total + text_bytes,
        };
        Ok(Self {
            job_file: job_file.to_owned(),
            files,
            sending,
        })
    }

    /// The job file the checked files were named in.
    pub fn job_file(&self) -> &Path {
        &self.job_file
    }

    /// What the job will send.
    pub fn sending(&self) -> Sending {
        self.sending
    }

    /// Reads the checked file the spec calls `path`, if it is still what was checked.
    ///
    /// # Panics
    /// If `path` is not a path of the spec that was checked (a bug in the caller).
    ///
    /// # Errors
    /// [`InputError::Changed`] if the file was replaced or its size changed since the check,
    /// [`InputError::Read`] if it cannot be opened or read.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, InputError> {
        let mut bytes = Vec::new();
        self.stream(path, |chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(bytes)
    }

    /// Passes the checked file the spec calls `path` to `each`, 1 MiB at a time, if it is still
    /// what was checked: never the whole file at once. Errors as [`Self::read`]; an error of
    /// `each` ends the read and is returned as a read error.
    pub fn stream(
        &self,
        path: &Path,
        mut each: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), InputError> {
        let checked = self
            .files
            .get(path)
            .unwrap_or_else(|| panic!("{} was not among the checked files", path.display()));
        let read_error = |source| InputError::Read {
            at: mention(&self.job_file, &checked.named),
            path: checked.canonical.clone(),
            source,
        };
        let changed = |detail: String| InputError::Changed {
            at: mention(&self.job_file, &checked.named),
            resolved: checked.canonical.clone(),
            detail,
        };
        // Opening a FIFO blocks until a writer comes; one swapped in since the check would
        // block here (std has no O_NONBLOCK). Whoever can do that can also write the file.
        let file = File::open(&checked.canonical).map_err(read_error)?;
        let metadata = file.metadata().map_err(read_error)?;
        if !metadata.is_file()
            || (metadata.dev(), metadata.ino()) != (checked.device, checked.inode)
        {
            return Err(changed("it is another file now".to_owned()));
        }
        // One byte past the checked size (itself within the caps) tells a file that grew,
        // without reading what it grew by.
        let mut reader = file.take(checked.size + 1);
        let mut buffer = vec![0u8; STREAM_CHUNK_BYTES];
        let mut read = 0u64;
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(read_error(error)),
            };
            read += n as u64;
            if read > checked.size {
                break;
            }
            each(&buffer[..n]).map_err(read_error)?;
        }
        if read != checked.size {
            let now = if read > checked.size {
                "more now".to_owned()
            } else {
                format!("{read} now")
            };
            return Err(changed(format!("{} bytes then, {now}", checked.size)));
        }
        Ok(())
    }

    /// The size the file the spec calls `path` had when it was checked.
    pub fn size(&self, path: &Path) -> u64 {
        self.files
            .get(path)
            .unwrap_or_else(|| panic!("{} was not among the checked files", path.display()))
            .size
    }
}

/// What [`CheckedInputs::stream`] reads at a time.
const STREAM_CHUNK_BYTES: usize = 1024 * 1024;

impl fmt::Display for Sending {
    /// `sending 1 module, 3 input files and 1 stdin file, 12.4 MiB in all`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = [
            (self.modules, "module"),
            (self.input_files, "input file"),
            (self.stdin_files, "stdin file"),
            (self.stdin_texts, "stdin text"),
        ];
        let parts: Vec<String> = counts
            .iter()
            .enumerate()
            // The module always, the others when there are any.
            .filter(|(index, (count, _))| *index == 0 || *count > 0)
            .map(|(_, (count, noun))| {
                let plural = if *count == 1 { "" } else { "s" };
                format!("{count} {noun}{plural}")
            })
            .collect();
        let list = match parts.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        };
        write!(f, "sending {list}, {} in all", human_bytes(self.bytes))
    }
}

/// Resolves and examines a file not seen before: inside the job directory (unless allowed
/// elsewhere) and regular.
fn examine(
    job_file: &Path,
    job_dir: &Path,
    named: &NamedPath,
    policy: PathPolicy,
) -> Result<CheckedFile, InputError> {
    let read_error = |path: &Path, source| InputError::Read {
        at: mention(job_file, named),
        path: path.to_owned(),
        source,
    };
    let canonical =
        std::fs::canonicalize(&named.path).map_err(|source| read_error(&named.path, source))?;
    // Component-wise: /jobs/a-other is not inside /jobs/a.
    if policy == PathPolicy::JobDirOnly && !canonical.starts_with(job_dir) {
        return Err(InputError::OutsideJobDir {
            at: mention(job_file, named),
            resolved: canonical,
            job_dir: job_dir.to_owned(),
        });
    }
    let metadata =
        std::fs::metadata(&canonical).map_err(|source| read_error(&canonical, source))?;
    if !metadata.is_file() {
        return Err(InputError::NotRegular {
            at: mention(job_file, named),
            resolved: canonical,
            kind: kind_of(metadata.file_type()),
        });
    }
    Ok(CheckedFile {
        named: named.clone(),
        canonical,
        size: metadata.len(),
        device: metadata.dev(),
        inode: metadata.ino(),
    })
}

fn cap_of(role: FileRole) -> u64 {
    match role {
        FileRole::Module => MAX_MODULE_FILE_BYTES,
        FileRole::InputFile => MAX_INPUT_FILE_BYTES,
        FileRole::StdinFile => MAX_STDIN_BYTES as u64,
    }
}

/// What the cap of `role` is per, and why, as refusals say it.
fn cap_reason(role: FileRole) -> &'static str {
    match role {
        FileRole::Module => "module (MAX_MODULE_FILE_BYTES, the largest a worker compiles)",
        FileRole::InputFile => {
            "input file (MAX_INPUT_FILE_BYTES, the largest blob a worker stores)"
        }
        FileRole::StdinFile => {
            "stdin file (MAX_STDIN_BYTES, the largest stdin a worker takes); name it in files \
             instead, and the task reads it under /input"
        }
    }
}

fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "something else"
    }
}

fn mention(job_file: &Path, named: &NamedPath) -> Box<Mention> {
    Box::new(Mention {
        job_file: job_file.to_owned(),
        named: named.clone(),
    })
}

/// `job.toml:4: task.files: problem`, one line.
fn located(at: &Mention, problem: &str) -> String {
    render_invalid(
        &at.job_file,
        Some(at.named.line),
        Some(at.named.field),
        problem,
    )
}

fn one_line(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// `512 bytes`, `1.5 KiB`, `12.4 MiB`, `1.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        let plural = if bytes == 1 { "" } else { "s" };
        return format!("{bytes} byte{plural}");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    /// `<tmp>/job/` holding `m.wasm` and, once written, `job.toml`; `<tmp>/secret` beside it.
    struct Fixture {
        tmp: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let fixture = Self {
                tmp: tempfile::tempdir().unwrap(),
            };
            fixture.file("m.wasm", MODULE);
            std::fs::write(fixture.outside("secret"), b"the user's secret").unwrap();
            fixture
        }

        /// The job directory, canonical (as refusals name it).
        fn dir(&self) -> PathBuf {
            std::fs::canonicalize(self.tmp.path()).unwrap().join("job")
        }

        fn outside(&self, name: &str) -> PathBuf {
            self.dir().parent().unwrap().join(name)
        }

        /// Writes `bytes` at `relative` under the job directory.
        fn file(&self, relative: &str, bytes: &[u8]) -> PathBuf {
            let path = self.tmp.path().join("job").join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            path
        }

        /// A sparse file of `size` bytes under the job directory: only its metadata is read.
        fn sized(&self, relative: &str, size: u64) {
            let file = std::fs::File::create(self.tmp.path().join("job").join(relative)).unwrap();
            file.set_len(size).unwrap();
        }

        fn job_file(&self) -> PathBuf {
            self.tmp.path().join("job").join("job.toml")
        }

        /// Checks the job `module = "m.wasm"` + `rest`; the one-line refusal on error.
        fn check(&self, rest: &str, policy: PathPolicy) -> Result<CheckedInputs, String> {
            self.check_job(
                &format!("name = \"j\"\nmodule = \"m.wasm\"\n{rest}"),
                policy,
            )
        }

        fn check_job(&self, text: &str, policy: PathPolicy) -> Result<CheckedInputs, String> {
            std::fs::write(self.job_file(), text).unwrap();
            let spec = crate::job::load(&self.job_file()).unwrap();
            CheckedInputs::check(&spec, &self.job_file(), policy).map_err(|error| {
                let message = format!("{:#}", anyhow::Error::from(error));
                assert!(!message.contains('\n'), "not one line: {message:?}");
                message
            })
        }

        /// The refusal of a job that should be refused.
        fn refusal(&self, rest: &str) -> String {
            self.check(rest, PathPolicy::JobDirOnly)
                .expect_err("the job should be refused")
        }
    }

    /// The refusal of `given` at `line`, leading to `target` beside the job directory.
    fn outside_message(
        fixture: &Fixture,
        (line, field): (usize, &str),
        given: &str,
        target: &str,
    ) -> String {
        format!(
            "{}:{line}: {field}: {given:?} resolves to {}, outside the job directory {}; move it \
             into that directory, or pass --allow-paths-outside-job-dir to send it anyway",
            fixture.job_file().display(),
            fixture.outside(target).display(),
            fixture.dir().display()
        )
    }

    #[test]
    fn files_inside_the_job_dir_pass_by_any_route() {
        let fixture = Fixture::new();
        fixture.file("a.txt", b"a");
        fixture.file("sub/b.txt", b"b");
        symlink("sub/b.txt", fixture.dir().join("link.txt")).unwrap();
        let absolute = fixture.dir().join("a.txt");
        let rest = format!(
            "[[task]]\nstdin_file = \"sub/../a.txt\"\nfiles = [\"./sub/b.txt\", {absolute:?}, \
             \"link.txt\"]\n"
        );
        let inputs = fixture.check(&rest, PathPolicy::JobDirOnly).unwrap();
        // link.txt is sub/b.txt: one file, sent once.
        assert_eq!(
            (inputs.sending().input_files, inputs.sending().stdin_files),
            (2, 1)
        );
    }

    #[test]
    fn paths_leading_out_of_the_job_dir_are_refused_naming_field_path_dir_and_flag() {
        let fixture = Fixture::new();
        fixture.file("a.txt", b"a");
        assert_eq!(
            fixture.refusal("[[task]]\nstdin_file = \"../secret\"\n"),
            outside_message(&fixture, (4, "task.stdin_file"), "../secret", "secret")
        );
        let absolute = fixture.outside("secret").display().to_string();
        assert_eq!(
            fixture.refusal(&format!("[[task]]\nfiles = [\"a.txt\", {absolute:?}]\n")),
            outside_message(&fixture, (4, "task.files"), &absolute, "secret")
        );
        symlink("../secret", fixture.dir().join("link.txt")).unwrap();
        assert_eq!(
            fixture.refusal("[sweep]\nargs = [\"{i}\"]\nrange = [1, 9]\nfiles = [\"link.txt\"]\n"),
            outside_message(&fixture, (6, "sweep.files"), "link.txt", "secret")
        );
        std::fs::rename(fixture.outside("secret"), fixture.outside("secret.wasm")).unwrap();
        let refused = fixture
            .check_job(
                "name = \"j\"\nmodule = \"../secret.wasm\"\n[[task]]\n",
                PathPolicy::JobDirOnly,
            )
            .unwrap_err();
        assert_eq!(
            refused,
            outside_message(&fixture, (2, "module"), "../secret.wasm", "secret.wasm")
        );
    }

    #[test]
    fn a_sibling_whose_name_extends_the_job_dir_is_outside() {
        // /tmp/x/job-b is not inside /tmp/x/job, though its path starts with the same bytes.
        let fixture = Fixture::new();
        let sibling = fixture.outside("job-b");
        std::fs::create_dir(&sibling).unwrap();
        std::fs::write(sibling.join("c.txt"), b"c").unwrap();
        let refused = fixture.refusal("[[task]]\nfiles = [\"../job-b/c.txt\"]\n");
        assert!(refused.contains("outside the job directory"), "{refused}");
    }

    #[test]
    fn anywhere_lets_every_readable_regular_file_through() {
        let fixture = Fixture::new();
        symlink("../secret", fixture.dir().join("link.txt")).unwrap();
        let absolute = fixture.outside("secret").display().to_string();
        let rest = format!(
            "[[task]]\nstdin_file = \"../secret\"\nfiles = [{absolute:?}]\n\
             [[task]]\nfiles = [\"link.txt\"]\n"
        );
        let inputs = fixture.check(&rest, PathPolicy::Anywhere).unwrap();
        let as_named = fixture.tmp.path().join("job").join("../secret");
        assert_eq!(inputs.read(&as_named).unwrap(), b"the user's secret");
        // Three mentions of one file: sent once.
        assert_eq!(
            inputs.sending().bytes,
            (MODULE.len() + b"the user's secret".len()) as u64
        );
    }

    #[test]
    fn only_regular_files_pass() {
        let fixture = Fixture::new();
        fixture.file("sub/b.txt", b"b");
        let job_file = fixture.job_file().display().to_string();
        let dir = fixture.dir().display().to_string();
        assert_eq!(
            fixture.refusal("[[task]]\nfiles = [\"sub\"]\n"),
            format!(
                "{job_file}:4: task.files: \"sub\" ({dir}/sub) is a directory, not a regular \
                 file; only regular files can be sent"
            )
        );
        let fifo = fixture.dir().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // Were it opened, this would block: no one ever writes to it.
        assert_eq!(
            fixture.refusal("[[task]]\nstdin_file = \"pipe\"\n"),
            format!(
                "{job_file}:4: task.stdin_file: \"pipe\" ({dir}/pipe) is a FIFO (named pipe), \
                 not a regular file; only regular files can be sent"
            )
        );
        let refused = fixture
            .check("[[task]]\nfiles = [\"/dev/zero\"]\n", PathPolicy::Anywhere)
            .unwrap_err();
        assert_eq!(
            refused,
            format!(
                "{job_file}:4: task.files: \"/dev/zero\" (/dev/zero) is a character device, not \
                 a regular file; only regular files can be sent"
            )
        );
        let missing = fixture.refusal("[[task]]\nfiles = [\"nope.txt\"]\n");
        let as_named = fixture.tmp.path().join("job").join("nope.txt");
        let cause = std::fs::metadata(&as_named).unwrap_err();
        assert_eq!(
            missing,
            format!(
                "{job_file}:4: task.files: cannot read \"nope.txt\" ({}): {cause}",
                as_named.display()
            )
        );
    }

    #[test]
    fn sizes_are_capped_per_role_from_metadata() {
        let fixture = Fixture::new();
        let job_file = fixture.job_file().display().to_string();
        fixture.sized("at-cap.bin", MAX_INPUT_FILE_BYTES);
        fixture.sized("over-cap.bin", MAX_INPUT_FILE_BYTES + 1);
        fixture.sized("stdin-at-cap", MAX_STDIN_BYTES as u64);
        fixture.sized("stdin-over-cap", MAX_STDIN_BYTES as u64 + 1);
        fixture
            .check(
                "[[task]]\nstdin_file = \"stdin-at-cap\"\nfiles = [\"at-cap.bin\"]\n",
                PathPolicy::JobDirOnly,
            )
            .unwrap();
        assert_eq!(
            fixture.refusal("[[task]]\nfiles = [\"over-cap.bin\"]\n"),
            format!(
                "{job_file}:4: task.files: \"over-cap.bin\" is {} bytes, above the cap of {} \
                 bytes (16.0 GiB) per input file (MAX_INPUT_FILE_BYTES, the largest blob a \
                 worker stores)",
                MAX_INPUT_FILE_BYTES + 1,
                MAX_INPUT_FILE_BYTES
            )
        );
        // One file may be both: its stdin mention has the stdin cap.
        assert_eq!(
            fixture.refusal(
                "[[task]]\nfiles = [\"stdin-over-cap\"]\n[[task]]\nstdin_file = \"stdin-over-cap\"\n"
            ),
            format!(
                "{job_file}:6: task.stdin_file: \"stdin-over-cap\" is 4194305 bytes, above the \
                 cap of 4194304 bytes (4.0 MiB) per stdin file (MAX_STDIN_BYTES, the largest \
                 stdin a worker takes); name it in files instead, and the task reads it under \
                 /input"
            )
        );
        fixture.sized("big.wasm", MAX_MODULE_FILE_BYTES + 1);
        let refused = fixture
            .check_job(
                "name = \"j\"\nmodule = \"big.wasm\"\n[[task]]\n",
                PathPolicy::JobDirOnly,
            )
            .unwrap_err();
        assert!(
            refused.starts_with(&format!(
                "{job_file}:2: module: \"big.wasm\" is 268435457 bytes"
            )),
            "{refused}"
        );
    }

    #[test]
    fn the_job_total_is_capped_counting_each_file_once() {
        let fixture = Fixture::new();
        let job_file = fixture.job_file().display().to_string();
        let quarter = MAX_JOB_INPUT_BYTES / 4;
        for name in ["1", "2", "3"] {
            fixture.sized(name, quarter);
        }
        fixture.sized("4", quarter - MODULE.len() as u64);
        fixture.sized("5", 1);
        // Exactly the cap with the module; a file named twice counts once.
        fixture
            .check(
                "[[task]]\nfiles = [\"1\", \"2\"]\n[[task]]\nfiles = [\"1\", \"3\", \"4\"]\n",
                PathPolicy::JobDirOnly,
            )
            .unwrap();
        assert_eq!(
            fixture.refusal(
                "[[task]]\nfiles = [\"1\", \"2\", \"3\"]\n[[task]]\nfiles = [\"4\", \"5\"]\n"
            ),
            format!(
                "{job_file}:6: task.files: \"5\" brings the job's files to {} bytes \
                 (64.0 GiB), above the cap of {} bytes (64.0 GiB) per job \
                 (MAX_JOB_INPUT_BYTES); split the job into several",
                MAX_JOB_INPUT_BYTES + 1,
                MAX_JOB_INPUT_BYTES
            )
        );
    }

    #[test]
    fn sending_counts_distinct_files_and_stdin_texts_and_reads_as_one_line() {
        let fixture = Fixture::new();
        fixture.file("a.txt", &[b'a'; 1000]);
        fixture.file("b.txt", &[b'b'; 2000]);
        fixture.file("in.txt", &[b'i'; 300]);
        let inputs = fixture
            .check(
                "[[task]]\nstdin_file = \"in.txt\"\nfiles = [\"a.txt\", \"b.txt\"]\n\
                 [[task]]\nstdin = \"same\"\nfiles = [\"a.txt\"]\n\
                 [[task]]\nstdin = \"same\"\n\
                 [sweep]\nstdin = \"seed {i}\"\nrange = [1, 3]\nfiles = [\"b.txt\"]\n",
                PathPolicy::JobDirOnly,
            )
            .unwrap();
        let sending = inputs.sending();
        let texts = "same".len() + 3 * "seed 1".len();
        assert_eq!(
            sending,
            Sending {
                modules: 1,
                input_files: 2,
                stdin_files: 1,
                stdin_texts: 4,
                bytes: (MODULE.len() + 1000 + 2000 + 300 + texts) as u64,
            }
        );
        assert_eq!(
            sending.to_string(),
            "sending 1 module, 2 input files, 1 stdin file and 4 stdin texts, 3.3 KiB in all"
        );
        let module_only = Sending {
            modules: 1,
            bytes: 12_400_000,
            ..Sending::default()
        };
        assert_eq!(module_only.to_string(), "sending 1 module, 11.8 MiB in all");
        let with_inputs = Sending {
            input_files: 3,
            ..module_only
        };
        assert_eq!(
            with_inputs.to_string(),
            "sending 1 module and 3 input files, 11.8 MiB in all"
        );
    }

    #[test]
    fn reading_refuses_a_file_that_changed_after_the_check() {
        let fixture = Fixture::new();
        let grows = fixture.file("grows.txt", b"12345");
        let shrinks = fixture.file("shrinks.txt", b"12345");
        let swapped = fixture.file("swapped.txt", b"12345");
        fixture.file("steady.txt", b"12345");
        let inputs = fixture
            .check(
                "[[task]]\nfiles = [\"grows.txt\", \"shrinks.txt\", \"swapped.txt\", \"steady.txt\"]\n",
                PathPolicy::JobDirOnly,
            )
            .unwrap();
        let spec_path = |name: &str| fixture.tmp.path().join("job").join(name);
        let message = |error: InputError| error.to_string();
        std::fs::write(&grows, vec![b'x'; 10 * 1024 * 1024]).unwrap();
        std::fs::write(&shrinks, b"12").unwrap();
        let replacement = fixture.file("new.txt", b"12345");
        std::fs::rename(&replacement, &swapped).unwrap();
        let prefix = format!("{}:4: task.files", fixture.job_file().display());
        let dir = fixture.dir().display().to_string();
        assert_eq!(
            message(inputs.read(&spec_path("grows.txt")).unwrap_err()),
            format!(
                "{prefix}: \"grows.txt\" ({dir}/grows.txt) changed after it was checked: 5 bytes \
                 then, more now; submit again"
            )
        );
        assert!(
            message(inputs.read(&spec_path("shrinks.txt")).unwrap_err())
                .ends_with("changed after it was checked: 5 bytes then, 2 now; submit again")
        );
        assert!(
            message(inputs.read(&spec_path("swapped.txt")).unwrap_err())
                .ends_with("changed after it was checked: it is another file now; submit again")
        );
        assert_eq!(inputs.read(&spec_path("steady.txt")).unwrap(), b"12345");
        assert_eq!(inputs.read(&spec_path("m.wasm")).unwrap(), MODULE);
    }

    #[test]
    fn sizes_read_in_binary_units() {
        let cases = [
            (0, "0 bytes"),
            (1, "1 byte"),
            (1023, "1023 bytes"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (13_002_342, "12.4 MiB"),
            (1 << 30, "1.0 GiB"),
            (MAX_JOB_INPUT_BYTES, "64.0 GiB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(human_bytes(bytes), text);
        }
    }
}
