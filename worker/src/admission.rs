//! Decides whether a signed task may run here, in the order `peergrid.proto` specifies, and turns
//! an accepted manifest into the sandbox's [`TaskSpec`]. Pure: no I/O, the clock is passed in.

use std::collections::HashSet;
use std::time::Duration;

use peergrid_proto::signing::verify_task;
use peergrid_proto::{ContentHash, PublicKey, pb};
use tonic::Code;

use crate::limits;
use crate::sandbox::{Limits, TaskSpec};

/// Which submitter keys may run tasks here: the listed ones, or (only when the donor asks for it
/// with `--trust-any-key`) any key at all.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    keys: HashSet<PublicKey>,
    any: bool,
}

impl TrustPolicy {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            any: false,
        }
    }

    /// Runs tasks signed by any key. Signatures are still checked: a task must be signed, just
    /// not by a listed key.
    pub fn anyone() -> Self {
        Self {
            keys: HashSet::new(),
            any: true,
        }
    }

    pub fn trusts(&self, key: &PublicKey) -> bool {
        self.any || self.keys.contains(key)
    }

    pub fn is_empty(&self) -> bool {
        !self.any && self.keys.is_empty()
    }
}

/// A task that passed every check but the blob and slot checks, which need the worker's state.
#[derive(Debug, Clone)]
pub struct AdmittedTask {
    pub digest: ContentHash,
    pub submitter: PublicKey,
    pub module_hash: ContentHash,
    /// Input files: (name under /input, content hash).
    pub files: Vec<(String, ContentHash)>,
    pub job_id: String,
    pub task_id: String,
    /// The spec, with `inputs` still empty: the caller resolves the files to paths.
    pub spec: TaskSpec,
}

/// Why a task was refused: a gRPC status code and a message for the submitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
    /// The blobs the task needs and the worker lacks (`FAILED_PRECONDITION` only; empty
    /// otherwise), so a client can upload them without parsing the message.
    pub missing_blobs: Vec<ContentHash>,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            missing_blobs: Vec::new(),
        }
    }

    /// `FAILED_PRECONDITION`: the task needs `missing` (module first, then inputs), which this
    /// worker does not hold.
    pub fn missing_blobs(missing: Vec<ContentHash>) -> Self {
        let list = missing
            .iter()
            .map(ContentHash::to_hex)
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            code: Code::FailedPrecondition,
            message: format!("missing blobs, upload them with PutBlob and retry: {list}"),
            missing_blobs: missing,
        }
    }

    /// The refusal as an `Execute` answer carries it.
    pub fn to_wire(&self) -> pb::TaskRefusal {
        pb::TaskRefusal {
            code: self.code as i32,
            message: self.message.clone(),
            missing_blobs: self
                .missing_blobs
                .iter()
                .map(|hash| hash.to_vec().into())
                .collect(),
        }
    }
}

impl From<Refusal> for tonic::Status {
    fn from(refusal: Refusal) -> Self {
        tonic::Status::new(refusal.code, refusal.message)
    }
}

/// Checks signature, trust, expiry, fields and limits, in that order.
pub fn admit(
    signed: &pb::SignedTask,
    trust: &TrustPolicy,
    now_unix_s: u64,
) -> Result<AdmittedTask, Refusal> {
    let verified = verify_task(signed).map_err(|error| {
        let code = if error.is_bad_signature() {
            Code::Unauthenticated
        } else {
            Code::InvalidArgument
        };
        Refusal::new(code, error.to_string())
    })?;
    if !trust.trusts(&verified.submitter) {
        return Err(Refusal::new(
            Code::PermissionDenied,
            format!(
                "submitter key {} is not trusted by this worker (start it with --trust {}, or --trust-any-key to run tasks from any key)",
                verified.submitter.short(),
                verified.submitter
            ),
        ));
    }
    let manifest = &verified.manifest;
    if manifest.expires_at_unix_s == 0 {
        return Err(invalid("the manifest has no expiry (expires_at_unix_s)"));
    }
    if manifest.expires_at_unix_s <= now_unix_s {
        return Err(Refusal::new(
            Code::DeadlineExceeded,
            format!(
                "task expired {} s ago (expires_at_unix_s {}, worker clock {now_unix_s})",
                now_unix_s - manifest.expires_at_unix_s,
                manifest.expires_at_unix_s
            ),
        ));
    }
    let program = &verified.program;
    check_fields(manifest, program)?;
    let limits = resolve_limits(manifest.limits.as_ref())?;
    let files = program
        .files
        .iter()
        .map(|file| {
            // verify_task checked the hash lengths.
            let hash = ContentHash::from_slice(&file.hash).expect("checked by verify_task");
            (file.name.clone(), hash)
        })
        .collect();
    Ok(AdmittedTask {
        digest: verified.digest,
        submitter: verified.submitter,
        module_hash: verified.module_hash,
        files,
        job_id: manifest.job_id.clone(),
        task_id: manifest.task_id.clone(),
        spec: TaskSpec {
            args: program.args.clone(),
            env: program
                .env
                .iter()
                .map(|var| (var.name.clone(), var.value.clone()))
                .collect(),
            stdin: program.stdin.clone(),
            inputs: Vec::new(),
            limits,
            random_seed: *verified.program_digest.as_bytes(),
            outputs: program.outputs,
        },
    })
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::new(Code::InvalidArgument, message)
}

fn check_fields(manifest: &pb::TaskManifest, program: &pb::Program) -> Result<(), Refusal> {
    let too_many = |what: &str, count: usize, max: usize| {
        invalid(format!(
            "{count} {what} in the manifest, at most {max} allowed"
        ))
    };
    if program.args.len() > limits::MAX_ARGS {
        return Err(too_many("args", program.args.len(), limits::MAX_ARGS));
    }
    if program.env.len() > limits::MAX_ENV {
        return Err(too_many("env vars", program.env.len(), limits::MAX_ENV));
    }
    if program.files.len() > limits::MAX_INPUT_FILES {
        return Err(too_many(
            "input files",
            program.files.len(),
            limits::MAX_INPUT_FILES,
        ));
    }
    if program.stdin.len() > limits::MAX_STDIN_BYTES {
        return Err(too_many(
            "stdin bytes",
            program.stdin.len(),
            limits::MAX_STDIN_BYTES,
        ));
    }
    for (what, id) in [("job_id", &manifest.job_id), ("task_id", &manifest.task_id)] {
        if id.len() > limits::MAX_ID_BYTES {
            return Err(invalid(format!(
                "{what} is {} bytes, at most {} allowed",
                id.len(),
                limits::MAX_ID_BYTES
            )));
        }
    }
    for var in &program.env {
        if var.name.is_empty() || var.name.contains('=') || var.name.contains('\0') {
            return Err(invalid(format!(
                "env var name {:?} is empty or has '=' or NUL",
                var.name
            )));
        }
    }
    let mut names = HashSet::new();
    for file in &program.files {
        check_file_name(&file.name)?;
        if !names.insert(file.name.as_str()) {
            return Err(invalid(format!(
                "input file name {:?} appears twice",
                file.name
            )));
        }
    }
    Ok(())
}

/// An input file name is one path component: no separators, no `.` or `..`, no NUL.
pub fn check_file_name(name: &str) -> Result<(), Refusal> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.contains(['/', '\\', '\0']);
    if bad {
        return Err(invalid(format!(
            "input file name {name:?} is not a single file name (no '/', not '.' or '..', 1 to 255 bytes)"
        )));
    }
    Ok(())
}

/// Fills defaults for zero fields and refuses limits above this worker's ceilings.
pub fn resolve_limits(asked: Option<&pb::TaskLimits>) -> Result<Limits, Refusal> {
    let asked = asked.cloned().unwrap_or_default();
    let pick = |what: &str, value: u64, default: u64, max: u64| {
        let value = if value == 0 { default } else { value };
        if value > max {
            return Err(Refusal::new(
                Code::OutOfRange,
                format!("{what} {value} is above this worker's ceiling of {max}"),
            ));
        }
        Ok(value)
    };
    Ok(Limits {
        fuel: pick("fuel", asked.fuel, limits::DEFAULT_FUEL, limits::MAX_FUEL)?,
        memory_bytes: pick(
            "memory_bytes",
            asked.memory_bytes,
            limits::DEFAULT_MEMORY_BYTES,
            limits::MAX_MEMORY_BYTES,
        )?,
        timeout: Duration::from_millis(pick(
            "timeout_ms",
            asked.timeout_ms,
            limits::DEFAULT_TIMEOUT.as_millis() as u64,
            limits::MAX_TIMEOUT.as_millis() as u64,
        )?),
        stdout_max_bytes: pick(
            "stdout_max_bytes",
            asked.stdout_max_bytes,
            limits::DEFAULT_STDOUT_MAX_BYTES,
            limits::MAX_STDOUT_MAX_BYTES,
        )?,
        stderr_max_bytes: pick(
            "stderr_max_bytes",
            asked.stderr_max_bytes,
            limits::DEFAULT_STDERR_MAX_BYTES,
            limits::MAX_STDERR_MAX_BYTES,
        )?,
        output_max_bytes: pick(
            "output_max_bytes",
            asked.output_max_bytes,
            limits::DEFAULT_OUTPUT_MAX_BYTES,
            limits::MAX_OUTPUT_MAX_BYTES,
        )?,
        output_max_files: pick(
            "output_max_files",
            u64::from(asked.output_max_files),
            u64::from(limits::DEFAULT_OUTPUT_MAX_FILES),
            u64::from(limits::MAX_OUTPUT_MAX_FILES),
        )? as u32,
    })
}

/// The ceilings, as `NodeInfo` advertises them.
pub fn max_limits() -> pb::TaskLimits {
    pb::TaskLimits {
        fuel: limits::MAX_FUEL,
        memory_bytes: limits::MAX_MEMORY_BYTES,
        timeout_ms: limits::MAX_TIMEOUT.as_millis() as u64,
        stdout_max_bytes: limits::MAX_STDOUT_MAX_BYTES,
        stderr_max_bytes: limits::MAX_STDERR_MAX_BYTES,
        output_max_bytes: limits::MAX_OUTPUT_MAX_BYTES,
        output_max_files: limits::MAX_OUTPUT_MAX_FILES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peergrid_proto::Identity;
    use peergrid_proto::signing::sign_task;
    use prost::Message;

    const NOW: u64 = 1_800_000_000;

    fn manifest_of(program: pb::Program) -> pb::TaskManifest {
        pb::TaskManifest {
            program: program.encode_to_vec().into(),
            expires_at_unix_s: NOW + 60,
            ..Default::default()
        }
    }

    fn program() -> pb::Program {
        pb::Program {
            module_hash: ContentHash::of(b"module").to_vec().into(),
            args: vec!["10".into()],
            ..Default::default()
        }
    }

    fn manifest() -> pb::TaskManifest {
        manifest_of(program())
    }

    fn check(manifest: pb::TaskManifest, trusted: bool) -> Result<AdmittedTask, Code> {
        let submitter = Identity::from_seed([5; 32]);
        let trust = if trusted {
            TrustPolicy::new([submitter.public_key()])
        } else {
            TrustPolicy::default()
        };
        admit(&sign_task(&submitter, &manifest), &trust, NOW).map_err(|refusal| refusal.code)
    }

    #[test]
    fn each_refusal_has_its_own_code() {
        assert!(check(manifest(), true).is_ok());
        assert_eq!(
            check(manifest(), false).unwrap_err(),
            Code::PermissionDenied
        );
        let expired = pb::TaskManifest {
            expires_at_unix_s: NOW - 1,
            ..manifest()
        };
        assert_eq!(check(expired, true).unwrap_err(), Code::DeadlineExceeded);
        let greedy = pb::TaskManifest {
            limits: Some(pb::TaskLimits {
                fuel: limits::MAX_FUEL + 1,
                ..Default::default()
            }),
            ..manifest()
        };
        assert_eq!(check(greedy, true).unwrap_err(), Code::OutOfRange);
        let escaping = manifest_of(pb::Program {
            files: vec![pb::InputFile {
                name: "../etc/passwd".into(),
                hash: ContentHash::of(b"x").to_vec().into(),
                size: 1,
            }],
            ..program()
        });
        assert_eq!(check(escaping, true).unwrap_err(), Code::InvalidArgument);

        let submitter = Identity::from_seed([5; 32]);
        let mut tampered = sign_task(&submitter, &manifest());
        let mut bytes = tampered.manifest.to_vec();
        *bytes.last_mut().unwrap() ^= 1;
        tampered.manifest = bytes.into();
        let trust = TrustPolicy::new([submitter.public_key()]);
        assert_eq!(
            admit(&tampered, &trust, NOW).unwrap_err().code,
            Code::Unauthenticated
        );
    }

    #[test]
    fn zero_limits_mean_defaults() {
        let limits = resolve_limits(None).unwrap();
        assert_eq!(limits, Limits::default());
    }
}
