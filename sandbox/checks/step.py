"""Pipeline step 4 (DESIGN.md section 3), the weight-analysis half: check, then sanitise.

`check_and_sanitize` takes the gated candidate (canonical safetensors, tensors
already matching the declared architecture) and the training data, runs the
enabled weight checks, and writes a sanitised copy next to it. It runs no provider
code: it reads tensors with numpy and nothing else. The caller then scores both
files on the holdout with the evaluate guest, and the policy's decision engine
(`sandbox.policy.decide`) turns flags and the sanitised model's accuracy cost into
the decision.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sandbox.checks.battery import CHECKS, run_checks
from sandbox.checks.calibrate import DEFAULT_FPR
from sandbox.checks.rescale import RescaleReport, UnitChain, rescale_tensors
from sandbox.checks.result import CheckResult
from sandbox.checks.sanitize import KeyStream, SanitizeReport, sanitize_tensors
from sandbox.checks.tensors import float_tensors, read_safetensors, write_safetensors


@dataclass(frozen=True)
class ChecksSettings:
    """The policy's `checks` section, as the step needs it.

    enabled: checks to run (None: all); fpr: family-wise false-positive rate of the
    checks that run, calibrated together (`calibrate.shipped_familywise`); sanitize:
    write a sanitised model; sanitize_bits: low mantissa bits per dtype (None: the
    measured defaults); data_checks: run the data-aware checks;
    thresholds: explicit per-check overrides of the calibrated thresholds; check_fpr:
    per-check false-positive rates (the check is calibrated alone and leaves the family);
    rescale: before sanitising, scale the hidden units of the graph's unit chains by
    random factors (`sandbox.checks.rescale`); unrescaled_bits: low bits for the float
    tensors rescaling did not change (None: `sanitize_bits` for them too).
    """

    enabled: tuple[str, ...] | None = None
    fpr: float = DEFAULT_FPR
    sanitize: bool = True
    sanitize_bits: Mapping[str, int] | None = None
    data_checks: bool = True
    thresholds: Mapping[str, float] = field(default_factory=dict)
    check_fpr: Mapping[str, float] = field(default_factory=dict)
    rescale: bool = True
    unrescaled_bits: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if self.enabled is not None:
            unknown = [n for n in self.enabled if n not in CHECKS]
            if unknown:
                raise ValueError(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
        unknown = [n for n in self.check_fpr if n not in CHECKS]
        if unknown:
            raise ValueError(f"unknown checks {unknown} in check_fpr; known: {', '.join(CHECKS)}")
        for name, rate in {"fpr": self.fpr, **self.check_fpr}.items():
            if not 0 <= rate < 1:
                raise ValueError(f"{name}: a false-positive rate must be in [0, 1), got {rate}")


@dataclass(frozen=True)
class ChecksOutcome:
    results: list[CheckResult]
    sanitized: SanitizeReport | None
    seconds: dict[str, float]
    rescaled: RescaleReport | None = None

    @property
    def flagged(self) -> list[CheckResult]:
        return [r for r in self.results if r.verdict == "flag"]

    def report_entries(self) -> list[dict[str, Any]]:
        """The report's `checks` list: one object per check, then the sanitizer."""
        entries = [r.to_dict() for r in self.results]
        if self.sanitized is not None:
            explanation = (
                "the low mantissa bits of every float weight were replaced by fresh random bits"
            )
            details = self.sanitized.summary()
            if self.rescaled is not None:
                explanation = (
                    f"{self.rescaled.units} hidden units were scaled by secret random factors "
                    "(the model's function is unchanged), then " + explanation
                )
                details["rescale"] = self.rescaled.summary()
            entries.append(
                {
                    "name": "sanitizer",
                    "verdict": "applied",
                    "explanation": explanation,
                    "details": details,
                }
            )
        return entries


def check_and_sanitize(
    candidate: Path,
    sanitized_dest: Path | None,
    x_train: npt.NDArray[np.floating] | None,
    settings: ChecksSettings | None = None,
    *,
    num_classes: int | None = None,
    unit_chains: Sequence[UnitChain] = (),
) -> ChecksOutcome:
    """Run the checks on `candidate`; write the sanitised model to `sanitized_dest`.

    `num_classes` (the training data's) picks the calibration group of the shipped
    thresholds; None judges against the pooled corpus. `unit_chains` (the declared
    architecture's) are rescaled before the sanitizer when `settings.rescale`."""
    settings = settings or ChecksSettings()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    raw = read_safetensors(candidate)
    tensors = float_tensors(raw)
    enabled: Sequence[str] = settings.enabled if settings.enabled is not None else list(CHECKS)
    if not settings.data_checks:
        enabled = [n for n in enabled if not CHECKS[n].needs_data]
    results = run_checks(
        tensors,
        x_train if settings.data_checks else None,
        fpr=settings.fpr,
        thresholds=dict(settings.thresholds),
        check_fpr=dict(settings.check_fpr),
        enabled=enabled,
        num_classes=num_classes,
    )
    seconds["checks"] = round(time.perf_counter() - start, 3)
    report = rescaled = None
    if settings.sanitize and sanitized_dest is not None:
        start = time.perf_counter()
        stream = KeyStream()
        if settings.rescale:
            raw, rescaled = rescale_tensors(raw, unit_chains, stream=stream)
        changed = set(rescaled.tensors) if rescaled is not None else set()
        coarser: dict[str, int | Mapping[str, int] | None] = {}
        if settings.unrescaled_bits is not None:
            coarser = {n: settings.unrescaled_bits for n in raw if n not in changed}
        clean, counts = sanitize_tensors(
            raw, settings.sanitize_bits, stream=stream, per_tensor=coarser
        )
        sha256, size = write_safetensors(sanitized_dest, clean)
        report = SanitizeReport(counts.tensors, sha256=sha256, size=size)
        seconds["sanitize"] = round(time.perf_counter() - start, 3)
    return ChecksOutcome(results, report, seconds, rescaled)
