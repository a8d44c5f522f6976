//! The `random_get` rule as `proto/peergrid.proto` states it gives, byte for byte, what a guest
//! calling `random_get` sees in the sandbox: a worker written from the `.proto` alone agrees with
//! this one on every task that uses randomness.
//!
//! The rule is read from the `spec:random_get` lines of the `.proto`'s text and computed here
//! with the `blake3` crate directly, not through the sandbox's own code: a wrong text fails.

use std::collections::HashMap;

use bytes::Bytes;
use peergrid_proto::signing::sign_task;
use peergrid_proto::{Identity, pb};
use peergrid_worker::admission::{TrustPolicy, admit};
use peergrid_worker::sandbox::Outcome;
use prost::Message;

mod common;

const PROTO: &str = include_str!("../../proto/peergrid.proto");
const MARK: &str = "spec:random_get ";

/// The rule as the `.proto` states it: guest byte k is XOF byte `stride * k + offset`.
#[derive(Debug)]
struct Rule {
    context: String,
    stride: usize,
    offset: usize,
}

impl Rule {
    /// The first `n` guest random bytes of a task whose seed is `seed`.
    fn guest_bytes(&self, seed: &[u8; 32], n: usize) -> Vec<u8> {
        let mut xof = vec![0; self.offset + self.stride * n];
        self.xof(seed).fill(&mut xof);
        (0..n).map(|k| xof[self.stride * k + self.offset]).collect()
    }

    fn xof(&self, seed: &[u8; 32]) -> blake3::OutputReader {
        let mut hasher = blake3::Hasher::new_derive_key(&self.context);
        hasher.update(seed);
        hasher.finalize_xof()
    }
}

/// The `spec:random_get KEY = VALUE` lines of the `.proto`, each key exactly once.
fn spec_lines() -> HashMap<String, String> {
    let mut lines = HashMap::new();
    for line in PROTO.lines() {
        let Some((_, rest)) = line.split_once(MARK) else {
            continue;
        };
        let (key, value) = rest
            .split_once(" = ")
            .unwrap_or_else(|| panic!("`{line}`: expected `{MARK}KEY = VALUE`"));
        let previous = lines.insert(key.trim().to_owned(), value.trim().to_owned());
        assert!(previous.is_none(), "`{MARK}{key}` appears twice");
    }
    lines
}

fn get<'a>(lines: &'a HashMap<String, String>, key: &str) -> &'a str {
    lines
        .get(key)
        .unwrap_or_else(|| panic!("the .proto has no `{MARK}{key} = …` line"))
}

/// Reads the rule: `context = "…"`, `seed = program digest`, `guest_byte(k) = xof(A*k + B)`.
fn rule(lines: &HashMap<String, String>) -> Rule {
    let context = get(lines, "context");
    let context = context
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("context {context} is not a quoted string"));
    assert_eq!(
        get(lines, "seed"),
        "program digest",
        "this test knows how to compute one seed: the program digest, BLAKE3 of `TaskManifest.program`"
    );
    let expression = get(lines, "guest_byte(k)");
    let index = expression
        .strip_prefix("xof(")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("guest_byte(k) = {expression}: expected `xof(A*k + B)`"));
    let (product, offset) = match index.split_once('+') {
        Some((product, offset)) => (product.trim(), offset.trim().parse().unwrap()),
        None => (index.trim(), 0),
    };
    let stride = match product {
        "k" => 1,
        product => product
            .strip_suffix("*k")
            .and_then(|stride| stride.trim().parse().ok())
            .unwrap_or_else(|| panic!("guest_byte(k) = {expression}: expected `xof(A*k + B)`")),
    };
    Rule {
        context: context.to_owned(),
        stride,
        offset,
    }
}

fn hex_line(lines: &HashMap<String, String>, key: &str) -> Vec<u8> {
    hex::decode(get(lines, key)).unwrap_or_else(|e| panic!("`{MARK}{key}`: not hex: {e}"))
}

#[test]
fn the_worked_example_follows_the_rule() {
    let lines = spec_lines();
    let rule = rule(&lines);
    let seed: [u8; 32] = hex_line(&lines, "example seed").try_into().unwrap();
    let xof_expected = hex_line(&lines, "example xof[0..32]");
    let guest_expected = hex_line(&lines, "example guest[0..8]");

    let mut xof = [0; 32];
    rule.xof(&seed).fill(&mut xof);
    assert_eq!(
        hex::encode(xof),
        hex::encode(&xof_expected),
        "the example's XOF bytes"
    );
    assert_eq!(
        hex::encode(rule.guest_bytes(&seed, 8)),
        hex::encode(&guest_expected),
        "the example's guest bytes"
    );
}

#[test]
fn a_guest_calling_random_get_sees_the_bytes_the_proto_rule_gives() {
    let rule = rule(&spec_lines());
    let wasm = peergrid_tasks::wasm_bytes("entropy");
    // The seed is computed here from the bytes that travel, as a worker written from the spec
    // would; the sandbox gets it from admission, as a real worker's task does.
    let program = pb::Program {
        module_hash: blake3::hash(&wasm).as_bytes().to_vec().into(),
        args: vec!["spec_random_get".into()],
        ..Default::default()
    };
    let program_bytes = program.encode_to_vec();
    let manifest = pb::TaskManifest {
        program: program_bytes.clone().into(),
        expires_at_unix_s: 2,
        ..Default::default()
    };
    let signed = sign_task(&Identity::from_seed([9; 32]), &manifest);
    let task = admit(&signed, &TrustPolicy::anyone(), 1).expect("admitted");

    let (sandbox, _scratch) = common::sandbox(1);
    let execution = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sandbox.run_module(Bytes::from(wasm), task.spec));
    assert_eq!(execution.outcome, Outcome::Exited(0));
    let stdout = String::from_utf8(execution.stdout.to_vec()).unwrap();
    // `entropy` prints two successive 32-byte `random_get` draws, so the rule is checked across
    // calls too: the second call continues the stream where the first stopped.
    let drawn: Vec<u8> = ["random1: ", "random2: "]
        .iter()
        .flat_map(|label| {
            let line = stdout
                .lines()
                .find_map(|line| line.strip_prefix(label))
                .unwrap_or_else(|| panic!("no `{label}` line in:\n{stdout}"));
            hex::decode(line).unwrap_or_else(|e| panic!("{label}{line}: {e}"))
        })
        .collect();
    assert_eq!(drawn.len(), 64);

    let seed: [u8; 32] = *blake3::hash(&program_bytes).as_bytes();
    assert_eq!(
        hex::encode(&drawn),
        hex::encode(rule.guest_bytes(&seed, drawn.len())),
        "the guest's random bytes (left) against the .proto's rule {rule:?} (right)"
    );
}
