"""Forced DP retraining, host side: accounting, planning and the privacy budget ledger.

- `accountant`: epsilon of Poisson-subsampled Gaussian DP-SGD (Opacus' PRV or RDP
  accountant) and the noise multiplier that reaches a target epsilon;
- `plan`: from the policy's DP settings, the algorithm's hints and n, a frozen
  `DPPlan` (q, steps, sigma, ...) that serialises to the guest's `dp_config.json`;
- `ledger`: each dataset's (epsilon, delta) budget and the charges against it.

The training itself runs in a container: `sandbox.guest.dp_train` (DP-SGD on the
exported graph, per-example gradients by vmap, the platform's own initialisation).
Nothing here imports torch; Opacus is imported only when epsilon is computed.
"""

from sandbox.dp.accountant import ACCOUNTANTS, Accountant, calibrate, spent
from sandbox.dp.ledger import (
    Budget,
    BudgetLedger,
    Charge,
    InMemoryBudgetLedger,
    SqliteBudgetLedger,
)
from sandbox.dp.plan import DPPlan, DPSettings, Hints, check_dp_report, make_plan

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "Budget",
    "BudgetLedger",
    "Charge",
    "DPPlan",
    "DPSettings",
    "Hints",
    "InMemoryBudgetLedger",
    "SqliteBudgetLedger",
    "calibrate",
    "check_dp_report",
    "make_plan",
    "spent",
]
