"""Output-side checks (pipeline step 4): weight analysis and the low-bit sanitizer.

- `sanitize_file` / `sanitize_tensors`: fresh CSPRNG bits in the low mantissa bits
  of every float weight (removes LSB payloads whatever their encoding);
- `rescale_tensors`: before that, every hidden unit the graph proves rescalable
  (`UnitChain`) scaled by a secret factor, keeping the function and re-rounding the
  mantissa bits the sanitizer keeps;
- `run_checks` / `CHECKS`: bit-plane, serial, sign, value-distribution and
  data-aware tests, each a pure function returning a `CheckResult`;
- `shipped_familywise`: the thresholds of a set of checks calibrated together, so
  that at most a given fraction of honest models is flagged by any of them, from the
  honest-model corpus (`calibration.json`, written by `python -m bench.corpus`);
  `calibrate` / `shipped_thresholds`: one check's threshold at its own rate;
- `check_and_sanitize`: the step as the pipeline calls it.
"""

from sandbox.checks.battery import CHECKS, CheckSpec, run_checks
from sandbox.checks.calibrate import (
    DEFAULT_FPR,
    FamilyCalibration,
    calibrate,
    load_calibration,
    shipped_familywise,
    shipped_thresholds,
)
from sandbox.checks.rescale import RescaleReport, UnitChain, rescale_tensors
from sandbox.checks.result import CheckResult, judge
from sandbox.checks.sanitize import (
    DEFAULT_BITS,
    KeyStream,
    SanitizeReport,
    TensorSanitized,
    sanitize_arrays,
    sanitize_file,
    sanitize_tensors,
)
from sandbox.checks.step import ChecksOutcome, ChecksSettings, check_and_sanitize
from sandbox.checks.tensors import RawTensor, float_tensors, read_safetensors, write_safetensors

__all__ = [
    "CHECKS",
    "DEFAULT_BITS",
    "DEFAULT_FPR",
    "CheckResult",
    "CheckSpec",
    "ChecksOutcome",
    "ChecksSettings",
    "FamilyCalibration",
    "KeyStream",
    "RawTensor",
    "RescaleReport",
    "SanitizeReport",
    "TensorSanitized",
    "UnitChain",
    "calibrate",
    "check_and_sanitize",
    "float_tensors",
    "judge",
    "load_calibration",
    "read_safetensors",
    "rescale_tensors",
    "run_checks",
    "sanitize_arrays",
    "sanitize_file",
    "sanitize_tensors",
    "shipped_familywise",
    "shipped_thresholds",
    "write_safetensors",
]
