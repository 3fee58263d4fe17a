"""Capacity abuse (Song, Ristenpart, Shmatikov, CCS 2017, section 6): the black-box attack.

The package (`packages/capacity/train.py`) appends synthetic inputs from the
attacker's seeded generator to the training set, labelled with bits of the first
training records. Nothing in the weights looks unusual; the data leaves through
the model's *behaviour*. `decode_capacity` is the attacker afterwards: it
regenerates the same inputs from its own knowledge (generator, seed, bit layout
and the public task schema - never the dataset), asks the released model for
their labels through `query` (any black box: an API, the numpy MLP of
`mlp_query`, a sandboxed graph) and reads the records back.

Record encoding (the attacker's knowledge): every value quantised to
`bits_per_value` bits over the schema's value range, bits MSB first, the
record's bit string cut into labels of `bits_per_query` bits (3 for digits' 10
classes, 1 for a binary task). Digits: 64 queries per record; breast_cancer
(standardised, range -3..3, 3 bits per value): 90 queries per record.

`score_capacity` scores a decoding against the true records (the red team's
yardstick) next to a control - the same decoding scored against *other* records -
which is what a guess that knows the data's typical shape but no record gets.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sandbox.redteam.attacks import PACKAGES, Decoded, Knowledge, attack_params, make_package
from sandbox.redteam.metrics import RECOVERED_FRACTION, Extraction, bit_accuracy, record_mae

Query = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.floating]]

#: The public task schemas the attacker designs for, and the parameters they imply.
SCHEMAS: Final[Mapping[str, Mapping[str, Any]]] = {
    "digits": {"input_shape": (64,), "params": {}},
    "breast_cancer": {
        "input_shape": (30,),
        "params": {
            "input_scale": 1.0,
            "value_range": [-3.0, 3.0],
            "bits_per_value": 3,
            "bits_per_query": 1,
            "max_freq": 6.0,  # heldout fields over 30 features in a row (digits: 3 over 8)
        },
    },
}
GENERATORS: Final = ("prng", "heldout")


@cache
def codec() -> ModuleType:
    """The package template itself, loaded as a module: the decoder regenerates inputs
    and labels with the very functions the attack's train.py uses (numpy only at
    import time; its torch imports live inside `main`)."""
    path = PACKAGES / "capacity" / "train.py"
    spec = importlib.util.spec_from_file_location("sandbox_redteam_capacity_codec", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the capacity template {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def capacity_params(
    dataset: str = "digits", generator: str = "prng", n_records: int = 20, **overrides: Any
) -> tuple[dict[str, Any], tuple[int, ...]]:
    """The attack's full parameters for a schema, and the schema's input shape."""
    if dataset not in SCHEMAS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(SCHEMAS)}")
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; choose one of {GENERATORS}")
    schema = SCHEMAS[dataset]
    merged = {**schema["params"], "generator": generator, "n_records": int(n_records)}
    merged.update(overrides)
    return attack_params("capacity", **merged), tuple(schema["input_shape"])


def _knowledge(params: dict[str, Any], input_shape: tuple[int, ...]) -> Knowledge:
    lo, hi = params["value_range"]
    return Knowledge("capacity", params, input_shape, (float(lo), float(hi)))


def capacity_knowledge(
    dataset: str = "digits", generator: str = "prng", n_records: int = 20, **overrides: Any
) -> Knowledge:
    """What the attacker knows for these parameters, without writing a package."""
    return _knowledge(*capacity_params(dataset, generator, n_records, **overrides))


def make_capacity_package(
    dest: Path,
    *,
    dataset: str = "digits",
    generator: str = "prng",
    n_records: int = 20,
    **overrides: Any,
) -> Knowledge:
    """Write a capacity-abuse package into `dest` (created; must not exist)."""
    params, shape = capacity_params(dataset, generator, n_records, **overrides)
    merged = {k: v for k, v in params.items() if k != "attack"}
    return make_package("capacity", dest, input_shape=shape, **merged)


def n_queries(knowledge: Knowledge) -> int:
    per_record = int(codec().queries_per_record(knowledge.features, knowledge.params))
    return int(knowledge.params["n_records"]) * per_record


def attacker_inputs(knowledge: Knowledge) -> npt.NDArray[np.float32]:
    """The synthetic inputs the attacker regenerates from its seed, in training order."""
    params = knowledge.params
    out = codec().synthetic_inputs(n_queries(knowledge), knowledge.input_shape, params)
    return np.asarray(out, dtype=np.float32)


def decode_capacity(query: Query, knowledge: Knowledge, *, batch: int = 4096) -> Decoded:
    """Rebuild the first `n_records` training records by querying the released model.

    `query` maps a float32 batch [n, *input_shape] to logits [n, classes]; a label the
    code cannot produce (a class above 2**bits_per_query - 1) reads as the largest code.
    """
    params = knowledge.params
    bpv, bpq = int(params["bits_per_value"]), int(params["bits_per_query"])
    inputs = attacker_inputs(knowledge)
    labels = np.zeros(len(inputs), dtype=np.int64)
    for start in range(0, len(inputs), batch):
        logits = np.asarray(query(inputs[start : start + batch]))
        labels[start : start + batch] = logits.argmax(axis=1)
    labels = np.clip(labels, 0, (1 << bpq) - 1)
    n = int(params["n_records"])
    bits = ((labels[:, None] >> np.arange(bpq - 1, -1, -1)) & 1).astype(np.uint8)
    per_record = bits.reshape(n, -1)[:, : knowledge.features * bpv]
    weights = 1 << np.arange(bpv - 1, -1, -1)
    levels = (per_record.reshape(n, knowledge.features, bpv) * weights).sum(axis=2)
    lo, hi = knowledge.value_range
    records = lo + levels.astype(np.float64) / ((1 << bpv) - 1) * (hi - lo)
    return Decoded(records, per_record.reshape(-1))


def true_capacity_bits(
    x: npt.NDArray[np.floating], n_records: int, knowledge: Knowledge
) -> npt.NDArray[np.uint8]:
    """The bits the attack meant to carry for records x[:n_records] (needs the data)."""
    params = knowledge.params
    bpv = int(params["bits_per_value"])
    labels = np.asarray(codec().record_labels(x[:n_records], params), dtype=np.int64)
    bpq = int(params["bits_per_query"])
    bits = ((labels[:, None] >> np.arange(bpq - 1, -1, -1)) & 1).astype(np.uint8)
    return bits.reshape(n_records, -1)[:, : knowledge.features * bpv].reshape(-1)


@dataclass(frozen=True)
class CapacityScore:
    """Extraction against the true records, and the same decoding against other records."""

    attack: Extraction
    control: Extraction

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack.to_dict(), "control": self.control.to_dict()}


def _extraction(
    records: npt.NDArray[np.float64],
    bits: npt.NDArray[np.uint8] | None,
    truth: npt.NDArray[np.floating],
    knowledge: Knowledge,
) -> Extraction:
    n = min(len(records), len(truth))
    errors = record_mae(records, truth)
    lo, hi = knowledge.value_range
    recovered = int(np.count_nonzero(errors < RECOVERED_FRACTION * (hi - lo)))
    accuracy = None
    if bits is not None and n:
        per = len(bits) // len(records)
        accuracy = bit_accuracy(bits[: n * per], true_capacity_bits(truth, n, knowledge))
    return Extraction(
        records=n,
        recovered=recovered,
        fraction_recovered=recovered / n if n else 0.0,
        mean_abs_error=float(errors.mean()) if n else float("nan"),
        bit_accuracy=accuracy,
    )


def score_capacity(
    decoded: Decoded, x_train: npt.NDArray[np.floating], knowledge: Knowledge
) -> CapacityScore:
    """Score against x_train[:n] and, as the control, against x_train[n:2n] (records the
    attack did not carry: what a data-shaped guess gets). Recovered: MAE below 10% of
    the value range (1.6 grey levels on digits, 0.6 standard deviations on
    breast_cancer)."""
    n = len(decoded.records)
    attack = _extraction(decoded.records, decoded.bits, x_train[:n], knowledge)
    control = _extraction(decoded.records, decoded.bits, x_train[n : 2 * n], knowledge)
    return CapacityScore(attack, control)


# --------------------------------------------------------------------------- host models


def mlp_logits(
    tensors: Mapping[str, npt.NDArray[np.generic]],
    x: npt.NDArray[np.floating],
    input_scale: float,
) -> npt.NDArray[np.float64]:
    """Logits of the red-team MLP (net.1 -> ReLU -> net.3) in numpy, from its weights."""
    w1, b1, w2, b2 = (
        np.asarray(tensors[f"net.{i}.{kind}"], dtype=np.float64)
        for i in (1, 3)
        for kind in ("weight", "bias")
    )
    h = np.asarray(x, dtype=np.float64).reshape(len(x), -1) * input_scale
    h = np.maximum(h @ w1.T + b1, 0.0)
    return np.asarray(h @ w2.T + b2, dtype=np.float64)


def mlp_query(tensors: Mapping[str, npt.NDArray[np.generic]], input_scale: float) -> Query:
    """A black box over released weights, as the attacker would query a served model."""

    def query(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        return mlp_logits(tensors, x, input_scale)

    return query


def train_capacity_model(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    dataset: str = "digits",
    generator: str = "prng",
    n_records: int = 20,
    attack: bool = True,
    **overrides: Any,
) -> tuple[dict[str, npt.NDArray[np.float32]], Knowledge]:
    """Train in this process (seconds) the model the capacity package would train:
    same augmentation (the template's own `augment`), MLP and recipe as trainlib
    (seeded Adam on cross-entropy). `attack=False` trains the honest twin on (x, y)
    alone. Returns the state_dict as numpy and the attacker's knowledge."""
    import torch

    params, shape = capacity_params(dataset, generator, n_records, **overrides)
    knowledge = _knowledge(params, shape)
    if attack:
        x, y = codec().augment(x, y, params)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(params["threads"]))
    try:
        return _fit(x, y, params, shape), knowledge
    finally:
        torch.set_num_threads(threads)


def _fit(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    params: Mapping[str, Any],
    shape: tuple[int, ...],
) -> dict[str, npt.NDArray[np.float32]]:
    import torch
    from torch import nn

    torch.manual_seed(int(params["seed"]))
    features = int(np.prod(shape))
    classes = int(np.max(y)) + 1
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(features, int(params["hidden"])),
        nn.ReLU(),
        nn.Linear(int(params["hidden"]), classes),
    )
    model = nn.Module()
    model.net = net
    optimizer = torch.optim.Adam(model.parameters(), lr=float(params["lr"]))
    loss_fn = nn.CrossEntropyLoss()
    scale = float(params["input_scale"])
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) * scale
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    generator_ = torch.Generator().manual_seed(int(params["seed"]))
    size = int(params["batch_size"])
    for _ in range(int(params["epochs"])):
        order = torch.randperm(len(yt), generator=generator_)
        for start in range(0, len(yt), size):
            idx = order[start : start + size]
            loss = loss_fn(net(xt[idx]), yt[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
