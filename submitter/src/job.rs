//! Job files: one TOML file describing many tasks of one module, read into a validated
//! [`JobSpec`]. A mistake is refused on one line naming file, line, field and a valid example.
//! Parsing touches no file but the job file: what the files it names may be (inside the job
//! file's directory, regular, under the size caps) is checked by [`crate::inputs`].
//!
//! ```toml
//! name = "pi-sweep"        # required: 1 to 64 of [A-Za-z0-9._-], not starting with '.' or '-'
//! module = "pi.wasm"       # required; every path is relative to the job file's directory,
//!                          # and must lead to a file inside it
//! replication = 2          # copies of each task sent at first (default 2)
//! quorum = 2               # equal receipts needed (default 2; may exceed replication)
//! max_replicas = 5         # most copies of a task ever sent (default 5, at most 16)
//! distinct_hosts = true    # copies of a task go to distinct hosts (default true)
//! distinct_networks = true # and distinct /24 (IPv4) or /48 (IPv6) networks (default: as
//!                          # distinct_hosts; false for a grid on one LAN)
//! audit_rate = 0.03        # share of accepted tasks the submitter re-runs itself (default 0.03)
//! env = { MODE = "fast" }  # for every task; a task's own env wins per name
//! outputs = true           # each task gets a writable /output; the files it leaves there are
//!                          # agreed on and fetched into <results>/<task id>/ (default false)
//! [limits]                 # each optional; absent means the worker's default
//! cpu_s = 10               # CPU seconds, turned into fuel by the documented rule
//!                          # (limits::FUEL_PER_SECOND per second); or fuel, not both
//! fuel = 10_000_000_000
//! memory_mb = 64
//! timeout_s = 60
//! stdout_mb = 4            # caps on stdout and stderr (defaults 4 and 1, at most 16 and 4)
//! stderr_mb = 1
//! output_mb = 64           # caps on /output: total size, and file count (defaults 64 and 64)
//! output_files = 64
//! [[task]]                 # any number; id defaults to task-<n>, n = 1, 2, ... in file order
//! id = "small"
//! args = ["1000", "7"]
//! stdin = "text"           # or stdin_file = "in/data.txt", not both
//! files = ["data/a.txt"]   # the guest sees /input/a.txt
//! [sweep]                  # tasks sweep-<i> for i = first ..= last, after the [[task]] tables
//! args = ["{i}000"]        # "{i}" becomes i in args, stdin and env values; files stay as they are
//! range = [1, 200]
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use peergrid_proto::pb;
use peergrid_worker::{admission, limits};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Most copies of one task a job may ask for (`max_replicas`). Above: the job file is refused.
pub const MAX_REPLICAS: u32 = 16;
/// Most tasks in one job ([[task]] tables plus the sweep). Above: the job file is refused,
/// before any task is built.
pub const MAX_TASKS_PER_JOB: u64 = 1_000_000;

/// Longest job name and task id, in characters (all ASCII).
const MAX_IDENTIFIER_CHARS: usize = 64;
const MIB: u64 = 1024 * 1024;
const DEFAULT_REPLICATION: u32 = 2;
const DEFAULT_QUORUM: u32 = 2;
const DEFAULT_MAX_REPLICAS: u32 = 5;

/// A job file, checked: every task is valid as far as can be told without reading files.
/// The files it names are checked and read by [`crate::inputs`].
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: String,
    /// The module, resolved against the job file's directory (not checked to exist).
    pub module: PathBuf,
    pub limits: JobLimits,
    pub replication: u32,
    pub quorum: u32,
    pub max_replicas: u32,
    pub distinct_hosts: bool,
    pub distinct_networks: bool,
    /// Share of accepted tasks (with an established signer) the submitter re-runs itself.
    pub audit_rate: f64,
    /// Tasks get a writable `/output`, whose files are results too.
    pub outputs: bool,
    /// The [[task]] tables in file order, then the sweep by ascending i (made when asked for).
    pub tasks: JobTasks,
    /// Every file the job file names (module, `stdin_file`s, `files`), once per mention, in
    /// file order: what [`crate::inputs`] checks before anything is read.
    pub paths: Vec<NamedPath>,
}

/// A file named in a job file, with where: errors about it point at the line that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPath {
    pub role: FileRole,
    /// The field that names it, e.g. `task.files`.
    pub field: &'static str,
    /// 1-based line of the value in the job file.
    pub line: usize,
    /// As written in the job file.
    pub given: String,
    /// Joined to the job file's directory, as in [`JobSpec`] and [`JobTask`]; not
    /// canonicalised (parsing touches no file).
    pub path: PathBuf,
}

/// What a named file is to the job; each has its own size cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileRole {
    Module,
    StdinFile,
    InputFile,
}

/// Limits of every task of a job; `None` leaves the choice to the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobLimits {
    /// Fuel, given as such or as CPU seconds (`cpu_s`, turned into fuel).
    pub fuel: Option<u64>,
    pub memory_mb: Option<u64>,
    pub timeout_s: Option<u64>,
    pub stdout_mb: Option<u64>,
    pub stderr_mb: Option<u64>,
    pub output_mb: Option<u64>,
    pub output_files: Option<u64>,
}

/// One task of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTask {
    pub id: String,
    pub args: Vec<String>,
    /// Sorted by name; the job's env merged under the task's own.
    pub env: Vec<(String, String)>,
    pub stdin: TaskStdin,
    /// Input files, resolved; each is `/input/<file name>` in the guest.
    pub files: Vec<PathBuf>,
}

/// A job's tasks: the [[task]] tables as written, and the sweep as its template. A sweep's
/// tasks are made one at a time when asked for, so a million-point sweep is never a million
/// tasks in memory (ARCHITECTURE.md, "Memory at scale").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobTasks {
    listed: Vec<JobTask>,
    sweep: Option<SweepTemplate>,
}

/// A checked sweep: each i in `first..=last` makes a task.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SweepTemplate {
    first: u64,
    last: u64,
    args: Vec<String>,
    job_env: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    stdin: Option<String>,
    files: Vec<PathBuf>,
}

impl SweepTemplate {
    fn count(&self) -> usize {
        (self.last - self.first + 1) as usize
    }

    fn task(&self, i: u64) -> JobTask {
        JobTask {
            id: format!("sweep-{i}"),
            args: self.args.iter().map(|arg| substitute(arg, i)).collect(),
            env: merge_env(&self.job_env, &self.env, Some(i)),
            stdin: self
                .stdin
                .as_ref()
                .map_or(TaskStdin::None, |text| TaskStdin::Text(substitute(text, i))),
            files: self.files.clone(),
        }
    }
}

impl JobTasks {
    /// Tasks given one by one (a job without a sweep).
    pub fn listed(tasks: Vec<JobTask>) -> Self {
        Self {
            listed: tasks,
            sweep: None,
        }
    }

    pub fn len(&self) -> usize {
        self.listed.len() + self.sweep.as_ref().map_or(0, SweepTemplate::count)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Task `index` (0-based, in job order), if there is one.
    pub fn get(&self, index: usize) -> Option<JobTask> {
        match self.listed.get(index) {
            Some(task) => Some(task.clone()),
            None => {
                let sweep = self.sweep.as_ref()?;
                let at = (index - self.listed.len()) as u64;
                (at < sweep.count() as u64).then(|| sweep.task(sweep.first + at))
            }
        }
    }

    /// Every task in job order, each made as it is reached.
    pub fn iter(&self) -> impl Iterator<Item = JobTask> + '_ {
        let sweep = self
            .sweep
            .iter()
            .flat_map(|sweep| (sweep.first..=sweep.last).map(|i| sweep.task(i)));
        self.listed.iter().cloned().chain(sweep)
    }

    /// The distinct stdin texts the tasks send and their bytes, without holding them all: a
    /// sweep's text differs for every i when its template uses {i}.
    pub fn stdin_texts(&self) -> (u64, u64) {
        let mut listed: HashSet<&str> = HashSet::new();
        for task in &self.listed {
            if let TaskStdin::Text(text) = &task.stdin {
                listed.insert(text);
            }
        }
        let mut count = listed.len() as u64;
        let mut bytes: u64 = listed.iter().map(|text| text.len() as u64).sum();
        if let Some(sweep) = &self.sweep
            && let Some(template) = &sweep.stdin
        {
            let varies = template.contains("{i}");
            for i in sweep.first..=sweep.last {
                let text = substitute(template, i);
                if listed.contains(text.as_str()) {
                    continue;
                }
                count += 1;
                bytes += text.len() as u64;
                if !varies {
                    break;
                }
            }
        }
        (count, bytes)
    }
}

/// Where a task's stdin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStdin {
    None,
    Text(String),
    /// A file, resolved against the job file's directory.
    File(PathBuf),
}

/// Why a job file was refused. Renders as one line (the CLI prints errors on one line).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobFileError {
    /// The file could not be read; the I/O error is the source, printed by `{:#}` after a colon.
    #[error("cannot read job file {}", one_line(&.path.display().to_string()))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a valid job: bad TOML, an unknown or mistyped field, or a value out of
    /// range. `field` is a dotted path such as `limits.fuel`; `problem` ends with an example.
    #[error("{}", render_invalid(.path, *.line, .field.as_deref(), .problem))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        field: Option<String>,
        problem: String,
    },
}

impl JobLimits {
    /// The wire form; 0 asks for the worker's default.
    pub fn to_wire(&self) -> pb::TaskLimits {
        // Saturating: the fields are public, and an absurd value should be refused by the
        // worker's ceilings, not panic here.
        let mib = |value: Option<u64>| value.unwrap_or(0).saturating_mul(MIB);
        pb::TaskLimits {
            fuel: self.fuel.unwrap_or(0),
            memory_bytes: mib(self.memory_mb),
            timeout_ms: self.timeout_s.unwrap_or(0).saturating_mul(1000),
            stdout_max_bytes: mib(self.stdout_mb),
            stderr_max_bytes: mib(self.stderr_mb),
            output_max_bytes: mib(self.output_mb),
            output_max_files: u32::try_from(self.output_files.unwrap_or(0)).unwrap_or(u32::MAX),
        }
    }
}

impl JobSpec {
    /// What the user should know before the job runs, one line each: today only that
    /// `quorum = 1` accepts one worker's word.
    pub fn warnings(&self) -> Vec<String> {
        if self.quorum != 1 {
            return Vec::new();
        }
        // The rates the scheduler audits at (schedule.rs, `accept`): audits are the only check
        // left when no second receipt is needed.
        let probation = self.audit_rate.max(crate::limits::PROBATION_AUDIT_RATE);
        vec![format!(
            "quorum = 1: each task is accepted on one worker's receipt, unchecked by any other \
             worker; only audits check it (this machine re-runs {} of the tasks accepted from \
             keys on probation, {} (audit_rate) of those from established keys, none from \
             --trusted keys); quorum = 2 needs two workers to agree",
            percent(probation),
            percent(self.audit_rate)
        )]
    }
}

/// A share as a percentage with at most two decimals: 0.03 → "3%", 0.005 → "0.5%".
fn percent(share: f64) -> String {
    let text = format!("{:.2}", share * 100.0);
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// The directory a job file's relative paths are resolved against: the file's own, or `.` for
/// a bare file name.
pub fn job_dir(job_file: &Path) -> PathBuf {
    match job_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Reads and parses the job file at `path`.
///
/// # Errors
/// [`JobFileError::Read`] if the file cannot be read, else as [`parse`].
pub fn load(path: &Path) -> Result<JobSpec, JobFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses the text of a job file; `path` names it in errors, and its directory is the base of
/// relative paths.
///
/// # Errors
/// [`JobFileError::Invalid`] for the first problem found.
pub fn parse(text: &str, path: &Path) -> Result<JobSpec, JobFileError> {
    let doc = Doc::new(text, path);
    let raw: RawJob = toml::from_str(text).map_err(|error| doc.toml_error(&error))?;
    // In file order, so that the first problem reported is the first one the user meets.
    let name = check_name(&doc, raw.name.as_ref())?;
    let module = check_module(&doc, raw.module.as_ref())?;
    let (replication, quorum, max_replicas) = check_replicas(&doc, &raw)?;
    let job_env = check_env(&doc, "env", raw.env.as_ref())?;
    Ok(JobSpec {
        name,
        module,
        limits: check_limits(&doc, raw.limits.as_ref())?,
        replication,
        quorum,
        max_replicas,
        distinct_hosts: raw.distinct_hosts.unwrap_or(true),
        distinct_networks: raw
            .distinct_networks
            .unwrap_or(raw.distinct_hosts.unwrap_or(true)),
        audit_rate: check_audit_rate(&doc, raw.audit_rate.as_ref())?,
        outputs: raw.outputs.unwrap_or(false),
        tasks: build_tasks(&doc, &raw.task, raw.sweep.as_ref(), &job_env)?,
        paths: named_paths(&doc, &raw),
    })
}

/// Every path value of a valid job, in file order. Taken from the raw file rather than the
/// tasks: a sweep's files are one mention, however many tasks share them.
fn named_paths(doc: &Doc, raw: &RawJob) -> Vec<NamedPath> {
    let mut paths = Vec::new();
    let mut add = |role, field, value: &Spanned<String>| {
        paths.push(NamedPath {
            role,
            field,
            line: line_of(doc.text, value.span().start),
            given: value.get_ref().clone(),
            path: doc.resolve(value.get_ref()),
        });
    };
    if let Some(module) = &raw.module {
        add(FileRole::Module, "module", module);
    }
    for table in &raw.task {
        let table = table.get_ref();
        if let Some(file) = &table.stdin_file {
            add(FileRole::StdinFile, "task.stdin_file", file);
        }
        for file in table.files.iter().flat_map(|files| files.get_ref()) {
            add(FileRole::InputFile, "task.files", file);
        }
    }
    let sweep_files = raw
        .sweep
        .iter()
        .filter_map(|sweep| sweep.get_ref().files.as_ref());
    for file in sweep_files.flat_map(|files| files.get_ref()) {
        add(FileRole::InputFile, "sweep.files", file);
    }
    // [sweep] may come before the [[task]] tables.
    paths.sort_by_key(|path| path.line);
    paths
}

// The file as serde sees it. Everything is optional so that a missing field gets our own
// message (with an example) rather than serde's; spans give line numbers.

type RawEnv = Spanned<BTreeMap<String, Spanned<String>>>;
type RawFiles = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Option<Spanned<String>>,
    module: Option<Spanned<String>>,
    replication: Option<Spanned<u32>>,
    quorum: Option<Spanned<u32>>,
    max_replicas: Option<Spanned<u32>>,
    distinct_hosts: Option<bool>,
    distinct_networks: Option<bool>,
    audit_rate: Option<Spanned<f64>>,
    env: Option<RawEnv>,
    outputs: Option<bool>,
    limits: Option<RawLimits>,
    #[serde(default)]
    task: Vec<Spanned<RawTask>>,
    sweep: Option<Spanned<RawSweep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    cpu_s: Option<Spanned<u64>>,
    fuel: Option<Spanned<u64>>,
    memory_mb: Option<Spanned<u64>>,
    timeout_s: Option<Spanned<u64>>,
    stdout_mb: Option<Spanned<u64>>,
    stderr_mb: Option<Spanned<u64>>,
    output_mb: Option<Spanned<u64>>,
    output_files: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    id: Option<Spanned<String>>,
    args: Option<Spanned<Vec<String>>>,
    stdin: Option<Spanned<String>>,
    stdin_file: Option<Spanned<String>>,
    files: Option<RawFiles>,
    env: Option<RawEnv>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    args: Option<Spanned<Vec<String>>>,
    range: Option<Spanned<[u64; 2]>>,
    stdin: Option<Spanned<String>>,
    files: Option<RawFiles>,
    env: Option<RawEnv>,
}

// Field lists for "unknown field" messages; the tests check each against its struct.
const JOB_FIELDS: &[&str] = &[
    "name",
    "module",
    "replication",
    "quorum",
    "max_replicas",
    "distinct_hosts",
    "distinct_networks",
    "audit_rate",
    "env",
    "outputs",
    "limits",
    "task",
    "sweep",
];
const LIMITS_FIELDS: &[&str] = &[
    "cpu_s",
    "fuel",
    "memory_mb",
    "timeout_s",
    "stdout_mb",
    "stderr_mb",
    "output_mb",
    "output_files",
];
const TASK_FIELDS: &[&str] = &["id", "args", "stdin", "stdin_file", "files", "env"];
const SWEEP_FIELDS: &[&str] = &["args", "range", "stdin", "files", "env"];

/// A valid example for a field (a dotted path), shown in every message about it.
fn example(field: &str) -> &'static str {
    match field {
        "name" => r#"name = "pi-sweep""#,
        "module" => r#"module = "pi.wasm""#,
        "replication" => "replication = 2",
        "quorum" => "quorum = 2",
        "max_replicas" => "max_replicas = 5",
        "distinct_hosts" => "distinct_hosts = true",
        "distinct_networks" => "distinct_networks = false",
        "audit_rate" => "audit_rate = 0.03",
        "env" | "task.env" => r#"env = { MODE = "fast" }"#,
        "limits" => "limits = { fuel = 10_000_000_000, memory_mb = 64, timeout_s = 60 }",
        "limits.fuel" => "fuel = 10_000_000_000",
        "limits.cpu_s" => "cpu_s = 10",
        "limits.memory_mb" => "memory_mb = 64",
        "limits.timeout_s" => "timeout_s = 60",
        "limits.stdout_mb" => "stdout_mb = 4",
        "limits.stderr_mb" => "stderr_mb = 1",
        "limits.output_mb" => "output_mb = 64",
        "limits.output_files" => "output_files = 64",
        "outputs" => "outputs = true",
        "task" => r#"[[task]] with args = ["1000", "7"]"#,
        "task.id" => r#"id = "small""#,
        "task.args" => r#"args = ["1000", "7"]"#,
        "task.stdin" => r#"stdin = "text for the task""#,
        "task.stdin_file" => r#"stdin_file = "in/data.txt""#,
        "task.files" | "sweep.files" => r#"files = ["data/a.txt", "data/b.txt"]"#,
        "sweep" => r#"[sweep] with args = ["{i}000"] and range = [1, 200]"#,
        "sweep.args" => r#"args = ["{i}000"]"#,
        "sweep.range" => "range = [1, 200]",
        "sweep.stdin" => r#"stdin = "seed {i}""#,
        "sweep.env" => r#"env = { SEED = "{i}" }"#,
        // An entry of an env table, or a field we do not know: the example of the parent.
        _ => match field.rsplit_once('.') {
            Some((parent, _)) => example(parent),
            None => r#"name = "pi-sweep""#,
        },
    }
}

fn fields_of(table: &str) -> &'static [&'static str] {
    match table {
        "limits" => LIMITS_FIELDS,
        "task" => TASK_FIELDS,
        "sweep" => SWEEP_FIELDS,
        _ => JOB_FIELDS,
    }
}

/// The job file being parsed: what errors and paths are relative to.
struct Doc<'a> {
    path: &'a Path,
    text: &'a str,
    base: PathBuf,
}

impl<'a> Doc<'a> {
    fn new(text: &'a str, path: &'a Path) -> Self {
        Doc {
            path,
            text,
            base: job_dir(path),
        }
    }

    fn resolve(&self, value: &str) -> PathBuf {
        self.base.join(value)
    }

    /// An error about `field` at `span` (None when the field is absent).
    fn invalid(&self, span: Option<Range<usize>>, field: &str, problem: String) -> JobFileError {
        self.error_at(span, (!field.is_empty()).then(|| field.to_owned()), problem)
    }

    fn error_at(
        &self,
        span: Option<Range<usize>>,
        field: Option<String>,
        problem: String,
    ) -> JobFileError {
        JobFileError::Invalid {
            path: self.path.to_owned(),
            line: span.map(|span| line_of(self.text, span.start)),
            field,
            problem,
        }
    }

    /// Turns toml's multi-line error into ours; the field comes from the document itself,
    /// since `toml::de::Error` does not expose the keys it knows.
    fn toml_error(&self, error: &toml::de::Error) -> JobFileError {
        let span = error.span();
        let message = error.message().replace('`', "\"");
        let Some(keys) = key_path_at(self.text, span.as_ref().map(|span| span.start)) else {
            return self.error_at(span, None, format!("invalid TOML: {message}"));
        };
        let Some((last, table)) = keys.split_last() else {
            return self.error_at(span, None, message);
        };
        let table = table.join(".");
        if error.message().starts_with("unknown field") {
            let problem = unknown_field(&table, last);
            return self.error_at(span, (!table.is_empty()).then_some(table), problem);
        }
        let field = keys.join(".");
        let problem = format!("{message}, e.g. {}", example(&field));
        self.error_at(span, Some(field), problem)
    }
}

fn unknown_field(table: &str, name: &str) -> String {
    let fields = fields_of(table);
    let closest = fields
        .iter()
        .min_by_key(|field| edit_distance(name, field))
        .expect("every table has fields");
    let full = if table.is_empty() {
        closest.to_string()
    } else {
        format!("{table}.{closest}")
    };
    format!(
        "unknown field {name:?}; expected one of {} (e.g. {})",
        fields.join(", "),
        example(&full)
    )
}

/// Levenshtein distance, to suggest the field a typo meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, b_char) in b.iter().enumerate() {
            let replace = diagonal + usize::from(a_char != *b_char);
            diagonal = row[j + 1];
            row[j + 1] = replace.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Keys from the root to the entry at `offset` (array indices left out), e.g. `task`, `id`;
/// empty if nothing is there, None if the text is not valid TOML.
fn key_path_at(text: &str, offset: Option<usize>) -> Option<Vec<String>> {
    let root = DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    if let Some(offset) = offset {
        find_in_table(root.get_ref(), offset, &mut path);
    }
    Some(path)
}

fn find_in_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        if key.span().contains(&offset) || find_in_value(value, offset, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<String>) -> bool {
    // Inside first: a table's span may be only its header.
    let inside = match value.get_ref() {
        DeValue::Table(table) => find_in_table(table, offset, path),
        DeValue::Array(items) => items.iter().any(|item| find_in_value(item, offset, path)),
        _ => false,
    };
    inside || value.span().contains(&offset)
}

/// `job.toml:4: task.files: problem`, on one line: how every error about a job file reads.
pub(crate) fn render_invalid(
    path: &Path,
    line: Option<usize>,
    field: Option<&str>,
    problem: &str,
) -> String {
    let mut text = path.display().to_string();
    if let Some(line) = line {
        text.push_str(&format!(":{line}"));
    }
    if let Some(field) = field {
        text.push_str(&format!(": {field}"));
    }
    one_line(&format!("{text}: {problem}"))
}

/// User values are quoted with `{:?}`, but a path or a toml message could still hold a newline.
fn one_line(text: &str) -> String {
    text.replace('\n', "\\n").replace('\r', "\\r")
}

/// Why `value` is not a valid job name or task id: 1 to 64 of [A-Za-z0-9._-], not starting
/// with '.' (a hidden file name), nor with '-' if `no_dash_first` (it would read as a flag).
fn identifier_problem(value: &str, no_dash_first: bool) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let rule = "1 to 64 of A-Z a-z 0-9 . _ -";
    if value.is_empty() || value.len() > MAX_IDENTIFIER_CHARS {
        return Some(format!("{value:?} must be {rule}"));
    }
    if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
        return Some(format!("{value:?} has {bad:?}; use only {rule}"));
    }
    if value.starts_with('.') || (no_dash_first && value.starts_with('-')) {
        return Some(format!("{value:?} must not start with {:?}", &value[..1]));
    }
    None
}

fn check_name(doc: &Doc, name: Option<&Spanned<String>>) -> Result<String, JobFileError> {
    let Some(name) = name else {
        let problem = format!(
            "missing; every job file needs one, e.g. {}",
            example("name")
        );
        return Err(doc.invalid(None, "name", problem));
    };
    match identifier_problem(name.get_ref(), true) {
        Some(problem) => Err(doc.invalid(
            Some(name.span()),
            "name",
            format!("{problem}, e.g. {}", example("name")),
        )),
        None => Ok(name.get_ref().clone()),
    }
}

fn check_module(doc: &Doc, module: Option<&Spanned<String>>) -> Result<PathBuf, JobFileError> {
    let e_g = example("module");
    match module {
        None => Err(doc.invalid(
            None,
            "module",
            format!("missing; every job file needs one, e.g. {e_g}"),
        )),
        Some(module) if module.get_ref().is_empty() => Err(doc.invalid(
            Some(module.span()),
            "module",
            format!("is empty, e.g. {e_g}"),
        )),
        Some(module) => Ok(doc.resolve(module.get_ref())),
    }
}

/// (replication, quorum, max_replicas). Quorum may exceed replication: copies are then added
/// until a quorum can be met, up to max_replicas.
fn check_replicas(doc: &Doc, raw: &RawJob) -> Result<(u32, u32, u32), JobFileError> {
    let (max, span) = spanned_or(raw.max_replicas.as_ref(), DEFAULT_MAX_REPLICAS);
    if !(1..=MAX_REPLICAS).contains(&max) {
        let problem = format!(
            "must be between 1 and {MAX_REPLICAS} (MAX_REPLICAS), e.g. {}",
            example("max_replicas")
        );
        return Err(doc.invalid(span, "max_replicas", problem));
    }
    let max = MaxReplicas { value: max, span };
    let replication = check_copies(
        doc,
        "replication",
        raw.replication.as_ref(),
        DEFAULT_REPLICATION,
        &max,
    )?;
    let quorum = check_copies(doc, "quorum", raw.quorum.as_ref(), DEFAULT_QUORUM, &max)?;
    Ok((replication, quorum, max.value))
}

/// The share of accepted tasks audited, in 0 ..= 1 (default [`DEFAULT_AUDIT_RATE`]).
fn check_audit_rate(doc: &Doc, given: Option<&Spanned<f64>>) -> Result<f64, JobFileError> {
    let Some(given) = given else {
        return Ok(crate::limits::DEFAULT_AUDIT_RATE);
    };
    let rate = *given.get_ref();
    if (0.0..=1.0).contains(&rate) {
        return Ok(rate);
    }
    let problem = format!(
        "must be a share between 0 and 1 (0.03 re-runs 3% of accepted tasks on this machine), e.g. {}",
        example("audit_rate")
    );
    Err(doc.invalid(Some(given.span()), "audit_rate", problem))
}

/// `max_replicas` as checked; no span when it is the default.
struct MaxReplicas {
    value: u32,
    span: Option<Range<usize>>,
}

fn spanned_or(value: Option<&Spanned<u32>>, default: u32) -> (u32, Option<Range<usize>>) {
    value.map_or((default, None), |value| {
        (*value.get_ref(), Some(value.span()))
    })
}

/// A count of copies in 1 ..= max_replicas. A defaulted count that does not fit is blamed on
/// max_replicas: that is the line the user wrote.
fn check_copies(
    doc: &Doc,
    field: &str,
    given: Option<&Spanned<u32>>,
    default: u32,
    max: &MaxReplicas,
) -> Result<u32, JobFileError> {
    let (value, span) = spanned_or(given, default);
    if (1..=max.value).contains(&value) {
        return Ok(value);
    }
    let max_value = max.value;
    if given.is_none() {
        let problem = format!(
            "{max_value} is below the default {field} ({default}); \
             set {field} = {max_value} as well, or raise max_replicas, e.g. {}",
            example("max_replicas")
        );
        return Err(doc.invalid(max.span.clone(), "max_replicas", problem));
    }
    let default_note = if max.span.is_none() {
        ", the default"
    } else {
        ""
    };
    let problem = format!(
        "must be between 1 and max_replicas ({max_value}{default_note}), e.g. {}",
        example(field)
    );
    Err(doc.invalid(span, field, problem))
}

fn check_limits(doc: &Doc, raw: Option<&RawLimits>) -> Result<JobLimits, JobFileError> {
    let Some(raw) = raw else {
        return Ok(JobLimits::default());
    };
    let max_memory_mb = limits::MAX_MEMORY_BYTES / MIB;
    let max_timeout_s = limits::MAX_TIMEOUT.as_secs();
    let fuel = check_limit(
        doc,
        "limits.fuel",
        raw.fuel.as_ref(),
        limits::MAX_FUEL,
        "MAX_FUEL",
    )?;
    let cpu_s = check_limit(
        doc,
        "limits.cpu_s",
        raw.cpu_s.as_ref(),
        limits::MAX_FUEL / limits::FUEL_PER_SECOND,
        "MAX_FUEL / FUEL_PER_SECOND",
    )?;
    if let (Some(_), Some(cpu_s)) = (fuel, raw.cpu_s.as_ref()) {
        return Err(doc.invalid(
            Some(cpu_s.span()),
            "limits.cpu_s",
            "give fuel or cpu_s, not both (cpu_s is fuel in seconds), e.g. cpu_s = 10".into(),
        ));
    }
    Ok(JobLimits {
        fuel: fuel.or(cpu_s.map(limits::fuel_for_seconds)),
        memory_mb: check_limit(
            doc,
            "limits.memory_mb",
            raw.memory_mb.as_ref(),
            max_memory_mb,
            "MAX_MEMORY_BYTES",
        )?,
        timeout_s: check_limit(
            doc,
            "limits.timeout_s",
            raw.timeout_s.as_ref(),
            max_timeout_s,
            "MAX_TIMEOUT",
        )?,
        stdout_mb: check_limit(
            doc,
            "limits.stdout_mb",
            raw.stdout_mb.as_ref(),
            limits::MAX_STDOUT_MAX_BYTES / MIB,
            "MAX_STDOUT_MAX_BYTES",
        )?,
        stderr_mb: check_limit(
            doc,
            "limits.stderr_mb",
            raw.stderr_mb.as_ref(),
            limits::MAX_STDERR_MAX_BYTES / MIB,
            "MAX_STDERR_MAX_BYTES",
        )?,
        output_mb: check_limit(
            doc,
            "limits.output_mb",
            raw.output_mb.as_ref(),
            limits::MAX_OUTPUT_MAX_BYTES / MIB,
            "MAX_OUTPUT_MAX_BYTES",
        )?,
        output_files: check_limit(
            doc,
            "limits.output_files",
            raw.output_files.as_ref(),
            u64::from(limits::MAX_OUTPUT_MAX_FILES),
            "MAX_OUTPUT_MAX_FILES",
        )?,
    })
}

/// A limit in 1 ..= max, where max is the worker's ceiling (named by `ceiling`), in the
/// field's unit.
fn check_limit(
    doc: &Doc,
    field: &str,
    value: Option<&Spanned<u64>>,
    max: u64,
    ceiling: &str,
) -> Result<Option<u64>, JobFileError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let problem = match *value.get_ref() {
        0 => "must be at least 1 (leave it out for the worker's default)".to_owned(),
        n if n > max => format!("{n} is above the worker's ceiling {ceiling} ({max})"),
        n => return Ok(Some(n)),
    };
    Err(doc.invalid(
        Some(value.span()),
        field,
        format!("{problem}, e.g. {}", example(field)),
    ))
}

/// An env table: names non-empty without '=' or NUL (as the worker requires), at most MAX_ENV.
fn check_env(
    doc: &Doc,
    field: &str,
    env: Option<&RawEnv>,
) -> Result<BTreeMap<String, String>, JobFileError> {
    let Some(env) = env else {
        return Ok(BTreeMap::new());
    };
    check_env_count(doc, field, env.get_ref().len(), env.span())?;
    for (name, value) in env.get_ref() {
        if name.is_empty() || name.contains(['=', '\0']) {
            let problem = format!(
                "name {name:?} is empty or has '=' or NUL, e.g. {}",
                example(field)
            );
            return Err(doc.invalid(Some(value.span()), field, problem));
        }
    }
    Ok(env
        .get_ref()
        .iter()
        .map(|(name, value)| (name.clone(), value.get_ref().clone()))
        .collect())
}

fn check_env_count(
    doc: &Doc,
    field: &str,
    count: usize,
    span: Range<usize>,
) -> Result<(), JobFileError> {
    check_count(
        doc,
        field,
        span,
        count,
        "entries",
        (limits::MAX_ENV, "MAX_ENV"),
    )
}

/// `count` items of `field` (at `span`) are at most `max`, named `max_name` in the error.
fn check_count(
    doc: &Doc,
    field: &str,
    span: Range<usize>,
    count: usize,
    items: &str,
    (max, max_name): (usize, &str),
) -> Result<(), JobFileError> {
    if count <= max {
        return Ok(());
    }
    let problem = format!(
        "{count} {items}, at most {max} ({max_name}), e.g. {}",
        example(field)
    );
    Err(doc.invalid(Some(span), field, problem))
}

/// The job's env under the task's; `template_i` substitutes "{i}" in the task's values only.
fn merge_env(
    job_env: &BTreeMap<String, String>,
    task_env: &BTreeMap<String, String>,
    template_i: Option<u64>,
) -> Vec<(String, String)> {
    let mut merged = job_env.clone();
    for (name, value) in task_env {
        let value = template_i.map_or_else(|| value.clone(), |i| substitute(value, i));
        merged.insert(name.clone(), value);
    }
    merged.into_iter().collect()
}

fn check_merged_env_count(
    doc: &Doc,
    field: &str,
    job_env: &BTreeMap<String, String>,
    task_env: &BTreeMap<String, String>,
    span: Range<usize>,
) -> Result<(), JobFileError> {
    let count = job_env.len()
        + task_env
            .keys()
            .filter(|name| !job_env.contains_key(*name))
            .count();
    check_env_count(doc, field, count, span)
}

fn check_args(
    doc: &Doc,
    field: &str,
    args: Option<&Spanned<Vec<String>>>,
) -> Result<Vec<String>, JobFileError> {
    let Some(args) = args else {
        return Ok(Vec::new());
    };
    let count = args.get_ref().len();
    check_count(
        doc,
        field,
        args.span(),
        count,
        "args",
        (limits::MAX_ARGS, "MAX_ARGS"),
    )?;
    Ok(args.get_ref().clone())
}

/// Input files, resolved; each file name must be valid in /input and unique within the task.
fn check_files(
    doc: &Doc,
    field: &str,
    files: Option<&RawFiles>,
) -> Result<Vec<PathBuf>, JobFileError> {
    let Some(files) = files else {
        return Ok(Vec::new());
    };
    let count = files.get_ref().len();
    let max = (limits::MAX_INPUT_FILES, "MAX_INPUT_FILES");
    check_count(doc, field, files.span(), count, "files", max)?;
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for file in files.get_ref() {
        let name = input_name(file.get_ref()).map_err(|problem| {
            doc.invalid(
                Some(file.span()),
                field,
                format!("{problem}, e.g. {}", example(field)),
            )
        })?;
        if let Some(earlier) = seen.insert(name, file.get_ref()) {
            let problem = format!(
                "{earlier:?} and {:?} would both be /input/{name}; rename one, e.g. {}",
                file.get_ref(),
                example(field)
            );
            return Err(doc.invalid(Some(file.span()), field, problem));
        }
    }
    Ok(files
        .get_ref()
        .iter()
        .map(|file| doc.resolve(file.get_ref()))
        .collect())
}

/// The name a file has in the guest's /input, or why it has none.
fn input_name(path: &str) -> Result<&str, String> {
    let name = Path::new(path).file_name().and_then(|name| name.to_str());
    let Some(name) = name else {
        return Err(format!("{path:?} does not end in a file name"));
    };
    admission::check_file_name(name).map_err(|refusal| format!("{path:?}: {}", refusal.message))?;
    Ok(name)
}

fn check_stdin_text(
    doc: &Doc,
    field: &str,
    text: &Spanned<String>,
    longest: usize,
) -> Result<(), JobFileError> {
    if longest <= limits::MAX_STDIN_BYTES {
        return Ok(());
    }
    // A sweep has no stdin_file; its tasks can read a shared input file instead.
    let instead = match field {
        "task.stdin" => example("task.stdin_file"),
        _ => example("sweep.files"),
    };
    let problem = format!(
        "{longest} bytes, at most {} (MAX_STDIN_BYTES); use a file instead, e.g. {instead}",
        limits::MAX_STDIN_BYTES,
    );
    Err(doc.invalid(Some(text.span()), field, problem))
}

fn table_stdin(doc: &Doc, raw: &RawTask) -> Result<TaskStdin, JobFileError> {
    match (&raw.stdin, &raw.stdin_file) {
        (Some(_), Some(file)) => {
            let problem = format!(
                "stdin is given too; keep one of them, e.g. {}",
                example("task.stdin_file")
            );
            Err(doc.invalid(Some(file.span()), "task.stdin_file", problem))
        }
        (Some(text), None) => {
            check_stdin_text(doc, "task.stdin", text, text.get_ref().len())?;
            Ok(TaskStdin::Text(text.get_ref().clone()))
        }
        (None, Some(file)) if file.get_ref().is_empty() => {
            let problem = format!("is empty, e.g. {}", example("task.stdin_file"));
            Err(doc.invalid(Some(file.span()), "task.stdin_file", problem))
        }
        (None, Some(file)) => Ok(TaskStdin::File(doc.resolve(file.get_ref()))),
        (None, None) => Ok(TaskStdin::None),
    }
}

/// All tasks: the [[task]] tables, then the sweep. The count is checked before any is built.
fn build_tasks(
    doc: &Doc,
    tables: &[Spanned<RawTask>],
    sweep: Option<&Spanned<RawSweep>>,
    job_env: &BTreeMap<String, String>,
) -> Result<JobTasks, JobFileError> {
    let range = sweep.map(|sweep| check_range(doc, sweep)).transpose()?;
    check_task_count(doc, tables, sweep, range)?;
    let mut listed = Vec::with_capacity(tables.len());
    for (index, table) in tables.iter().enumerate() {
        listed.push(table_task(doc, index + 1, table, job_env)?);
    }
    check_unique_ids(doc, tables, &listed, range)?;
    let mut tasks = JobTasks::listed(listed);
    if let (Some(sweep), Some(range)) = (sweep, range) {
        tasks.sweep = Some(sweep_template(doc, sweep, range, job_env)?);
    }
    if tasks.is_empty() {
        let problem = format!(
            "no tasks; add a {} or a {}",
            example("sweep"),
            example("task")
        );
        return Err(doc.invalid(None, "", problem));
    }
    Ok(tasks)
}

/// The sweep's (first, last).
fn check_range(doc: &Doc, sweep: &Spanned<RawSweep>) -> Result<(u64, u64), JobFileError> {
    let Some(range) = &sweep.get_ref().range else {
        let problem = format!(
            "missing; a sweep needs one, e.g. {} for i = 1 ..= 200",
            example("sweep.range")
        );
        return Err(doc.invalid(Some(sweep.span()), "sweep.range", problem));
    };
    let [first, last] = *range.get_ref();
    if first > last {
        let problem = format!(
            "first ({first}) is after last ({last}); write {} for i = 1 ..= 200",
            example("sweep.range")
        );
        return Err(doc.invalid(Some(range.span()), "sweep.range", problem));
    }
    Ok((first, last))
}

fn check_task_count(
    doc: &Doc,
    tables: &[Spanned<RawTask>],
    sweep: Option<&Spanned<RawSweep>>,
    range: Option<(u64, u64)>,
) -> Result<(), JobFileError> {
    // Checked: range = [0, 18446744073709551615] has one task more than a u64 counts.
    let sweep_count = range.map_or(Some(0), |(first, last)| (last - first).checked_add(1));
    let total = sweep_count.and_then(|count| count.checked_add(tables.len() as u64));
    if total.is_some_and(|total| total <= MAX_TASKS_PER_JOB) {
        return Ok(());
    }
    let total = total.map_or_else(|| "more than 2^64".to_owned(), |total| total.to_string());
    let problem = format!(
        "{total} tasks in the job, at most {MAX_TASKS_PER_JOB} (MAX_TASKS_PER_JOB); \
         split it into several jobs"
    );
    match sweep.and_then(|sweep| sweep.get_ref().range.as_ref()) {
        Some(range) => Err(doc.invalid(
            Some(range.span()),
            "sweep.range",
            format!("{problem}, e.g. {}", example("sweep.range")),
        )),
        None => Err(doc.invalid(
            Some(tables[MAX_TASKS_PER_JOB as usize].span()),
            "task",
            problem,
        )),
    }
}

fn table_task(
    doc: &Doc,
    position: usize,
    table: &Spanned<RawTask>,
    job_env: &BTreeMap<String, String>,
) -> Result<JobTask, JobFileError> {
    let raw = table.get_ref();
    let id = match &raw.id {
        Some(id) => check_task_id(doc, id)?,
        None => format!("task-{position}"),
    };
    let env = check_env(doc, "task.env", raw.env.as_ref())?;
    if let Some(task_env) = &raw.env {
        check_merged_env_count(doc, "task.env", job_env, &env, task_env.span())?;
    }
    Ok(JobTask {
        id,
        args: check_args(doc, "task.args", raw.args.as_ref())?,
        env: merge_env(job_env, &env, None),
        stdin: table_stdin(doc, raw)?,
        files: check_files(doc, "task.files", raw.files.as_ref())?,
    })
}

fn check_task_id(doc: &Doc, id: &Spanned<String>) -> Result<String, JobFileError> {
    match identifier_problem(id.get_ref(), false) {
        Some(problem) => Err(doc.invalid(
            Some(id.span()),
            "task.id",
            format!("{problem}, e.g. {}", example("task.id")),
        )),
        None => Ok(id.get_ref().clone()),
    }
}

/// Ids are unique across the job: among the tables (default ids included) and against the
/// sweep's `sweep-<i>`, which cannot collide among themselves.
fn check_unique_ids(
    doc: &Doc,
    tables: &[Spanned<RawTask>],
    tasks: &[JobTask],
    range: Option<(u64, u64)>,
) -> Result<(), JobFileError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (index, task) in tasks.iter().enumerate() {
        let span = id_span(&tables[index]);
        if let Some(earlier) = seen.insert(&task.id, index) {
            let problem = format!(
                "{:?} is the id of both {} and {}; ids must be unique, e.g. {}",
                task.id,
                describe_table(doc, &tables[earlier]),
                describe_table(doc, &tables[index]),
                example("task.id")
            );
            return Err(doc.invalid(Some(span), "task.id", problem));
        }
        if let Some(i) = range.and_then(|range| sweep_index(&task.id, range)) {
            let problem = format!(
                "{:?} is the id of both {} and the sweep task for i = {i}; \
                 ids must be unique, e.g. {}",
                task.id,
                describe_table(doc, &tables[index]),
                example("task.id")
            );
            return Err(doc.invalid(Some(span), "task.id", problem));
        }
    }
    Ok(())
}

/// Where a table's id is, or its [[task]] header when the id is the default.
fn id_span(table: &Spanned<RawTask>) -> Range<usize> {
    table
        .get_ref()
        .id
        .as_ref()
        .map_or_else(|| table.span(), |id| id.span())
}

fn describe_table(doc: &Doc, table: &Spanned<RawTask>) -> String {
    let line = line_of(doc.text, table.span().start);
    match table.get_ref().id {
        Some(_) => format!("the [[task]] at line {line}"),
        None => format!("the [[task]] at line {line} (its default id)"),
    }
}

/// The i whose sweep task has this id, if within the range.
fn sweep_index(id: &str, (first, last): (u64, u64)) -> Option<u64> {
    let i: u64 = id.strip_prefix("sweep-")?.parse().ok()?;
    // "sweep-007" parses to 7 but is not the id of sweep task 7.
    (format!("sweep-{i}") == id && (first..=last).contains(&i)).then_some(i)
}

fn substitute(template: &str, i: u64) -> String {
    template.replace("{i}", &i.to_string())
}

/// The sweep's template. Everything is checked on the templates once; substitution cannot make
/// a valid task invalid except by lengthening stdin, checked with the longest i.
fn sweep_template(
    doc: &Doc,
    sweep: &Spanned<RawSweep>,
    (first, last): (u64, u64),
    job_env: &BTreeMap<String, String>,
) -> Result<SweepTemplate, JobFileError> {
    let raw = sweep.get_ref();
    check_template_uses_i(doc, sweep)?;
    let args = check_args(doc, "sweep.args", raw.args.as_ref())?;
    let files = check_files(doc, "sweep.files", raw.files.as_ref())?;
    let env = check_env(doc, "sweep.env", raw.env.as_ref())?;
    if let Some(sweep_env) = &raw.env {
        check_merged_env_count(doc, "sweep.env", job_env, &env, sweep_env.span())?;
    }
    if let Some(stdin) = &raw.stdin {
        check_stdin_text(
            doc,
            "sweep.stdin",
            stdin,
            substitute(stdin.get_ref(), last).len(),
        )?;
    }
    Ok(SweepTemplate {
        first,
        last,
        args,
        job_env: job_env.clone(),
        env,
        stdin: raw.stdin.as_ref().map(|text| text.get_ref().clone()),
        files,
    })
}

fn check_template_uses_i(doc: &Doc, sweep: &Spanned<RawSweep>) -> Result<(), JobFileError> {
    let raw = sweep.get_ref();
    let has_i = |text: &str| text.contains("{i}");
    let in_args = raw
        .args
        .as_ref()
        .is_some_and(|args| args.get_ref().iter().any(|arg| has_i(arg)));
    let in_stdin = raw
        .stdin
        .as_ref()
        .is_some_and(|stdin| has_i(stdin.get_ref()));
    let in_env = raw
        .env
        .as_ref()
        .is_some_and(|env| env.get_ref().values().any(|value| has_i(value.get_ref())));
    if in_args || in_stdin || in_env {
        return Ok(());
    }
    let problem = format!(
        "\"{{i}}\" appears in none of args, stdin and env, so every task would be the same; \
         e.g. {}",
        example("sweep.args")
    );
    Err(doc.invalid(Some(sweep.span()), "sweep", problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"name = "pi-sweep"
module = "pi.wasm"
replication = 2
quorum = 2
[limits]
fuel = 10_000_000_000
memory_mb = 64
timeout_s = 60
[sweep]
args = ["{i}000"]
range = [1, 200]          # i = 1 ..= 200
"#;

    /// A job header to put tasks under: `name` and `module` on lines 1 and 2.
    const HEAD: &str = "name = \"j\"\nmodule = \"m.wasm\"\n";

    fn ok(text: &str) -> JobSpec {
        parse(text, Path::new("/jobs/job.toml")).unwrap_or_else(|error| panic!("{error}"))
    }

    /// The one-line message for an invalid job file.
    fn error(text: &str) -> String {
        let error = parse(text, Path::new("job.toml")).expect_err("the job file should be refused");
        let message = error.to_string();
        assert!(!message.contains('\n'), "not one line: {message:?}");
        message
    }

    fn check(text: &str, expected: &str) {
        assert_eq!(error(text), expected);
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn with_head(rest: &str) -> String {
        format!("{HEAD}{rest}")
    }

    #[test]
    fn example_job_gives_200_sweep_tasks() {
        let job = ok(EXAMPLE);
        assert_eq!(job.name, "pi-sweep");
        assert_eq!(job.module, PathBuf::from("/jobs/pi.wasm"));
        assert_eq!(job.tasks.len(), 200);
        let first = &job.tasks.get(0).unwrap();
        assert_eq!(
            (first.id.as_str(), first.args.clone()),
            ("sweep-1", vec!["1000".to_owned()])
        );
        let last = &job.tasks.get(199).unwrap();
        assert_eq!(
            (last.id.as_str(), last.args.clone()),
            ("sweep-200", vec!["200000".to_owned()])
        );
        assert_eq!(
            (first.stdin.clone(), first.env.clone(), first.files.clone()),
            (TaskStdin::None, vec![], vec![])
        );
    }

    #[test]
    fn the_audit_rate_is_a_share_and_a_lan_relaxes_networks_with_hosts() {
        check(
            &with_head("audit_rate = 1.5\n[[task]]\n"),
            "job.toml:3: audit_rate: must be a share between 0 and 1 (0.03 re-runs 3% of accepted tasks on this machine), e.g. audit_rate = 0.03",
        );
        check(
            &with_head("audit_rate = -0.1\n[[task]]\n"),
            "job.toml:3: audit_rate: must be a share between 0 and 1 (0.03 re-runs 3% of accepted tasks on this machine), e.g. audit_rate = 0.03",
        );
        let job = ok(&with_head(
            "audit_rate = 0.5\ndistinct_hosts = false\n[[task]]\n",
        ));
        assert_eq!((job.audit_rate, job.distinct_networks), (0.5, false));
        let job = ok(&with_head("distinct_networks = false\n[[task]]\n"));
        assert_eq!((job.distinct_hosts, job.distinct_networks), (true, false));
    }

    #[test]
    fn limits_convert_to_wire_units() {
        let wire = ok(EXAMPLE).limits.to_wire();
        assert_eq!(wire.fuel, 10_000_000_000);
        assert_eq!(wire.memory_bytes, 64 * 1024 * 1024);
        assert_eq!(wire.timeout_ms, 60_000);
        assert_eq!((wire.stdout_max_bytes, wire.stderr_max_bytes), (0, 0));
    }

    #[test]
    fn absent_fields_take_their_defaults() {
        let job = ok(&with_head("[[task]]\n"));
        let counts = (
            job.replication,
            job.quorum,
            job.max_replicas,
            job.distinct_hosts,
            job.distinct_networks,
            job.audit_rate,
        );
        assert_eq!(
            counts,
            (2, 2, 5, true, true, crate::limits::DEFAULT_AUDIT_RATE)
        );
        assert_eq!(job.limits, JobLimits::default());
        assert_eq!(job.limits.to_wire(), pb::TaskLimits::default());
        let task = JobTask {
            id: "task-1".into(),
            args: vec![],
            env: vec![],
            stdin: TaskStdin::None,
            files: vec![],
        };
        assert_eq!(job.tasks.iter().collect::<Vec<_>>(), vec![task]);
    }

    #[test]
    fn quorum_may_exceed_replication() {
        let job = ok(&with_head(
            "replication = 1\nquorum = 3\nmax_replicas = 3\ndistinct_hosts = false\n[[task]]\n",
        ));
        assert_eq!(
            (
                job.replication,
                job.quorum,
                job.max_replicas,
                job.distinct_hosts
            ),
            (1, 3, 3, false)
        );
    }

    #[test]
    fn tables_come_before_the_sweep_with_env_stdin_and_files() {
        let job = ok(&with_head(
            r#"env = { MODE = "slow", LANG = "C" }
[[task]]
id = "small"
args = ["1000", "7"]
stdin = "literal"
files = ["data/a.txt", "/abs/b.txt"]
env = { MODE = "fast" }
[[task]]
stdin_file = "in/data.txt"
[sweep]
range = [5, 6]
stdin = "seed {i}"
files = ["shared.txt"]
env = { SEED = "{i}{i}", MODE = "sweep" }
"#,
        ));
        let ids: Vec<String> = job.tasks.iter().map(|task| task.id).collect();
        assert_eq!(ids, ["small", "task-2", "sweep-5", "sweep-6"]);
        let [small, second, sweep5, sweep6] = &job.tasks.iter().collect::<Vec<_>>()[..] else {
            unreachable!()
        };
        assert_eq!(small.env, pairs(&[("LANG", "C"), ("MODE", "fast")]));
        assert_eq!(small.stdin, TaskStdin::Text("literal".into()));
        assert_eq!(
            small.files,
            [
                PathBuf::from("/jobs/data/a.txt"),
                PathBuf::from("/abs/b.txt")
            ]
        );
        assert_eq!(second.env, pairs(&[("LANG", "C"), ("MODE", "slow")]));
        assert_eq!(second.stdin, TaskStdin::File("/jobs/in/data.txt".into()));
        assert!(second.args.is_empty());
        assert_eq!(
            sweep5.env,
            pairs(&[("LANG", "C"), ("MODE", "sweep"), ("SEED", "55")])
        );
        assert_eq!(sweep6.stdin, TaskStdin::Text("seed 6".into()));
        assert_eq!(sweep6.files, [PathBuf::from("/jobs/shared.txt")]);
    }

    #[test]
    fn job_env_values_are_not_templates() {
        let job = ok(&with_head(
            "env = { RAW = \"{i}\" }\n[sweep]\nargs = [\"{i}\"]\nrange = [3, 3]\n",
        ));
        assert_eq!(
            job.tasks.get(0).unwrap().env,
            [("RAW".to_owned(), "{i}".to_owned())]
        );
        assert_eq!(job.tasks.get(0).unwrap().args, ["3"]);
    }

    #[test]
    fn a_bare_file_name_resolves_against_the_current_directory() {
        let job = parse(&with_head("[[task]]\n"), Path::new("job.toml")).unwrap();
        assert_eq!(job.module, PathBuf::from("./m.wasm"));
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(load(&path).unwrap().module, dir.path().join("pi.wasm"));
        let missing = dir.path().join("missing.toml");
        let error = anyhow::Error::from(load(&missing).unwrap_err());
        // On Linux: "cannot read job file /tmp/.../missing.toml: No such file or directory
        // (os error 2)", the cause named once.
        let cause = std::fs::read(&missing).unwrap_err();
        let expected = format!("cannot read job file {}: {cause}", missing.display());
        assert_eq!(format!("{error:#}"), expected);
    }

    #[test]
    fn invalid_toml_names_the_line() {
        check(
            &with_head("[[task]]\nargs = [\"a\"\n"),
            "job.toml:4: invalid TOML: unclosed array, expected \"]\"",
        );
        check(
            &with_head("name = \"again\"\n"),
            "job.toml:3: invalid TOML: duplicate key",
        );
    }

    #[test]
    fn unknown_fields_list_the_known_ones_and_show_the_closest() {
        check(
            "name = \"j\"\nmodul = \"m.wasm\"\n",
            "job.toml:2: unknown field \"modul\"; expected one of name, module, replication, quorum, \
             max_replicas, distinct_hosts, distinct_networks, audit_rate, env, outputs, limits, task, sweep (e.g. module = \"pi.wasm\")",
        );
        check(
            &with_head("[limits]\nfeul = 1\n"),
            "job.toml:4: limits: unknown field \"feul\"; expected one of cpu_s, fuel, memory_mb, \
             timeout_s, stdout_mb, stderr_mb, output_mb, output_files (e.g. fuel = 10_000_000_000)",
        );
    }

    #[test]
    fn field_lists_match_the_structs() {
        // Each list must name exactly the fields serde accepts, or the hints would mislead.
        let tables = [
            ("", JOB_FIELDS),
            ("[limits]\n", LIMITS_FIELDS),
            ("[[task]]\n", TASK_FIELDS),
            ("[sweep]\n", SWEEP_FIELDS),
        ];
        for (header, fields) in tables {
            let message = error(&format!("{header}zzz = 1\n"));
            assert!(
                message.contains(&format!("expected one of {} (", fields.join(", "))),
                "{message}"
            );
            for field in fields {
                let message = error(&format!("{header}{field} = 1\n"));
                assert!(!message.contains("unknown field"), "{field}: {message}");
            }
        }
    }

    #[test]
    fn wrong_types_name_the_field_and_show_an_example() {
        check(
            &with_head("replication = \"two\"\n"),
            "job.toml:3: replication: invalid type: string \"two\", expected u32, e.g. replication = 2",
        );
        check(
            &with_head("[[task]]\nargs = [\"a\",\n  3]\n"),
            "job.toml:5: task.args: invalid type: integer \"3\", expected a string, e.g. args = [\"1000\", \"7\"]",
        );
        check(
            &with_head("[sweep]\nrange = [1]\n"),
            "job.toml:4: sweep.range: invalid length 1, expected an array of length 2, e.g. range = [1, 200]",
        );
        check(
            &with_head("[task]\nid = \"x\"\n"),
            "job.toml:3: task: invalid type: map, expected a sequence, e.g. [[task]] with args = [\"1000\", \"7\"]",
        );
        check(
            &with_head("env = { A = 1 }\n"),
            "job.toml:3: env.A: invalid type: integer \"1\", expected a string, e.g. env = { MODE = \"fast\" }",
        );
    }

    #[test]
    fn name_is_required_and_checked() {
        check(
            "module = \"m.wasm\"\n[[task]]\n",
            "job.toml: name: missing; every job file needs one, e.g. name = \"pi-sweep\"",
        );
        check(
            "name = \"-x\"\n",
            "job.toml:1: name: \"-x\" must not start with \"-\", e.g. name = \"pi-sweep\"",
        );
        check(
            "name = \"a\\nb\"\n",
            "job.toml:1: name: \"a\\nb\" has '\\n'; use only 1 to 64 of A-Z a-z 0-9 . _ -, e.g. name = \"pi-sweep\"",
        );
        let long = format!("name = \"{}\"\n", "a".repeat(65));
        assert!(
            error(&long).starts_with("job.toml:1: name: \"aaaa"),
            "{}",
            error(&long)
        );
    }

    #[test]
    fn module_is_required_and_not_empty() {
        check(
            "name = \"j\"\n[[task]]\n",
            "job.toml: module: missing; every job file needs one, e.g. module = \"pi.wasm\"",
        );
        check(
            "name = \"j\"\nmodule = \"\"\n",
            "job.toml:2: module: is empty, e.g. module = \"pi.wasm\"",
        );
    }

    #[test]
    fn replica_counts_stay_within_max_replicas() {
        check(
            &with_head("replication = 6\n[[task]]\n"),
            "job.toml:3: replication: must be between 1 and max_replicas (5, the default), e.g. replication = 2",
        );
        check(
            &with_head("quorum = 0\n[[task]]\n"),
            "job.toml:3: quorum: must be between 1 and max_replicas (5, the default), e.g. quorum = 2",
        );
        check(
            &with_head("max_replicas = 3\nquorum = 4\n"),
            "job.toml:4: quorum: must be between 1 and max_replicas (3), e.g. quorum = 2",
        );
        check(
            &with_head("max_replicas = 17\n"),
            "job.toml:3: max_replicas: must be between 1 and 16 (MAX_REPLICAS), e.g. max_replicas = 5",
        );
        check(
            &with_head("max_replicas = 1\n"),
            "job.toml:3: max_replicas: 1 is below the default replication (2); set replication = 1 as well, or raise max_replicas, e.g. max_replicas = 5",
        );
    }

    #[test]
    fn limits_are_at_least_one_and_under_the_worker_ceilings() {
        check(
            &with_head("[limits]\nfuel = 0\n"),
            "job.toml:4: limits.fuel: must be at least 1 (leave it out for the worker's default), e.g. fuel = 10_000_000_000",
        );
        check(
            &with_head("[limits]\nfuel = 604_800_000_000_001\n"),
            "job.toml:4: limits.fuel: 604800000000001 is above the worker's ceiling MAX_FUEL (604800000000000), e.g. fuel = 10_000_000_000",
        );
        check(
            &with_head("[limits]\ncpu_s = 86401\n"),
            "job.toml:4: limits.cpu_s: 86401 is above the worker's ceiling MAX_FUEL / FUEL_PER_SECOND (86400), e.g. cpu_s = 10",
        );
        check(
            &with_head("[limits]\nfuel = 5\ncpu_s = 1\n"),
            "job.toml:5: limits.cpu_s: give fuel or cpu_s, not both (cpu_s is fuel in seconds), e.g. cpu_s = 10",
        );
        check(
            &with_head("[limits]\nmemory_mb = 4097\n"),
            "job.toml:4: limits.memory_mb: 4097 is above the worker's ceiling MAX_MEMORY_BYTES (4096), e.g. memory_mb = 64",
        );
        check(
            &with_head("limits = { timeout_s = 86401 }\n"),
            "job.toml:3: limits.timeout_s: 86401 is above the worker's ceiling MAX_TIMEOUT (86400), e.g. timeout_s = 60",
        );
        check(
            &with_head("[limits]\noutput_mb = 1025\n"),
            "job.toml:4: limits.output_mb: 1025 is above the worker's ceiling MAX_OUTPUT_MAX_BYTES (1024), e.g. output_mb = 64",
        );
        check(
            &with_head("[limits]\noutput_files = 1025\n"),
            "job.toml:4: limits.output_files: 1025 is above the worker's ceiling MAX_OUTPUT_MAX_FILES (1024), e.g. output_files = 64",
        );
        check(
            &with_head("[limits]\noutput_files = 0\n"),
            "job.toml:4: limits.output_files: must be at least 1 (leave it out for the worker's default), e.g. output_files = 64",
        );
        check(
            &with_head("[limits]\nstdout_mb = 17\n"),
            "job.toml:4: limits.stdout_mb: 17 is above the worker's ceiling MAX_STDOUT_MAX_BYTES (16), e.g. stdout_mb = 4",
        );
        let job = ok(&with_head(
            "[limits]\nmemory_mb = 4096\ntimeout_s = 86400\nfuel = 10_000_000_000_000\noutput_mb = 1024\noutput_files = 1024\n[[task]]\n",
        ));
        let wire = job.limits.to_wire();
        assert_eq!(wire.memory_bytes, limits::MAX_MEMORY_BYTES);
        assert_eq!(wire.output_max_bytes, limits::MAX_OUTPUT_MAX_BYTES);
        assert_eq!(wire.output_max_files, limits::MAX_OUTPUT_MAX_FILES);
    }

    #[test]
    fn task_ids_are_checked_and_unique_across_the_job() {
        check(
            &with_head("[[task]]\nid = \".hidden\"\n"),
            "job.toml:4: task.id: \".hidden\" must not start with \".\", e.g. id = \"small\"",
        );
        check(
            &with_head("[[task]]\nid = \"a\"\n[[task]]\nid = \"a\"\n"),
            "job.toml:6: task.id: \"a\" is the id of both the [[task]] at line 3 and the [[task]] at line 5; ids must be unique, e.g. id = \"small\"",
        );
        check(
            &with_head("[[task]]\n[[task]]\nid = \"task-1\"\n"),
            "job.toml:5: task.id: \"task-1\" is the id of both the [[task]] at line 3 (its default id) and the [[task]] at line 4; ids must be unique, e.g. id = \"small\"",
        );
        check(
            &with_head("[[task]]\nid = \"sweep-7\"\n[sweep]\nargs = [\"{i}\"]\nrange = [1, 9]\n"),
            "job.toml:4: task.id: \"sweep-7\" is the id of both the [[task]] at line 3 and the sweep task for i = 7; ids must be unique, e.g. id = \"small\"",
        );
        ok(&with_head(
            "[[task]]\nid = \"sweep-07\"\n[[task]]\nid = \"sweep-10\"\n[sweep]\nargs = [\"{i}\"]\nrange = [1, 9]\n",
        ));
    }

    #[test]
    fn the_sweep_range_is_ordered_and_the_job_bounded() {
        check(
            &with_head("[sweep]\nargs = [\"{i}\"]\nrange = [10, 1]\n"),
            "job.toml:5: sweep.range: first (10) is after last (1); write range = [1, 200] for i = 1 ..= 200",
        );
        check(
            &with_head("[sweep]\nargs = [\"{i}\"]\n"),
            "job.toml:3: sweep.range: missing; a sweep needs one, e.g. range = [1, 200] for i = 1 ..= 200",
        );
        check(
            &with_head("[[task]]\n[sweep]\nargs = [\"{i}\"]\nrange = [1, 1_000_000]\n"),
            "job.toml:6: sweep.range: 1000001 tasks in the job, at most 1000000 (MAX_TASKS_PER_JOB); split it into several jobs, e.g. range = [1, 200]",
        );
        check(
            &with_head("[sweep]\nargs = [\"{i}\"]\nrange = [0, 18446744073709551615]\n"),
            "job.toml:5: sweep.range: more than 2^64 tasks in the job, at most 1000000 (MAX_TASKS_PER_JOB); split it into several jobs, e.g. range = [1, 200]",
        );
        // Exactly MAX_TASKS_PER_JOB is allowed. Checked below `parse`: building a million
        // tasks would cost a unit test some 350 MB.
        let text = with_head("[[task]]\n[sweep]\nrange = [2, 1_000_000]\n");
        let raw: RawJob = toml::from_str(&text).unwrap();
        let doc = Doc::new(&text, Path::new("job.toml"));
        let range = raw
            .sweep
            .as_ref()
            .map(|sweep| check_range(&doc, sweep).unwrap());
        assert!(check_task_count(&doc, &raw.task, raw.sweep.as_ref(), range).is_ok());
    }

    #[test]
    fn a_sweep_must_vary_with_i() {
        check(
            &with_head("[sweep]\nargs = [\"{x}\"]\nstdin = \"same\"\nrange = [1, 2]\n"),
            "job.toml:3: sweep: \"{i}\" appears in none of args, stdin and env, so every task would be the same; e.g. args = [\"{i}000\"]",
        );
        assert_eq!(
            ok(&with_head(
                "[sweep]\nenv = { N = \"{i}\" }\nrange = [1, 2]\n"
            ))
            .tasks
            .get(1)
            .unwrap()
            .env,
            [("N".to_owned(), "2".to_owned())]
        );
    }

    #[test]
    fn input_files_need_distinct_valid_names() {
        check(
            &with_head("[[task]]\nfiles = [\"data/..\"]\n"),
            "job.toml:4: task.files: \"data/..\" does not end in a file name, e.g. files = [\"data/a.txt\", \"data/b.txt\"]",
        );
        check(
            &with_head("[[task]]\nfiles = [\"a.txt\", \"b/a.txt\"]\n"),
            "job.toml:4: task.files: \"a.txt\" and \"b/a.txt\" would both be /input/a.txt; rename one, e.g. files = [\"data/a.txt\", \"data/b.txt\"]",
        );
        let refused = error(&with_head(
            "[sweep]\nargs = [\"{i}\"]\nrange = [1, 2]\nfiles = [\"bad\\\\name\"]\n",
        ));
        assert!(refused.starts_with("job.toml:6: sweep.files: \"bad\\\\name\": input file name \"bad\\\\name\" is not a single file name"), "{refused}");
        let files = |count: usize| {
            let names: Vec<String> = (0..count).map(|n| format!("\"f{n}\"")).collect();
            with_head(&format!("[[task]]\nfiles = [{}]\n", names.join(", ")))
        };
        assert_eq!(
            ok(&files(limits::MAX_INPUT_FILES))
                .tasks
                .get(0)
                .unwrap()
                .files
                .len(),
            1024
        );
        check(
            &files(limits::MAX_INPUT_FILES + 1),
            "job.toml:4: task.files: 1025 files, at most 1024 (MAX_INPUT_FILES), e.g. files = [\"data/a.txt\", \"data/b.txt\"]",
        );
    }

    #[test]
    fn args_and_env_are_bounded_and_env_names_valid() {
        let args = vec!["\"a\""; limits::MAX_ARGS + 1].join(", ");
        check(
            &with_head(&format!("[[task]]\nargs = [{args}]\n")),
            "job.toml:4: task.args: 4097 args, at most 4096 (MAX_ARGS), e.g. args = [\"1000\", \"7\"]",
        );
        check(
            &with_head("[[task]]\nenv = { \"A=B\" = \"x\" }\n"),
            "job.toml:4: task.env: name \"A=B\" is empty or has '=' or NUL, e.g. env = { MODE = \"fast\" }",
        );
        check(
            &with_head("env = { \"\" = \"x\" }\n"),
            "job.toml:3: env: name \"\" is empty or has '=' or NUL, e.g. env = { MODE = \"fast\" }",
        );
        let job_env: Vec<String> = (0..limits::MAX_ENV)
            .map(|n| format!("J{n} = \"v\""))
            .collect();
        let text = with_head(&format!(
            "env = {{ {} }}\n[[task]]\nenv = {{ J0 = \"w\", T = \"v\" }}\n",
            job_env.join(", ")
        ));
        check(
            &text,
            "job.toml:5: task.env: 1025 entries, at most 1024 (MAX_ENV), e.g. env = { MODE = \"fast\" }",
        );
    }

    #[test]
    fn stdin_is_text_or_file_not_both() {
        check(
            &with_head("[[task]]\nstdin = \"x\"\nstdin_file = \"in.txt\"\n"),
            "job.toml:5: task.stdin_file: stdin is given too; keep one of them, e.g. stdin_file = \"in/data.txt\"",
        );
        let text = |stdin: &str| with_head(&format!("[[task]]\nstdin = \"{stdin}\"\n"));
        ok(&text(&"x".repeat(limits::MAX_STDIN_BYTES)));
        check(
            &text(&"x".repeat(limits::MAX_STDIN_BYTES + 1)),
            "job.toml:4: task.stdin: 4194305 bytes, at most 4194304 (MAX_STDIN_BYTES); use a file instead, e.g. stdin_file = \"in/data.txt\"",
        );
    }

    #[test]
    fn sweep_stdin_is_bounded_after_substituting_the_largest_i() {
        // Two bytes short of the limit, "{i}" may become a two-digit number but not three.
        let template = format!("{}{{i}}", "x".repeat(limits::MAX_STDIN_BYTES - 2));
        let sweep = |range: &str| {
            with_head(&format!(
                "[sweep]\nstdin = \"{template}\"\nrange = {range}\n"
            ))
        };
        assert_eq!(ok(&sweep("[98, 99]")).tasks.len(), 2);
        check(
            &sweep("[99, 100]"),
            "job.toml:4: sweep.stdin: 4194305 bytes, at most 4194304 (MAX_STDIN_BYTES); use a file instead, e.g. files = [\"data/a.txt\", \"data/b.txt\"]",
        );
    }

    #[test]
    fn a_job_needs_a_task() {
        check(
            HEAD,
            "job.toml: no tasks; add a [sweep] with args = [\"{i}000\"] and range = [1, 200] or a [[task]] with args = [\"1000\", \"7\"]",
        );
    }

    #[test]
    fn every_named_file_is_listed_once_per_mention_with_its_field_and_line() {
        // What the input checks go through: a sweep's files are one mention, not one per task,
        // and [sweep] written before [[task]] keeps its place.
        let job = ok(r#"name = "j"
module = "../m.wasm"
[sweep]
args = ["{i}"]
range = [1, 500]
files = ["/etc/passwd"]
[[task]]
stdin_file = "in.txt"
files = ["a.txt", "sub/b.txt"]
"#);
        let listed: Vec<(FileRole, &str, usize, &str, &Path)> = job
            .paths
            .iter()
            .map(|p| (p.role, p.field, p.line, p.given.as_str(), p.path.as_path()))
            .collect();
        assert_eq!(
            listed,
            [
                (
                    FileRole::Module,
                    "module",
                    2,
                    "../m.wasm",
                    Path::new("/jobs/../m.wasm")
                ),
                (
                    FileRole::InputFile,
                    "sweep.files",
                    6,
                    "/etc/passwd",
                    Path::new("/etc/passwd")
                ),
                (
                    FileRole::StdinFile,
                    "task.stdin_file",
                    8,
                    "in.txt",
                    Path::new("/jobs/in.txt")
                ),
                (
                    FileRole::InputFile,
                    "task.files",
                    9,
                    "a.txt",
                    Path::new("/jobs/a.txt")
                ),
                (
                    FileRole::InputFile,
                    "task.files",
                    9,
                    "sub/b.txt",
                    Path::new("/jobs/sub/b.txt")
                ),
            ]
        );
        // Each listed path is the one the tasks hold.
        assert_eq!(job.tasks.len(), 501);
        assert_eq!(
            job.tasks.get(0).unwrap().stdin,
            TaskStdin::File("/jobs/in.txt".into())
        );
        assert_eq!(
            job.tasks.get(1).unwrap().files,
            [PathBuf::from("/etc/passwd")]
        );
    }

    #[test]
    fn quorum_1_is_warned_about_with_the_audit_rates_that_still_apply() {
        assert_eq!(
            ok(&with_head("[[task]]\n")).warnings(),
            Vec::<String>::new()
        );
        let warnings = ok(&with_head(
            "replication = 1\nquorum = 1\naudit_rate = 0.005\n[[task]]\n",
        ))
        .warnings();
        assert_eq!(
            warnings,
            [
                "quorum = 1: each task is accepted on one worker's receipt, unchecked by any other \
              worker; only audits check it (this machine re-runs 50% of the tasks accepted from \
              keys on probation, 0.5% (audit_rate) of those from established keys, none from \
              --trusted keys); quorum = 2 needs two workers to agree"
            ]
        );
        // An audit rate above the probation rate applies to keys on probation too.
        let warnings = ok(&with_head("quorum = 1\naudit_rate = 0.8\n[[task]]\n")).warnings();
        assert!(
            warnings[0].contains(
                "re-runs 80% of the tasks accepted from keys on probation, 80% (audit_rate)"
            ),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn a_newline_in_the_path_does_not_break_the_line() {
        let error = parse("name = 1\n", Path::new("odd\nname.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "odd\\nname.toml:1: name: invalid type: integer \"1\", expected a string, e.g. name = \"pi-sweep\""
        );
    }
}
