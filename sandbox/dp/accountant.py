"""Privacy accounting for Poisson-subsampled Gaussian DP-SGD, by Opacus' accountants.

Two accountants behind one pair of functions:

- `prv` (default): numerical composition of privacy loss random variables (Gopi,
  Lee and Wutschitz, NeurIPS 2021); Opacus returns the upper end of its error
  interval, so the figure is a guarantee, and it is the tighter of the two;
- `rdp`: Renyi DP of the subsampled Gaussian (Mironov, Talwar and Zhang 2019)
  converted to (epsilon, delta) with Balle et al. 2020, Theorem 21.

Both assume add/remove-one neighbouring datasets and that every one of `steps`
steps released a noisy sum with noise multiplier `sigma` at sample rate `q`;
`sandbox.guest.dp_train` runs exactly that (empty batches included).

RDP orders: Opacus' default orders stop at 63, and for small epsilon with many
steps the best order can lie beyond them (Opacus then warns "optimal order is the
largest alpha" and the bound is valid but loose). `RDP_ORDERS` extends them to
1024. If the best order is still an end of the range, the value is a valid, looser
upper bound; the warning is silenced rather than shown to operators.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from sandbox.errors import InvalidInput

Accountant = Literal["prv", "rdp"]
ACCOUNTANTS: tuple[Accountant, ...] = ("prv", "rdp")

# Opacus' DEFAULT_ALPHAS (1.1 .. 10.9 by 0.1, then 12 .. 63), extended up to 1024.
RDP_ORDERS: tuple[float, ...] = (
    tuple(1 + x / 10.0 for x in range(1, 100))
    + tuple(float(a) for a in range(12, 64))
    + tuple(float(a) for a in range(64, 256, 8))
    + tuple(float(a) for a in range(256, 1025, 64))
)
# Epsilon precision of the PRV accountant (Opacus' default) and of the sigma search.
PRV_EPS_ERROR = 0.01
CALIBRATION_TOLERANCE = 0.01


def _check(sample_rate: float, steps: int, delta: float, accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise InvalidInput(f"unknown accountant {accountant!r}; use one of {list(ACCOUNTANTS)}")
    if not (isinstance(sample_rate, float | int) and 0 < sample_rate <= 1):
        raise InvalidInput(f"sample rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInput(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(delta, float | int) and 0 < delta < 1):
        raise InvalidInput(f"delta must be in (0, 1), got {delta!r}")


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the RDP end-of-range warning (see the module docstring) and numpy's
    divide-by-zero warnings inside Opacus' PRV code at sample rate 1 (the value is
    still correct there)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"opacus\.")
        yield


def _epsilon_kwargs(accountant: Accountant) -> dict[str, object]:
    if accountant == "rdp":
        return {"alphas": list(RDP_ORDERS)}
    return {"eps_error": PRV_EPS_ERROR}


def spent(
    sigma: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: Accountant = "prv",
) -> float:
    """Epsilon of `steps` Poisson-subsampled Gaussian steps (inf when sigma is 0)."""
    _check(sample_rate, steps, delta, accountant)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise InvalidInput(f"noise multiplier must be finite and >= 0, got {sigma!r}")
    if sigma == 0:
        return math.inf
    from opacus.accountants import create_accountant

    engine = create_accountant(mechanism=accountant)
    engine.history = [(float(sigma), float(sample_rate), int(steps))]
    with _quiet():
        epsilon = float(engine.get_epsilon(delta=delta, **_epsilon_kwargs(accountant)))
    return epsilon if math.isfinite(epsilon) else math.inf


def calibrate(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant = "prv",
) -> float:
    """The smallest noise multiplier (to the search's precision) with epsilon <= target.

    Opacus' `get_noise_multiplier` bisects until the epsilon it reaches is within
    `CALIBRATION_TOLERANCE` below the target and never above it.
    """
    _check(sample_rate, steps, delta, accountant)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise InvalidInput(f"target epsilon must be finite and > 0, got {target_epsilon!r}")
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with _quiet():
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=CALIBRATION_TOLERANCE,
                **_epsilon_kwargs(accountant),
            )
    except ValueError as error:
        raise InvalidInput(
            f"no noise multiplier up to 1e6 reaches epsilon {target_epsilon} at delta {delta} "
            f"with sample rate {sample_rate} over {steps} steps ({error}); raise epsilon or "
            "lower the number of steps"
        ) from error
    return float(sigma)
