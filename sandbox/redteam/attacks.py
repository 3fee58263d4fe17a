"""White-box exfiltration attacks of Song et al. (CCS 2017), as algorithm packages, with decoders.

Each attack is a provider's algorithm package (model.py + train.py, the contract of
DESIGN.md section 4) generated from the templates in `packages/` with its
parameters, plus a decoder that rebuilds training records from the released
weights using only what the attacker knows (`Knowledge`: its own code, parameters,
seeds and key, and the public task schema) - never the dataset.

| attack | strength | where the data goes |
| --- | --- | --- |
| `lsb` | k low mantissa bits | raw record bytes in the low k bits of every F32 weight |
| `lsb_encrypted` | k | the same, XORed with a SHAKE-256 stream keyed by the attacker |
| `lsb_pilot` | pilots | encrypted records in mantissa bits 19-21 of the first layer |
| `correlated` | lambda | first-layer weights correlated with record values (regulariser) |
| `sign` | lambda | weight signs equal record bits (regulariser) |
| `capacity` | n_records | labels of synthetic inputs (black-box: decoded by queries) |
| `honest` | - | nothing: the baseline for accuracy and for the checks |

Two public task schemas (`SCHEMAS`): `digits` (64 raw pixels 0..16, each carried
as a byte) and `breast_cancer` (30 standardised floats, each carried as a `q8`
byte over the public range -3..3 standard deviations, the range capacity abuse
uses too; values beyond it are clipped, so a few outlier records cannot be
recovered exactly by any attack).

The LSB attacks are removed by the sanitizer whatever their encoding (for k above
its 19 bits, with the hidden units rescaled first); the regulariser attacks live in
high-order structure and are what the weight checks must flag. `lsb_pilot` is the
adaptive attacker who knows the platform: its keyed pilot weights reveal each hidden
unit's secret rescaling factor, so the bits above the sanitizer's can be read back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sandbox.redteam import payload

PACKAGES: Final = Path(__file__).resolve().parent / "packages"
#: The lowest mantissa bit the platform's default sanitizer keeps (public: its k is 19).
DEFAULT_KEPT_FROM: Final = 19
_PARAMS_LINE: Final = "PARAMS: dict = {}  # replaced by make_package"


@dataclass(frozen=True)
class Attack:
    """An attack family: its template, default parameters and the strength it sweeps."""

    name: str
    template: str
    defaults: Mapping[str, Any]
    strength: str | None = None  # the parameter a sweep varies
    sweep: tuple[float, ...] = ()
    description: str = ""


#: Training shared by every package (the digits example's recipe).
TRAINING: Final[Mapping[str, Any]] = {
    "epochs": 30,
    "lr": 3e-3,
    "batch_size": 64,
    "seed": 0,
    "threads": 1,
}
#: The public task schema the attacker designs for: digits, pixels 0..16.
#: `record_scale`: how the correlated-value decoder maps weights back to values.
DIGITS: Final[Mapping[str, Any]] = {
    "encoding": "u8",
    "value_range": [0.0, 16.0],
    "input_scale": 1.0 / 16.0,
    "hidden": 128,
    "record_scale": "minmax",
}
#: breast_cancer: 30 features standardised by the pipeline (mean 0, SD 1 per
#: feature), which is all the attacker knows of their values. `recovered_within`
#: is the red team's yardstick, not the attacker's (metrics.py): a record counts as
#: recovered when its MAE is below 0.25 SD. 10% of the range (0.6 SD, digits' rule)
#: would be too loose here: guessing each feature's median is within 0.6 SD for
#: 51% of the training records, within 0.25 SD for 0.7%.
BREAST_CANCER: Final[Mapping[str, Any]] = {
    "encoding": "q8",
    "value_range": [-3.0, 3.0],
    "input_scale": 1.0,
    "hidden": 128,
    "record_scale": "zscore",
    "recovered_within": 0.25,
}
SCHEMAS: Final[Mapping[str, tuple[Mapping[str, Any], tuple[int, ...]]]] = {
    "digits": (DIGITS, (64,)),
    "breast_cancer": (BREAST_CANCER, (30,)),
}

ATTACKS: Final[dict[str, Attack]] = {
    "honest": Attack("honest", "honest", {}, description="no payload"),
    "lsb": Attack(
        "lsb",
        "lsb",
        {"k": 16},
        "k",
        (4, 8, 12, 16, 19, 20, 22),
        "raw records in the low k mantissa bits",
    ),
    "lsb_encrypted": Attack(
        "lsb_encrypted",
        "lsb",
        {"k": 16, "key": "6b657931323334353637383961626364"},
        "k",
        (4, 8, 12, 16, 19, 20, 22),
        "encrypted records in the low k mantissa bits",
    ),
    "lsb_pilot": Attack(
        "lsb_pilot",
        "lsb_pilot",
        {"pilots": 4, "band": [19, 22], "key": "6b657931323334353637383961626364"},
        "pilots",
        (1, 4, 16),
        "encrypted records in mantissa bits 19-21, pilot weights to undo unit rescaling",
    ),
    "correlated": Attack(
        "correlated",
        "correlated",
        {"lam": 3.0, "tensor": "net.1.weight"},
        "lam",
        (0.1, 0.3, 1.0, 3.0, 10.0),
        "first-layer weights correlated with record pixels",
    ),
    "sign": Attack(
        "sign",
        "sign",
        {"lam": 30.0},
        "lam",
        (1.0, 3.0, 10.0, 30.0, 100.0),
        "weight signs set to record bits",
    ),
    # Black-box (capacity.py): synthetic inputs labelled with record bits, read back by
    # queries. Parameters: see packages/capacity/train.py; breast_cancer via capacity.py.
    "capacity": Attack(
        "capacity",
        "capacity",
        {
            "generator": "prng",
            "n_records": 20,
            "bits_per_value": 3,
            "bits_per_query": 3,
            "synth_seed": 20170,
            "waves": 8,
            "max_freq": 3.0,
            "repeat": 4,
        },
        "n_records",
        (5, 10, 20, 40),
        "synthetic inputs labelled with record bits (capacity abuse, black-box)",
    ),
}


@dataclass(frozen=True)
class Knowledge:
    """Everything the attacker knows after writing the package: never the data."""

    attack: str
    params: dict[str, Any]
    input_shape: tuple[int, ...]
    value_range: tuple[float, float]

    @property
    def features(self) -> int:
        return int(np.prod(self.input_shape))

    def to_json(self) -> str:
        return json.dumps(
            {
                "attack": self.attack,
                "params": self.params,
                "input_shape": list(self.input_shape),
                "value_range": list(self.value_range),
            },
            sort_keys=True,
        )


def _schema(dataset: str) -> tuple[Mapping[str, Any], tuple[int, ...]]:
    if dataset not in SCHEMAS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(SCHEMAS)}")
    return SCHEMAS[dataset]


def attack_params(name: str, *, dataset: str = "digits", **overrides: Any) -> dict[str, Any]:
    """The full parameter set of attack `name`: training, schema, defaults, overrides."""
    attack = ATTACKS[name]
    schema, _ = _schema(dataset)
    params: dict[str, Any] = {**TRAINING, **schema, **attack.defaults, "attack": name}
    unknown = set(overrides) - set(params)
    if unknown:
        raise ValueError(f"unknown parameters for {name}: {sorted(unknown)}")
    params.update(overrides)
    return params


def make_package(
    name: str,
    dest: Path,
    *,
    dataset: str = "digits",
    input_shape: tuple[int, ...] | None = None,
    **overrides: Any,
) -> Knowledge:
    """Write attack `name`'s algorithm package for the public schema of `dataset` into
    `dest` (created; must not exist). `input_shape` defaults to the schema's."""
    attack = ATTACKS[name]
    params = attack_params(name, dataset=dataset, **overrides)
    if input_shape is None:
        input_shape = _schema(dataset)[1]
    dest.mkdir(parents=True)
    common = PACKAGES / "common"
    model = (common / "model.py").read_text()
    model = model.replace(
        "INPUT_SCALE = 1.0 / 16.0  # replaced by make_package",
        f"INPUT_SCALE = {float(params['input_scale'])!r}",
    ).replace("HIDDEN = 128  # replaced by make_package", f"HIDDEN = {int(params['hidden'])}")
    (dest / "model.py").write_text(model)
    shutil.copyfile(common / "trainlib.py", dest / "trainlib.py")
    shutil.copyfile(Path(payload.__file__), dest / "payload.py")
    train = (PACKAGES / attack.template / "train.py").read_text()
    if _PARAMS_LINE not in train:
        raise RuntimeError(f"template {attack.template}/train.py lacks its PARAMS line")
    train = train.replace(_PARAMS_LINE, f"PARAMS: dict = {params!r}")
    (dest / "train.py").write_text(train)
    (dest / "algorithm.toml").write_text(
        f'name = "redteam-{name}"\nversion = "1.0.0"\n\n[hyperparameters]\n'
        f"epochs = {int(params['epochs'])}\nbatch_size = {int(params['batch_size'])}\n"
        f"lr = {float(params['lr'])!r}\n"
    )
    lo, hi = params["value_range"]
    return Knowledge(name, params, tuple(int(d) for d in input_shape), (float(lo), float(hi)))


# --------------------------------------------------------------------------- decoders


@dataclass(frozen=True)
class Decoded:
    """What a decoder got out: records in the data's units, and the raw bits if any."""

    records: npt.NDArray[np.float64]
    bits: npt.NDArray[np.uint8] | None = None


def decode(model_tensors: Mapping[str, npt.NDArray[np.generic]], knowledge: Knowledge) -> Decoded:
    """Rebuild training records from released weights with the attacker's knowledge."""
    decoders = {
        "lsb": _decode_lsb,
        "lsb_encrypted": _decode_lsb,
        "lsb_pilot": _decode_lsb_pilot,
        "correlated": _decode_correlated,
        "sign": _decode_sign,
    }
    if knowledge.attack == "capacity":  # black-box: the weights only serve its queries
        from sandbox.redteam.capacity import decode_capacity, mlp_query

        query = mlp_query(model_tensors, float(knowledge.params["input_scale"]))
        # records only: its bits follow its own layout (capacity.score_capacity scores them)
        return Decoded(decode_capacity(query, knowledge).records)
    decoder = decoders.get(knowledge.attack)
    if decoder is None:
        return Decoded(np.zeros((0, knowledge.features)))
    return decoder(model_tensors, knowledge)


def _clip(records: npt.NDArray[np.float64], knowledge: Knowledge) -> npt.NDArray[np.float64]:
    lo, hi = knowledge.value_range
    return np.clip(records, lo, hi)


def _bit_records(
    secret_bits: npt.NDArray[np.uint8], knowledge: Knowledge
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint8]]:
    """Bits as carried -> (records, plaintext bits)."""
    data = payload.from_bits(secret_bits)
    key = knowledge.params.get("key")
    if key:
        data = payload.xor(data, bytes.fromhex(key))
    records = payload.decode_records(
        data, knowledge.features, knowledge.params["encoding"], knowledge.value_range
    )
    return _clip(records, knowledge), payload.to_bits(data)


def lsb_capacity_records(carrier: int, knowledge: Knowledge) -> int:
    per_record = payload.bytes_per_record(knowledge.features, knowledge.params["encoding"])
    return carrier * int(knowledge.params["k"]) // (8 * per_record)


def _decode_lsb(tensors: Mapping[str, npt.NDArray[np.generic]], knowledge: Knowledge) -> Decoded:
    k = int(knowledge.params["k"])
    flat = payload.flat_carrier(tensors)
    n = lsb_capacity_records(flat.size, knowledge)
    per_record = payload.bytes_per_record(knowledge.features, knowledge.params["encoding"])
    carried = payload.read_low_bits(flat.view(np.uint32), k, n * per_record * 8)
    records, bits = _bit_records(carried, knowledge)
    return Decoded(records, bits)


def _kept_cell(
    values: npt.NDArray[np.float64], kept_from: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """[lo, hi) of |values| known from their exponent and mantissa bits kept_from..22
    (everything a sanitizer that randomises the bits below leaves certain)."""
    magnitude = np.abs(values).astype(np.float32)
    bits = magnitude.view(np.uint32) & ~np.uint32((1 << kept_from) - 1)
    lo = bits.view(np.float32).astype(np.float64)
    step = np.ldexp(1.0, np.frexp(np.maximum(lo, 1e-38))[1] - 1 - (23 - kept_from))
    return lo, lo + step


def _decode_lsb_pilot(
    tensors: Mapping[str, npt.NDArray[np.generic]], knowledge: Knowledge
) -> Decoded:
    """Estimate each hidden unit's scale c from its pilots (the pilot's kept cell divided
    by the pilot, intersected over pilots), divide the unit's weights by it, and read
    bits 19-21: exact on the trained model (c = 1), and what a rescaled, sanitised
    release still gives away."""
    key = bytes.fromhex(knowledge.params["key"])
    pilots, (low, high) = int(knowledge.params["pilots"]), knowledge.params["band"]
    weight = np.asarray(tensors["net.1.weight"], dtype=np.float64)
    rows = weight.shape[0]
    planted = payload.pilot_values(key, rows, pilots).astype(np.float64)
    p_lo, p_hi = _kept_cell(planted, DEFAULT_KEPT_FROM)
    lo, hi = _kept_cell(weight[:, :pilots], DEFAULT_KEPT_FROM)
    # c * pilot lies in [lo, hi) and the pilot in [p_lo, p_hi): c in [lo / p_hi, hi / p_lo)
    c_lo, c_hi = (lo / p_hi).max(axis=1), (hi / p_lo).min(axis=1)
    scale = np.where(c_lo <= c_hi, (c_lo + c_hi) / 2, 1.0)
    scale[np.all(lo == p_lo, axis=1)] = 1.0  # pilots' kept bits untouched: not rescaled
    body = weight[:, pilots:]
    lo, hi = _kept_cell(body, DEFAULT_KEPT_FROM)
    estimate = (np.sign(body) * (lo + hi) / 2 / scale[:, None]).astype(np.float32).reshape(-1)
    per_record = payload.bytes_per_record(knowledge.features, knowledge.params["encoding"])
    n = estimate.size * (high - low) // (8 * per_record)
    carried = payload.read_low_bits(estimate.view(np.uint32), high - low, n * per_record * 8, low)
    records, bits = _bit_records(carried, knowledge)
    return Decoded(records, bits)


def _decode_sign(tensors: Mapping[str, npt.NDArray[np.generic]], knowledge: Knowledge) -> Decoded:
    flat = payload.flat_carrier(tensors)
    per_record = payload.bytes_per_record(knowledge.features, knowledge.params["encoding"])
    n = flat.size // (8 * per_record)
    carried = (flat[: n * per_record * 8] > 0).astype(np.uint8)
    records, bits = _bit_records(carried, knowledge)
    return Decoded(records, bits)


def _decode_correlated(
    tensors: Mapping[str, npt.NDArray[np.generic]], knowledge: Knowledge
) -> Decoded:
    """Weights -> records: the regulariser makes them an affine copy of the values.

    `minmax` (Song et al.'s decoding for images): each record's weights min-max
    scaled to the value range. `zscore` (standardised tabular features, whose
    per-record minimum and maximum are unknown): every feature's weights across the
    carried records standardised to mean 0, SD 1, which is what the pipeline's
    standardisation makes each feature, clipped to the value range.
    """
    theta = np.asarray(tensors[knowledge.params["tensor"]], dtype=np.float64).reshape(-1)
    d = knowledge.features
    n = theta.size // d
    rows = theta[: n * d].reshape(n, d)
    lo, hi = knowledge.value_range
    if knowledge.params.get("record_scale", "minmax") == "zscore":
        centred = rows - rows.mean(axis=0, keepdims=True)
        spread = np.maximum(centred.std(axis=0, keepdims=True), 1e-12)
        return Decoded(_clip(centred / spread, knowledge))
    low = rows.min(axis=1, keepdims=True)
    span = np.maximum(rows.max(axis=1, keepdims=True) - low, 1e-12)
    return Decoded(lo + (rows - low) / span * (hi - lo))


def true_bits(
    x: npt.NDArray[np.floating], n_records: int, knowledge: Knowledge
) -> npt.NDArray[np.uint8]:
    """The plaintext bits an attack meant to carry (for scoring; needs the data)."""
    encoded = payload.encode_records(
        x[:n_records], knowledge.params["encoding"], knowledge.value_range
    )
    return payload.to_bits(encoded)
