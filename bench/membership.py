"""The membership audit on digits: honest, memorising and DP-trained models.

Runs on the host (no Docker) with the pipeline's own pieces: the split of the
default policy (`split_holdout(0.2, seed 0)`: 1,438 train, 359 holdout), m canaries
drawn from the training split with secret coin flips (`draw_canaries`, OS CSPRNG,
fresh each repeat as in production), the excluded half removed from what the model
trains on, and the audit (`audit_scores`) on the model's logits for all m canaries.

Models, all the example's exported graph (examples/digits_mlp, 64-128-10 MLP) from
the platform's initialisation:
- honest: the example's own recipe (Adam, batch 64, lr 3e-3, 30 epochs; no weight decay);
- memorising: the same recipe trained 10x longer (300 epochs), driving the training
  loss of every record it saw towards zero - what an algorithm that overfits on
  purpose (or a capacity-abuse attacker) does;
- nearest-neighbour: a model that stores every record it trains on (class logits are
  log-sum-exp of -||x - x_i||^2 / tau over that class's training records, tau = 50):
  the memorisation extreme, and the audit's positive control;
- capacity abuse (when sandbox.redteam.capacity is present): Song et al.'s black-box
  attack model, trained on the same records plus its synthetic inputs;
- dp eps=3: the platform's DP-SGD (`sandbox.guest.dp_train`, bench/dp.py's tuned
  settings at epsilon 3, delta 1e-5, 30 epochs).

Scores: `loss` (negative cross-entropy of the true label) and `likelihood_ratio`
against a reference model trained by the honest recipe on the training split with
EVERY canary removed (so it has seen none of them).

The one-run bound is a lower bound at 95% confidence with a Bonferroni-accounted
k+/k- grid; with m = 200 even a perfect attack certifies at most ~3.66, so read it
as a floor. Each repeat draws new canaries and coin flips; the table gives means
and the range over repeats.

    .venv/bin/python -m bench.membership [--repeats 3] [--canaries 200] [--json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.dp import TUNED, accuracy, export_example, markdown_table, train_non_private
from sandbox.checks.membership import (
    audit_scores,
    canary_count,
    draw_canaries,
    likelihood_ratio_score,
    loss_score,
)
from sandbox.dp.plan import DPPlan, DPSettings, Hints, make_plan
from sandbox.guest import dp_train
from sandbox.policy.load import load_policy

CONFIDENCE = 0.95
MAX_FRACTION = 0.15
HONEST_EPOCHS, MEMORISING_EPOCHS, DP_EPOCHS, DP_EPSILON = 30, 300, 30, 3.0
THRESHOLD = load_policy("strict").membership.max_epsilon_lower_bound  # what strict flags


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__}"


def logits_of(module: torch.nn.Module, params: dict[str, torch.Tensor], x: np.ndarray) -> Any:
    with torch.no_grad():
        out = torch.func.functional_call(module, params, (torch.from_numpy(x),), strict=True)
    return out.numpy().astype(np.float64)


def dp_plan(n: int) -> DPPlan:
    """bench/dp.py's tuned DP-SGD at epsilon 3 (SGD, momentum 0.9, batch 512, lr 0.3, C 1)."""
    tuned = TUNED[DP_EPSILON]
    settings = DPSettings(
        epsilon=DP_EPSILON,
        delta=1e-5,
        accountant="prv",
        clip=tuned["clip"],
        epochs=(1, 1000),
        batch_size=(1, 65536),
        lr=(1e-5, 100.0),
        default_epochs=DP_EPOCHS,
        default_batch_size=tuned["batch"],
        default_lr=tuned["lr"],
        optimizer=tuned["optimizer"],
        momentum=tuned["momentum"],
        chunk=256,
    )
    return make_plan(settings, Hints(), n)


def acc_of(logits: Any, y: Any) -> float:
    return float((np.asarray(logits).argmax(1) == y).mean())


def nearest_neighbour_logits(
    stored_x: Any, stored_y: Any, x: Any, classes: int, tau: float = 50.0
) -> Any:
    """Per class, log-sum-exp over its stored records of -||x - x_i||^2 / tau."""
    a, b = np.asarray(x, np.float64), np.asarray(stored_x, np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    z = -np.maximum(d2, 0.0) / tau
    out = np.full((len(a), classes), -1e9)
    for c in range(classes):
        zc = z[:, stored_y == c]
        if zc.shape[1]:
            top = zc.max(1, keepdims=True)
            out[:, c] = (top + np.log(np.exp(zc - top).sum(1, keepdims=True)))[:, 0]
    return out


def capacity_logits(
    stored_x: Any, stored_y: Any, cx: Any, hx: Any
) -> tuple[dict[str, Any], float] | None:
    """Song et al.'s capacity-abuse model from the red-team library, if it is there."""
    try:
        from sandbox.redteam import capacity
    except ImportError:
        return None
    started = time.perf_counter()
    tensors, _ = capacity.train_capacity_model(stored_x, stored_y)
    scale = float(capacity.capacity_params("digits", "prng", 20)[0]["input_scale"])
    seconds = time.perf_counter() - started
    return {
        "canaries": capacity.mlp_logits(tensors, cx, scale),
        "holdout": capacity.mlp_logits(tensors, hx, scale),
    }, seconds


def run_repeat(
    module: torch.nn.Module,
    shapes: Any,
    train: Any,
    holdout: Any,
    m: int,
) -> list[dict[str, Any]]:
    """One draw of canaries; every model trained on what that draw leaves in."""
    cpu = torch.device("cpu")
    draw = draw_canaries(len(train.y), m)  # secret: fresh OS randomness, as in production
    keep = draw.keep_mask(len(train.y))
    no_canaries = np.ones(len(train.y), dtype=bool)
    no_canaries[draw.indices] = False
    cx, cy = train.x[draw.indices], train.y[draw.indices]
    x, y = torch.from_numpy(train.x[keep]), torch.from_numpy(train.y[keep])
    xt, yt = torch.from_numpy(holdout.x), torch.from_numpy(holdout.y)

    def fresh() -> dict[str, torch.Tensor]:
        return dp_train.platform_init(shapes, dp_train.make_generator(cpu), cpu)

    def shuffle() -> torch.Generator:
        return torch.Generator().manual_seed(dp_train.os_seed())

    reference, _ = train_non_private(
        module,
        fresh(),
        torch.from_numpy(train.x[no_canaries]),
        torch.from_numpy(train.y[no_canaries]),
        HONEST_EPOCHS,
        shuffle(),
    )
    models: dict[str, tuple[dict[str, torch.Tensor], float]] = {}
    for name, epochs in (("honest", HONEST_EPOCHS), ("memorising", MEMORISING_EPOCHS)):
        models[name] = train_non_private(module, fresh(), x, y, epochs, shuffle())
    # the DP plan is made for the records DP-SGD trains on (the draw leaves ~m/2 out)
    plan = dp_plan(len(y))
    dp_config = dp_train.DPConfig.from_json(plan.to_json())
    result = dp_train.train(
        module,
        fresh(),
        x,
        y,
        dp_config,
        sample_generator=dp_train.make_generator(cpu),
        noise_generator=dp_train.make_generator(cpu),
    )
    models[f"dp eps={DP_EPSILON:g}"] = (result.params, result.seconds)

    started = time.perf_counter()
    stored_x, stored_y = train.x[keep], train.y[keep]
    knn = {
        "canaries": nearest_neighbour_logits(stored_x, stored_y, cx, train.num_classes),
        "holdout": nearest_neighbour_logits(stored_x, stored_y, holdout.x, train.num_classes),
    }
    extra: dict[str, tuple[dict[str, Any], float, float]] = {
        "nearest-neighbour": (knn, acc_of(knn["holdout"], holdout.y), time.perf_counter() - started)
    }
    capacity = capacity_logits(stored_x, stored_y, cx, holdout.x)
    if capacity is not None:
        extra["capacity abuse"] = (
            capacity[0],
            acc_of(capacity[0]["holdout"], holdout.y),
            capacity[1],
        )

    ref_logits = logits_of(module, reference, cx)
    scored: list[tuple[str, Any, float, float]] = [
        (name, logits_of(module, params, cx), accuracy(module, params, xt, yt), seconds)
        for name, (params, seconds) in models.items()
    ]
    scored += [(name, lg["canaries"], acc, sec) for name, (lg, acc, sec) in extra.items()]
    rows = []
    for name, logits, holdout_accuracy, seconds in scored:
        for kind, scores in (
            ("loss", loss_score(logits, cy)),
            ("likelihood_ratio", likelihood_ratio_score(logits, ref_logits, cy)),
        ):
            audit = audit_scores(
                scores,
                draw.included,
                score=kind,  # type: ignore[arg-type]
                confidence=CONFIDENCE,
                max_epsilon=THRESHOLD,
            )
            rows.append(
                {
                    "model": name,
                    "score": kind,
                    "canaries": audit.canaries,
                    "included": audit.included,
                    "auc": audit.auc,
                    "tpr_at_1pct_fpr": audit.tpr_at_1pct_fpr,
                    "epsilon_lower_bound": audit.bound.epsilon,
                    "guesses": audit.bound.guesses,
                    "correct": audit.bound.correct,
                    "verdict": audit.verdict,
                    "holdout_accuracy": holdout_accuracy,
                    "train_seconds": seconds,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--canaries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from bench.dp import load_example

    train, holdout = load_example()
    m = canary_count(len(train.y), args.canaries, MAX_FRACTION)
    with tempfile.TemporaryDirectory() as tmp:
        program, module = dp_train.load_program(str(export_example(Path(tmp))))
    shapes = dp_train.parameter_shapes(program)
    plan = dp_plan(len(train.y) - m // 2)  # a typical draw, for the metadata
    assert DP_EPSILON in TUNED

    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        rows += run_repeat(module, shapes, train, holdout, m)
    elapsed = time.monotonic() - started

    summary: list[dict[str, Any]] = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for kind in ("loss", "likelihood_ratio"):
            mine = [r for r in rows if r["model"] == model and r["score"] == kind]

            def agg(key: str, mine: list[dict[str, Any]] = mine) -> tuple[float, float, float]:
                values = [float(r[key]) for r in mine]
                return statistics.mean(values), min(values), max(values)

            summary.append(
                {
                    "model": model,
                    "score": kind,
                    "canaries": m,
                    "repeats": len(mine),
                    **{
                        key: agg(key)
                        for key in (
                            "auc",
                            "tpr_at_1pct_fpr",
                            "epsilon_lower_bound",
                            "holdout_accuracy",
                        )
                    },
                    "flagged": sum(r["verdict"] == "flag" for r in mine),
                }
            )
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "canaries": m,
        "repeats": args.repeats,
        "confidence": CONFIDENCE,
        "threshold": THRESHOLD,
        "dp": {"epsilon": DP_EPSILON, "sigma": plan.noise_multiplier, "steps": plan.steps},
        "seconds": round(elapsed, 1),
    }
    if args.json:
        print(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=2))
        return

    def cell(triple: tuple[float, float, float], digits: int = 3) -> str:
        mean, low, high = triple
        return f"{mean:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"

    table = markdown_table(
        [
            "model",
            "score",
            "AUC",
            "TPR @ 1% FPR",
            "eps lower bound (95%)",
            f"flagged (> {THRESHOLD:g})",
            "holdout acc.",
        ],
        [
            [
                s["model"],
                s["score"],
                cell(s["auc"]),
                cell(s["tpr_at_1pct_fpr"]),
                cell(s["epsilon_lower_bound"], 2),
                f"{s['flagged']}/{s['repeats']}",
                cell(s["holdout_accuracy"]),
            ]
            for s in summary
        ],
    )
    print(table)
    print(
        f"\nm = {m} canaries from {len(train.y)} training records, {args.repeats} repeats "
        f"(mean (min-max)); {meta['date']}, {meta['machine']}; {elapsed:.0f} s"
    )


if __name__ == "__main__":
    main()
