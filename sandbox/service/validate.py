"""Validate an uploaded dataset in a child process, never in the server's own.

`check_dataset` runs every check of the loader (dtype, shapes, labels, finiteness,
limits, no pickle, CRC), reading stored members in blocks; a deflated one is loaded
whole. In a child process that memory (and any parser bug an adversarial file might
reach) stays out of the server, whose memory then does not grow with the dataset.
Run as `python -P -m sandbox.service.validate FILE MAX_BYTES`, or with MAX_BYTES
alone to read FILE from stdin once it is ready; prints one JSON object.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import InvalidInput, LimitExceeded, NotFound, SandboxError

_CODES: dict[str, type[SandboxError]] = {
    "INVALID_ARGUMENT": InvalidInput,
    "RESOURCE_EXHAUSTED": LimitExceeded,
    "NOT_FOUND": NotFound,
}


@dataclass(frozen=True)
class DatasetSummary:
    examples: int
    num_classes: int
    input_shape: tuple[int, ...]


class DatasetCheck:
    """A checker process, started before its file exists; `check(path)` hands it the
    file, `result()` waits for its verdict.

    Started when an upload begins, its interpreter and numpy import (~0.3 s) overlap
    the transfer instead of following it; handed the file as soon as the upload is
    complete, it checks while the server fsyncs the sealed blob (a second core).
    """

    def __init__(self, max_bytes: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-m", "sandbox.service.validate", str(max_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def check(self, path: Path) -> None:
        """Start checking `path` (complete, and not written to any more)."""
        stdin = self._process.stdin
        assert stdin is not None  # a pipe, by construction
        try:
            stdin.write(f"{path}\n".encode())
            stdin.flush()  # `result()` closes it
        except BrokenPipeError:
            pass  # the checker died: `result()` reports it

    def result(self, timeout_s: float = 600) -> DatasetSummary:
        """Raise the catalog error the checks found (its message names the problem)."""
        try:
            stdout, _ = self._process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise LimitExceeded("validating the dataset took too long") from None
        try:
            answer = json.loads(stdout)
        except ValueError:
            raise InvalidInput("the dataset could not be validated (the checker crashed)") from None
        if not answer.get("ok"):
            cls = _CODES.get(answer.get("code", ""), InvalidInput)
            raise cls(str(answer.get("message", "the dataset is invalid")))
        return DatasetSummary(
            int(answer["examples"]), int(answer["num_classes"]), tuple(answer["input_shape"])
        )

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        if self._process.stdin is not None:
            self._process.stdin.close()


def validate_dataset(path: Path, max_bytes: int, timeout_s: float = 600) -> DatasetSummary:
    check = DatasetCheck(max_bytes)
    check.check(path)
    return check.result(timeout_s)


def _main(argv: list[str]) -> int:
    from sandbox.pipeline.dataset import check_dataset

    if len(argv) == 1:  # the file's path comes on stdin when it is ready
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            return 0  # the upload failed before it was complete: nothing to check
        argv = [line, *argv]
    path, max_bytes = Path(argv[0]), int(argv[1])
    try:
        info = check_dataset(path, max_bytes=max_bytes)
    except SandboxError as error:
        message = error.message.replace(f"dataset {path}", "the dataset")
        message = message.replace(str(path), "the dataset")
        print(json.dumps({"ok": False, "code": error.grpc_code, "message": message}))
        return 0
    print(
        json.dumps(
            {
                "ok": True,
                "examples": info.examples,
                "num_classes": info.num_classes,
                "input_shape": list(info.input_shape),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
