"""bench/capacity.py's pure helpers, so the benchmark does not rot (no training here)."""

from bench import capacity


def _row(dataset: str, generator: str | None, n: int, accuracy: float, bits: float) -> dict:
    part = {
        "records": n,
        "recovered": n,
        "fraction_recovered": 1.0,
        "mean_abs_error": 0.3,
        "bit_accuracy": bits,
    }
    return {
        "dataset": dataset,
        "generator": generator,
        "n_records": n,
        "seed": 0,
        "queries": 64 * n,
        "accuracy": accuracy,
        "extraction": {"attack": part, "control": {**part, "fraction_recovered": 0.0}},
        "seconds": 1.0,
    }


def test_jobs_cover_both_generators_and_an_honest_twin_per_dataset_and_seed() -> None:
    jobs = capacity.jobs_for(2, quick=True)
    assert len(jobs) == 2 * 2 * 3  # datasets x seeds x (honest + 2 generators)
    assert {(d, g) for d, g, _, _ in jobs} == {
        (d, g) for d in ("digits", "breast_cancer") for g in (None, "prng", "heldout")
    }
    full = capacity.jobs_for(1, quick=False)
    assert len(full) == sum(1 + 2 * len(s) for s in capacity.SWEEP.values())


def test_summary_averages_seeds_and_pairs_each_row_with_the_honest_accuracy() -> None:
    rows = [
        _row("digits", None, 80, 0.96, 0.5),
        _row("digits", "prng", 20, 0.95, 1.0),
        {**_row("digits", "prng", 20, 0.93, 0.9), "seed": 1},
    ]
    (summary,) = capacity.summarise(rows)
    assert summary["runs"] == 2 and summary["honest_accuracy"] == 0.96
    assert abs(summary["accuracy"] - 0.94) < 1e-12 and abs(summary["bit_accuracy"] - 0.95) < 1e-12
    assert summary["control_recovered"] == 0.0
    table = capacity.markdown([summary])
    assert table.splitlines()[2].startswith("| digits | prng | 20 | 1280 | 0.9400 | 0.9600 |")
