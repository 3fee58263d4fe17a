"""20 concurrent clients x 50 mixed metadata RPCs: no errors; p99 latency reported."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

from sandbox.api.gen.sandbox.v1 import algorithm_pb2, dataset_pb2, job_pb2, policy_pb2
from sandbox.client.connection import Client
from sandbox.demo import EXAMPLE_ALGORITHM, write_digits
from tests.api.conftest import Env

CLIENTS = 20
CALLS = 50


def test_concurrent_clients(env: Env, tmp_path: Path, capsys: object) -> None:
    dataset = env.client("alice").upload_dataset(write_digits(tmp_path / "d.npz"), "d").id
    algorithm = env.client("bob").upload_algorithm(EXAMPLE_ALGORITHM).id
    job = env.client("bob").submit(dataset, algorithm, "default").id  # stays pending
    parties = ["alice", "bob", "carol", "pete", "olga"]
    clients = [(parties[i % 5], env.new_client(parties[i % 5])) for i in range(CLIENTS)]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def work(party: str, client: Client) -> None:
        calls: list[tuple[Any, Any]] = [
            (client.policies.ListPolicies, policy_pb2.ListPoliciesRequest()),
            (client.jobs.ListJobs, job_pb2.ListJobsRequest(page_size=10)),
            (client.algorithms.ListAlgorithms, algorithm_pb2.ListAlgorithmsRequest()),
        ]
        if party in ("alice", "olga"):
            calls.append((client.jobs.GetJob, job_pb2.GetJobRequest(id=job)))
            calls.append((client.datasets.ListDatasets, dataset_pb2.ListDatasetsRequest()))
        start.wait()
        for i in range(CALLS):
            method, request = calls[i % len(calls)]
            t0 = time.perf_counter()
            try:
                method(request, timeout=30)
            except Exception as error:
                with lock:
                    errors.append(f"{party}: {error!r}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=work, args=pc) for pc in clients]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    assert errors == []
    assert len(latencies) == CLIENTS * CALLS
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
    print(
        f"\n{CLIENTS} clients x {CALLS} RPCs: {len(ordered) / elapsed:.0f} RPC/s, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    for _, client in clients:
        client.close()
    assert p99 < 2000  # generous: a shared 2-core machine
