"""A fake executor: the platform's queue, states and views without containers."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from sandbox.pipeline.report import Report
from sandbox.policy.model import Policy
from sandbox.service.executor import Progress


class FakeExecutor:
    """Writes what run_local writes; `mode`: released, rejected, crash or block."""

    def __init__(self, mode: str = "released") -> None:
        self.mode = mode
        self.seen_inputs: list[tuple[bytes, bytes]] = []
        self.release_block = threading.Event()
        self.stopped: list[str] = []
        self.reconciled: list[set[str]] = []
        self.devices: list[str | None] = []

    def run(
        self,
        *,
        job_id: str,
        algorithm: Path,
        dataset: Path,
        policy: Policy,
        out_dir: Path,
        progress: Progress,
        gpu_device: str | None,
    ) -> Report:
        self.seen_inputs.append((dataset.read_bytes()[:4], algorithm.read_bytes()[:2]))
        self.devices.append(gpu_device)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "owner").mkdir(mode=0o700, exist_ok=True)
        (out_dir / "owner" / "logs.txt").write_bytes(b"container said: secret row 17\n")
        report = Report(job_id=job_id, policy={"name": policy.name, "sha256": "0" * 64})
        progress("architecture", "export")
        progress("train", "train")
        if self.mode == "block":
            self.release_block.wait(30)
            raise RuntimeError("stopped")
        if self.mode == "crash":
            raise RuntimeError("boom: /secret/path/in/traceback")
        progress("gate", "gate")
        progress("utility", "utility")
        report.timings = {"train": 1.5}
        if self.mode == "rejected":
            report.decision = "rejected"
            report.reasons = ["train: exit code 1; stderr: secret row 17"]
        else:
            model = os.urandom(3000)
            (out_dir / "model.safetensors").write_bytes(model)
            report.decision = "released"
            report.reasons = ["the model passed the egress gate and was released"]
            report.model = {"sha256": hashlib.sha256(model).hexdigest(), "bytes": len(model)}
            report.utility = {"released_accuracy": 0.95, "candidate_accuracy": 0.95}
            (out_dir / "attestation.json").write_text(json.dumps({"payloadType": "fake"}))
        (out_dir / "report.json").write_text(report.to_json())
        return report

    def stop(self, job_id: str) -> None:
        self.stopped.append(job_id)
        self.release_block.set()

    def reconcile(self, job_ids: set[str]) -> list[str]:
        self.reconciled.append(set(job_ids))
        return []
