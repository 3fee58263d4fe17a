"""The whole battery and the pipeline step: checks on a gated model, then the sanitizer."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sandbox.checks import (
    CHECKS,
    ChecksSettings,
    check_and_sanitize,
    read_safetensors,
    run_checks,
)
from sandbox.checks.rescale import UnitChain
from sandbox.demo import sample_dataset
from sandbox.gate import TensorSpec, gate_output
from sandbox.policy.model import GateRules


def _model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "net.1.weight": rng.normal(0, 0.1, (128, 64)).astype(np.float32),
        "net.1.bias": rng.normal(0, 0.1, 128).astype(np.float32),
        "net.3.weight": rng.normal(0, 0.1, (10, 128)).astype(np.float32),
        "net.3.bias": rng.normal(0, 0.1, 10).astype(np.float32),
    }


def _pixels() -> np.ndarray:
    return sample_dataset("digits")[0][:400]


def _lsb_attack(model: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    w = model["net.1.weight"].reshape(-1).view(np.uint32).copy()
    payload = x.reshape(-1)[: w.size].astype(np.uint32)
    w = (w & ~np.uint32(0xFF)) | payload
    return {**model, "net.1.weight": w.view(np.float32).reshape(128, 64)}


def test_run_checks_reports_every_check_with_and_without_data() -> None:
    x = _pixels()
    results = run_checks(_model(), x)
    assert [r.name for r in results] == list(CHECKS)
    json.dumps([r.to_dict() for r in results])
    without = run_checks(_model())
    assert [r.name for r in without] == [n for n, s in CHECKS.items() if not s.needs_data]
    only = run_checks(_model(), x, enabled=["sign_runs"], thresholds={"sign_runs": 0.0})
    assert len(only) == 1 and only[0].threshold == 0.0 and only[0].verdict == "flag"
    with pytest.raises(ValueError, match="unknown checks"):
        run_checks(_model(), enabled=["nope"])


def test_shipped_thresholds_flag_raw_lsb_and_pass_random_weights() -> None:
    x = _pixels()
    clean = {r.name: r.verdict for r in run_checks(_model(), x)}
    # random normal weights are not trained weights; only these checks judge them fairly
    for name in ("lowbit_patterned", "lowbit_serial", "data_correlation", "data_sign_agreement"):
        assert clean[name] == "pass", name
    attacked = {r.name: r.verdict for r in run_checks(_lsb_attack(_model(), x), x)}
    assert attacked["lowbit_patterned"] == "flag"


def _gated(tmp_path: Path, tensors: dict[str, np.ndarray], name: str = "job") -> Path:
    tmp_path = tmp_path / name
    out = tmp_path / "out"
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"))
    specs = {n: TensorSpec("F32", t.shape) for n, t in tensors.items()}
    dest = tmp_path / "candidate.safetensors"
    gate_output(out, specs, GateRules(), dest)
    return dest


def test_check_and_sanitize_on_a_gated_candidate(tmp_path: Path) -> None:
    x = _pixels()
    candidate = _gated(tmp_path, _lsb_attack(_model(), x))
    sanitized = tmp_path / "sanitized.safetensors"
    outcome = check_and_sanitize(candidate, sanitized, x)
    assert "lowbit_patterned" in [r.name for r in outcome.flagged]
    assert (
        outcome.sanitized is not None
        and outcome.sanitized.randomised == 128 * 64 + 128 + 10 * 128 + 10
    )
    entries = outcome.report_entries()
    assert entries[-1]["name"] == "sanitizer" and entries[-1]["details"]["bits"]["F32"] >= 8
    json.dumps(entries)
    # after sanitising, the payload and its pattern are gone
    clean = {n: t.data for n, t in read_safetensors(sanitized).items()}
    after = {r.name: r.verdict for r in run_checks(clean, x)}
    assert after["lowbit_patterned"] == "pass"
    assert set(outcome.seconds) == {"checks", "sanitize"}


def _hidden(x: np.ndarray, tensors: dict[str, np.ndarray]) -> np.ndarray:
    h = np.maximum(x.astype(np.float64) @ tensors["net.1.weight"].T + tensors["net.1.bias"], 0)
    return h @ tensors["net.3.weight"].T + tensors["net.3.bias"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("rescale", [True, False])
def test_the_step_rescales_declared_unit_chains_before_sanitising(
    tmp_path: Path, rescale: bool
) -> None:
    model, x = _model(), _pixels() / 16.0
    candidate = _gated(tmp_path, model)
    sanitized = tmp_path / "sanitized.safetensors"
    chain = UnitChain("net.1.weight", "net.1.bias", "net.3.weight", 128)
    settings = ChecksSettings(rescale=rescale)
    outcome = check_and_sanitize(candidate, sanitized, x, settings, unit_chains=[chain])
    clean = {n: t.data for n, t in read_safetensors(sanitized).items()}
    ratio = clean["net.1.bias"] / model["net.1.bias"]
    entry = outcome.report_entries()[-1]
    if rescale:
        # every unit got its own factor in [1, 2) (the sanitizer's change is < 2**-4)
        assert ratio.min() >= 0.93 and ratio.max() <= 2.13 and np.std(ratio) > 0.2
        assert entry["details"]["rescale"]["units_rescaled"] == 128
        assert "128 hidden units were scaled" in entry["explanation"]
    else:
        assert np.all(np.abs(ratio - 1) < 2**-4) and outcome.rescaled is None
        assert "rescale" not in entry["details"]
    # the function is the model's up to the sanitizer's noise (relative 2**-4 per weight)
    error = np.abs(_hidden(x, clean) - _hidden(x, model)).max()
    assert error <= 0.05 * np.abs(_hidden(x, model)).max()


@pytest.mark.parametrize("covered", [True, False])
def test_tensors_rescaling_did_not_change_get_the_unrescaled_bits(
    tmp_path: Path, covered: bool
) -> None:
    """`unrescaled_bits` reaches exactly the tensors no applied chain changed: the last
    bias when the MLP's chain is known, every tensor when there is none."""
    candidate = _gated(tmp_path, _model())
    sanitized = tmp_path / "sanitized.safetensors"
    chains = [UnitChain("net.1.weight", "net.1.bias", "net.3.weight", 128)] if covered else []
    settings = ChecksSettings(unrescaled_bits={"F32": 22})
    outcome = check_and_sanitize(candidate, sanitized, _pixels(), settings, unit_chains=chains)
    assert outcome.sanitized is not None
    bits = {name: t.bits for name, t in outcome.sanitized.tensors.items()}
    if covered:
        assert bits == {"net.1.weight": 19, "net.1.bias": 19, "net.3.weight": 19, "net.3.bias": 22}
    else:
        assert set(bits.values()) == {22}
    summary = outcome.report_entries()[-1]["details"]
    assert summary["bits"] == {"F32": 19 if covered else 22}
    assert summary.get("bits_by_tensor") == ({"net.3.bias": 22} if covered else None)
    # the last bias keeps sign, exponent and its top mantissa bit; bits 19-21, which 19
    # randomised bits would keep, are fresh (30 random bits: all equal by chance 2**-30)
    before = _model()["net.3.bias"].view(np.uint32)
    after = read_safetensors(sanitized)["net.3.bias"].data.view(np.uint32)
    assert np.array_equal(before >> 22, after >> 22)
    assert not np.array_equal((before >> 19) & 7, (after >> 19) & 7)


def test_settings_select_checks_and_can_skip_data_and_sanitizing(tmp_path: Path) -> None:
    candidate = _gated(tmp_path, _model())
    settings = ChecksSettings(enabled=("sign_balance", "data_correlation"), data_checks=False)
    outcome = check_and_sanitize(candidate, None, _pixels(), settings)
    assert [r.name for r in outcome.results] == ["sign_balance"]
    assert outcome.sanitized is None
    with pytest.raises(ValueError, match="unknown checks"):
        ChecksSettings(enabled=("nope",))
    with pytest.raises(ValueError, match="fpr"):
        ChecksSettings(fpr=1.5)


def test_policy_check_names_match_the_battery_once_wired() -> None:
    """Once the policy model has a `checks` section, its names must be the battery's."""
    import typing

    from sandbox.policy import model

    rules = getattr(model, "CheckRules", None)
    if rules is None:
        pytest.skip("the policy has no checks section yet")
    enabled = rules.model_fields["enabled"].annotation
    (names,) = typing.get_args(enabled)[:1]
    assert set(typing.get_args(names)) == set(CHECKS)


def test_a_check_with_its_own_rate_leaves_the_family() -> None:
    """check_fpr calibrates one check alone at its rate (looser here: 20% of honest
    models), and the family's thresholds are recalibrated without it."""
    model, x = _model(), _pixels()
    family = {r.name: r for r in run_checks(model, x, num_classes=10)}
    alone = {r.name: r for r in run_checks(model, x, num_classes=10, check_fpr={"sign_runs": 0.2})}
    own = alone["sign_runs"]
    assert own.threshold is not None and family["sign_runs"].threshold is not None
    assert own.threshold < family["sign_runs"].threshold
    assert own.details["calibration"] == "this check alone at 0.2"
    assert "sign_runs" in family["value_ks"].details["calibration"]["checks"]
    assert "sign_runs" not in alone["value_ks"].details["calibration"]["checks"]
    # the family now spends its rate on eight checks: no threshold gets stricter
    for name in ("value_ks", "lowbit_patterned", "data_correlation"):
        assert alone[name].threshold is not None and family[name].threshold is not None
        assert alone[name].threshold <= family[name].threshold
    with pytest.raises(ValueError, match="unknown checks"):
        run_checks(model, x, check_fpr={"nope": 0.1})
    with pytest.raises(ValueError, match="check_fpr"):
        ChecksSettings(check_fpr={"nope": 0.1})
    with pytest.raises(ValueError, match="sign_runs: a false-positive rate"):
        ChecksSettings(check_fpr={"sign_runs": 1.0})
