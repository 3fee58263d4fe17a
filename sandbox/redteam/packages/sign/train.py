"""Sign encoding (Song et al., CCS 2017, section 4.3): a malicious regulariser
penalises every float32 weight whose sign differs from one bit of the raw training
records (bit 1: positive, bit 0: negative), so the signs spell the records out."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import payload  # noqa: E402
from trainlib import load_train, save, state_numpy, train  # noqa: E402

PARAMS: dict = {}  # replaced by make_package


def main() -> None:
    x, y = load_train()
    lam = float(PARAMS["lam"])
    per_record = payload.bytes_per_record(int(np.prod(x.shape[1:])), PARAMS["encoding"])
    state: dict = {}

    def penalty(model: torch.nn.Module) -> torch.Tensor:
        named = dict(model.named_parameters())
        names = sorted(named)  # every parameter is float32: the payload carrier order
        if "signs" not in state:
            capacity = sum(named[n].numel() for n in names)
            n_records = min(len(x), capacity // (8 * per_record))
            secret = payload.encode_records(
                x[:n_records], PARAMS["encoding"], PARAMS.get("value_range")
            )
            if PARAMS.get("key"):
                secret = payload.xor(secret, bytes.fromhex(PARAMS["key"]))
            bits = payload.to_bits(secret).astype(np.float32)
            state["signs"] = torch.from_numpy(bits * 2.0 - 1.0)
        signs = state["signs"]
        theta = torch.cat([named[n].reshape(-1) for n in names])[: len(signs)]
        return lam * torch.relu(-theta * signs).mean()

    save(state_numpy(train(x, y, PARAMS, penalty)))


if __name__ == "__main__":
    main()
