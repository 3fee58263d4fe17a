"""Hidden-unit rescaling: a random, function-preserving change of the weights' high bits.

Why: the sanitizer randomises the low 19 mantissa bits of F32 weights; a payload in
bits 19-21 (an LSB attack with k = 20-22) survives it, keeps accuracy, and no
statistical test separates it from honest weights (`python -m bench.high_planes`).
What erases it without touching the model's function is a symmetry of the network:
for a hidden unit j between two layers whose path is positively homogeneous (ReLU,
leaky ReLU, max or average pooling), relu(c z) = c relu(z) for c > 0, so scaling
the unit's input weights and bias by c_j and its output weights by 1 / c_j gives the
same outputs up to float rounding. With c_j drawn in [1, 2) from a CSPRNG every
value's mantissa is re-rounded from a product the provider cannot predict, so the
bits above the sanitizer's become noise too, and the sanitizer then erases the rest.

Which units: the describe step (`sandbox/guest/unit_chains.py`, trusted code on the
exported graph) reports each `UnitChain`; the host checks them against the declared
tensors (`chain_problems`) before anything is scaled. A unit's tensors are scaled only
when the graph reads each of them exactly once, so a chain the graph does not prove
is never rescaled. If a chain were wrong the model's accuracy would change, and the
decision engine rejects a sanitised model that loses more than `max_sanitize_drop`.

Limits: only what a chain covers is rescaled (the last layer's bias and any tensor
outside a linear/conv - ReLU - linear/conv path keep bits 19-22); BF16 tensors are
left alone (numpy has no bfloat16 arithmetic, and the sanitizer keeps just 4 of
their 7 mantissa bits anyway).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Final

import numpy as np
import numpy.typing as npt

from sandbox.checks.sanitize import BLOCK_ELEMENTS, KeyStream
from sandbox.checks.tensors import MANTISSA_BITS, NUMPY_DTYPES, RawTensor

#: Dtypes whose tensors are rescaled (numpy arithmetic exists for them), with their
#: largest finite and smallest normal magnitudes.
RESCALED_DTYPES: Final[Mapping[str, tuple[float, float]]] = {
    name: (float(np.finfo(t).max), float(np.finfo(t).tiny))
    for name, t in (("F64", np.float64), ("F32", np.float32), ("F16", np.float16))
}


@dataclass(frozen=True)
class UnitChain:
    """`units` hidden units: rows of `first_weight` (and entries of `first_bias`) feed,
    through positively homogeneous ops only, the columns of `second_weight`.

    Unit j owns axis-0 slice j of `first_weight` and `first_bias`, and axis-1 slice
    [j * block, (j + 1) * block) of `second_weight` (block > 1 when a convolution's
    channel is flattened into `block` features of a linear layer)."""

    first_weight: str
    first_bias: str | None
    second_weight: str
    units: int
    block: int = 1

    def names(self) -> tuple[str, ...]:
        bias = () if self.first_bias is None else (self.first_bias,)
        return (self.first_weight, *bias, self.second_weight)


def chain_problems(
    chains: Sequence[UnitChain], shapes: Mapping[str, tuple[str, tuple[int, ...]]]
) -> list[str]:
    """Everything wrong with `chains` against the model's tensors (name -> (dtype, shape)).

    Empty when every chain names existing float tensors of matching shapes and no
    tensor is claimed twice in the same role (a first layer's weight may be the next
    chain's second weight: a hidden layer between two chains)."""
    problems: list[str] = []
    for i, chain in enumerate(chains):
        where = f"unit chain {i} ({chain.first_weight[:80]} -> {chain.second_weight[:80]})"
        if chain.units < 1 or chain.block < 1:
            problems.append(f"{where}: units and block must be at least 1")
            continue
        if len(set(chain.names())) != len(chain.names()):
            problems.append(f"{where}: names one tensor twice")
            continue
        missing = [n[:80] for n in chain.names() if n not in shapes]
        if missing:
            problems.append(f"{where}: no tensor named {', '.join(missing)}")
            continue
        if any(shapes[n][0] not in MANTISSA_BITS for n in chain.names()):
            problems.append(f"{where}: every tensor of a chain must be floating-point")
            continue
        first, second = shapes[chain.first_weight][1], shapes[chain.second_weight][1]
        if len(first) < 2 or first[0] != chain.units:
            problems.append(f"{where}: the first weight {first} has no {chain.units} rows")
        if chain.first_bias is not None and shapes[chain.first_bias][1] != (chain.units,):
            problems.append(f"{where}: the bias is not a vector of {chain.units}")
        if len(second) < 2 or second[1] != chain.units * chain.block:
            problems.append(
                f"{where}: the second weight {second} has no {chain.units} x {chain.block} "
                "input columns"
            )
    for role, names in (
        ("first weight", [c.first_weight for c in chains]),
        ("bias", [c.first_bias for c in chains if c.first_bias is not None]),
        ("second weight", [c.second_weight for c in chains]),
    ):
        twice = sorted(n[:80] for n, count in Counter(names).items() if count > 1)
        if twice:
            problems.append(f"unit chains: {', '.join(twice)} is a {role} of two chains")
    biases = {c.first_bias for c in chains if c.first_bias is not None}
    weights = {n for c in chains for n in (c.first_weight, c.second_weight)}
    if biases & weights:
        problems.append("unit chains: a tensor is both a bias and a weight")
    return problems


@dataclass(frozen=True)
class RescaleReport:
    chains: int  # chains rescaled
    units: int  # hidden units rescaled
    skipped: tuple[str, ...]  # why a chain was left as it was (BF16, overflow)
    tensors: tuple[str, ...]  # tensors whose values changed

    def summary(self) -> dict[str, object]:
        return {
            "unit_chains": self.chains,
            "units_rescaled": self.units,
            "tensors_rescaled": len(self.tensors),
            "chains_skipped": list(self.skipped),
        }


def random_factors(n: int, stream: KeyStream) -> npt.NDArray[np.float64]:
    """n factors uniform in [1, 2) with 53 random bits each, from the keystream."""
    words = np.empty(n, dtype=np.uint64)
    stream.fill(words)
    return 1.0 + (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _flush_subnormals(values: npt.NDArray[np.floating], tiny: float) -> None:
    """Set |x| < tiny to zero in place, a block at a time (no full-size temporaries)."""
    flat = values.reshape(-1)
    for start in range(0, flat.size, BLOCK_ELEMENTS):
        block = flat[start : start + BLOCK_ELEMENTS]
        block[np.abs(block) < tiny] = 0


def _row_peaks(values: npt.NDArray[np.floating], rows: int) -> npt.NDArray[np.float64]:
    """max |x| of each of `rows` rows, without a full-size temporary."""
    shaped = values.reshape(rows, -1)
    if shaped.shape[1] == 0:
        return np.zeros(rows)
    peaks = np.maximum(shaped.max(axis=1), -shaped.min(axis=1))
    return np.asarray(peaks, dtype=np.float64)


def rescale_tensors(
    tensors: Mapping[str, RawTensor],
    chains: Sequence[UnitChain],
    *,
    stream: KeyStream | None = None,
) -> tuple[dict[str, RawTensor], RescaleReport]:
    """Copies of `tensors` with every chain's units scaled by fresh CSPRNG factors.

    The chains must have passed `chain_problems` (ValueError otherwise). Inputs are
    not modified; tensors no chain touches are passed through as they are. Each value
    is multiplied or divided in its own precision (F16 in float32, rounded once at the
    end), in place on one copy per tensor; a chain whose scaled values would overflow
    its dtype is skipped, and values of rescaled tensors below the dtype's smallest
    normal number become zero (as the gate would flush them)."""
    shapes = {name: (t.dtype, t.shape) for name, t in tensors.items()}
    problems = chain_problems(chains, shapes)
    if problems:
        raise ValueError("; ".join(problems))
    stream = stream or KeyStream()
    work: dict[str, npt.NDArray[np.floating]] = {}
    touched: set[str] = set()
    skipped: list[str] = []
    units = done = 0

    def working(name: str) -> npt.NDArray[np.floating]:
        if name not in work:
            arithmetic = np.float64 if tensors[name].dtype == "F64" else np.float32
            work[name] = np.array(tensors[name].data, dtype=arithmetic, order="C")
        return work[name]

    for chain in chains:
        dtypes = {tensors[n].dtype for n in chain.names()}
        if not dtypes <= set(RESCALED_DTYPES):
            skipped.append(f"{chain.first_weight}: {'/'.join(sorted(dtypes))} is not rescaled")
            continue
        c = random_factors(chain.units, stream)
        grown = [chain.first_weight] + ([chain.first_bias] if chain.first_bias else [])
        # the factor as each tensor's arithmetic rounds it, with a margin for the product's
        # own rounding: a value that could round up to infinity skips the chain
        if any(
            np.any(
                _row_peaks(working(n), chain.units)
                * c.astype(working(n).dtype).astype(np.float64)
                * (1 + 2.0**-20)
                > RESCALED_DTYPES[tensors[n].dtype][0]
            )
            for n in grown
        ):
            skipped.append(f"{chain.first_weight}: a scaled value would overflow its dtype")
            continue
        for name in grown:
            values = working(name)
            rows = values.reshape(chain.units, -1)
            np.multiply(rows, c.astype(values.dtype)[:, None], out=rows)
        second = working(chain.second_weight)
        columns = second.reshape(second.shape[0], chain.units, -1)
        np.divide(columns, c.astype(second.dtype)[None, :, None], out=columns)
        touched.update(chain.names())
        units += chain.units
        done += 1
    out = dict(tensors)
    for name in touched:
        dtype = tensors[name].dtype
        values = work[name]
        if values.dtype != NUMPY_DTYPES[dtype]:
            values = values.astype(NUMPY_DTYPES[dtype])
        _flush_subnormals(values, RESCALED_DTYPES[dtype][1])
        out[name] = RawTensor(dtype, np.ascontiguousarray(values))
    return out, RescaleReport(done, units, tuple(skipped), tuple(sorted(touched)))


def chains_from_json(raw: object, limit: int) -> tuple[UnitChain, ...]:
    """Chains from their JSON form (an object per chain with exactly `UnitChain`'s
    fields, as the describe step writes them), strictly; ValueError names the first
    thing wrong."""
    if not isinstance(raw, list) or len(raw) > limit:
        raise ValueError(f"unit_chains is not a list of at most {limit} chains")
    names_of_fields = {f.name for f in fields(UnitChain)}
    chains = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or set(entry) != names_of_fields:
            raise ValueError(f"unit chain {i} does not have exactly the five chain fields")
        names = [entry["first_weight"], entry["second_weight"]]
        bias = entry["first_bias"]
        if not all(isinstance(n, str) and len(n) <= 512 for n in names) or not (
            bias is None or (isinstance(bias, str) and len(bias) <= 512)
        ):
            raise ValueError(f"unit chain {i}: a tensor name is not a short string")
        counts = [entry["units"], entry["block"]]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            raise ValueError(f"unit chain {i}: units and block are not integers")
        if not all(1 <= v <= 2**31 for v in counts) or math.prod(counts) > 2**31:
            raise ValueError(f"unit chain {i}: units and block are out of range")
        chains.append(UnitChain(names[0], bias, names[1], counts[0], counts[1]))
    return tuple(chains)
