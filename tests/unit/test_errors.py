import pytest

from sandbox.errors import (
    AlreadyExists,
    Conflict,
    DataLoss,
    EngineUnavailable,
    InvalidInput,
    JobRejected,
    LimitExceeded,
    SandboxError,
    VerificationFailed,
    classify,
    public_message,
)


@pytest.mark.parametrize(
    ("error", "grpc_code", "exit_code"),
    [
        (InvalidInput("x"), "INVALID_ARGUMENT", 2),
        (LimitExceeded("x"), "RESOURCE_EXHAUSTED", 3),
        (EngineUnavailable("x"), "FAILED_PRECONDITION", 5),
        (JobRejected("x"), "FAILED_PRECONDITION", 10),
        (VerificationFailed("x"), "FAILED_PRECONDITION", 7),
        (AlreadyExists("x"), "ALREADY_EXISTS", 8),
        (Conflict("x"), "ABORTED", 9),
        (DataLoss("x"), "DATA_LOSS", 11),
        (RuntimeError("/secret/path line 3"), "INTERNAL", 1),
    ],
)
def test_catalog(error: BaseException, grpc_code: str, exit_code: int) -> None:
    mapping = classify(error)
    assert (mapping.grpc_code, mapping.exit_code) == (grpc_code, exit_code)


def test_unknown_errors_leak_nothing() -> None:
    assert public_message(RuntimeError("/secret/path")) == "internal error"
    assert public_message(SandboxError("shown")) == "shown"
