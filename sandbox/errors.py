"""The one catalog of domain errors.

Every error the product raises on purpose is a `SandboxError` subclass. Each class
names the gRPC status code (as a string, so this module imports nothing from grpc)
and the CLI exit code it maps to. Anything else that escapes is a bug: it becomes
INTERNAL / exit 1 and its text is never shown to a remote client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class SandboxError(Exception):
    """Base of all deliberate errors. `message` is safe to show to the caller."""

    grpc_code: ClassVar[str] = "INTERNAL"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(SandboxError):
    """The caller's input is malformed (archive, dataset, policy file, arguments)."""

    grpc_code = "INVALID_ARGUMENT"
    exit_code = 2


class LimitExceeded(SandboxError):
    """An input or a job went over a configured limit (size, count, quota)."""

    grpc_code = "RESOURCE_EXHAUSTED"
    exit_code = 3


class NotFound(SandboxError):
    grpc_code = "NOT_FOUND"
    exit_code = 4


class PermissionDenied(SandboxError):
    grpc_code = "PERMISSION_DENIED"
    exit_code = 6


class Unauthenticated(SandboxError):
    grpc_code = "UNAUTHENTICATED"
    exit_code = 6


class FailedPrecondition(SandboxError):
    """The system is not in a state that allows the request (e.g. no Docker engine)."""

    grpc_code = "FAILED_PRECONDITION"
    exit_code = 5


class EngineUnavailable(FailedPrecondition):
    """The container engine cannot be reached or lacks what the policy needs."""


class VerificationFailed(SandboxError):
    """An attestation or audit log did not verify (tampered, wrong key, wrong model)."""

    grpc_code = "FAILED_PRECONDITION"
    exit_code = 7


class AlreadyExists(SandboxError):
    grpc_code = "ALREADY_EXISTS"
    exit_code = 8


class Conflict(SandboxError):
    """Lost a race: the record changed state under us (compare-and-set failed)."""

    grpc_code = "ABORTED"
    exit_code = 9


class DataLoss(SandboxError):
    """Stored data failed authentication: tampered or corrupted at rest."""

    grpc_code = "DATA_LOSS"
    exit_code = 11


class JobRejected(SandboxError):
    """The job ran to a decision of `rejected`; not a malfunction."""

    grpc_code = "FAILED_PRECONDITION"
    exit_code = 10


@dataclass(frozen=True)
class Mapping:
    grpc_code: str
    exit_code: int


def classify(error: BaseException) -> Mapping:
    """Map any exception to its status code and exit code (unknown -> INTERNAL, 1)."""
    if isinstance(error, SandboxError):
        return Mapping(error.grpc_code, error.exit_code)
    return Mapping("INTERNAL", 1)


def public_message(error: BaseException) -> str:
    """The text a remote client may see: the message of a domain error, else nothing."""
    if isinstance(error, SandboxError):
        return error.message
    return "internal error"
