"""`sandbox demo`: the whole product in one process, over real mTLS.

A server starts on an ephemeral port with fresh certificates in a temporary state
directory; a data owner uploads scikit-learn's digits, a provider uploads the
example algorithm and submits a job, the owner approves it, the job runs in the
Docker sandbox, the provider downloads the released model and checks its sha256
against the release record, and the owner reads the full report.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from sandbox.client.config import load_config
from sandbox.client.connection import Client
from sandbox.client.progress import status_line
from sandbox.store import Role


def run_demo(policy: str, out: Path | None, *, show: bool) -> dict[str, Any]:
    from sandbox.demo import EXAMPLE_ALGORITHM, write_digits
    from sandbox.server import start_server
    from sandbox.service.state import init_state

    def say(text: str) -> None:
        status_line(f"demo: {text}", enabled=show)

    with tempfile.TemporaryDirectory(prefix="sandbox-demo-") as tmp:
        root = Path(tmp)
        configs = init_state(
            root / "state", [("owner", Role.DATA_OWNER), ("provider", Role.PROVIDER)]
        )
        server = start_server(root / "state", "127.0.0.1:0")
        say(f"server on 127.0.0.1:{server.port} (mTLS, fresh CA in {root / 'state'})")
        try:

            def connect(party: str) -> Client:
                config = replace(load_config(configs[party]), address=f"127.0.0.1:{server.port}")
                return Client(config, progress=show)

            with connect("owner") as owner, connect("provider") as provider:
                dataset = owner.upload_dataset(write_digits(root / "digits.npz"), "digits")
                say(f"owner uploaded dataset {dataset.id} (stored encrypted)")
                algorithm = provider.upload_algorithm(EXAMPLE_ALGORITHM)
                say(f"provider uploaded algorithm {algorithm.id}")
                job = provider.submit(dataset.id, algorithm.id, policy)
                say(f"provider submitted job {job.id}; waiting for the owner's approval")
                owner.approve(job.id)
                say("owner approved; the job runs in the sandbox")
                for update in owner.watch(job.id):
                    say(f"job {update.state}")
                final = provider.get_job(job.id)
                report_view = owner.report(job.id)
                report = json.loads(report_view.report_json)
                result: dict[str, Any] = {
                    "job_id": job.id,
                    "decision": final.decision or final.state,
                    "reasons": report.get("reasons", list(final.reasons)),
                    "accuracy": (report.get("utility") or {}).get("released_accuracy"),
                    "model_sha256": None,
                    "verified": False,
                    "dataset_id": dataset.id,
                    "algorithm_id": algorithm.id,
                    "policy": policy,
                    "report": report,  # the data owner's full report
                }
                keep = out or root / "out"
                keep.mkdir(parents=True, exist_ok=True)
                (keep / "report.json").write_text(report_view.report_json)
                if report_view.attestation_json:
                    (keep / "attestation.json").write_text(report_view.attestation_json)
                if final.decision and final.decision != "rejected":
                    download = provider.download_model(job.id, keep / "model.safetensors")
                    result["model_sha256"] = download["sha256"]
                    result["verified"] = download["verified"]
                    say(f"provider downloaded the model; sha256 {download['sha256']} verified")
                pem = provider.public_key().pem
                (keep / "platform.pem").write_text(pem)
                result["out"] = str(keep) if out else None
        finally:
            server.stop()
        if out is None:
            shutil.rmtree(root / "out", ignore_errors=True)
        return result
