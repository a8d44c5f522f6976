//! A dishonest worker process for the end-to-end tests: [`RogueProcess`] starts
//! `src/bin/rogue_worker.rs` with a [`Strategy`] (lie, lie with a partner, time out, abort,
//! refuse, replay), waits for its ready line, and kills it when dropped, like
//! [`crate::WorkerProcess`]. The rogue serves the `Worker` service with its own key, so the real
//! submitter uses it exactly as it uses a worker.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::{bin, ready_field, spawn_until_ready};

/// How a rogue answers tasks (see `rogue_worker`'s module docs for the exact behaviour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// A normal worker: the baseline.
    Honest,
    /// Every answer is `group`'s shared lie, signed by the rogue's own key.
    Lie { group: String },
    /// `group`'s lie only when another member registered the same task in `dir` within the
    /// pair window; honest otherwise.
    LieWhenPaired {
        group: String,
        dir: PathBuf,
        pair_window: Duration,
    },
    /// A signed TIMED_OUT receipt (fuel 0) for every task, at once.
    Timeout,
    /// ABORTED for every task, never a receipt.
    Abort,
    /// RESOURCE_EXHAUSTED for every task; `Info` reads 0 free slots.
    Refuse,
    /// Its first receipt answers every later task with another digest.
    ReplayOwn,
    /// Each task is forwarded to the worker at `from`, to answer with its genuine receipt.
    ReplayOther { from: String },
    /// A receipt signed by hand with an 11 MiB trap message.
    HugeTrap,
    /// Every task held, never answered.
    Silent,
    /// Honest run, then every `/output` file listed (and signed) with a wrong hash.
    LieOutputs,
    /// Honest receipts; `GetBlob` serves every blob with its first byte flipped.
    CorruptOutputs,
    /// Honest receipts; every blob a peer fetches (`peergrid/blob/1`) has a byte flipped.
    CorruptBlobs,
}

impl Strategy {
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--strategy".to_owned()];
        match self {
            Self::Honest => args.push("honest".into()),
            Self::Lie { group } => args.extend(["lie".into(), "--group".into(), group.clone()]),
            Self::LieWhenPaired {
                group,
                dir,
                pair_window,
            } => args.extend([
                "lie-when-paired".into(),
                "--group".into(),
                group.clone(),
                "--group-dir".into(),
                dir.display().to_string(),
                "--pair-window-ms".into(),
                pair_window.as_millis().to_string(),
            ]),
            Self::Timeout => args.push("timeout".into()),
            Self::Abort => args.push("abort".into()),
            Self::Refuse => args.push("refuse".into()),
            Self::ReplayOwn => args.push("replay-own".into()),
            Self::ReplayOther { from } => {
                args.extend(["replay-other".into(), "--from".into(), from.clone()])
            }
            Self::HugeTrap => args.push("huge-trap".into()),
            Self::Silent => args.push("silent".into()),
            Self::LieOutputs => args.push("lie-outputs".into()),
            Self::CorruptOutputs => args.push("corrupt-outputs".into()),
            Self::CorruptBlobs => args.push("corrupt-blobs".into()),
        }
        args
    }
}

/// How to start a rogue.
#[derive(Debug, Clone)]
pub struct RogueConfig<'a> {
    pub strategy: Strategy,
    /// Submitter keys (hex) whose tasks it takes; empty with `trust_any_key` unset refuses all.
    pub trust: Vec<&'a str>,
    pub trust_any_key: bool,
    /// The loopback address to listen on (127.0.0.1 unless a test wants distinct hosts).
    pub host: Option<&'a str>,
    /// The port to listen on (0, a free one, unless a test restarts it where it was).
    pub port: u16,
    /// Slots it really has (`--cores`, 1 by default).
    pub cores: Option<u32>,
    /// `--claim-slots N`: what `Info`, `Peers` and gossip announce instead of the truth.
    pub claim_slots: Option<u32>,
    /// `--instant`: lies are answered at once, without running the task.
    pub instant: bool,
    /// More flags, e.g. `--gossip --seed KEY@IP:PORT`.
    pub extra_args: Vec<&'a str>,
}

impl<'a> RogueConfig<'a> {
    /// A rogue with `strategy` that trusts `key_hex` alone, defaults otherwise.
    pub fn new(strategy: Strategy, key_hex: &'a str) -> Self {
        Self {
            strategy,
            trust: vec![key_hex],
            trust_any_key: false,
            host: None,
            port: 0,
            cores: None,
            claim_slots: None,
            instant: false,
            extra_args: Vec::new(),
        }
    }
}

/// One task answered, from the rogue's `answered DIGEST KIND TASK_ID` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RogueAnswer {
    /// The task digest, 64 hex characters.
    pub digest: String,
    /// `honest`, `lie`, `timeout`, `replay`, `forward`, or `refused:CODE`.
    pub kind: String,
    pub task_id: String,
}

/// A running `rogue_worker`. Killed (like a crash) when dropped.
pub struct RogueProcess {
    child: Child,
    pub addr: String,
    pub key_hex: String,
    pub fingerprint: String,
    /// When it gossips: how a worker seeds from it (its `KEY@IP:PORT`).
    pub seed: Option<String>,
    pub data_dir: PathBuf,
    stderr_path: PathBuf,
    /// Lines printed after the ready line, as the reader thread passes them on.
    lines: Mutex<mpsc::Receiver<String>>,
    /// Answers read so far.
    answers: Mutex<Vec<RogueAnswer>>,
}

impl RogueProcess {
    /// Starts a rogue on a free loopback port and waits for its ready line.
    pub fn start(data_dir: &Path, config: RogueConfig<'_>) -> Self {
        std::fs::create_dir_all(data_dir).expect("data dir can be created");
        let stderr_path = data_dir.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log can be created");
        let mut command = Command::new(bin("rogue_worker"));
        command
            .arg("--listen")
            .arg(format!(
                "{}:{}",
                config.host.unwrap_or("127.0.0.1"),
                config.port
            ))
            .arg("--data-dir")
            .arg(data_dir)
            .args(config.strategy.args());
        for key in &config.trust {
            command.arg("--trust").arg(key);
        }
        if config.trust_any_key {
            command.arg("--trust-any-key");
        }
        if let Some(cores) = config.cores {
            command.arg("--cores").arg(cores.to_string());
        }
        if let Some(claimed) = config.claim_slots {
            command.arg("--claim-slots").arg(claimed.to_string());
        }
        if config.instant {
            command.arg("--instant");
        }
        command
            .args(&config.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let (child, line, lines) = spawn_until_ready(command, "rogue_worker", &stderr_path);
        // "rogue_worker ready: listening on ADDR key HEX runtime FP slots N gossip on|off
        // strategy S"
        let field = |name: &str| ready_field(&line, name);
        Self {
            addr: field("on"),
            key_hex: field("key"),
            fingerprint: field("runtime"),
            seed: (field("gossip") == "on").then(|| field("on")),
            data_dir: data_dir.to_owned(),
            stderr_path,
            child,
            lines: Mutex::new(lines),
            answers: Mutex::default(),
        }
    }

    /// Every answer it has printed so far.
    pub fn answers(&self) -> Vec<RogueAnswer> {
        self.collect(Duration::ZERO, |_| true)
    }

    /// Waits (at most `within`) until it has printed `count` answers, and returns them all;
    /// panics if it has not.
    pub fn wait_for_answers(&self, count: usize, within: Duration) -> Vec<RogueAnswer> {
        let answers = self.collect(within, |answers| answers.len() >= count);
        assert!(
            answers.len() >= count,
            "rogue printed {} answers within {within:?}, expected {count}: {answers:?}",
            answers.len()
        );
        answers
    }

    /// Reads lines until `enough` holds or `within` has passed.
    fn collect(
        &self,
        within: Duration,
        enough: impl Fn(&[RogueAnswer]) -> bool,
    ) -> Vec<RogueAnswer> {
        let deadline = Instant::now() + within;
        let lines = self.lines.lock().expect("no panics while held");
        let mut answers = self.answers.lock().expect("no panics while held");
        loop {
            while let Ok(line) = lines.try_recv() {
                answers.extend(parse_answer(&line));
            }
            if enough(&answers) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => answers.extend(parse_answer(&line)),
                Err(_) => break,
            }
        }
        answers.clone()
    }

    /// True while the process has not exited.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it logged on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for RogueProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_answer(line: &str) -> Option<RogueAnswer> {
    let mut words = line.strip_prefix("answered ")?.splitn(3, ' ');
    Some(RogueAnswer {
        digest: words.next()?.to_owned(),
        kind: words.next()?.to_owned(),
        task_id: words.next().unwrap_or_default().to_owned(),
    })
}
