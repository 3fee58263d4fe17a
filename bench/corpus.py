"""The honest-model corpus: what weights look like when nobody hides anything in them.

Trains 3,000 small honest models on scikit-learn's digits and breast_cancer
(host-side torch, one thread, no Docker), varying architecture (MLP depth/width, a
small CNN on digits reshaped to 1x8x8), optimiser (SGD with momentum, Adam), weight
decay, epochs, learning rate and seed. Every model is trained on the training side
of the pipeline's own holdout split (`split_holdout`, fraction 0.2, seed 0) and
scored on the holdout.

From the corpus it derives, and writes to `sandbox/checks/calibration.json`:

- every weight check's statistic per model, the thresholds at the policy's
  false-positive rate (1% by default) and the full per-FPR table;
- the false-positive rate of each check measured on a held-out half of the corpus
  (calibrate on one half, count flags on the other, both ways);
- the pipeline's family-wise calibration (`calibrate.familywise_calibrate`: every
  enabled check at one rank level, chosen by the leave-one-out family-wise rate), for
  all nine checks and for the seven that need no data, with the rate it predicts and
  the rate measured on the held-out half;
- the same per calibration group (the models of each number of classes, with the
  range of parameter counts they span), and the held-out rates with every model
  judged by the group `sandbox.checks.calibrate.choose_group` picks for it;
- the sanitizer sweep: for k = 8..20 low F32 mantissa bits (and every k for F16,
  BF16), the holdout-accuracy change of each model after sanitising, and the
  default k (the largest with a mean change within 0.1 percentage point), on the
  first 320 models.

Models are cached under `${XDG_CACHE_HOME:-~/.cache}/sandbox/corpus/` (weights as
safetensors plus a JSON of the config and accuracy), never in the repository, so a
second run only recomputes the statistics.

    python -m bench.corpus [--models 3000] [--quick] [--jobs 2] [--out PATH] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CORPUS_VERSION = 1
DATASETS = ("digits", "breast_cancer")
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0
SANITIZE_SWEEP = tuple(range(8, 21))
SANITIZE_REPEATS = 2
MAX_ACCURACY_COST_POINTS = 0.1
#: The sanitizer sweep runs on the first this-many models (about 1.3 s each): the
#: mean cost it decides k by is resolved long before the thousands the thresholds need.
SWEEP_MODELS = 320
#: Corpus size: each check's set of thresholds needs several hundred honest models per
#: group before a 1% family-wise rate is even attainable (a fresh model beats the
#: largest of n on one of k checks with probability about k/(n+1)).
DEFAULT_MODELS = 3000
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "sandbox" / "checks" / "calibration.json"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sandbox" / "corpus"


@dataclass(frozen=True)
class ModelConfig:
    """One honest training run, fully determined by these fields."""

    dataset: str
    arch: str  # "mlp" or "cnn"
    hidden: tuple[int, ...]  # layer widths (mlp) or conv channels (cnn)
    optimizer: str  # "sgd" (momentum 0.9) or "adam"
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    seed: int

    def key(self) -> str:
        text = json.dumps({"v": CORPUS_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def label(self) -> str:
        shape = "x".join(str(h) for h in self.hidden)
        return (
            f"{self.dataset}/{self.arch}[{shape}]/{self.optimizer} lr={self.lr:g} "
            f"wd={self.weight_decay:g} ep={self.epochs} seed={self.seed}"
        )


def corpus_configs(n: int) -> list[ModelConfig]:
    """`n` configs, deterministic: two thirds digits (a quarter of those CNNs), a third
    breast_cancer. Each one draws its hyperparameters from its own seeded RNG."""
    configs: list[ModelConfig] = []
    for i in range(n):
        rng = random.Random(1000 + i)
        dataset = "breast_cancer" if i % 3 == 2 else "digits"
        arch = "cnn" if dataset == "digits" and i % 4 == 1 else "mlp"
        if arch == "cnn":
            hidden: tuple[int, ...] = tuple(
                rng.choice((4, 8, 16)) for _ in range(rng.choice((1, 2)))
            )
        elif dataset == "digits":
            hidden = tuple(rng.choice((32, 64, 128, 256)) for _ in range(rng.choice((1, 1, 2, 3))))
        else:
            hidden = tuple(rng.choice((8, 16, 32, 64)) for _ in range(rng.choice((1, 2))))
        optimizer = rng.choice(("sgd", "adam"))
        lr = rng.choice((0.01, 0.03, 0.1)) if optimizer == "sgd" else rng.choice((1e-3, 3e-3))
        configs.append(
            ModelConfig(
                dataset=dataset,
                arch=arch,
                hidden=hidden,
                optimizer=optimizer,
                lr=lr,
                weight_decay=rng.choice((0.0, 0.0, 1e-4, 1e-3)),
                epochs=rng.choice((5, 10, 20, 30)),
                batch_size=rng.choice((32, 64, 128)),
                seed=rng.randrange(1 << 20),
            )
        )
    return configs


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Data:
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_holdout: npt.NDArray[np.float32]
    y_holdout: npt.NDArray[np.int64]
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


_DATA: dict[str, Data] = {}


def load_data(name: str) -> Data:
    """The pipeline's default split of a sample dataset (cached per process)."""
    if name not in _DATA:
        from sandbox.demo import sample_dataset
        from sandbox.pipeline.dataset import Dataset, split_holdout

        x, y = sample_dataset(name)
        full = Dataset(x=x, y=y, num_classes=int(y.max()) + 1, input_shape=tuple(x.shape[1:]))
        train, holdout = split_holdout(full, HOLDOUT_FRACTION, HOLDOUT_SEED)
        _DATA[name] = Data(train.x, train.y, holdout.x, holdout.y, full.num_classes)
    return _DATA[name]


# --------------------------------------------------------------------------- models


def build_model(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The torch module of `config` (digits inputs are scaled by 1/16 inside, like the
    digits_mlp example; breast_cancer inputs are already standardised)."""
    import torch
    from torch import nn

    scale = 1.0 / 16.0 if config.dataset == "digits" else 1.0
    features = int(np.prod(input_shape))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            if config.arch == "cnn":
                channels = 1
                for c in config.hidden:
                    layers += [nn.Conv2d(channels, c, 3, padding=1), nn.ReLU()]
                    channels = c
                layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(channels * 16, num_classes)]
            else:
                layers.append(nn.Flatten())
                width = features
                for h in config.hidden:
                    layers += [nn.Linear(width, h), nn.ReLU()]
                    width = h
                layers.append(nn.Linear(width, num_classes))
            self.net = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x * scale
            if config.arch == "cnn":
                x = x.reshape(-1, 1, 8, 8)
            return self.net(x)  # type: ignore[no-any-return]

    return Net()


def train_model(config: ModelConfig) -> tuple[dict[str, npt.NDArray[np.float32]], float, float]:
    """Train one honest model; (state_dict as numpy, holdout accuracy, seconds)."""
    import torch

    torch.set_num_threads(1)
    data = load_data(config.dataset)
    torch.manual_seed(config.seed)
    model = build_model(config, data.input_shape, data.num_classes)
    params = model.parameters()
    if config.optimizer == "adam":
        optimizer: Any = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), config.batch_size):
            idx = order[i : i + config.batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return state, accuracy(config, state, data.x_holdout, data.y_holdout), seconds


def accuracy(
    config: ModelConfig,
    state: Mapping[str, npt.NDArray[np.generic]],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
) -> float:
    """Holdout accuracy of `config`'s architecture with weights `state` (computed in
    float32 whatever dtype the weights are stored in)."""
    import torch

    model = build_model(config, tuple(x.shape[1:]), int(max(y.max() + 1, 2)))
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True)
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


# --------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class CorpusModel:
    config: ModelConfig
    state: dict[str, npt.NDArray[np.float32]]
    accuracy: float
    train_seconds: float


def _load_cached(config: ModelConfig, directory: Path) -> CorpusModel | None:
    from safetensors.numpy import load_file

    meta_path = directory / f"{config.key()}.json"
    weights = directory / f"{config.key()}.safetensors"
    if not (meta_path.is_file() and weights.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        state = {k: np.ascontiguousarray(v) for k, v in load_file(str(weights)).items()}
    except (OSError, ValueError):
        return None
    return CorpusModel(config, state, float(meta["accuracy"]), float(meta["train_seconds"]))


def _train_and_cache(config: ModelConfig, directory: Path) -> CorpusModel:
    from safetensors.numpy import save_file

    state, acc, seconds = train_model(config)
    directory.mkdir(parents=True, exist_ok=True)
    key = config.key()
    tmp = directory / f".{key}.{os.getpid()}.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, directory / f"{key}.safetensors")
    meta = {"config": asdict(config), "accuracy": acc, "train_seconds": seconds}
    tmp.write_text(json.dumps(meta, sort_keys=True))
    os.replace(tmp, directory / f"{key}.json")
    return CorpusModel(config, state, acc, seconds)


def _worker(args: tuple[ModelConfig, str]) -> CorpusModel:
    config, directory = args
    return _load_cached(config, Path(directory)) or _train_and_cache(config, Path(directory))


def load_corpus(
    configs: Sequence[ModelConfig],
    *,
    directory: Path | None = None,
    jobs: int = 1,
    log: Callable[[str], None] = lambda line: None,
) -> list[CorpusModel]:
    """Every model of `configs`, from the cache or freshly trained (then cached)."""
    directory = directory or cache_dir()
    todo = [(c, str(directory)) for c in configs]
    results: list[CorpusModel] = []
    start = time.perf_counter()

    def note(i: int, model: CorpusModel) -> None:
        if (i + 1) % 20 == 0 or i + 1 == len(todo):
            log(f"corpus: {i + 1}/{len(todo)} models ({time.perf_counter() - start:.0f} s)")

    if jobs <= 1:
        for i, item in enumerate(todo):
            results.append(_worker(item))
            note(i, results[-1])
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for i, model in enumerate(pool.map(_worker, todo)):
                results.append(model)
                note(i, model)
    return results


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


# --------------------------------------------------------------------------- statistics


def model_statistics(model: CorpusModel) -> dict[str, float]:
    """Every check's statistic on one corpus model (with its training data)."""
    from sandbox.checks.battery import CHECKS, run_checks

    data = load_data(model.config.dataset)
    results = run_checks(model.state, data.x_train, thresholds=dict.fromkeys(CHECKS), seed=0)
    return {r.name: r.statistic for r in results}


def _stats_worker(args: tuple[ModelConfig, str]) -> dict[str, float]:
    return model_statistics(_worker(args))


def corpus_statistics(
    models: Sequence[CorpusModel], jobs: int, directory: Path, log: Callable[[str], None]
) -> list[dict[str, float]]:
    start = time.perf_counter()
    if jobs <= 1:
        rows = [model_statistics(m) for m in models]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(_stats_worker, [(m.config, str(directory)) for m in models]))
    log(f"statistics: {len(rows)} models ({time.perf_counter() - start:.0f} s)")
    return rows


def split_halves(n: int) -> tuple[list[int], list[int]]:
    """Even and odd model indices: configs interleave datasets, so both halves mix them."""
    return list(range(0, n, 2)), list(range(1, n, 2))


def holdout_fprs(
    rows: Sequence[Mapping[str, float]],
    fprs: Sequence[float],
    classes: Sequence[int] | None = None,
    sizes: Sequence[int] | None = None,
) -> dict[str, dict[str, float]]:
    """Calibrate on one half, count flags on the other, both ways; mean of the two.

    Also the rate at which *any* check flags an honest model (the family-wise rate).
    With `classes` and `sizes` (each model's class count and parameter count), each
    held-out model is judged as the pipeline judges it: by the thresholds of the
    group `choose_group` picks, fitted on the other half; without, by the pooled ones.
    """
    from sandbox.checks.battery import CHECKS
    from sandbox.checks.calibrate import POOLED, calibrate, choose_group
    from sandbox.checks.result import exceeds

    halves = split_halves(len(rows))
    names = [n for n in CHECKS if all(n in r for r in rows)]
    out: dict[str, dict[str, float]] = {n: {} for n in [*names, "any"]}
    for fpr in fprs:
        rates: dict[str, list[float]] = {n: [] for n in out}
        for fit, test in (halves, halves[::-1]):
            if not fit or not test:
                continue
            members = _group_members(fit, classes)
            document = _group_document(members, sizes)
            thresholds = {
                key: calibrate({n: [rows[i][n] for i in index] for n in names}, fpr)
                for key, index in members.items()
            }
            flags: dict[str, list[bool]] = {n: [] for n in names}
            for i in test:
                key = POOLED
                if classes is not None and sizes is not None:
                    key = choose_group(classes[i], sizes[i], document)
                for n in names:
                    flags[n].append(exceeds(rows[i][n], thresholds[key][n], CHECKS[n].tail))
            for n in names:
                rates[n].append(sum(flags[n]) / len(test))
            rates["any"].append(
                sum(any(flags[n][j] for n in names) for j in range(len(test))) / len(test)
            )
        for n, values in rates.items():
            out[n][f"{fpr:g}"] = round(mean(values), 4)
    return out


def holdout_familywise(
    rows: Sequence[Mapping[str, float]],
    fprs: Sequence[float],
    classes: Sequence[int],
    sizes: Sequence[int],
    names: Sequence[str],
) -> dict[str, dict[str, float]]:
    """The pipeline's family-wise calibration, measured on honest models it never saw.

    Fit `calibrate.familywise_calibrate` for the checks `names` on one half (per group,
    as the shipped file holds them), judge each model of the other half by the group
    `choose_group` picks for it, count those flagged by any check; both ways, mean.
    Also the leave-one-out rate the fit itself predicted (mean over the groups used)."""
    from sandbox.checks.battery import CHECKS
    from sandbox.checks.calibrate import POOLED, choose_group, familywise_calibrate
    from sandbox.checks.result import exceeds

    halves = split_halves(len(rows))
    out: dict[str, dict[str, float]] = {"held_out": {}, "predicted": {}, "allowed": {}}
    for fpr in fprs:
        rates: list[float] = []
        predicted: list[float] = []
        allowed: list[float] = []
        for fit, test in (halves, halves[::-1]):
            members = _group_members(fit, classes)
            document = _group_document(members, sizes)
            fitted = {
                key: familywise_calibrate({n: [rows[i][n] for i in index] for n in names}, fpr)
                for key, index in members.items()
            }
            flagged = 0
            used: dict[str, int] = {}
            for i in test:
                key = choose_group(classes[i], sizes[i], document) if classes else POOLED
                used[key] = used.get(key, 0) + 1
                limits = fitted[key].thresholds
                flagged += any(exceeds(rows[i][n], limits[n], CHECKS[n].tail) for n in names)
            rates.append(flagged / len(test))
            predicted.append(sum(fitted[k].corpus_rate * c for k, c in used.items()) / len(test))
            allowed.append(sum(fitted[k].allowed * c for k, c in used.items()) / len(test))
        out["held_out"][f"{fpr:g}"] = round(mean(rates), 4)
        out["predicted"][f"{fpr:g}"] = round(mean(predicted), 4)
        out["allowed"][f"{fpr:g}"] = round(mean(allowed), 2)
    return out


def _group_members(indices: Sequence[int], classes: Sequence[int] | None) -> dict[str, list[int]]:
    """The pooled corpus and each calibration group: which of `indices` belong."""
    from sandbox.checks.calibrate import POOLED, group_key

    members: dict[str, list[int]] = {POOLED: list(indices)}
    for i in indices:
        if classes is not None:
            members.setdefault(group_key(classes[i]), []).append(i)
    return members


def _group_document(
    members: Mapping[str, Sequence[int]], sizes: Sequence[int] | None
) -> dict[str, Any]:
    """What `choose_group` reads of a calibration: per group, its size and the range
    of parameter counts it was fitted on."""
    from sandbox.checks.calibrate import POOLED

    if sizes is None:
        return {"groups": {}}
    return {
        "groups": {
            key: {
                "models": len(index),
                "parameters": [min(sizes[i] for i in index), max(sizes[i] for i in index)],
            }
            for key, index in members.items()
            if key != POOLED and index
        }
    }


def model_groups(models: Sequence[CorpusModel]) -> tuple[list[int], list[int]]:
    """Each model's class count (its dataset's: what the pipeline groups by) and
    parameter count (float values in its tensors)."""
    classes = [load_data(m.config.dataset).num_classes for m in models]
    sizes = [sum(int(v.size) for v in m.state.values()) for m in models]
    return classes, sizes


# --------------------------------------------------------------------------- sanitizer sweep


def _to_bf16(a: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """float32 -> bfloat16 bit patterns, rounding to nearest even."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def _cast(state: Mapping[str, npt.NDArray[np.float32]], dtype: str) -> dict[str, Any]:
    from sandbox.checks.tensors import RawTensor, raw_from_numpy

    if dtype == "F32":
        return {k: raw_from_numpy(v) for k, v in state.items()}
    if dtype == "F16":
        return {k: raw_from_numpy(v.astype(np.float16)) for k, v in state.items()}
    return {k: RawTensor("BF16", _to_bf16(v)) for k, v in state.items()}


SWEEPS: dict[str, tuple[int, ...]] = {
    "F32": SANITIZE_SWEEP,
    "F16": tuple(range(0, 11)),
    "BF16": tuple(range(0, 8)),
}


def sweep_model(model: CorpusModel) -> dict[str, dict[int, list[float]]]:
    """One model's holdout-accuracy changes (points) after sanitising, per dtype and k.

    The baseline of F16/BF16 is the model cast to that dtype (unsanitised)."""
    import torch

    from sandbox.checks.sanitize import sanitize_tensors
    from sandbox.checks.tensors import as_float

    torch.set_num_threads(1)
    data = load_data(model.config.dataset)
    module = build_model(model.config, data.input_shape, data.num_classes)
    x = torch.from_numpy(data.x_holdout)

    def score(state: Mapping[str, npt.NDArray[np.generic]]) -> float:
        tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
        module.load_state_dict(tensors, strict=True)
        with torch.no_grad():
            predicted = module(x).argmax(dim=1).numpy()
        return float((predicted == data.y_holdout).mean())

    out: dict[str, dict[int, list[float]]] = {}
    for dtype, ks in SWEEPS.items():
        raw = _cast(model.state, dtype)
        base = score({n: as_float(t) for n, t in raw.items()})
        out[dtype] = {}
        for k in ks:
            changes = []
            for _ in range(SANITIZE_REPEATS):
                clean, _ = sanitize_tensors(raw, {dtype: k})
                changes.append(100.0 * (score({n: as_float(t) for n, t in clean.items()}) - base))
            out[dtype][k] = changes
    return out


def _sweep_worker(args: tuple[ModelConfig, str]) -> dict[str, dict[int, list[float]]]:
    return sweep_model(_worker(args))


def sanitizer_sweep(
    models: Sequence[CorpusModel], jobs: int, directory: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Holdout accuracy change (percentage points) after sanitising, per dtype and k.

    The recommended k per dtype is the largest k such that, for it and every smaller
    k, the mean accuracy *drop* over all runs (a gain counts as no drop, so gains
    cannot hide losses) is at most MAX_ACCURACY_COST_POINTS.
    """
    start = time.perf_counter()
    if jobs <= 1:
        per_model = [sweep_model(m) for m in models]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            per_model = list(pool.map(_sweep_worker, [(m.config, str(directory)) for m in models]))
    result: dict[str, Any] = {}
    for dtype, ks in SWEEPS.items():
        changes = {k: [c for m in per_model for c in m[dtype][k]] for k in ks}
        table = {
            str(k): {
                "mean_change_points": round(mean(v), 4),
                "mean_drop_points": round(mean([max(0.0, -c) for c in v]), 4),
                "worst_change_points": round(min(v), 4),
                "best_change_points": round(max(v), 4),
                "runs_changed": round(sum(1 for c in v if c != 0) / len(v), 4),
                "runs_dropping_more_than": {
                    f"{points:g}": round(sum(1 for c in v if c < -points) / len(v), 4)
                    for points in (0.5, 1.0, 2.0)
                },
            }
            for k, v in changes.items()
        }
        recommended = 0
        for k in ks:
            if table[str(k)]["mean_drop_points"] > MAX_ACCURACY_COST_POINTS:
                break
            recommended = k
        result[dtype] = {
            "max_mean_drop_points": MAX_ACCURACY_COST_POINTS,
            "recommended_bits": recommended,
            "by_bits": table,
        }
        log(f"sanitizer sweep {dtype}: recommended k={recommended}")
    log(f"sanitizer sweep: {len(models)} models ({time.perf_counter() - start:.0f} s)")
    result["models"] = len(models)
    result["repeats"] = SANITIZE_REPEATS
    result["baseline"] = "the same model, unsanitised, in the same dtype"
    return result


# --------------------------------------------------------------------------- output


def calibration_document(
    models: Sequence[CorpusModel],
    rows: Sequence[Mapping[str, float]],
    sweep: Mapping[str, Any],
    seconds: float,
) -> dict[str, Any]:
    from sandbox.checks.battery import CHECKS
    from sandbox.checks.calibrate import FPR_TABLE, POOLED, calibrate

    names = [n for n in CHECKS if all(n in r for r in rows)]
    # In corpus order, aligned across checks: family-wise calibration needs each
    # model's statistics together (calibrate.ALIGNED_FORMAT).
    honest = {n: [round(float(r[n]), 6) for r in rows] for n in names}
    table = {f"{fpr:g}": calibrate(honest, fpr) for fpr in FPR_TABLE}
    classes, sizes = model_groups(models)
    members = _group_members(range(len(rows)), classes)
    shapes = _group_document(members, sizes)["groups"]
    groups: dict[str, Any] = {}
    for key, index in sorted(members.items()):
        if key == POOLED:
            continue
        part = [rows[i] for i in index]
        values = {n: [round(float(r[n]), 6) for r in part] for n in names}
        by_fpr = {f"{fpr:g}": calibrate(values, fpr) for fpr in FPR_TABLE}
        groups[key] = {
            **shapes[key],
            "datasets": sorted({models[i].config.dataset for i in index}),
            "checks": {
                n: {
                    "thresholds": {fpr: round(t[n], 6) for fpr, t in by_fpr.items()},
                    "honest": values[n],
                }
                for n in names
            },
            "holdout_fpr": holdout_fprs(part, FPR_TABLE),
            "familywise": _familywise_table(values),
        }
    datasets: dict[str, int] = {}
    archs: dict[str, int] = {}
    for m in models:
        datasets[m.config.dataset] = datasets.get(m.config.dataset, 0) + 1
        archs[m.config.arch] = archs.get(m.config.arch, 0) + 1
    return {
        "format": 2,
        "generated_by": "python -m bench.corpus",
        "corpus": {
            "version": CORPUS_VERSION,
            "models": len(models),
            "datasets": datasets,
            "architectures": archs,
            "holdout": {"fraction": HOLDOUT_FRACTION, "seed": HOLDOUT_SEED},
            "mean_holdout_accuracy": {
                d: round(mean([m.accuracy for m in models if m.config.dataset == d]), 4)
                for d in datasets
            },
            "seconds": round(seconds, 1),
        },
        "default_fpr": 0.01,
        "checks": {
            n: {
                "tail": CHECKS[n].tail,
                "summary": CHECKS[n].summary,
                "thresholds": {fpr: round(t[n], 6) for fpr, t in table.items()},
                "honest": honest[n],
            }
            for n in names
        },
        "holdout_fpr": holdout_fprs(rows, FPR_TABLE),
        "groups": groups,
        "holdout_fpr_routed": holdout_fprs(rows, FPR_TABLE, classes, sizes),
        "familywise": _familywise_table(honest),
        "holdout_familywise": {
            label: holdout_familywise(rows, FPR_TABLE, classes, sizes, subset)
            for label, subset in _check_sets(names).items()
        },
        "sanitizer": dict(sweep),
    }


def _check_sets(names: Sequence[str]) -> dict[str, list[str]]:
    """The enabled-check sets the shipped policies use: every check (strict), and the
    checks that need no training data (default)."""
    from sandbox.checks.battery import CHECKS

    return {
        "all checks": list(names),
        "without data-aware checks": [n for n in names if not CHECKS[n].needs_data],
    }


def _familywise_table(columns: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Per FPR and check set: the common rank level, the leave-one-out rate and the
    thresholds `familywise_calibrate` picks on these honest statistics."""
    from sandbox.checks.calibrate import FPR_TABLE, familywise_calibrate

    table: dict[str, Any] = {}
    for label, subset in _check_sets(list(columns)).items():
        entries = {}
        for fpr in FPR_TABLE:
            fit = familywise_calibrate({n: columns[n] for n in subset}, fpr)
            entries[f"{fpr:g}"] = {
                "honest_beyond_threshold": fit.allowed,
                "corpus_familywise_rate": round(fit.corpus_rate, 5),
                "thresholds": {n: round(t, 6) for n, t in fit.thresholds.items()},
            }
        table[label] = entries
    return table


def markdown(document: Mapping[str, Any]) -> str:
    lines = [
        f"Corpus: {document['corpus']['models']} honest models {document['corpus']['datasets']}, "
        f"{document['corpus']['seconds']} s",
        "",
        "| check | tail | threshold @1% | held-out FPR @1% | @5% |",
        "|---|---|---:|---:|---:|",
    ]
    fpr = document["holdout_fpr"]
    for name, entry in document["checks"].items():
        lines.append(
            f"| {name} | {entry['tail']} | {entry['thresholds']['0.01']:.4g} | "
            f"{fpr[name]['0.01']:.3f} | {fpr[name]['0.05']:.3f} |"
        )
    lines.append(f"| any check | | | {fpr['any']['0.01']:.3f} | {fpr['any']['0.05']:.3f} |")
    lines += group_markdown(document)
    lines += familywise_markdown(document)
    lines += [
        "",
        "| dtype | k | mean change (points) | mean drop | worst | runs changed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for dtype in ("F32", "F16", "BF16"):
        entry = document["sanitizer"].get(dtype)
        if not entry:
            continue
        for k, row in entry["by_bits"].items():
            mark = " (default)" if int(k) == entry["recommended_bits"] else ""
            lines.append(
                f"| {dtype} | {k}{mark} | {row['mean_change_points']:+.3f} | "
                f"{row['mean_drop_points']:.3f} | {row['worst_change_points']:+.3f} | "
                f"{row['runs_changed']:.3f} |"
            )
    return "\n".join(lines)


def familywise_markdown(document: Mapping[str, Any]) -> list[str]:
    """The pipeline's family-wise calibration: the rate the corpus predicts (leave one
    out) and the rate measured on held-out halves, per enabled-check set."""
    measured: Mapping[str, Any] = document.get("holdout_familywise", {})
    lines = [
        "",
        "| family-wise target | checks | honest beyond each threshold (half) | "
        "predicted (leave-one-out) | measured on the held-out half |",
        "|---:|---|---:|---:|---:|",
    ]
    for label, entry in measured.items():
        for fpr in entry["held_out"]:
            lines.append(
                f"| {float(fpr):.1%} | {label} | {entry['allowed'][fpr]:g} | "
                f"{entry['predicted'][fpr]:.2%} | {entry['held_out'][fpr]:.2%} |"
            )
    return lines


def group_markdown(document: Mapping[str, Any]) -> list[str]:
    """Per calibration group: thresholds and held-out FPRs at 1%, then the held-out
    rates with every model judged by the group the pipeline picks for it."""
    groups: Mapping[str, Any] = document.get("groups", {})
    if not groups:
        return []
    keys = sorted(groups)
    header = " | ".join(
        f"{k} ({groups[k]['models']} models, {groups[k]['parameters'][0]}-"
        f"{groups[k]['parameters'][1]} params): threshold @1% | held-out FPR @1%"
        for k in keys
    )
    lines = ["", f"| check | {header} | routed held-out FPR @1% | @5% |", "|---|"]
    lines[-1] += "---:|" * (2 * len(keys) + 2)
    routed = document["holdout_fpr_routed"]
    for name in document["checks"]:
        cells = []
        for k in keys:
            cells.append(f"{groups[k]['checks'][name]['thresholds']['0.01']:.4g}")
            cells.append(f"{groups[k]['holdout_fpr'][name]['0.01']:.3f}")
        lines.append(
            f"| {name} | {' | '.join(cells)} | {routed[name]['0.01']:.3f} | "
            f"{routed[name]['0.05']:.3f} |"
        )
    cells = []
    for k in keys:
        cells += ["", f"{groups[k]['holdout_fpr']['any']['0.01']:.3f}"]
    lines.append(
        f"| any check | {' | '.join(cells)} | {routed['any']['0.01']:.3f} | "
        f"{routed['any']['0.05']:.3f} |"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=DEFAULT_MODELS, help="corpus size")
    parser.add_argument("--quick", action="store_true", help="20-model smoke run (no write)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--out", type=Path, default=None, help=f"default: {DEFAULT_OUT}")
    parser.add_argument("--no-write", action="store_true", help="print, write nothing")
    parser.add_argument("--cache", type=Path, default=None, help=f"default: {cache_dir()}")
    args = parser.parse_args(argv)
    n = 20 if args.quick else args.models
    out = args.out or (None if args.quick or args.no_write else DEFAULT_OUT)
    directory = args.cache or cache_dir()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    start = time.perf_counter()
    models = load_corpus(corpus_configs(n), directory=directory, jobs=args.jobs, log=log)
    rows = corpus_statistics(models, args.jobs, directory, log)
    sweep = sanitizer_sweep(models[:SWEEP_MODELS], args.jobs, directory, log)
    document = calibration_document(models, rows, sweep, time.perf_counter() - start)
    if out is not None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, out)
        log(f"wrote {out}")
    print(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
