"""Write a small scikit-learn dataset as a sandbox dataset `.npz`.

    python examples/make_digits.py OUT.npz [--dataset digits|breast_cancer]

digits (default): the 1,797 8x8 handwritten digits of `load_digits()`, flattened:
    x float32 [1797, 64], raw pixel values 0..16; y int64 [1797], classes 0..9.
breast_cancer: the 569 examples of `load_breast_cancer()`:
    x float32 [569, 30], each feature standardised to mean 0, std 1 (over the
    whole set - fine for a demo); y int64 [569], classes 0..1.

The file is an uncompressed np.savez with exactly the arrays `x` and `y`.
"""

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits


def make(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        bunch = load_digits()
        x = bunch.data.astype(np.float32)  # [n, 64]
    elif name == "breast_cancer":
        bunch = load_breast_cancer()
        data = bunch.data.astype(np.float64)
        x = ((data - data.mean(axis=0)) / data.std(axis=0)).astype(np.float32)
    else:  # pragma: no cover - argparse restricts the choices
        raise ValueError(name)
    return np.ascontiguousarray(x), bunch.target.astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .npz file to write")
    parser.add_argument("--dataset", choices=["digits", "breast_cancer"], default="digits")
    args = parser.parse_args()
    x, y = make(args.dataset)
    with open(args.out, "wb") as f:  # a file object: np.savez must not append ".npz"
        np.savez(f, x=x, y=y)
    print(f"wrote {args.out}: x {x.dtype} {list(x.shape)}, y {y.dtype} {list(y.shape)}")


if __name__ == "__main__":
    main()
