"""What the server-facing `sandbox` commands do; cli.py only parses and prints.

Each function returns a JSON-ready dict (what `--json` prints) and a short text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sandbox.client.connection import Client, job_dict
from sandbox.client.progress import status_line
from sandbox.errors import InvalidInput, JobRejected


def dataset_upload(client: Client, path: Path, name: str) -> tuple[dict[str, Any], str]:
    ds = client.upload_dataset(path, name)
    result = {
        "id": ds.id,
        "name": ds.name,
        "owner": ds.owner,
        "sha256": ds.sha256,
        "bytes": ds.size,
        "num_classes": ds.num_classes,
        "input_shape": list(ds.input_shape),
    }
    return result, f"dataset {ds.id} ({ds.name}, {ds.size} bytes, encrypted at rest)"


def algorithm_upload(client: Client, path: Path) -> tuple[dict[str, Any], str]:
    alg = client.upload_algorithm(path)
    result = {
        "id": alg.id,
        "name": alg.name,
        "version": alg.version,
        "provider": alg.provider,
        "sha256": alg.sha256,
    }
    return result, f"algorithm {alg.id} ({alg.name} {alg.version})"


def algorithm_approve(
    client: Client, algorithm_id: str, dataset_id: str
) -> tuple[dict[str, Any], str]:
    client.preapprove(dataset_id, algorithm_id)
    result = {"dataset_id": dataset_id, "algorithm_id": algorithm_id, "preapproved": True}
    return result, f"jobs of {algorithm_id} on {dataset_id} no longer wait for your approval"


def _job_text(job: dict[str, Any]) -> str:
    lines = [
        f"job {job['id']}: {job['state']}" + (f" ({job['decision']})" if job["decision"] else "")
    ]
    lines.append(f"  approval: {job['approval']}; policy: {job['policy']}")
    lines += [f"  - {reason}" for reason in job.get("reasons", [])]
    return "\n".join(lines)


def job_submit(
    client: Client, dataset_id: str, algorithm_id: str, policy: str
) -> tuple[dict[str, Any], str]:
    job = job_dict(client.submit(dataset_id, algorithm_id, policy))
    return job, _job_text(job)


def job_show(client: Client, job_id: str) -> tuple[dict[str, Any], str]:
    job = job_dict(client.get_job(job_id))
    return job, _job_text(job)


def job_list(client: Client, page_size: int, page_token: str) -> tuple[dict[str, Any], str]:
    response = client.list_jobs(page_size, page_token)
    jobs = [job_dict(j) for j in response.jobs]
    text = "\n".join(f"{j['id']}  {j['state']:<12} {j['decision'] or ''}" for j in jobs)
    if response.next_page_token:
        text += f"\n(more: --page-token {response.next_page_token})"
    return {"jobs": jobs, "next_page_token": response.next_page_token or None}, text


def job_watch(client: Client, job_id: str, show: bool) -> tuple[dict[str, Any], str]:
    last: Any = None
    for job in client.watch(job_id):
        last = job
        status_line(f"job {job.id}: {job.state}", enabled=show)
    result = job_dict(last)
    return result, _job_text(result)


def job_cancel(client: Client, job_id: str) -> tuple[dict[str, Any], str]:
    job = job_dict(client.cancel(job_id))
    return job, _job_text(job)


def job_approve(client: Client, job_id: str, deny: bool) -> tuple[dict[str, Any], str]:
    job = job_dict(client.approve(job_id, deny=deny))
    return job, _job_text(job)


def job_report(client: Client, job_id: str, out: Path | None) -> tuple[dict[str, Any], str]:
    view = client.report(job_id)
    report = json.loads(view.report_json) if view.report_json else {}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(view.report_json)
        if view.attestation_json:
            (out / "attestation.json").write_text(view.attestation_json)
        if view.logs:
            (out / "logs.txt").write_bytes(view.logs)
        # the platform's public key: `sandbox verify out/attestation.json --key out/platform.pem`
        (out / "platform.pem").write_text(client.public_key().pem)
    return report, json.dumps(report, indent=2)


def report_html(client: Client, job_id: str, out: Path) -> tuple[dict[str, Any], str]:
    """`sandbox report JOB --html OUT`: the owner's report as one self-contained page.

    OUT is the page's file name (a directory gets OUT/report.html). A report that is
    missing or not JSON still gives a page, which says what it lacks.
    """
    from sandbox.checks.calibrate import load_calibration
    from sandbox.pipeline.report import write_atomic
    from sandbox.report_html import render_page

    view = client.report(job_id)
    try:
        report: Any = json.loads(view.report_json) if view.report_json else {}
    except ValueError:
        report = {}
    page = render_page(report, load_calibration())
    path = out / "report.html" if out.is_dir() else out
    if not path.parent.is_dir():
        raise InvalidInput(f"--html {out}: directory {path.parent} does not exist; create it first")
    write_atomic(path, page.html.encode(), mode=0o600)
    decision = report.get("decision") if isinstance(report, dict) else None
    result = {
        "job_id": job_id,
        "html": str(path),
        "bytes": len(page.html.encode()),
        "decision": decision,
        "missing": page.missing,
    }
    text = f"report {path} (decision: {decision or 'unknown'})"
    text += "".join(f"\n  missing: {m}" for m in page.missing)
    return result, text


def model_download(client: Client, job_id: str, out: Path) -> tuple[dict[str, Any], str]:
    result = client.download_model(job_id, out)
    return result, f"model {out}: sha256 {result['sha256']} verified against the release record"


def exit_code_for(job: dict[str, Any]) -> int:
    return JobRejected.exit_code if job.get("decision") == "rejected" else 0
