"""Planning one DP retraining: from the policy's settings, the algorithm's hints and n.

The owner's policy fixes the privacy target (epsilon, delta, accountant), the clip
norm and bounds on epochs, batch size and learning rate. The provider's
`algorithm.toml` may suggest epochs, batch size and lr (`[hyperparameters]`).

Hints are CLAMPED into the policy's bounds, not rejected, and every clamp is noted
in the plan (and so in the owner's report). Hints are chosen before the data is
seen and only move utility: q, steps and sigma are always calibrated to the
policy's epsilon, so no hint can buy privacy. Rejecting would fail jobs for a
harmless mismatch; `hints="reject"` is there for operators who want it.

The plan is frozen and serialises to the `dp_config.json` that
`sandbox.guest.dp_train` reads; `check_dp_report` verifies the guest's `dp.json`
against it before the ledger is charged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sandbox.dp.accountant import Accountant, calibrate, spent
from sandbox.errors import InvalidInput

Optimizer = Literal["adam", "sgd"]
Device = Literal["cpu", "cuda", "auto"]
Schedule = Literal["constant", "cosine"]
InitLast = Literal["default", "zero"]
CONFIG_FORMAT = 1


@dataclass(frozen=True)
class DPSettings:
    """The policy's DP section, as the planner needs it (bounds are inclusive)."""

    epsilon: float
    delta: float
    accountant: Accountant = "prv"
    clip: float = 1.0
    epochs: tuple[int, int] = (1, 100)
    batch_size: tuple[int, int] = (16, 4096)
    lr: tuple[float, float] = (1e-4, 1.0)
    default_epochs: int = 30
    default_batch_size: int = 512
    default_lr: float = 0.5
    optimizer: Optimizer = "sgd"  # SGD with momentum beat Adam under DP noise (bench/dp.py)
    momentum: float = 0.9
    hints: Literal["clamp", "reject"] = "clamp"
    device: Device = "cpu"
    chunk: int = 256
    # Free in privacy: they change how the noisy iterates are used, not what is released
    # per step (see sandbox.guest.dp_train.lr_at, IterateAverage, output_weights).
    warmup_fraction: float = 0.0  # of the steps, linear learning-rate warm-up
    schedule: Schedule = "constant"
    ema: float = 0.0  # decay of the iterate average that is released; 0 = last iterate
    init_last: InitLast = "default"
    # Also free: each example's loss stays its own (sandbox.guest.dp_train.DPConfig).
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            problems.append("epsilon must be finite and > 0")
        if not 0 < self.delta < 1:
            problems.append("delta must be in (0, 1)")
        if not (math.isfinite(self.clip) and self.clip > 0):
            problems.append("clip must be finite and > 0")
        for name, low, high, default in (
            ("epochs", *self.epochs, self.default_epochs),
            ("batch_size", *self.batch_size, self.default_batch_size),
            ("lr", *self.lr, self.default_lr),
        ):
            if not 0 < low <= default <= high:
                problems.append(f"{name}: need 0 < low <= default <= high")
        if not 0 <= self.momentum < 1:
            problems.append("momentum must be in [0, 1)")
        if not 1 <= self.chunk <= 65536:
            problems.append("chunk must be in [1, 65536]")
        if not 0 <= self.warmup_fraction <= 1:
            problems.append("warmup_fraction must be in [0, 1]")
        if not 0 <= self.ema < 1:
            problems.append("ema must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            problems.append("label_smoothing must be in [0, 1)")
        for name, value, allowed in (
            ("accountant", self.accountant, ("prv", "rdp")),
            ("optimizer", self.optimizer, ("adam", "sgd")),
            ("device", self.device, ("cpu", "cuda", "auto")),
            ("hints", self.hints, ("clamp", "reject")),
            ("schedule", self.schedule, ("constant", "cosine")),
            ("init_last", self.init_last, ("default", "zero")),
        ):
            if value not in allowed:
                problems.append(f"{name} must be one of {list(allowed)}, got {value!r}")
        if problems:
            raise InvalidInput("dp settings: " + "; ".join(problems))


@dataclass(frozen=True)
class Hints:
    """The algorithm's `[hyperparameters]`; None where it gives none."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None

    @staticmethod
    def from_mapping(values: Mapping[str, int | float]) -> Hints:
        """From `AlgorithmPackage.hyperparameters` (already type- and range-checked)."""
        epochs, batch, lr = values.get("epochs"), values.get("batch_size"), values.get("lr")
        return Hints(
            epochs=int(epochs) if epochs is not None else None,
            batch_size=int(batch) if batch is not None else None,
            lr=float(lr) if lr is not None else None,
        )


@dataclass(frozen=True)
class DPPlan:
    """Everything DP retraining will do, fixed before it starts."""

    epsilon_target: float
    epsilon: float  # the accountant's epsilon for exactly these (sigma, q, steps): <= target
    delta: float
    accountant: Accountant
    n: int
    sample_rate: float
    expected_batch_size: float
    epochs: int
    steps: int
    noise_multiplier: float
    clip: float
    lr: float
    optimizer: Optimizer
    momentum: float
    device: Device
    chunk: int
    warmup_steps: int = 0
    schedule: Schedule = "constant"
    ema: float = 0.0
    init_last: InitLast = "default"
    label_smoothing: float = 0.0
    notes: tuple[str, ...] = field(default=())

    def to_config(self) -> dict[str, Any]:
        """The guest's `dp_config.json` (see sandbox.guest.dp_train.DPConfig)."""
        return {
            "format": CONFIG_FORMAT,
            "n": self.n,
            "sample_rate": self.sample_rate,
            "expected_batch_size": self.expected_batch_size,
            "steps": self.steps,
            "epochs": self.epochs,
            "lr": self.lr,
            "clip": self.clip,
            "noise_multiplier": self.noise_multiplier,
            "optimizer": self.optimizer,
            "momentum": self.momentum,
            "chunk": self.chunk,
            "device": self.device,
            "warmup_steps": self.warmup_steps,
            "schedule": self.schedule,
            "ema": self.ema,
            "init_last": self.init_last,
            "label_smoothing": self.label_smoothing,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_config(), sort_keys=True).encode()

    def summary(self) -> dict[str, Any]:
        """For report.json's `dp` section."""
        return {
            "epsilon": self.epsilon,
            "epsilon_target": self.epsilon_target,
            "delta": self.delta,
            "accountant": self.accountant,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "epochs": self.epochs,
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "momentum": self.momentum,
            "warmup_steps": self.warmup_steps,
            "schedule": self.schedule,
            "ema": self.ema,
            "init_last": self.init_last,
            "label_smoothing": self.label_smoothing,
            "notes": list(self.notes),
        }


def _bounded(
    name: str,
    hint: float | None,
    bounds: tuple[float, float],
    default: float,
    mode: str,
    notes: list[str],
) -> float:
    if hint is None:
        return default
    low, high = bounds
    if low <= hint <= high:
        return hint
    if mode == "reject":
        raise InvalidInput(
            f"algorithm.toml hyperparameter {name} = {hint} is outside the policy's DP bounds "
            f"[{low}, {high}]"
        )
    chosen = min(max(hint, low), high)
    notes.append(f"hint {name} = {hint} clamped to {chosen} (policy bounds [{low}, {high}])")
    return chosen


def make_plan(settings: DPSettings, hints: Hints, n: int) -> DPPlan:
    """Choose epochs, batch size and lr; derive q, steps; calibrate sigma to epsilon."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInput(f"the training split must hold at least one example, got {n!r}")
    if settings.delta >= 1 / n:
        raise InvalidInput(
            f"delta {settings.delta:g} is not below 1/n = 1/{n}: a mechanism that publishes "
            "one whole record with probability delta would satisfy it; lower delta"
        )
    notes: list[str] = []
    mode = settings.hints
    epochs = int(
        _bounded("epochs", hints.epochs, settings.epochs, settings.default_epochs, mode, notes)
    )
    batch = int(
        _bounded(
            "batch_size",
            hints.batch_size,
            settings.batch_size,
            settings.default_batch_size,
            mode,
            notes,
        )
    )
    lr = float(_bounded("lr", hints.lr, settings.lr, settings.default_lr, mode, notes))
    if batch > n:
        notes.append(f"batch size {batch} exceeds the {n} training examples; using {n}")
        batch = n
    sample_rate = batch / n
    steps = max(1, round(epochs * n / batch))
    sigma = calibrate(settings.epsilon, settings.delta, sample_rate, steps, settings.accountant)
    epsilon = spent(sigma, sample_rate, steps, settings.delta, settings.accountant)
    if epsilon > settings.epsilon:  # calibrate guarantees this; keep the ledger honest anyway
        raise InvalidInput(f"calibration reached epsilon {epsilon}, above {settings.epsilon}")
    return DPPlan(
        epsilon_target=settings.epsilon,
        epsilon=epsilon,
        delta=settings.delta,
        accountant=settings.accountant,
        n=n,
        sample_rate=sample_rate,
        expected_batch_size=sample_rate * n,
        epochs=epochs,
        steps=steps,
        noise_multiplier=sigma,
        clip=settings.clip,
        lr=lr,
        optimizer=settings.optimizer,
        momentum=settings.momentum,
        device=settings.device,
        chunk=settings.chunk,
        warmup_steps=round(settings.warmup_fraction * steps),
        schedule=settings.schedule,
        ema=settings.ema,
        init_last=settings.init_last,
        label_smoothing=settings.label_smoothing,
        notes=tuple(notes),
    )


MAX_REPORT_BYTES = 65536


def check_dp_report(plan: DPPlan, raw: bytes) -> dict[str, Any]:
    """Parse the guest's `dp.json` and check it ran exactly the plan; return it.

    The DP step runs only platform code, but its output is still read as untrusted
    bytes: a mismatch means the epsilon charged would not describe what ran.
    """
    if len(raw) > MAX_REPORT_BYTES:
        raise InvalidInput("dp.json is larger than 64 KiB")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"dp.json is not valid JSON: {error}") from error
    if not isinstance(data, dict) or data.get("format") != 1:
        raise InvalidInput("dp.json is not a format-1 DP report")
    expected = {
        "steps": plan.steps,
        "sample_rate": plan.sample_rate,
        "n": plan.n,
        "noise_multiplier": plan.noise_multiplier,
        "clip": plan.clip,
        "expected_batch_size": plan.expected_batch_size,
    }
    for key, value in expected.items():
        got = data.get(key)
        if isinstance(got, bool) or not isinstance(got, int | float) or got != value:
            raise InvalidInput(f"dp.json: {key} is {got!r}, the plan says {value!r}")
    if data.get("init") != "platform":
        raise InvalidInput("dp.json does not confirm the platform's initialisation")
    return data
