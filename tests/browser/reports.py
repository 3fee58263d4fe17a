"""Reports for the HTML report tests: a real one, and the same with every optional field.

`report_lsb_dp.json` is a real report.json, written by `run_local` in the integration
suite for the red-team LSB attack under `dp: always` (two low-bit checks flag, the
DP-retrained model is released). `full_report` adds what that run had not: per-tensor
low-bit entropy, and the probing and membership sections in the schema the lead
fixed for them (values shaped like real ones: 11 edges, 10 counts, 101 ROC points).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


def real_report() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "report_lsb_dp.json").read_text())
    return data


def _histogram(counts: list[int]) -> dict[str, Any]:
    return {"edges": [round(i / 10, 1) for i in range(11)], "counts": counts}


def full_report() -> dict[str, Any]:
    report = copy.deepcopy(real_report())
    for check in report["checks"]:
        if check["name"] == "lowbit_patterned":
            check["details"]["entropy_bits"] = {
                name: 11.25 + i for i, name in enumerate(check["details"]["per_tensor"])
            }
    report["probes"] = {
        "queries_per_family": 200,
        "reference": True,
        "families": [
            {
                "name": "uniform_noise",
                "n": 200,
                "statistics": {"mean_confidence": 0.41},
                "confidence_histogram": _histogram([0, 12, 40, 61, 44, 25, 10, 5, 2, 1]),
            },
            {
                "name": "shuffled_pixels",
                "n": 200,
                "statistics": {"mean_confidence": 0.93},
                "confidence_histogram": _histogram([0, 0, 0, 1, 2, 3, 6, 14, 40, 134]),
            },
        ],
        "holdout_confidence_histogram": _histogram([0, 0, 1, 2, 3, 5, 9, 20, 51, 268]),
        "checks": [
            {
                "name": "probe_mean_confidence",
                "statistic": "mean_confidence",
                "threshold": 0.85,
                "verdict": "flag",
                "explanation": "the model is over-confident on shuffled_pixels queries",
            }
        ],
        "seconds": 2.4,
    }
    fpr = [i / 100 for i in range(101)]
    report["membership"] = {
        "canaries": 128,
        "included": 64,
        "score": "loss",
        "auc": 0.62,
        "tpr_at_1pct_fpr": 0.05,
        "epsilon_lower_bound": 0.31,
        "confidence": 0.95,
        "roc": {"fpr": fpr, "tpr": [min(1.0, round(f**0.6, 4)) for f in fpr]},
        "verdict": "pass",
        "threshold": 1.0,
        "explanation": "the canaries the model trained on are barely told from the others",
    }
    return report
