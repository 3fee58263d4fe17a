import json

import pytest

from sandbox.errors import InvalidInput
from sandbox.pipeline.architecture import ArchitectureRejected, parse_architecture
from sandbox.policy.model import ArchitectureRules

RULES = ArchitectureRules(max_nodes=100, max_parameters=10_000)


def arch(**kw: object) -> bytes:
    base: dict[str, object] = {
        "format": 1,
        "input_shape": [64],
        "num_classes": 10,
        "tensors": {
            "0.weight": {"dtype": "F32", "shape": [10, 64]},
            "0.bias": {"dtype": "F32", "shape": [10]},
        },
        "num_nodes": 7,
        "num_parameters": 650,
        "ops": ["aten::linear"],
        "mutated_buffers": [],
        "violations": [],
    }
    base.update(kw)
    return json.dumps(base).encode()


def parse(raw: bytes):  # type: ignore[no-untyped-def]
    return parse_architecture(raw, input_shape=(64,), num_classes=10, rules=RULES)


def test_valid() -> None:
    result = parse(arch())
    assert result.num_parameters == 650
    assert result.tensors["0.weight"].shape == (10, 64)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"num_nodes": 101}, "101 nodes"),
        ({"ops": ["aten::linear", "myops::steal"]}, "myops::steal"),
        ({"tensors": {"w": {"dtype": "F32", "shape": [200, 200]}}}, "40000 parameters"),
        ({"violations": ["call to open is not an aten operator"]}, "open"),
        ({"input_shape": [65]}, "another input shape"),
        ({"tensors": {}}, "no parameters"),
    ],
)
def test_policy_violations_are_named(changes: dict[str, object], expected: str) -> None:
    with pytest.raises(ArchitectureRejected, match=expected):
        parse(arch(**changes))


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        json.dumps({"format": 2}).encode(),
        arch(tensors={"w": {"dtype": "PICKLE", "shape": [1]}}),
        arch(tensors={"w": {"dtype": "F32", "shape": [-1]}}),
        arch(tensors={"w": {"dtype": "F32", "shape": [True]}}),
        arch(num_nodes="7"),
        arch(ops=[1, 2]),
        b" " * (5 * 1024 * 1024),
    ],
)
def test_malformed_descriptions_are_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse(raw)
