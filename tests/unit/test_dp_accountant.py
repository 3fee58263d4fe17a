"""Accounting (sandbox.dp.accountant) against published values.

Sources of the hard-coded numbers:
- RDP: Opacus' own test suite, opacus/tests/accountants_test.py (pytorch/opacus):
  sigma 1.5, q 0.04, 2250 steps, delta 1e-5 -> epsilon 7.32911117143; and
  get_noise_multiplier(epsilon 8, delta 1e-5, q 0.04, 2000 steps) -> 1.3562.
- PRV: opacus/tests/prv_accountant.py, values "computed from
  https://github.com/microsoft/prv_accountant" (Gopi, Lee and Wutschitz's reference
  implementation), all at delta 1e-6.
"""

from __future__ import annotations

import math
import warnings

import pytest

from sandbox.dp.accountant import RDP_ORDERS, calibrate, spent
from sandbox.errors import InvalidInput

# (sigma, q, steps) -> epsilon at delta 1e-6, from microsoft/prv_accountant via Opacus.
PRV_PUBLISHED = {
    (0.8, 0.2, 100): 24.3336641779225644199868838768,
    (2.0, 0.05, 100): 1.28363737962406521120328761754,
    (1.5, 0.05, 1000): 6.20996924657726712126759593957,
    (3.0, 0.05, 1000): 2.52757432605973830774814814504,
    (2.0, 0.001, 100): 0.0291045369484074882560076247273,
}


def test_rdp_matches_opacus_published_value() -> None:
    assert spent(1.5, 0.04, 2250, 1e-5, "rdp") == pytest.approx(7.32911117143, abs=1e-6)


def test_rdp_calibration_matches_opacus_published_value() -> None:
    assert calibrate(8.0, 1e-5, 0.04, 2000, "rdp") == pytest.approx(1.3562, abs=1e-4)


@pytest.mark.parametrize(("key", "expected"), list(PRV_PUBLISHED.items()))
def test_prv_matches_the_reference_implementation(
    key: tuple[float, float, int], expected: float
) -> None:
    sigma, q, steps = key
    assert spent(sigma, q, steps, 1e-6, "prv") == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("sigma", "q", "steps"), [(3.0, 0.05, 1000), (1.0, 0.02, 500), (0.9, 0.2, 50)]
)
def test_prv_is_tighter_than_rdp_but_close(sigma: float, q: float, steps: int) -> None:
    prv, rdp = spent(sigma, q, steps, 1e-5, "prv"), spent(sigma, q, steps, 1e-5, "rdp")
    assert 0.75 * rdp <= prv <= rdp


def test_calibration_never_overshoots_and_is_tight() -> None:
    sigma = calibrate(2.0, 1e-5, 0.05, 200, "prv")
    reached = spent(sigma, 0.05, 200, 1e-5, "prv")
    assert 1.95 <= reached <= 2.0
    assert spent(sigma * 0.97, 0.05, 200, 1e-5, "prv") > 2.0  # less noise would overspend


def test_wide_rdp_orders_tighten_small_epsilon_without_warning() -> None:
    """With Opacus' default orders the best order is the largest (63) here: a loose bound."""
    from opacus.accountants import RDPAccountant

    default = RDPAccountant()
    default.history = [(20.0, 0.001, 100)]
    with pytest.warns(UserWarning, match="largest alpha"):
        loose = default.get_epsilon(delta=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tight = spent(20.0, 0.001, 100, 1e-5, "rdp")
    assert tight < loose / 10
    assert max(RDP_ORDERS) >= 1024 and min(RDP_ORDERS) == pytest.approx(1.1)


def test_edge_cases_and_bad_inputs() -> None:
    assert spent(0.0, 0.1, 10, 1e-5) == math.inf
    assert math.isfinite(spent(2.0, 1.0, 10, 1e-5, "prv"))  # full batch: no subsampling
    for args in [
        (1.0, 0.0, 10, 1e-5),
        (1.0, 1.5, 10, 1e-5),
        (1.0, 0.1, 0, 1e-5),
        (1.0, 0.1, 10, 1.0),
    ]:
        with pytest.raises(InvalidInput):
            spent(*args)
    with pytest.raises(InvalidInput, match="unknown accountant"):
        spent(1.0, 0.1, 10, 1e-5, "gdp")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="no noise multiplier"):
        calibrate(1e-7, 1e-5, 1.0, 10_000, "rdp")
