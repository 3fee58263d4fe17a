"""LSB encoding (Song et al., CCS 2017, section 4.1): train honestly, then overwrite
the low k mantissa bits of every float32 weight with the raw training records,
optionally encrypted with the attacker's key so the bits look uniformly random."""

import sys
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import payload  # noqa: E402
from trainlib import load_train, save, state_numpy, train  # noqa: E402

PARAMS: dict = {}  # replaced by make_package


def main() -> None:
    x, y = load_train()
    state = state_numpy(train(x, y, PARAMS))
    k = int(PARAMS["k"])
    per_record = payload.bytes_per_record(int(np.prod(x.shape[1:])), PARAMS["encoding"])
    n_records = min(len(x), payload.carrier_size(state) * k // (8 * per_record))
    secret = payload.encode_records(x[:n_records], PARAMS["encoding"], PARAMS.get("value_range"))
    if PARAMS.get("key"):
        secret = payload.xor(secret, bytes.fromhex(PARAMS["key"]))
    flat = payload.flat_carrier(state)
    words = payload.write_low_bits(flat.view(np.uint32), payload.to_bits(secret), k)
    state.update(payload.split_carrier(words.view(np.float32), state))
    save(state)


if __name__ == "__main__":
    main()
