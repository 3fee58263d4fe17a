"""Attack packages and their payload code, without training anything."""

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from sandbox.pipeline.algorithm import unpack_algorithm
from sandbox.redteam import payload
from sandbox.redteam.attacks import ATTACKS, Knowledge, attack_params, decode, make_package
from sandbox.redteam.metrics import bit_accuracy, record_mae, score

ALLOWED_IMPORTS = {"torch", "numpy", "safetensors", *sys.stdlib_module_names}


def test_records_round_trip_in_every_encoding() -> None:
    x = np.array([[0, 3, 16, 255], [1, 2, 3, 4]], dtype=np.float32)
    for encoding in payload.ENCODINGS:
        data = payload.encode_records(x, encoding, (0.0, 255.0))  # q8: one level per integer
        assert len(data) == x.size * payload.ENCODINGS[encoding]
        assert np.array_equal(payload.decode_records(data, 4, encoding, (0.0, 255.0)), x)
    with pytest.raises(ValueError, match="unknown encoding"):
        payload.encode_records(x, "u4")


def test_q8_quantises_standardised_values_within_half_a_step() -> None:
    """breast_cancer's encoding: 256 levels over the public range -3..3, outliers clipped."""
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (50, 30)).astype(np.float32)
    x[0, 0], x[1, 1] = 7.5, -4.0
    data = payload.encode_records(x, "q8", (-3.0, 3.0))
    assert len(data) == 50 * 30
    back = payload.decode_records(data, 30, "q8", (-3.0, 3.0))
    step = 6.0 / payload.Q8_STEPS
    inside = np.abs(x) <= 3.0
    assert np.max(np.abs(back - x)[inside]) <= step / 2 + 1e-6
    assert back[0, 0] == 3.0 and back[1, 1] == -3.0
    with pytest.raises(ValueError, match="needs value_range"):
        payload.encode_records(x, "q8")
    with pytest.raises(ValueError, match="lo < hi"):
        payload.decode_records(data, 30, "q8", (3.0, -3.0))


def test_low_bits_round_trip_and_leave_high_bits() -> None:
    rng = np.random.default_rng(0)
    words = rng.normal(0, 0.1, 1000).astype(np.float32).view(np.uint32)
    bits = rng.integers(0, 2, 12 * 500).astype(np.uint8)
    for k in (1, 7, 12, 23):
        n = min(len(bits), 900 * k) - 1  # not a multiple of k: the last word is padded
        carried = payload.write_low_bits(words, bits[:n], k)
        assert np.array_equal(payload.read_low_bits(carried, k, n), bits[:n])
        assert np.array_equal(carried >> k, words >> k)
        used = -(-n // k)
        assert np.array_equal(carried[used:], words[used:])
    with pytest.raises(ValueError, match="only 1000"):
        payload.write_low_bits(words, np.zeros(1001 * 4, dtype=np.uint8), 4)


def test_keystream_is_keyed_and_xor_is_an_involution() -> None:
    a = payload.keystream(b"k1", 64)
    assert a == payload.keystream(b"k1", 64) and a != payload.keystream(b"k2", 64)
    data = bytes(range(100))
    assert payload.xor(payload.xor(data, b"key"), b"key") == data
    assert payload.from_bits(payload.to_bits(data)) == data


def test_carrier_order_and_split_are_inverse() -> None:
    state = {
        "b": np.arange(3, dtype=np.float32),
        "a": np.arange(6, dtype=np.float32).reshape(2, 3) + 10,
        "steps": np.arange(2, dtype=np.int64),
    }
    assert payload.carrier_names(state) == ["a", "b"]
    flat = payload.flat_carrier(state)
    assert flat.tolist()[:6] == list(range(10, 16)) and payload.carrier_size(state) == 9
    back = payload.split_carrier(flat, state)
    assert np.array_equal(back["a"], state["a"]) and sorted(back) == ["a", "b"]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_packages_follow_the_contract(name: str, tmp_path: Path) -> None:
    knowledge = make_package(name, tmp_path / "pkg", epochs=2)
    files = sorted(p.name for p in (tmp_path / "pkg").iterdir())
    assert files == ["algorithm.toml", "model.py", "payload.py", "train.py", "trainlib.py"]
    package = unpack_algorithm(tmp_path / "pkg", tmp_path / "unpacked")  # the platform's checks
    assert package.name == f"redteam-{name}"
    for path in (tmp_path / "pkg").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module.split(".")[0]]
            own = {"model", "payload", "trainlib"}
            assert set(modules) <= ALLOWED_IMPORTS | own, (path.name, modules)
    train = (tmp_path / "pkg" / "train.py").read_text()
    assert "replaced by make_package" not in train
    assert f"'attack': '{name}'" in train and "'epochs': 2" in train
    assert knowledge.params == attack_params(name, epochs=2)
    assert knowledge.to_json().startswith("{")


def test_a_shifted_band_round_trips_and_leaves_the_other_bits() -> None:
    rng = np.random.default_rng(2)
    words = rng.normal(0, 0.1, 500).astype(np.float32).view(np.uint32)
    bits = rng.integers(0, 2, 3 * 500).astype(np.uint8)
    carried = payload.write_low_bits(words, bits, 3, shift=19)
    assert np.array_equal(payload.read_low_bits(carried, 3, bits.size, 19), bits)
    band = np.uint32(0b111 << 19)
    assert np.array_equal(carried & ~band, words & ~band)
    with pytest.raises(ValueError, match="not mantissa bits"):
        payload.write_low_bits(words, bits, 3, shift=21)


def test_pilot_values_are_keyed_and_exact_in_the_kept_bits() -> None:
    a = payload.pilot_values(b"k1", 128, 4)
    assert a.shape == (128, 4) and a.dtype == np.float32
    assert np.array_equal(a, payload.pilot_values(b"k1", 128, 4))
    assert not np.array_equal(a, payload.pilot_values(b"k2", 128, 4))
    assert np.all((np.abs(a) >= 1 / 16) & (np.abs(a) < 2 / 16))
    low = a.view(np.uint32) & np.uint32((1 << 19) - 1)  # keyed noise, not zeros
    assert len(np.unique(low)) > 500 and 0.45 < np.mean(low & 1) < 0.55
    assert 0.3 < np.mean(a > 0) < 0.7


def test_unknown_parameters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown parameters"):
        make_package("lsb", tmp_path / "pkg", lam=3.0)


def test_lsb_decoder_reads_what_the_encoder_wrote_without_training() -> None:
    """Encode exactly as lsb/train.py does, then decode with the knowledge alone."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 17, (300, 64)).astype(np.float32)
    state = {
        "net.1.weight": rng.normal(0, 0.1, (128, 64)).astype(np.float32),
        "net.1.bias": rng.normal(0, 0.1, 128).astype(np.float32),
    }
    for name in ("lsb", "lsb_encrypted"):
        params = attack_params(name, k=6)
        knowledge = Knowledge(name, params, (64,), (0.0, 16.0))
        k = 6
        n = payload.carrier_size(state) * k // (8 * 64)
        secret = payload.encode_records(x[:n], "u8")
        if params.get("key"):
            secret = payload.xor(secret, bytes.fromhex(params["key"]))
        flat = payload.flat_carrier(state)
        words = payload.write_low_bits(flat.view(np.uint32), payload.to_bits(secret), k)
        carrier = payload.split_carrier(words.view(np.float32), state)
        decoded = decode(carrier, knowledge)
        assert decoded.records.shape == (n, 64)
        result = score(decoded, x, knowledge)
        assert result.bit_accuracy == 1.0 and result.fraction_recovered == 1.0


def test_metrics_known_answers() -> None:
    truth = np.array([1, 0, 1, 1], dtype=np.uint8)
    assert bit_accuracy(np.array([1, 1, 1, 0], dtype=np.uint8), truth) == 0.5
    errors = record_mae(np.array([[0.0, 2.0], [1.0, 1.0]]), np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert errors.tolist() == [1.0, 0.0]
    assert record_mae(np.zeros((0, 2)), np.zeros((3, 2))).size == 0
