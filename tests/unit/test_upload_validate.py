"""The upload validator's child process: started before its file exists, handed the
path when the upload is complete, and never left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sandbox.errors import InvalidInput
from sandbox.service.validate import DatasetCheck, DatasetSummary, validate_dataset

MB = 1 << 20


def _save(path: Path, bad: bool = False) -> Path:
    x = np.random.default_rng(0).normal(size=(30, 2, 3)).astype(np.float32)
    if bad:
        x[12, 1, 2] = np.nan
    y = (np.arange(30) % 3).astype(np.int64)
    np.savez(path, x=x, y=y)
    return path


def test_a_started_checker_checks_the_file_it_is_handed(tmp_path: Path) -> None:
    check = DatasetCheck(MB)
    path = _save(tmp_path / "d.npz")  # written after the checker started
    check.check(path)
    assert check.result(timeout_s=60) == DatasetSummary(30, 3, (2, 3))


def test_errors_name_the_problem_not_the_server_path(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz", bad=True)
    with pytest.raises(InvalidInput, match="the dataset: x holds 1 non-finite") as error:
        validate_dataset(path, MB, timeout_s=60)
    assert str(tmp_path) not in error.value.message


def test_a_checker_killed_before_its_file_leaves_no_process() -> None:
    check = DatasetCheck(MB)
    check.kill()
    assert check._process.returncode is not None


def test_a_checker_never_handed_a_file_exits_and_reports_no_verdict() -> None:
    """The upload failed before it was complete: stdin closes, the child exits."""
    check = DatasetCheck(MB)
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="could not be validated"):
        check.result(timeout_s=60)
    assert time.monotonic() - started < 30
    assert check._process.returncode == 0


def test_the_command_line_form_takes_the_file_as_an_argument(tmp_path: Path) -> None:
    path = _save(tmp_path / "d.npz")
    out = subprocess.run(
        [sys.executable, "-P", "-m", "sandbox.service.validate", str(path), str(MB)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == {
        "ok": True,
        "examples": 30,
        "num_classes": 3,
        "input_shape": [2, 3],
    }
