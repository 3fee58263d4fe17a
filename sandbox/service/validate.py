"""Validate an uploaded dataset in a child process, never in the server's own.

`load_dataset` reads the arrays into memory; in a child process that memory (and
any parser bug an adversarial file might reach) stays out of the server, whose
memory then does not grow with the dataset's size. Run as
`python -P -m sandbox.service.validate FILE MAX_BYTES`; prints one JSON object.
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
    """A validation running in a child process; `result()` waits for its verdict.

    Started as soon as the upload is complete, so it runs while the server encrypts
    and stores the same bytes (a second core does the checking).
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-m", "sandbox.service.validate", str(path), str(max_bytes)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

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


def validate_dataset(path: Path, max_bytes: int, timeout_s: float = 600) -> DatasetSummary:
    return DatasetCheck(path, max_bytes).result(timeout_s)


def _main(argv: list[str]) -> int:
    from sandbox.pipeline.dataset import load_dataset

    path, max_bytes = Path(argv[0]), int(argv[1])
    try:
        ds = load_dataset(path, max_bytes=max_bytes)
    except SandboxError as error:
        message = error.message.replace(f"dataset {path}", "the dataset")
        message = message.replace(str(path), "the dataset")
        print(json.dumps({"ok": False, "code": error.grpc_code, "message": message}))
        return 0
    print(
        json.dumps(
            {
                "ok": True,
                "examples": len(ds),
                "num_classes": ds.num_classes,
                "input_shape": list(ds.input_shape),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
