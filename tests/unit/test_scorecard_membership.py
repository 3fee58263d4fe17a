"""The scorecard's membership channel without Docker: outcome rule, inference, evidence.

The outcome rule is table-tested on constructed reports (what run_local writes);
the attacker's inference is fed losses whose truth is known; the attacker's numpy
forward pass must agree with the package's own torch model.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sandbox.pipeline.report import Report
from sandbox.policy.load import load_policy
from sandbox.redteam.membership_channel import (
    FEATURES,
    Inference,
    QueuedTurns,
    classify,
    dp_advantage_bound,
    evidence,
    flagged_by,
    infer_membership,
    judge,
    logits,
    make_membership_package,
)

AT_CHANCE = Inference(1438, 359, 0.51, 0.04, 0.01, 0.0172)
LEAKED = Inference(1438, 359, 0.97, 0.89, 0.28, 0.0172)
AUDIT_FLAG = {
    "canaries": 200,
    "auc": 0.98,
    "tpr_at_1pct_fpr": 0.6,
    "epsilon_lower_bound": 2.59,
    "confidence": 0.95,
    "verdict": "flag",
    "threshold": 1.0,
}
DP = {"epsilon": 2.99, "delta": 1e-5}


def report(decision: str, **fields: Any) -> Report:
    made = Report(job_id="j", policy={"name": "p", "sha256": "0"})
    made.decision = decision  # type: ignore[assignment]  # any string, as report.json holds
    for name, value in fields.items():
        setattr(made, name, value)
    if decision != "rejected" and made.model is None:
        source = {"released": "candidate", "released_sanitized": "sanitized"}.get(decision, "dp")
        made.model = {"source": source}
    return made


@pytest.mark.parametrize(
    ("made", "released", "outcome"),
    [
        # strict: the audit flags it, DP retraining replaces it, the attack reads ~nothing
        (report("released_dp", membership=AUDIT_FLAG, dp=DP), AT_CHANCE, "neutralized"),
        # a DP model's measurable advantage within its guarantee is still bounded
        (report("released_dp", membership=AUDIT_FLAG, dp=DP), LEAKED, "neutralized"),
        # ... but an advantage above what epsilon allows means the DP did not hold
        (
            report("released_dp", membership=AUDIT_FLAG, dp={"epsilon": 0.1, "delta": 1e-5}),
            LEAKED,
            "leaked",
        ),
        # flagged and rejected (e.g. past the fixed release time): nothing left
        (report("rejected", membership=AUDIT_FLAG), None, "detected"),
        # a probe's flag counts as much as the audit's
        (
            report(
                "rejected", probes={"checks": [{"name": "probe_sensitivity", "verdict": "flag"}]}
            ),
            None,
            "detected",
        ),
        # nothing flagged and nothing released: a step stopped it
        (report("rejected", reasons=["train: exit status 1"]), None, "blocked"),
        # default: no audit, no DP, the provider's model released as is
        (report("released_sanitized"), LEAKED, "leaked"),
        (report("released"), LEAKED, "leaked"),
        # released without DP but the attack reads nothing: the attack failed, nothing left
        (report("released_sanitized"), AT_CHANCE, "neutralized"),
    ],
)
def test_outcome_rule_on_constructed_reports(
    made: Report, released: Inference | None, outcome: str
) -> None:
    assert judge(made, released) == outcome


def test_a_release_without_the_attackers_measurement_is_an_error() -> None:
    with pytest.raises(ValueError, match="inference"):
        classify("released_sanitized", [], None)


def test_flags_come_from_weight_checks_probes_and_the_audit() -> None:
    made = report(
        "rejected",
        checks=[{"name": "sign_runs", "verdict": "flag"}, {"name": "value_ks", "verdict": "pass"}],
        probes={"checks": [{"name": "probe_instability", "verdict": "flag"}]},
        membership=AUDIT_FLAG,
    )
    assert flagged_by(made) == ["sign_runs", "probe_instability", "membership_audit"]
    assert flagged_by(report("rejected", membership={**AUDIT_FLAG, "verdict": "pass"})) == []


def test_dp_advantage_bound() -> None:
    assert dp_advantage_bound(0.0, 0.0) == 0.0  # eps 0: no test beats chance
    assert dp_advantage_bound(3.0, 1e-5) == pytest.approx((math.e**3 - 1 + 2e-5) / (math.e**3 + 1))
    assert 0.90 < dp_advantage_bound(3.0, 1e-5) < 0.91
    assert dp_advantage_bound(50.0, 1e-3) == 1.0


def _logits_for(p_true: np.ndarray, labels: np.ndarray, classes: int = 10) -> np.ndarray:
    """Logits whose softmax gives each record p_true on its label, the rest spread evenly."""
    rest = (1 - p_true) / (classes - 1)
    probs = np.repeat(rest[:, None], classes, axis=1)
    probs[np.arange(len(labels)), labels] = p_true
    return np.log(probs)


def test_inference_separates_memorised_records_and_not_look_alikes() -> None:
    rng = np.random.default_rng(0)
    yin, yout = rng.integers(0, 10, 1000), rng.integers(0, 10, 300)
    # members fitted to loss ~0, non-members at the ~0.4 of a label-smoothed classifier
    members = _logits_for(1 - rng.uniform(1e-6, 1e-3, 1000), yin)
    outside = _logits_for(rng.uniform(0.5, 0.8, 300), yout)
    found = infer_membership(members, yin, outside, yout)
    assert found.auc == 1.0 and found.advantage == 1.0 and found.tpr_at_low_fpr == 1.0
    assert found.leaked
    assert found.null_sd == pytest.approx(math.sqrt(1301 / (12 * 1000 * 300)))
    # the same loss distribution for both: at chance, in 20 draws out of 20
    for seed in range(20):
        rng = np.random.default_rng(seed)
        same_in = _logits_for(rng.uniform(0.5, 1.0, 1000), yin)
        same_out = _logits_for(rng.uniform(0.5, 1.0, 300), yout)
        null = infer_membership(same_in, yin, same_out, yout)
        assert not null.leaked, (seed, null)
        assert 0.43 < null.auc < 0.57
    with pytest.raises(ValueError, match="members"):
        infer_membership(members[:0], yin[:0], outside, yout)


def test_evidence_says_what_each_policy_leaves_open() -> None:
    default = load_policy("default")
    text = evidence(report("released_sanitized"), default, LEAKED, LEAKED, 43.0)
    assert "runs no membership audit" in text
    assert "leaves membership open (set membership.enabled and dp.mode: on_suspicion)" in text
    assert "AUC 0.970" in text and "beats chance" in text
    assert "attacker granted the member/non-member split" in text

    strict = load_policy("strict")
    dp = report("released_dp", membership=AUDIT_FLAG, dp=DP)
    text = evidence(dp, strict, AT_CHANCE, LEAKED, 120.0)
    assert "epsilon >= 2.59 at 95% (flag, threshold 1)" in text
    assert "DP-SGD retraining" in text and "epsilon 2.99" in text
    assert "advantage 0.040 is within it" in text and "control" in text

    late = report(
        "rejected",
        membership=AUDIT_FLAG,
        reasons=["the job ran past the policy's fixed release time of 120 s after submission"],
    )
    text = evidence(late, strict, None, LEAKED, 150.0)
    assert "nothing released (the job ran past" in text and "MIA on the released" not in text


def test_numpy_forward_is_the_packages_model(tmp_path: Path) -> None:
    make_membership_package(tmp_path / "package")
    assert "FEATURES = 512" in (tmp_path / "package" / "model.py").read_text()
    assert "PARAMS = {}" not in (tmp_path / "package" / "train.py").read_text()
    spec = importlib.util.spec_from_file_location(
        "membership_model", tmp_path / "package" / "model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop("membership_model", None)
    torch.manual_seed(0)
    model = module.build_model((64,), 10)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    x = np.random.default_rng(1).integers(0, 17, (32, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    tensors = {k: v.numpy() for k, v in model.state_dict().items()}
    assert tensors["features.weight"].shape == (FEATURES, 64)
    np.testing.assert_allclose(logits(tensors, x), expected, rtol=1e-4, atol=1e-4)


def test_the_membership_job_asks_for_its_turn_after_the_weight_jobs() -> None:
    turns = QueuedTurns(2)
    order: list[str] = []
    lock = threading.Lock()
    release = threading.Event()

    def job(name: str, behind: int = 0) -> None:
        if behind:
            turns.after(behind)
        give_up = turns.job()
        with lock:
            order.append(name)
        release.wait(5)
        give_up()

    threads = [threading.Thread(target=job, args=("membership", 4))]
    threads[0].start()  # started first, it still waits for the four to ask
    threads += [threading.Thread(target=job, args=(f"w{i}",)) for i in range(4)]
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.3)
    assert len(order) == 2 and "membership" not in order  # two at a time
    release.set()
    for thread in threads:
        thread.join(5)
    assert order[-1] == "membership", order
    assert len(order) == 5


def test_a_missing_job_delays_the_membership_turn_only_until_the_timeout() -> None:
    turns = QueuedTurns(2)
    started = time.monotonic()
    turns.after(1, timeout=0.2)  # nobody asks
    assert 0.15 <= time.monotonic() - started < 2.0
    turns.job()()  # and a turn is still free
