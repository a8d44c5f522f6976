//! Converts between the sandbox's [`Outcome`] and the receipt's wire fields, and builds signed
//! receipts. Shared by the worker (which signs) and the CLI (which prints).

use bytes::Bytes;
use peergrid_proto::{ContentHash, Identity, pb};

use crate::sandbox::{Execution, Outcome, TrapKind};

/// The wire triple (outcome, exit code, trap or reason) of an outcome.
pub fn outcome_to_wire(outcome: &Outcome) -> (pb::Outcome, i32, String) {
    match outcome {
        Outcome::Exited(code) => (pb::Outcome::Exited, *code, String::new()),
        Outcome::Trapped(kind) => (pb::Outcome::Trapped, 0, kind.name().to_owned()),
        Outcome::OutOfFuel => (pb::Outcome::OutOfFuel, 0, String::new()),
        Outcome::MemoryLimit => (pb::Outcome::MemoryLimit, 0, String::new()),
        Outcome::TimedOut => (pb::Outcome::TimedOut, 0, String::new()),
        Outcome::OutputLimit => (pb::Outcome::OutputLimit, 0, String::new()),
        Outcome::InvalidModule(reason) => (pb::Outcome::InvalidModule, 0, reason.clone()),
    }
}

/// The outcome a receipt states; `None` for an outcome this version does not know.
pub fn outcome_from_wire(receipt: &pb::Receipt) -> Option<Outcome> {
    Some(match pb::Outcome::try_from(receipt.outcome).ok()? {
        pb::Outcome::Unspecified => return None,
        pb::Outcome::Exited => Outcome::Exited(receipt.exit_code),
        pb::Outcome::Trapped => Outcome::Trapped(TrapKind::from_name(&receipt.trap)),
        pb::Outcome::OutOfFuel => Outcome::OutOfFuel,
        pb::Outcome::MemoryLimit => Outcome::MemoryLimit,
        pb::Outcome::TimedOut => Outcome::TimedOut,
        pb::Outcome::OutputLimit => Outcome::OutputLimit,
        pb::Outcome::InvalidModule => Outcome::InvalidModule(receipt.trap.clone()),
    })
}

/// Builds and signs the receipt for `execution` of the task with `task_digest`.
pub fn sign(
    identity: &Identity,
    fingerprint: &str,
    task_digest: ContentHash,
    execution: &Execution,
) -> pb::SignedReceipt {
    let (outcome, exit_code, trap) = outcome_to_wire(&execution.outcome);
    let receipt = pb::Receipt {
        task_digest: Bytes::copy_from_slice(task_digest.as_bytes()),
        worker_key: Bytes::copy_from_slice(&identity.public_key().to_bytes()),
        runtime_fingerprint: fingerprint.to_owned(),
        outcome: outcome as i32,
        exit_code,
        trap,
        stdout_hash: Bytes::copy_from_slice(ContentHash::of(&execution.stdout).as_bytes()),
        stderr_hash: Bytes::copy_from_slice(ContentHash::of(&execution.stderr).as_bytes()),
        fuel_used: execution.fuel_used,
        outputs_hash: execution
            .outputs
            .as_ref()
            .map(|outputs| Bytes::copy_from_slice(outputs.digest().as_bytes()))
            .unwrap_or_default(),
    };
    peergrid_proto::signing::sign_receipt(identity, &receipt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_survives_the_wire() {
        let outcomes = [
            Outcome::Exited(7),
            Outcome::Trapped(TrapKind::StackOverflow),
            Outcome::Trapped(TrapKind::Other("interrupt".into())),
            Outcome::OutOfFuel,
            Outcome::MemoryLimit,
            Outcome::TimedOut,
            Outcome::OutputLimit,
            Outcome::InvalidModule("bad magic".into()),
        ];
        for outcome in outcomes {
            let (wire, exit_code, trap) = outcome_to_wire(&outcome);
            let receipt = pb::Receipt {
                outcome: wire as i32,
                exit_code,
                trap,
                ..Default::default()
            };
            assert_eq!(outcome_from_wire(&receipt), Some(outcome));
        }
        let unknown = pb::Receipt {
            outcome: 99,
            ..Default::default()
        };
        assert_eq!(outcome_from_wire(&unknown), None);
    }
}
