"""train.py reads the data, then crashes with an exception."""

import os
from pathlib import Path

import numpy as np

with np.load(Path(os.environ["SANDBOX_DATA"]) / "train.npz", allow_pickle=False) as data:
    n = len(data["y"])
print(f"loaded {n} examples, now crashing", flush=True)
raise RuntimeError("deliberate crash in train.py")
