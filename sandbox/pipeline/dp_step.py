"""Step 5: forced DP retraining, and the dataset's privacy budget around it.

The budget is reserved before any container starts (a job that would overspend is
refused with the remaining budget in the message) and settled when the job ends:
committed when something was released or DP training ran, cancelled otherwise.
A release without DP is charged as unbounded (epsilon = inf), which a policy may
forbid.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sandbox.dp import BudgetLedger, DPPlan, DPSettings, Hints, check_dp_report, make_plan
from sandbox.errors import InvalidInput, LimitExceeded, NotFound
from sandbox.gate import gate_output
from sandbox.pipeline import containers
from sandbox.pipeline.algorithm import AlgorithmPackage
from sandbox.pipeline.architecture import Architecture
from sandbox.pipeline.context import JobContext, StepFailed, expect_only, read_small
from sandbox.pipeline.dataset import Dataset
from sandbox.policy.model import Policy
from sandbox.runner.base import BindMount


def dp_settings(policy: Policy) -> DPSettings:
    dp = policy.dp
    return DPSettings(
        epsilon=dp.epsilon,
        delta=dp.delta,
        accountant=dp.accountant,
        clip=dp.clip,
        epochs=dp.epochs,
        batch_size=dp.batch_size,
        lr=dp.lr,
        default_epochs=dp.default_epochs,
        default_batch_size=dp.default_batch_size,
        default_lr=dp.default_lr,
        optimizer=dp.optimizer,
        momentum=dp.momentum,
        hints=dp.hints,
        device="cuda" if policy.gpu else "cpu",
        chunk=dp.chunk,
        warmup_fraction=dp.warmup_fraction,
        schedule=dp.schedule,
        ema=dp.ema,
        init_last=dp.init_last,
        label_smoothing=dp.label_smoothing,
    )


@dataclass
class Budgeting:
    """The job's charge on its dataset's privacy budget."""

    ledger: BudgetLedger
    dataset_id: str
    job_id: str
    plan: DPPlan | None = None
    dp_started: bool = False
    reserved: bool = False

    def ensure_budget(self, policy: Policy) -> None:
        """A dataset seen for the first time gets the policy's budget."""
        try:
            self.ledger.budget(self.dataset_id)
        except NotFound:
            releases = max(1, math.floor(policy.dp.budget_epsilon / policy.dp.epsilon))
            delta = min(0.999, policy.dp.delta * releases)
            self.ledger.set_budget(self.dataset_id, policy.dp.budget_epsilon, delta)

    def reserve(self, policy: Policy, package: AlgorithmPackage, train: Dataset) -> None:
        """Before any container: plan DP when the policy may need it; reserve what is known.

        `always` reserves the DP cost now, so an over-budget job never starts. `never`
        reserves an unbounded charge now (refused when the dataset forbids non-DP
        releases). `on_suspicion` reserves when a check asks for DP retraining; until
        then nothing is charged.
        """
        self.ensure_budget(policy)
        mode = policy.dp.mode
        if mode != "never":
            hints = Hints.from_mapping(package.hyperparameters)
            self.plan = make_plan(dp_settings(policy), hints, len(train.y))
        if mode == "always":
            assert self.plan is not None
            self._reserve(self.plan.epsilon, self.plan.delta, unbounded=False)
        elif mode == "never":
            self._reserve(math.inf, 0.0, unbounded=policy.dp.allow_non_dp_release)

    def reserve_dp(self) -> None:
        """Just before DP retraining under `on_suspicion`: LimitExceeded if it cannot pay."""
        if self.reserved or self.plan is None:
            return
        self._reserve(self.plan.epsilon, self.plan.delta, unbounded=False)

    def _reserve(self, epsilon: float, delta: float, *, unbounded: bool) -> None:
        self.ledger.reserve(self.dataset_id, self.job_id, epsilon, delta, allow_unbounded=unbounded)
        self.reserved = True

    def settle(self, policy: Policy, decision: str) -> None:
        """When the job ends: pay for what was released or trained, return the rest."""
        released = decision != "rejected"
        plain_release = released and decision != "released_dp"
        if plain_release and self.plan is not None:
            # Planned for DP but released the provider's model: that costs "unbounded".
            if self.reserved:
                self.ledger.cancel(self.dataset_id, self.job_id)
            self._reserve(math.inf, 0.0, unbounded=policy.dp.allow_non_dp_release)
        if not self.reserved:
            return
        if released or self.dp_started:
            self.ledger.commit(self.dataset_id, self.job_id)
        else:
            self.ledger.cancel(self.dataset_id, self.job_id)


def dp_retrain(ctx: JobContext, budgeting: Budgeting, arch: Architecture) -> Path:
    """Train the declared architecture with DP-SGD from the platform's own initialisation.

    Runs only platform code on the exported graph (no provider Python), sees the
    training split and the program but never the provider's weights. Its output
    goes through the same gate as the provider's.
    """
    ws, policy, plan = ctx.workspace, ctx.policy, budgeting.plan
    if plan is None:
        raise StepFailed("dp-retrain: no DP plan (the policy's dp.mode is never)")
    dpwork = ws.tmpfs("dpwork", policy.limits.output_mb * 2 + 16)
    shutil.copyfile(ws.path / "work" / "model.pt2", dpwork / "model.pt2")
    (dpwork / "dp_config.json").write_bytes(plan.to_json())
    for name in ("model.pt2", "dp_config.json"):
        os.chmod(dpwork / name, 0o444)
    try:
        budgeting.reserve_dp()
    except LimitExceeded as over:
        raise StepFailed(f"dp-retrain: {over.message}") from over
    out = ws.output_dir("dp", policy.limits.output_mb)
    budgeting.dp_started = True  # from here the charge is spent, whatever happens
    ctx.run(
        containers.guest_spec(
            policy,
            job_id=ctx.job_id,
            step="dp-retrain",
            image=ctx.image,
            module="dp_train",
            mounts=[
                BindMount(dpwork, "/work"),
                BindMount(ws.path / "data", "/data"),
                BindMount(out, "/output", False),
            ],
            gpu_device=ctx.gpu_device,
        )
    )
    expect_only(out, {"model.safetensors", "dp.json"}, "dp-retrain")
    try:
        ran = check_dp_report(plan, read_small(out / "dp.json", 65536))
    except InvalidInput as bad:
        raise StepFailed(f"dp-retrain: {bad.message}") from bad
    os.unlink(out / "dp.json")  # the gate accepts exactly model.safetensors
    dest = ws.path / "work" / "dp.safetensors"
    gate_output(out, dict(arch.tensors), policy.gate, dest)
    os.chmod(dest, 0o444)
    ctx.report.dp = {**plan.summary(), "device": ran.get("device", "cpu")}
    return dest
