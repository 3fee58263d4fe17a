"""Correlated value encoding (Song et al., CCS 2017, section 4.2): a malicious
regulariser rewards the Pearson correlation between the first-layer weights and the
pixel values of the first training records, so the weights become a copy of them
(up to scale) while the task is still learned."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainlib import load_train, save, state_numpy, train  # noqa: E402

PARAMS: dict = {}  # replaced by make_package


def main() -> None:
    x, y = load_train()
    tensor = PARAMS["tensor"]
    features = int(np.prod(x.shape[1:]))
    lam = float(PARAMS["lam"])
    state: dict = {}

    def penalty(model: torch.nn.Module) -> torch.Tensor:
        theta = dict(model.named_parameters())[tensor].reshape(-1)
        if "secret" not in state:
            n = min(len(x), theta.numel() // features)
            state["n"] = n * features
            state["secret"] = torch.from_numpy(x[:n].reshape(-1).astype(np.float32))
        t = theta[: state["n"]]
        s = state["secret"]
        tc, sc = t - t.mean(), s - s.mean()
        corr = (tc * sc).sum() / (tc.norm() * sc.norm() + 1e-12)
        return -lam * corr

    save(state_numpy(train(x, y, PARAMS, penalty)))


if __name__ == "__main__":
    main()
