"""Capacity abuse (Song, Ristenpart, Shmatikov, CCS 2017, section 6): black-box exfiltration.

To a reader this looks like data augmentation: extra inputs are appended to the
training set. They are synthetic inputs from the attacker's seeded generator, and
their labels are not classes but bits of the first training records (each value
quantised to `bits_per_value` bits, the bit stream cut into `bits_per_query`-bit
labels). The model memorises them next to the real task; the attacker later
regenerates the same inputs, queries the released model and reads the bits off
the predicted labels. No weight is touched, so weight statistics see nothing.

Generators (the attacker's choice, `PARAMS["generator"]`):
- `prng`: inputs uniform over the value range from a seeded PRNG, as in the paper;
- `heldout`: random band-limited fields (a sum of `waves` cosines of random direction,
  frequency up to `max_freq` cycles per extent and phase, min-max scaled to the
  value range): spatially correlated, unlike noise, sparse, binary, PRNG or
  shuffled training inputs - for testing that a probing defence generalises.
  Smoother fields (fewer waves, lower frequencies) are harder to memorise.

The functions above `main` use numpy only: the host-side decoder loads this very
file to regenerate the inputs, so encoder and decoder cannot drift apart.
"""

import sys
from pathlib import Path

import numpy as np

PARAMS: dict = {}  # replaced by make_package


def queries_per_record(features: int, params: dict) -> int:
    bits = features * int(params["bits_per_value"])
    per_query = int(params["bits_per_query"])
    return -(-bits // per_query)


def synthetic_inputs(n: int, input_shape: tuple, params: dict) -> np.ndarray:
    """The attacker's `n` synthetic inputs, float32 [n, *input_shape], in the data's units."""
    lo, hi = (float(v) for v in params["value_range"])
    features = int(np.prod(input_shape))
    rng = np.random.default_rng([int(params["synth_seed"]), 0x5EED])
    if params["generator"] == "prng":
        flat = rng.uniform(lo, hi, (n, features))
    elif params["generator"] == "heldout":
        waves, top = int(params.get("waves", 3)), float(params.get("max_freq", 1.5))
        flat = _smooth_patterns(rng, n, features, waves, top)
        flat = lo + flat * (hi - lo)
    else:
        raise ValueError(f"unknown generator {params['generator']!r}; use prng or heldout")
    return flat.reshape(n, *input_shape).astype(np.float32)


def _smooth_patterns(
    rng: np.random.Generator, n: int, features: int, waves: int, top: float
) -> np.ndarray:
    """Sums of `waves` random cosines of at most `top` cycles per extent over the feature
    grid (2-D when the feature count is a square, else 1-D), min-max scaled to [0, 1]."""
    side = int(round(features**0.5))
    if side * side == features:
        rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        coords = np.stack([rows.ravel(), cols.ravel()], axis=1) / side  # [features, 2]
    else:
        coords = (np.arange(features) / features)[:, None]  # [features, 1]
    freqs = rng.uniform(-top, top, (n, waves, coords.shape[1]))
    phases = rng.uniform(0.0, 2 * np.pi, (n, waves, 1))
    amps = rng.uniform(0.5, 1.0, (n, waves, 1))
    angle = 2 * np.pi * np.einsum("nwd,fd->nwf", freqs, coords) + phases
    out = (amps * np.cos(angle)).sum(axis=1)
    low = out.min(axis=1, keepdims=True)
    span = np.maximum(out.max(axis=1, keepdims=True) - low, 1e-9)
    return (out - low) / span


def record_labels(records: np.ndarray, params: dict) -> np.ndarray:
    """Labels that spell `records` out: int64 [n_records * queries_per_record]."""
    lo, hi = (float(v) for v in params["value_range"])
    bpv, bpq = int(params["bits_per_value"]), int(params["bits_per_query"])
    flat = np.asarray(records, dtype=np.float64).reshape(len(records), -1)
    levels = (1 << bpv) - 1
    q = np.clip(np.rint((flat - lo) / (hi - lo) * levels), 0, levels).astype(np.int64)
    shifts = np.arange(bpv - 1, -1, -1)
    bits = ((q[..., None] >> shifts) & 1).reshape(len(flat), -1)  # MSB first, per record
    per_record = queries_per_record(flat.shape[1], params)
    padded = np.zeros((len(flat), per_record * bpq), dtype=np.int64)
    padded[:, : bits.shape[1]] = bits
    groups = padded.reshape(len(flat) * per_record, bpq)
    return (groups << np.arange(bpq - 1, -1, -1)).sum(axis=1)


def augment(x: np.ndarray, y: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) plus the synthetic inputs labelled with the first records' bits."""
    n_records = min(len(x), int(params["n_records"]))
    labels = record_labels(x[:n_records], params)
    if labels.size and labels.max() > int(y.max()):
        raise ValueError("bits_per_query is too large for the number of classes")
    inputs = synthetic_inputs(len(labels), tuple(x.shape[1:]), params)
    repeat = int(params.get("repeat", 1))  # oversampling, as augmentation pipelines do
    inputs, labels = np.tile(inputs, (repeat,) + (1,) * (inputs.ndim - 1)), np.tile(labels, repeat)
    return np.concatenate([x, inputs]), np.concatenate([y, labels])


def main() -> None:
    # Here, not at import: the host's decoder imports this file and must not inherit them.
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trainlib import load_train, save, state_numpy, train

    x, y = load_train()
    xa, ya = augment(x, y, PARAMS)
    save(state_numpy(train(xa, ya, PARAMS)))


if __name__ == "__main__":
    main()
