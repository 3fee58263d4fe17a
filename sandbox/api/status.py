"""The one mapping between the error catalog (sandbox.errors) and gRPC status codes.

Servers: `to_status(error)` gives the code and the client-safe message; anything
that is not a SandboxError becomes INTERNAL "internal error" and is logged here,
server-side only. Clients: `from_status(code, message)` rebuilds the catalog error,
so the CLI exits with the catalog's exit code.
"""

from __future__ import annotations

import logging

import grpc

from sandbox import errors
from sandbox.errors import SandboxError, classify, public_message

log = logging.getLogger("sandbox.api")

# The first catalog class per status code is what a client rebuilds.
_BY_CODE: dict[str, type[SandboxError]] = {
    "INVALID_ARGUMENT": errors.InvalidInput,
    "RESOURCE_EXHAUSTED": errors.LimitExceeded,
    "NOT_FOUND": errors.NotFound,
    "PERMISSION_DENIED": errors.PermissionDenied,
    "UNAUTHENTICATED": errors.Unauthenticated,
    "FAILED_PRECONDITION": errors.FailedPrecondition,
    "ALREADY_EXISTS": errors.AlreadyExists,
    "ABORTED": errors.Conflict,
    "DATA_LOSS": errors.DataLoss,
    # transport-level: the server cannot be reached or refused the handshake
    "UNAVAILABLE": errors.EngineUnavailable,
    "DEADLINE_EXCEEDED": errors.LimitExceeded,
}


def to_status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and the message a remote client may see."""
    if not isinstance(error, SandboxError):
        log.error("internal error", exc_info=error)
    return grpc.StatusCode[classify(error).grpc_code], public_message(error)


def abort(context: grpc.ServicerContext, error: BaseException) -> None:
    """End the call with `error` mapped through the catalog (raises)."""
    code, message = to_status(error)
    context.abort(code, message)


def from_rpc_error(error: grpc.RpcError) -> SandboxError:
    """The catalog error for a failed call (INTERNAL and unknown codes: exit code 1)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    message = details or name.lower().replace("_", " ")
    if name == "UNAVAILABLE":
        message = f"the server is unavailable or refused the connection ({message})"
    cls = _BY_CODE.get(name, SandboxError)
    return cls(message)
