"""The membership audit in the pipeline: plant canaries before training, audit after.

`plant` (called by `steps.prepare`, before train.npz is written) draws m canaries
from the training split with secret coin flips and returns the split WITHOUT the
held-back half: the provider's code never sees an excluded canary. The canaries
themselves (records and flips) stay in the orchestrator's memory only.

`audit` (called after the weight checks) asks trusted code for the candidate's
logits on all m canaries (`query_models`: the exported graph, no provider
Python), scores them by loss, writes the aggregates to report.json's `membership`
(owner-only) and returns a `membership_audit` CheckOutcome for `decide`.

The score is the loss, not the likelihood ratio: a reference model would have to be
trained by the platform on the split with EVERY canary removed, and no pipeline
step trains one yet (a reference trained on train.npz has seen the included
canaries and would cancel the signal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sandbox.checks.membership import audit_scores, canary_count, draw_canaries, loss_score
from sandbox.checks.membership.audit import ScoreKind
from sandbox.errors import InvalidInput
from sandbox.pipeline.context import JobContext, StepFailed
from sandbox.pipeline.dataset import Dataset
from sandbox.pipeline.query import query_models
from sandbox.policy.decide import CheckOutcome

STEP = "membership"
QUERY = "canaries"  # the canaries' query set, in whichever container answers it


@dataclass(frozen=True, eq=False)
class PlantedCanaries:
    """The m canaries (records and coin flips): host memory only, never written anywhere."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    included: npt.NDArray[np.bool_]
    #: positions in the split before planting of the records that are not canaries: the
    #: references of the likelihood-ratio score train on these alone
    clean: npt.NDArray[np.int64] | None = None

    def __repr__(self) -> str:  # a log line or traceback must not print the secret
        return f"PlantedCanaries(m={len(self.y)}, secret)"


def plant(
    ctx: JobContext, train: Dataset, seed: int | None = None
) -> tuple[Dataset, PlantedCanaries | None]:
    """The training split the provider may see, and the canaries (None when disabled).

    seed=None (production) draws from the OS CSPRNG; tests pass a seed.
    """
    rules = ctx.policy.membership
    if not rules.enabled:
        return train, None
    try:
        m = canary_count(len(train), rules.canaries, rules.max_canary_fraction)
    except ValueError as error:
        raise InvalidInput(str(error)) from error
    draw = draw_canaries(len(train), m, seed)
    keep = draw.keep_mask(len(train))
    visible = Dataset(
        x=np.ascontiguousarray(train.x[keep]),
        y=np.ascontiguousarray(train.y[keep]),
        num_classes=train.num_classes,
        input_shape=train.input_shape,
    )
    clean = np.ones(len(train), dtype=bool)
    clean[draw.indices] = False
    canaries = PlantedCanaries(
        x=np.ascontiguousarray(train.x[draw.indices]),
        y=np.ascontiguousarray(train.y[draw.indices]),
        included=draw.included.copy(),
        clean=np.flatnonzero(clean).astype(np.int64),
    )
    return visible, canaries


def audit(
    ctx: JobContext,
    canaries: PlantedCanaries,
    logits: npt.NDArray[np.float32] | None = None,
    references: Sequence[npt.NDArray[np.float32]] = (),
) -> CheckOutcome:
    """Score the candidate's membership of every canary; record and judge it.

    `logits` are the candidate's answers on `canaries.x` when another step already
    asked for them (the probe container answers them when probing is on); otherwise
    a query container of its own computes them. `references` are the answers of
    models the platform trained WITHOUT any canary (the probe's references, trained
    on the canary-free split): with them the score is the likelihood ratio (the
    candidate's log-probability of the true label minus the references' mean),
    which removes each record's own difficulty; without, the loss.
    """
    rules = ctx.policy.membership
    if logits is None:
        logits = query_models(ctx, ["candidate"], {QUERY: canaries.x}, STEP)["candidate"][QUERY]
    kind: ScoreKind = "likelihood_ratio" if references else "loss"
    try:
        scores = loss_score(logits, canaries.y)
        if references:
            scores = scores - np.mean([loss_score(r, canaries.y) for r in references], axis=0)
    except ValueError as error:  # e.g. fewer outputs than the dataset has classes
        reason = f"{STEP}: the candidate's logits do not fit the labels ({error})"
        raise StepFailed(reason) from None
    result = audit_scores(
        scores,
        canaries.included,
        score=kind,
        confidence=rules.confidence,
        max_epsilon=rules.max_epsilon_lower_bound,
    )
    ctx.report.membership = result.to_report()
    return CheckOutcome("membership_audit", result.verdict, result.explanation)
