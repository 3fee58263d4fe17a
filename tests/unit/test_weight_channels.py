"""The weight channels' scoring and outcome rules, without Docker.

`classify` is table-tested; `score_extraction` is fed decoded outputs whose truth
is known: an exact copy of the records (must beat chance), fair coins and
reconstructions of other records (must stay at chance), and a weak but real signal.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from sandbox.demo import sample_dataset
from sandbox.pipeline.report import Report
from sandbox.redteam.attacks import Decoded, Knowledge, true_bits
from sandbox.redteam.weight_channels import (
    CHANNELS,
    Extraction,
    _Turns,
    channels_for,
    classify,
    evidence,
    flagged_by,
    score_extraction,
    wilson_lower,
)

AT_CHANCE = Extraction("bit accuracy", 0.5, 0.5, 10_000, 0.485, 0.001, 20, 0, 8.0, 8.0, 6.0)
LEAKED = replace(AT_CHANCE, observed=0.99, lower=0.98)


@pytest.mark.parametrize(
    ("decision", "flagged", "extraction", "outcome"),
    [
        # a check flagged it and nothing left
        ("rejected", ["lowbit_patterned"], None, "detected"),
        # flagged, replaced by the DP model, whose decoding is at chance
        ("released_dp", ["data_correlation"], AT_CHANCE, "detected"),
        # flagged, yet what was released still carries the records
        ("released_dp", ["sign_balance"], LEAKED, "leaked"),
        # not flagged, sanitized, at chance
        ("released_sanitized", [], AT_CHANCE, "neutralized"),
        ("released_dp", [], AT_CHANCE, "neutralized"),
        # released and extraction beats chance
        ("released_sanitized", [], LEAKED, "leaked"),
        ("released", [], LEAKED, "leaked"),
        # released, the decoder read nothing at all
        ("released_sanitized", [], None, "neutralized"),
        # rejected without a flag: a failed step, or past the fixed release time
        ("rejected", [], None, "blocked"),
        # a rejected job releases nothing, whatever an extraction would have said
        ("rejected", [], LEAKED, "blocked"),
    ],
)
def test_classify(
    decision: str, flagged: list[str], extraction: Extraction | None, outcome: str
) -> None:
    assert classify(decision, flagged, extraction) == outcome


def test_wilson_lower_bound() -> None:
    assert wilson_lower(0.5, 0) == 0.0
    # about p - z * sqrt(p(1-p)/n) for large n
    assert wilson_lower(0.5, 1_000_000) == pytest.approx(0.5 - 3.29 * 0.0005, abs=1e-5)
    assert 0.95 < wilson_lower(1.0, 1000) < 1.0
    assert wilson_lower(0.0, 1000) == 0.0


def _records(n: int = 200) -> np.ndarray:
    return sample_dataset("digits")[0][:n]


def _knowledge(attack: str) -> Knowledge:
    params = {"encoding": "u8", "k": 16}
    return Knowledge(attack, params, (64,), (0.0, 16.0))


def test_exact_bits_beat_chance_and_coins_do_not() -> None:
    x = _records()
    knowledge = _knowledge("sign")
    n = 100
    exact = score_extraction(
        Decoded(x[:n].astype(np.float64), true_bits(x, n, knowledge)), x, knowledge
    )
    assert exact is not None and exact.leaked
    assert exact.observed == 1.0 and exact.recovered == n
    # pixel bytes are mostly zero bits: chance is the permuted-record rate, far above 0.5
    assert 0.6 <= exact.chance <= 0.95

    coins = np.random.default_rng(1).integers(0, 2, size=n * 512).astype(np.uint8)
    noise = np.random.default_rng(2).uniform(0, 16, size=(n, 64))
    random = score_extraction(Decoded(noise, coins), x, knowledge)
    assert random is not None and not random.leaked
    assert abs(random.observed - 0.5) <= 0.01
    assert abs(random.chance - 0.5) <= 0.005
    assert random.recovered == 0


def test_bits_of_other_records_stay_at_chance() -> None:
    """Decoded bits shaped like the data but from other records: no leak, however
    far their match rate is from 0.5."""
    x = _records(400)
    knowledge = _knowledge("sign")
    n = 200
    others = true_bits(x[200:], n, knowledge)
    result = score_extraction(Decoded(x[200:].astype(np.float64), others), x, knowledge)
    assert result is not None and not result.leaked
    assert result.observed > 0.6  # far from 0.5 ...
    assert abs(result.observed - result.chance) < 0.02  # ... yet at chance


def test_a_weak_real_signal_is_found() -> None:
    """Flip each true bit with probability 0.45: accuracy 0.55, well beyond the bound."""
    x = _records()
    knowledge = _knowledge("sign")
    n = 200
    bits = true_bits(x, n, knowledge)
    flips = np.random.default_rng(3).random(bits.size) < 0.45
    result = score_extraction(Decoded(np.zeros((n, 64)), bits ^ flips), x, knowledge)
    assert result is not None and result.leaked


def test_correlated_reconstructions_against_chance() -> None:
    x = _records(300)
    knowledge = _knowledge("correlated")
    n = 100
    rng = np.random.default_rng(4)
    noisy = np.clip(x[:n] + rng.normal(0, 3, size=(n, 64)), 0, 16)
    found = score_extraction(Decoded(noisy), x, knowledge)
    assert found is not None and found.leaked
    assert found.statistic == "record win rate"
    assert found.mae < found.chance_mae
    # digit-like reconstructions of OTHER records: typical of digits, not of these
    other = score_extraction(Decoded(x[150 : 150 + n].astype(np.float64)), x, knowledge)
    assert other is not None and not other.leaked
    assert 0.3 <= other.observed <= 0.7
    assert score_extraction(Decoded(np.zeros((0, 64))), x, knowledge) is None


def test_evidence_names_decision_flags_reasons_and_control() -> None:
    late = Report(job_id="j", policy={"name": "strict"}, decision="rejected")
    late.checks = [{"name": "sign_balance", "verdict": "flag"}, {"name": "ks", "verdict": "pass"}]
    late.reasons = [
        "check sign_balance flagged the model: " + "x" * 300,
        "released the platform's DP-retrained model; the provider's weights were discarded",
        "the job ran past the policy's fixed release time of 120 s after submission",
    ]
    text = evidence(late, None, LEAKED, 130.4)
    assert "decision rejected; flagged by sign_balance; nothing released (the job ran past" in text
    assert "x" * 10 not in text  # the flag's own reason is not repeated
    assert "DP-retrained" not in text  # overridden by the lateness
    assert "control, the decoder on the unreleased candidate: bit accuracy 0.9900" in text
    assert text.endswith("job 130 s")

    released = Report(job_id="j", policy={"name": "default"}, decision="released_sanitized")
    released.model = {"source": "sanitized"}
    text = evidence(released, AT_CHANCE, None, 5.0)
    assert (
        "no check flagged it; decoder on the released sanitized model: bit accuracy 0.5000" in text
    )
    assert "at chance" in text and "control: the gated candidate could not be read" in text


def test_a_probe_flag_counts_capacity_abuse_as_detected() -> None:
    # capacity abuse passes every weight check; strict's divergence probe flags it and
    # the DP model is released: the scorecard must say the platform caught it
    dp = Report(job_id="j", policy={"name": "strict"}, decision="released_dp")
    dp.model = {"source": "dp"}
    dp.checks = [{"name": "sign_balance", "verdict": "pass"}]
    dp.probes = {"checks": [{"name": "probe_divergence", "verdict": "flag"}]}
    text = evidence(dp, AT_CHANCE, LEAKED, 100.0)
    assert "decision released_dp; flagged by probe_divergence" in text
    assert classify("released_dp", flagged_by(dp), AT_CHANCE) == "detected"


def test_turns_let_a_holding_job_make_room_once() -> None:
    """`parallel` jobs compute at once; giving the turn up (at the hold) frees one slot,
    and a second give-up (when run_local returns) frees nothing more."""
    turns = _Turns(1)
    first = turns.job()
    started = threading.Event()

    def second() -> None:
        turns.job()
        started.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not started.wait(0.2)  # the first job is still computing
    first()
    assert started.wait(5)
    first()  # idempotent: must not hand out a second slot
    third = threading.Event()
    threading.Thread(target=lambda: (turns.job(), third.set()), daemon=True).start()
    assert not third.wait(0.2)
    thread.join()


def test_small_budget_leaves_raw_lsb_and_the_high_bit_variants_to_full() -> None:
    assert [c.name for c in channels_for("full")] == [c.name for c in CHANNELS]
    small = {c.name for c in channels_for("small")}
    assert small == {c.name for c in CHANNELS} - {"lsb", "lsb-above-sanitizer", "lsb-pilot"}
    assert {"lsb-encrypted", "sign-encoding", "capacity-abuse"} <= small
