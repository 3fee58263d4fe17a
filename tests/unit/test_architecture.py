import json

import pytest

from sandbox.checks.rescale import UnitChain
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
        "unit_chains": [],
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
        arch(unit_chains=None),
        arch(unit_chains=[{"first_weight": "0.weight"}]),
        b" " * (5 * 1024 * 1024),
    ],
)
def test_malformed_descriptions_are_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse(raw)


MLP = {
    "1.weight": {"dtype": "F32", "shape": [32, 64]},
    "1.bias": {"dtype": "F32", "shape": [32]},
    "3.weight": {"dtype": "F32", "shape": [10, 32]},
    "3.bias": {"dtype": "F32", "shape": [10]},
}


def chain(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "first_weight": "1.weight",
        "first_bias": "1.bias",
        "second_weight": "3.weight",
        "units": 32,
        "block": 1,
    }
    return base | kw


def test_unit_chains_are_parsed() -> None:
    result = parse(arch(tensors=MLP, unit_chains=[chain()]))
    assert result.unit_chains == (UnitChain("1.weight", "1.bias", "3.weight", 32, 1),)
    assert result.summary()["unit_chains"] == 1


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"units": 31}, "no 31 rows"),
        ({"second_weight": "3.bias"}, "input columns"),
        ({"first_bias": "ghost"}, "no tensor named ghost"),
        ({"block": 2}, "32 x 2"),
    ],
)
def test_unit_chains_that_do_not_fit_the_tensors_are_refused(
    changes: dict[str, object], expected: str
) -> None:
    """A chain that does not match the declared tensors is never rescaled: the job stops."""
    with pytest.raises(InvalidInput, match=expected):
        parse(arch(tensors=MLP, unit_chains=[chain(**changes)]))
