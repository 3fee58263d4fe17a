"""The end-to-end demo on scikit-learn's digits (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_ALGORITHM = REPO / "examples" / "digits_mlp"


def write_digits(path: Path) -> Path:
    """scikit-learn's digits (1,797 8x8 images) as x float32 [n, 64], y int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(path, x=digits.data.astype(np.float32), y=digits.target.astype(np.int64))
    return path
