"""What each party sees of a job: the views the servicers translate into messages.

The provider learns the state (queued, running, done, failed, cancelled) and the
decision; reasons (which may quote container output), the state history (which
holds per-step timings) and logs are the data owner's only.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.store import Job, JobState
from sandbox.store.metadata import TERMINAL


@dataclass(frozen=True)
class HistoryView:
    from_state: str
    to_state: str
    at: float
    detail: str


@dataclass(frozen=True)
class JobView:
    """A job as one caller may see it."""

    id: str
    dataset_id: str
    algorithm_id: str
    submitter: str
    policy_name: str
    state: str
    decision: str
    approval: str
    created: float
    terminal: bool
    reasons: tuple[str, ...] = ()
    history: tuple[HistoryView, ...] = ()


@dataclass(frozen=True)
class ReportView:
    job_id: str
    decision: str
    report_json: str
    attestation_json: str = ""
    logs: bytes = b""
    dataset_opening_json: str = ""


@dataclass(frozen=True)
class ReleaseView:
    job_id: str
    model_sha256: str
    model_size: int
    released_at: float
    decision: str


@dataclass(frozen=True)
class PolicyView:
    name: str
    sha256: str
    json: str


def job_view(job: Job, access: str) -> JobView:
    """`job` as a caller with `access` ('owner', 'provider' or 'operator') may see it."""
    terminal = job.state in TERMINAL
    decision = job.decision.value if job.decision else ""
    if access == "provider":
        # the state and the decision only: no reasons, history or step timings
        if job.state is JobState.QUEUED:
            state = "queued"
        elif terminal:
            state = job.state.value
        else:
            state = "running"
        return JobView(
            id=job.id,
            dataset_id=job.dataset_id,
            algorithm_id=job.algorithm_id,
            submitter=job.submitter,
            policy_name=job.policy_name,
            state=state,
            decision=decision if terminal else "",
            approval=job.approval.state.value,
            created=job.created,
            terminal=terminal,
        )
    return JobView(
        id=job.id,
        dataset_id=job.dataset_id,
        algorithm_id=job.algorithm_id,
        submitter=job.submitter,
        policy_name=job.policy_name,
        state=job.state.value,
        decision=decision,
        approval=job.approval.state.value,
        created=job.created,
        terminal=terminal,
        reasons=job.reasons,
        history=tuple(
            HistoryView(
                change.from_state.value if change.from_state else "",
                change.to_state.value,
                change.at,
                change.detail,
            )
            for change in job.history
        ),
    )
