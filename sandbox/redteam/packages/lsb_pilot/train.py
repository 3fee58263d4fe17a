"""Adaptive LSB encoding against a platform that rescales hidden units and sanitises
the low 19 mantissa bits: train honestly, then plant `pilots` keyed weights at the
start of every first-layer row (they reveal each unit's secret scale to the decoder)
and carry encrypted records in mantissa bits 19-21 of the rest of the first layer,
the bits the sanitizer keeps."""

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
    key = bytes.fromhex(PARAMS["key"])
    pilots, (low, high) = int(PARAMS["pilots"]), PARAMS["band"]
    weight = state["net.1.weight"]
    rows, columns = weight.shape
    weight[:, :pilots] = payload.pilot_values(key, rows, pilots)
    body = np.ascontiguousarray(weight[:, pilots:]).reshape(-1)
    per_record = payload.bytes_per_record(int(np.prod(x.shape[1:])), PARAMS["encoding"])
    n_records = min(len(x), body.size * (high - low) // (8 * per_record))
    secret = payload.encode_records(x[:n_records], PARAMS["encoding"], PARAMS.get("value_range"))
    bits = payload.to_bits(payload.xor(secret, key))
    words = payload.write_low_bits(body.view(np.uint32), bits, high - low, shift=low)
    weight[:, pilots:] = words.view(np.float32).reshape(rows, columns - pilots)
    state["net.1.weight"] = weight
    save(state)


if __name__ == "__main__":
    main()
