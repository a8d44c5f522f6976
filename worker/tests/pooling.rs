//! The pooling allocator has a fixed number of slots: tasks beyond it wait for one instead of
//! failing, and every task still gets the result and fuel it gets alone.

use bytes::Bytes;
use peergrid_worker::limits;
use peergrid_worker::sandbox::{Outcome, TaskSpec};

mod common;

#[test]
fn more_tasks_than_pool_slots_all_finish_with_equal_results() {
    let (sandbox, _scratch) = common::sandbox(1);
    let tasks = 3 * limits::pool_slots(1);
    let wasm = Bytes::from(peergrid_tasks::wasm_bytes("pi"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let executions = runtime.block_on(async {
        let runs = (0..tasks).map(|_| {
            let sandbox = sandbox.clone();
            let wasm = wasm.clone();
            tokio::spawn(async move {
                let spec = TaskSpec {
                    args: vec!["200000".into()],
                    random_seed: [3; 32],
                    ..Default::default()
                };
                sandbox.run_module(wasm, spec).await
            })
        });
        let mut executions = Vec::new();
        for run in runs.collect::<Vec<_>>() {
            executions.push(run.await.unwrap());
        }
        executions
    });
    let first = &executions[0];
    assert_eq!(first.outcome, Outcome::Exited(0));
    for execution in &executions {
        assert_eq!(execution.outcome, first.outcome);
        assert_eq!(execution.stdout, first.stdout);
        assert_eq!(execution.fuel_used, first.fuel_used);
    }
}
