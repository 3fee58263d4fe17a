"""Paths, markers and exit codes shared by the host and the guest entrypoints."""

import os
import sys
from pathlib import Path
from typing import NoReturn

ALGORITHM = Path(os.environ.get("SANDBOX_ALGORITHM", "/algorithm"))
DATA = Path(os.environ.get("SANDBOX_DATA", "/data"))
OUTPUT = Path(os.environ.get("SANDBOX_OUTPUT", "/output"))
WORK = Path(os.environ.get("SANDBOX_WORK", "/work"))
# the training split, for trusted steps that train (the probe's reference model)
TRAIN = Path(os.environ.get("SANDBOX_TRAIN", "/train"))

# A line starting with this marker on stderr carries the reason a step failed.
ERROR_MARKER = "SANDBOX_ERROR: "

EXIT_OK = 0
EXIT_CONTRACT = 2  # the package breaks the contract (missing file, build_model, ...)
EXIT_EXPORT = 3  # torch.export could not capture the model
EXIT_USER_CODE = 4  # the provider's code raised
EXIT_INVALID = 5  # an input to a trusted step is invalid

TORCH_TO_SAFETENSORS = {
    "torch.float64": "F64",
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.int64": "I64",
    "torch.int32": "I32",
    "torch.int16": "I16",
    "torch.int8": "I8",
    "torch.uint8": "U8",
    "torch.bool": "BOOL",
}


def fail(code: int, reason: str) -> NoReturn:
    """Print the reason behind the error marker and exit with `code`."""
    sys.stderr.write(ERROR_MARKER + reason.replace("\n", " ")[:500] + "\n")
    sys.stderr.flush()
    raise SystemExit(code)
