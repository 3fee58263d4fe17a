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

from sandbox.demo import SAMPLE_DATASETS, write_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .npz file to write")
    parser.add_argument("--dataset", choices=SAMPLE_DATASETS, default="digits")
    args = parser.parse_args()
    write_sample(args.out, args.dataset)
    with np.load(args.out) as data:
        x, y = data["x"], data["y"]
    print(f"wrote {args.out}: x {x.dtype} {list(x.shape)}, y {y.dtype} {list(y.shape)}")


if __name__ == "__main__":
    main()
