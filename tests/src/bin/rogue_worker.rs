//! `rogue_worker`: a dishonest worker for the end-to-end tests. It serves the `Worker` gRPC
//! service with an identity key of its own, exactly as `peergrid-worker` does (same admission,
//! blob store, sandbox, receipt signing and network bounds: it embeds the worker library's
//! `WorkerService` for all honest work), and cheats on task answers by a chosen strategy. The
//! real submitter cannot tell it from a worker until its answers are compared or checked.
//!
//! ```text
//! rogue_worker --listen HOST:PORT --data-dir DIR --strategy STRATEGY
//!              [--trust HEX]... [--trust-any-key] [--cores N]
//!              [--group NAME] [--group-dir DIR] [--pair-window-ms MS] [--instant]
//!              [--from ADDR] [--claim-slots N] [--gossip ADDR [--seed ADDR]...]
//! ```
//! Strategies (every receipt it sends is signed by its own key, for the task's true digest,
//! unless the strategy says otherwise):
//! - `honest`: a normal worker (a baseline).
//! - `lie` (`--group NAME`): every task is answered with the group's shared lie: stdout is
//!   [`lie_stdout`] (BLAKE3 of the group name and the task digest, in hex, then a newline), so
//!   every member of a group tells the same lie and the members' receipts agree with each other
//!   and disagree with honest workers. The task is run for real first and the lie keeps its
//!   outcome, exit code, stderr and fuel (the same on every member: the sandbox is
//!   deterministic). With `--instant` nothing runs: outcome EXITED, exit code 0, empty stderr,
//!   fuel derived from the same hash. All members of a group must agree on `--instant`.
//! - `lie-when-paired` (`--group NAME --group-dir DIR`): tells the group's lie only when another
//!   member holds a copy of the same task, and is honest otherwise. See [`pairing`] for the rule
//!   (the members of a group decide once per task through files in DIR; a member alone waits
//!   `--pair-window-ms`, default 2000, before it runs the task honestly).
//! - `timeout`: every admitted task is answered at once with a signed TIMED_OUT receipt, fuel 0
//!   and empty output (what a real worker reports when the wall-clock backstop fires), and the
//!   task's timeout as its wall time. Nothing runs.
//! - `abort`: every admitted task is answered with ABORTED (a donor preempting it), never a
//!   receipt.
//! - `refuse`: every task, admitted or not, gets RESOURCE_EXHAUSTED (a busy donor), and `Info`
//!   reads 0 free slots. Uploads, `Info`, `MissingBlobs` and `Peers` are served as usual.
//! - `replay-own`: the first receipt it produced (honestly) answers every later task with
//!   another digest; a task with the same digest, or any task before the first receipt, is
//!   answered honestly.
//! - `replay-other` (`--from ADDR`): every admitted task (and the blobs it needs) is sent to the
//!   honest worker at ADDR, whose genuine receipt, signed by that worker's key, comes back as
//!   this worker's answer. ADDR must trust the submitter. (Since the transport proves keys,
//!   ADDR refuses it: the forwarder's connection does not prove the task's signer.)
//! - `silent`: every admitted task is held without an answer, for ever, on a live connection.
//! - `huge-trap`: every admitted task is answered with a receipt signed by hand whose trap
//!   message is 11 MiB, which the worker library never signs (it caps its texts).
//! - `lie-outputs`: runs every task honestly, then lists each `/output` file with a wrong hash
//!   (BLAKE3 of the lie domain and the true hash) and signs the receipt over that list: the
//!   receipt disagrees with honest workers' on `outputs_hash` alone.
//! - `corrupt-blobs`: answers tasks honestly, but serves every blob a peer fetches from it
//!   (`peergrid/blob/1`) with one byte in the middle flipped.
//! - `corrupt-outputs`: answers honestly, but `GetBlob` serves every blob with its first byte
//!   flipped: the receipt agrees, the bytes do not match the agreed hash.
//!
//! `--claim-slots N`: `Info`, `Peers` and gossip announce N slots, all free, whatever the worker
//! really has (`--cores`, default 1). `--gossip`/`--seed` join a membership like the worker's.
//! The `refuse`, `abort`, `timeout`, `replay-own` and `replay-other` strategies check a task
//! (signature, trust, expiry, limits, blobs present) before cheating, so what a submitter sees
//! for a bad task is what a real worker answers.
//!
//! Prints `rogue_worker ready: listening on ADDR key HEX runtime FP slots N gossip ADDR|off
//! strategy S` once it accepts connections (the worker's ready line, plus the strategy; slots is
//! what `Info` announces), then one line per task answered:
//! `answered DIGEST_HEX KIND TASK_ID`, KIND being `honest`, `lie`, `timeout`, `replay`,
//! `forward` (a receipt was sent) or `refused:CODE` (a status, e.g. `refused:ABORTED`), printed
//! before the answer leaves. Exit codes: 0 never (it runs until killed), 2 for bad arguments, 1
//! if it cannot start or serve.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use peergrid_proto::signing::{task_digest, verify_receipt};
use peergrid_proto::transport::{self, GRPC_ALPN, PeerAddr, PeerKey};
use peergrid_proto::{ContentHash, Identity, PublicKey, pb, status_code_name};
use peergrid_submitter::client::{Blob, Dialer};
use peergrid_worker::admission::{self, AdmittedTask, TrustPolicy};
use peergrid_worker::blobs::{BlobBounds, WorkerBlobs};
use peergrid_worker::daemon::request_guard::RequestGuards;
use peergrid_worker::daemon::{
    self,
    connections::{self, ConnectionLimits},
};
use peergrid_worker::limits;
use peergrid_worker::membership::{GOSSIP_ALPN, Gossip, MembershipConfig, PeerIdentity};
use peergrid_worker::policy::{DonorPolicy, DonorState};
use peergrid_worker::receipt;
use peergrid_worker::sandbox::{
    Execution, MODULE_CACHE_KEY_CONTEXT, ModuleCacheDir, Outcome, Sandbox, SandboxOptions,
};
use peergrid_worker::service::WorkerService;
use prost::Message;
use tokio::sync::{OnceCell, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use pb::worker_server::Worker as _;

/// How long a `lie-when-paired` member alone waits for a partner before it answers honestly.
const DEFAULT_PAIR_WINDOW: Duration = Duration::from_secs(2);
/// The longest `--pair-window-ms` accepted.
const MAX_PAIR_WINDOW: Duration = Duration::from_secs(2);
/// Domain of the lie's hash, so that no other BLAKE3 use in peergrid can collide with it.
const LIE_DOMAIN: &[u8] = b"peergrid/rogue-lie/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Honest,
    Lie,
    LieWhenPaired,
    Timeout,
    Abort,
    Refuse,
    ReplayOwn,
    ReplayOther,
    HugeTrap,
    Silent,
    LieOutputs,
    CorruptOutputs,
    CorruptBlobs,
}

impl Strategy {
    const ALL: [(&'static str, Strategy); 13] = [
        ("honest", Self::Honest),
        ("lie", Self::Lie),
        ("lie-when-paired", Self::LieWhenPaired),
        ("timeout", Self::Timeout),
        ("abort", Self::Abort),
        ("refuse", Self::Refuse),
        ("replay-own", Self::ReplayOwn),
        ("replay-other", Self::ReplayOther),
        ("huge-trap", Self::HugeTrap),
        ("silent", Self::Silent),
        ("lie-outputs", Self::LieOutputs),
        ("corrupt-outputs", Self::CorruptOutputs),
        ("corrupt-blobs", Self::CorruptBlobs),
    ];

    fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, strategy)| *strategy)
    }

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, strategy)| *strategy == self)
            .map(|(name, _)| *name)
            .expect("every strategy is listed")
    }
}

struct Args {
    listen: SocketAddr,
    data_dir: PathBuf,
    strategy: Strategy,
    trust: Vec<PublicKey>,
    trust_any_key: bool,
    cores: u32,
    group: Option<String>,
    group_dir: Option<PathBuf>,
    pair_window: Duration,
    instant: bool,
    from: Option<String>,
    claim_slots: Option<u32>,
    gossip: bool,
    seeds: Vec<PeerAddr>,
}

fn usage(problem: &str) -> ! {
    let strategies: Vec<&str> = Strategy::ALL.iter().map(|(name, _)| *name).collect();
    eprintln!(
        "rogue_worker: {problem}\nusage: rogue_worker --listen HOST:PORT --data-dir DIR \
         --strategy {} [--trust HEX]... [--trust-any-key] [--cores N] [--group NAME] \
         [--group-dir DIR] [--pair-window-ms MS] [--instant] [--from ADDR] [--claim-slots N] \
         [--gossip] [--seed KEY@IP:PORT]...",
        strategies.join("|")
    );
    std::process::exit(2);
}

fn parsed<T: std::str::FromStr>(flag: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| usage(&format!("bad {flag} {value}")))
}

fn parse_args() -> Args {
    let mut listen = None;
    let mut data_dir = None;
    let mut strategy = None;
    let mut args = Args {
        listen: "127.0.0.1:0".parse().expect("valid"),
        data_dir: PathBuf::new(),
        strategy: Strategy::Honest,
        trust: Vec::new(),
        trust_any_key: false,
        cores: 1,
        group: None,
        group_dir: None,
        pair_window: DEFAULT_PAIR_WINDOW,
        instant: false,
        from: None,
        claim_slots: None,
        gossip: false,
        seeds: Vec::new(),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--trust-any-key" => {
                args.trust_any_key = true;
                continue;
            }
            "--instant" => {
                args.instant = true;
                continue;
            }
            "--gossip" => {
                args.gossip = true;
                continue;
            }
            _ => {}
        }
        let value = argv
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--listen" => listen = Some(parsed(&flag, &value)),
            "--data-dir" => data_dir = Some(PathBuf::from(value)),
            "--strategy" => {
                strategy = Some(
                    Strategy::parse(&value)
                        .unwrap_or_else(|| usage(&format!("unknown strategy {value}"))),
                )
            }
            "--trust" => {
                let bytes = hex::decode(&value).unwrap_or_else(|_| usage("bad --trust key"));
                args.trust.push(
                    PublicKey::from_slice(&bytes).unwrap_or_else(|_| usage("bad --trust key")),
                );
            }
            "--cores" => args.cores = parsed::<u32>(&flag, &value).max(1),
            "--group" => args.group = Some(value),
            "--group-dir" => args.group_dir = Some(PathBuf::from(value)),
            "--pair-window-ms" => {
                args.pair_window = Duration::from_millis(parsed(&flag, &value));
                if args.pair_window > MAX_PAIR_WINDOW {
                    usage(&format!("--pair-window-ms is at most {MAX_PAIR_WINDOW:?}"));
                }
            }
            "--from" => args.from = Some(value),
            "--claim-slots" => args.claim_slots = Some(parsed(&flag, &value)),
            "--gossip" => {
                args.gossip = true;
                continue;
            }
            "--seed" => args.seeds.push(parsed(&flag, &value)),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    args.listen = listen.unwrap_or_else(|| usage("--listen is required"));
    args.data_dir = data_dir.unwrap_or_else(|| usage("--data-dir is required"));
    args.strategy = strategy.unwrap_or_else(|| usage("--strategy is required"));
    let lies = matches!(args.strategy, Strategy::Lie | Strategy::LieWhenPaired);
    if lies && args.group.is_none() {
        usage("--strategy lie and lie-when-paired need --group NAME");
    }
    if args.strategy == Strategy::LieWhenPaired && args.group_dir.is_none() {
        usage("--strategy lie-when-paired needs --group-dir DIR");
    }
    if args.strategy == Strategy::ReplayOther && args.from.is_none() {
        usage("--strategy replay-other needs --from ADDR");
    }
    if args.instant && !lies {
        usage("--instant goes with --strategy lie or lie-when-paired");
    }
    args
}

/// One line on stdout, flushed at once: the test reads it while the worker runs.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The stdout every member of `group` gives for task `digest` when it lies: 32 hex characters
/// and a newline, cut to the task's stdout cap.
fn lie_stdout(group: &str, digest: &ContentHash, stdout_max_bytes: u64) -> Bytes {
    let mut text = format!("{}\n", &lie_hash(group, digest).to_hex()[..32]).into_bytes();
    text.truncate(usize::try_from(stdout_max_bytes).unwrap_or(usize::MAX));
    text.into()
}

/// BLAKE3(domain ‖ len(group) ‖ group ‖ digest): the seed of a group's lie about one task.
fn lie_hash(group: &str, digest: &ContentHash) -> ContentHash {
    let mut bytes = LIE_DOMAIN.to_vec();
    bytes.extend_from_slice(&(group.len() as u64).to_le_bytes());
    bytes.extend_from_slice(group.as_bytes());
    bytes.extend_from_slice(digest.as_bytes());
    ContentHash::of(&bytes)
}

/// `lie-when-paired` coordination: the members of a group share a directory and decide, once
/// per task, whether they all lie about it or all answer honestly.
///
/// The rule. On a copy of task T, member M:
/// 1. registers: creates `DIR/<T hex>/member-<M's key hex>`;
/// 2. then, every [`POLL_INTERVAL`] for at most the pair window (counted from its registration):
///    if `DIR/<T hex>/decision` exists it follows it; else, if a registration of another member
///    exists, it proposes `lie`;
/// 3. if the window passes with neither, it proposes `honest`.
///
/// To propose, M writes its proposal to a file of its own and hard-links it to `decision`;
/// `link(2)` is atomic and never replaces an existing file, so the first proposal made is the
/// decision and later ones are dropped. M then follows whatever `decision` holds (written whole
/// before it was linked, so never read half-written). Hence every member answering T follows
/// one decision; the group lies about T only if some member saw two registrations, i.e. two
/// members held copies of T at once; a member that finds T already decided `honest` (its partner
/// came and went alone) answers honestly too. A pair costs at most one poll interval; a member
/// alone waits the whole window (at most 2 s).
mod pairing {
    use std::io;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use peergrid_proto::{ContentHash, PublicKey};

    /// How often a waiting member looks for a decision or a partner.
    pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
    const DECISION: &str = "decision";

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Decision {
        Lie,
        Honest,
    }

    impl Decision {
        fn name(self) -> &'static str {
            match self {
                Self::Lie => "lie",
                Self::Honest => "honest",
            }
        }
    }

    /// What the group does about `digest`; see the module docs for the rule.
    pub async fn decide(
        dir: &Path,
        digest: &ContentHash,
        me: &PublicKey,
        window: Duration,
    ) -> io::Result<Decision> {
        let task_dir = dir.join(digest.to_hex());
        std::fs::create_dir_all(&task_dir)?;
        let registration = format!("member-{}", me.to_hex());
        std::fs::write(task_dir.join(&registration), b"")?;
        let deadline = Instant::now() + window;
        let polls = window.as_millis() / POLL_INTERVAL.as_millis() + 1;
        for _ in 0..polls {
            if let Some(decision) = read(&task_dir)? {
                return Ok(decision);
            }
            if has_partner(&task_dir, &registration)? {
                return propose(&task_dir, Decision::Lie);
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        propose(&task_dir, Decision::Honest)
    }

    fn has_partner(task_dir: &Path, registration: &str) -> io::Result<bool> {
        for entry in std::fs::read_dir(task_dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("member-") && name != registration {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Makes `proposal` the decision unless there is one already; returns the decision.
    fn propose(task_dir: &Path, proposal: Decision) -> io::Result<Decision> {
        // Unique per call: one member may hold two copies of a task (a raw client may send them).
        static PROPOSALS: AtomicU64 = AtomicU64::new(0);
        let path = task_dir.join(format!(
            "proposal-{}-{}",
            std::process::id(),
            PROPOSALS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, proposal.name())?;
        let linked = std::fs::hard_link(&path, task_dir.join(DECISION));
        let _ = std::fs::remove_file(&path);
        match linked {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
        read(task_dir)?.ok_or_else(|| io::Error::other("the decision file vanished"))
    }

    fn read(task_dir: &Path) -> io::Result<Option<Decision>> {
        match std::fs::read_to_string(task_dir.join(DECISION)) {
            Ok(text) if text == Decision::Lie.name() => Ok(Some(Decision::Lie)),
            Ok(text) if text == Decision::Honest.name() => Ok(Some(Decision::Honest)),
            Ok(text) => Err(io::Error::other(format!("unknown decision {text:?}"))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// A collusion group: its name, and for `lie-when-paired` its directory and pair window.
struct Group {
    name: String,
    dir: Option<PathBuf>,
    pair_window: Duration,
}

/// The rogue service; cheap to clone.
#[derive(Clone)]
struct Rogue {
    inner: Arc<Inner>,
}

struct Inner {
    /// The worker library's own service, with this worker's key: it stores blobs, admits and runs
    /// tasks and signs their receipts, for every honest answer.
    honest: WorkerService,
    /// The same key as `honest`'s (loaded from the same file), for the receipts of lies.
    identity: Identity,
    fingerprint: String,
    blobs: WorkerBlobs,
    trust: TrustPolicy,
    strategy: Strategy,
    group: Option<Group>,
    instant: bool,
    claim_slots: Option<u32>,
    /// `replay-own`: the first receipt produced, with the digest of the task it answers.
    first_result: Mutex<Option<(ContentHash, pb::TaskResult)>>,
    /// `replay-other`: the honest worker's address, and the connection once made.
    from: Option<String>,
    upstream: OnceCell<peergrid_submitter::client::WorkerClient>,
    /// Dials `from` with this worker's own key.
    dialer: Dialer,
}

/// The trap message `--strategy huge-trap` signs: 11 MiB, as in the report of issue 13.
const HUGE_TRAP_BYTES: usize = 11 * 1024 * 1024;

/// What an answer was, for the log line.
type Kind = &'static str;

impl Rogue {
    /// Answers one task by the strategy, and logs it before it leaves.
    async fn answer(&self, task: pb::SignedTask) -> Result<pb::TaskResult, Status> {
        let digest = task_digest(&task);
        let task_id = pb::TaskManifest::decode(task.manifest.clone())
            .map(|manifest| manifest.task_id)
            .unwrap_or_else(|_| "?".to_owned());
        let answer = self.cheat(task).await;
        let kind = match &answer {
            Ok((_, kind)) => (*kind).to_owned(),
            Err(status) => format!("refused:{}", status_code_name(status.code())),
        };
        say(&format!("answered {} {kind} {task_id}", digest.to_hex()));
        answer.map(|(result, _)| result)
    }

    async fn cheat(&self, task: pb::SignedTask) -> Result<(pb::TaskResult, Kind), Status> {
        let inner = &self.inner;
        match inner.strategy {
            Strategy::Honest => self.honest(task).await,
            Strategy::Refuse => Err(Status::resource_exhausted(
                "the donor's machine is busy (idle-only mode); retry later or elsewhere",
            )),
            Strategy::Lie => {
                let admitted = self.admit(&task)?;
                self.lie(admitted, task).await
            }
            Strategy::LieWhenPaired => {
                let admitted = self.admit(&task)?;
                let group = inner.group.as_ref().expect("checked by parse_args");
                let dir = group.dir.as_ref().expect("checked by parse_args");
                let decision = pairing::decide(
                    dir,
                    &admitted.digest,
                    &inner.identity.public_key(),
                    group.pair_window,
                )
                .await
                .map_err(|error| {
                    Status::internal(format!("group dir {}: {error}", dir.display()))
                })?;
                match decision {
                    pairing::Decision::Lie => self.lie(admitted, task).await,
                    pairing::Decision::Honest => self.honest(task).await,
                }
            }
            Strategy::Timeout => {
                let admitted = self.admit(&task)?;
                let execution = Execution {
                    outcome: Outcome::TimedOut,
                    stdout: Bytes::new(),
                    stderr: Bytes::new(),
                    fuel_used: 0,
                    wall_time: admitted.spec.limits.timeout,
                    outputs: None,
                };
                Ok((self.signed(admitted.digest, execution), "timeout"))
            }
            Strategy::Abort => {
                self.admit(&task)?;
                Err(Status::aborted(
                    "preempted: the donor's machine became busy; run the task elsewhere",
                ))
            }
            Strategy::ReplayOwn => {
                let admitted = self.admit(&task)?;
                let earlier = inner
                    .first_result
                    .lock()
                    .expect("no panics while held")
                    .clone();
                match earlier {
                    Some((digest, result)) if digest != admitted.digest => Ok((result, "replay")),
                    _ => {
                        let (result, kind) = self.honest(task).await?;
                        inner
                            .first_result
                            .lock()
                            .expect("no panics while held")
                            .get_or_insert_with(|| (admitted.digest, result.clone()));
                        Ok((result, kind))
                    }
                }
            }
            Strategy::ReplayOther => {
                let admitted = self.admit(&task)?;
                self.forward(&admitted, task).await
            }
            Strategy::Silent => {
                // Takes the copy and never answers, on a connection that stays alive.
                self.admit(&task)?;
                std::future::pending().await
            }
            Strategy::CorruptOutputs | Strategy::CorruptBlobs => self.honest(task).await,
            Strategy::LieOutputs => {
                let (mut result, _) = self.honest(task).await?;
                let signed = result
                    .receipt
                    .take()
                    .ok_or_else(|| Status::internal("the sandbox gave no receipt"))?;
                let mut receipt = verify_receipt(&signed)
                    .map_err(|error| Status::internal(format!("own receipt: {error}")))?
                    .receipt;
                for file in &mut result.outputs {
                    let mut hasher = blake3::Hasher::new();
                    hasher.update(LIE_DOMAIN).update(&file.hash);
                    file.hash = hasher.finalize().as_bytes().to_vec().into();
                }
                let (_, digest) = peergrid_proto::check_output_list(&result.outputs)
                    .map_err(|error| Status::internal(format!("own outputs: {error}")))?;
                receipt.outputs_hash = digest.to_vec().into();
                result.receipt = Some(peergrid_proto::signing::sign_receipt(
                    &inner.identity,
                    &receipt,
                ));
                Ok((result, "lie-outputs"))
            }
            Strategy::HugeTrap => {
                // A receipt the worker library would never sign: an 11 MiB trap message,
                // signed by hand with this worker's key.
                let admitted = self.admit(&task)?;
                let empty = ContentHash::of(b"");
                let receipt = pb::Receipt {
                    task_digest: admitted.digest.to_vec().into(),
                    worker_key: inner.identity.public_key().to_bytes().to_vec().into(),
                    runtime_fingerprint: inner.fingerprint.clone(),
                    outcome: pb::Outcome::Trapped as i32,
                    exit_code: 0,
                    trap: format!("host: {}", "x".repeat(HUGE_TRAP_BYTES)),
                    stdout_hash: empty.to_vec().into(),
                    stderr_hash: empty.to_vec().into(),
                    fuel_used: 1,
                    outputs_hash: Bytes::new(),
                };
                let signed = peergrid_proto::signing::sign_receipt(&inner.identity, &receipt);
                Ok((
                    pb::TaskResult {
                        receipt: Some(signed),
                        ..Default::default()
                    },
                    "huge-trap",
                ))
            }
        }
    }

    /// The worker library's answer, as `peergrid-worker` gives it.
    async fn honest(&self, task: pb::SignedTask) -> Result<(pb::TaskResult, Kind), Status> {
        // As if over the submitter's own connection: the transport already proved who called.
        let signer = peergrid_proto::signing::verify_task(&task)
            .map_err(|error| Status::invalid_argument(error.to_string()))?
            .submitter;
        let mut request = Request::new(task);
        request.extensions_mut().insert(PeerKey(signer));
        let result = self.inner.honest.run(request).await?;
        Ok((result.into_inner(), "honest"))
    }

    /// The checks a worker makes before running a task: admission, then the blobs it needs.
    fn admit(&self, task: &pb::SignedTask) -> Result<AdmittedTask, Status> {
        let admitted = admission::admit(task, &self.inner.trust, unix_now_s())?;
        let missing: Vec<String> = std::iter::once(admitted.module_hash)
            .chain(admitted.files.iter().map(|(_, hash)| *hash))
            .filter(|hash| !self.inner.blobs.contains(hash))
            .map(|hash| hash.to_hex())
            .collect();
        if !missing.is_empty() {
            return Err(Status::failed_precondition(format!(
                "missing blobs, upload them with PutBlob and retry: {}",
                missing.join(", ")
            )));
        }
        Ok(admitted)
    }

    /// The group's lie about `admitted`, signed by this worker's key for the task's digest.
    async fn lie(
        &self,
        admitted: AdmittedTask,
        task: pb::SignedTask,
    ) -> Result<(pb::TaskResult, Kind), Status> {
        let group = &self
            .inner
            .group
            .as_ref()
            .expect("checked by parse_args")
            .name;
        let stdout = lie_stdout(
            group,
            &admitted.digest,
            admitted.spec.limits.stdout_max_bytes,
        );
        let execution = if self.inner.instant {
            let seed = lie_hash(group, &admitted.digest);
            let draw = u64::from_le_bytes(seed.as_bytes()[16..24].try_into().expect("8 bytes"));
            Execution {
                outcome: Outcome::Exited(0),
                stdout,
                stderr: Bytes::new(),
                fuel_used: (1_000 + draw % 10_000_000).min(admitted.spec.limits.fuel),
                wall_time: Duration::from_micros(1 + draw % 1_000),
                outputs: None,
            }
        } else {
            // Run for real, keep everything but stdout: the lie is hard to tell from the truth.
            let (honest, _) = self.honest(task).await?;
            let signed = honest
                .receipt
                .ok_or_else(|| Status::internal("the sandbox gave no receipt"))?;
            let verified = verify_receipt(&signed)
                .map_err(|error| Status::internal(format!("own receipt: {error}")))?;
            Execution {
                outcome: receipt::outcome_from_wire(&verified.receipt)
                    .ok_or_else(|| Status::internal("own receipt has an unknown outcome"))?,
                stdout,
                stderr: honest.stderr,
                fuel_used: verified.receipt.fuel_used,
                wall_time: Duration::from_micros(honest.wall_time_us),
                outputs: None,
            }
        };
        Ok((self.signed(admitted.digest, execution), "lie"))
    }

    /// `execution` as a result with a receipt signed by this worker, as the worker signs them.
    fn signed(&self, digest: ContentHash, execution: Execution) -> pb::TaskResult {
        let receipt = receipt::sign(
            &self.inner.identity,
            &self.inner.fingerprint,
            digest,
            &execution,
        );
        pb::TaskResult {
            receipt: Some(receipt),
            stdout: execution.stdout,
            stderr: execution.stderr,
            wall_time_us: execution.wall_time.as_micros() as u64,
            outputs: Vec::new(),
        }
    }

    /// Runs `task` on the honest worker `--from` (uploading its blobs from this worker's store)
    /// and returns that worker's genuine result.
    async fn forward(
        &self,
        admitted: &AdmittedTask,
        task: pb::SignedTask,
    ) -> Result<(pb::TaskResult, Kind), Status> {
        use peergrid_submitter::client::{ClientError, WorkerClient};
        let from = self.inner.from.as_deref().expect("checked by parse_args");
        let unavailable = |error: ClientError| Status::unavailable(error.to_string());
        let mut upstream = self
            .inner
            .upstream
            .get_or_try_init(|| WorkerClient::connect(&self.inner.dialer, from))
            .await
            .map_err(unavailable)?
            .clone();
        let mut blobs = Vec::new();
        for hash in std::iter::once(admitted.module_hash)
            .chain(admitted.files.iter().map(|(_, hash)| *hash))
        {
            let bytes = self.inner.blobs.read(&hash).map_err(|error| {
                Status::internal(format!("cannot read blob {}: {error}", hash.short()))
            })?;
            blobs.push(Blob::in_memory(hash, Bytes::from(bytes)));
        }
        upstream
            .ensure_blobs(&blobs, None)
            .await
            .map_err(unavailable)?;
        match upstream.run(task).await {
            Ok(checked) => Ok((
                pb::TaskResult {
                    receipt: Some(checked.signed),
                    stdout: checked.stdout,
                    stderr: checked.stderr,
                    wall_time_us: checked.wall_time.as_micros() as u64,
                    ..Default::default()
                },
                "forward",
            )),
            Err(ClientError::Refused { code, message, .. }) => Err(Status::new(code, message)),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// The free slots announced: the claim, none for a refusing worker, else the truth.
    fn free_slots(&self) -> u32 {
        match (self.inner.claim_slots, self.inner.strategy) {
            (Some(claimed), _) => claimed,
            (None, Strategy::Refuse) => 0,
            (None, _) => self.inner.honest.free_slots(),
        }
    }
}

#[tonic::async_trait]
impl pb::worker_server::Worker for Rogue {
    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let mut info = self.inner.honest.info(request).await?;
        if let Some(claimed) = self.inner.claim_slots {
            info.get_mut().slots = claimed;
        }
        info.get_mut().free_slots = self.free_slots();
        Ok(info)
    }

    async fn missing_blobs(
        &self,
        request: Request<pb::MissingBlobsRequest>,
    ) -> Result<Response<pb::MissingBlobsResponse>, Status> {
        self.inner.honest.missing_blobs(request).await
    }

    async fn put_blob(
        &self,
        request: Request<Streaming<pb::BlobChunk>>,
    ) -> Result<Response<pb::PutBlobResponse>, Status> {
        self.inner.honest.put_blob(request).await
    }

    async fn run(
        &self,
        request: Request<pb::SignedTask>,
    ) -> Result<Response<pb::TaskResult>, Status> {
        self.answer(request.into_inner()).await.map(Response::new)
    }

    async fn peers(
        &self,
        request: Request<pb::PeersRequest>,
    ) -> Result<Response<pb::PeersResponse>, Status> {
        let mut peers = self.inner.honest.peers(request).await?;
        for peer in &mut peers.get_mut().peers {
            if peer.is_self {
                peer.free_slots = Some(self.free_slots());
                if let Some(claimed) = self.inner.claim_slots {
                    peer.cores = claimed;
                }
            }
        }
        Ok(peers)
    }

    async fn fetch_blob(
        &self,
        request: Request<pb::FetchBlobRequest>,
    ) -> Result<Response<pb::FetchBlobResponse>, Status> {
        self.inner.honest.fetch_blob(request).await
    }

    async fn credit(
        &self,
        request: Request<pb::CreditStatements>,
    ) -> Result<Response<pb::CreditAck>, Status> {
        self.inner.honest.credit(request).await
    }

    type GetBlobStream = ReceiverStream<Result<pb::BlobChunk, Status>>;

    async fn get_blob(
        &self,
        request: Request<pb::GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        let mut honest = self.inner.honest.get_blob(request).await?.into_inner();
        if self.inner.strategy != Strategy::CorruptOutputs {
            return Ok(Response::new(honest));
        }
        let (sender, receiver) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut first = true;
            while let Some(mut chunk) = honest.next().await {
                if let Ok(chunk) = &mut chunk
                    && first
                    && !chunk.data.is_empty()
                {
                    let mut data = chunk.data.to_vec();
                    data[0] ^= 0x01;
                    chunk.data = data.into();
                    first = false;
                }
                if sender.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type ExecuteStream = ReceiverStream<Result<pb::ExecuteResponse, Status>>;

    /// Pipelined like the worker's: each request is answered on its own, by request id, in
    /// whatever order the answers are ready.
    async fn execute(
        &self,
        request: Request<Streaming<pb::ExecuteRequest>>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let mut requests = request.into_inner();
        let (answers, receiver) = mpsc::channel(limits::EXECUTE_STREAM_BUFFER);
        let rogue = self.clone();
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let request = match request {
                    Ok(request) => request,
                    Err(status) => {
                        let _ = answers.send(Err(status)).await;
                        return;
                    }
                };
                let rogue = rogue.clone();
                let answers = answers.clone();
                tokio::spawn(async move {
                    let answer = match request.task {
                        None => Err(Status::invalid_argument("request without a task")),
                        Some(task) => rogue.answer(task).await,
                    };
                    let answer = match answer {
                        Ok(result) => pb::execute_response::Answer::Result(result),
                        // A unary status has no missing-blob list: the submitter then uploads
                        // every blob the task needs that the worker lacks, as for an older worker.
                        Err(status) => pb::execute_response::Answer::Refused(pb::TaskRefusal {
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                            missing_blobs: Vec::new(),
                        }),
                    };
                    let response = pb::ExecuteResponse {
                        request_id: request.request_id,
                        answer: Some(answer),
                    };
                    // The client hung up: nothing is waiting for this answer.
                    let _ = answers.send(Ok(response)).await;
                });
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn fail(what: &str) -> ! {
    eprintln!("rogue_worker: {what}");
    std::process::exit(1);
}

/// The worker's start-up (`daemon::Worker::start`) for what a rogue needs: identity, blob store,
/// sandbox with its module cache, and the library's service around them.
fn open(args: &Args) -> (Identity, WorkerBlobs, WorkerService) {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir)
        .unwrap_or_else(|error| fail(&format!("cannot use {}: {error}", dir.display())));
    let key_path = dir.join("identity.key");
    let identity =
        Identity::load_or_create(&key_path).unwrap_or_else(|error| fail(&error.to_string()));
    let signer = Identity::load(&key_path).unwrap_or_else(|error| fail(&error.to_string()));
    let blobs = WorkerBlobs::open(dir, BlobBounds::default())
        .unwrap_or_else(|error| fail(&format!("cannot use {}: {error}", dir.display())));
    let sandbox = Sandbox::with_module_cache(
        SandboxOptions {
            threads: args.cores as usize,
            scratch_dir: dir.join("scratch"),
            fingerprint_tag: None,
        },
        Some(ModuleCacheDir {
            dir: dir.join("compiled"),
            mac_key: identity.derive_key(MODULE_CACHE_KEY_CONTEXT),
        }),
    )
    .unwrap_or_else(|error| fail(&format!("cannot start the sandbox: {}", error.0)));
    let policy = DonorPolicy {
        cores: args.cores,
        memory_bytes: DonorPolicy::default_memory_bytes(),
        idle_only: false,
        busy_threshold_pct: 50.0,
        sample_interval: Duration::from_secs(1),
    };
    let service = WorkerService::new(
        identity,
        sandbox,
        blobs.clone(),
        trust_policy(args),
        &policy,
        Arc::new(DonorState::default()),
    );
    (signer, blobs, service)
}

fn trust_policy(args: &Args) -> TrustPolicy {
    if args.trust_any_key {
        TrustPolicy::anyone()
    } else {
        TrustPolicy::new(args.trust.clone())
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let (identity, blobs, honest) = open(&args);
    let endpoint = transport::bind_endpoint(
        &identity,
        args.listen,
        vec![
            GRPC_ALPN.to_vec(),
            GOSSIP_ALPN.to_vec(),
            peergrid_worker::blobs::peer::BLOB_ALPN.to_vec(),
        ],
        &[],
    )
    .await
    .unwrap_or_else(|error| fail(&error.to_string()));
    let addr = transport::bound_addr(&endpoint).unwrap_or(args.listen);
    let dialer = Dialer::new(&identity, &[])
        .await
        .unwrap_or_else(|error| fail(&error.to_string()));
    let public_key = identity.public_key();
    let fingerprint = honest
        .info(Request::new(pb::InfoRequest {}))
        .await
        .expect("Info always answers")
        .into_inner()
        .runtime_fingerprint;
    let rogue = Rogue {
        inner: Arc::new(Inner {
            honest: honest.clone(),
            identity,
            fingerprint: fingerprint.clone(),
            blobs,
            trust: trust_policy(&args),
            strategy: args.strategy,
            group: args.group.clone().map(|name| Group {
                name,
                dir: args.group_dir.clone(),
                pair_window: args.pair_window,
            }),
            instant: args.instant,
            claim_slots: args.claim_slots,
            first_result: Mutex::new(None),
            from: args.from.clone(),
            upstream: OnceCell::new(),
            dialer,
        }),
    };
    let slots = args.claim_slots.unwrap_or(args.cores);
    // Stops gossip when dropped, i.e. never before the process ends.
    let (_stop_gossip, stopped) = watch::channel(false);
    let gossip = (args.gossip || !args.seeds.is_empty()).then(|| {
        let me = PeerIdentity::signed(
            &honest.identity(),
            addr,
            fingerprint.clone(),
            slots,
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |now| now.as_millis() as u64),
        )
        .unwrap_or_else(|error| fail(&error.to_string()));
        let announced = rogue.clone();
        let gossip = Gossip::start(
            endpoint.clone(),
            &[],
            me,
            honest.identity(),
            MembershipConfig::default(),
            args.seeds.clone(),
            move || announced.free_slots(),
            stopped,
        );
        honest.set_gossip(gossip.clone());
        gossip
    });
    honest.set_network(endpoint.clone(), Vec::new());
    let blob_server = match args.strategy {
        Strategy::CorruptBlobs => honest.blob_server().corrupting(),
        _ => honest.blob_server(),
    };
    let gossip_state = if gossip.is_some() { "on" } else { "off" };
    let server = pb::worker_server::WorkerServer::new(rogue)
        .max_decoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(peergrid_proto::MAX_MESSAGE_BYTES);
    // The worker's network bounds (see `daemon::Worker::serve`).
    let guards = RequestGuards::standard();
    let incoming = connections::incoming(
        endpoint,
        ConnectionLimits::standard(),
        daemon::admission(trust_policy(&args)),
        gossip,
        Some(blob_server),
    );
    let peer_addr = PeerAddr::direct(public_key, addr);
    say(&format!(
        "rogue_worker ready: listening on {peer_addr} key {public_key} runtime {fingerprint} slots \
         {slots} gossip {gossip_state} strategy {}",
        args.strategy.name()
    ));
    if let Err(error) = daemon::grpc_server()
        .add_service(guards.wrap(server))
        .serve_with_incoming(incoming)
        .await
    {
        fail(&format!("server failed: {error}"));
    }
}
