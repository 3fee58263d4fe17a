"""Planning DP retraining (sandbox.dp.plan): hints within bounds, q, steps, sigma, config."""

from __future__ import annotations

import json

import pytest

from sandbox.dp.accountant import spent
from sandbox.dp.plan import DPSettings, Hints, check_dp_report, make_plan
from sandbox.errors import InvalidInput
from sandbox.guest.dp_train import DPConfig

SETTINGS = DPSettings(
    epsilon=3.0,
    delta=1e-5,
    accountant="rdp",
    clip=1.0,
    epochs=(5, 40),
    batch_size=(128, 1024),
    lr=(1e-3, 0.1),
    default_epochs=20,
    default_batch_size=256,
    default_lr=0.01,
)


def test_hints_inside_the_bounds_are_used() -> None:
    plan = make_plan(SETTINGS, Hints(epochs=10, batch_size=512, lr=0.02), n=2048)
    assert (plan.epochs, plan.lr, plan.notes) == (10, 0.02, ())
    assert plan.sample_rate == 0.25 and plan.expected_batch_size == 512
    assert plan.steps == 40  # epochs / q
    assert plan.epsilon == spent(plan.noise_multiplier, 0.25, 40, 1e-5, "rdp")
    assert 2.95 <= plan.epsilon <= 3.0


def test_out_of_bounds_hints_are_clamped_and_noted() -> None:
    plan = make_plan(SETTINGS, Hints(epochs=1000, batch_size=64, lr=3e-3), n=1437)
    assert plan.epochs == 40 and plan.expected_batch_size == pytest.approx(128)
    assert plan.lr == 3e-3  # inside the bounds: kept
    assert len(plan.notes) == 2 and "epochs = 1000 clamped to 40" in plan.notes[0]


def test_rejecting_mode_names_the_hint() -> None:
    strict = DPSettings(**{**SETTINGS.__dict__, "hints": "reject"})
    with pytest.raises(InvalidInput, match="batch_size = 64 is outside"):
        make_plan(strict, Hints(batch_size=64), n=1437)


def test_defaults_without_hints_and_small_datasets() -> None:
    plan = make_plan(SETTINGS, Hints.from_mapping({}), n=100)
    assert plan.sample_rate == 1.0 and plan.steps == 20
    assert any("exceeds the 100 training examples" in note for note in plan.notes)
    assert Hints.from_mapping({"epochs": 3, "lr": 0.5}) == Hints(epochs=3, batch_size=None, lr=0.5)


def test_settings_are_validated() -> None:
    with pytest.raises(InvalidInput, match="epsilon must be finite"):
        DPSettings(epsilon=float("inf"), delta=1e-5)
    with pytest.raises(InvalidInput, match="batch_size"):
        DPSettings(epsilon=1.0, delta=1e-5, batch_size=(512, 128))
    with pytest.raises(InvalidInput):
        make_plan(SETTINGS, Hints(), n=0)
    with pytest.raises(InvalidInput, match="not below 1/n"):
        make_plan(DPSettings(epsilon=1.0, delta=1e-3), Hints(), n=1000)
    with pytest.raises(InvalidInput, match="label_smoothing must be in"):
        DPSettings(epsilon=1.0, delta=1e-5, label_smoothing=1.0)


def test_config_round_trips_into_the_guest_and_reports_are_checked() -> None:
    smoothed = DPSettings(**{**SETTINGS.__dict__, "label_smoothing": 0.1})
    plan = make_plan(smoothed, Hints(batch_size=300), n=1437)
    config = DPConfig.from_json(plan.to_json())
    assert config.steps == plan.steps and config.noise_multiplier == plan.noise_multiplier
    assert config.label_smoothing == plan.summary()["label_smoothing"] == 0.1
    # free in privacy: the same (q, steps) get the same sigma with or without it
    assert (
        plan.noise_multiplier == make_plan(SETTINGS, Hints(batch_size=300), 1437).noise_multiplier
    )
    assert config.expected_batch_size == plan.expected_batch_size
    report = {
        "format": 1,
        "steps": plan.steps,
        "sample_rate": plan.sample_rate,
        "n": plan.n,
        "noise_multiplier": plan.noise_multiplier,
        "clip": plan.clip,
        "expected_batch_size": plan.expected_batch_size,
        "init": "platform",
    }
    assert check_dp_report(plan, json.dumps(report).encode())["steps"] == plan.steps
    for change, needle in [
        ({"steps": plan.steps - 1}, "steps"),
        ({"noise_multiplier": plan.noise_multiplier / 2}, "noise_multiplier"),
        ({"init": "provider"}, "initialisation"),
        ({"steps": True}, "steps"),
    ]:
        with pytest.raises(InvalidInput, match=needle):
            check_dp_report(plan, json.dumps({**report, **change}).encode())
    with pytest.raises(InvalidInput, match="not valid JSON"):
        check_dp_report(plan, b"{")


def test_policy_defaults_are_the_benchmarks_epsilon_3_setting() -> None:
    """DPRules' defaults are bench/dp.py's epsilon-3 row; the digits example's hints
    (for Adam: batch 64, lr 0.003, 30 epochs) are clamped to DP-sized ones."""
    from bench.dp import TUNED
    from sandbox.pipeline.dp_step import dp_settings
    from sandbox.policy.model import DPRules, Policy

    rules = DPRules()
    tuned = TUNED[3.0]
    assert (rules.epsilon, rules.delta) == (3.0, 1e-5)
    assert (rules.optimizer, rules.momentum, rules.clip) == (
        tuned["optimizer"],
        tuned["momentum"],
        tuned["clip"],
    )
    assert (rules.default_batch_size, rules.default_lr) == (tuned["batch"], tuned["lr"])
    assert (rules.ema, rules.init_last, rules.default_epochs) == (0.95, "zero", tuned["epochs"])
    assert (tuned["ema"], tuned["init_last"]) == (rules.ema, rules.init_last)
    settings = dp_settings(Policy(name="p", dp=rules))
    assert (settings.ema, settings.init_last, settings.schedule) == (0.95, "zero", "constant")
    plan = make_plan(settings, Hints(epochs=30, batch_size=64, lr=0.003), n=1438)
    assert (plan.sample_rate, plan.steps, plan.epochs, plan.lr) == (1.0, 30, 30, 4.0)
    assert len(plan.notes) == 3  # batch and lr clamped, then the batch capped at n
    assert 2.9 <= plan.epsilon <= 3.0
    config = DPConfig.from_json(plan.to_json())
    assert (config.ema, config.init_last, config.warmup_steps) == (0.95, "zero", 0)
    assert config.label_smoothing == 0.0
    # the epsilon-8 row's settings, written in a policy as DPRules' comment says,
    # reach the guest's config
    row = TUNED[8.0]
    eight = Policy(
        name="p8",
        dp=DPRules(
            epsilon=8.0,
            epochs=(100, 400),
            default_epochs=100,
            lr=(row["lr"], 10.0),
            default_lr=row["lr"],
            ema=0.99,
            label_smoothing=0.1,
        ),
    )
    plan8 = make_plan(dp_settings(eight), Hints(epochs=30, batch_size=64, lr=0.003), n=1438)
    config8 = DPConfig.from_json(plan8.to_json())
    got = (config8.steps, config8.lr, config8.momentum, config8.ema, config8.label_smoothing)
    assert got == (row["epochs"], row["lr"], row["momentum"], row["ema"], row["label_smoothing"])


def test_benchmark_rows_plan_full_batches_with_the_levers() -> None:
    from bench.dp import TUNED, dp_plan, markdown_table

    for epsilon, row in TUNED.items():
        plan = dp_plan(epsilon, row["epochs"], 1438, "rdp", 256)
        assert (plan.sample_rate, plan.steps, plan.init_last) == (1.0, row["epochs"], "zero")
        assert (plan.ema, plan.label_smoothing) == (row["ema"], row.get("label_smoothing", 0.0))
        assert epsilon - 0.02 <= plan.epsilon <= epsilon
    # epsilon 8 trades more steps (q = 1, sigma recalibrated) for a smaller lr
    assert (TUNED[8.0]["epochs"], TUNED[3.0]["epochs"], TUNED[1.0]["epochs"]) == (100, 30, 30)
    table = markdown_table(["a", "bb"], [["1", "22"]])
    assert table.splitlines()[1] == "|--:|---:|"
