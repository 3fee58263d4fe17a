"""The corpus and attack benchmarks' pure helpers (no training), so that bench/ does not rot."""

from collections import Counter

import numpy as np
import pytest

from bench import attacks, corpus


def test_corpus_configs_are_deterministic_and_varied() -> None:
    configs = corpus.corpus_configs(120)
    assert configs == corpus.corpus_configs(120)
    assert len({c.key() for c in configs}) == 120
    kinds = Counter((c.dataset, c.arch) for c in configs)
    assert set(kinds) == {("digits", "mlp"), ("digits", "cnn"), ("breast_cancer", "mlp")}
    assert {c.optimizer for c in configs} == {"sgd", "adam"}
    assert len({c.weight_decay for c in configs}) >= 3 and len({c.epochs for c in configs}) >= 3
    assert len({len(c.hidden) for c in configs if c.arch == "mlp"}) >= 3


def test_cache_lives_outside_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert str(corpus.cache_dir()) == "/somewhere/sandbox/corpus"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(corpus.cache_dir()).endswith(".cache/sandbox/corpus")


def test_holdout_fpr_calibrates_on_one_half_and_counts_on_the_other() -> None:
    rng = np.random.default_rng(0)
    rows = [
        {"sign_runs": float(v), "lowbit_uniform": float(u)}
        for v, u in zip(rng.normal(size=400), rng.normal(size=400), strict=True)
    ]
    table = corpus.holdout_fprs(rows, (0.05,))
    assert 0.02 <= table["sign_runs"]["0.05"] <= 0.09
    assert 0.02 <= table["lowbit_uniform"]["0.05"] <= 0.09
    assert table["sign_runs"]["0.05"] <= table["any"]["0.05"] <= 0.2
    even, odd = corpus.split_halves(5)
    assert even == [0, 2, 4] and odd == [1, 3]


def test_bf16_rounding_is_to_nearest_even() -> None:
    values = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5], dtype=np.float32)
    bits = corpus._to_bf16(values)
    back = (bits.astype(np.uint32) << 16).view(np.float32)
    assert back.tolist() == [1.0, 1.0, 1.0 + 4 * 2**-8, -2.5]


def test_attack_summary_and_table() -> None:
    def row(
        name: str, strength: float | None, flagged: list[str], acc: float, dataset: str = "digits"
    ) -> dict:
        extraction = {
            "records": 10,
            "bit_accuracy": 1.0,
            "fraction_recovered": 1.0,
            "mean_abs_error": 0.0,
        }
        after = {"bit_accuracy": 0.5, "fraction_recovered": 0.0, "mean_abs_error": 10.0}
        released = {"bit_accuracy": 0.51, "fraction_recovered": 0.0, "mean_abs_error": 10.0}
        return {
            "dataset": dataset,
            "attack": name,
            "strength": strength,
            "accuracy": acc,
            "sanitized_accuracy": acc,
            "released_accuracy": acc,
            "flagged": flagged,
            "before": extraction,
            "after": after,
            "released": released,
        }

    rows = [
        row("honest", None, [], 0.95),
        row("lsb", 16.0, ["lowbit_patterned"], 0.96),
        row("lsb", 16.0, [], 0.94),
        row("honest", None, [], 0.99, "breast_cancer"),
        row("lsb", 16.0, [], 0.98, "breast_cancer"),
    ]
    summary = {(s["dataset"], s["attack"], s["strength"]): s for s in attacks.summarise(rows)}
    lsb = summary[("digits", "lsb", 16.0)]
    assert lsb["detection_rate"] == 0.5 and lsb["flagged_by"] == {"lowbit_patterned": 0.5}
    assert lsb["honest_accuracy"] == 0.95 and lsb["accuracy"] == 0.95
    assert lsb["bit_accuracy_sanitized"] == 0.5 and lsb["bit_accuracy_released"] == 0.51
    tabular = summary[("breast_cancer", "lsb", 16.0)]  # its own honest baseline
    assert tabular["detection_rate"] == 0.0 and tabular["honest_accuracy"] == 0.99
    table = attacks.attack_table(list(summary.values()), 19).splitlines()
    assert table[0].startswith("| attack | dataset") and "sanitizer k=19 only" in table[0]
    assert "bit acc released" in table[0] and "| 0.510 " in table[2]
    assert len({len(line) for line in table}) == 1 and len(table) == 2 + 4
    jobs = attacks.jobs_for(2, 5, 0.01, defaults_only=True)
    attacks_run = {"honest", "lsb", "lsb_encrypted", "lsb_pilot", "correlated", "sign"}
    assert {j[0] for j in jobs} == attacks_run
    assert all(j[3] == 5 for j in jobs) and len(jobs) == 24
    assert {j[5] for j in jobs} == {"digits", "breast_cancer"}
    only = attacks.jobs_for(1, 5, 0.01, defaults_only=True, datasets=("breast_cancer",))
    assert len(only) == 6 and {j[5] for j in only} == {"breast_cancer"}
    some = attacks.jobs_for(20, 5, 0.01, defaults_only=True, attacks=["honest", "sign"])
    assert len(some) == 80 and {j[0] for j in some} == {"honest", "sign"}
    with pytest.raises(ValueError, match="capacity"):
        attacks.jobs_for(1, 5, 0.01, defaults_only=True, attacks=["capacity"])


def test_holdout_familywise_measures_the_calibration_on_models_it_never_saw() -> None:
    rng = np.random.default_rng(3)
    n = 4000
    rows = [{"sign_runs": float(a), "value_kurtosis": float(b)} for a, b in rng.normal(size=(n, 2))]
    classes = [10 if i % 3 else 2 for i in range(n)]
    sizes = [1000 if c == 10 else 100 for c in classes]
    names = ["sign_runs", "value_kurtosis"]
    table = corpus.holdout_familywise(rows, (0.01, 0.05), classes, sizes, names)
    assert 0.004 <= table["held_out"]["0.01"] <= 0.018
    assert 0.035 <= table["held_out"]["0.05"] <= 0.065
    assert 0.008 <= table["predicted"]["0.01"] <= 0.01  # the fit never predicts above its target
    # per half, 1% of the 1,333 10-class models is 13 flags, of the 667 2-class ones 6;
    # two checks share them, so each lets about 6 (resp. 3) lie beyond, minus one
    assert 3 <= table["allowed"]["0.01"] <= 6
