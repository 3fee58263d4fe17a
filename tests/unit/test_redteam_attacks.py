"""Song et al.'s white-box attacks end to end on a small budget: train, decode, check, sanitise.

Each package's train.py runs on the host in a subprocess (our own red-team code;
providers' code only ever runs in the sandbox), 10 epochs on the digits training
split, once for the whole module; two subprocesses share the five packages.
"""

import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest

from sandbox.checks import CheckResult, run_checks, sanitize_arrays
from sandbox.checks.sanitize import DEFAULT_BITS
from sandbox.demo import sample_dataset
from sandbox.pipeline.dataset import Dataset, split_holdout
from sandbox.redteam.attacks import Knowledge, decode, make_package
from sandbox.redteam.harness import load_weights, mlp_accuracy
from sandbox.redteam.metrics import score

EPOCHS = 10
ATTACKS = ("honest", "lsb", "lsb_encrypted", "correlated", "sign")


@dataclass(frozen=True)
class Trained:
    knowledge: Knowledge
    tensors: dict[str, np.ndarray]


@cache
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = sample_dataset("digits")
    train, holdout = split_holdout(Dataset(x, y, 10, (64,)), 0.2, 0)
    return train.x, train.y, holdout.x, holdout.y


# Runs several packages' train.py as __main__ in ONE subprocess, so torch is imported
# once per process rather than once per package (the packages' own modules are
# forgotten between runs; each run gets its own SANDBOX_OUTPUT).
DRIVER = """
import os, runpy, sys
base = list(sys.path)
for package, output in zip(sys.argv[1::2], sys.argv[2::2]):
    for name in ("model", "trainlib", "payload"):
        sys.modules.pop(name, None)
    sys.path[:] = [package, *base]
    os.environ["SANDBOX_OUTPUT"] = output
    runpy.run_path(os.path.join(package, "train.py"), run_name="__main__")
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    root = tmp_path_factory.mktemp("redteam")
    x, y, _, _ = _split()
    data = root / "data"
    data.mkdir()
    with open(data / "train.npz", "wb") as handle:
        np.savez(handle, x=x, y=y)
    (root / "driver.py").write_text(DRIVER)
    knowledge = {}
    args: list[list[str]] = [[], []]
    for i, name in enumerate(ATTACKS):
        package, out = root / name, root / f"{name}-out"
        out.mkdir()
        knowledge[name] = make_package(name, package, epochs=EPOCHS)
        args[i % 2] += [str(package), str(out)]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SANDBOX_DATA": str(data),
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(root / "driver.py"), *a], env=env, stderr=subprocess.PIPE
        )
        for a in args
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr.decode()[-2000:]
    return {
        name: Trained(knowledge[name], load_weights(root / f"{name}-out" / "model.safetensors"))
        for name in ATTACKS
    }


def _accuracy(t: Trained) -> float:
    _, _, xh, yh = _split()
    return mlp_accuracy(t.tensors, xh, yh, t.knowledge.params["input_scale"])


def test_every_attack_keeps_the_task_learned(trained: dict[str, Trained]) -> None:
    honest = _accuracy(trained["honest"])
    assert 0.90 <= honest <= 1.0
    for name in ATTACKS:
        assert honest - 0.06 <= _accuracy(trained[name]) <= 1.0, name


@pytest.mark.parametrize("name", ["lsb", "lsb_encrypted"])
def test_lsb_payload_decodes_exactly_and_the_sanitizer_erases_it(
    trained: dict[str, Trained], name: str
) -> None:
    x = _split()[0]
    t = trained[name]
    before = score(decode(t.tensors, t.knowledge), x, t.knowledge)
    assert before.records >= 200  # 16 bits x ~9.6k weights / 512 bits per record
    assert before.bit_accuracy is not None and before.bit_accuracy > 0.99
    assert before.fraction_recovered > 0.99
    clean = sanitize_arrays(t.tensors)
    after = score(decode(clean, t.knowledge), x, t.knowledge)
    assert after.bit_accuracy is not None and abs(after.bit_accuracy - 0.5) <= 0.02
    assert after.fraction_recovered < 0.02
    assert t.knowledge.params["k"] <= DEFAULT_BITS["F32"]
    _, _, xh, yh = _split()
    scale = t.knowledge.params["input_scale"]
    assert abs(mlp_accuracy(clean, xh, yh, scale) - _accuracy(t)) <= 0.015


def test_raw_lsb_is_flagged_and_encrypted_lsb_is_left_to_the_sanitizer(
    trained: dict[str, Trained],
) -> None:
    lowbit = ("lowbit_patterned", "lowbit_uniform")

    def checks(name: str) -> dict[str, CheckResult]:
        return {r.name: r for r in run_checks(trained[name].tensors, enabled=lowbit)}

    assert checks("lsb")["lowbit_patterned"].verdict == "flag"
    encrypted = checks("lsb_encrypted")
    assert encrypted["lowbit_patterned"].verdict == "pass"
    # the encrypted payload is as uniform as fair coins (honest weights are not quite)
    assert abs(encrypted["lowbit_uniform"].statistic) < 4
    assert checks("honest")["lowbit_uniform"].statistic > encrypted["lowbit_uniform"].statistic


def test_regulariser_attacks_are_flagged_at_default_strength(trained: dict[str, Trained]) -> None:
    """Judged as the pipeline judges them: digits has 10 classes, so the `classes=10`
    thresholds (the pooled ones include breast_cancer's larger data-aware values)."""
    x = _split()[0]

    def flagged(name: str) -> set[str]:
        results = run_checks(trained[name].tensors, x, num_classes=10)
        return {r.name for r in results if r.verdict == "flag"}

    assert "data_correlation" in flagged("correlated")
    assert {"sign_balance", "data_sign_agreement"} <= flagged("sign")
    assert flagged("honest") == set()


def test_regulariser_payloads_decode_and_survive_the_sanitizer(
    trained: dict[str, Trained],
) -> None:
    """What the checks are for: sanitising the low bits does not touch these channels."""
    x = _split()[0]
    for name, floor in (("correlated", 0.1), ("sign", 0.8)):
        t = trained[name]
        before = score(decode(t.tensors, t.knowledge), x, t.knowledge)
        after = score(decode(sanitize_arrays(t.tensors), t.knowledge), x, t.knowledge)
        if name == "correlated":
            assert before.fraction_recovered >= floor
            assert before.mean_abs_error < 3.0
        else:
            assert before.bit_accuracy is not None and before.bit_accuracy >= floor
        assert after.mean_abs_error == pytest.approx(before.mean_abs_error, abs=0.05)


def test_decoders_need_only_the_knowledge(trained: dict[str, Trained]) -> None:
    """A decoder given the weights of a different model gets nothing useful."""
    x = _split()[0]
    honest = trained["honest"].tensors
    result = score(decode(honest, trained["lsb"].knowledge), x, trained["lsb"].knowledge)
    assert result.bit_accuracy is not None and abs(result.bit_accuracy - 0.5) < 0.02
