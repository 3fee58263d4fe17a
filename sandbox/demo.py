"""Sample datasets that ship with scikit-learn (nothing is downloaded) and the demo's paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_ALGORITHM = REPO / "examples" / "digits_mlp"
SAMPLE_DATASETS = ("digits", "breast_cancer")


def sample_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """`digits`: x float32 [1797, 64], raw pixels 0..16, y 0..9.
    `breast_cancer`: x float32 [569, 30] standardised, y 0..1."""
    from sklearn.datasets import load_breast_cancer, load_digits

    if name == "digits":
        bunch = load_digits()
        x = bunch.data.astype(np.float32)
    elif name == "breast_cancer":
        bunch = load_breast_cancer()
        data = bunch.data.astype(np.float64)
        x = ((data - data.mean(axis=0)) / data.std(axis=0)).astype(np.float32)
    else:
        raise ValueError(f"unknown sample dataset {name!r}; choose one of {SAMPLE_DATASETS}")
    return np.ascontiguousarray(x), bunch.target.astype(np.int64)


def write_sample(path: Path, name: str = "digits") -> Path:
    """Write a sample dataset as an uncompressed .npz holding exactly `x` and `y`."""
    x, y = sample_dataset(name)
    with open(path, "wb") as handle:  # a file object: np.savez must not append ".npz"
        np.savez(handle, x=x, y=y)
    return path


def write_digits(path: Path) -> Path:
    return write_sample(path, "digits")
