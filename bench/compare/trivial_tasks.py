#!/usr/bin/env python3
"""Trivial-task throughput of Ray and Dask distributed, for comparison with peergrid's grid bench.

The task is the Python counterpart of peergrid's `hello` guest: take the task number, return the
line `hello from peergrid`. Both run a local cluster of 2 single-threaded workers (Ray:
`num_cpus=2`; Dask: `LocalCluster(n_workers=2, threads_per_worker=1)`, worker processes), started
and warmed up before the clock starts, as peergrid's workers are. Each run submits `--tasks`
tasks and waits for every result; the figure is the median tasks/s of `--runs` runs. Unlike
peergrid, each task runs once (no replication, no signatures, nothing written to disk).

    target/bench-venv/bin/python bench/compare/trivial_tasks.py --tasks 4000 --runs 5 [--json]
"""

import argparse
import json
import statistics
import sys
import time


def hello(i):
    return "hello from peergrid\n"


def measure(run_batch, tasks, runs):
    run_batch(min(tasks, 200))  # warm-up: workers started, function shipped
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        results = run_batch(tasks)
        elapsed = time.perf_counter() - started
        assert len(results) == tasks and all(r == "hello from peergrid\n" for r in results)
        rates.append(tasks / elapsed)
    return rates


def bench_ray(tasks, runs):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    remote_hello = ray.remote(hello)
    try:
        return ray.__version__, measure(
            lambda n: ray.get([remote_hello.remote(i) for i in range(n)]), tasks, runs
        )
    finally:
        ray.shutdown()


def bench_dask(tasks, runs):
    import distributed
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        return distributed.__version__, measure(
            lambda n: client.gather(client.map(hello, range(n), pure=False)), tasks, runs
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=["ray", "dask"], help="run one framework only")
    parser.add_argument("--json", action="store_true", help="one JSON line per framework")
    args = parser.parse_args()
    benches = {"ray": bench_ray, "dask": bench_dask}
    failed = False
    for name, bench in benches.items():
        if args.only and name != args.only:
            continue
        try:
            version, rates = bench(args.tasks, args.runs)
        except Exception as error:  # report and go on with the other framework
            print(f"{name}: failed: {error!r}", file=sys.stderr)
            failed = True
            continue
        median = statistics.median(rates)
        if args.json:
            print(json.dumps({"framework": name, "version": version, "tasks": args.tasks,
                              "runs": args.runs, "tasks_per_s": round(median, 1),
                              "all_tasks_per_s": [round(r, 1) for r in rates]}), flush=True)
        else:
            print(f"{name} {version}: {median:.0f} tasks/s (median of {args.runs} runs of "
                  f"{args.tasks}; runs: {', '.join(f'{r:.0f}' for r in rates)})", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
