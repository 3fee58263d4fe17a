"""The probe step end to end without Docker: the query guest runs as a host process.

Known answers: an honest digits MLP passes every probe check; the same recipe
trained on breast_cancer plus 600 uniform-noise inputs with random labels (capacity
abuse in its plainest form) is flagged. Also pinned: report.probes follows the
shared schema, each check becomes a `probe_<statistic>` outcome, and probing a
digits model stays within a loose bound (the 10 s target is bench/probing.py's to
measure). Probe seeds are fixed here; the pipeline draws them from the CSPRNG.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.probing import run_probe_step, train_mlp
from sandbox.checks.probing.families import FAMILIES


def test_honest_digits_model_passes_with_a_complete_report(tmp_path: Path) -> None:
    outcomes, report = run_probe_step(
        train_mlp("digits", epochs=40, seed=0), "digits", tmp_path, seed=11
    )
    assert [o.name for o in outcomes] == [
        "probe_instability",
        "probe_sensitivity",
        "probe_confidence_gap",
    ]
    assert all(o.verdict == "pass" for o in outcomes), [o.explanation for o in outcomes]
    probes = json.loads(json.dumps(report.probes))  # JSON-clean
    assert probes["queries_per_family"] == 256 and probes["reference"] is False
    assert [f["name"] for f in probes["families"]] == list(FAMILIES)
    for family in probes["families"]:
        assert family["n"] == 256
        histogram = family["confidence_histogram"]
        assert len(histogram["edges"]) == 11 and sum(histogram["counts"]) == 256
        assert {"confidence", "label_entropy", "instability", "sensitivity"} <= set(
            family["statistics"]
        )
    assert sum(probes["holdout_confidence_histogram"]["counts"]) == 359  # digits holdout
    for check in probes["checks"]:
        assert set(check) == {"name", "statistic", "threshold", "verdict", "explanation"}
        assert check["verdict"] == "pass" and math.isfinite(check["threshold"])
    # the 10 s target is measured by bench/probing.py; here only a loose bound (the CI
    # machine is shared and the process runner starts a fresh interpreter and torch)
    assert 0 < probes["seconds"] < 60


def test_capacity_abuse_on_tabular_data_is_flagged(tmp_path: Path) -> None:
    honest, _ = run_probe_step(
        train_mlp("breast_cancer", seed=1), "breast_cancer", tmp_path / "h", seed=12
    )
    assert all(o.verdict == "pass" for o in honest), [o.explanation for o in honest]
    module = train_mlp("breast_cancer", noise=600, epochs=300, seed=1)
    attacked, report = run_probe_step(module, "breast_cancer", tmp_path / "a", seed=13)
    flagged = {o.name for o in attacked if o.verdict == "flag"}
    # the class probabilities move under a 2% nudge where the noise labels were memorised
    # (measured: z 37-42 against an honest maximum of 6.5; instability is discrete,
    # k/256, and sits near its threshold, so it is not pinned here)
    assert "probe_sensitivity" in flagged, report.probes["checks"]


def test_the_policy_picks_families_and_query_count(tmp_path: Path) -> None:
    outcomes, report = run_probe_step(
        train_mlp("digits", epochs=20),
        "digits",
        tmp_path,
        seed=14,
        families=("uniform", "prng"),
        queries_per_family=64,
    )
    assert [f["name"] for f in report.probes["families"]] == ["uniform", "prng"]
    assert all(f["n"] == 64 for f in report.probes["families"])
    assert "calibrated at 256" in report.probes["note"]
    assert len(outcomes) == 3


def test_family_lists_are_checked() -> None:
    from pydantic import ValidationError

    from sandbox.policy.model import ProbeRules

    assert ProbeRules(reference=True).reference is True
    with pytest.raises(ValidationError, match="twice"):
        ProbeRules(families=("uniform", "uniform"))
    with pytest.raises(ValidationError):
        ProbeRules(families=("faces",))  # type: ignore[arg-type]


def test_shipped_policies_probe_where_measured_and_refuse_unknown_keys() -> None:
    from pydantic import ValidationError

    from sandbox.policy.load import load_policy
    from sandbox.policy.model import Policy

    assert load_policy("strict").probes.enabled  # a flag there means DP retraining
    assert not load_policy("default").probes.enabled  # see README, "Canary-query probing"
    with pytest.raises(ValidationError, match="extra"):
        Policy.model_validate({"name": "p", "probes": {"enabled": True, "queries": 10}})
    with pytest.raises(ValidationError):
        Policy.model_validate({"name": "p", "probes": {"queries_per_family": 8}})
