"""The membership audit (issue 6, item 4): planted canaries scored after training.

- `canary_count` / `draw_canaries`: which training records become canaries and the
  secret fair coin for each (kept in training or held back);
- `loss_score` / `likelihood_ratio_score`: membership scores from logits;
- `roc_curve` / `auc` / `tpr_at_fpr`: how well the scores separate members;
- `epsilon_lower_bound` / `one_run_bound`: the one-run audit of Steinke, Nasr and
  Jagielski (2023), an empirical lower bound on the training's epsilon;
- `audit_scores`: all of it, and the verdict against the policy's threshold.
"""

from sandbox.checks.membership.audit import (
    GUESS_GRID,
    MembershipAudit,
    OneRunBound,
    audit_scores,
    guess_counts,
    one_run_bound,
)
from sandbox.checks.membership.canaries import (
    MIN_CANARIES,
    CanaryDraw,
    canary_count,
    draw_canaries,
)
from sandbox.checks.membership.epsilon import epsilon_lower_bound, p_value
from sandbox.checks.membership.roc import Roc, auc, resample, roc_curve, tpr_at_fpr
from sandbox.checks.membership.scores import likelihood_ratio_score, loss_score

__all__ = [
    "GUESS_GRID",
    "MIN_CANARIES",
    "CanaryDraw",
    "MembershipAudit",
    "OneRunBound",
    "Roc",
    "auc",
    "audit_scores",
    "canary_count",
    "draw_canaries",
    "epsilon_lower_bound",
    "guess_counts",
    "likelihood_ratio_score",
    "loss_score",
    "one_run_bound",
    "p_value",
    "resample",
    "roc_curve",
    "tpr_at_fpr",
]
