from pathlib import Path

import pytest
from pydantic import ValidationError

from sandbox.errors import InvalidInput, NotFound
from sandbox.policy.load import available_policies, load_policy, parse_policy, policy_hash
from sandbox.policy.model import DPRules


def test_shipped_policies_load() -> None:
    assert {"default", "strict", "gpu"} <= set(available_policies())
    assert load_policy("default").runtime == "runc"
    assert load_policy("strict").runtime == "runsc"
    assert load_policy("gpu").gpu is True


def test_every_problem_is_listed_with_field_value_and_allowed() -> None:
    text = "name: x\nruntime: kata\nlimits: {cpus: -1, memroy_mb: 5}\ngate: {nonfinite: ignore}\n"
    with pytest.raises(InvalidInput) as caught:
        parse_policy(text, "p.yaml")
    message = caught.value.message
    assert "4 problem(s)" in message
    assert "runtime: 'kata' is not allowed; allowed values: 'runc' or 'runsc'" in message
    assert "limits.cpus: -1 is invalid" in message
    assert "limits.memroy_mb: unknown field" in message
    assert "gate.nonfinite: 'ignore' is not allowed" in message


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "name: [unclosed\n", "name: 'Bad Name'\n"])
def test_malformed_files_are_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_policy(text)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(NotFound, match="available: .*default"):
        load_policy("nope")


def test_path_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nruntime: runsc\n")
    policy = load_policy(str(path))
    assert policy.runtime == "runsc"
    assert policy_hash(policy) != policy_hash(load_policy("strict"))
    assert len(policy_hash(policy)) == 64


@pytest.mark.parametrize("mode", ["never", "on_suspicion"])
def test_forbidding_non_dp_releases_needs_dp_always(mode: str) -> None:
    """Otherwise an unflagged model would be released without DP, or every job refused."""
    with pytest.raises(ValidationError, match="allow_non_dp_release: false needs mode: always"):
        DPRules(mode=mode, allow_non_dp_release=False)  # type: ignore[arg-type]
    assert not DPRules(mode="always", allow_non_dp_release=False).allow_non_dp_release


def test_a_check_can_have_its_own_false_positive_rate() -> None:
    text = "name: x\nchecks:\n  check_fpr: {sign_runs: 0.05, value_ks: 0.9, nope: 0.1}\n"
    with pytest.raises(InvalidInput) as caught:
        parse_policy(text, "p.yaml")
    message = caught.value.message
    assert "checks.check_fpr.value_ks: 0.9 is invalid" in message
    assert "checks.check_fpr.nope" in message
    idle = "name: x\nchecks:\n  enabled: [sign_balance]\n  check_fpr: {sign_runs: 0.05}\n"
    with pytest.raises(InvalidInput, match="check_fpr sets a rate for sign_runs, which"):
        parse_policy(idle)
    rules = parse_policy("name: x\nchecks:\n  check_fpr: {sign_runs: 0.05}\n").checks
    assert rules.check_fpr == {"sign_runs": 0.05}


def test_hidden_unit_rescaling_is_on_unless_a_policy_turns_it_off() -> None:
    assert parse_policy("name: x\n").checks.rescale_units is True
    assert all(load_policy(name).checks.rescale_units for name in ("default", "strict", "gpu"))
    assert parse_policy("name: x\nchecks: {rescale_units: false}\n").checks.rescale_units is False
    with pytest.raises(InvalidInput, match="checks.rescale_units"):
        parse_policy("name: x\nchecks: {rescale_units: maybe}\n")


def test_sanitize_bits_stay_within_each_mantissa() -> None:
    from sandbox.checks.tensors import MANTISSA_BITS as CHECKS_MANTISSA
    from sandbox.policy.model import MANTISSA_BITS

    assert dict(CHECKS_MANTISSA) == MANTISSA_BITS
    rules = parse_policy("name: x\nchecks: {sanitize_bits_unrescaled: {F32: 22}}\n").checks
    assert rules.sanitize_bits_unrescaled == {"F32": 22}
    assert parse_policy("name: x\n").checks.sanitize_bits_unrescaled is None
    with pytest.raises(InvalidInput, match="sanitize_bits_unrescaled.F32: 24 bits"):
        parse_policy("name: x\nchecks: {sanitize_bits_unrescaled: {F32: 24}}\n")
    with pytest.raises(InvalidInput, match="sanitize_bits.F16: 11 bits; a F16 mantissa has 10"):
        parse_policy("name: x\nchecks: {sanitize_bits: {F16: 11}}\n")
