//! Turns a module and its inputs on the submitter's disk into a [`pb::Program`] (what a worker
//! runs) and the equivalent sandbox [`TaskSpec`] (what `peergrid run` runs): both from one place,
//! so a local run and a grid run of the same program see exactly the same thing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use peergrid_proto::{ContentHash, Identity, pb};
use peergrid_worker::admission;
use peergrid_worker::sandbox::{InputSpec, TaskSpec};
use prost::Message;

/// The WebAssembly binary magic number.
const WASM_MAGIC: &[u8] = b"\0asm";

/// What the user asked to run.
#[derive(Debug, Clone, Default)]
pub struct ProgramRequest {
    pub module: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<PathBuf>,
    pub inputs: Vec<PathBuf>,
    /// The task gets a writable `/output`.
    pub outputs: bool,
    pub limits: pb::TaskLimits,
}

/// A program read from disk and checked, ready to run locally or to sign.
#[derive(Debug, Clone)]
pub struct PreparedProgram {
    pub module: Bytes,
    pub module_hash: ContentHash,
    /// Input files as blobs: (hash, bytes).
    pub blobs: Vec<(ContentHash, Bytes)>,
    /// The encoded `Program`, as it will be signed.
    pub program_bytes: Bytes,
    pub program_digest: ContentHash,
    pub limits: pb::TaskLimits,
    /// The same program for the local sandbox.
    pub spec: TaskSpec,
}

/// Why a program could not be prepared. Every variant names the file involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProgramError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a WebAssembly module (it does not start with the bytes \\0asm)")]
    NotWasm { path: PathBuf },
    #[error("input file {path}: {reason}")]
    BadInput { path: PathBuf, reason: String },
    #[error("{0}")]
    Limits(String),
}

impl ProgramRequest {
    /// Reads the module and inputs and builds the program.
    pub fn prepare(&self) -> Result<PreparedProgram, ProgramError> {
        let module = read_module(&self.module)?;
        let module_hash = ContentHash::of(&module);
        let stdin = match &self.stdin {
            Some(path) => Bytes::from(read("stdin file", path)?),
            None => Bytes::new(),
        };
        let mut names = HashSet::new();
        let mut files = Vec::new();
        let mut blobs = Vec::new();
        let mut inputs = Vec::new();
        for path in &self.inputs {
            let name = input_name(path)?;
            if !names.insert(name.clone()) {
                return Err(ProgramError::BadInput {
                    path: path.clone(),
                    reason: format!("another input is also named {name:?} under /input"),
                });
            }
            let bytes = Bytes::from(read("input file", path)?);
            let hash = ContentHash::of(&bytes);
            files.push(pb::InputFile {
                name: name.clone(),
                hash: hash.to_vec().into(),
                size: bytes.len() as u64,
            });
            blobs.push((hash, bytes));
            inputs.push(InputSpec {
                name,
                source: path.clone(),
            });
        }
        let program_bytes = encode_program(
            module_hash,
            &self.args,
            &self.env,
            stdin.clone(),
            files,
            self.outputs,
        );
        let program_digest = ContentHash::of(&program_bytes);
        let limits = admission::resolve_limits(Some(&self.limits))
            .map_err(|refusal| ProgramError::Limits(refusal.message))?;
        Ok(PreparedProgram {
            module,
            module_hash,
            blobs,
            program_bytes,
            program_digest,
            limits: self.limits,
            spec: TaskSpec {
                args: self.args.clone(),
                env: self.env.clone(),
                stdin,
                inputs,
                limits,
                random_seed: *program_digest.as_bytes(),
                outputs: self.outputs,
            },
        })
    }
}

impl PreparedProgram {
    /// Signs this program as a task that expires `ttl` from now.
    pub fn sign(
        &self,
        identity: &Identity,
        job_id: &str,
        task_id: &str,
        ttl: Duration,
    ) -> pb::SignedTask {
        let expires_at_unix_s = (SystemTime::now() + ttl)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        sign_program(
            identity,
            self.program_bytes.clone(),
            self.limits,
            job_id,
            task_id,
            expires_at_unix_s,
        )
    }

    /// Every blob a worker needs for this program: the module first, then the input files.
    pub fn all_blobs(&self) -> Vec<(ContentHash, Bytes)> {
        std::iter::once((self.module_hash, self.module.clone()))
            .chain(self.blobs.iter().cloned())
            .collect()
    }
}

/// The encoded `Program`: what the guest sees. Its digest seeds the guest's random numbers, so
/// `peergrid run` and every grid copy must encode it here, the one way.
pub fn encode_program(
    module_hash: ContentHash,
    args: &[String],
    env: &[(String, String)],
    stdin: Bytes,
    files: Vec<pb::InputFile>,
    outputs: bool,
) -> Bytes {
    let program = pb::Program {
        module_hash: module_hash.to_vec().into(),
        args: args.to_vec(),
        env: env
            .iter()
            .map(|(name, value)| pb::EnvVar {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        stdin,
        files,
        outputs,
    };
    Bytes::from(program.encode_to_vec())
}

/// Signs an encoded program as task `task_id` of job `job_id`, valid until `expires_at_unix_s`.
pub fn sign_program(
    identity: &Identity,
    program_bytes: Bytes,
    limits: pb::TaskLimits,
    job_id: &str,
    task_id: &str,
    expires_at_unix_s: u64,
) -> pb::SignedTask {
    sign_program_with_nonce(
        identity,
        program_bytes,
        limits,
        job_id,
        task_id,
        expires_at_unix_s,
        Bytes::new(),
    )
}

/// [`sign_program`] with a `nonce`, so that two signings of one task have distinct digests
/// even within one second (a job session's signings; ARCHITECTURE.md, "Credit").
pub fn sign_program_with_nonce(
    identity: &Identity,
    program_bytes: Bytes,
    limits: pb::TaskLimits,
    job_id: &str,
    task_id: &str,
    expires_at_unix_s: u64,
    nonce: Bytes,
) -> pb::SignedTask {
    let manifest = pb::TaskManifest {
        program: program_bytes,
        limits: Some(limits),
        job_id: job_id.to_owned(),
        task_id: task_id.to_owned(),
        expires_at_unix_s,
        nonce,
    };
    peergrid_proto::signing::sign_task(identity, &manifest)
}

/// Reads a WebAssembly module, refusing a file that is not one.
pub fn read_module(path: &Path) -> Result<Bytes, ProgramError> {
    wasm_module(path, read("module", path)?)
}

/// The bytes read from `path` as a WebAssembly module, refused if they are not one.
pub fn wasm_module(path: &Path, bytes: Vec<u8>) -> Result<Bytes, ProgramError> {
    if !bytes.starts_with(WASM_MAGIC) {
        return Err(ProgramError::NotWasm {
            path: path.to_owned(),
        });
    }
    Ok(Bytes::from(bytes))
}

/// Reads a file the user named; the error says which (`what`) and where.
pub fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ProgramError> {
    std::fs::read(path).map_err(|source| ProgramError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// An input appears in the guest as `/input/<its file name>`.
fn input_name(path: &Path) -> Result<String, ProgramError> {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| ProgramError::BadInput {
            path: path.to_owned(),
            reason: "has no UTF-8 file name".into(),
        })?;
    admission::check_file_name(name).map_err(|refusal| ProgramError::BadInput {
        path: path.to_owned(),
        reason: refusal.message,
    })?;
    Ok(name.to_owned())
}
