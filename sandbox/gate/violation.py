"""The one error the egress gate raises.

Every rejection is a `GateViolation`: the provider sent something the gate will not
let out. It is an `InvalidInput` (the provider's output is malformed or breaks the
policy), so it maps to INVALID_ARGUMENT / exit 2 without the gate knowing about gRPC.
The message names the exact problem and the fix, and is safe to show the provider;
`code` is a short stable identifier for reports and tests.
"""

from __future__ import annotations

from sandbox.errors import InvalidInput


class GateViolation(InvalidInput):
    """The output directory or its model file was rejected by the egress gate."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
